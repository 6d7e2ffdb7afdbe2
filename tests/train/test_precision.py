"""``precision: bf16_weights``: bf16 weights with fp32 masters that the optimiser steps."""

import json

import pytest
import torch

from ablate.spec.schema import DPOConfig, RMConfig
from ablate.train import fsdp, precision
from ablate.train.common import TrainingError
from ablate.train.dpo import train_dpo
from ablate.train.loop import StopRequested
from ablate.train.precision import MasterWeights, master_weights
from ablate.train.rm import train_rm
from train_helpers import arithmetic_rows, assert_same_weights, load_weights

FAST = dict(lr=1e-3, warmup_ratio=0.0, epochs=1, batch_size=4, micro_batch_size=2,
            max_length=128, max_prompt_length=64, eval_fraction=0.2, precision="bf16_weights")


def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)


def test_gradients_accumulate_into_fp32_masters_and_copy_back_rounds(tiny_model_dir):
    model = tiny(tiny_model_dir)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    masters = MasterWeights(model)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    # buffers keep their precision (the rotary inverse frequencies) and tied weights stay tied
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert all(m.dtype == torch.float32 for m in masters.parameters())
    assert all(torch.equal(m, start[n]) for n, m in zip(masters.names, masters.masters))

    ids = torch.randint(0, 500, (2, 12))
    grads = []
    for _ in range(2):  # two micro-batches: their gradients add up in the masters
        model(input_ids=ids, labels=ids).loss.backward()
        assert all(p.grad is None for p in model.parameters())  # bf16 gradients freed
        grads.append([m.grad.clone() for m in masters.masters])
    for first, both in zip(*grads):
        torch.testing.assert_close(both, 2 * first, rtol=1e-6, atol=1e-8)

    with torch.no_grad():
        for m in masters.masters:
            m.add_(1e-4)  # an update far below bf16's resolution for most weights
    masters.copy_back()
    weights = dict(model.named_parameters())
    for name, master in zip(masters.names, masters.masters):
        assert torch.equal(weights[name], master.to(torch.bfloat16))
    masters.restore_fp32(model)
    for name, master in zip(masters.names, masters.masters):
        assert weights[name].dtype == torch.float32 and torch.equal(weights[name], master)


def test_several_processes_are_refused(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(fsdp, "world_size", lambda: 2)
    with pytest.raises(TrainingError, match="single process.*autocast"):
        master_weights(tiny(tiny_model_dir), "bf16_weights")
    assert precision.master_weights(tiny(tiny_model_dir), "autocast") is None


def test_dpo_trains_saves_fp32_masters_and_resumes_exactly(tmp_path, tiny_model_dir):
    rows = arithmetic_rows(30)
    cfg = DPOConfig(**{**FAST, "epochs": 1.5, "save_every_steps": 2})
    whole = train_dpo(tiny_model_dir, rows, cfg, 1, tmp_path / "whole", tmp_path / "cache")
    saved = load_weights(tmp_path / "whole" / "model")
    start = load_weights(tiny_model_dir)
    assert all(t.dtype == torch.float32 for t in saved.values())
    changed = max((saved[k] - start[k]).abs().max().item() for k in start)
    assert changed > 1e-4
    # the masters, not their bf16 rounding, were saved: most trained weights are not bf16 values
    weight = saved["model.layers.0.mlp.up_proj.weight"]
    assert (weight != weight.to(torch.bfloat16).float()).float().mean() > 0.5
    losses = [json.loads(line)["loss"] for line in (tmp_path / "whole" / "metrics.jsonl").open()]
    assert all(0.0 < loss < 5.0 for loss in losses)

    with pytest.raises(StopRequested):
        train_dpo(tiny_model_dir, rows, cfg, 1, tmp_path / "killed", tmp_path / "cache",
                  stop_after_steps=3)
    resumed = train_dpo(tiny_model_dir, rows, cfg, 1, tmp_path / "killed", tmp_path / "cache")
    assert resumed["resumed_from_step"] == 2 and resumed["steps"] == whole["steps"]
    assert_same_weights(tmp_path / "whole" / "model", tmp_path / "killed" / "model", atol=0)


def test_reference_log_probs_are_cached_per_precision(tmp_path, tiny_model_dir):
    rows = arithmetic_rows(10)
    for name in ("autocast", "bf16_weights"):
        train_dpo(tiny_model_dir, rows, DPOConfig(**{**FAST, "precision": name}), 1,
                  tmp_path / name, tmp_path / "cache")
    assert len(list((tmp_path / "cache" / "ref_logps").glob("*.pt"))) == 2


def test_reward_model_trains_and_saves_fp32(tmp_path, tiny_model_dir):
    cfg = RMConfig(lr=1e-3, warmup_ratio=0.0, epochs=1, batch_size=4, micro_batch_size=2,
                   max_length=128, eval_fraction=0.2, precision="bf16_weights")
    result = train_rm(tiny_model_dir, arithmetic_rows(20), cfg, 1, tmp_path / "rm")
    assert result["steps"] == 4
    saved = load_weights(tmp_path / "rm" / "model")
    assert all(t.dtype == torch.float32 for t in saved.values())
    assert "score.weight" in saved
