"""Our DPO and reward-model losses and gradients equal TRL's on the same model and batch.

TRL is a test-only dependency: these tests build TRL's trainers, push a batch of our tokenised
pairs through their collators and ``compute_loss``, and compare loss and gradient with ours.
"""

import copy

import pytest
import torch

trl = pytest.importorskip("trl")

from ablate.train.collate import collate_pairs
from ablate.train.common import tokenize_pairs  # noqa: E402
from ablate.train.logps import CompletionLogps
from ablate.train.losses import bradley_terry_loss, preference_loss  # noqa: E402
from ablate.generate.reward_model import LastTokenReward, load_reward_model  # noqa: E402
from train_helpers import arithmetic_rows  # noqa: E402


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


def grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _dataset(rows):
    from datasets import Dataset

    return Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])


@pytest.mark.slow  # ~20 s: TRL's trainer set-up
def test_dpo_loss_and_gradient_match_trl(tmp_path, tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    rows = arithmetic_rows(6)
    pairs, _ = tokenize_pairs(rows, tokenizer, 256, 128)
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    # a reference that differs from the policy, so the rewards are not all zero
    reference = copy.deepcopy(policy)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.01 * torch.randn_like(p))
    theirs = copy.deepcopy(policy)

    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, bf16=False, beta=0.1,
                         report_to=[], gradient_checkpointing=False, max_length=None,
                         loss_type=["sigmoid"])
    trainer = trl.DPOTrainer(model=theirs, ref_model=copy.deepcopy(reference), args=args,
                             train_dataset=_dataset(rows), processing_class=tokenizer)
    batch = trainer.data_collator([{"prompt_ids": list(p.prompt_ids),
                                    "chosen_ids": list(p.chosen_ids),
                                    "rejected_ids": list(p.rejected_ids)} for p in pairs])
    trainer.model.train()
    their_loss = trainer.compute_loss(trainer.model, batch)
    their_loss.backward()

    ours = CompletionLogps(policy)
    ours_batch = collate_pairs(pairs, tokenizer.pad_token_id)
    with torch.no_grad():
        ref = CompletionLogps(reference)(ours_batch.input_ids, ours_batch.attention_mask,
                                         ours_batch.scored)
    logps = ours(ours_batch.input_ids, ours_batch.attention_mask, ours_batch.scored)
    n = len(pairs)
    losses, _, _ = preference_loss("sigmoid", logps[:n], logps[n:], ref[:n], ref[n:], beta=0.1)
    our_loss = losses.mean()
    our_loss.backward()

    assert abs(our_loss.item() - their_loss.item()) / abs(their_loss.item()) < 1e-4
    assert abs(our_loss.item() - 0.6931) > 1e-3  # the reference really differs
    assert rel_err(grads(policy), grads(trainer.model)) < 1e-4


@pytest.mark.parametrize("with_margin", [False, True])
def test_reward_loss_and_gradient_match_trl(tmp_path, tiny_model_dir, tokenizer, with_margin):
    rows = arithmetic_rows(6)
    pairs, _ = tokenize_pairs(rows, tokenizer, 256, 256, drop_truncated=True)
    torch.manual_seed(0)
    model, _ = load_reward_model(tiny_model_dir)
    theirs = copy.deepcopy(model)
    args = trl.RewardConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, bf16=False,
                            report_to=[], gradient_checkpointing=False, max_length=None)
    trainer = trl.RewardTrainer(model=theirs, args=args, train_dataset=_dataset(rows),
                                processing_class=tokenizer)
    examples = [{"chosen_ids": list(p.prompt_ids + p.chosen_ids),
                 "rejected_ids": list(p.prompt_ids + p.rejected_ids)} for p in pairs]
    if with_margin:
        for example, pair in zip(examples, pairs):
            example["margin"] = pair.margin
    batch = trainer.data_collator(examples)
    trainer.model.train()
    their_loss = trainer.compute_loss(trainer.model, batch)
    their_loss.backward()

    ours_batch = collate_pairs(pairs, model.config.pad_token_id)
    rewards = LastTokenReward(model)(ours_batch.input_ids, ours_batch.attention_mask)
    n = len(pairs)
    our_loss = bradley_terry_loss(rewards[:n], rewards[n:],
                                  ours_batch.margins if with_margin else None).mean()
    our_loss.backward()
    assert abs(our_loss.item() - their_loss.item()) / abs(their_loss.item()) < 1e-4
    assert rel_err(grads(model), grads(trainer.model)) < 1e-4
