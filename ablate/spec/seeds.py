"""One derivation for every seeded random stream of a run, so that no two streams collide.

A stream's seed hashes its parts (the run's seed, the stream's name, an epoch or chunk number):
seed s + 1 does not replay seed s's stream shifted by one, as ``seed * K + epoch`` could, and two
streams of one run differ by name rather than by a hand-picked offset.
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts`` (sha256 of their ``str`` joined by ":", the first 8 bytes
    little-endian): non-negative, so every RNG here (``torch.manual_seed``, ``random.Random``,
    vLLM's per-request seed) takes it."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
