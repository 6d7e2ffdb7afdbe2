"""A training run asked to stop early (a job's time limit or a preemption ahead): the trainer
finishes its current optimiser step, writes a checkpoint and raises ``Stopped``; the launcher
requeues the job, which resumes from that checkpoint.

Two ways to ask, both read by ``stop_requested``: ``request_stop`` in this process (the signal
handler of an in-process run), or a file named by ``$ABLATE_STOP_FILE`` (the processes of a
torchrun launch, whose launcher cannot signal them all reliably: torchrun does not forward
signals, and a worker still importing has no handler yet). Torch-free, so launchers import it.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

# The warning signal SLURM sends ``signal_delay_s`` before the time limit (submitit's choice).
STOP_SIGNAL = signal.SIGUSR2
STOP_FILE_ENV = "ABLATE_STOP_FILE"
# Written by rank 0 in the step's folder when it stopped on request (its checkpoint step).
STOPPED_FILE = "stopped.json"

_requested = threading.Event()


def request_stop(signum: int | None = None, frame=None) -> None:
    """Ask this process's training to stop after its current step (a signal handler)."""
    _requested.set()


def clear_stop_request() -> None:
    _requested.clear()


def stop_requested() -> bool:
    if _requested.is_set():
        return True
    flag = os.environ.get(STOP_FILE_ENV)
    return bool(flag) and Path(flag).exists()


class Stopped(Exception):
    """The run saved a checkpoint at ``step`` and stopped because it was asked to; it resumes
    from that checkpoint. Not a failure."""

    def __init__(self, step: int, what: str = "optimiser step"):
        super().__init__(f"stopped on request after {what} {step}; its checkpoint is saved")
        self.step = step
