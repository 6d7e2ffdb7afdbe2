"""The paper's figures with matplotlib (Agg): each returns a Figure, or None with no data for it.

Figure 1: gain from each recipe component (data, algorithm, RM, prompts) on GSM8k and the average.
Figure 2: reward vs KL from the training logs (and win rate vs sampling temperature where present).
Figure 3: GSM8k by policy-training prompt set, per reward model.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ablate.report.frame import Results  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from ablate.report.categories import category_of, label  # noqa: E402
from ablate.report.groups import Stat, baseline_of, parent_of  # noqa: E402
from ablate.report.tables import fmt, recipe_label, shade_of  # noqa: E402

FIGURES = ("1", "2", "3", "kl-frontier")
BLUE, ORANGE, GREY, BASE = "#3b6fb6", "#e8853d", "#b0b0b0", "#555555"
SERIES = ("#4c9a8a", "#8a6bb0", "#b59a3c", "#c06080")


def _err(stat: Stat) -> list[list[float]]:
    if stat.ci is None:
        return [[0.0], [0.0]]
    return [[max(0.0, stat.value - stat.ci[0])], [max(0.0, stat.ci[1] - stat.value)]]


def _reasoning_key(results: Results) -> tuple[str, str]:
    """Figure 1's first panel: GSM8k as the paper's, else the reasoning category, else the grid's
    first benchmark (a grid may have no reasoning benchmark at all)."""
    if "gsm8k" in results.benchmarks:
        return "bench:gsm8k", "GSM8k"
    if any(category_of(b) == "reasoning" for b in results.benchmarks):
        return "reasoning", "Reasoning"
    first = results.benchmarks[0]
    return f"bench:{first}", label(first)


def _first_model(results: Results, wanted=lambda info: True) -> tuple[str | None, list[str]]:
    """One base model's SFT baseline and the groups compared with it (plan order): the model of
    the first group ``wanted`` accepts. A figure draws one base model, so that no bar is read
    against another model's SFT."""
    info = {c.group: c for c in reversed(results.cells)}
    first = next((g for g in results.group_order()
                  if not info[g].is_baseline and wanted(info[g])), None)
    base = baseline_of(results, first) if first else next(
        (c.group for c in results.cells if c.is_baseline), None)
    members = [g for g in results.group_order()
               if not info[g].is_baseline and baseline_of(results, g) == base]
    return base, members


def figure_1(results: Results, stats: dict[str, dict[str, Stat]]):
    """Each cell of one base model (plan order, its SFT first) and its change over the model it
    was trained from: the SFT baseline for DPO, PPO and best-of-N; the earlier cell for a recipe
    step trained from another cell's model. Cells are not compared with their neighbours: DPO on
    one data set is an alternative to DPO on another, not a step after it."""
    info = {c.group: c for c in reversed(results.cells)}
    base, members = _first_model(results)
    steps = ([base] if base else []) + members
    first_key, first_label = _reasoning_key(results)
    panels = [(first_key, first_label), ("average", "Average")]
    # A cell without a value keeps its place, marked missing, so the others keep their positions.
    present = [g for g in steps if all(stats[g][k].value is not None for k, _ in panels)]
    if len(present) < 2:
        return None
    names = []
    for g in steps:
        parent = parent_of(results, g)
        names.append(recipe_label(results, info[g]) + (
            f"\n(from {recipe_label(results, info[parent])})" if parent and parent != base else ""))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, (key, title) in zip(axes, panels):
        tops, bottoms = [0.0], [0.0]
        for i, g in enumerate(steps):
            stat = stats[g][key]
            if g not in present:
                ax.annotate("missing", (i, 0), ha="center", va="bottom", fontsize=8, color=GREY)
                continue
            parent = parent_of(results, g)
            reference = stats[parent][key].value if parent else None
            shade = shade_of(stat.value, reference, stat.higher_is_better)
            color = {"better": BLUE, "worse": ORANGE}.get(shade, GREY if parent else BASE)
            low_err, high_err = _err(stat)
            ax.bar([i], [stat.value], color=color, yerr=[low_err, high_err], capsize=3)
            tops.append(stat.value + high_err[0])
            bottoms.append(stat.value - low_err[0])
            if reference is not None:
                ax.annotate(fmt(stat.value - reference, signed=True), (i, tops[-1]), ha="center",
                            va="bottom", xytext=(0, 3), textcoords="offset points", fontsize=8)
        if base and stats[base][key].value is not None:
            ax.axhline(stats[base][key].value, color=BASE, linestyle=":", linewidth=0.8)
        # bars start at zero, so their heights compare; the top leaves room for the CIs and labels
        ax.set_ylim(min(bottoms), max(tops) * 1.12 + 1)
        ax.set_xticks(range(len(steps)), names, rotation=25, ha="right", fontsize=7)
        ax.set_ylabel(f"{title} (score, 0–100)")
        ax.set_title(f"{title}: change over the model each was trained from", fontsize=10)
    fig.legend(handles=[Patch(color=BASE, label="SFT baseline"),
                        Patch(color=BLUE, label="better"), Patch(color=ORANGE, label="worse"),
                        Patch(color=GREY, label="same (at 0.1)")],
               loc="upper right", fontsize=7, ncol=4, frameon=False)
    fig.text(0.01, 0.01, "Error bars: 95% bootstrap CI over items. Numbers: the change over the "
             "model the cell was trained from (the SFT baseline, dotted, unless named under the "
             "bar).", fontsize=7, color=BASE)
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    return fig


def training_logs(results: Results) -> dict[str, list[dict]]:
    """cell -> its training step's ``metrics.jsonl`` rows that log a KL and a reward."""
    if results.store_root is None or results.plan is None:
        return {}
    out = {}
    for cell in results.cells:
        step = results.plan.steps.get(cell.model_step or "")
        if step is None:
            continue
        path = Path(results.store_root) / "steps" / step.kind / step.id / "metrics.jsonl"
        if not path.is_file():
            continue
        rows = []
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            reward = row.get("reward", row.get("rm_score"))
            if isinstance(row.get("kl"), (int, float)) and isinstance(reward, (int, float)):
                rows.append({"kl": float(row["kl"]), "reward": float(reward),
                             "step": row.get("step", len(rows)), "kind": step.kind})
        if rows:
            out[cell.name] = rows
    return out


def win_rate_by_temperature(results: Results) -> dict[str, list[tuple[float, float]]]:
    if results.plan is None:
        return {}
    points: dict[str, list[tuple[float, float]]] = {}
    done = results.frame[(results.frame.status == "done")
                         & results.frame.benchmark.str.startswith("alpaca_eval")]
    for row in done.itertuples():
        sampler = results.plan.steps[row.eval_step].config.sampler
        if hasattr(sampler, "temperature"):
            points.setdefault(f"{row.group} {row.benchmark}", []).append(
                (sampler.temperature, float(row.value)))
    return {k: sorted(v) for k, v in points.items()}


def figure_2(results: Results, stats=None):
    logs = training_logs(results)
    temps = win_rate_by_temperature(results)
    if not logs and not temps:
        return None
    fig, axes = plt.subplots(1, 2 if temps else 1, figsize=(11 if temps else 6, 4.2), squeeze=False)
    ax = axes[0][0]
    for cell, rows in sorted(logs.items()):
        rows = sorted(rows, key=lambda r: r["step"])
        kind = rows[0]["kind"]
        ax.plot([r["kl"] for r in rows], [r["reward"] for r in rows],
                marker="o" if kind == "train_dpo" else ".", markersize=4,
                linestyle="-" if kind == "train_ppo" else "none",
                label=recipe_label(results, results.cell_info(cell)))
    ax.set_xlabel("KL(policy ‖ reference)")
    ax.set_ylabel("reward (RM score)")
    ax.set_title("Reward vs KL frontier")
    if logs:
        ax.legend(fontsize=6)
    if temps:
        ax2 = axes[0][1]
        for name, pts in sorted(temps.items()):
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax2.set_xlabel("sampling temperature")
        ax2.set_ylabel("win rate (%)")
        ax2.set_title("Win rate vs temperature")
        ax2.legend(fontsize=6)
    fig.tight_layout()
    return fig


def figure_3(results: Results, stats: dict[str, dict[str, Stat]]):
    """GSM8k per reward model, one bar per prompt set, the SFT baseline as a line."""
    key, name = _reasoning_key(results)
    info = {c.group: c for c in reversed(results.cells)}
    bars: dict[str, dict[str, str]] = {}
    base, members = _first_model(results, lambda cell: cell.axes.get("algorithm") == "ppo")
    for group in members:
        axes = info[group].axes
        if axes.get("algorithm") != "ppo":
            continue
        if stats[group][key].value is not None:
            bars.setdefault(str(axes.get("reward_model")), {})[str(axes.get("prompts"))] = group
    if not bars:
        return None
    prompt_sets = sorted({p for by in bars.values() for p in by})
    rms = list(bars)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    width = 0.8 / len(prompt_sets)
    for j, prompts in enumerate(prompt_sets):
        xs, ys, errs = [], [], [[], []]
        for i, rm in enumerate(rms):
            if prompts in bars[rm]:
                stat = stats[bars[rm][prompts]][key]
                xs.append(i + (j - (len(prompt_sets) - 1) / 2) * width)
                ys.append(stat.value)
                low, high = _err(stat)
                errs[0] += low
                errs[1] += high
        # not blue or orange: those read as better and worse than the baseline elsewhere
        ax.bar(xs, ys, width, yerr=errs, capsize=3, color=SERIES[j % len(SERIES)],
               label=f"{results.label('prompts', prompts)} prompts")
    if base and stats[base][key].value is not None:
        ax.axhline(stats[base][key].value, color=BASE, linestyle="--", label="SFT")
    ax.set_xticks(range(len(rms)), [results.label("reward_model", r) for r in rms], fontsize=8)
    ax.set_xlabel("reward model used by PPO")
    ax.set_ylabel(f"{name} (score, 0–100)")
    ax.set_title(f"{name} by policy-training prompts, per reward model")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def make_figure(name: str, results: Results, stats):
    if name not in FIGURES:
        raise KeyError(f"unknown figure {name!r}; valid: {', '.join(FIGURES)}")
    return {"1": figure_1, "2": figure_2, "kl-frontier": figure_2, "3": figure_3}[name](results, stats)


def save_figure(fig, stem: Path) -> list[Path]:
    """PNG and PDF, without timestamps in the PDF so reruns differ only where the data does; each
    written to a temp file and renamed, so an interrupted report leaves no half-written figure."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix, options in ((".png", {"dpi": 150, "metadata": {"Software": None}}),
                            (".pdf", {"metadata": {"CreationDate": None, "ModDate": None}})):
        path = stem.with_suffix(suffix)
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, format=suffix[1:], **options)
        tmp.replace(path)
        paths.append(path)
    plt.close(fig)
    return paths
