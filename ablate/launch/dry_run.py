"""What `ablate grid --dry-run` shows of a plan (its steps, cells, judges and where each training
step's data comes from) and, on a cluster profile, the planner's sizing of each step: the table of
memory, GPU-hours and fit, and the refusal of a step that cannot fit (also before `--submit`).
Printed to the console the command line passes in."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from ablate.spec import Plan, SpecError
from ablate.spec.judges import describe as describe_judge
from ablate.store import RunStore


def step_table(plan: Plan, store: RunStore, states: dict | None = None) -> Table:
    """One row per step; ``states`` (step id -> state record) as ``status`` has corrected them
    from SLURM, else as the store holds them."""
    table = Table(title=f"grid {plan.grid}: {len(plan.steps)} steps, {len(plan.cells)} cells")
    for column in ("id", "kind", "step", "inputs", "state"):
        table.add_column(column)
    for step in plan.order():
        state = (states[step.id] if states else store.state(step))["state"]
        table.add_row(step.id, step.kind, step.name, ",".join(step.inputs.values()) or "-", state)
    return table


def plan_judges(plan: Plan) -> dict:
    """Judged benchmark -> the judge its eval steps use (one per benchmark in a grid)."""
    return {s.config.benchmark: s.config.judge for s in plan.order()
            if s.kind == "eval" and s.config.judge is not None}


def show_plan(plan: Plan, store: RunStore, console: Console) -> None:
    """The steps with their states, each cell's model step and evals, each judged benchmark's
    judge and each training step's data."""
    console.print(step_table(plan, store))
    for cell in plan.cells:
        console.print(f"  cell {cell.name}: model step {cell.model_step or '(base model)'}, "
                      f"evals {', '.join(cell.evals)}")
    for benchmark, judge in plan_judges(plan).items():
        console.print(f"  judge of {benchmark}: {describe_judge(judge)}", highlight=False)
    for step_name, where in plan_data_origins(plan):
        console.print(f"  data of {step_name}: {where}", highlight=False)


def plan_data_origins(plan: Plan) -> list[tuple[str, str]]:
    """(training step, where its preference data or prompts come from), so a dry run shows
    which rows each cell trains on."""
    from ablate.data.registry import MIXTURES, PROMPT_SETS, SOURCES, origin

    origins = []
    for step in plan.order():
        ref = getattr(step.config, "data", None) or getattr(step.config, "prompts", None)
        if ref is None:
            continue
        prompts = getattr(ref, "source", None) == "prompt_set"
        known = ref.name in (PROMPT_SETS if prompts else {**SOURCES, **MIXTURES})
        where = f"{ref.name} = {origin(ref.name, prompts)}" if known else ref.describe()
        if getattr(ref, "source", None) == "preference_data":
            where = "the prompts of " + where
        if getattr(ref, "max_rows", None):
            where += f", {ref.max_rows:,} rows drawn (seed {ref.sample_seed})"
        origins.append((step.name, where))
    return origins


def token_counter(console: Console):
    """``tokens_of(step)`` for the planner from each training step's data tokenized as its
    trainer will (each data set and tokenizer once); a step whose data or tokenizer cannot be
    read here is named and sized at its length limits."""
    from ablate.launch.planner import counted_tokens, limit_tokens
    from ablate.train.preflight import tokenized_examples

    seen: dict[str, object] = {}

    def tokens_of(step):
        config = step.config
        algo = getattr(config, "algorithm", None) or config.train
        # what the tokenization reads: the model's tokenizer, the data and the length limits
        key = json.dumps([step.kind, config.model.model_dump(mode="json"),
                          (getattr(config, "data", None) or config.prompts).model_dump(mode="json"),
                          [getattr(algo, f, None) for f in ("max_length", "max_prompt_length")]])
        if key not in seen:
            try:
                seen[key] = tokenized_examples(step)[0]
            except Exception as exc:  # a hub model or dataset offline: sized at its limits
                console.print(f"[yellow]note:[/] {step.name}: tokens not counted here, sized at "
                              f"its length limits ({type(exc).__name__}: {str(exc)[:160]})",
                              highlight=False)
                seen[key] = None
        return limit_tokens(step) if seen[key] is None else counted_tokens(step, seen[key])

    return tokens_of


def check_resources(plan: Plan, profile, console: Console, only_refusals: bool = False,
                    count_tokens: bool = False) -> Plan:
    """The planner's estimate of each step on the profile's resources (peak memory per GPU,
    GPU-hours, checkpointing); a step that cannot fit is printed with what would make it fit,
    and a SpecError says how many cannot. Returns the plan with the checkpointing and
    micro-batches the planner chose. A profile without ``gpu`` is not sized (with
    ``only_refusals``, silently). ``count_tokens``: size training steps at their data's real
    lengths instead of their limits."""
    from ablate.launch.planner import GIB, limit_tokens, plan_resources, with_planned_settings
    from ablate.models import cache_root

    if profile.config.gpu is None:
        if not only_refusals:
            console.print(f"{profile.path}: no gpu: {{memory_gib: ...}} in the profile, so no "
                          "step was sized", highlight=False)
        return plan
    plans = plan_resources(plan, profile.config,
                           token_counter(console) if count_tokens else limit_tokens, cache_root())
    gpu = profile.config.gpu
    if not only_refusals:
        console.print(resources_table(plans, profile))
        hours = sum(sp.gpu_hours or 0 for sp in plans)
        console.print(f"training: {hours:,.0f} GPU-hours in all (the steps whose rows are known: "
                      "counted, the grid's max_rows or the paper's size; at most, where tokens "
                      "were not counted); checkpointing on, then the "
                      "micro-batch halved, where a step would not fit otherwise", highlight=False)
    refused = [sp for sp in plans if not sp.fits]
    for sp in refused:
        need = sp.estimate.peak_bytes / GIB
        console.print(f"[red]refused:[/] {sp.step.name} needs {need:.1f} GiB per GPU on "
                      f"{sp.settings.nodes} node(s) of {sp.resources.processes_per_node} GPUs "
                      f"({gpu.memory_gib:g} GiB each)"
                      + (f" and {sp.estimate.host_bytes / 1e9:.0f} GB of host memory per node"
                         if sp.estimate.host_bytes else "")
                      + "; to make it fit: " + ("; or ".join(sp.options) or
                                                "nothing the planner knows of"),
                      highlight=False)
    if refused:
        raise SpecError(f"{len(refused)} step(s) cannot fit on {profile.path}; nothing was "
                        "submitted")
    return with_planned_settings(plan, plans)


def resources_table(plans: list, profile) -> Table:
    """One row per sized step: its size, job, tokens, peak memory, checkpointing, micro-batch,
    GPU-hours and whether it fits."""
    table = Table(title=f"resources on {profile.name} ({profile.config.gpu.memory_gib:g} GiB "
                  "GPUs; tokens: an example's longest, ≤ its length limits where not counted)")
    for column in ("step", "size", "job", "tokens", "peak memory per GPU (GiB)",
                   "checkpointing", "micro-batch", "GPU-hours (wall)", "fits"):
        table.add_column(column)
    for sp in plans:
        res = sp.resources
        training = sp.step.kind.startswith("train")
        table.add_row(sp.step.name, "?" if sp.params is None else f"{sp.params / 1e9:.1f}B",
                      f"{sp.settings.nodes}×{res.gpus_per_node} GPU, {res.cpus_per_task} CPU, "
                      f"{res.mem_gb:g} GB, {res.time_min} min",
                      describe_tokens(sp),
                      sp.note or sp.describe_memory(),
                      ("on (planner)" if sp.checkpointing_by_rule else
                       "on" if sp.settings.checkpointing else "off") if training else "-",
                      str(sp.settings.micro_batch) if training else "-",
                      describe_hours(sp),
                      "yes" if sp.fits else "[red]no[/]")
    return table


def describe_hours(sp) -> str:
    """GPU-hours, and the job's wall-clock hours on its GPUs."""
    if sp.gpu_hours is None:
        return "-"

    def hours(h: float) -> str:
        return f"{h:,.0f}" if h >= 10 else f"{h:.2g}"

    gpus = sp.settings.nodes * max(1, sp.resources.gpus_per_node)
    return f"{hours(sp.gpu_hours)} ({hours(sp.gpu_hours / gpus)} h)"


def describe_tokens(sp) -> str:
    """A sized training step's examples and longest example, as counted or as bounded."""
    if not sp.step.kind.startswith("train") or sp.estimate is None:
        return "-"
    tokens = sp.tokens
    rows = "? rows" if tokens.examples is None else f"{tokens.examples:,} rows"
    if tokens.counted:
        return f"{rows}, longest {tokens.longest:,}"
    return f"{rows}, ≤ limits"
