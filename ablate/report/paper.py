"""The paper's own per-category numbers (``shared/paper/table*.csv``) as report results.

Each CSV row becomes a cell whose "benchmarks" are the six categories themselves, so the same table
definitions, averages, Avg. Δ row and shading apply to the paper's numbers and to ablate's runs.
The paper's Average column is kept as a *reported* aggregate: it was computed from unrounded
category scores, which the rounded categories cannot always reproduce (a mean ending in exactly
.x5); ``groups`` checks it against the mean of the categories and uses it only when they agree.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ablate.report.categories import CATEGORIES
from ablate.report.frame import COLUMNS, CellInfo, Results

PAPER_FILES = {"1": "table1_preference_data.csv", "2": "table2_dpo_vs_ppo.csv",
               "5": "table5_recipe.csv"}
BASELINES = {"1": "TULU 2 (SFT)", "2": "TULU 2 (SFT)", "5": "TULU 2 13B SFT"}


def _number(value, path: Path, line: int, column: str) -> float | None:
    """A CSV cell as a float (None when empty); anything else names the file, row and column."""
    if pd.isna(value):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: row {line}, column {column!r}: {value!r} is not a number "
                         "(footnote marks and other notes belong in another column)") from None


def _cell(table: str, row: pd.Series, samples: float | None) -> tuple[str, dict, dict]:
    """name, axes, display labels of one paper row."""
    if table == "1":
        name = str(row["source"])
        samples = "" if samples is None else f"{int(samples):,}"
        return name, {"group": row["group"], "data": name, "algorithm": "dpo"}, \
            {"Source": name, "# Samples": samples}
    if table == "2":
        alg = "" if pd.isna(row["algorithm"]) else str(row["algorithm"])
        name = f"{row['dataset']} {alg}".strip()
        return name, {"data": row["dataset"], "algorithm": alg.lower() or "sft"}, \
            {"Source": str(row["dataset"]), "Alg.": alg}
    # Table 5's rows are models built on one SFT model (or other models entirely), all compared
    # with Tulu 2 SFT: the row's name is a label, not the grid's base-model axis.
    name = str(row["model"])
    return name, {"row": name}, {"Model": name}


def load_paper_table(paper_dir: Path | str, table: str) -> Results:
    """One of the paper's Tables 1, 2, 5 as ``Results`` (grid ``paper-table<N>``)."""
    if table not in PAPER_FILES:
        raise ValueError(f"the paper's per-category CSVs cover tables {', '.join(PAPER_FILES)}, "
                         f"not {table!r}")
    path = Path(paper_dir) / PAPER_FILES[table]
    data = pd.read_csv(path)
    wanted = [*CATEGORIES, "average"]
    absent = [c for c in wanted if c not in data.columns]
    if absent:
        raise ValueError(f"{path}: missing column(s) {', '.join(absent)}")
    grid = f"paper-table{table}"
    results = Results(grid=grid, frame=pd.DataFrame(columns=COLUMNS), cells=[],
                      benchmarks=list(CATEGORIES), source="paper", grid_file=str(path))
    rows = []
    for index, row in data.iterrows():
        line = index + 2  # the header is line 1
        samples = _number(row["n_samples"], path, line, "n_samples") if table == "1" else None
        name, axes, labels = _cell(table, row, samples)
        if any(c.name == name for c in results.cells):
            raise ValueError(f"{path}: row {line} repeats {name!r}")
        is_base = name == BASELINES[table]
        results.cells.append(CellInfo(name, name, None, axes, is_base, labels=labels,
                                      config={"source": f"{path.name} row {line}"}))
        for category in CATEGORIES:
            value = _number(row[category], path, line, category)
            rows.append({**dict.fromkeys(COLUMNS), "grid": grid, "cell": name, "group": name,
                         "is_baseline": is_base, "benchmark": category, "category": category,
                         "status": "done" if value is not None else "missing",
                         "value": value, "category_score": value,
                         "higher_is_better": True, "result_file": f"{path} row {line}"})
        average = _number(row["average"], path, line, "average")
        if average is not None:
            results.reported[(name, "average")] = average
    if not any(c.is_baseline for c in results.cells):
        raise ValueError(f"{path}: no baseline row {BASELINES[table]!r}")
    results.frame = pd.DataFrame(rows, columns=COLUMNS)
    return results
