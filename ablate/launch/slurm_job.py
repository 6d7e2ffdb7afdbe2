"""What runs inside a SLURM job (``ablate.launch.slurm`` submits it): one step of a saved plan,
with retries, a saving stop at the time limit, and torchrun over the job's nodes.

- **Retries**: a failing run requeues its own job until ``max_attempts`` runs failed.
- **Time limits and preemption**: SLURM sends SIGUSR2 ``signal_delay_s`` before the limit. The
  job asks its training to stop (``ablate.train.stop``): in this process through a flag, in
  torchrun's workers through a stop file in the step folder (torchrun does not forward signals,
  and is started with SIGUSR2 ignored so that a signal sent to the whole process tree cannot kill
  it). The trainers finish the current optimiser step, save a checkpoint and stop; then the job
  requeues itself (submitit's checkpoint and requeue) and resumes from that checkpoint.
- **Several nodes**: one submitit task per node, each starting torchrun with ``procs_per_node``
  workers. The first node takes the step's lock, writes the step's config and a rendezvous file
  (its address and port, for this attempt of this job); the others wait for that file, and a node
  that does not get it within ``rendezvous_timeout_s`` fails, naming the file and the job.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ablate.launch.job import StepJob, current_slurm_job_id, log_tail, run_step
from ablate.spec.plan import Step
from ablate.spec.steps import step_kind
from ablate.store import RunStore, atomic_write_json
from ablate.train.stop import (
    STOP_FILE_ENV, STOP_SIGNAL, STOPPED_FILE, Stopped, clear_stop_request, request_stop,
    stop_requested,
)

RENDEZVOUS_FILE = "torchrun_rendezvous.json"
CONFIG_FILE = "torchrun_config.json"
STOP_FILE = "stop-requested"


def will_fail_again(exc: BaseException) -> bool:
    """An error another attempt on the same inputs repeats (bad data or settings, no usable
    pairs or prompts): retrying it only spends the queue. A class says so with
    ``will_fail_again = True``; a ValueError is a bad value by its meaning."""
    return bool(getattr(exc, "will_fail_again", False)) or isinstance(exc, ValueError)


def _requeue(job_id: str) -> bool:
    out = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True,
                         timeout=60)
    return out.returncode == 0


def attempt_id() -> str:
    """This run of this job: its id and how many times SLURM restarted it (a requeued job keeps
    its id, and must not read the rendezvous of its previous run)."""
    return f"{current_slurm_job_id()}.{os.environ.get('SLURM_RESTART_COUNT', '0')}"


class RendezvousError(RuntimeError):
    """A node of a multi-node job that cannot join the first node's torchrun."""


@dataclass
class SlurmStepJob(StepJob):
    """StepJob plus retries, and a stop at the time-limit warning that saves a checkpoint."""

    max_attempts: int = 2

    def _runner(self, store: RunStore, step: Step):
        return None  # the step kind's own runner

    def _on_stop_signal(self, signum, frame) -> None:
        request_stop()
        stop_file = getattr(self, "_stop_file", None)
        if stop_file is not None:
            Path(stop_file).touch()

    def __call__(self) -> str:
        store = RunStore(self.store_root)
        plan = self.plan(store)
        step = plan.steps[self.step_id]
        # A trainer stops at its next step when warned; submitit's handler (checkpoint, requeue,
        # exit) runs once it has saved. Other steps keep submitit's handler: requeued at once.
        requeue_handler = signal.getsignal(STOP_SIGNAL)
        if step_kind(step.kind).resources == "train":
            signal.signal(STOP_SIGNAL, self._on_stop_signal)
        clear_stop_request()
        try:
            return run_step(store, plan, step, runner=self._runner(store, step))
        except Stopped as stopped:
            if callable(requeue_handler):  # submitit's: always, inside a job
                store.set_state(step, "queued", reason=f"requeued before the time limit: {stopped}")
                try:
                    requeue_handler(STOP_SIGNAL, None)  # requeues this job and exits
                except Exception as exc:  # e.g. requeued max_requeues times already
                    store.set_state(step, "interrupted", error=f"{stopped}, not requeued: {exc}")
            raise
        except Exception as exc:
            failures = int(store.state(step).get("failures") or 0) + 1
            job_id = current_slurm_job_id()
            try:
                if (failures < self.max_attempts and not will_fail_again(exc) and job_id
                        and _requeue(job_id)):
                    store.set_state(step, "retrying", failures=failures,
                                    retry=f"attempt {failures + 1} of {self.max_attempts}")
                else:
                    store.set_state(step, "failed", failures=failures)
            except OSError:  # a full disk: run_step recorded the failure as best it could
                pass
            raise
        finally:
            signal.signal(STOP_SIGNAL, requeue_handler)

    def checkpoint(self, *args, **kwargs):
        """Preemption or time-out: requeue this same job; the step resumes from checkpoints/."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def torchrun_command(recipe: str, nnodes: int, node_rank: int, procs_per_node: int,
                     master_addr: str, master_port: int, config: Path, out_dir: Path,
                     cache_dir: Path, inputs: Mapping[str, Path]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}",
            f"--node_rank={node_rank}", f"--nproc_per_node={procs_per_node}",
            f"--master_addr={master_addr}", f"--master_port={master_port}",
            "-m", "ablate.train.fsdp", recipe, "--config", str(config), "--out", str(out_dir),
            "--cache", str(cache_dir),
            *(arg for role, path in inputs.items() for arg in ("--input", f"{role}={path}"))]


def _ignore_stop_signal() -> None:
    # torchrun dies of a SIGUSR2 sent to the whole job; its workers poll the stop file instead
    signal.signal(STOP_SIGNAL, signal.SIG_IGN)


@dataclass
class TorchrunStepJob(SlurmStepJob):
    """A training step over several processes: one submitit task per node, each starting torchrun
    with ``procs_per_node`` workers of ``ablate.train.fsdp``; the first task keeps the store."""

    procs_per_node: int = 1
    threads_per_process: int = 1
    rendezvous_timeout_s: float = 600

    def _runner(self, store: RunStore, step: Step):
        return lambda ctx: self._first_node(ctx.out_dir, store.cache_dir, step, ctx.inputs)

    def _first_node(self, out_dir: Path, cache_dir: Path, step: Step,
                    inputs: Mapping[str, Path]) -> None:
        import submitit

        env = submitit.JobEnvironment()
        for stale in (STOP_FILE, STOPPED_FILE, RENDEZVOUS_FILE):
            (out_dir / stale).unlink(missing_ok=True)
        atomic_write_json(out_dir / CONFIG_FILE, step.to_json())
        # The node's own host name: SLURM's node names need not resolve (several slurmd on one
        # host, or names that differ from the network's).
        rendezvous = {"attempt": attempt_id(), "master_addr": socket.gethostname(),
                      "master_port": 20000 + int(re.sub(r"\D", "", str(env.job_id)) or 0) % 20000}
        atomic_write_json(out_dir / RENDEZVOUS_FILE, rendezvous)
        self._torchrun(out_dir, cache_dir, step, inputs, rendezvous, env.node, env.num_nodes)
        (out_dir / STOP_FILE).unlink(missing_ok=True)  # a request that came after the last step
        stopped = out_dir / STOPPED_FILE
        if stopped.is_file():
            at = json.loads(stopped.read_text())["step"]
            stopped.unlink()
            raise Stopped(at)

    def _torchrun(self, out_dir: Path, cache_dir: Path, step: Step, inputs: Mapping[str, Path],
                  rendezvous: dict, node: int, num_nodes: int) -> None:
        cmd = torchrun_command(step_kind(step.kind).recipe, num_nodes, node, self.procs_per_node,
                               rendezvous["master_addr"], rendezvous["master_port"],
                               out_dir / CONFIG_FILE, out_dir, cache_dir, inputs)
        self._stop_file = out_dir / STOP_FILE
        if stop_requested():  # the warning came before the workers started
            self._stop_file.touch()
        threads = str(self.threads_per_process)
        env = {**os.environ, STOP_FILE_ENV: str(self._stop_file), "OMP_NUM_THREADS": threads,
               "MKL_NUM_THREADS": threads}
        # The workers' output goes to a file in the step folder; its tail is the error on failure.
        log_path = out_dir / f"torchrun-node{node}.log"
        with open(log_path, "a") as log:
            code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                  preexec_fn=_ignore_stop_signal).returncode
        if code != 0:
            raise RuntimeError(f"torchrun on node {node} exited with {code}; the end of "
                               f"{log_path}:\n{log_tail(log_path, 20)}")

    def __call__(self) -> str:
        import submitit

        env = submitit.JobEnvironment()
        if env.global_rank == 0:
            return super().__call__()
        # The other nodes only run their workers, once the first has published the rendezvous.
        store = RunStore(self.store_root)
        plan = self.plan(store)
        step = plan.steps[self.step_id]
        folder = store.step_dir(step)
        rendezvous = self.wait_for_rendezvous(store, step, env.node)
        if rendezvous is None:
            return "skipped"
        requeue_handler = signal.getsignal(STOP_SIGNAL)
        signal.signal(STOP_SIGNAL, self._on_stop_signal)
        try:
            inputs = {role: store.step_dir(plan.steps[sid]) for role, sid in step.inputs.items()}
            self._torchrun(folder, store.cache_dir, step, inputs, rendezvous, env.node,
                           env.num_nodes)
        finally:
            signal.signal(STOP_SIGNAL, requeue_handler)
        return "worker"

    def wait_for_rendezvous(self, store: RunStore, step: Step, node: int) -> dict | None:
        """The first node's rendezvous for this attempt of the job; None when the step is done
        (nothing to run). Raises RendezvousError after ``rendezvous_timeout_s``."""
        path = store.step_dir(step) / RENDEZVOUS_FILE
        attempt = attempt_id()
        deadline = time.monotonic() + self.rendezvous_timeout_s
        while time.monotonic() < deadline:
            if store.is_done(step):
                return None
            try:
                found = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                found = None
            if found and found.get("attempt") == attempt:
                return found
            time.sleep(1)
        raise RendezvousError(
            f"node {node} of SLURM job {current_slurm_job_id()} (step {step.name!r}): the first "
            f"node did not publish its torchrun address in {path} within "
            f"{self.rendezvous_timeout_s:g} s (rendezvous_timeout_s); see the first node's "
            f"output in the job's log and {store.step_dir(step) / 'torchrun-node0.log'}")
