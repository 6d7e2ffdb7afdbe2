"""Rebuild the shipped slices in ``ablate/data/slices/`` from the real files.

    python -m ablate.data.make_slices ../shared/data

The slices are raw source rows (the converters run on them at load time), gzipped with a fixed
mtime so that rebuilding gives identical bytes. Which rows each slice takes is fixed here and noted
in ``slices/LICENSES.md``; tests check the shipped files against a rebuild.
"""

from __future__ import annotations

import gzip
import io
import json
import sys
from itertools import islice
from pathlib import Path

from ablate.data.load import SLICES_DIR, read_file


DECLINING_OPENINGS = ("sorry", "i'm sorry", "i am sorry", "i apologize", "i apologise", "no,",
                      "no.", "no!", "i cannot", "i can't", "i won't", "i will not",
                      "i'm not able", "i am not able")


def declines(transcript: str) -> bool:
    """Whether an HH-RLHF transcript's last assistant reply opens by declining: an apology, a
    "no", or "I can't" / "I won't" / "I'm not able" (typographic apostrophes read as plain)."""
    reply = transcript.rsplit("\n\nAssistant:", 1)[-1].strip().lower().replace("\u2019", "'")
    return reply.startswith(DECLINING_OPENINGS)


def chosen_declines(row: dict) -> bool:
    """A pair whose chosen reply declines and whose rejected reply does not."""
    return declines(row["chosen"]) and not declines(row["rejected"])


# slice file -> (source file relative to the shared data folder, first row, number of rows[,
# a filter: the rows are counted among those it keeps])
SLICES = {
    "ultrafeedback_train.jsonl.gz": ("ultrafeedback_binarized_slice/train_1000.jsonl", 0, 200),
    "ultrafeedback_test.jsonl.gz": ("ultrafeedback_binarized_slice/eval_200.jsonl", 0, 50),
    "hh_rlhf_helpful_base_train.jsonl.gz": ("hh_rlhf/helpful-base/test.jsonl.gz", 0, 200),
    "hh_rlhf_helpful_base_test.jsonl.gz": ("hh_rlhf/helpful-base/test.jsonl.gz", 200, 50),
    "gsm8k_train.jsonl.gz": ("gsm8k/train.jsonl", 0, 200),
    "hh_rlhf_refusals_train.jsonl.gz": ("hh_rlhf/harmless-base/test.jsonl.gz", 0, 128,
                                        chosen_declines),
    "hh_rlhf_refusals_test.jsonl.gz": ("hh_rlhf/harmless-base/test.jsonl.gz", 128, 62,
                                       chosen_declines),
}


def slice_bytes(shared: Path, source: str, start: int, count: int, keep=None) -> bytes:
    rows = islice(filter(keep, read_file(shared / source)), start, start + count)
    text = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=9, filename="") as handle:
        handle.write(text.encode("utf-8"))
    return buffer.getvalue()


def main(shared: str) -> None:
    for name, (source, start, count, *keep) in SLICES.items():
        data = slice_bytes(Path(shared), source, start, count, *keep)
        (SLICES_DIR / name).write_bytes(data)
        print(f"{name}: {count} rows from {source}, {len(data) / 1024:.0f} KiB")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
