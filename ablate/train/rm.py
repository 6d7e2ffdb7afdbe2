"""Bradley-Terry reward models: a scalar head on the base LM, trained on preference pairs.

The checkpoint is a plain ``AutoModelForSequenceClassification`` folder with one label, so PPO can
load it as both the reward and the value model. The reward of a sequence is the head's output at
its last real token (the end of the assistant turn): ``LastTokenReward`` computes exactly that for
right-padded batches and ``RewardScorer`` applies it to chat prompts and responses.

Training and the held-out evaluation run each pair as one row by default (``shared_prompt``):
prompt, chosen, rejected, with a mask that hides the chosen answer from the rejected one, so the
prompt's forward and backward run once instead of twice. Rewards, loss and gradient equal the
plain two-sequence forward's up to float rounding (tests/train/test_rm_shared_prompt.py).
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections import Counter
from pathlib import Path
from typing import Callable, ContextManager, Sequence

import torch
from torch import Tensor, nn

from ablate.spec.schema import RMConfig
from ablate.store import atomic_write_json
from ablate.train import fsdp
from ablate.train.collate import (
    SequenceBatch, SharedPromptBatch, attention_implementation, collate, pad_sequences,
    padded_causal_mask, shared_prompt_mask, shared_prompt_usable, width_multiple,
)
from ablate.train.common import (
    TokenizedPair, TrainingError, as_messages, autocast, compile_regions, device_for_training,
    disable_dropout, forward_context, reward_model_ids, split_heldout, tokenize_pairs,
)
from ablate.train.loop import LoopConfig, train_loop
from ablate.train.losses import bradley_terry_loss
from ablate.train.precision import master_weights

_log = logging.getLogger("ablate.train.rm")


class LastTokenReward(nn.Module):
    """A sequence-classification model's scalar at each sequence's last attended token.

    transformers' own pooling looks for the last token that is not the pad token; with chat models
    whose pad token is their end-of-turn token that would score the token before the end of the
    turn, so pooling here follows the attention mask instead (batches are right-padded).
    """

    def __init__(self, model: nn.Module,
                 context: Callable[[], ContextManager] = contextlib.nullcontext):
        super().__init__()
        self.rm = model
        self.context = context  # precision and attention kernel: common.forward_context
        if not hasattr(model, "score"):
            raise TrainingError(f"{type(model).__name__} has no `score` head")

    def forward(self, input_ids: Tensor, attention_mask: Tensor,
                position_ids: Tensor | None = None, score_at: Tensor | None = None) -> Tensor:
        """Rewards [N] of right-padded rows under a 2-D ``attention_mask``; or, with a 4-D mask,
        ``position_ids`` and ``score_at`` [B, k] (a shared-prompt batch), the rewards [B, k] of
        the hidden states at those positions. One forward either way, so FSDP's root hooks run."""
        mask = attention_mask if score_at is not None else padded_causal_mask(
            attention_mask, attention_implementation(self.rm), next(self.rm.parameters()).dtype)
        with self.context():
            hidden = self.rm.base_model(input_ids=input_ids, attention_mask=mask,
                                        position_ids=position_ids, use_cache=False
                                        ).last_hidden_state
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            if score_at is None:
                pooled = hidden[rows, attention_mask.sum(dim=1) - 1]
            else:
                pooled = hidden[rows[:, None].expand_as(score_at), score_at]
            return self.rm.score(pooled).squeeze(-1).float()

    def batch_rewards(self, batch: SequenceBatch | SharedPromptBatch) -> tuple[Tensor, Tensor]:
        """Chosen and rejected rewards [B] of a batch in either layout (the shared-prompt one
        runs each prompt once)."""
        if isinstance(batch, SequenceBatch):
            rewards = self(batch.input_ids, batch.attention_mask)
            n = rewards.shape[0] // 2
            return rewards[:n], rewards[n:]
        model = self.rm
        mask = shared_prompt_mask(batch.segments, attention_implementation(model),
                                  next(model.parameters()).dtype)
        rewards = self(batch.input_ids, mask, batch.position_ids,
                       torch.stack([batch.chosen_last, batch.rejected_last], dim=1))
        return rewards[:, 0], rewards[:, 1]


def load_reward_model(model_dir: Path, dtype=torch.float32):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1,
                                                               dtype=dtype)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
            else tokenizer.eos_token_id
    return model, tokenizer


@torch.no_grad()
def pair_rewards(module: LastTokenReward, pairs: Sequence[TokenizedPair], batch_size: int,
                 pad_token_id: int, device, shared_prompt: bool = False,
                 pad_to: int = 1) -> tuple[Tensor, Tensor]:
    """Rewards of each pair's chosen and rejected answer (single process or every rank alike);
    ``shared_prompt`` runs each pair as one prompt-once row (same figures up to rounding).
    Batched by length in the layout that runs, each batch's width rounded up to a multiple of
    ``pad_to``."""
    order = sorted(range(len(pairs)), key=lambda i: (pairs[i].layout_length(shared_prompt), i))
    was_training = module.training
    module.eval()
    outputs: list[Tensor] = []  # stay on the device until the end: one transfer
    for start in range(0, len(order), batch_size):
        group = order[start:start + batch_size]
        batch = collate([pairs[i] for i in group], pad_token_id, shared_prompt, pad_to).to(device)
        outputs.append(torch.stack(module.batch_rewards(batch)))
    module.train(was_training)
    fsdp.reshard(module)
    chosen = torch.zeros(len(pairs))
    rejected = torch.zeros(len(pairs))
    if outputs:
        both = torch.cat(outputs, dim=1).float().cpu()
        chosen[order], rejected[order] = both[0], both[1]
    return chosen, rejected


def train_rm(model_dir: Path, rows: Sequence[dict], cfg: RMConfig, seed: int, out_dir: Path,
             log=_log, progress=lambda *a, **k: None, data_skipped: dict | None = None,
             stop_after_steps: int | None = None) -> dict:
    """Train a reward model on ``rows``; writes ``out_dir/model``, ``metrics.jsonl``,
    ``checkpoints/`` and ``result.json`` (held-out pair accuracy), and returns the result."""
    out_dir, model_dir = Path(out_dir), Path(model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fsdp.init_from_env()
    torch.manual_seed(seed)
    random.seed(seed)
    model, tokenizer = load_reward_model(model_dir)
    if disable_dropout(model):
        log.info("RM: dropout turned off (held-out rewards are scored without it)")
    pad_token_id = model.config.pad_token_id
    # The paper's RM recipe drops pairs that do not fit rather than truncating them.
    pairs, skipped = tokenize_pairs(rows, tokenizer, cfg.max_length, cfg.max_length,
                                    drop_truncated=True)
    skipped = Counter(data_skipped or {}) + skipped
    log.info("RM: %d usable pairs of %d rows; skipped by the data loader: %s; skipped here: %s",
             len(pairs), len(rows), dict(data_skipped or {}) or "none",
             dict(skipped - Counter(data_skipped or {})) or "none")
    if not pairs:
        raise TrainingError(f"no usable preference pairs ({len(rows)} rows; skipped: "
                            f"{dict(skipped)})")
    if cfg.margin and any(p.margin is None for p in pairs):
        missing = [p.index for p in pairs if p.margin is None][:5]
        raise TrainingError(f"margin: true needs a 'margin' on every row; rows {missing} have "
                            "none")
    train_pairs, heldout = split_heldout(pairs, cfg.eval_fraction, seed)
    device = device_for_training()
    context = forward_context(device, cfg.precision, cfg.attention_kernel)  # fails fast
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.compile_regions:
        log.info("RM: %d regions compiled", compile_regions(model))
    scorer = fsdp.shard(LastTokenReward(model, context), model, device)
    masters = master_weights(model, cfg.precision)
    shared_prompt = shared_prompt_usable(model, cfg.shared_prompt, log, "RM")

    def heldout_accuracy() -> float | None:
        if not heldout:
            return None
        chosen, rejected = pair_rewards(scorer, heldout, cfg.micro_batch_size * 2, pad_token_id,
                                        device, shared_prompt, pad_to)
        return (chosen > rejected).float().mean().item()

    pad_to = width_multiple(cfg.pad_multiple, device)
    before = heldout_accuracy()

    def micro_loss(group: list[int]):
        batch = collate([train_pairs[i] for i in group], pad_token_id, shared_prompt,
                        pad_to).to(device)
        chosen, rejected = scorer.batch_rewards(batch)
        losses = bradley_terry_loss(chosen, rejected, batch.margins if cfg.margin else None)
        # device tensors: the loop reads every step's figures in one transfer
        stats = {"loss": losses.detach().sum(), "accuracy": (chosen > rejected).float().sum(),
                 "rewards/chosen": chosen.detach().sum(),
                 "rewards/rejected": rejected.detach().sum()}
        return losses.sum(), stats

    loop_cfg = LoopConfig(lr=cfg.lr, warmup_ratio=cfg.warmup_ratio, epochs=cfg.epochs,
                          batch_size=cfg.batch_size, micro_batch_size=cfg.micro_batch_size,
                          weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
                          save_every_steps=cfg.save_every_steps, seed=seed,
                          length_grouping=cfg.length_grouping)
    trained = train_loop(scorer, train_pairs, loop_cfg, micro_loss, out_dir, log, progress, "rm",
                         stop_after_steps=stop_after_steps,
                         lengths=[p.layout_length(shared_prompt) for p in train_pairs],
                         masters=masters)
    after = heldout_accuracy()
    if masters is not None:  # the saved model gets the fp32 masters, not their bf16 rounding
        masters.restore_fp32(model)
    fsdp.save_pretrained(scorer, model, tokenizer, out_dir / "model")
    result = {"metric": "heldout_pair_accuracy", "value": after, "heldout_accuracy": after,
              "heldout_accuracy_before": before, "heldout_pairs": len(heldout),
              "train_pairs": len(train_pairs), "rows": len(rows), "skipped": dict(skipped),
              "world_size": fsdp.world_size(), **trained}
    if fsdp.is_main_process():
        atomic_write_json(out_dir / "result.json", result)
    log.info("RM done: held-out pair accuracy %s -> %s", before, after)
    return result


def run_step(ctx) -> None:
    """The ``train_rm`` step: config ``model``, ``data``, ``train`` (RMConfig), ``seed``."""
    from ablate.data import load_preferences
    from ablate.models import resolve_model

    config = ctx.config
    cfg = RMConfig.model_validate(config["train"])
    data = load_preferences(config["data"], "train")
    train_rm(resolve_model(config["model"]), data.rows, cfg, int(config.get("seed", 1)),
             ctx.out_dir, log=ctx.log, progress=ctx.progress,
             data_skipped=getattr(data, "skipped", None))


class RewardScorer:
    """Score chat responses with a trained reward model (best-of-N, PPO, RewardBench)."""

    def __init__(self, model_dir: Path | str, device: str | torch.device | None = None,
                 batch_size: int = 8, max_length: int | None = None):
        self.device = torch.device(device) if device else \
            torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model, self.tokenizer = load_reward_model(Path(model_dir))
        self.module = LastTokenReward(model).to(self.device).eval()
        self.pad_token_id = model.config.pad_token_id
        self.batch_size = batch_size
        self.max_length = max_length or getattr(model.config, "max_position_embeddings", 4096)

    def _tokens(self, prompt: list[dict] | str, response: str) -> list[int]:
        prompt_messages = as_messages(prompt, "user")
        if prompt_messages is None:
            raise ValueError(f"cannot score a response to an empty prompt: {prompt!r}")
        return reward_model_ids(self.tokenizer, prompt_messages, response, self.max_length)

    @torch.no_grad()
    def score(self, prompts: list[list[dict]], responses: list[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        sequences = [self._tokens(p, r) for p, r in zip(prompts, responses)]
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        scores = [0.0] * len(sequences)
        for start in range(0, len(order), self.batch_size):
            group = order[start:start + self.batch_size]
            ids, mask = pad_sequences([sequences[i] for i in group], self.pad_token_id)
            with autocast(self.device):
                rewards = self.module(ids.to(self.device), mask.to(self.device)).cpu().tolist()
            for i, reward in zip(group, rewards):
                scores[i] = float(reward)
        return scores
