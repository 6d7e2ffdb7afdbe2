"""The reward model's shared-prompt forward (each pair's prompt run once, both answers against it)
gives the same rewards, loss and gradient as the plain two-sequence forward, and training with it
ends at the same weights."""

import copy

import pytest
import torch

from ablate.generate.reward_model import load_reward_model
from ablate.spec.schema import RMConfig
from ablate.train.collate import (
    CHOSEN, PADDING, PROMPT, REJECTED, collate_pairs, collate_shared_prompt, shared_prompt_mask,
)
from ablate.train.common import TokenizedPair, tokenize_pairs
from ablate.train.losses import bradley_terry_loss
from ablate.train.rm import PairRewards, pair_rewards, train_rm
from train_helpers import arithmetic_rows, assert_same_weights, load_weights

CPU = torch.device("cpu")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


def grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def mixed_rows() -> list[dict]:
    """Pairs whose prompts and both answers differ in length, with the longer answer sometimes
    the chosen one and sometimes the rejected one, and an identical first answer token."""
    rows = arithmetic_rows(5)
    rows.append({"prompt": [{"role": "user", "content": "Name a colour."}],
                 "chosen": [{"role": "assistant", "content": "Blue, like the sky on a clear "
                             "summer afternoon, or the sea far from the shore."}],
                 "rejected": [{"role": "assistant", "content": "Blue."}], "margin": 0.5})
    return rows


@pytest.fixture(scope="module")
def pairs(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    pairs, _ = tokenize_pairs(mixed_rows(), tokenizer, 256, 256, drop_truncated=True)
    prompt_lengths = {len(p.prompt_ids) for p in pairs}
    answer_lengths = {(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs}
    assert len(pairs) == 6 and len(prompt_lengths) > 2 and len(answer_lengths) > 2
    assert any(len(p.chosen_ids) > len(p.rejected_ids) for p in pairs)
    assert any(len(p.chosen_ids) < len(p.rejected_ids) for p in pairs)
    return pairs


def test_shared_prompt_layout(pairs):
    batch = collate_shared_prompt(pairs, pad_token_id=0)
    n_p, n_c, n_r = (len(pairs[0].prompt_ids), len(pairs[0].chosen_ids),
                     len(pairs[0].rejected_ids))
    row = batch.segments[0]
    assert (row[:n_p] == PROMPT).all() and (row[n_p:n_p + n_c] == CHOSEN).all()
    assert (row[n_p + n_c:n_p + n_c + n_r] == REJECTED).all()
    assert (row[n_p + n_c + n_r:] == PADDING).all()
    # rejected tokens take the positions right after the prompt, as in their own sequence
    assert batch.position_ids[0, n_p + n_c].item() == n_p
    assert batch.chosen_last[0].item() == n_p + n_c - 1
    assert batch.rejected_last[0].item() == n_p + n_c + n_r - 1
    assert batch.real_tokens == sum(p.real_tokens - len(p.prompt_ids) for p in pairs)
    mask = shared_prompt_mask(batch.segments, "sdpa", torch.float32)[0, 0]
    rejected_query = n_p + n_c
    assert mask[rejected_query, :n_p].all() and mask[rejected_query, rejected_query]
    assert not mask[rejected_query, n_p:n_p + n_c].any()
    assert mask.diagonal().all()  # no row is fully masked (padding queries included)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("with_margin", [False, True])
def test_shared_prompt_loss_and_gradient_equal_plain(tiny_model_dir, pairs, attention,
                                                     with_margin):
    torch.manual_seed(0)
    model, _ = load_reward_model(tiny_model_dir)
    model.set_attn_implementation(attention)
    other = copy.deepcopy(model)
    pad = model.config.pad_token_id

    plain = collate_pairs(pairs, pad)
    rewards = PairRewards(model)(plain.input_ids, plain.attention_mask)
    n = len(pairs)
    plain_chosen, plain_rejected = rewards[:n], rewards[n:]
    plain_loss = bradley_terry_loss(plain_chosen, plain_rejected,
                                    plain.margins if with_margin else None).sum()
    plain_loss.backward()

    shared = collate_shared_prompt(pairs, pad)
    chosen, rejected = PairRewards(other).batch_rewards(shared)
    shared_loss = bradley_terry_loss(chosen, rejected,
                                     shared.margins if with_margin else None).sum()
    shared_loss.backward()

    assert rel_err(chosen, plain_chosen) < 1e-5 and rel_err(rejected, plain_rejected) < 1e-5
    assert (chosen - rejected).abs().max() > 1e-3  # a random head that does tell answers apart
    assert abs(shared_loss.item() - plain_loss.item()) / abs(plain_loss.item()) < 1e-5
    assert rel_err(grads(other), grads(model)) < 1e-5


def test_batched_shared_prompt_equals_one_pair_at_a_time(tiny_model_dir, pairs):
    model, _ = load_reward_model(tiny_model_dir)
    scorer = PairRewards(model)
    pad = model.config.pad_token_id
    together = pair_rewards(scorer, pairs, len(pairs), pad, CPU, shared_prompt=True)
    alone = pair_rewards(scorer, pairs, 1, pad, CPU, shared_prompt=True)
    plain = pair_rewards(scorer, pairs, len(pairs), pad, CPU, shared_prompt=False)
    for a, b, c in zip(together, alone, plain):
        assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-5)


def lopsided_pairs() -> list[TokenizedPair]:
    """Two long-prompt pairs with one-token answers and two short-prompt pairs with long
    answers, in an order where the longer sequence (11, 12, 13, 14 tokens) interleaves them:
    batched two by two on that length, each batch would hold one short and one long
    shared-prompt row (12, 23, 14, 27 tokens)."""
    def pair(index: int, prompt: int, answer: int) -> TokenizedPair:
        return TokenizedPair(index, tuple(range(5, 5 + prompt)), tuple(range(40, 40 + answer)),
                             tuple(range(80, 80 + answer)))
    pairs = [pair(0, 10, 1), pair(1, 1, 11), pair(2, 12, 1), pair(3, 1, 13)]
    assert [p.layout_length(False) for p in pairs] == [11, 12, 13, 14]
    assert [p.layout_length(True) for p in pairs] == [12, 23, 14, 27]
    return pairs


def spy_on_collate(monkeypatch, module) -> list[tuple[list[int], int]]:
    """Record each batch that ``module``'s scoring pass collates: its pairs and its width."""
    seen = []
    real = module.collate

    def collate(group, *args):
        batch = real(group, *args)
        seen.append((sorted(p.index for p in group), batch.input_ids.shape[1]))
        return batch

    monkeypatch.setattr(module, "collate", collate)
    return seen


def test_scoring_pass_batches_rows_of_similar_length(tiny_model_dir, monkeypatch):
    from ablate.train import rm

    model, _ = load_reward_model(tiny_model_dir)
    scorer = PairRewards(model)
    pad = model.config.pad_token_id
    pairs = lopsided_pairs()
    alone = pair_rewards(scorer, pairs, 1, pad, CPU, shared_prompt=True)
    seen = spy_on_collate(monkeypatch, rm)
    together = pair_rewards(scorer, pairs, 2, pad, CPU, shared_prompt=True, pad_to=8)
    # short rows together, long rows together; widths rounded up to 8
    assert seen == [([0, 2], 16), ([1, 3], 32)]
    for a, b in zip(together, alone):
        assert torch.allclose(a, b, atol=1e-5)


def test_training_with_shared_prompt_ends_at_the_plain_weights(tmp_path, tiny_model_dir):
    cfg = dict(lr=2e-3, warmup_ratio=0.0, epochs=2, batch_size=4, micro_batch_size=2,
               max_length=128, eval_fraction=0.25)
    rows = arithmetic_rows(12) + mixed_rows()[-1:]
    results = {}
    for shared in (True, False):
        results[shared] = train_rm(tiny_model_dir, rows, RMConfig(**cfg, shared_prompt=shared),
                                   1, tmp_path / str(shared))
    assert results[True]["steps"] == results[False]["steps"] == 6
    assert results[True]["heldout_accuracy"] == results[False]["heldout_accuracy"]
    assert results[True]["last"]["loss"] == pytest.approx(results[False]["last"]["loss"],
                                                          rel=1e-4)
    # Adam divides by the gradient's running scale, so float rounding in a near-zero gradient
    # can move a weight by a small fraction of a step (lr 2e-3 here); training moved the body's
    # weights by far more than the tolerance.
    assert_same_weights(tmp_path / "True" / "model", tmp_path / "False" / "model", atol=1e-4)
    start = load_weights(tiny_model_dir)
    trained = load_weights(tmp_path / "True" / "model")
    assert max((trained[k] - start[k]).abs().max().item() for k in start) > 5e-3
