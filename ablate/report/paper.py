"""The paper's own per-category numbers (shipped in ``paper_tables/``) as report results, and
beside a grid's cells (``--vs-paper``).

Each CSV row becomes a cell whose "benchmarks" are the six categories themselves, so the same table
definitions, averages, Avg. Δ row and shading apply to the paper's numbers and to ablate's runs.
The paper's Average column is kept as a *reported* aggregate: it was computed from unrounded
category scores, which the rounded categories cannot always reproduce (a mean ending in exactly
.x5); ``groups`` checks it against the mean of the categories and uses it only when they agree.

``paper_tables/data_sets.csv`` names each data set of ``ablate.data`` as the paper's Tables 1
and 2 name it (they name some differently), so a grid's cell finds its paper row;
``paper_tables/recipes.csv`` names Table 5's rows by what trained them (the algorithm, DPO's data
set, PPO's reward model by its data and base model, and PPO's prompt set), as the paper's Section
5 describes each row. Tables 3 and 4 print other columns than the categories (best-of-N and PPO
numbers per reward model, PPO per reward model and prompt set): ``CELL_TABLES`` maps each of their
CSV columns onto a column of ablate's table, and ``paper_tables/reward_models.csv`` names a
reward model (its data set and base model) as those tables do. The three CSVs name a data set
once, by ``ablate.data.registry.paper_data_set``: a published ``tulu25-*`` split and its
raw-source rebuild are one data set of the paper's.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ablate.data.registry import paper_data_set
from ablate.report.categories import CATEGORIES
from ablate.report.frame import COLUMNS, CellInfo, Results, group_name as group_of, reward_model_of
from ablate.report.groups import group_stats
from ablate.report.tables import TABLES, TableResult, build_table, fmt

SHIPPED = Path(__file__).with_name("paper_tables")
VS_PAPER = ("1", "2", "3", "4", "5")  # tables whose rows a grid's cells can be matched with
ALGORITHM_OF_STEP = {"train_dpo": "dpo", "train_ppo": "ppo"}
PAPER_FILES = {"1": "table1_preference_data.csv", "2": "table2_dpo_vs_ppo.csv",
               "5": "table5_recipe.csv"}
BASELINES = {"1": "TULU 2 (SFT)", "2": "TULU 2 (SFT)", "5": "TULU 2 13B SFT"}
# Tables 3 and 4: file, and each CSV column as (column key, algorithm) of ablate's table. Table 3's
# RewardBench score has no counterpart (ablate's column is the RM's held-out pair accuracy).
CELL_TABLES = {
    "3": ("table3_reward_models.csv", {
        ("average", "bon"): "best_of_n_avg", ("delta:average", "bon"): "best_of_n_delta_over_sft",
        ("bench:gsm8k", "ppo"): "ppo_gsm_acc",
        ("bench:alpaca_eval_2", "ppo"): "ppo_alpacaeval2_winrate",
        ("average", "ppo"): "ppo_avg_all_evals"}),
    "4": ("table4_policy_prompts.csv", {
        ("bench:gsm8k", "ppo"): "gsm_acc", ("coding", "ppo"): "coding",
        ("average", "ppo"): "avg_all_evals"}),
}
# the paper's names of PPO's prompt sets in Table 4 (paper_data_set names -> the paper's)
PROMPTS_IN_TABLE4 = {"ultrafeedback-prompts": "UF", "mixed": "Mixed"}


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
                      benchmarks=list(CATEGORIES), source="paper", grid_file=str(path),
                      description="as published (Ivison et al., 2024)")
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


def data_set_of(results: Results, cell: CellInfo) -> str | None:
    """The ``ablate.data`` name of the preference data a cell's model was trained on (its own
    step's, else the PPO prompts' or reward model's, which a same-data cell shares)."""
    if results.plan is None or not cell.model_step:
        return None
    for sid in reversed(results.plan.upstream(cell.model_step)):
        config = results.plan.steps[sid].config
        data = getattr(config, "data", None)
        if data is not None:
            return data.name
        prompts = getattr(config, "prompts", None)
        if prompts is not None and prompts.source == "preference_data":
            return prompts.name
    return None


def _paper_row_key(results: Results, cell: CellInfo, names: dict) -> tuple | None:
    """(paper data-set name, algorithm) of a grid cell; ("sft",) for its baseline."""
    if cell.is_baseline:
        return ("sft",)
    step = results.plan.steps.get(cell.model_step or "") if results.plan else None
    algorithm = ALGORITHM_OF_STEP.get(step.kind) if step else None
    name = names.get(paper_data_set(data_set_of(results, cell) or ""))
    return (name, algorithm) if name and algorithm else None


def _paper_name(ref) -> str:
    """A step's data or prompts as the paper's CSVs name them ("" for none or an unnamed one)."""
    if ref is None or not ref.name:
        return ""
    return paper_data_set(ref.name, prompts=getattr(ref, "source", None) == "prompt_set")


def recipe_of(results: Results, cell: CellInfo) -> tuple[str, str, str, str, str] | None:
    """What trained a cell's model, as ``recipes.csv`` names Table 5's rows: (algorithm, DPO's
    data set, the reward model's data set and base model, PPO's prompt set), data and prompts by
    their ``paper_data_set`` names; "" where it does not apply. None for a cell without a DPO or
    PPO step of its own."""
    plan = results.plan
    step = plan.steps.get(cell.model_step or "") if plan else None
    algorithm = ALGORITHM_OF_STEP.get(step.kind) if step else None
    if algorithm == "dpo":
        return ("dpo", _paper_name(step.config.data), "", "", "")
    if algorithm != "ppo":
        return None
    rm = plan.steps.get(step.inputs.get("reward_model", ""))
    rm_data = getattr(getattr(rm, "config", None), "data", None)
    rm_model = getattr(getattr(rm, "config", None), "model", None)
    return ("ppo", "", _paper_name(rm_data), (rm_model.hub or "") if rm_model else "",
            _paper_name(step.config.prompts))


def _table5_row_key(results: Results, cell: CellInfo) -> tuple | None:
    if cell.is_baseline:
        return ("sft",)
    recipes = pd.read_csv(SHIPPED / "recipes.csv", dtype=str, keep_default_na=False)
    by_recipe = {tuple(r[1:]): r[0] for r in recipes.itertuples(index=False)}
    name = by_recipe.get(recipe_of(results, cell))
    return (name,) if name else None


def _reward_model_name(results: Results, group: str, table: str) -> str | None:
    """The paper's name (Table 3 or 4) of the reward model a group's cell used."""
    plan = results.plan
    cell = next((c for c in plan.cells if group_of(c.name) == group), None) if plan else None
    rm = plan.steps.get(reward_model_of(plan, cell) or "") if cell else None
    if rm is None or getattr(rm.config, "data", None) is None:
        return None
    names = pd.read_csv(SHIPPED / "reward_models.csv", dtype=str)
    hits = names[(names.data_set == _paper_name(rm.config.data))
                 & (names.base == rm.config.model.hub)]
    return hits.iloc[0][f"table{table}"] if len(hits) else None


def _cell_table_key(results: Results, table: TableResult, row) -> tuple | None:
    """The paper's row of a Table 3 or 4 row: the reward model (and Table 4's prompt set);
    ("sft",) for Table 4's SFT row."""
    if row.is_baseline:
        return ("sft",)
    if row.is_summary or not row.groups:
        return None
    name = _reward_model_name(results, row.groups[0], table.spec.name)
    if table.spec.name == "3":
        return (name,) if name else None
    plan = results.plan
    step = plan.steps.get(next((c.model_step for c in plan.cells
                                if group_of(c.name) == row.groups[0]), None) or "")
    prompts = getattr(getattr(step, "config", None), "prompts", None)
    paper_prompts = PROMPTS_IN_TABLE4.get(_paper_name(prompts))
    return (name, paper_prompts) if name and paper_prompts else None


def compare_cells_with_paper(table: TableResult, results: Results, folder: Path) -> list[str]:
    """Tables 3 and 4: the paper's number beside each cell whose row and column it has; the
    rows it lacks."""
    file, columns = CELL_TABLES[table.spec.name]
    path = folder / file
    data = pd.read_csv(path)
    rows = {}
    for index, line in data.iterrows():
        if table.spec.name == "3":
            key = (str(line["reward_model"]),)
        elif pd.isna(line["prompts"]):
            key = ("sft",)
        else:
            key = (str(line["reward_model"]), str(line["prompts"]))
        rows[key] = (index + 2, line)
    unmatched = []
    for row in table.rows:
        key = _cell_table_key(results, table, row)
        if key not in rows:
            unmatched.append(" ".join(row.lead).strip())
            continue
        number, line = rows[key]
        for column, cell in zip(table.columns, row.cells):
            algorithm = dict(column.where).get("algorithm")
            name = columns.get((column.key, algorithm))
            cell.has_paper = name is not None
            value = _number(line[name], path, number, name) if name else None
            if value is not None:
                cell.paper, cell.paper_text = value, fmt(value, signed=column.key.startswith(
                    "delta:"))
    return unmatched


def compare_with_paper(table: TableResult, results: Results, paper_dir: Path | None = None) -> None:
    """Put the paper's number beside each cell of ``table`` whose row the paper has (matched by
    data set and algorithm; the SFT row with the paper's SFT row), and say which rows it lacks."""
    if table.spec.name not in VS_PAPER:
        raise ValueError(f"--vs-paper: table {table.spec.name} has no per-cell counterpart in the "
                         f"paper's CSVs; tables {', '.join(VS_PAPER)} match cells by data set and "
                         "algorithm (Table 5: by recipe)")
    folder = Path(paper_dir or SHIPPED)
    if table.spec.name in CELL_TABLES:
        unmatched = compare_cells_with_paper(table, results, folder)
        source = "as shipped with ablate" if paper_dir is None else str(folder)
        table.notes.insert(0, f"(paper x, ±d): the paper's number for the cell (Ivison et al., "
                              f"2024, Table {table.spec.name}: {CELL_TABLES[table.spec.name][0]}, "
                              f"{source}) and this grid's minus it; rows matched by reward model "
                              "(its data set and base model, reward_models.csv)"
                           + (" and PPO prompt set" if table.spec.name == "4" else "")
                           + (", the SFT row with the paper's" if table.spec.name == "4" else "")
                           + ("; the paper's RewardBench score is not beside the held-out "
                              "accuracy, another measure" if table.spec.name == "3" else "")
                           + "." + (f" No paper row for: {'; '.join(unmatched)}."
                                    if unmatched else ""))
        return
    paper = load_paper_table(folder, table.spec.name)
    built = build_table(TABLES[table.spec.name], paper, group_stats(paper))
    info = {c.group: c for c in paper.cells}
    paper_rows = {}
    for row in built.rows:
        if row.is_summary:
            paper_rows[("summary",)] = row
        else:
            cell = info[row.groups[0]]
            paper_rows[("sft",) if cell.is_baseline else (cell.axes["row"],)
                       if table.spec.name == "5" else
                       (cell.axes["data"], cell.axes["algorithm"])] = row
    if table.spec.name == "5":
        def our_key(cell: CellInfo) -> tuple | None:
            return _table5_row_key(results, cell)
    else:
        names = pd.read_csv(SHIPPED / "data_sets.csv", dtype=str).set_index("data_set")[
            f"table{table.spec.name}"].dropna().to_dict()

        def our_key(cell: CellInfo) -> tuple | None:
            return _paper_row_key(results, cell, names)
    ours = {c.group: c for c in reversed(results.cells)}
    unmatched = []
    for row in table.rows:
        key = ("summary",) if row.is_summary else our_key(ours[row.groups[0]]) \
            if row.groups else None
        match = paper_rows.get(key) if key else None
        if match is None:
            unmatched.append(" ".join(row.lead).strip())
            continue
        by_key = {col.key: c for col, c in zip(built.columns, match.cells)}
        for column, cell in zip(table.columns, row.cells):
            theirs = by_key.get(column.key)
            cell.has_paper = theirs is not None
            if theirs is not None and not theirs.missing:
                cell.paper, cell.paper_text = theirs.stat.value, theirs.text
    source = "as shipped with ablate" if paper_dir is None else str(folder)
    table.notes.insert(0, f"(paper x, ±d): the paper's number for the cell (Ivison et al., 2024, "
                          f"Table {table.spec.name}: {PAPER_FILES[table.spec.name]}, {source}) "
                          "and this grid's minus it; rows matched "
                          + ("by recipe (recipes.csv: algorithm, DPO data, the reward model's "
                             "data and base model, PPO prompts)" if table.spec.name == "5"
                             else "by data set and algorithm")
                          + ", the SFT row with the paper's SFT row (its base model may differ)."
                       + (f" No paper row for: {'; '.join(unmatched)}." if unmatched else ""))
