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
"""

from __future__ import annotations

import logging
import math
import random
import shutil
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
from ablate.train.checkpoints import (
    MetricsLog, latest_checkpoint, publish_checkpoint, resume_generators, save_rank_rng,
)
from ablate.train.common import (
    NoTrainingData, TrainingError, device_for_training, disable_dropout, make_optimizer,
    plan_batches,
    warmup_then_linear,
)
from ablate.train.logps import token_logps
from ablate.train.loop import StopRequested, stop_agreed
from ablate.train.stop import Stopped
from ablate.train.losses import (
    clipped_policy_loss, clipped_value_loss, explained_variance, gae_advantages,
    kl_penalized_rewards, masked_mean, masked_whiten, no_eos_scores,
)
from ablate.train.rollout import (
    PromptItem, Rollout, VLLMGenerator, build_rollout, eos_token_ids, make_scorer,
    programmatic_reward, sample_token_ids, tokenize_prompts, vllm_usable,
)

_log = logging.getLogger("ablate.train.ppo")


# ---------------------------------------------------------------- per-token forwards


def _hidden(model: nn.Module, batch: Rollout) -> Tensor:
    """Final hidden states at the columns that predict the response tokens: [B, R, H]."""
    out = model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                           position_ids=batch.position_ids, use_cache=False)
    p, r = batch.prompt_width, batch.responses.shape[1]
    return out.last_hidden_state[:, p - 1:p + r - 1]


def response_logps(lm: nn.Module, batch: Rollout, temperature: float,
                   hidden: Tensor | None = None) -> Tensor:
    """log π(token) of each response token with the logits divided by ``temperature``: [B, R]."""
    hidden = _hidden(lm, batch) if hidden is None else hidden
    flat = hidden.reshape(-1, hidden.shape[-1]) / temperature
    logps = token_logps(flat, lm.get_output_embeddings().weight, batch.responses.reshape(-1))
    return logps.view(batch.responses.shape)


@torch.no_grad()
def response_entropy(lm: nn.Module, hidden: Tensor, temperature: float, chunk: int = 256
                     ) -> Tensor:
    """Entropy of the sampling distribution at each response position, from the hidden states
    ``_hidden`` returned: [B, R]."""
    flat = hidden.reshape(-1, hidden.shape[-1]).float() / temperature
    weight = lm.get_output_embeddings().weight.float()
    out = torch.empty(flat.shape[0], device=flat.device)
    for start in range(0, flat.shape[0], chunk):
        logits = flat[start:start + chunk] @ weight.T
        logp = torch.log_softmax(logits, dim=-1)
        out[start:start + chunk] = -(logp.exp() * logp).sum(-1)
    return out.view(hidden.shape[:2])


def response_values(value_model: nn.Module, batch: Rollout) -> Tensor:
    """The value head at every position that precedes a response token: [B, R]."""
    return value_model.score(_hidden(value_model, batch)).squeeze(-1).float()


class PolicyScores(nn.Module):
    """A causal LM as one module whose forward covers the embeddings, the decoder and the output
    layer, so that FSDP has one root to gather them for: log-probs of a rollout's response tokens
    (logits divided by ``logp_temperature``) and, when asked (no grad), the entropy of the
    sampling distribution (``temperature``) at each of them."""

    def __init__(self, lm: nn.Module, temperature: float, logp_temperature: float):
        super().__init__()
        self.lm = lm
        self.temperature = temperature
        self.logp_temperature = logp_temperature

    @classmethod
    def of(cls, lm: nn.Module, cfg: PPOConfig) -> "PolicyScores":
        """The policy or the reference as PPO scores it: log-probs from the unscaled logits
        unless ``scale_logps_by_temperature``, entropy at the sampling temperature."""
        return cls(lm, cfg.temperature,
                   cfg.temperature if cfg.scale_logps_by_temperature else 1.0)

    def forward(self, batch: Rollout, with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
        hidden = _hidden(self.lm, batch)
        logps = response_logps(self.lm, batch, self.logp_temperature, hidden)
        entropy = response_entropy(self.lm, hidden, self.temperature) if with_entropy else None
        # A fresh tensor, not a view: FSDP hooks backward onto a root's output, and warns that an
        # in-place op on a view would drop that hook.
        return logps.clone(), entropy


class ValueScores(nn.Module):
    """The value model as one FSDP root (decoder and ``score`` head): values at response tokens."""

    def __init__(self, value_model: nn.Module):
        super().__init__()
        self.model = value_model

    def forward(self, batch: Rollout) -> Tensor:
        return response_values(self.model, batch).clone()  # not a view (see PolicyScores)


# ---------------------------------------------------------------- models


def _load_models(policy_dir: Path, reward_model_dir: Path | None, cfg: PPOConfig, device, log):
    """The tokenizer and the policy, reference and value models, each sharded over the
    processes (loaded straight into shards: ``fsdp.build_model``), and where the value model
    comes from."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, \
        AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    value_from = cfg.value_init
    if value_from == "reward_model" and reward_model_dir is None:
        log.info("no reward model to initialise the value model from (programmatic reward): "
                 "initialising it from the policy instead")
        value_from = "policy"
    if value_from == "reward_model" and \
            AutoTokenizer.from_pretrained(reward_model_dir).get_vocab() != tokenizer.get_vocab():
        raise TrainingError(f"value_init=reward_model needs a reward model that shares the "
                            f"policy's tokenizer (the value model reads the policy's tokens); "
                            f"{reward_model_dir} has a different one: use value_init: policy")
    policy_lm = fsdp.build_model(AutoModelForCausalLM, policy_dir)
    reference_lm = fsdp.build_model(AutoModelForCausalLM, policy_dir, fsdp.frozen_dtype(device))
    reference_lm.requires_grad_(False)
    value_dir = reward_model_dir if value_from == "reward_model" else policy_dir
    value_hf = fsdp.build_model(AutoModelForSequenceClassification, value_dir, num_labels=1)
    if not hasattr(value_hf, "score"):
        raise TrainingError(f"{type(value_hf).__name__} has no `score` head to use as the "
                            "value head")
    reference_lm.eval()
    for model in (policy_lm, value_hf):
        # Training mode (checkpointing only engages in it) without dropout: old and new
        # log-probs must be comparable
        model.train()
        disable_dropout(model)
        if cfg.gradient_checkpointing:
            model.activation_checkpointing_enable()
    policy = fsdp.shard(PolicyScores.of(policy_lm, cfg), policy_lm, device,
                        cpu_offload=cfg.cpu_offload)
    reference = fsdp.shard(PolicyScores.of(reference_lm, cfg), reference_lm, device,
                           cpu_offload=cfg.cpu_offload)
    value_model = fsdp.shard(ValueScores(value_hf), value_hf, device, cpu_offload=cfg.cpu_offload)
    if value_from == "policy":
        # The policy has no value head and a new one is random: on SmolLM2 its values (mean 0.8
        # at the first iteration, explained variance -3 to -22) swamped a 0/1 reward in the first
        # advantages (perf/RESULTS.md, PPO third attempt). With the head at zero the first
        # advantages are the discounted returns, and the head learns from there.
        with torch.no_grad():
            for param in value_hf.score.parameters():
                param.zero_()
    return tokenizer, (policy, policy_lm), reference, (value_model, value_hf), value_from


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


# ---------------------------------------------------------------- schedule


def ppo_updates(batch_sizes: Sequence[int], cfg: PPOConfig) -> int:
    """Optimiser updates of batches of these many prompts: one per minibatch per PPO epoch."""
    return sum(cfg.ppo_epochs * math.ceil(n / min(cfg.minibatch_size, n)) for n in batch_sizes)


def ppo_warmup_updates(n_prompts: int, cfg: PPOConfig) -> int:
    """The warm-up's length: ``warmup_epochs`` of one pass's updates, rounded up (the paper's
    ``lr_warmup_grad_updates = ceil(warmup_epochs * grad_updates_per_epoch)``)."""
    one_pass = [min(cfg.prompts_per_batch, n_prompts - start)
                for start in range(0, n_prompts, cfg.prompts_per_batch)]
    return math.ceil(cfg.warmup_epochs * ppo_updates(one_pass, cfg))


# ---------------------------------------------------------------- checkpoints


def _save(folder: Path, iteration: int, policy, value_model, policy_opt, value_opt, schedulers,
          extra: dict) -> Path:
    """Both models, both optimisers, the schedules and the RNG under ``step_<iteration>``, written
    to a temp
    folder and renamed; only then are older checkpoints removed."""
    target, tmp = folder / f"step_{iteration}", folder / f".step_{iteration}.tmp"
    if fsdp.is_main_process():
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "policy").mkdir(parents=True)
        (tmp / "value").mkdir()
    fsdp.barrier()
    fsdp.save_train_state(tmp / "policy", policy, policy_opt)  # every process writes its shards
    fsdp.save_train_state(tmp / "value", value_model, value_opt)
    save_rank_rng(tmp)
    fsdp.barrier()  # every rank's file is in before the folder is published
    if fsdp.is_main_process():
        torch.save({"schedulers": [s.state_dict() for s in schedulers],
                    "world_size": fsdp.world_size()}, tmp / "rng.pt")
        atomic_write_json(tmp / "trainer_state.json", {"step": iteration, **extra})
        publish_checkpoint(tmp, target)
    fsdp.barrier()
    return target


def _load(path: Path, policy, value_model, policy_opt, value_opt, schedulers, seed: int) -> int:
    """Resume from ``path``, written by this or any other number of processes."""
    import json

    fsdp.load_train_state(path / "policy", policy, policy_opt)
    fsdp.load_train_state(path / "value", value_model, value_opt)
    schedule = torch.load(path / "rng.pt", weights_only=False)
    iteration = int(json.loads((path / "trainer_state.json").read_text())["step"])
    resume_generators(path, schedule, seed, iteration)
    for scheduler, state in zip(schedulers, schedule["schedulers"]):
        scheduler.load_state_dict(state)
    return iteration


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
    torch.manual_seed(seed)  # a value head initialised from the policy is random
    random.seed(seed)
    tokenizer, (policy, policy_lm), reference, (value_model, value_hf), value_from = \
        _load_models(Path(policy_dir), None if reward_model_dir is None
                     else Path(reward_model_dir), cfg, device, log)
    items, skipped = tokenize_prompts(rows, tokenizer, cfg.max_prompt_length)
    if skipped:
        log.info("dropped %d of %d prompts: %s", sum(skipped.values()), len(rows), dict(skipped))
    if not items:
        raise NoTrainingData(f"no usable prompts: all {len(rows)} were dropped ({dict(skipped)})")
    scorer = make_scorer(reward, reward_model_dir, device, tokenizer, log,
                         fsdp.frozen_dtype(device), cfg.micro_batch_size)
    batches = plan_batches(len(items), cfg.prompts_per_batch, cfg.epochs, seed)
    total = len(batches)
    policy_opt = make_optimizer(policy, cfg.lr, 0.0, cfg.adam_beta2)
    value_opt = make_optimizer(value_model, cfg.lr, 0.0, cfg.adam_beta2)
    schedulers = [warmup_then_linear(o, ppo_updates([len(b) for b in batches], cfg),
                                     ppo_warmup_updates(len(items), cfg), cfg.end_lr)
                  for o in (policy_opt, value_opt)]
    checkpoints = out_dir / "checkpoints"
    start = 0
    found = latest_checkpoint(checkpoints)
    if found is not None:
        start = _load(found, policy, value_model, policy_opt, value_opt, schedulers, seed)
        log.info("resuming PPO from %s (iteration %d of %d)", found, start, total)
    backend = cfg.rollout_engine
    if backend == "vllm" and not vllm_usable():
        raise TrainingError("rollout_engine vllm needs vLLM, which is not installed here: "
                            "make setup-vllm (README, Install); or set rollout_engine: "
                            "transformers to sample with transformers")
    if backend == "vllm" and fsdp.world_size() > 1:
        raise TrainingError("vLLM rollouts are not wired for a sharded (multi-process) PPO run: "
                            "set rollout_engine: transformers or run one process")
    vllm = VLLMGenerator(policy_dir, tokenizer, cfg.max_prompt_length
                         + cfg.max_response_length) if backend == "vllm" else None
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
                rollout = _generate(policy, policy_lm, tokenizer, prompts, cfg, rollout_seed)
            generation_seconds = time.perf_counter() - began
            began = time.perf_counter()
            scores = scorer(prompts, rollout.texts).float()
            stats = _train_on_rollout(policy, reference, value_model, (policy_opt, value_opt),
                                      schedulers, rollout, scores, [p.index for p in prompts], cfg,
                                      device, seed, iteration)
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
                _save(checkpoints, iteration + 1, policy, value_model, policy_opt, value_opt,
                      schedulers, {"total": total})
                if stop:
                    raise Stopped(iteration + 1, "iteration")
            if stop_after is not None and iteration + 1 >= stop_after:
                raise StopRequested(f"stopped after iteration {iteration + 1}")
    finally:
        if vllm is not None:  # the engine's memory goes back when the step ends, however
            vllm.close()
    fsdp.save_pretrained(policy, policy_lm, tokenizer, out_dir / "model", fsdp.save_dtype(device))
    summary = {"iterations": total, "resumed_from": start, "prompts": len(items),
               "prompts_dropped": dict(skipped),
               "prompts_skipped_by_loader": dict(loader_skipped or {}), "reward": reward, "value_init": value_from,
               "generator": backend, "world_size": fsdp.world_size(), "last": last,
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
