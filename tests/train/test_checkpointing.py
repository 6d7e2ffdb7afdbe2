"""Activation checkpointing recomputes each decoder layer's forward in backward instead of
keeping its activations: the same losses and weights, with and without, in every trainer."""

import json

import pytest
import torch

from ablate.spec.schema import DPOConfig, PPOConfig, RMConfig
from ablate.train.dpo import train_dpo
from ablate.train.ppo import train_ppo
from ablate.train.rm import train_rm
from test_ppo import UPPERCASE, letter_prompts
from train_helpers import arithmetic_rows, assert_same_weights


@pytest.fixture
def checkpointed(monkeypatch) -> list:
    """Counts the layer forwards transformers' checkpointing wraps (else a model left in eval
    mode, where it never engages, would pass these tests)."""
    import transformers.modeling_utils

    calls = []
    wrapped = transformers.modeling_utils.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return wrapped(*args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", counting)
    return calls


def metrics(folder, key):
    return [json.loads(line)[key] for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_dpo_and_rm_train_the_same_with_checkpointing(tmp_path, tiny_model_dir, checkpointed):
    rows = arithmetic_rows(8)
    for name, cfg, train in (
            ("dpo", DPOConfig(lr=1e-3, warmup_ratio=0.0, epochs=1, batch_size=4,
                              micro_batch_size=2, max_length=128, max_prompt_length=64),
             lambda cfg, out: train_dpo(tiny_model_dir, rows, cfg, 1, out, tmp_path / "cache")),
            ("rm", RMConfig(lr=1e-3, warmup_ratio=0.0, epochs=1, batch_size=4,
                            micro_batch_size=2, max_length=128),
             lambda cfg, out: train_rm(tiny_model_dir, rows, cfg, 1, out))):
        train(cfg, tmp_path / name / "plain")
        assert not checkpointed
        train(cfg.model_copy(update={"gradient_checkpointing": True}), tmp_path / name / "ckpt")
        assert checkpointed, name
        checkpointed.clear()
        assert metrics(tmp_path / name / "ckpt", "loss") == pytest.approx(
            metrics(tmp_path / name / "plain", "loss"), abs=1e-6), name
        assert_same_weights(tmp_path / name / "plain" / "model", tmp_path / name / "ckpt" /
                            "model", atol=1e-6)


def test_ppo_trains_the_same_with_checkpointing(tmp_path, tiny_model_dir, checkpointed):
    cfg = PPOConfig(lr=1e-3, prompts_per_batch=4, minibatch_size=2, micro_batch_size=2,
                    epochs=1, max_prompt_length=64, max_response_length=4, no_eos_penalty=0.0,
                    no_eos_penalty_mode="add", value_init="policy", warmup_epochs=0.0)
    rows = letter_prompts(4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_ppo(tiny_model_dir, rows, cfg, 1, tmp_path / "plain", reward=UPPERCASE)
        assert not checkpointed
        train_ppo(tiny_model_dir, rows, cfg.model_copy(update={"gradient_checkpointing": True}),
                  1, tmp_path / "ckpt", reward=UPPERCASE)
    finally:
        torch.set_num_threads(threads)
    assert checkpointed
    for key in ("policy_loss", "value_loss", "kl", "rm_score"):
        assert metrics(tmp_path / "ckpt", key) == pytest.approx(
            metrics(tmp_path / "plain", key), abs=1e-6), key
    assert metrics(tmp_path / "plain", "policy_grad_norm")[0] > 0
    assert_same_weights(tmp_path / "plain" / "model", tmp_path / "ckpt" / "model", atol=1e-6)
