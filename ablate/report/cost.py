"""What each cell cost: seconds of its training and eval steps (from DONE.json), GPU-hours where
a step ran on GPUs, and judge calls where an eval recorded them."""

from __future__ import annotations

import json

from ablate.report.frame import Results
from ablate.report.groups import Stat
from ablate.report.tables import Column, TableCell, TableResult, TableRow, TableSpec, fmt
from ablate.store import read_json

COST_SPEC = TableSpec("cost", "Cost per cell (from the run store)", "", (("Cell", lambda c: c.name),),
                      columns=lambda r: [])
COST_COLUMNS = [Column("train_s", "Train (s)"), Column("eval_s", "Eval (s)"),
                Column("total_h", "Total (h)"), Column("gpu_h", "GPU-hours"),
                Column("judge_calls", "Judge calls")]


def gpu_count(step_dir) -> int:
    """GPUs a step used, as recorded by the launcher (0 when it ran on CPU or did not say)."""
    for name, keys in (("DONE.json", ("gpus", "n_gpus")), ("env.json", ("gpus", "n_gpus"))):
        path = step_dir / name
        if not path.is_file():
            continue
        try:
            data = read_json(path)
        except (OSError, json.JSONDecodeError):
            continue
        for key in keys:
            value = data.get(key)
            if isinstance(value, list):
                return len(value)
            if isinstance(value, int) and value > 0:
                return value
        if str(data.get("device", "")).startswith("cuda"):
            return 1
    return 0


def cost_table(results: Results) -> TableResult:
    if results.plan is None or results.store_root is None:
        raise ValueError(f"{results.grid}: the cost table needs a run store (not the paper's numbers)")
    plan, root = results.plan, results.store_root
    rows, notes, unique = [], [], {}
    for cell in plan.cells:
        train_s = eval_s = gpu_s = 0.0
        judge = 0
        complete = True
        train_ids = plan.upstream(cell.model_step) if cell.model_step else []
        for sid in [*train_ids, *cell.evals.values()]:
            step = plan.steps[sid]
            folder = root / "steps" / step.kind / sid
            done = folder / "DONE.json"
            try:
                seconds = float(read_json(done).get("seconds") or 0.0) if done.is_file() else None
            except (OSError, json.JSONDecodeError, TypeError, ValueError):
                notes.append(f"corrupt DONE.json skipped: {done}")
                seconds = None
            if seconds is None:
                complete = False
                continue
            unique[sid] = seconds
            if step.kind == "eval":
                eval_s += seconds
            else:
                train_s += seconds
            gpu_s += seconds * gpu_count(folder)
        done_rows = results.frame[(results.frame.cell == cell.name) & results.frame.judge_calls.notna()]
        judge = int(done_rows.judge_calls.sum()) if len(done_rows) else None
        values = [train_s, eval_s, (train_s + eval_s) / 3600, gpu_s / 3600 if gpu_s else None, judge]
        cells = []
        for column, value in zip(COST_COLUMNS, values):
            stat = Stat(None if value is None else float(value), n_seeds=1)
            text = "" if value is None else (str(value) if column.key == "judge_calls"
                                             else fmt(value, 3 if column.key.endswith("_h") else 1))
            cells.append(TableCell(stat, text, group=cell.name, key=column.key))
        label = cell.name + ("" if complete else " (incomplete)")
        rows.append(TableRow([label], cells, [cell.name], is_baseline=cell.is_baseline))
    notes.append(f"all {len(unique)} distinct finished steps: {fmt(sum(unique.values()) / 3600, 3)} h "
                 "(steps shared by cells, like the SFT evals, count once here and in every cell "
                 "above). GPU-hours count steps that recorded GPUs (`gpus` in DONE.json/env.json).")
    if any(r.lead[0].endswith("(incomplete)") for r in rows):
        notes.append("(incomplete): some of the cell's steps are not done; their time is not counted.")
    return TableResult(COST_SPEC, results.grid, COST_COLUMNS, rows, notes)
