"""Write the small item slices shipped in benchmarks/slices (run from the repo root):

    PYTHONPATH=. python benchmarks/make_slices.py /path/to/data

Each slice is the first items of a protocol's item list, exactly as ``Benchmark.items`` builds
them from the full data, so a run on a slice scores the same items as a run on the full data.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ablate.evals import get_benchmark
from ablate.evals.data import SLICES
from ablate.store import atomic_write_jsonl

SIZES = {"gsm8k": {"paper": 200, "full": 50}, "mmlu": {"paper": 570}, "truthfulqa": {"full": 100},
         "xstest": {"paper": 450}}


def main(data_dir: Path) -> None:
    for name, sizes in SIZES.items():
        bench = get_benchmark(name)
        for protocol, size in sizes.items():
            items = bench.items(protocol, data_dir)[:size]
            (SLICES / name).mkdir(parents=True, exist_ok=True)
            atomic_write_jsonl(SLICES / name / f"{protocol}.jsonl", items)
            print(f"{name}/{protocol}: {len(items)} items")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
