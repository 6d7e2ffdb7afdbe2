"""Where a benchmark's files come from.

Search order: an explicit ``data_dir`` (config key or CLI flag), ``$ABLATE_DATA_DIR``, then the
hub cache ``$ABLATE_CACHE/data``. Each folder is laid out like the project's shared data folder
(``gsm8k/test.jsonl``, ``mmlu/test/<subject>_test.csv``, ...). Without any of them, the small
slices shipped in ``benchmarks/slices/<benchmark>/<protocol>.jsonl`` (the first items of each
protocol's list) serve runs whose ``limit`` fits in them, so the demo runs offline.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from pathlib import Path

from ablate.evals.base import Benchmark, EvalError, check_protocol

REPO = Path(__file__).resolve().parents[2]
SLICES = REPO / "benchmarks" / "slices"


def candidate_roots(data_dir: Path | str | None = None) -> list[Path]:
    roots = [Path(data_dir)] if data_dir else []
    if os.environ.get("ABLATE_DATA_DIR"):
        roots.append(Path(os.environ["ABLATE_DATA_DIR"]))
    from ablate.models import cache_root
    roots.append(cache_root() / "data")
    return roots


def slice_path(benchmark: str, protocol: str) -> Path:
    return SLICES / benchmark / f"{protocol}.jsonl"


def load_items(bench: Benchmark, protocol: str, limit: int | None,
               data_dir: Path | str | None = None) -> tuple[list[dict], Path | None]:
    """The first ``limit`` items of the protocol's list, and the data folder (None for a slice)."""
    check_protocol(protocol)
    if limit is not None and limit < 1:
        raise EvalError(f"limit must be a positive integer or null, got {limit!r}")
    roots = candidate_roots(data_dir)
    for root in roots:
        if all((root / f).exists() for f in bench.required_files):
            items = bench.items(protocol, root)
            return (items if limit is None else items[:limit]), root
    shipped = slice_path(bench.name, protocol)
    if shipped.is_file():
        items = read_jsonl(shipped)
        if limit is not None and limit <= len(items):
            return items[:limit], None
    needed = ", ".join(bench.required_files)
    raise EvalError(
        f"{bench.name}: no data. Looked for {needed} under {', '.join(map(str, roots))}"
        + (f"; the shipped slice has only {len(items)} items" if shipped.is_file() else "")
        + f". Fetch the data (hub dataset {bench.hub_id}; the files used here come from "
          f"{bench.data_revision}) into a folder laid out like that and set ABLATE_DATA_DIR (or "
          "the eval config's data_dir) to it.")


# ------------------------------------------------------------------ readers with clear errors
def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    if not path.is_file():
        raise EvalError(f"missing data file {path}")
    rows = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise EvalError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
    return rows


def read_json(path: Path):
    if not path.is_file():
        raise EvalError(f"missing data file {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise EvalError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def read_csv(path: Path, required: tuple[str, ...] = ()) -> list[dict]:
    if not path.is_file():
        raise EvalError(f"missing data file {path}")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    missing = [c for c in required if rows and c not in rows[0]]
    if missing:
        raise EvalError(f"{path}: missing column(s) {missing}; has {list(rows[0])}")
    return rows


def require(row: dict, fields: tuple[str, ...], where: str) -> None:
    missing = [f for f in fields if f not in row or row[f] is None]
    if missing:
        raise EvalError(f"{where}: missing field(s) {missing}; expected {list(fields)}")
