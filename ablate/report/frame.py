"""The run store -> one tidy pandas frame: a row per grid cell x benchmark.

Only ``ablate.spec`` and ``ablate.store`` are imported: reports never load torch. A missing result
is a row with ``status`` ``missing`` and no value (never a zero); a corrupt file is named in
``Results.problems`` and its row is ``corrupt``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ablate.report.categories import category_of
from ablate.report.stats import (
    bootstrap_means, bootstrap_statistic, item_scale, metric_on_items, percentile_ci, stable_seed,
)
from ablate.spec.judges import PAPER_JUDGES
from ablate.spec.judges import describe as describe_judge
from ablate.spec.metrics import ITEM_METRICS
from ablate.spec.plan import Plan
from ablate.spec.steps import identity
from ablate.store import RunStore, read_json
from ablate.store.result import CorruptResult, EvalResult, read_result
COLUMNS = ["grid", "cell", "group", "seed", "is_baseline", "benchmark", "category", "status",
           "value", "category_score", "higher_is_better", "metric", "n_items", "ci_low", "ci_high",
           "eval_step", "model_step", "run_ids", "seconds", "judge_calls", "result_file"]


@dataclass
class CellInfo:
    """What the HTML report shows about a cell besides its numbers."""

    name: str
    group: str  # the cell without its seed: seeds of one group are averaged
    seed: Any
    axes: dict
    is_baseline: bool
    model_step: str | None = None
    config: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)  # display columns it fills itself (Source, # Samples)


@dataclass
class Results:
    grid: str
    frame: pd.DataFrame
    cells: list[CellInfo]
    benchmarks: list[str]
    item_scores: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    # (cell, benchmark) -> item id -> the fields its metric needs, for a metric that is not the
    # mean of the scores (``ablate.spec.metrics.ITEM_METRICS``): resampled by recomputing it
    item_fields: dict[tuple[str, str], dict[str, dict]] = field(default_factory=dict)
    examples: dict[tuple[str, str], list[dict]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    missing_jobs: list[str] = field(default_factory=list)
    source: str = "store"  # or "paper"
    store_root: Path | None = None
    plan: Plan | None = None
    grid_file: str | None = None
    reported: dict[tuple[str, str], float] = field(default_factory=dict)  # (group, key) -> number
    rm_scores: dict[str, float] = field(default_factory=dict)  # cell -> its RM's held-out accuracy
    # a grid's own benchmarks (eval.custom) -> their categories: columns beside the paper's six
    own_categories: dict[str, str] = field(default_factory=dict)
    value_replicates: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # cache
    # (cell, benchmark) -> the numbers an eval reports beside its value (``secondary``)
    secondary: dict[tuple[str, str], dict] = field(default_factory=dict)
    # benchmark -> its metric, where the value is not the mean of the per-item scores: no CI and
    # no paired test for it (``stats.item_scale``)
    not_resampled: dict[str, str] = field(default_factory=dict)
    # benchmark -> cells whose best-of-N sampler did not apply there (the model's own score)
    sampler_not_applied: dict[str, list[str]] = field(default_factory=dict)
    # benchmark -> the judge of its paper-protocol results when it is not the paper's
    other_judges: dict[str, str] = field(default_factory=dict)
    description: str = ""  # the grid's own words for what it compares: the tables' captions
    labels: dict[str, str] = field(default_factory=dict)  # the grid's display names for its keys

    def label(self, axis: str, key, default: str | None = None) -> str:
        """The grid's display name for an axis value: ``labels["<axis>.<key>"]`` (for a key
        that names different things on two axes), else ``labels["<key>"]``, else ``default`` or
        the key."""
        key = str(key)
        return self.labels.get(f"{axis}.{key}", self.labels.get(key, default or key))

    def group_order(self) -> list[str]:
        seen: list[str] = []
        for cell in self.cells:
            if cell.group not in seen:
                seen.append(cell.group)
        return seen

    def cell_info(self, name: str) -> CellInfo:
        return next(c for c in self.cells if c.name == name)


def group_name(cell_name: str) -> str:
    return re.sub(r"(^|,)seed=[^,]*", "", cell_name).strip(",") or cell_name


def _state_words(store: RunStore, step) -> str:
    """A step's state for the report's list of what to run; a corrupt record names its file."""
    state = store.state(step)
    return f"corrupt: {state['file']}" if state["state"] == "corrupt" else state["state"]


def _score_lines(path: Path, expected: str):
    """(line number, row) of each line of ``scores.jsonl``; a line that is not a JSON object is
    a ``CorruptResult`` naming it and what was ``expected``."""
    with open(path) as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorruptResult(f"{path}:{lineno}: expected {expected} ({exc})") from None
            if not isinstance(row, dict):
                raise CorruptResult(f"{path}:{lineno}: expected {expected}, got {row!r}")
            yield lineno, row


def read_scores(path: Path) -> dict[str, float]:
    """``scores.jsonl``: item id -> score. Raises ``CorruptResult`` naming the bad line."""
    scores: dict[str, float] = {}
    expected = '{"item_id", "score"}'
    for lineno, row in _score_lines(path, expected):
        try:
            score = float(row["score"])
            item = str(row["item_id"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptResult(f"{path}:{lineno}: expected {expected} "
                                f"({type(exc).__name__}: {exc})") from None
        if not math.isfinite(score):
            # one NaN would make every bootstrap comparison False: a p of 0, no CI, no note
            raise CorruptResult(f"{path}:{lineno}: score must be a finite number, got "
                                f"{row['score']!r}")
        scores[item] = score
    return scores


def read_item_fields(path: Path, fields: tuple[str, ...]) -> dict[str, dict]:
    """``scores.jsonl``: item id -> the named per-item fields. Raises ``CorruptResult`` naming
    the line that lacks one."""
    rows: dict[str, dict] = {}
    expected = f"the fields item_id, {', '.join(fields)}"
    for lineno, row in _score_lines(path, expected):
        try:
            rows[str(row["item_id"])] = {f: row[f] for f in fields}
        except KeyError as exc:
            raise CorruptResult(f"{path}:{lineno}: expected {expected} (KeyError: {exc})") \
                from None
    return rows


def metric_replicates(value: float, bench: str, rows: dict[str, dict],
                      label: str) -> np.ndarray | None:
    """Bootstrap replicates of a value that is not the mean of its items, recomputed by its
    metric (``ITEM_METRICS``) on each resample; None when the metric is not known or does not
    give the reported value on all the items (the file is not what the result was made from)."""
    if bench not in ITEM_METRICS or not rows:
        return None
    fields, metric = ITEM_METRICS[bench]
    ids = sorted(rows)
    on_items = metric_on_items(metric, rows, ids, fields)
    if abs(on_items(np.arange(len(ids))) - value) > 0.05:
        return None
    return bootstrap_statistic(on_items, len(ids), seed=stable_seed(label))


def read_examples(path: Path, limit: int = 2, chars: int = 600) -> list[dict]:
    """The first few items' prompt and the model's output, for the HTML report. A prompt is
    shortened from its start: few-shot prompts open with the same examples, and the item's own
    question is at the end. An output is shortened at its end."""
    out = []
    try:
        with open(path) as handle:
            for line in handle:
                if len(out) >= limit:
                    break
                row = json.loads(line)
                if not isinstance(row, dict):
                    continue
                # evals write ``outputs`` (one per sample); older files a single string
                outputs = row.get("outputs", row.get("generation", row.get("output", "")))
                outputs = outputs if isinstance(outputs, list) else [outputs]
                prompt = str(row.get("prompt", ""))
                output = "\n\n".join(str(o) for o in outputs)
                out.append({"item_id": str(row.get("item_id", "")),
                            "prompt": ("…" + prompt[-chars:]) if len(prompt) > chars else prompt,
                            "output": output[:chars] + ("…" if len(output) > chars else ""),
                            "n_outputs": len(outputs)})
    except (OSError, json.JSONDecodeError):
        return out
    return out


def value_replicates(value: float, scores: dict[str, float], label: str) -> np.ndarray | None:
    """Bootstrap replicates of a run's reported value from its per-item scores; None when the
    value is not their mean (``item_scale``)."""
    items = np.array([scores[k] for k in sorted(scores)])
    scale = item_scale(value, float(items.mean()))
    return None if scale is None else bootstrap_means(items, seed=stable_seed(label)) * scale


def load_results(store: RunStore | Path | str, grid: str) -> Results:
    """Read a grid's plan and every eval result of its cells from the store."""
    store = store if isinstance(store, RunStore) else RunStore(store)
    plan = store.load_plan(grid)
    raw_plan = read_json(store.plan_path(grid))
    benchmarks: list[str] = []
    for cell in plan.cells:
        benchmarks += [b for b in cell.evals if b not in benchmarks]
    about = grid_about(raw_plan, store.root)
    results = Results(grid=grid, frame=pd.DataFrame(columns=COLUMNS), cells=[],
                      benchmarks=benchmarks, store_root=store.root, plan=plan,
                      grid_file=raw_plan.get("source"), description=about["description"],
                      labels=about["labels"], own_categories=own_categories(plan))
    rows = []
    for cell in plan.cells:
        group = group_name(cell.name)
        config_step = plan.steps.get(cell.model_step) if cell.model_step else None
        first_eval = plan.steps.get(next(iter(cell.evals.values()), ""))
        shown = config_step or first_eval
        config = shown.config.model_dump(mode="json") if shown else {}
        results.cells.append(CellInfo(cell.name, group, cell.axes.get("seed"), dict(cell.axes),
                                      cell.is_baseline, cell.model_step, config,
                                      _train_labels(store, plan, cell.model_step)))
        for bench in benchmarks:
            rows.append(_eval_row(store, plan, results, cell, group, bench))
        _read_rm_score(store, plan, results, cell)
    results.frame = pd.DataFrame(rows, columns=COLUMNS)
    return results


def own_categories(plan: Plan) -> dict[str, str]:
    """The categories of a plan's own benchmarks, as their eval steps carry them."""
    return {s.config.benchmark: s.config.category for s in plan.steps.values()
            if s.kind == "eval" and s.config.module is not None and s.config.category}


def grid_about(raw_plan: dict, store_root: Path) -> dict:
    """The grid's description and display labels: saved beside the plan by ``ablate grid``, or,
    for a plan saved without them, read from the grid file the plan names as its source (a
    relative path as ``ablate grid`` was given it: from beside the store, else from here)."""
    about = {"description": raw_plan.get("description"), "labels": raw_plan.get("labels")}
    named = Path(str(raw_plan.get("source") or ""))
    source = next((p for p in (Path(store_root).parent / named, named) if p.is_file()), named)
    if None in about.values() and source.suffix in (".yaml", ".yml") and source.is_file():
        try:
            spec = yaml.safe_load(source.read_text())
        except (OSError, yaml.YAMLError):
            spec = None
        if isinstance(spec, dict) and spec.get("name") == raw_plan.get("grid"):
            about = {k: spec.get(k) if v is None else v for k, v in about.items()}
    labels = about["labels"] if isinstance(about["labels"], dict) else {}
    return {"description": str(about["description"] or ""),
            "labels": {str(k): str(v) for k, v in labels.items()}}


def _train_labels(store: RunStore, plan: Plan, model_step: str | None) -> dict:
    """Table 1's "# Samples": the preference rows the cell's model was trained on, as its
    training step recorded them (``train_summary.json``); nothing where it did not say."""
    step = plan.steps.get(model_step or "")
    path = store.step_dir(step) / "train_summary.json" if step else None
    try:
        rows = read_json(path).get("rows") if path and path.is_file() else None
    except (OSError, json.JSONDecodeError, AttributeError):
        rows = None
    if not isinstance(rows, int) or isinstance(rows, bool):
        return {}
    return {"# Samples": f"{rows:,}"}


def _eval_row(store: RunStore, plan: Plan, results: Results, cell, group: str, bench: str) -> dict:
    row = dict.fromkeys(COLUMNS)
    row.update(grid=plan.grid, cell=cell.name, group=group, seed=cell.axes.get("seed"),
               is_baseline=cell.is_baseline, benchmark=bench, category=category_of(bench, results.own_categories),
               model_step=cell.model_step, status="missing")
    step_id = cell.evals.get(bench)
    if step_id is None or step_id not in plan.steps:
        results.missing_jobs.append(f"{cell.name}: no {bench} eval in the plan")
        return row
    step = plan.steps[step_id]
    folder = store.step_dir(step)
    row.update(eval_step=step_id, run_ids=" ".join(plan.upstream(step_id)),
               result_file=str(folder / "result.json"))
    if not store.is_done(step):
        pending = [sid for sid in plan.upstream(step_id) if not store.is_done(plan.steps[sid])]
        states = ", ".join(f"{plan.steps[s].kind} {s} ({_state_words(store, plan.steps[s])})"
                           for s in pending)
        results.missing_jobs.append(f"{cell.name} / {bench}: run {states}")
        return row
    try:
        result = read_result(folder / "result.json")
        if not isinstance(result, EvalResult):
            raise CorruptResult(f"{folder / 'result.json'}: a {result.kind} result, not an eval's")
    except CorruptResult as exc:
        results.problems.append(f"corrupt result skipped: {exc}")
        row["status"] = "corrupt"
        return row
    done = store.done_info(step) or {}
    if best_of_n_not_applied(cell, step, result):
        results.sampler_not_applied.setdefault(bench, []).append(cell.name)
    judge, paper = getattr(step.config, "judge", None), PAPER_JUDGES.get(bench)
    if judge is not None and paper is not None and step.config.protocol == "paper" \
            and identity(judge) != identity(paper):  # where it was reached does not matter
        results.other_judges[bench] = describe_judge(judge)
    extra = result.model_extra or {}
    row.update(status="done", value=result.in_percent(),
               category_score=result.category_score, higher_is_better=result.higher_is_better,
               metric=result.metric, n_items=result.n_items,
               seconds=done.get("seconds", extra.get("seconds")),
               judge_calls=extra.get("judge_calls", result.secondary.get("judge_calls")))
    if result.secondary:
        results.secondary[(cell.name, bench)] = dict(result.secondary)
    scores_path = folder / result.scores_file
    if not scores_path.is_file():
        results.problems.append(f"per-item scores missing ({scores_path}): no CI or paired "
                                f"test for {cell.name} / {bench}")
    else:
        try:
            scores = read_scores(scores_path)
        except CorruptResult as exc:
            results.problems.append(f"corrupt per-item scores skipped (no CI): {exc}")
        else:
            if scores:
                # a metric of its own is never read as a mean of the scores, even where the
                # two agree by chance (XSTest's F1 equals its accuracy when the false refusals
                # and the missed ones are as many as each other)
                reps = None if bench in ITEM_METRICS else \
                    value_replicates(result.in_percent(), scores, bench)
                row["n_items"] = row["n_items"] or len(scores)
                if bench in ITEM_METRICS:
                    try:
                        fields = read_item_fields(scores_path, ITEM_METRICS[bench][0])
                    except CorruptResult as exc:
                        results.problems.append(f"per-item fields unreadable (no CI): {exc}")
                    else:
                        reps = metric_replicates(result.in_percent(), bench, fields, bench)
                        if reps is not None:
                            results.item_fields[(cell.name, bench)] = fields
                if reps is None:
                    results.not_resampled.setdefault(bench, result.metric)
                else:
                    results.item_scores[(cell.name, bench)] = scores
                    results.value_replicates[(cell.name, bench)] = reps
                    row["ci_low"], row["ci_high"] = percentile_ci(reps)
    results.examples[(cell.name, bench)] = read_examples(folder / "outputs.jsonl")
    return row


def reward_model_of(plan: Plan, cell) -> str | None:
    """The id of the reward model a plan cell's model was trained with (PPO) or reranked by
    (best-of-N), else None."""
    users = [cell.model_step, *cell.evals.values()]
    return next((plan.steps[s].inputs["reward_model"] for s in users
                 if s in plan.steps and "reward_model" in plan.steps[s].inputs), None)


def _read_rm_score(store: RunStore, plan: Plan, results: Results, cell) -> None:
    """Table 3's RewardBench column: the held-out accuracy of the cell's reward model."""
    rm_id = reward_model_of(plan, cell)
    if rm_id is None or rm_id not in plan.steps or not store.is_done(plan.steps[rm_id]):
        return
    try:
        result = read_result(store.step_dir(plan.steps[rm_id]) / "result.json")
    except CorruptResult as exc:
        results.problems.append(f"corrupt reward-model result skipped: {exc}")
        return
    if result.in_percent() is not None:
        results.rm_scores[cell.name] = result.in_percent()


def best_of_n_not_applied(cell, step, result: EvalResult) -> bool:
    """A best-of-N cell (no model step of its own, not the baseline) whose eval of this benchmark
    is the base model's own: best-of-N reranks greedy generations, which the benchmark has none
    of (log-likelihood scoring, pass@k samples)."""
    if (result.model_extra or {}).get("sampler_applied") is False:
        return True
    return not cell.is_baseline and cell.model_step is None \
        and getattr(step.config.sampler, "kind", None) != "best_of_n"
