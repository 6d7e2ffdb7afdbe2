"""PPO's set-up (``ablate.train.ppo`` runs the loop): the models it trains and scores with, each
as one FSDP root (``PolicyScores``, ``ValueScores``) loaded straight into shards; the prompts,
the scorer, the batches, the optimisers and their schedules, a checkpoint to resume from, and
the vLLM engine where rollouts use it, built in that order by ``set_up``. Checkpoints are saved
and loaded here, in one layout."""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ablate.spec.schema import PPOConfig
from ablate.store import atomic_write_json
from ablate.train import fsdp
from ablate.train.checkpoints import (
    latest_checkpoint, publish_checkpoint, resume_generators, save_rank_rng,
)
from ablate.train.common import (
    NoTrainingData, TrainingError, disable_dropout, make_optimizer, plan_batches,
    warmup_then_linear,
)
from ablate.train.logps import token_logps
from ablate.train.rollout import (
    PromptItem, Rollout, VLLMGenerator, make_scorer, tokenize_prompts, vllm_usable,
)


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


def load_models(policy_dir: Path, reward_model_dir: Path | None, cfg: PPOConfig, device, log):
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


def save_checkpoint(folder: Path, iteration: int, policy, value_model, policy_opt, value_opt,
                    schedulers, extra: dict) -> Path:
    """Both models, both optimisers, the schedules and the RNG under ``step_<iteration>``, written
    to a temp folder and renamed; only then are older checkpoints removed."""
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


def load_checkpoint(path: Path, policy, value_model, policy_opt, value_opt, schedulers,
                    seed: int) -> int:
    """Resume from ``path``, written by this or any other number of processes."""
    fsdp.load_train_state(path / "policy", policy, policy_opt)
    fsdp.load_train_state(path / "value", value_model, value_opt)
    schedule = torch.load(path / "rng.pt", weights_only=False)
    iteration = int(json.loads((path / "trainer_state.json").read_text())["step"])
    resume_generators(path, schedule, seed, iteration)
    for scheduler, state in zip(schedulers, schedule["schedulers"]):
        scheduler.load_state_dict(state)
    return iteration


# ---------------------------------------------------------------- the run's set-up


@dataclass
class PPORun:
    """What the loop works with, built before its first iteration."""

    tokenizer: object
    policy: nn.Module  # PolicyScores, sharded
    policy_lm: nn.Module  # the causal LM inside it (generation, the final save)
    reference: nn.Module
    value_model: nn.Module
    value_from: str  # what the value model was initialised from
    items: list[PromptItem]
    skipped: dict  # prompts dropped here, by reason
    scorer: Callable[[Sequence[PromptItem], list[str]], Tensor]
    batches: list[list[int]]  # each iteration's prompts (rows of ``items``)
    optimizers: tuple  # the policy's and the value model's
    schedulers: list
    start: int  # the iteration to start from (0, or a checkpoint's)
    vllm: VLLMGenerator | None  # the rollout engine, where it is vLLM


def set_up(policy_dir: Path, rows: Sequence[dict], cfg: PPOConfig, seed: int, out_dir: Path,
           reward: str, reward_model_dir: Path | None, device: torch.device,
           log: logging.Logger) -> PPORun:
    """The models, the tokenized prompts, the scorer, the batch plan, the optimisers and their
    schedules, restored from the latest checkpoint under ``out_dir/checkpoints`` if there is one,
    and the vLLM engine where ``rollout_engine`` asks for it."""
    torch.manual_seed(seed)  # a value head initialised from the policy is random
    random.seed(seed)
    tokenizer, (policy, policy_lm), reference, (value_model, _), value_from = \
        load_models(Path(policy_dir), None if reward_model_dir is None
                    else Path(reward_model_dir), cfg, device, log)
    items, skipped = tokenize_prompts(rows, tokenizer, cfg.max_prompt_length)
    if skipped:
        log.info("dropped %d of %d prompts: %s", sum(skipped.values()), len(rows), dict(skipped))
    if not items:
        raise NoTrainingData(f"no usable prompts: all {len(rows)} were dropped ({dict(skipped)})")
    scorer = make_scorer(reward, reward_model_dir, device, tokenizer, log,
                         fsdp.frozen_dtype(device), cfg.micro_batch_size)
    batches = plan_batches(len(items), cfg.prompts_per_batch, cfg.epochs, seed)
    policy_opt = make_optimizer(policy, cfg.lr, 0.0, cfg.adam_beta2)
    value_opt = make_optimizer(value_model, cfg.lr, 0.0, cfg.adam_beta2)
    schedulers = [warmup_then_linear(o, ppo_updates([len(b) for b in batches], cfg),
                                     ppo_warmup_updates(len(items), cfg), cfg.end_lr)
                  for o in (policy_opt, value_opt)]
    start = 0
    found = latest_checkpoint(Path(out_dir) / "checkpoints")
    if found is not None:
        start = load_checkpoint(found, policy, value_model, policy_opt, value_opt, schedulers,
                                seed)
        log.info("resuming PPO from %s (iteration %d of %d)", found, start, len(batches))
    if cfg.rollout_engine == "vllm" and not vllm_usable():
        raise TrainingError("rollout_engine vllm needs vLLM, which is not installed here: "
                            "make setup-vllm (README, Install); or set rollout_engine: "
                            "transformers to sample with transformers")
    if cfg.rollout_engine == "vllm" and fsdp.world_size() > 1:
        raise TrainingError("vLLM rollouts are not wired for a sharded (multi-process) PPO run: "
                            "set rollout_engine: transformers or run one process")
    vllm = VLLMGenerator(policy_dir, tokenizer, cfg.max_prompt_length
                         + cfg.max_response_length) if cfg.rollout_engine == "vllm" else None
    return PPORun(tokenizer, policy, policy_lm, reference, value_model, value_from, items,
                  skipped, scorer, batches, (policy_opt, value_opt), schedulers, start, vllm)
