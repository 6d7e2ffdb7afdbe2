"""DPO and its variants (cDPO, IPO, length-normalised DPO, SimPO) on preference pairs.

Chosen and rejected completions go through the policy in one forward, by default with each pair's
prompt run once for both (``shared_prompt``: one row per pair, prompt + chosen + rejected, exact up
to float rounding; ``collate.SharedPromptBatch``), else as two concatenated sequences; the reference
log-probs are computed once, before training, by the initial policy in a no-grad pass and cached
under ``<cache>/ref_logps`` keyed by the model, the data and the tokenizer (the token ids), so no
reference model is held in memory while training (``ref_logps: online`` keeps a frozen copy
instead).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

import torch

from ablate.spec.schema import DPOConfig
from ablate.store import atomic_write_json
from ablate.train import fsdp
from ablate.train.collate import collate, on_device, shared_prompt_usable, width_multiple
from ablate.train.common import (
    NoTrainingData, TokenizedPair, compile_regions, device_for_training, disable_dropout,
    forward_context, model_identity, pairs_digest, split_heldout, tokenize_pairs,
)
from ablate.train.logps import CompletionLogps
from ablate.train.loop import LoopConfig, train_loop
from ablate.train.losses import NEEDS_REFERENCE, preference_loss, preference_metrics
from ablate.train.precision import cast_parameters, master_weights

_log = logging.getLogger("ablate.train.dpo")


def _no_progress(*args, **kwargs) -> None:
    return None


@torch.no_grad()
def sequence_logps(module: CompletionLogps, pairs: Sequence[TokenizedPair], batch_size: int,
                   pad_token_id: int, device: torch.device, shared_prompt: bool = False,
                   pad_to: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs of every pair's chosen and rejected answer, in ``pairs`` order,
    batched by length in the layout that runs (a shared-prompt row holds both answers), each
    batch's width rounded up to a multiple of ``pad_to``.
    Processes share the pairs between them and sum the results."""
    order = sorted(range(len(pairs)), key=lambda i: (pairs[i].layout_length(shared_prompt), i))
    mine = order[fsdp.rank()::fsdp.world_size()]
    n_batches = math.ceil(math.ceil(len(pairs) / fsdp.world_size()) / batch_size)
    was_training = module.training
    module.eval()
    scored: list[int] = []
    outputs: list[torch.Tensor] = []  # stay on the device until the end: one transfer
    for b in range(n_batches):
        group = mine[b * batch_size:(b + 1) * batch_size]
        batch = collate([pairs[i] for i in (group or order[:1])], pad_token_id,
                        shared_prompt, pad_to).to(device)
        logps = module.batch_logps(batch)
        if group:
            scored += group
            outputs.append(logps.view(2, -1)[:, :len(group)])
    module.train(was_training)
    fsdp.reshard(module)
    chosen = torch.zeros(len(pairs), dtype=torch.float64)
    rejected = torch.zeros(len(pairs), dtype=torch.float64)
    if outputs:
        both = torch.cat(outputs, dim=1).double().cpu()
        chosen[scored], rejected[scored] = both[0], both[1]
    return fsdp.all_reduce_sum(chosen).float(), fsdp.all_reduce_sum(rejected).float()


def _cached_reference(module, pairs, cfg: DPOConfig, pad_token_id, device, model_dir: Path,
                      cache_dir: Path, log, shared_prompt: bool = False, pad_to: int = 1
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    from ablate.spec.plan import config_hash

    # the device and precision too: fp32 on a CPU, bf16 autocast or bf16 weights on a GPU give
    # log-probs that differ by rounding, and the policy must start from its own reference
    identity = {"model": model_identity(model_dir), "pairs": pairs_digest(pairs),
                "compute": f"{torch.device(device).type}/{cfg.precision}"}
    key = config_hash(identity, 24)
    path = Path(cache_dir) / "ref_logps" / f"{key}.pt"
    if path.is_file():
        cached = torch.load(path, weights_only=True)
        log.info("reference log-probs from the cache (%s)", path)
        return cached["chosen"], cached["rejected"]
    started = time.perf_counter()
    chosen, rejected = sequence_logps(module, pairs, cfg.micro_batch_size * 2, pad_token_id,
                                      device, shared_prompt, pad_to)
    log.info("reference log-probs of %d pairs in %.1f s", len(pairs),
             time.perf_counter() - started)
    if fsdp.is_main_process():
        # a temp name of its own: DPO runs on the same model and pairs share this entry, and on
        # SLURM they can write it at the same time
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=path.parent)
        os.close(handle)
        torch.save({"chosen": chosen, "rejected": rejected}, tmp_name)
        os.replace(tmp_name, path)
    return chosen, rejected


def _heldout_metrics(module, pairs, ref_chosen, ref_rejected, cfg: DPOConfig, pad_token_id,
                     device, shared_prompt: bool = False, pad_to: int = 1) -> dict | None:
    if not pairs:
        return None
    chosen, rejected = sequence_logps(module, pairs, cfg.micro_batch_size * 2, pad_token_id,
                                      device, shared_prompt, pad_to)
    lengths_c = torch.tensor([len(p.chosen_ids) for p in pairs])
    lengths_r = torch.tensor([len(p.rejected_ids) for p in pairs])
    losses, chosen_rewards, rejected_rewards = preference_loss(
        cfg.loss, chosen, rejected, ref_chosen, ref_rejected, beta=cfg.beta,
        label_smoothing=cfg.label_smoothing, simpo_gamma=cfg.simpo_gamma,
        chosen_lengths=lengths_c, rejected_lengths=lengths_r)
    metrics = preference_metrics(chosen_rewards, rejected_rewards)
    return {"n_pairs": len(pairs), "loss": losses.mean().item(),
            "reward_accuracy": metrics["rewards/accuracy"].item(),
            "reward_margin": metrics["rewards/margin"].item(),
            "logps_chosen": chosen.mean().item(), "logps_rejected": rejected.mean().item()}


def train_dpo(model_dir: Path, rows: Sequence[dict], cfg: DPOConfig, seed: int, out_dir: Path,
              cache_dir: Path, log=_log, progress=_no_progress, data_skipped: dict | None = None,
              stop_after_steps: int | None = None) -> dict:
    """Train ``model_dir``'s model on ``rows`` with ``cfg``; writes ``out_dir/model``,
    ``metrics.jsonl``, ``checkpoints/`` and ``train_summary.json``, and returns the summary."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir, model_dir = Path(out_dir), Path(model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fsdp.init_from_env()
    torch.manual_seed(seed)
    random.seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
        else tokenizer.eos_token_id
    pairs, skipped = tokenize_pairs(rows, tokenizer, cfg.max_length, cfg.max_prompt_length)
    skipped = Counter(data_skipped or {}) + skipped
    log.info("DPO (%s): %d usable pairs of %d rows; skipped by the data loader: %s; "
             "skipped here: %s", cfg.loss, len(pairs), len(rows), dict(data_skipped or {}) or "none",
             dict(skipped - Counter(data_skipped or {})) or "none")
    if not pairs:
        raise NoTrainingData(f"no usable preference pairs ({len(rows)} rows; skipped: "
                            f"{dict(skipped)})")
    train_pairs, heldout = split_heldout(pairs, cfg.eval_fraction, seed)
    all_pairs = train_pairs + heldout

    device = device_for_training()
    context = forward_context(device, cfg.precision, cfg.attention_kernel)  # fails fast
    model = fsdp.build_model(AutoModelForCausalLM, model_dir)
    model.config.use_cache = False
    if disable_dropout(model):
        log.info("DPO: dropout turned off (the reference log-probs are scored without it)")
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable()
    if cfg.compile_regions:
        log.info("DPO: %d regions compiled", compile_regions(model))
    policy = fsdp.shard(CompletionLogps(model, context=context), model, device,
                        cpu_offload=cfg.cpu_offload)
    masters = master_weights(model, cfg.precision)
    shared_prompt = shared_prompt_usable(model, cfg.shared_prompt, log, "DPO")
    pad_to = width_multiple(cfg.pad_multiple, device)

    needs_ref = NEEDS_REFERENCE[cfg.loss]
    ref_started, ref_cpu_started = time.perf_counter(), time.process_time()
    reference = None
    ref_chosen = ref_rejected = None
    held_ref = (None, None)
    if needs_ref and cfg.ref_logps == "precompute":
        ref_chosen, ref_rejected = _cached_reference(policy, all_pairs, cfg, pad_token_id, device,
                                                     model_dir, cache_dir, log, shared_prompt,
                                                     pad_to)
        held_ref = (ref_chosen[len(train_pairs):], ref_rejected[len(train_pairs):])
    elif needs_ref:  # a frozen copy scores each micro-batch as it comes
        frozen = fsdp.build_model(AutoModelForCausalLM, model_dir, fsdp.frozen_dtype(device))
        frozen.requires_grad_(False)
        if cfg.compile_regions:
            compile_regions(frozen)
        if masters is not None:
            cast_parameters(frozen, torch.bfloat16)
        reference = fsdp.shard(CompletionLogps(frozen, context=context), frozen, device,
                               cpu_offload=cfg.cpu_offload).eval()
        held_ref = sequence_logps(reference, heldout, cfg.micro_batch_size * 2, pad_token_id,
                                  device, shared_prompt, pad_to) if heldout else (None, None)
    ref_seconds = time.perf_counter() - ref_started
    ref_cpu_seconds = time.process_time() - ref_cpu_started
    n_train = len(train_pairs)

    if ref_chosen is not None:  # on the device once, indexed there step by step
        ref_on_device = torch.stack([ref_chosen, ref_rejected]).to(device)

    def reference_logps(group: list[int], batch) -> tuple[torch.Tensor, torch.Tensor]:
        if reference is None:
            both = ref_on_device[:, on_device(torch.tensor(group), device)]
            return both[0], both[1]
        with torch.no_grad():
            logps = reference.batch_logps(batch)
        fsdp.reshard(reference)
        return logps[:len(group)], logps[len(group):]

    before_path = out_dir / "heldout_before.json"
    if before_path.is_file():
        before = json.loads(before_path.read_text())
    else:
        before = _heldout_metrics(policy, heldout, *held_ref, cfg, pad_token_id, device,
                                  shared_prompt, pad_to)
        if fsdp.is_main_process():
            atomic_write_json(before_path, before)

    def micro_loss(group: list[int]):
        batch = collate([train_pairs[i] for i in group], pad_token_id, shared_prompt,
                        pad_to).to(device)
        logps = policy.batch_logps(batch)
        chosen, rejected = logps[:len(group)], logps[len(group):]
        ref_c, ref_r = reference_logps(group, batch) if needs_ref else (None, None)
        lengths = batch.completion_lengths
        losses, chosen_rewards, rejected_rewards = preference_loss(
            cfg.loss, chosen, rejected, ref_c, ref_r, beta=cfg.beta,
            label_smoothing=cfg.label_smoothing, simpo_gamma=cfg.simpo_gamma,
            chosen_lengths=lengths[:len(group)], rejected_lengths=lengths[len(group):])
        n = len(group)
        metrics = preference_metrics(chosen_rewards, rejected_rewards)
        # device tensors: the loop reads every step's figures in one transfer
        stats = {"loss": losses.detach().sum(), **{k: v * n for k, v in metrics.items()},
                 "logps/chosen": chosen.detach().sum(), "logps/rejected": rejected.detach().sum()}
        return losses.sum(), stats

    loop_cfg = LoopConfig.of(cfg, seed)
    trained = train_loop(policy, train_pairs, loop_cfg, micro_loss, out_dir, log, progress, "dpo",
                         stop_after_steps=stop_after_steps,
                         lengths=[p.layout_length(shared_prompt) for p in train_pairs],
                         masters=masters)
    after = _heldout_metrics(policy, heldout, *held_ref, cfg, pad_token_id, device,
                             shared_prompt, pad_to)
    if masters is not None:  # the saved model gets the fp32 masters, not their bf16 rounding
        masters.restore_fp32(model)
    model.config.use_cache = True  # off for training; generation wants it
    fsdp.save_pretrained(policy, model, tokenizer, out_dir / "model", fsdp.save_dtype(device))
    summary = {"loss": cfg.loss, "rows": len(rows), "train_pairs": n_train,
               "heldout_pairs": len(heldout), "skipped": dict(skipped),
               "heldout_before": before, "heldout_after": after,
               "world_size": fsdp.world_size(), "device": str(device),
               "ref_logps_seconds": round(ref_seconds, 3),
               "ref_logps_cpu_seconds": round(ref_cpu_seconds, 3), **trained}
    if fsdp.is_main_process():
        atomic_write_json(out_dir / "train_summary.json", summary)
    log.info("DPO done: held-out accuracy %s -> %s, margin %s -> %s",
             *(None if m is None else round(m[k], 4) for k in ("reward_accuracy",)
               for m in (before, after)),
             *(None if m is None else round(m[k], 4) for k in ("reward_margin",)
               for m in (before, after)))
    return summary


def run_step(ctx) -> None:
    """The ``train_dpo`` step (``ablate.spec.steps.DPOStep``)."""
    from ablate.data import load_preferences
    from ablate.models import resolve_model

    step = ctx.config
    data = load_preferences(step.data, "train")
    train_dpo(resolve_model(step.model), data.rows, step.algorithm, step.seed, ctx.out_dir,
              ctx.cache_dir, log=ctx.log, progress=ctx.progress,
              data_skipped=getattr(data, "skipped", None))
