"""One seed derivation for every random stream (``ablate.spec.seeds``)."""

from __future__ import annotations

from ablate.spec.seeds import derive_seed


def test_derive_seed_is_the_sha256_of_the_parts_and_keeps_row_seeds():
    # sha256(b"7:3:0")'s first 8 bytes, little-endian, masked to 63 bits
    assert derive_seed(7, 3, 0) == 4389341480017307907
    from ablate.generate.base import row_seed

    assert row_seed(7, 3, 0) == 4389341480017307907  # every stored sample's seed is kept
    # named streams of one run seed differ, and run seeds s and s + 1 do not share a stream
    # shifted by one (as seed * K + epoch would for K = 1)
    streams = {derive_seed(s, name, e) for s in (1, 2) for name in ("epoch-order", "rollout")
               for e in (0, 1)}
    assert len(streams) == 8 and all(0 <= v < 2 ** 63 for v in streams)
