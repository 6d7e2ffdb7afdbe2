"""Checkpoints (save, resume, publish atomically), the per-step metrics log and throughput
counting, shared by the DPO, reward-model and PPO trainers."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import torch
from torch import nn

from ablate.spec.seeds import derive_seed
from ablate.store import atomic_write_json, atomic_write_text
from ablate.train import fsdp
from ablate.train.common import TrainingError


def latest_checkpoint(folder: Path) -> Path | None:
    folder = Path(folder)
    found = sorted(folder.glob("step_*"), key=lambda p: int(p.name.split("_")[1])) \
        if folder.is_dir() else []
    found = [p for p in found if (p / "trainer_state.json").is_file()]
    return found[-1] if found else None


def rng_states() -> dict:
    """The random generators a resumed run must continue: CPU, Python's, and the current CUDA
    device's when CUDA is in use (dropout, sampling and shuffling on a GPU draw from it)."""
    states = {"rng": torch.get_rng_state(), "python_rng": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda_rng"] = torch.cuda.get_rng_state()
    return states


def restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["rng"])
    random.setstate(states["python_rng"])
    if "cuda_rng" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda_rng"])


def rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt"


def save_rank_rng(folder: Path) -> None:
    """Every process keeps its own generators: they differ by rank wherever a process draws
    numbers of its own, and restoring rank 0's everywhere would make them all draw alike."""
    torch.save(rng_states(), Path(folder) / rng_file(fsdp.rank()))


def checkpoint_rng(path: Path, rank: int, world_size: int, schedule: dict) -> dict | None:
    """The generator states this process resumes with: its own rank's, or None when the
    checkpoint was written by another number of processes (no saved stream is this rank's;
    ``resume_generators`` then derives one). Checkpoints from before per-rank files kept rank
    0's states beside the schedule; those are read as they were saved."""
    own = Path(path) / rng_file(rank)
    saved_world = schedule.get("world_size")
    if saved_world is not None and saved_world != world_size:
        return None
    if own.is_file():
        return torch.load(own, weights_only=False)
    if "rng" in schedule:
        return schedule
    raise TrainingError(f"{path}: no random-generator state for rank {rank} ({own.name} is "
                        "missing); the checkpoint is incomplete")


def seed_generators(seed: int) -> None:
    torch.manual_seed(seed)  # every device's generator
    random.seed(seed)


def resume_generators(path: Path, schedule: dict, seed: int, step: int) -> None:
    """Continue this process's generators from a checkpoint of ``step``: its own saved states
    on the same number of processes; on another number, a stream derived from the run's seed,
    the step and the rank (no trainer's result draws from these generators: dropout is off and
    every sampled or shuffled stream is seeded by name, docs/architecture.md "Resume")."""
    states = checkpoint_rng(path, fsdp.rank(), fsdp.world_size(), schedule)
    if states is None:
        seed_generators(derive_seed(seed, "process-generators", step, fsdp.rank()))
    else:
        restore_rng_states(states)


def save_checkpoint(folder: Path, step: int, model: nn.Module, optimizer, scheduler,
                    extra: dict) -> Path:
    """Model, optimiser, schedule, data position and RNG, under ``step_<n>``; written to a temp
    folder and renamed, and only then are older checkpoints removed."""
    folder = Path(folder)
    target = folder / f"step_{step}"
    tmp = folder / f".step_{step}.tmp"
    if fsdp.is_main_process():
        for stale in folder.glob(".step_*.tmp"):  # a save that was killed half way
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
    fsdp.barrier()
    try:
        fsdp.save_train_state(tmp, model, optimizer)
        save_rank_rng(tmp)
        fsdp.barrier()  # every rank's file is in before the folder is published
        if fsdp.is_main_process():
            torch.save({"scheduler": scheduler.state_dict(), "world_size": fsdp.world_size()},
                       tmp / "schedule_rng.pt")
            atomic_write_json(tmp / "trainer_state.json", {"step": step, **extra})
            publish_checkpoint(tmp, target)
    except BaseException:
        # a half-written checkpoint (a full disk) would hold its space for every later step
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsdp.barrier()
    return target


def publish_checkpoint(tmp: Path, target: Path) -> None:
    """Move a fully written checkpoint into place, then drop older ones: a kill at any moment
    leaves at least one complete checkpoint."""
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    for old in target.parent.glob("step_*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Path, model: nn.Module, optimizer, scheduler, seed: int) -> dict:
    """Resume from ``path``, written by this or any other number of processes."""
    fsdp.load_train_state(path, model, optimizer)
    extra = torch.load(path / "schedule_rng.pt", weights_only=False)
    scheduler.load_state_dict(extra["scheduler"])
    state = json.loads((path / "trainer_state.json").read_text())
    resume_generators(path, extra, seed, state["step"])
    return state


class MetricsLog:
    """``metrics.jsonl``: one line per optimiser step, appended and flushed (a resumed run keeps
    the lines up to its checkpoint and drops the ones after)."""

    def __init__(self, path: Path, resume_step: int = 0):
        self.path = Path(path)
        self.enabled = fsdp.is_main_process()
        if self.enabled and self.path.is_file():
            lines = self.path.read_text().splitlines()
            kept = []
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    if number == len(lines):  # a line the killed run was writing
                        break
                    raise TrainingError(f"{self.path}: line {number} is not JSON; "
                                        "delete the file to start its log afresh") from None
                if record.get("step", 0) <= resume_step:
                    kept.append(line)
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")


class Throughput:
    """Wall and CPU time of the training steps (CPU time, summed over threads, is the steadier
    figure on a shared machine), with the real tokens and pairs they processed. The first step
    (which pays for kernel selection and first allocations) is also reported apart."""

    def __init__(self):
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.tokens = 0
        self.pairs = 0
        self.first_step: tuple[float, int] | None = None  # (seconds, tokens)
        self._start = self._cpu_start = None

    def __enter__(self):
        self._start, self._cpu_start = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.seconds += time.perf_counter() - self._start
        self.cpu_seconds += time.process_time() - self._cpu_start

    def add(self, tokens: int, pairs: int) -> None:
        """Count a finished step's work; the first call also records the first step."""
        self.tokens += tokens
        self.pairs += pairs
        if self.first_step is None:
            self.first_step = (self.seconds, tokens)

    def summary(self) -> dict:
        out = {"train_seconds": round(self.seconds, 3),
               "train_cpu_seconds": round(self.cpu_seconds, 3), "real_tokens": self.tokens,
               "pairs": self.pairs,
               "tokens_per_second": round(self.tokens / self.seconds, 2) if self.seconds
               else None,
               "pairs_per_second": round(self.pairs / self.seconds, 4) if self.seconds else None}
        if self.first_step is not None:
            first_seconds, first_tokens = self.first_step
            steady = self.seconds - first_seconds
            out.update(first_step_seconds=round(first_seconds, 3),
                       after_first_step_seconds=round(steady, 3),
                       after_first_step_tokens=self.tokens - first_tokens)
        return out
