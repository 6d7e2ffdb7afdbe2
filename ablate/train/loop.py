"""The optimisation loop shared by the DPO and reward-model recipes.

A recipe hands over a module, its tokenised pairs and a function that returns the summed loss of a
micro-batch of pairs; the loop owns the rest: the seeded batch order, gradient accumulation
normalised by the effective batch, clipping, the schedule, non-finite checks, checkpoints every
``save_every_steps`` (and when asked to stop: ``ablate.train.stop``) and resume from the latest
one, the metrics log and progress.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ablate.train import fsdp
from ablate.train.checkpoints import (
    MetricsLog, Throughput, latest_checkpoint, load_checkpoint, save_checkpoint,
)
from ablate.train.common import (
    TokenizedPair, TrainingError, make_optimizer, micro_batches, plan_batches, warmup_then_linear,
)
from ablate.train.precision import MasterWeights
from ablate.train.stop import Stopped, stop_requested

# micro_loss(pair positions) -> (sum of the per-pair losses, summed statistics to log), all
# tensors on the training device: reading them there would make the host wait for the GPU
MicroLoss = Callable[[list[int]], tuple[Tensor, dict[str, Tensor]]]


@dataclass(frozen=True)
class LoopConfig:
    lr: float
    warmup_ratio: float
    epochs: float
    batch_size: int
    micro_batch_size: int
    weight_decay: float
    max_grad_norm: float
    save_every_steps: int
    seed: int
    end_lr: float
    adam_beta2: float
    length_grouping: int = 0  # see plan_batches
    batch_field: str = "batch_size"  # how the user's config names batch_size, for errors

    @classmethod
    def of(cls, cfg, seed: int) -> "LoopConfig":
        """The loop's settings from a DPO or reward-model config."""
        return cls(lr=cfg.lr, warmup_ratio=cfg.warmup_ratio, epochs=cfg.epochs,
                   batch_size=cfg.batch_size, micro_batch_size=cfg.micro_batch_size,
                   weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
                   save_every_steps=cfg.save_every_steps, seed=seed, end_lr=cfg.end_lr,
                   adam_beta2=cfg.adam_beta2, length_grouping=cfg.length_grouping,
                   batch_field=f"{cfg.kind} batch_size")


def check_batch_divides(batch_size: int, field: str, processes: int) -> None:
    """Each process takes an equal slice of every batch (of a whole one: an epoch's last may be
    shorter), so the batch size must divide among the processes, on a resume too."""
    if batch_size % processes:
        raise TrainingError(f"{field} is {batch_size}, which does not divide among {processes} "
                            f"processes (each takes an equal share of every batch): set "
                            f"{field} to a multiple of {processes}, or run on a number of "
                            f"processes that divides {batch_size}")


class StopRequested(Exception):
    """Raised by a trainer's ``stop_after_steps`` (PPO: ``stop_after``): the tests' stand-in for a
    run killed mid-way."""


def rank_micro_batches(lengths: Sequence[int], positions: Sequence[int],
                       micro_batch_size: int) -> list[list[int]]:
    """This process's micro-batches of one step, grouped by ``lengths`` (each pair's tokens in
    the recipe's layout). Every process gets the same number of them (some possibly empty)
    because sharded forwards are collective."""
    size = fsdp.world_size()
    ranked = sorted(positions, key=lambda i: (lengths[i], i))
    mine = ranked[fsdp.rank()::size]
    per_rank = math.ceil(math.ceil(len(positions) / size) / micro_batch_size)
    batches = micro_batches(lengths, mine, micro_batch_size)
    return batches + [[] for _ in range(per_rank - len(batches))]


@dataclass
class StepWork:
    """One optimiser step's forward and backward passes, queued on the device and not yet read."""

    micro_losses: list[Tensor]  # each micro-batch's summed loss
    micro_rows: list[list[int]]  # the data rows of each micro-batch
    grad_norm: Tensor  # before clipping
    sums: dict[str, Tensor]  # the micro-batches' statistics, summed
    tokens: int

    def read(self, step: int) -> tuple[float, dict[str, float]]:
        """The step's figures on the host in one transfer, the one place a step waits for the
        device; a non-finite loss or gradient raises here, before the optimiser changes the
        weights, naming the micro-batch and its rows."""
        keys = sorted(self.sums)
        values = torch.stack([t.detach().double() for t in
                              [self.grad_norm, *self.micro_losses, *(self.sums[k] for k in keys)]]
                             ).cpu().tolist()
        grad_norm, losses = values[0], values[1:1 + len(self.micro_losses)]
        for micro, (loss, rows) in enumerate(zip(losses, self.micro_rows)):
            if not math.isfinite(loss):
                raise TrainingError(f"non-finite loss ({loss}) at optimiser step {step}, "
                                    f"micro-batch {micro} (data rows {rows}); the run stopped and "
                                    "the last good checkpoint is kept")
        if not math.isfinite(grad_norm):
            raise TrainingError(f"non-finite gradient norm at optimiser step {step} (data rows "
                                f"{sum(self.micro_rows, [])}); the run stopped and the last good "
                                "checkpoint is kept")
        return grad_norm, dict(zip(keys, values[1 + len(self.micro_losses):]))


def accumulate_step(trained: nn.Module, pairs: Sequence[TokenizedPair], positions: Sequence[int],
                    micro_batch_size: int, max_grad_norm: float, micro_loss: MicroLoss,
                    lengths: Sequence[int] | None = None) -> StepWork:
    """Forward and backward over the step's micro-batches, then clipping of ``trained``'s
    gradients; nothing here reads a value back from the device, so the host keeps queueing
    kernels ahead of the GPU. ``lengths``: each pair's tokens in the recipe's layout (default:
    its longer sequence), which groups the micro-batches."""
    if lengths is None:
        lengths = [p.length for p in pairs]
    work = StepWork([], [], torch.zeros(()), {}, 0)
    for group in rank_micro_batches(lengths, positions, micro_batch_size):
        weight = 1.0 if group else 0.0  # an empty slot still joins the collectives
        loss_sum, stats = micro_loss(group or [positions[0]])
        # FSDP averages gradients over processes: scale so the step's gradient is the mean
        # over the effective batch whatever the process count.
        (loss_sum * (weight * fsdp.world_size() / len(positions))).backward()
        work.micro_losses.append(loss_sum.detach())
        work.micro_rows.append([pairs[i].index for i in group])
        # Every process must all-reduce the same keys, including one whose slots were all
        # empty, so the stand-in forward's stats count as zero instead of missing.
        for key, value in stats.items():
            work.sums[key] = work.sums.get(key, 0.0) + (value if group else torch.zeros_like(value))
        work.tokens += sum(pairs[i].real_tokens for i in group)
    work.grad_norm = fsdp.clip_grad_norm(trained, max_grad_norm)
    return work


def train_loop(module: nn.Module, pairs: Sequence[TokenizedPair], cfg: LoopConfig,
               micro_loss: MicroLoss, out_dir: Path, log, progress, desc: str,
               stop_after_steps: int | None = None, lengths: Sequence[int] | None = None,
               masters: MasterWeights | None = None) -> dict:
    """``lengths``: each pair's token count in the recipe's layout, for length-grouped batches
    and micro-batches (default: its longer sequence).
    ``masters``: fp32 master weights (``precision: bf16_weights``), which the optimiser,
    clipping and checkpoints take in place of ``module``'s bf16 ones."""
    check_batch_divides(cfg.batch_size, cfg.batch_field, fsdp.world_size())
    trained = module if masters is None else masters
    # the same global batches whatever the number of processes: a resume on another number
    # continues the same data order
    batches = plan_batches(len(pairs), cfg.batch_size, cfg.epochs, cfg.seed, lengths,
                           cfg.length_grouping)
    micro_lengths = lengths if lengths is not None else [p.length for p in pairs]
    total_steps = len(batches)
    optimizer = make_optimizer(trained, cfg.lr, cfg.weight_decay, cfg.adam_beta2)
    scheduler = warmup_then_linear(optimizer, total_steps,
                                   math.ceil(cfg.warmup_ratio * total_steps), cfg.end_lr)
    checkpoints = Path(out_dir) / "checkpoints"
    start = 0
    found = latest_checkpoint(checkpoints)
    if found is not None:
        start = load_checkpoint(found, trained, optimizer, scheduler, cfg.seed)["step"]
        if masters is not None:
            masters.copy_back()
        log.info("resuming from %s (step %d of %d)", found, start, total_steps)
    metrics = MetricsLog(Path(out_dir) / "metrics.jsonl", resume_step=start)
    speed = Throughput()
    last: dict = {}
    module.train()
    for step in range(start, total_steps):
        positions = batches[step]
        with speed:
            work = accumulate_step(trained, pairs, positions, cfg.micro_batch_size,
                                   cfg.max_grad_norm, micro_loss, micro_lengths)
            grad_norm, sums = work.read(step)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if masters is not None:
                masters.copy_back()
            keys = sorted(sums)
            # the stop request rides on the step's all-reduce: a signal reaches the processes
            # at different moments, and they must all stop after the same step
            reduced = fsdp.all_reduce_sum(torch.tensor(
                [sums[k] for k in keys] + [float(work.tokens), float(stop_requested())],
                dtype=torch.float64))
            stop = bool(reduced[-1] > 0)
            last = {k: float(v) / len(positions) for k, v in zip(keys, reduced[:-2].tolist())}
            metrics.write({"step": step + 1, "lr": lr, "grad_norm": grad_norm,
                           "pairs": len(positions), "tokens": int(reduced[-2]), **last})
            progress(step + 1, total_steps, desc)
            if step + 1 == total_steps:
                # the last optimiser step may still be queued on the GPU: the training time
                # ends when it has run
                _wait_for_device(trained)
        speed.add(int(reduced[-2]), len(positions))
        if step + 1 < total_steps and (stop or (step + 1) % cfg.save_every_steps == 0):
            save_checkpoint(checkpoints, step + 1, trained, optimizer, scheduler,
                            {"total_steps": total_steps})
            if stop:
                raise Stopped(step + 1)
        if stop_after_steps is not None and step + 1 >= stop_after_steps:
            raise StopRequested(f"stopped after step {step + 1}")
    return {"steps": total_steps, "resumed_from_step": start, "last": last, **speed.summary()}


def stop_agreed() -> bool:
    """Whether any process was asked to stop (``ablate.train.stop``), the same answer in all:
    they must stop after the same step. A collective; the DPO and RM loop carries the flag in
    its step's all-reduce instead."""
    flag = torch.tensor([float(stop_requested())], dtype=torch.float64)
    return bool(fsdp.all_reduce_sum(flag)[0] > 0)


def _wait_for_device(module: nn.Module) -> None:
    device = next(module.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
