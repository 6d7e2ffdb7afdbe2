"""PPO against a reward model, as the paper ran it (Ivison et al., 2024, following Ouyang et al.).

Four models: the policy and a frozen reference (both from the SFT model), a frozen scorer (the
reward model, or a programmatic reward for checkable runs) and a value model (initialised from the
RM, the paper's choice, or from the policy). Each iteration samples a batch of prompts at
``temperature``, generates one response per prompt and scores it at its final token (a response
that never ends scores ``no_eos_penalty``, −10, instead). By default the rest follows the paper's
code (hamishivi/EasyLM, ``llama_train_ppo.py``): minibatches are taken in rollout order, and each
is scored just before its own update by the current policy, the reference and the value model
(log-probs from the unscaled logits), gets the per-token KL penalty β·(log π − log π_ref), GAE
advantages whitened within the minibatch, and one step of the clipped policy and value losses.
``experience: per_batch`` scores the whole rollout once instead (``PPOConfig``).
``metrics.jsonl`` gets one line per iteration; its ``kl`` and ``rm_score`` are what the
reward-vs-KL frontier plots.

Under ``torchrun`` (``python -m ablate.train.fsdp ppo``) every model is sharded with FSDP2, loaded
straight into shards (``fsdp.build_model``): the policy, the reference, the value model and the
reward model, which scores each process's own batches of responses. Each process generates,
scores and trains on its share of every batch: generation chunks of ``generation_batch_size``
prompts (by default ``minibatch_size``) and micro-batches go to the processes in turn, each
chunk samples from its own seeded stream through the sharded policy (one decoder layer gathered
at a time, every process stepping until all are done), and the sampled tokens and per-token
statistics are gathered so that every process holds the whole experience. A run with N
processes therefore samples the same tokens and takes the same optimiser steps as one process, up
to float rounding in the gradient sums (``tests/train/test_ppo_fsdp.py``).

The set-up (the models as FSDP roots, the prompts, the scorer, the optimisers and schedules,
resuming, the vLLM engine) and the checkpoints' layout are ``ablate.train.ppo_setup``'s; this
module is the loop: rollouts, experience and advantages, updates and logging.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ablate.generate.forward import autocast
from ablate.spec.schema import PPOConfig
from ablate.spec.seeds import derive_seed
from ablate.store import atomic_write_json
from ablate.train import fsdp
from ablate.train.checkpoints import MetricsLog
from ablate.train.common import TrainingError, device_for_training
from ablate.train.loop import StopRequested, stop_agreed
from ablate.train.stop import Stopped
from ablate.train.losses import (
    clipped_policy_loss, clipped_value_loss, explained_variance, gae_advantages,
    kl_penalized_rewards, masked_mean, masked_whiten, no_eos_scores,
)
from ablate.train.ppo_setup import (
    PolicyScores, ppo_updates, ppo_warmup_updates, response_logps, save_checkpoint, set_up,
)
from ablate.train.rollout import (
    PromptItem, Rollout, build_rollout, eos_token_ids, programmatic_reward, sample_token_ids,
)

# the set-up's names that tests and callers import from here, besides the loop's own
__all__ = ["train_ppo", "run_step", "PolicyScores", "response_logps", "ppo_updates",
           "ppo_warmup_updates"]

_log = logging.getLogger("ablate.train.ppo")


# ---------------------------------------------------------------- one iteration


@dataclass
class Experience:
    rollout: Rollout
    logps: Tensor
    values: Tensor
    advantages: Tensor
    returns: Tensor
    prompt_rows: list[int]  # rows of the prompt set, for error messages


@torch.no_grad()
def _score_rollout(policy, reference, value_model, rollout: Rollout, scores: Tensor,
                   cfg: PPOConfig, device) -> tuple[Experience, dict]:
    n, width = len(rollout.texts), rollout.responses.shape[1]
    micro = [list(range(start, min(start + cfg.micro_batch_size, n)))
             for start in range(0, n, cfg.micro_batch_size)]
    mine, slots = fsdp.rank_slots(len(micro))
    # rows this process did not score stay 0 and are filled in by the others' sums
    logps, ref_logps, values, entropy = (torch.zeros(n, width) for _ in range(4))
    for slot in range(slots):
        rows = micro[mine[slot]] if slot < len(mine) else micro[0]  # micro[0]: a stand-in
        part = rollout.select(rows).to(device)
        with autocast(device):
            policy_logps, policy_entropy = policy(part, with_entropy=True)
            reference_logps, _ = reference(part)
            part_values = value_model(part)
        if slot < len(mine):
            w = part.responses.shape[1]
            logps[rows, :w] = policy_logps.float().cpu()
            entropy[rows, :w] = policy_entropy.float().cpu()
            ref_logps[rows, :w] = reference_logps.float().cpu()
            values[rows, :w] = part_values.float().cpu()
    for module in (policy, reference, value_model):
        fsdp.reshard(module)
    logps, ref_logps, values, entropy = (fsdp.all_reduce_sum(t) for t in
                                         (logps, ref_logps, values, entropy))
    mask = rollout.response_mask.float()
    penalized = no_eos_scores(scores, rollout.ended_with_eos, cfg.no_eos_penalty,
                              cfg.no_eos_penalty_mode)
    rewards, kl = kl_penalized_rewards(penalized, logps, ref_logps, mask, cfg.beta)
    advantages, returns = gae_advantages(rewards, values, mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    kl_per_sequence = kl.sum(1)
    stats = {
        "rm_score": scores.mean().item(),
        "kl": kl_per_sequence.mean().item(),
        "reward": (penalized - cfg.beta * kl_per_sequence).mean().item(),
        "score_with_penalty": penalized.mean().item(),
        "entropy": masked_mean(entropy, mask).item(),
        "response_length": mask.sum(1).mean().item(),
        "no_eos_share": (~rollout.ended_with_eos).float().mean().item(),
        "explained_variance": explained_variance(values, returns, mask),
        "value_mean": masked_mean(values, mask).item(),
    }
    return Experience(rollout, logps, values, advantages, returns, []), stats


@dataclass
class UpdateTotals:
    """The PPO updates of one iteration, summed over minibatches (this process's share)."""

    sums: dict
    updates: int = 0
    grad_norms: tuple[float, float] = (0.0, 0.0)
    lr: float = 0.0

    @classmethod
    def empty(cls) -> "UpdateTotals":
        return cls({k: 0.0 for k in ("policy_loss", "value_loss", "policy_clipfrac",
                                     "value_clipfrac", "approx_kl_old", "tokens")})

    def stats(self) -> dict:
        """Token means over every process's minibatches, the last update's norms and rate."""
        keys = sorted(self.sums)
        totals = dict(zip(keys, fsdp.all_reduce_sum(
            torch.tensor([self.sums[k] for k in keys], dtype=torch.float64)).tolist()))
        tokens_seen = totals.pop("tokens")
        stats = {k: v / max(tokens_seen, 1.0) for k, v in totals.items()}
        stats.update(policy_grad_norm=self.grad_norms[0], value_grad_norm=self.grad_norms[1],
                     updates=self.updates, lr=self.lr)
        return stats


def _ppo_update(policy, value_model, optimizers, schedulers, exp: Experience, cfg: PPOConfig,
                minibatches: Sequence[Sequence[int]], device, iteration: int,
                totals: UpdateTotals) -> None:
    """One optimiser step per minibatch (rows of ``exp``), in the order given."""
    sums = totals.sums
    for rows in minibatches:
        rows = list(rows)
        # The loss is a mean over the minibatch's response tokens, however it is micro-batched
        # and whatever the number of processes.
        n_tokens = exp.rollout.response_mask[rows].sum().clamp(min=1).float().item()
        micro = [rows[m:m + cfg.micro_batch_size]
                 for m in range(0, len(rows), cfg.micro_batch_size)]
        mine, slots = fsdp.rank_slots(len(micro))
        for slot in range(slots):
            part_rows = micro[mine[slot]] if slot < len(mine) else micro[0]  # a stand-in
            # FSDP averages gradients over processes: scaling by their number makes the step's
            # gradient the minibatch's, and a stand-in's weight 0 makes it count for nothing.
            weight = 1.0 if slot < len(mine) else 0.0
            part = exp.rollout.select(part_rows).to(device)
            width = part.responses.shape[1]
            take = torch.as_tensor(part_rows)
            old_logps = exp.logps[take, :width].to(device)
            old_values = exp.values[take, :width].to(device)
            advantages = exp.advantages[take, :width].to(device)
            returns = exp.returns[take, :width].to(device)
            mask = part.response_mask.float()
            with autocast(device):
                logps, _ = policy(part)
                values = value_model(part)
            pg, pg_clipped = clipped_policy_loss(logps.float(), old_logps, advantages, mask,
                                                 cfg.clip_ratio)
            vf, vf_clipped = clipped_value_loss(values, old_values, returns, mask,
                                                cfg.value_clip)
            loss = (pg.sum() + cfg.value_coef * vf.sum()) / n_tokens
            if not torch.isfinite(loss):
                raise TrainingError(f"non-finite PPO loss at iteration {iteration} (prompt "
                                    f"rows {[exp.prompt_rows[r] for r in part_rows]}); "
                                    "the run stopped and the last good checkpoint is kept")
            (loss * (weight * fsdp.world_size())).backward()
            if weight:
                sums["policy_loss"] += pg.sum().item()
                sums["value_loss"] += vf.sum().item()
                sums["policy_clipfrac"] += pg_clipped.sum().item()
                sums["value_clipfrac"] += vf_clipped.sum().item()
                sums["approx_kl_old"] += ((old_logps - logps.detach().float()) * mask
                                          ).sum().item()
                sums["tokens"] += mask.sum().item()
        grad_norms = [float(fsdp.clip_grad_norm(m, cfg.max_grad_norm))
                      for m in (policy, value_model)]
        if not all(math.isfinite(g) for g in grad_norms):
            raise TrainingError(f"non-finite gradient norm at iteration {iteration}; the run "
                                "stopped and the last good checkpoint is kept")
        totals.lr = schedulers[0].get_last_lr()[0]
        for optimizer, scheduler in zip(optimizers, schedulers):
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        totals.updates += 1
        totals.grad_norms = (grad_norms[0], grad_norms[1])


def _check_experience(stats: dict, cfg: PPOConfig, iteration: int) -> None:
    """Stop before an update on non-finite statistics or a KL past ``max_kl``."""
    if not all(math.isfinite(v) for k, v in stats.items() if k != "explained_variance"):
        raise TrainingError(f"non-finite rollout statistics at iteration {iteration}: {stats};"
                            " the run stopped and the last good checkpoint is kept")
    if stats["kl"] > cfg.max_kl:
        raise TrainingError(f"KL to the reference reached {stats['kl']:.3f} at iteration "
                            f"{iteration}, past max_kl={cfg.max_kl}: the policy collapsed; "
                            "the run stopped and the last good checkpoint is kept")


def _train_on_rollout(policy, reference, value_model, optimizers, schedulers, rollout: Rollout,
                      scores: Tensor, prompt_rows: list[int], cfg: PPOConfig, device, seed: int,
                      iteration: int) -> dict:
    """Score one rollout and take its PPO updates (``cfg.experience``); returns the iteration's
    statistics: the experience's (per_minibatch: the mean over the minibatches scored, as the
    paper's code logs them) and the updates'."""
    n = len(rollout.texts)
    size = min(cfg.minibatch_size, n)
    totals = UpdateTotals.empty()
    if cfg.experience == "per_batch":
        experience, stats = _score_rollout(policy, reference, value_model, rollout, scores, cfg,
                                           device)
        experience.prompt_rows = prompt_rows
        _check_experience(stats, cfg, iteration)
        generator = torch.Generator().manual_seed(derive_seed(seed, "minibatch-order", iteration))
        minibatches = []
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(n, generator=generator).tolist()
            minibatches += [order[start:start + size] for start in range(0, n, size)]
        _ppo_update(policy, value_model, optimizers, schedulers, experience, cfg, minibatches,
                    device, iteration, totals)
        return {**stats, **totals.stats()}
    # per_minibatch: the paper's code re-scores each minibatch right before its update, so the
    # "old" log-probs and values are the current models' and the advantages are whitened over
    # the minibatch alone
    scored = []
    for _ in range(cfg.ppo_epochs):
        for start in range(0, n, size):
            rows = list(range(start, min(start + size, n)))
            experience, stats = _score_rollout(policy, reference, value_model,
                                               rollout.select(rows), scores[rows], cfg, device)
            experience.prompt_rows = [prompt_rows[r] for r in rows]
            _check_experience(stats, cfg, iteration)
            scored.append(stats)
            _ppo_update(policy, value_model, optimizers, schedulers, experience, cfg,
                        [list(range(len(rows)))], device, iteration, totals)
    means = {}
    for key in scored[0]:
        # a minibatch whose returns do not vary has no explained variance (nan): left out
        values = [s[key] for s in scored if math.isfinite(s[key])]
        means[key] = sum(values) / len(values) if values else float("nan")
    return {**means, **totals.stats()}


def _generate(policy: nn.Module, lm: nn.Module, tokenizer, prompts: Sequence[PromptItem],
              cfg: PPOConfig, seed: int) -> Rollout:
    """One response per prompt with transformers ``generate``: the generation chunks of
    ``generation_batch_size`` prompts go to the processes in turn, each generating through its
    sharded policy (one decoder layer gathered at a time, ``fsdp.generating``), and the sampled
    ids are then shared, so every process holds the same rollout."""
    batch_size = cfg.generation_batch_size or cfg.minibatch_size
    chunks, calls = fsdp.rank_slots(-(-len(prompts) // batch_size))
    with fsdp.generating(policy):
        prompt_ids, prompt_mask, generated, width = sample_token_ids(
            lm, tokenizer, prompts, temperature=cfg.temperature,
            max_new_tokens=cfg.max_response_length, seed=seed, batch_size=batch_size,
            chunks=chunks, calls=calls, top_k=cfg.top_k)
    mine = torch.zeros(len(prompts), dtype=torch.bool)
    for chunk in chunks:
        mine[chunk * batch_size:(chunk + 1) * batch_size] = True
    generated = fsdp.combine_rows(generated, mine)
    width = fsdp.all_reduce_max(width)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return build_rollout(prompt_ids, prompt_mask, generated[:, :width],
                         eos_token_ids(tokenizer, lm), pad, tokenizer)


# ---------------------------------------------------------------- the run


def train_ppo(policy_dir: Path, rows: Sequence[dict], cfg: PPOConfig, seed: int, out_dir: Path,
              *, reward: str = "reward_model", reward_model_dir: Path | None = None,
              log: logging.Logger = _log, progress: Callable[..., None] = lambda *a: None,
              stop_after: int | None = None, device: torch.device | None = None,
              loader_skipped: dict | None = None) -> dict:
    """Run PPO from ``policy_dir`` on prompt ``rows`` (``{"prompt": messages, "reference":
    str | None}``); returns the summary also written to ``train_summary.json``, with the prompt
    loader's skip counts (``loader_skipped``) beside the ones made here."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fsdp.init_from_env()
    device = device or device_for_training()
    run = set_up(policy_dir, rows, cfg, seed, out_dir, reward, reward_model_dir, device, log)
    policy, policy_lm, reference, value_model = run.policy, run.policy_lm, run.reference, \
        run.value_model
    items, batches, scorer, start, vllm = run.items, run.batches, run.scorer, run.start, run.vllm
    total = len(batches)
    metrics = MetricsLog(out_dir / "metrics.jsonl", resume_step=start)
    last: dict = {}
    try:
        for iteration in range(start, total):
            prompts: list[PromptItem] = [items[i] for i in batches[iteration]]
            rollout_seed = derive_seed(seed, "rollout", iteration)
            began = time.perf_counter()
            if vllm is not None:
                rollout = vllm.generate(policy_lm, prompts, temperature=cfg.temperature,
                                        max_new_tokens=cfg.max_response_length, seed=rollout_seed,
                                        top_k=cfg.top_k)
            else:
                rollout = _generate(policy, policy_lm, run.tokenizer, prompts, cfg, rollout_seed)
            generation_seconds = time.perf_counter() - began
            began = time.perf_counter()
            scores = scorer(prompts, rollout.texts).float()
            stats = _train_on_rollout(policy, reference, value_model, run.optimizers,
                                      run.schedulers, rollout, scores, [p.index for p in prompts],
                                      cfg, device, seed, iteration)
            training_seconds = time.perf_counter() - began
            response_tokens = int(rollout.response_mask.sum())
            last = {"step": iteration + 1, **stats, "prompts": len(prompts),
                    "response_tokens": response_tokens,
                    "generation_seconds": round(generation_seconds, 4),
                    "training_seconds": round(training_seconds, 4),
                    "rollout_tokens_per_second": round(response_tokens / generation_seconds, 2)}
            metrics.write(last)
            progress(iteration + 1, total, "ppo")
            stop = stop_agreed()
            if iteration + 1 < total and (stop or (iteration + 1) % cfg.save_every_steps == 0):
                save_checkpoint(out_dir / "checkpoints", iteration + 1, policy, value_model,
                                *run.optimizers, run.schedulers, {"total": total})
                if stop:
                    raise Stopped(iteration + 1, "iteration")
            if stop_after is not None and iteration + 1 >= stop_after:
                raise StopRequested(f"stopped after iteration {iteration + 1}")
    finally:
        if vllm is not None:  # the engine's memory goes back when the step ends, however
            vllm.close()
    fsdp.save_pretrained(policy, policy_lm, run.tokenizer, out_dir / "model",
                         fsdp.save_dtype(device))
    summary = {"iterations": total, "resumed_from": start, "prompts": len(items),
               "prompts_dropped": dict(run.skipped),
               "prompts_skipped_by_loader": dict(loader_skipped or {}), "reward": reward,
               "value_init": run.value_from, "generator": cfg.rollout_engine,
               "world_size": fsdp.world_size(), "last": last,
               # each process's share of every model (its shards), by rank
               "held_parameters": {name: fsdp.held_parameters(module) for name, module in (
                   ("policy", policy), ("reference", reference), ("value", value_model),
                   *([("reward_model", scorer.module)] if hasattr(scorer, "module") else []))}}
    if fsdp.is_main_process():
        atomic_write_json(out_dir / "train_summary.json", summary)
    return summary


def run_step(ctx) -> None:
    """The ``train_ppo`` step (``ablate.spec.steps.PPOStep``): the ``reward_model`` input, or a
    programmatic ``reward``, a reward function's import path (``module:function``,
    ``ablate.train.programmatic``)."""
    from ablate.data import load_prompts
    from ablate.models import resolve_model

    step = ctx.config
    reward = step.reward or "reward_model"
    # Fail before loading three models and the prompts when the reward cannot be had.
    if reward == "reward_model" and "reward_model" not in ctx.inputs:
        raise TrainingError("train_ppo step has neither a `reward_model` input nor a programmatic "
                            "`reward` in its config (a reward function's import path, "
                            "'module:function')")
    if reward != "reward_model":
        programmatic_reward(reward)
    reward_model_dir = ctx.input_model_dir("reward_model") if "reward_model" in ctx.inputs \
        else None
    loaded = load_prompts(step.prompts)
    if loaded.skipped:
        ctx.log.info("prompt set %s: %d prompts kept; skipped by the loader: %s", loaded.name,
                     len(loaded), loaded.skipped)
    train_ppo(resolve_model(step.model), loaded.rows, step.algorithm, step.seed, ctx.out_dir,
              reward=reward, reward_model_dir=reward_model_dir, log=ctx.log,
              progress=ctx.progress, loader_skipped=loaded.skipped)
