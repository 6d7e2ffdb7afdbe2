"""The `ablate` command line: grid, fetch, status, validate, report, eval, data, model, cancel,
logs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from ablate.spec import GridSpec, Plan, SpecError, check_names, expand, load_grid
from ablate.spec.judges import describe as describe_judge
from ablate.spec.judges import missing_credentials
from ablate.spec.plan import StoreFormatError
from ablate.store import RunStore
from ablate.store.store import blocked_state

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Evaluation-first ablations of learning from preference feedback.")
model_app = typer.Typer(no_args_is_help=True, help="Built-in and local models.")
app.add_typer(model_app, name="model")
store_app = typer.Typer(no_args_is_help=True, help="The run store itself.")
app.add_typer(store_app, name="store")
console = Console()

StoreOption = typer.Option(None, "--store", help="Run store folder [default: $ABLATE_STORE or ./runs]")


def store_at(path: Optional[Path]) -> RunStore:
    return RunStore(path or os.environ.get("ABLATE_STORE", "runs"))


def plan_judges(plan: Plan) -> dict:
    """Judged benchmark -> the judge its eval steps use (one per benchmark in a grid)."""
    return {s.config.benchmark: s.config.judge for s in plan.order()
            if s.kind == "eval" and s.config.judge is not None}


def check_judges(plan: Plan, run_store: RunStore) -> None:
    """Before anything runs: every judge an unfinished eval step needs can be reached (its API
    key is set), or one message says what is missing and how to provide it."""
    pending = {s.config.benchmark: s.config.judge for s in plan.order()
               if s.kind == "eval" and s.config.judge is not None and not run_store.is_done(s)}
    problems = missing_credentials(pending, os.environ)
    if problems:
        fail("no usable judge, so nothing was run:\n  " + "\n  ".join(problems))


def check_engine(plan: Plan, run_store: RunStore) -> None:
    """Before anything runs: where an unfinished step will use vLLM (PPO's ``rollout_engine``, or
    evals with ``$ABLATE_ENGINE=vllm``), vLLM is installed and supports each base model."""
    from ablate.generate.base import ENGINE_VARIABLE

    pending = [s for s in plan.order() if not run_store.is_done(s)]
    on_vllm = [s for s in pending
               if getattr(getattr(s.config, "algorithm", None), "rollout_engine", None) == "vllm"
               or (s.kind == "eval" and os.environ.get(ENGINE_VARIABLE) == "vllm")]
    if not on_vllm:
        return
    from ablate.generate import GenerationError
    from ablate.generate.vllm_backend import check_model, import_vllm
    from ablate.models import ModelError, resolve_model

    models = {s.config.model for s in on_vllm if getattr(s.config, "model", None) is not None}
    try:
        import_vllm()
        for model in sorted(models, key=str):
            check_model(resolve_model(model))
    except (GenerationError, ModelError) as exc:
        fail(f"{exc}; nothing was run")


def checked_store(run_store: RunStore) -> RunStore:
    """The store, if this ablate reads it as written (else the error says what to run)."""
    try:
        run_store.check_current()
    except StoreFormatError as exc:
        fail(str(exc))
    return run_store


def fail(message: str, code: int = 2) -> None:
    console.print(f"[red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def plan_of(grid: GridSpec) -> Plan:
    """The plan of a grid as every command makes it: each data source resolved to what its rows
    are, each own benchmark's facts read from its class (so the ids are the store's)."""
    from ablate.data.own import resolve_source
    from ablate.evals.custom import grid_custom_facts

    return expand(grid, resolve=resolve_source, custom_facts=grid_custom_facts(grid))


def load_checked(path: Path, check_data: bool = False,
                 check_lengths: bool = False) -> tuple[GridSpec, Plan]:
    """Load, check every name against the registries, resolve each file's digest and each own
    benchmark's facts, expand; with ``check_data``, open each file or hub dataset the plan
    trains on and count its unusable rows. Writes nothing."""
    from ablate.data import dataset_names, prompt_set_names
    from ablate.evals import benchmark_names
    from ablate.models import BUILTIN_MODELS
    from ablate.train.programmatic import load_reward_function

    try:
        grid = load_grid(path)
        check_names(grid, datasets=dataset_names(), prompt_sets=prompt_set_names(),
                    benchmarks=benchmark_names(), builtin_models=BUILTIN_MODELS,
                    load_reward=load_reward_function)
        check_model_paths(grid)
        plan = plan_of(grid)
        if check_data:
            check_plan_data(plan)
        if check_lengths:
            check_training_lengths(plan)
    except SpecError as exc:
        if str(path) not in str(exc):
            exc = SpecError(f"{path}: {exc}")
        fail(str(exc))
    return grid, plan


def check_training_lengths(plan: Plan) -> None:
    """Each training step has something its length limits keep (counted as its trainer will);
    a step whose model or data cannot be read here is named and left to its job."""
    from ablate.train.preflight import usable_examples

    for step in plan.order():
        if not step.kind.startswith("train"):
            continue
        try:
            usable, rows, skipped = usable_examples(step)
        except Exception as exc:  # a hub model or dataset offline: the job will read it
            console.print(f"[yellow]note:[/] {step.name}: lengths not checked here "
                          f"({type(exc).__name__}: {str(exc)[:160]})", highlight=False)
            continue
        what = "prompts" if step.kind == "train_ppo" else "pairs"
        if not usable:
            raise SpecError(f"{step.name}: every one of its {rows:,} rows is dropped before "
                            f"training ({', '.join(f'{k}: {v}' for k, v in skipped.items())}); "
                            "raise its max_length / max_prompt_length, or check its data")
        console.print(f"{step.name}: {usable:,} of {rows:,} {what} fit its length limits",
                      highlight=False)


def check_plan_data(plan: Plan) -> None:
    """Each declared file or hub dataset opened and its rows counted; a SpecError when one has
    no usable row (nothing would train)."""
    from ablate.data.load import DataUnavailable
    from ablate.data.own import check_source, plan_sources

    for ref, prompts in plan_sources(plan):
        try:
            checked = check_source(ref, prompts)
        except DataUnavailable as exc:
            raise SpecError(str(exc)) from None
        usable = len(checked.rows)
        sampled = f" (first {checked.read:,} checked)" if checked.read < checked.total else ""
        problems = "".join(f"\n  unusable: {line}" for line in checked.describe())
        if not usable:
            raise SpecError(f"{checked.label}: no usable row of {checked.read:,}{problems}")
        console.print(f"data {ref.describe()}: {checked.total:,} rows{sampled}, {usable:,} "
                      f"usable{problems}", highlight=False)


def check_model_paths(grid: GridSpec) -> None:
    """A local model folder that is not there fails every step that reads it, after queueing."""
    from ablate.models import ModelError, resolve_model

    for name, model in grid.models.items():
        if model.path is None:
            continue
        try:
            resolve_model(model)
        except ModelError as exc:
            raise SpecError(f"grid {grid.name!r}: models.{name}.path: {exc}") from None


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


def token_counter():
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


def check_resources(plan: Plan, profile, only_refusals: bool = False,
                    count_tokens: bool = False) -> Plan:
    """The planner's estimate of each step on the profile's resources (peak memory per GPU,
    GPU-hours, checkpointing); a step that cannot fit fails the command, naming what would
    make it fit. Returns the plan with the checkpointing and micro-batches the planner chose. A
    profile without ``gpu`` is not sized (with ``only_refusals``, silently). ``count_tokens``:
    size training steps at their data's real lengths instead of their limits."""
    from ablate.launch.planner import GIB, limit_tokens, plan_resources, with_planned_settings
    from ablate.models import cache_root

    if profile.config.gpu is None:
        if not only_refusals:
            console.print(f"{profile.path}: no gpu: {{memory_gib: ...}} in the profile, so no "
                          "step was sized", highlight=False)
        return plan
    plans = plan_resources(plan, profile.config,
                           token_counter() if count_tokens else limit_tokens, cache_root())
    gpu = profile.config.gpu
    if not only_refusals:
        table = Table(title=f"resources on {profile.name} ({gpu.memory_gib:g} GiB GPUs; tokens: "
                      "an example's longest, ≤ its length limits where not counted)")
        for column in ("step", "size", "job", "tokens", "peak memory per GPU (GiB)",
                       "checkpointing", "micro-batch", "GPU-hours (wall)", "fits"):
            table.add_column(column)
        for sp in plans:
            res = sp.resources
            table.add_row(sp.step.name, "?" if sp.params is None else f"{sp.params / 1e9:.1f}B",
                          f"{sp.settings.nodes}×{res.gpus_per_node} GPU, {res.cpus_per_task} CPU, "
                          f"{res.mem_gb:g} GB, {res.time_min} min",
                          describe_tokens(sp),
                          sp.note or sp.describe_memory(),
                          ("on (planner)" if sp.checkpointing_by_rule else
                           "on" if sp.settings.checkpointing else "off")
                          if sp.step.kind.startswith("train") else "-",
                          str(sp.settings.micro_batch) if sp.step.kind.startswith("train") else "-",
                          describe_hours(sp),
                          "yes" if sp.fits else "[red]no[/]")
        console.print(table)
        hours = sum(sp.gpu_hours or 0 for sp in plans)
        console.print(f"training: {hours:,.0f} GPU-hours in all (the steps whose rows are known; "
                      "at most, where tokens were not counted); checkpointing on, then the "
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
        fail(f"{len(refused)} step(s) cannot fit on {profile.path}; nothing was submitted")
    return with_planned_settings(plan, plans)


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


def hub_models(value, found: dict) -> dict:
    """Every hub model a step's config names, anywhere in it (its model, a classifier, a local
    judge without a local copy), keyed by repo and revision."""
    from pydantic import BaseModel

    from ablate.spec.schema import JudgeSpec, ModelSpec

    if isinstance(value, ModelSpec) and value.hub:
        found.setdefault(value.describe(), value)
    elif isinstance(value, JudgeSpec) and value.kind == "local" and value.hub and not (
            value.path or value.local_copy):
        spec = ModelSpec(hub=value.hub, revision=value.revision)
        found.setdefault(spec.describe(), spec)
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            hub_models(getattr(value, name), found)
    elif isinstance(value, dict):
        for item in value.values():
            hub_models(item, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            hub_models(item, found)
    return found


def fetch_plan(steps: list) -> None:
    """Download, once and here, every hub model the steps name and every dataset they train on,
    into the caches their jobs read with the hub offline (``ablate.models``, ``ablate.data``); a
    SpecError names the step and what could not be had."""
    from ablate.data import load_preferences, load_prompts
    from ablate.data.load import DataUnavailable
    from ablate.models import ModelError, resolve_model
    from ablate.spec.steps import PromptsRef

    models: dict[str, tuple[str, object]] = {}
    data: dict[str, tuple[str, object]] = {}
    for step in steps:
        for key, spec in hub_models(step.config, {}).items():
            models.setdefault(key, (step.name, spec))
        for attr in ("data", "prompts"):
            ref = getattr(step.config, attr, None) if step.kind.startswith("train") else None
            if ref is not None:
                data.setdefault(ref.model_dump_json(), (step.name, ref))
    for step_name, spec in models.values():
        try:
            folder = resolve_model(spec, fetch=True)
        except ModelError as exc:
            raise SpecError(f"{step_name}: {exc}") from None
        console.print(f"model {spec.describe()}: {folder}", highlight=False)
    for step_name, ref in data.values():
        try:
            loaded = load_prompts(ref) if isinstance(ref, PromptsRef) else load_preferences(ref)
        except (DataUnavailable, KeyError, ValueError) as exc:
            why = exc.args[0] if isinstance(exc, KeyError) else exc  # a KeyError's str quotes
            raise SpecError(f"{step_name}: {why}") from None
        console.print(f"data {ref.describe()}: {len(loaded.rows):,} rows in the cache",
                      highlight=False)


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


@app.command()
def grid(file: Path = typer.Argument(..., help="Grid spec (YAML)"),
         submit: bool = typer.Option(False, "--submit", help="Submit to SLURM via submitit"),
         cluster: Optional[Path] = typer.Option(None, "--cluster", help="SLURM profile (slurm/*.yaml)"),
         dry_run: bool = typer.Option(False, "--dry-run", help="Print the expanded jobs and exit "
                                      "(with --cluster: each step's memory, GPU-hours and fit)"),
         count_tokens: bool = typer.Option(False, "--count-tokens", help="With --cluster: size "
                                           "training steps at their data's real lengths "
                                           "(tokenizes the data here)"),
         force: List[str] = typer.Option([], "--force", help="Redo a step (kind, benchmark, id "
                                         "prefix or 'all') and what depends on it"),
         store: Optional[Path] = StoreOption) -> None:
    """Expand a grid and run every step that is not done yet (locally, or on SLURM with --submit)."""
    spec, plan = load_checked(file, check_data=True)
    run_store = store_at(store)
    checked_store(run_store)
    if dry_run and not submit:
        console.print(step_table(plan, run_store))
        for cell in plan.cells:
            console.print(f"  cell {cell.name}: model step {cell.model_step or '(base model)'}, "
                          f"evals {', '.join(cell.evals)}")
        for benchmark, judge in plan_judges(plan).items():
            console.print(f"  judge of {benchmark}: {describe_judge(judge)}", highlight=False)
        for step_name, where in plan_data_origins(plan):
            console.print(f"  data of {step_name}: {where}", highlight=False)
        if cluster is not None:
            from ablate.launch.profile import load_profile

            try:
                profile = load_profile(cluster)
            except SpecError as exc:
                fail(str(exc))
            check_resources(plan, profile, count_tokens=count_tokens)
        return
    if not dry_run:
        check_judges(plan, run_store)
        # Models and data are downloaded here, once: the steps' own processes read them offline.
        # Then, before queueing, a training step whose length limits drop every example is
        # refused.
        todo = plan.order() if force else [s for s in plan.order() if not run_store.is_done(s)]
        try:
            fetch_plan(todo)
            if submit:
                check_training_lengths(plan)
        except SpecError as exc:
            fail(f"{file}: {exc}")
        check_engine(plan, run_store)
    if submit:
        from ablate.launch.default_profile import resolve_profile
        from ablate.launch.slurm import submit_from_cli

        try:
            resolved = resolve_profile(cluster)  # --cluster, $ABLATE_CLUSTER, the user's, sinfo
        except SpecError as exc:
            fail(str(exc))
        plan = check_resources(plan, resolved.profile, only_refusals=True,
                               count_tokens=count_tokens)
        submit_from_cli(plan, run_store, resolved, dry_run=dry_run, force=force, console=console,
                        source=str(file))
        return
    from ablate.launch.local import Terminated, run_plan
    from ablate.store import StepBusy

    try:
        run_store.save_plan(plan, source=str(file),
                            about={"description": spec.description, "labels": dict(spec.labels)})
    except OSError as exc:
        fail(f"cannot write the run store {run_store.root}: {exc}")
    try:
        summary = run_plan(plan, run_store, force=force, console=console)
    except (ValueError, StepBusy) as exc:
        fail(str(exc))
    except Terminated as exc:
        console.print(f"[yellow]interrupted:[/] {exc}")
        raise typer.Exit(128 + exc.signum)
    if not summary.ok:
        raise typer.Exit(1)


@app.command()
def validate(file: Path = typer.Argument(..., help="Grid spec (YAML)")) -> None:
    """Check a grid spec, open the data it declares and count what each training step's length
    limits keep, without running or writing anything."""
    spec, plan = load_checked(file, check_data=True, check_lengths=True)
    kinds = {}
    for step in plan.steps.values():
        kinds[step.kind] = kinds.get(step.kind, 0) + 1
    console.print(f"[green]ok[/] {file}: grid {spec.name!r}, {len(plan.cells)} cells, "
                  f"{len(plan.steps)} steps ({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))})")


@app.command()
def fetch(file: Path = typer.Argument(..., help="Grid spec (YAML)")) -> None:
    """Download the grid's hub models and its training data into the caches, once, where the hub
    can be reached: its steps read them offline (compute nodes often are)."""
    spec, plan = load_checked(file)
    try:
        fetch_plan(plan.order())
    except SpecError as exc:
        fail(f"{file}: {exc}")
    console.print(f"[green]fetched[/] what grid {spec.name!r} reads", highlight=False)


@app.command()
def status(file: Path = typer.Argument(..., help="Grid spec (YAML)"),
           steps: bool = typer.Option(False, "--steps", help="One row per step instead of per cell"),
           store: Optional[Path] = StoreOption) -> None:
    """Every cell × step of a grid with its state (from the store, and SLURM where submitted)."""
    spec, plan = load_checked(file)
    run_store = checked_store(store_at(store))
    states = {sid: run_store.state(s) for sid, s in plan.steps.items()}
    try:
        from ablate.launch.slurm import refresh_states

        states = refresh_states(plan, run_store, states)
    except ImportError:
        pass
    for step in plan.order():  # inputs first, so a block passes down a chain
        if states[step.id].get("state") == "pending":
            states[step.id] = blocked_state(plan, states, step.id) or states[step.id]
    if steps:
        console.print(step_table(plan, run_store, states))
        return
    benches = list(spec.eval.benchmarks)
    table = Table(title=f"grid {plan.grid} ({run_store.root})")
    for column in ("cell", "train", *benches):
        table.add_column(column)
    style = {"done": "green", "failed": "red", "running": "cyan", "pending": "dim",
             "submitted": "yellow", "queued": "yellow", "retrying": "yellow", "blocked": "yellow",
             "interrupted": "red", "corrupt": "red", "lost": "red"}
    problems: dict[str, dict] = {}

    def show(sid: str | None) -> str:
        if sid is None:
            return "-"
        state = states[sid].get("state", "unknown")
        if state in PROBLEM_STATES:
            problems[sid] = states[sid]
        return f"[{style.get(state, 'white')}]{state}[/]"

    for cell in plan.cells:
        table.add_row(cell.name, show(cell.model_step), *(show(cell.evals.get(b)) for b in benches))
    console.print(table)
    for sid, state in problems.items():
        console.print(describe_problem(plan.steps[sid].name, state), highlight=False)


PROBLEM_STATES = ("failed", "interrupted", "corrupt", "blocked", "lost", "retrying")


def describe_problem(name: str, state: dict) -> str:
    """What went wrong with a step and where to read more: its error, then its log (or the
    unreadable file); a blocked step names the step that blocked it with that step's error."""
    lines = [f"[red]{state['state']}[/] {name}: {state.get('error') or '(no error recorded)'}"]
    where = state.get("log") or state.get("file")
    if where:
        lines.append(f"  {'file' if state['state'] == 'corrupt' else 'log'}: {where}")
    return "\n".join(lines)


@model_app.command("prepare")
def model_prepare(name: str = typer.Argument("smollm2-135m-instruct")) -> None:
    """Convert a built-in model into a transformers folder in the cache (done once)."""
    from ablate.models import ModelError, prepare_builtin

    try:
        console.print(str(prepare_builtin(name)))
    except ModelError as exc:
        fail(str(exc))


@store_app.command("migrate")
def store_migrate(store: Optional[Path] = StoreOption) -> None:
    """Re-key a store written by an older ablate to this one's step ids; nothing is recomputed.
    Safe to rerun: an interrupted migration is finished by running it again."""
    from ablate.store.migrate import migrate_store

    run_store = store_at(store)
    try:
        report = migrate_store(run_store, log=lambda line: console.print(line, highlight=False))
    except StoreFormatError as exc:
        fail(str(exc))
    if report.nothing_to_do:
        console.print(f"{run_store.root}: nothing to migrate (its plans are current)")
        return
    console.print(f"[green]migrated[/] {run_store.root}: {report.steps} steps re-keyed, "
                  f"{report.plans} grid plans rewritten, {len(report.merged)} duplicate steps "
                  f"merged")
    for step_id, why in sorted(report.stale.items()):
        console.print(f"[yellow]stale[/] {step_id}: {why}; it will run again, its old result is "
                      "kept as STALE.json", highlight=False)


# ---------------------------------------------------------------- SLURM: cancel, logs
# (written with ablate/launch/slurm.py; `grid --submit` and `status` above call into it too)


@app.command()
def cancel(file: Path = typer.Argument(..., help="Grid spec (YAML)"),
           store: Optional[Path] = StoreOption) -> None:
    """Cancel the grid's SLURM jobs that are queued or running (finished steps are kept)."""
    from ablate.launch.slurm import SlurmError, cancel_plan

    spec, plan = load_checked(file)
    try:
        cancelled = cancel_plan(plan, store_at(store))
    except SlurmError as exc:
        fail(str(exc))
    if cancelled:
        console.print(f"cancelled {len(cancelled)} job(s): {' '.join(cancelled)}")
    else:
        console.print(f"nothing to cancel: no job of grid {plan.grid!r} is queued or running")


@app.command()
def logs(job: str = typer.Argument(..., help="A step id (or prefix) or a SLURM job id"),
         store: Optional[Path] = StoreOption) -> None:
    """Print a step's log and its SLURM job's output."""
    from ablate.launch.slurm import SlurmError, job_log

    try:
        text = job_log(store_at(store), job)
    except SlurmError as exc:
        fail(str(exc))
    sys.stdout.write(text)


def _mount_subcommands() -> None:
    from ablate.data.cli import app as data_app
    from ablate.evals.cli import eval_command
    from ablate.report.cli import report_command

    app.command("report", help="Rebuild the paper's tables and figures from the run store.")(report_command)
    app.command("eval", help="Evaluate one model on benchmarks, outside any grid.")(eval_command)
    app.add_typer(data_app, name="data")


_mount_subcommands()


def main() -> None:  # pragma: no cover - console entry point
    try:
        app()
    except (SpecError, StoreFormatError) as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
