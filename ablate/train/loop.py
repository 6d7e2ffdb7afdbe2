"""The optimisation loop shared by the DPO and reward-model recipes.

A recipe hands over a module, its tokenised pairs and a function that returns the summed loss of a
micro-batch of pairs; the loop owns the rest: the seeded batch order, gradient accumulation
normalised by the effective batch, clipping, the schedule, non-finite checks, checkpoints every
``save_every_steps`` and resume from the latest one, the metrics log and progress.
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
    TokenizedPair, TrainingError, check_finite, linear_warmup_decay, make_optimizer, micro_batches,
    plan_batches,
)

# micro_loss(pair positions) -> (sum of the per-pair losses, summed statistics to log)
MicroLoss = Callable[[list[int]], tuple[Tensor, dict[str, float]]]


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
    length_grouping: int = 0  # see plan_batches


class StopRequested(Exception):
    """Raised by ``stop_after_steps``: the tests' stand-in for a run killed mid-epoch."""


def rank_micro_batches(pairs: Sequence[TokenizedPair], positions: Sequence[int],
                       micro_batch_size: int) -> list[list[int]]:
    """This process's micro-batches of one step. Every process gets the same number of them
    (some possibly empty) because sharded forwards are collective."""
    size = fsdp.world_size()
    ranked = sorted(positions, key=lambda i: (pairs[i].length, i))
    mine = ranked[fsdp.rank()::size]
    per_rank = math.ceil(math.ceil(len(positions) / size) / micro_batch_size)
    batches = micro_batches(pairs, mine, micro_batch_size)
    return batches + [[] for _ in range(per_rank - len(batches))]


def train_loop(module: nn.Module, pairs: Sequence[TokenizedPair], cfg: LoopConfig,
               micro_loss: MicroLoss, out_dir: Path, log, progress, desc: str,
               stop_after_steps: int | None = None, lengths: Sequence[int] | None = None
               ) -> dict:
    """``lengths``: each pair's token count in the recipe's layout, for length-grouped batches."""
    batches = plan_batches(len(pairs), cfg.batch_size, cfg.epochs, cfg.seed, lengths,
                           cfg.length_grouping)
    total_steps = len(batches)
    optimizer = make_optimizer(module, cfg.lr, cfg.weight_decay)
    scheduler = linear_warmup_decay(optimizer, total_steps, cfg.warmup_ratio)
    checkpoints = Path(out_dir) / "checkpoints"
    start = 0
    found = latest_checkpoint(checkpoints)
    if found is not None:
        start = load_checkpoint(found, module, optimizer, scheduler)["step"]
        log.info("resuming from %s (step %d of %d)", found, start, total_steps)
    metrics = MetricsLog(Path(out_dir) / "metrics.jsonl", resume_step=start)
    speed = Throughput()
    last: dict = {}
    module.train()
    for step in range(start, total_steps):
        positions = batches[step]
        sums: dict[str, float] = {}
        tokens = 0
        with speed:
            for micro, group in enumerate(rank_micro_batches(pairs, positions,
                                                             cfg.micro_batch_size)):
                weight = 1.0 if group else 0.0  # an empty slot still joins the collectives
                loss_sum, stats = micro_loss(group or [positions[0]])
                # FSDP averages gradients over processes: scale so the step's gradient is the
                # mean over the effective batch whatever the process count.
                loss = loss_sum * (weight * fsdp.world_size() / len(positions))
                check_finite(loss_sum, step, micro, [pairs[i].index for i in group])
                loss.backward()
                # Every process must all-reduce the same keys, including one whose slots were
                # all empty, so the stand-in forward's stats count as zero instead of missing.
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + (value if group else 0.0)
                if group:
                    tokens += sum(pairs[i].real_tokens for i in group)
            grad_norm = fsdp.clip_grad_norm(module, cfg.max_grad_norm)
            if not math.isfinite(grad_norm):
                raise TrainingError(f"non-finite gradient norm at optimiser step {step} (data "
                                    f"rows {[pairs[i].index for i in positions]}); the run "
                                    "stopped and the last good checkpoint is kept")
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        keys = sorted(sums)
        reduced = fsdp.all_reduce_sum(torch.tensor([sums[k] for k in keys] + [float(tokens)],
                                                   dtype=torch.float64))
        speed.add(int(reduced[-1]), len(positions))
        last = {k: float(v) / len(positions) for k, v in zip(keys, reduced[:-1].tolist())}
        metrics.write({"step": step + 1, "lr": lr, "grad_norm": grad_norm,
                       "pairs": len(positions), "tokens": int(reduced[-1]), **last})
        progress(step + 1, total_steps, desc)
        if (step + 1) % cfg.save_every_steps == 0 and step + 1 < total_steps:
            save_checkpoint(checkpoints, step + 1, module, optimizer, scheduler,
                            {"total_steps": total_steps})
        if stop_after_steps is not None and step + 1 >= stop_after_steps:
            raise StopRequested(f"stopped after step {step + 1}")
    return {"steps": total_steps, "resumed_from_step": start, "last": last, **speed.summary()}
