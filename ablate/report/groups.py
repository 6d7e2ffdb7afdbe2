"""Per-group numbers with their uncertainty: a group is a grid cell without its seed.

For each group and each key (``bench:<name>`` on the benchmark's own scale, a category, or
``average``): the mean over seeds, the sd across seeds, a bootstrap CI from per-item scores, and a
paired bootstrap test against the baseline group. Keys without per-item scores (the paper's own
numbers) get points only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ablate.report.frame import Results, value_replicates
from ablate.report.stats import (
    PairedTest, bootstrap_means, mean_sd, paired_differences, paired_from_replicates,
    paired_metric_replicates, percentile_ci, stable_seed, to_category_scale,
)
from ablate.spec.benchmarks import aggregate
from ablate.spec.metrics import ITEM_METRICS

# A published average is computed from unrounded category scores; the published categories are
# rounded to 0.1, so their mean can differ from it by up to half a rounding step.
ROUNDING_SLACK = 0.05 + 1e-9


@dataclass
class Stat:
    value: float | None
    sd: float = math.nan
    n_seeds: int = 0
    ci: tuple[float, float] | None = None
    test: PairedTest | None = None
    higher_is_better: bool = True
    cells: list[str] = field(default_factory=list)

    @property
    def missing(self) -> bool:
        return self.value is None

    @property
    def within_noise(self) -> bool:
        return self.test is not None and self.test.within_noise


@dataclass
class _CellNumbers:
    points: dict  # key -> float | None
    reps: dict  # key -> replicate array | None
    diff_points: dict
    diff_reps: dict
    n_pairs: dict


def _cell_numbers(results: Results, cell: str, baseline_cells: list[str]) -> _CellNumbers:
    frame = results.frame[results.frame.cell == cell].set_index("benchmark")
    points, reps, diff_points, diff_reps, n_pairs = {}, {}, {}, {}, {}
    cat_points, cat_reps, cat_diff_points, cat_diff_reps = {}, {}, {}, {}
    base_frames = [results.frame[results.frame.cell == b].set_index("benchmark")
                   for b in baseline_cells]
    for bench in results.benchmarks:
        row = frame.loc[bench] if bench in frame.index else None
        key = f"bench:{bench}"
        points[key] = cat_points[bench] = None
        reps[key] = cat_reps[bench] = diff_reps[key] = cat_diff_reps[bench] = None
        diff_points[key] = cat_diff_points[bench] = None
        if row is None or row.status != "done":
            continue
        value, cat, hib = float(row.value), float(row.category_score), bool(row.higher_is_better)
        sign = 1.0 if hib else -1.0
        points[key], cat_points[bench] = value, cat
        items = results.item_scores.get((cell, bench))
        if items:
            reps[key] = results.value_replicates.get((cell, bench))
            if reps[key] is None:
                reps[key] = value_replicates(value, items, bench)
            cat_reps[bench] = to_category_scale(reps[key], value, cat, hib)
        bases = [b for b in base_frames if bench in b.index and b.loc[bench].status == "done"]
        if bases and len(bases) == len(base_frames):
            base_value = float(np.mean([b.loc[bench].value for b in bases]))
            diff_points[key] = value - base_value
            cat_diff_points[bench] = sign * diff_points[key]
            base_items = [results.item_scores.get((b, bench)) for b in baseline_cells]
            fields = [results.item_fields.get((c, bench)) for c in (cell, *baseline_cells)]
            if items and all(base_items) and all(fields):
                # a metric that is not a mean (frame.metric_replicates): recomputed on the same
                # resampled items for both runs
                names, metric = ITEM_METRICS[bench]
                diff_reps[key] = np.mean([paired_metric_replicates(
                    metric, names, fields[0], other, seed=stable_seed(bench, "paired"))
                    for other in fields[1:]], axis=0)
                cat_diff_reps[bench] = sign * diff_reps[key]
                n_pairs[key] = min(len(set(fields[0]) & set(other)) for other in fields[1:])
            elif items and all(base_items):
                runs = [paired_differences(items, other) for other in base_items]
                # percent: only mean metrics keep their item scores (frame.value_replicates)
                diff_reps[key] = np.mean([bootstrap_means(d, seed=stable_seed(bench, "paired"))
                                          for d in runs], axis=0) * 100.0
                cat_diff_reps[bench] = sign * diff_reps[key]
                n_pairs[key] = min(d.size for d in runs)
    for source, target in ((cat_points, points), (cat_reps, reps), (cat_diff_points, diff_points),
                           (cat_diff_reps, diff_reps)):
        target.update(aggregate(source, results.benchmarks, results.own_categories))
    return _CellNumbers(points, reps, diff_points, diff_reps, n_pairs)


def baseline_of(results: Results, group: str) -> str | None:
    """The SFT baseline group ``group`` is compared with: the baseline of its own base model (a
    grid over several base models has one baseline each, and a DPO run on one model says nothing
    against another's SFT). None for a baseline itself, or when no baseline has its model."""
    info = next(c for c in results.cells if c.group == group)
    if info.is_baseline:
        return None
    model = info.axes.get("model")
    return next((c.group for c in results.cells
                 if c.is_baseline and c.axes.get("model") == model), None)


def parent_of(results: Results, group: str) -> str | None:
    """The group ``group``'s model was trained from: the cell whose model step is an input of its
    own (a recipe's next step), else its base model's SFT baseline (DPO, PPO and best-of-N start
    from the base model). None for a baseline."""
    info = next(c for c in results.cells if c.group == group)
    step = results.plan.steps.get(info.model_step or "") if results.plan else None
    if step is not None:
        trained_by = {c.model_step: c.group for c in results.cells
                      if c.model_step and c.group != group}
        for role, source in step.inputs.items():
            if role != "reward_model" and source in trained_by:
                return trained_by[source]
    return baseline_of(results, group)


def group_stats(results: Results) -> dict[str, dict[str, Stat]]:
    """group -> key -> Stat, for every group of the results in plan order."""
    hib = {}
    for bench in results.benchmarks:
        flags = results.frame[(results.frame.benchmark == bench)
                              & (results.frame.status == "done")].higher_is_better
        hib[f"bench:{bench}"] = bool(flags.iloc[0]) if len(flags) else True
    out: dict[str, dict[str, Stat]] = {}
    for group in results.group_order():
        cells = [c.name for c in results.cells if c.group == group]
        base_group = baseline_of(results, group)
        baseline_cells = [c.name for c in results.cells if c.group == base_group]
        numbers = [_cell_numbers(results, c, baseline_cells) for c in cells]
        stats: dict[str, Stat] = {}
        for key in numbers[0].points:
            values = [n.points[key] for n in numbers]
            if any(v is None for v in values):
                stats[key] = Stat(None, cells=cells, higher_is_better=hib.get(key, True))
                continue
            mean, sd = mean_sd(values)
            stat = Stat(mean, sd, len(values), cells=cells, higher_is_better=hib.get(key, True))
            reps = [n.reps[key] for n in numbers]
            if all(r is not None for r in reps):
                stat.ci = percentile_ci(np.mean(reps, axis=0))
            diffs = [n.diff_reps[key] for n in numbers]
            if base_group is not None and all(d is not None for d in diffs):
                stat.test = paired_from_replicates(
                    float(np.mean([n.diff_points[key] for n in numbers])), np.mean(diffs, axis=0),
                    min(n.n_pairs.get(key, 0) for n in numbers) if key.startswith("bench:") else 0)
            stats[key] = stat
        _apply_reported(results, group, stats)
        out[group] = stats
    return out


def _apply_reported(results: Results, group: str, stats: dict[str, Stat]) -> None:
    """Prefer a published aggregate (computed from unrounded scores) when it agrees with ours."""
    for (g, key), reported in results.reported.items():
        if g != group:
            continue
        ours = stats.get(key)
        if ours is None or ours.value is None:
            raise ValueError(f"{results.grid}: row {group!r} reports {key} = {reported} but its "
                             f"{key} cannot be computed (a category is missing)")
        if abs(ours.value - reported) > ROUNDING_SLACK:
            raise ValueError(f"{results.grid}: row {group!r} reports {key} = {reported}, but the "
                             f"mean of its categories is {ours.value:.3f}")
        ours.value = reported
