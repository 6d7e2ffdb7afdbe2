"""The `ablate` command line: grid, fetch, status, validate, report, eval, data, model, cancel,
logs."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from ablate.launch.checks import (
    check_engine, check_judges, check_model_paths, check_plan_data, check_training_lengths,
)
from ablate.launch.dry_run import check_resources, show_plan, step_table
from ablate.launch.fetch import fetch_plan
from ablate.spec import GridSpec, Plan, SpecError, check_names, expand, load_grid
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
            check_plan_data(plan, console)
        if check_lengths:
            check_training_lengths(plan, console)
    except SpecError as exc:
        if str(path) not in str(exc):
            exc = SpecError(f"{path}: {exc}")
        fail(str(exc))
    return grid, plan


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
        show_plan(plan, run_store, console)
        if cluster is not None:
            from ablate.launch.profile import load_profile

            try:
                check_resources(plan, load_profile(cluster), console, count_tokens=count_tokens)
            except SpecError as exc:
                fail(str(exc))
        return
    if not dry_run:
        try:
            check_judges(plan, run_store)
        except SpecError as exc:
            fail(str(exc))
        # Models and data are downloaded here, once: the steps' own processes read them offline.
        # Then, before queueing, a training step whose length limits drop every example is
        # refused.
        todo = plan.order() if force else [s for s in plan.order() if not run_store.is_done(s)]
        try:
            fetch_plan(todo, console)
            if submit:
                check_training_lengths(plan, console)
        except SpecError as exc:
            fail(f"{file}: {exc}")
        try:
            check_engine(plan, run_store)
        except SpecError as exc:
            fail(str(exc))
    if submit:
        from ablate.launch.default_profile import resolve_profile
        from ablate.launch.slurm import submit_from_cli

        try:
            resolved = resolve_profile(cluster)  # --cluster, $ABLATE_CLUSTER, the user's, sinfo
            plan = check_resources(plan, resolved.profile, console, only_refusals=True,
                                   count_tokens=count_tokens)
        except SpecError as exc:
            fail(str(exc))
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
        fetch_plan(plan.order(), console)
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
