"""Run a plan on this machine, in dependency order, with progress bars and a summary."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ablate.launch.job import run_step
from ablate.spec.plan import Plan, Step
from ablate.store import RunStore


@dataclass
class Outcome:
    step: Step
    status: str  # done | skipped | failed | blocked
    seconds: float = 0.0
    error: str = ""
    note: str = ""  # why a step was skipped, when not because it was done before this run
    log: str = ""

    @property
    def shown(self) -> str:
        return f"{self.status} ({self.note})" if self.note else self.status


@dataclass
class Summary:
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def ok(self) -> bool:
        return not any(o.status in ("failed", "blocked") for o in self.outcomes)


def select_steps(plan: Plan, selectors: Iterable[str]) -> set[str]:
    """Step ids matched by ``--force`` selectors (a step kind, a benchmark, an id prefix, or
    ``all``), plus everything downstream of them: retraining a model invalidates its evals."""
    chosen: set[str] = set()
    for sel in selectors:
        hits = {sid for sid, s in plan.steps.items()
                if sel == "all" or s.kind == sel or sid.startswith(sel)
                or getattr(s.config, "benchmark", None) == sel}
        if not hits:
            kinds = sorted({s.kind for s in plan.steps.values()})
            benches = sorted({s.config.benchmark for s in plan.steps.values() if s.kind == "eval"})
            raise ValueError(f"--force {sel!r} matches no step of grid {plan.grid!r}; use a step "
                             f"kind ({', '.join(kinds)}), a benchmark ({', '.join(benches)}), "
                             "a step id prefix, or 'all'")
        chosen |= hits
    changed = True
    while changed:
        downstream = {sid for sid, s in plan.steps.items()
                      if sid not in chosen and set(s.inputs.values()) & chosen}
        changed = bool(downstream)
        chosen |= downstream
    return chosen


class Terminated(KeyboardInterrupt):
    """SIGTERM: stops a run like Ctrl-C; the process exits with 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


def _terminated(signum, frame):
    raise Terminated(signum)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (``kill``, ``timeout``) ends a local run like Ctrl-C: the running step records
    that it stopped instead of staying "running" in the store for good."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_plan(plan: Plan, store: RunStore, force: Iterable[str] = (),
             console: Console | None = None) -> Summary:
    with _sigterm_as_interrupt():
        return _run_plan(plan, store, force, console)


def plain_lines(console: Console) -> Callable[[str], None]:
    """Where the output is not a terminal (SLURM, CI, a pipe) rich draws no live bars, so a run
    would print nothing of its own until the end: there, one timestamped line per event."""
    if console.is_terminal:
        return lambda text: None
    return lambda text: console.print(f"{time.strftime('%H:%M:%S')} {text}", markup=False,
                                      highlight=False, soft_wrap=True)


def _run_plan(plan: Plan, store: RunStore, force: Iterable[str],
              console: Console | None) -> Summary:
    console = console or Console()
    line = plain_lines(console)
    for sid in select_steps(plan, force):
        store.reset(plan.steps[sid])  # StepBusy if another process runs it now
    ordered = plan.order()
    todo = [s for s in ordered if not store.is_done(s)]
    summary = Summary([Outcome(s, "skipped") for s in ordered if store.is_done(s)])
    if not todo:
        console.print(f"[green]Nothing to do:[/] all {len(ordered)} steps of grid "
                      f"{plan.grid!r} are done (use --force STEP to redo one).")
        return summary
    try:
        store.root.mkdir(parents=True, exist_ok=True)
        writable = os.access(store.root, os.W_OK)
    except OSError:
        writable = False
    if not writable:
        raise ValueError(f"{store.root}: the run store is not writable, and {len(todo)} of "
                         f"grid {plan.grid!r}'s steps are left to run")
    if summary.outcomes:
        console.print(f"{len(summary.outcomes)} of {len(ordered)} steps already done; "
                      f"running the other {len(todo)}.")
    failed: set[str] = set()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bars:
        overall = bars.add_task(f"grid {plan.grid}", total=len(todo))
        for step in todo:
            blocked_by = [sid for sid in step.inputs.values() if sid in failed]
            if blocked_by:
                failed.add(step.id)
                summary.outcomes.append(Outcome(
                    step, "blocked", error=f"input failed: {plan.steps[blocked_by[0]].name} "
                    f"({blocked_by[0]})"))
                line(f"blocked {len(summary.outcomes)}/{len(ordered)} {step.name}")
                bars.advance(overall)
                continue
            current = bars.add_task(f"  {step.name}", total=None)
            position = f"{len(summary.outcomes) + 1}/{len(ordered)}"
            line(f"start {position} {step.name} ({step.kind}, {step.id})")

            def progress(done, total=None, desc=None, _task=current):
                bars.update(_task, completed=done, total=total)

            started = time.time()
            try:
                result = run_step(store, plan, step, progress=progress)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # one failed step must not stop unrelated ones
                failed.add(step.id)
                log = str(store.step_dir(step) / "log.txt")
                summary.outcomes.append(Outcome(step, "failed", time.time() - started,
                                                f"{type(exc).__name__}: {exc}", log=log))
                console.print(f"[red]failed[/] {step.name}: {type(exc).__name__}: {exc}\n"
                              f"  log: {log}")
            else:
                # not done when this run began: a concurrent run did it while this one waited
                summary.outcomes.append(
                    Outcome(step, "skipped", note="done by another run") if result == "skipped"
                    else Outcome(step, "done", time.time() - started))
            outcome = summary.outcomes[-1]
            line(f"{outcome.status} {position} {step.name} in {outcome.seconds:.1f} s")
            bars.update(current, visible=False)
            bars.advance(overall)
    print_summary(summary, console)
    return summary


def print_summary(summary: Summary, console: Console) -> None:
    table = Table(title="steps", show_lines=False)
    for column in ("step", "kind", "status", "seconds"):
        table.add_column(column)
    style = {"done": "green", "skipped": "dim", "failed": "red", "blocked": "yellow"}
    for o in summary.outcomes:
        table.add_row(o.step.name, o.step.kind, f"[{style[o.status]}]{o.shown}[/]",
                      f"{o.seconds:.1f}" if o.seconds else "", )
    console.print(table)
    elsewhere = sum(o.note == "done by another run" for o in summary.outcomes)
    console.print(f"done {summary.count('done')}, skipped (already done) "
                  f"{summary.count('skipped') - elsewhere}, skipped (done by another run) "
                  f"{elsewhere}, failed {summary.count('failed')}, blocked "
                  f"{summary.count('blocked')}")
    for o in summary.outcomes:
        if o.error:
            console.print(f"[red]{o.status}[/] {o.step.name}: {o.error}")
            if o.status == "failed":
                console.print(f"  log: {o.log}")
