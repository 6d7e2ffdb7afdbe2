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

# slice file -> (source file relative to the shared data folder, first row, number of rows)
SLICES = {
    "ultrafeedback_train.jsonl.gz": ("ultrafeedback_binarized_slice/train_1000.jsonl", 0, 200),
    "ultrafeedback_test.jsonl.gz": ("ultrafeedback_binarized_slice/eval_200.jsonl", 0, 50),
    "hh_rlhf_helpful_base_train.jsonl.gz": ("hh_rlhf/helpful-base/test.jsonl.gz", 0, 200),
    "hh_rlhf_helpful_base_test.jsonl.gz": ("hh_rlhf/helpful-base/test.jsonl.gz", 200, 50),
    "hh_rlhf_harmless_base_train.jsonl.gz": ("hh_rlhf/harmless-base/test.jsonl.gz", 0, 200),
    "hh_rlhf_harmless_base_test.jsonl.gz": ("hh_rlhf/harmless-base/test.jsonl.gz", 200, 50),
    "gsm8k_train.jsonl.gz": ("gsm8k/train.jsonl", 0, 200),
}


def slice_bytes(shared: Path, source: str, start: int, count: int) -> bytes:
    rows = islice(read_file(shared / source), start, start + count)
    text = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=9, filename="") as handle:
        handle.write(text.encode("utf-8"))
    return buffer.getvalue()


def main(shared: str) -> None:
    for name, (source, start, count) in SLICES.items():
        data = slice_bytes(Path(shared), source, start, count)
        (SLICES_DIR / name).write_bytes(data)
        print(f"{name}: {count} rows from {source}, {len(data) / 1024:.0f} KiB")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
