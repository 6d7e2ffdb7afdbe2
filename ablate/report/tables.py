"""Each of the paper's tables, defined once: rows, columns, baseline, which results feed a cell.

``build_table(spec, results, stats)`` turns a spec and a grid's results into a ``TableResult``
that every renderer (Markdown, CSV, LaTeX, HTML) prints without further decisions: shading
(better or worse than the baseline, on the displayed precision), within-noise marks, the Avg. Δ
row, and notes on missing results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Callable

from ablate.report.categories import CATEGORIES, CATEGORY_OF, category_of, label
from ablate.report.frame import CellInfo, Results
from ablate.report.groups import Stat, baseline_of

# Column headings for an axis, where a table adds one to tell rows apart
AXIS_TITLES = {"model": "Model", "data": "Data", "algorithm": "Alg.",
               "reward_model": "Reward model", "prompts": "Prompts"}


def fmt(value: float | None, digits: int = 1, signed: bool = False) -> str:
    """Round half up on the decimal value (not the binary float), as a table is read."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = str(Decimal(repr(round(float(value), 9))).quantize(Decimal(1).scaleb(-digits),
                                                               rounding=ROUND_HALF_UP))
    if text.startswith("-") and Decimal(text) == 0:
        text = text[1:]
    return f"+{text}" if signed and not text.startswith("-") else text


@dataclass(frozen=True)
class Column:
    key: str  # a Stat key ("bench:gsm8k", a category, "average"), "rm:accuracy" or "delta:<key>"
    label: str
    where: tuple[tuple[str, str], ...] = ()  # axis filters, for tables whose columns mix cells


PARTIAL_MARK = "*"


def partial_categories(results: Results) -> dict[str, list[str]]:
    """Categories the grid covers with fewer benchmarks than the paper's (category -> the
    benchmarks it has): their means, and the Average over them, are not the paper's."""
    if results.source == "paper":
        return {}
    out = {}
    for category in CATEGORIES:
        have = [b for b in results.benchmarks
                if category_of(b, results.own_categories) == category]
        paper = [b for b, c in CATEGORY_OF.items() if c == category]
        if have and len(have) < len(paper):
            out[category] = have
    return out


def paper_categories_present(results: Results) -> set[str]:
    """The paper's categories the grid's benchmarks cover (its own benchmarks' are not)."""
    return {category_of(b, results.own_categories) for b in results.benchmarks} & set(CATEGORIES)


def average_is_partial(results: Results) -> bool:
    return bool(partial_categories(results)) or \
        len(paper_categories_present(results)) < len(CATEGORIES)


def category_columns(results: Results) -> list[Column]:
    present = [c for c in CATEGORIES if any(results.frame.category == c)]
    partial = partial_categories(results)
    mark = {c: PARTIAL_MARK if c in partial else "" for c in present}
    average = "Average" + (PARTIAL_MARK if average_is_partial(results) else "")
    own = list(dict.fromkeys(c for c in results.own_categories.values()
                             if any(results.frame.category == c)))
    return [Column(c, label(c) + mark[c]) for c in present] + [Column("average", average)] + \
        [Column(c, label(c)) for c in own]


def benchmark_and_category_columns(results: Results) -> list[Column]:
    return [Column(f"bench:{b}", label(b)) for b in results.benchmarks] + category_columns(results)


def _axis(cell: CellInfo, name: str) -> str:
    return str(cell.axes.get(name, ""))


def axis_label(results: Results, cell: CellInfo, axis: str) -> str:
    """An axis value in the grid's words (``labels:``); algorithms default to upper case."""
    value = _axis(cell, axis)
    return results.label(axis, value, value.upper() if axis == "algorithm" else None)


def base_label(results: Results, cell: CellInfo) -> str:
    return f"{axis_label(results, cell, 'model')} (SFT)"


def data_label(results: Results, cell: CellInfo) -> str:
    if "Source" in cell.labels:
        return cell.labels["Source"]
    return base_label(results, cell) if cell.is_baseline else axis_label(results, cell, "data")


def recipe_label(results: Results, cell: CellInfo) -> str:
    if "Model" in cell.labels:
        return cell.labels["Model"]
    if cell.is_baseline:
        return base_label(results, cell)
    text = f"+{axis_label(results, cell, 'algorithm')} on {axis_label(results, cell, 'data')}"
    if _axis(cell, "reward_model") not in ("", "none"):
        text += f", {axis_label(results, cell, 'reward_model')}"
    if _axis(cell, "prompts") not in ("", "none", "cell"):  # "cell": the data's own prompts
        text += f", {axis_label(results, cell, 'prompts')} prompts"
    return text


def rm_label(results: Results, cell: CellInfo) -> str:
    if cell.is_baseline:
        return base_label(results, cell)
    return axis_label(results, cell, "reward_model")


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str  # the caption adds the grid's description
    grid: str  # the grid it is usually built from (``--grid`` overrides)
    lead: tuple[tuple[str, Callable[[Results, CellInfo], str]], ...]
    columns: Callable[[Results], list[Column]] = category_columns
    row_axes: tuple[str, ...] = ()  # empty: one row per group; else pivot groups by these axes
    include_baseline: bool = True
    delta_row: tuple[str, str, str, str] | None = None  # (axis, minus, plus, pair-by axis)


TABLES: dict[str, TableSpec] = {spec.name: spec for spec in (
    TableSpec("1", "Table 1", "table1",
              (("Source", data_label),
               ("# Samples", lambda r, c: c.labels.get("# Samples", "")))),
    TableSpec("2", "Table 2", "table2",
              (("Data", data_label),
               ("Alg.", lambda r, c: c.labels.get("Alg.", "" if c.is_baseline
                                                  else axis_label(r, c, "algorithm")))),
              delta_row=("algorithm", "dpo", "ppo", "data")),
    TableSpec("3", "Table 3", "table3",
              (("Reward model", rm_label),),
              columns=lambda r: [
                  Column("rm:accuracy", "RM held-out acc."),
                  Column("average", "BoN Avg.", (("algorithm", "bon"),)),
                  Column("delta:average", "BoN Δ SFT", (("algorithm", "bon"),)),
                  Column("bench:gsm8k", "PPO GSM8k", (("algorithm", "ppo"),)),
                  Column("bench:alpaca_eval_2", "PPO AE2", (("algorithm", "ppo"),)),
                  Column("average", "PPO Avg.", (("algorithm", "ppo"),))],
              row_axes=("reward_model",), include_baseline=False),
    TableSpec("4", "Table 4", "table4",
              (("Reward model", rm_label),
               ("Prompts", lambda r, c: "" if c.is_baseline else axis_label(r, c, "prompts"))),
              columns=lambda r: [Column("bench:gsm8k", "GSM8k", (("algorithm", "ppo"),)),
                                 Column("coding", "Coding", (("algorithm", "ppo"),)),
                                 Column("average", "Avg. (all evals)", (("algorithm", "ppo"),))],
              row_axes=("reward_model", "prompts")),
    TableSpec("5", "Table 5", "table5", (("Model", recipe_label),)),
    TableSpec("smoke", "Every cell", "smoke",
              (("Cell", lambda r, c: c.labels.get("Cell", recipe_label(r, c))),),
              columns=benchmark_and_category_columns),
)}


@dataclass
class TableCell:
    stat: Stat | None
    text: str  # the number as printed (with ± sd across seeds when there are several)
    shade: str | None = None  # "better" | "worse" | None (same as baseline at this precision)
    within_noise: bool = False
    group: str | None = None  # where its numbers come from (None for a summary row)
    key: str = ""
    best: bool = False  # the best value of its column at the shown precision (printed bold)
    paper: float | None = None  # ``--vs-paper``: the paper's number for this cell
    paper_text: str = ""  # ... as the paper's table prints it
    has_paper: bool = False  # the row was matched with a paper row (its cell may still be empty)

    @property
    def missing(self) -> bool:
        return self.stat is None or self.stat.value is None


@dataclass
class TableRow:
    lead: list[str]
    cells: list[TableCell]
    groups: list[str]
    is_baseline: bool = False
    is_summary: bool = False


@dataclass
class TableResult:
    spec: TableSpec
    grid: str
    columns: list[Column]
    rows: list[TableRow]
    notes: list[str]
    title: str = ""  # the caption: the table's name and the grid's description
    lead_labels: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.title = self.title or self.spec.title
        self.lead_labels = self.lead_labels or [name for name, _ in self.spec.lead]


NOISE_MARK = "†"


def shade_of(value: float | None, reference: float | None,
             higher_is_better: bool = True) -> str | None:
    if value is None or reference is None:
        return None
    diff = Decimal(fmt(value)) - Decimal(fmt(reference))
    if diff == 0:
        return None
    return "better" if (diff > 0) == higher_is_better else "worse"


def _text(stat: Stat | None, signed: bool = False) -> str:
    if stat is None or stat.value is None:
        return ""
    text = fmt(stat.value, signed=signed)
    return f"{text} ± {fmt(stat.sd)}" if stat.n_seeds > 1 and not math.isnan(stat.sd) else text


def _matches(cell: CellInfo, where: tuple[tuple[str, str], ...]) -> bool:
    return all(str(cell.axes.get(axis)) == value for axis, value in where)


def build_table(spec: TableSpec, results: Results, stats: dict[str, dict[str, Stat]]) -> TableResult:
    columns = spec.columns(results)
    info = {c.group: c for c in reversed(results.cells)}  # first cell of each group
    base_groups = [g for g in results.group_order() if info[g].is_baseline]
    groups = [g for g in results.group_order() if spec.include_baseline or g not in base_groups]

    def make_cell(group: str | None, column: Column) -> TableCell:
        if group is None:
            return TableCell(None, "", key=column.key)
        own = stats[group]
        is_base = group in base_groups
        base_group = baseline_of(results, group)  # the SFT of the group's own base model
        base = stats[base_group] if base_group else {}
        if column.key == "rm:accuracy":
            scores = [results.rm_scores[c] for c in own[next(iter(own))].cells if c in results.rm_scores]
            stat = Stat(sum(scores) / len(scores), n_seeds=len(scores)) if scores else Stat(None)
            return TableCell(stat, _text(stat), group=group, key=column.key)
        if column.key.startswith("delta:"):
            key = column.key[len("delta:"):]
            ref = base.get(key)
            mine = own.get(key)
            if is_base or mine is None or mine.value is None or ref is None or ref.value is None:
                return TableCell(Stat(None), "", group=group, key=column.key)
            stat = Stat(mine.value - ref.value, test=mine.test, n_seeds=1)
            return TableCell(stat, _text(stat, signed=True), shade_of(stat.value, 0.0),
                             mine.within_noise, group, column.key)
        stat = own.get(column.key)
        ref = base.get(column.key)
        shade = None if is_base or stat is None else shade_of(
            stat.value, ref.value if ref else None, stat.higher_is_better)
        return TableCell(stat, _text(stat), shade, bool(stat and stat.within_noise), group, column.key)

    rows: list[TableRow] = []
    if not spec.row_axes:
        for group in groups:
            cell = info[group]
            rows.append(TableRow([fn(results, cell) for _, fn in spec.lead],
                                 [make_cell(group, col) for col in columns], [group],
                                 is_baseline=group in base_groups))
    else:
        def row_key(group: str) -> tuple:
            if group in base_groups:  # an SFT row is its own row whatever its axes say
                return ("<baseline>", str(info[group].axes.get("model")))
            return tuple(str(info[group].axes.get(a)) for a in spec.row_axes)

        keys: list[tuple] = []
        for group in groups:
            if row_key(group) not in keys:
                keys.append(row_key(group))
        for key in keys:
            members = [g for g in groups if row_key(g) == key]
            is_base = all(g in base_groups for g in members)
            chosen = []
            for col in columns:
                hits = [g for g in members if is_base or _matches(info[g], col.where)]
                if col.key == "rm:accuracy":
                    hits = [g for g in hits if any(c.group == g and c.name in results.rm_scores
                                                   for c in results.cells)]
                chosen.append(hits[0] if hits else None)
            if not any(chosen):
                continue  # groups this table does not compare (e.g. DPO rows in the RM table)
            rows.append(TableRow([fn(results, info[members[0]]) for _, fn in spec.lead],
                                 [make_cell(g, col) for g, col in zip(chosen, columns)],
                                 sorted({g for g in chosen if g}), is_baseline=is_base))
    lead_labels = [name for name, _ in spec.lead]
    if not spec.row_axes:
        lead_labels = tell_rows_apart(results, rows, lead_labels, info)
    if spec.delta_row:
        rows.append(_delta_row(spec, results, stats, columns, groups, info, len(lead_labels)))
    _mark_best(rows)
    title = f"{spec.title}: {results.description}" if results.description else spec.title
    return TableResult(spec, results.grid, columns, rows, _notes(spec, results, rows, columns),
                       title, lead_labels)


def tell_rows_apart(results: Results, rows: list[TableRow], lead_labels: list[str],
                     info: dict[str, CellInfo]) -> list[str]:
    """Rows whose lead reads the same (DPO and PPO on one data set in Table 1) get a column for
    each axis they differ on; a lead column empty in every row (no "# Samples" recorded) goes."""
    by_lead: dict[tuple, list[TableRow]] = {}
    for row in rows:
        by_lead.setdefault(tuple(row.lead), []).append(row)
    extra: list[str] = []
    for same in by_lead.values():
        cells = [info[r.groups[0]] for r in same]
        extra += [a for a in AXIS_TITLES
                  if a not in extra and len({_axis(c, a) for c in cells}) > 1]
    extra = [a for a in AXIS_TITLES if a in extra and AXIS_TITLES[a] not in lead_labels]
    for row in rows:
        cell = info[row.groups[0]]
        row.lead += ["" if cell.is_baseline or _axis(cell, a) in ("", "none")
                     else axis_label(results, cell, a) for a in extra]
    lead_labels = lead_labels + [AXIS_TITLES[a] for a in extra]
    keep = [i for i in range(len(lead_labels)) if any(r.lead[i] for r in rows)] or [0]
    for row in rows:
        row.lead = [row.lead[i] for i in keep]
    return [lead_labels[i] for i in keep]


def _mark_best(rows: list[TableRow]) -> None:
    """Bold the best value of each column, as the paper does: at the shown precision (ties are
    all bold), the better direction from the result itself (ToxiGen: lower), summary rows out."""
    body = [r for r in rows if not r.is_summary]
    for index in range(len(body[0].cells) if body else 0):
        cells = [r.cells[index] for r in body if not r.cells[index].missing]
        if len(cells) < 2:
            continue
        sign = 1 if cells[0].stat.higher_is_better else -1
        best = max(sign * Decimal(fmt(c.stat.value)) for c in cells)
        for cell in cells:
            cell.best = sign * Decimal(fmt(cell.stat.value)) == best


def _delta_row(spec: TableSpec, results: Results, stats, columns, groups, info,
               width: int) -> TableRow:
    axis, minus, plus, pair_by = spec.delta_row
    pairs: dict[str, dict[str, str]] = {}
    for group in groups:
        cell = info[group]
        if str(cell.axes.get(axis)) in (minus, plus):
            pairs.setdefault(str(cell.axes.get(pair_by)), {})[str(cell.axes.get(axis))] = group
    cells = []
    for col in columns:
        diffs = []
        for pair in pairs.values():
            if minus in pair and plus in pair:
                a, b = stats[pair[plus]].get(col.key), stats[pair[minus]].get(col.key)
                if a and b and a.value is not None and b.value is not None:
                    diffs.append(a.value - b.value)
        stat = Stat(sum(diffs) / len(diffs) if diffs else None, n_seeds=1)
        cells.append(TableCell(stat, _text(stat, signed=True), shade_of(stat.value, 0.0),
                               key=col.key))
    names = [results.label(axis, key, key.upper()) for key in (plus, minus)]
    lead = [f"Avg. Δ ({names[0]} − {names[1]})"] + [""] * (width - 1)
    return TableRow(lead, cells, [], is_summary=True)


def data_notes(results: Results) -> list[str]:
    """Exactly what was trained on where the data is a file or hub dataset (or a registry
    dataset read from ``$ABLATE_DATA_<NAME>``): where it was and its digest, per training step."""
    found: dict[str, list[str]] = {}
    for step in (results.plan.steps.values() if results.plan else ()):
        for attr in ("data", "prompts"):
            ref = getattr(step.config, attr, None)
            if getattr(ref, "digest", None):
                where = ref.path or ref.hub or ref.name
                found.setdefault(f"{where} ({ref.digest})", []).append(f"{step.kind} {step.id}")
    return [f"trained on {source}: {', '.join(steps)}" for source, steps in found.items()]


# A benchmark whose value hides what moved it -> the secondary numbers its evals report that
# show it, and what they are: XSTest's F1 rises as much by refusing the safe prompts too.
EXPLAINED_BY = {
    "xstest": (("refusal_rate_unsafe", "refusal_rate_safe"),
               "refusals (% of the unsafe / safe prompts)"),
}


def explaining_notes(results: Results, rows: list[TableRow], columns: list[Column]) -> list[str]:
    """One note per shown benchmark of ``EXPLAINED_BY``: each row's secondary numbers (the mean
    over its cells' seeds)."""
    notes = []
    shown = [c.key for c in columns]
    for bench, (keys, what) in EXPLAINED_BY.items():
        if f"bench:{bench}" not in shown:
            continue
        at = shown.index(f"bench:{bench}")
        parts = []
        for row in rows:
            group = None if row.is_summary else row.cells[at].group
            if group is None:
                continue
            found = [results.secondary.get((info.name, bench), {}) for info in results.cells
                     if info.group == group]
            numbers = [[f[k] for f in found if isinstance(f.get(k), (int, float))] for k in keys]
            if all(numbers):
                parts.append(f"{' '.join(row.lead).strip()} "
                             + " / ".join(fmt(sum(n) / len(n)) for n in numbers))
        if parts:
            notes.append(f"{label(bench)} {what}: " + "; ".join(parts) + ".")
    return notes


def _notes(spec: TableSpec, results: Results, rows: list[TableRow], columns: list[Column]) -> list[str]:
    notes = []
    if any(c.within_noise for r in rows for c in r.cells):
        notes.append(f"{NOISE_MARK} within noise of the SFT baseline: the 95% paired-bootstrap CI "
                     "of the difference includes 0.")
    beyond = [f"{' '.join(r.lead).strip()} / {col.label} {fmt(c.stat.test.delta, signed=True)} "
              f"(95% CI {fmt(c.stat.test.ci_low, signed=True)} to "
              f"{fmt(c.stat.test.ci_high, signed=True)}, p = {c.stat.test.p_value:.3f})"
              for r in rows if not r.is_summary for col, c in zip(columns, r.cells)
              if col.key.startswith("bench:") and c.stat and c.stat.test
              and not c.stat.test.within_noise]
    if beyond:
        # the benchmark cells a reader should believe: the effect with its paired CI, not only a
        # missing † (categories and averages repeat them)
        notes.append("beyond noise (paired difference from the SFT baseline on the same items): "
                     + "; ".join(beyond) + ".")
    notes.extend(explaining_notes(results, rows, columns))
    if any(c.stat and c.stat.n_seeds > 1 for r in rows for c in r.cells):
        notes.append("a ± b: mean ± sd across seeds.")
    missing = [f"{' '.join(r.lead).strip()} / {col.label}" for r in rows if not r.is_summary
               for col, c in zip(columns, r.cells) if c.missing]
    if missing:
        notes.append(f"missing (not zero): {len(missing)} cell(s): " + "; ".join(missing))
    shown = {col.key for col in columns}
    partial = {c: b for c, b in partial_categories(results).items() if c in shown}
    if partial or ("average" in shown and average_is_partial(results)):
        parts = [f"{label(c)} = {' + '.join(label(b) for b in have)} only" for c, have in
                 partial.items()]
        if "average" in shown and average_is_partial(results):
            n = len(paper_categories_present(results))
            parts.append(f"Average = the mean of the {n} categories this grid has")
        notes.append(f"{PARTIAL_MARK} not the paper's aggregate: " + "; ".join(parts)
                     + " (the paper's Average is over all 11 benchmarks in 6 categories).")
    if results.own_categories:
        notes.append("benchmarks of the grid's own: " + "; ".join(
            f"{label(b)} ({label(c)})" for b, c in results.own_categories.items())
            + ": each category is a column of its own, not in the Average.")
    notes.extend(data_notes(results))
    if results.sampler_not_applied:
        notes.append("best-of-N does not apply to " + ", ".join(
            label(b) for b in results.sampler_not_applied)
            + " (log-likelihood scoring, or samples for pass@k): those cells show the model's "
            "own score.")
    if results.other_judges:
        notes.append("judged by another judge than the paper's: " + "; ".join(
            f"{label(b)} by {j}" for b, j in results.other_judges.items())
            + ": not comparable with the paper's numbers.")
    if results.not_resampled:
        notes.append("no CI or paired test for " + ", ".join(
            f"{label(b)} ({metric})" for b, metric in results.not_resampled.items())
            + ": the metric is not a mean of per-item scores, so resampling items would test "
            "another quantity; the categories and Average that include it have none either.")
    if results.missing_jobs:
        where = f"`ablate grid {results.grid_file or 'grids/' + results.grid + '.yaml'}`"
        notes.append(f"jobs to run ({where} runs them): " + "; ".join(results.missing_jobs))
    notes.extend(results.problems)
    return notes
