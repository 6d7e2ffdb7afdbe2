"""Bradley-Terry reward models: a scalar head on the base LM, trained on preference pairs.

The checkpoint is a plain ``AutoModelForSequenceClassification`` folder with one label, so PPO can
load it as both the reward and the value model. The reward of a sequence is the head's output at
its last real token (the end of the assistant turn): ``ablate.generate.reward_model`` computes
it (``LastTokenReward``) and scores chat responses with it (``RewardScorer``); ``PairRewards``
here reads it for batches of preference pairs.

Training and the held-out evaluation run each pair as one row by default (``shared_prompt``):
prompt, chosen, rejected, with a mask that hides the chosen answer from the rejected one, so the
prompt's forward and backward run once instead of twice. Rewards, loss and gradient equal the
plain two-sequence forward's up to float rounding (tests/train/test_rm_shared_prompt.py).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from ablate.generate.forward import attention_implementation
from ablate.generate.reward_model import LastTokenReward, load_reward_model
from ablate.spec.schema import RMConfig
from ablate.store import atomic_write_json
from ablate.store.result import RewardModelResult
from ablate.train import fsdp
from ablate.train.collate import (
    SequenceBatch, SharedPromptBatch, collate, shared_prompt_mask, shared_prompt_usable,
    width_multiple,
)
from ablate.train.common import (
    NoTrainingData, TokenizedPair, TrainingError, compile_regions, device_for_training,
    disable_dropout, forward_context, split_heldout, tokenize_pairs,
)
from ablate.train.loop import LoopConfig, train_loop
from ablate.train.losses import bradley_terry_loss
from ablate.train.precision import master_weights

_log = logging.getLogger("ablate.train.rm")


class PairRewards(LastTokenReward):
    """The reward model in training: the rewards of a batch of preference pairs."""

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


@torch.no_grad()
def pair_rewards(module: PairRewards, pairs: Sequence[TokenizedPair], batch_size: int,
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
    model, tokenizer = load_reward_model(model_dir, build=fsdp.build_model)
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
        raise NoTrainingData(f"no usable preference pairs ({len(rows)} rows; skipped: "
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
        model.activation_checkpointing_enable()
    if cfg.compile_regions:
        log.info("RM: %d regions compiled", compile_regions(model))
    scorer = fsdp.shard(PairRewards(model, context), model, device, cpu_offload=cfg.cpu_offload)
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

    loop_cfg = LoopConfig.of(cfg, seed)
    trained = train_loop(scorer, train_pairs, loop_cfg, micro_loss, out_dir, log, progress, "rm",
                         stop_after_steps=stop_after_steps,
                         lengths=[p.layout_length(shared_prompt) for p in train_pairs],
                         masters=masters)
    after = heldout_accuracy()
    if masters is not None:  # the saved model gets the fp32 masters, not their bf16 rounding
        masters.restore_fp32(model)
    fsdp.save_pretrained(scorer, model, tokenizer, out_dir / "model", fsdp.save_dtype(device))
    result = RewardModelResult(
        metric="heldout_pair_accuracy", value=after, unit="fraction", heldout_accuracy=after,
        heldout_accuracy_before=before, heldout_pairs=len(heldout), train_pairs=len(train_pairs),
        rows=len(rows), skipped=dict(skipped), world_size=fsdp.world_size(), **trained).to_json()
    if fsdp.is_main_process():
        atomic_write_json(out_dir / "result.json", result)
    log.info("RM done: held-out pair accuracy %s -> %s", before, after)
    return result


def run_step(ctx) -> None:
    """The ``train_rm`` step (``ablate.spec.steps.RMStep``)."""
    from ablate.data import load_preferences
    from ablate.models import resolve_model

    step = ctx.config
    data = load_preferences(step.data, "train")
    train_rm(resolve_model(step.model), data.rows, step.train, step.seed, ctx.out_dir,
             log=ctx.log, progress=ctx.progress, data_skipped=getattr(data, "skipped", None))

