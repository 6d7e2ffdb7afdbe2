"""DPO's shared-prompt forward (each pair's prompt run once, both answers scored against it) gives
the same completion log-probs, loss and gradient as the plain two-sequence forward, and training
with it ends at the same weights."""

import copy
import math

import pytest
import torch

from ablate.spec.schema import DPOConfig
from ablate.train.collate import collate_pairs, collate_shared_prompt
from ablate.train.common import TokenizedPair, tokenize_pairs
from ablate.train.logps import CompletionLogps
from ablate.train.dpo import train_dpo
from ablate.train.losses import preference_loss
from test_rm_shared_prompt import grads, lopsided_pairs, mixed_rows, rel_err, spy_on_collate
from train_helpers import arithmetic_rows, assert_same_weights


@pytest.fixture(scope="module")
def pairs(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    # max_prompt_length 40 truncates some prompts from the left, as long DPO pairs are
    pairs, _ = tokenize_pairs(mixed_rows(), tokenizer, 80, 40)
    assert len(pairs) == 6
    return pairs


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_shared_prompt_logps_loss_and_gradient_equal_plain(tiny_model_dir, pairs, attention):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    policy.set_attn_implementation(attention)
    other = copy.deepcopy(policy)
    reference = copy.deepcopy(policy)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.01 * torch.randn_like(p))
    pad = policy.config.pad_token_id
    n = len(pairs)

    plain = collate_pairs(pairs, pad)
    with torch.no_grad():
        ref = CompletionLogps(reference)(plain.input_ids, plain.attention_mask,
                                         plain.scored)
    plain_logps = CompletionLogps(policy)(plain.input_ids, plain.attention_mask,
                                          plain.scored)
    shared = collate_shared_prompt(pairs, pad)
    shared_logps = CompletionLogps(other).batch_logps(shared)
    assert torch.equal(shared.completion_lengths, plain.completion_lengths)
    assert rel_err(shared_logps, plain_logps) < 1e-5

    losses = []
    for logps in (plain_logps, shared_logps):
        loss, _, _ = preference_loss("sigmoid", logps[:n], logps[n:], ref[:n], ref[n:], beta=0.1)
        losses.append(loss.sum())
        losses[-1].backward()
    assert abs(losses[0].item() - 0.6931 * n) > 1e-3  # the reference really differs
    assert abs(losses[1].item() - losses[0].item()) / abs(losses[0].item()) < 1e-5
    assert rel_err(grads(other), grads(policy)) < 1e-5


def test_dpo_training_with_shared_prompt_ends_at_the_plain_weights(tmp_path, tiny_model_dir):
    rows = arithmetic_rows(12) + mixed_rows()[-1:]
    summaries = {}
    for shared in (True, False):
        cfg = DPOConfig(lr=1e-3, warmup_ratio=0.0, epochs=1, batch_size=4, micro_batch_size=2,
                        max_length=128, max_prompt_length=64, eval_fraction=0.25,
                        shared_prompt=shared)
        summaries[shared] = train_dpo(tiny_model_dir, rows, cfg, 1, tmp_path / str(shared),
                                      tmp_path / f"cache_{shared}")
    a, b = summaries[True], summaries[False]
    assert a["steps"] == b["steps"] == 3
    assert a["heldout_after"]["reward_margin"] == pytest.approx(
        b["heldout_after"]["reward_margin"], rel=1e-3, abs=1e-6)
    assert a["last"]["loss"] == pytest.approx(b["last"]["loss"], rel=1e-4)
    # Adam amplifies float rounding in near-zero gradients to a small fraction of a step (1e-3)
    assert_same_weights(tmp_path / "True" / "model", tmp_path / "False" / "model", atol=1e-4)


def test_reference_pass_batches_rows_of_similar_length(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    from ablate.train import dpo

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    module = CompletionLogps(model)
    pad = model.config.pad_token_id
    pairs = lopsided_pairs()
    cpu = torch.device("cpu")
    alone = dpo.sequence_logps(module, pairs, 1, pad, cpu, shared_prompt=True)
    seen = spy_on_collate(monkeypatch, dpo)
    together = dpo.sequence_logps(module, pairs, 2, pad, cpu, shared_prompt=True, pad_to=8)
    # short rows together, long rows together; widths rounded up to 8
    assert seen == [([0, 2], 16), ([1, 3], 32)]
    for a, b in zip(together, alone):
        assert rel_err(a, b) < 1e-5


def test_padding_positions_stay_within_the_real_ones():
    # a long pair beside a short one: the short row's padding must not reach past the longest
    # real position (a learned position table would overflow; dynamic RoPE would rescale)
    long, short = TokenizedPair(0, (5,) * 14, (6,) * 14, (7,) * 14), \
        TokenizedPair(1, (5,) * 3, (6,) * 2, (7,) * 2)
    batch = collate_shared_prompt([long, short], 2)
    real = batch.segments != -1
    assert batch.position_ids[real].max() == 27
    assert batch.position_ids.max() == 27
    assert batch.position_ids[1, 7:].tolist() == [4] * (batch.input_ids.shape[1] - 7)


def test_dpo_turns_dropout_off(tmp_path, tiny_model_dir):
    """With dropout on, the policy's first-step log-probs would differ from the reference ones
    (scored in eval mode) and the first loss would not be ln 2."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.config.attention_dropout = 0.3
    model.save_pretrained(tmp_path / "model")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "model")
    cfg = DPOConfig(batch_size=4, micro_batch_size=4, epochs=1, eval_fraction=0.0)
    train_dpo(tmp_path / "model", arithmetic_rows(4), cfg, 1, tmp_path / "run", tmp_path / "cache")
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    assert saved.config.attention_dropout == 0.3  # the saved model keeps its own settings
