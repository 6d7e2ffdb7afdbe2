"""What each cell cost: seconds of its training and eval steps (from DONE.json), GPU-hours where
a step ran on GPUs, and judge calls where an eval recorded them."""

from __future__ import annotations

import json

from ablate.report.frame import Results
from ablate.report.groups import Stat
from ablate.report.tables import (
    Column, TableCell, TableResult, TableRow, TableSpec, tell_rows_apart, fmt, recipe_label,
)
from ablate.store import read_json

COST_SPEC = TableSpec("cost", "Cost per cell", "", (("Cell", recipe_label),), columns=lambda r: [])
COST_COLUMNS = [Column("train_s", "Train (s)"), Column("eval_s", "Eval (s)"),
                Column("total_h", "Total (h)"), Column("gpu_h", "GPU-hours"),
                Column("judge_calls", "Judge calls")]
CPU = "0 (CPU)"


def gpu_count(step_dir) -> int | None:
    """GPUs a step used, as recorded by the launcher: 0 when it ran on CPU, None when it did not
    say."""
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
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
        device = str(data.get("device", ""))
        if device.startswith("cuda"):
            return 1
        if device == "cpu":
            return 0
    return None


def cost_table(results: Results) -> TableResult:
    if results.plan is None or results.store_root is None:
        raise ValueError(f"{results.grid}: the cost table needs a run store (not the paper's numbers)")
    plan, root = results.plan, results.store_root
    rows, notes, unique = [], [], {}
    info = {c.name: c for c in results.cells}
    for cell in plan.cells:
        train_s = eval_s = gpu_s = 0.0
        complete, on_cpu = True, True
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
            gpus = gpu_count(folder)
            gpu_s += seconds * (gpus or 0)
            on_cpu = on_cpu and gpus == 0
        done_rows = results.frame[(results.frame.cell == cell.name) & results.frame.judge_calls.notna()]
        # evals without a judge record none: no judge call was made
        judge = int(done_rows.judge_calls.sum()) if len(done_rows) else 0
        values = [train_s, eval_s, (train_s + eval_s) / 3600, gpu_s / 3600, judge]
        cells = []
        for column, value in zip(COST_COLUMNS, values):
            text = (str(value) if column.key == "judge_calls"
                    else CPU if column.key == "gpu_h" and on_cpu and complete
                    else fmt(value, 3 if column.key.endswith("_h") else 1))
            cells.append(TableCell(Stat(float(value), n_seeds=1), text, group=cell.name,
                                   key=column.key))
        seeds = sum(c.group == info[cell.name].group for c in results.cells)
        label = recipe_label(results, info[cell.name]) + (
            f", seed {cell.axes.get('seed')}" if seeds > 1 else "")
        rows.append(TableRow([label + ("" if complete else " (incomplete)")], cells, [cell.name],
                             is_baseline=cell.is_baseline))
    notes.append(f"all {len(unique)} distinct finished steps: {fmt(sum(unique.values()) / 3600, 3)} h "
                 "(steps shared by cells, like the SFT evals, count once here and in every cell "
                 "above). GPU-hours count steps that recorded GPUs (`gpus` in DONE.json/env.json); "
                 f"{CPU}: every step of the cell recorded running on CPU.")
    if any(r.lead[0].endswith("(incomplete)") for r in rows):
        notes.append("(incomplete): some of the cell's steps are not done; their time is not counted.")
    lead = tell_rows_apart(results, rows, ["Cell"], info)
    return TableResult(COST_SPEC, results.grid, COST_COLUMNS, rows, notes, lead_labels=lead)
