"""The job callable every executor runs: one step of a saved plan, in this process.

``StepJob`` is picklable and self-contained (store root, grid name, step id), so the same object
runs in-process for the local executor and inside a submitit job on SLURM. Its ``checkpoint()``
asks submitit to requeue it on preemption or time-out; the step then resumes from the
``checkpoints/`` folder it left in its own step folder.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ablate.spec.plan import Plan, Step
from ablate.spec.steps import runner_for  # noqa: F401  (tests replace it here)
from ablate.store import RunStore, StepContext
from ablate.train.stop import Stopped


def current_slurm_job_id() -> str | None:
    """This process's SLURM job id as squeue shows it: ``<array job>_<task>`` in a job array."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def match_threads_to_allocation() -> int | None:
    """Inside a SLURM job, use as many CPU threads as the job was given: torch would otherwise
    start one per core of the node and jobs sharing a node would oversubscribe it. An explicit
    OMP_NUM_THREADS wins. Returns the thread count set, or None."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if not cpus or not cpus.isdigit() or "OMP_NUM_THREADS" in os.environ:
        return None
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = cpus
    torch = sys.modules.get("torch")  # already imported: the variable came too late for it
    if torch is not None:
        torch.set_num_threads(int(cpus))
    return int(cpus)


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_step(store: RunStore, plan: Plan, step: Step,
             progress: Callable[..., None] | None = None,
             runner: Callable[[StepContext], None] | None = None) -> str:
    """Run one step unless it is done; returns "skipped" or "done", raises on failure.

    ``runner`` replaces the kind's runner (the SLURM launcher passes one that starts torchrun)."""
    if store.is_done(step):
        return "skipped"
    match_threads_to_allocation()
    missing = [role for role, sid in step.inputs.items() if not store.is_done(plan.steps[sid])]
    if missing:
        raise RuntimeError(f"step {step.name!r}: inputs not done yet: {', '.join(missing)}")
    with store.lock(step):
        if store.is_done(step):  # another process ran it while this one waited
            return "skipped"
        return _run_locked(store, plan, step, progress, runner)


def _run_locked(store: RunStore, plan: Plan, step: Step, progress, runner) -> str:
    folder = store.begin(step)
    log_path = folder / "log.txt"
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger(f"ablate.step.{step.id}")
    logger.setLevel(logging.INFO)
    # The step's logger is a child of "ablate": the handler there writes its lines (once), and
    # library loggers (ablate.train.*, ablate.evals.*) go to the same file while this step runs.
    package_logger = logging.getLogger("ablate")
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    started = time.time()
    store.set_state(step, "running", started=started, host=os.uname().nodename,
                    slurm_job_id=current_slurm_job_id())
    ctx = StepContext(step=step, out_dir=folder,
                      inputs={role: store.step_dir(plan.steps[sid]) for role, sid in step.inputs.items()},
                      cache_dir=store.cache_dir, log=logger,
                      progress=progress or (lambda *a, **k: None))
    logger.info("start %s (%s)", step.name, step.id)
    try:
        (runner or runner_for(step.kind))(ctx)
        # the last line of a finished step's log, so that a log alone tells done from cut off
        logger.info("finished %s in %.1f s", step.name, time.time() - started)
    except BaseException as exc:
        # Ctrl-C or SIGTERM, or asked to stop at a checkpoint: not the step's fault
        stopped = isinstance(exc, (KeyboardInterrupt, Stopped))
        logger.error("%s: %s\n%s", "interrupted" if stopped else "failed", exc,
                     traceback.format_exc())
        record_end(store, step, "interrupted" if stopped else "failed",
                   error=f"{type(exc).__name__}: {exc}", log=str(log_path))
        raise
    finally:
        package_logger.removeHandler(handler)
        handler.close()
    store.mark_done(step, started=started)
    store.set_state(step, "done", seconds=round(time.time() - started, 3))
    return "done"


def record_end(store: RunStore, step: Step, state: str, error: str, log: str) -> None:
    """Record how a step ended, so that ``status`` does not keep showing it running. A full disk
    can refuse the record itself: then a short one goes over the old state file in place, and
    whatever happens here the caller re-raises the step's own error, not this one's."""
    try:
        store.set_state(step, state, error=error, log=log, log_tail=log_tail(Path(log)))
        return
    except OSError as exc:
        first = exc
    try:
        store.set_state_in_place(step, state, error=error, log=log,
                                 slurm_job_id=current_slurm_job_id())
    except OSError as exc:
        logging.getLogger(__name__).error("could not record that step %s %s (%s; then %s)",
                                          step.id, state, first, exc)


@dataclass
class StepJob:
    """One step of a saved plan snapshot (``RunStore.save_plan``'s id), not of the grid's latest
    plan: a grid re-expanded while jobs wait may no longer hold their steps."""

    store_root: str
    plan_id: str
    step_id: str

    def plan(self, store: RunStore) -> Plan:
        return store.load_plan_snapshot(self.plan_id)

    def __call__(self) -> str:
        store = RunStore(self.store_root)
        plan = self.plan(store)
        return run_step(store, plan, plan.steps[self.step_id])

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on preemption or time-out: requeue; the step resumes from its
        checkpoints."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)
