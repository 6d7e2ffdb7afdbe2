"""Golden values of the paper's training mechanics, derived by hand from the formulas of its trainer
(hamishivi/EasyLM@dbf2212c1775b2762f7108d62c8c8b01b52ea4aa: EasyLM/models/llama/
llama_train_ppo.py, EasyLM/optimizers.py and the flags of docs/paper_notes/unpacking_dpo_and_ppo.md),
one test per mechanic; docs/protocol.md (Training) lists them beside ablate's."""

from __future__ import annotations

import json
import logging
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ablate.spec.schema import DPOConfig, PPOConfig, RMConfig
from ablate.train.common import TokenizedPair, split_heldout
from ablate.train.rollout import Rollout


def rollout(responses: list[list[int]], ended: list[bool]) -> Rollout:
    """Rows of one prompt token (id 1) and a response each, every response token real."""
    ids = torch.tensor(responses)
    batch = ids.shape[0]
    return Rollout(torch.cat([torch.ones(batch, 1, dtype=torch.long), ids], 1),
                   torch.ones(batch, 1 + ids.shape[1], dtype=torch.long), 1, ids,
                   torch.ones_like(ids), torch.tensor(ended), [""] * batch)


class Fixed(nn.Module):
    """A policy, reference or value model that returns given per-token numbers."""

    def __init__(self, values, logps: bool = True):
        super().__init__()
        self.values, self.logps = torch.tensor(values), logps

    def forward(self, batch, with_entropy: bool = False):
        out = self.values[:, :batch.responses.shape[1]]
        return (out, torch.zeros_like(out)) if self.logps else out


def test_ppo_rewards_advantages_and_returns_of_a_three_token_rollout():
    """β = 0.1, γ = 1, λ = 0.95 (the paper's). Row 0 ends with EOS (id 2): log π − log π_ref =
    [0, −1, 0] → rewards [0, 0.1, 2] (score 2 at the last token); V = [0.5, 1, 1.5]; GAE from the
    end: δ₂ = 2 − 1.5 = 0.5, A₂ = 0.5; δ₁ = 0.1 + 1.5 − 1 = 0.6, A₁ = 0.6 + 0.95·0.5 = 1.075;
    δ₀ = 1 − 0.5 = 0.5, A₀ = 0.5 + 0.95·1.075 = 1.52125; returns A + V. Row 1 never ends: its
    score 3 is replaced by −10 (``jnp.where(last == eos, reward, -10.0)``), V = 0 → A = [−9.025,
    −9.5, −10]. Advantages are whitened over the six tokens: mean −4.238125, unbiased variance
    33.530046, (A − mean)/√(var + 1e-6)."""
    from ablate.train.ppo import _score_rollout

    batch = rollout([[5, 6, 2], [5, 6, 7]], [True, False])
    policy = Fixed([[-1.0, -2.0, -1.0], [-1.0, -1.0, -1.0]])
    reference = Fixed([[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    values = Fixed([[0.5, 1.0, 1.5], [0.0, 0.0, 0.0]], logps=False)
    exp, stats = _score_rollout(policy, reference, values, batch, torch.tensor([2.0, 3.0]),
                                PPOConfig(beta=0.1), torch.device("cpu"))
    assert exp.returns.flatten().tolist() == pytest.approx([2.02125, 2.075, 2.0,
                                                            -9.025, -9.5, -10.0])
    assert exp.advantages.flatten().tolist() == pytest.approx(
        [0.994622, 0.917557, 0.818256, -0.826675, -0.908706, -0.995054], abs=1e-6)
    assert stats["score_with_penalty"] == pytest.approx((2 - 10) / 2)
    assert stats["kl"] == pytest.approx(-0.5)  # row sums −1 and 0


def test_a_response_without_eos_scores_the_penalty_instead_of_its_reward():
    from ablate.train.losses import no_eos_scores

    scores, ended = torch.tensor([2.0, 3.0, -4.0]), torch.tensor([True, False, False])
    assert no_eos_scores(scores, ended, -10.0, PPOConfig().no_eos_penalty_mode).tolist() == \
        [2.0, -10.0, -10.0]
    assert no_eos_scores(scores, ended, -10.0, "add").tolist() == [2.0, -7.0, -14.0]


class OutputLayer(nn.Module):
    """A causal LM whose last hidden state is [1, 0] everywhere and whose output embedding gives
    the logits [2, 0, 0]."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(2, 3, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))

    def base_model(self, input_ids, **_):
        hidden = torch.zeros(*input_ids.shape, 2)
        hidden[..., 0] = 1.0
        return SimpleNamespace(last_hidden_state=hidden)

    def get_output_embeddings(self):
        return self.head


def test_ppo_log_probs_come_from_the_unscaled_logits():
    """The paper's code samples at T = 0.7 but takes log_softmax of the logits as they are:
    log π(token 0) = 2 − ln(e² + 2) = −0.239545; at T = 0.7 it would be 2/0.7 − ln(e^(2/0.7) + 2)
    = −0.108734."""
    from ablate.train.ppo import PolicyScores

    batch = rollout([[0]], [False])
    logps, _ = PolicyScores.of(OutputLayer(), PPOConfig())(batch)
    assert logps.item() == pytest.approx(-0.239545, abs=1e-6)
    scaled, _ = PolicyScores.of(OutputLayer(), PPOConfig(scale_logps_by_temperature=True))(batch)
    assert scaled.item() == pytest.approx(-0.108734, abs=1e-6)


class Recorded(nn.Module):
    """A one-parameter policy (log π = θ − 1 per token) or value model (V = φ) that logs which
    rows it scores (response token 10 + row) and whether for experience or for the loss."""

    def __init__(self, calls: list, name: str, logps: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.calls, self.name, self.logps = calls, name, logps

    def forward(self, batch, with_entropy: bool = False):
        rows = tuple((batch.responses[:, 0] - 10).tolist())
        self.calls.append((self.name, "experience" if with_entropy or not self.logps and
                           not torch.is_grad_enabled() else "loss", rows))
        out = self.weight * torch.ones(batch.responses.shape)
        if not self.logps:
            return out
        return out - 1.0, torch.zeros(batch.responses.shape)


def test_ppo_scores_each_minibatch_in_order_just_before_its_update(monkeypatch):
    """At the paper's flags (ppo_epochs 1, minibatches of 64 of a 512-prompt batch) its code
    loops over the minibatches in rollout order and, in each, recomputes log-probs, values and
    whitened advantages before the one gradient step. Two minibatches of two rows, V = 0, no KL,
    scores [1, 2] and [10, 20] at the second token: A = [0.95·s, s] per row, whitened within
    each minibatch: [0.95, 1, 1.9, 2] has mean 1.4625 and unbiased variance 0.318958, so
    [−0.90745, −0.81892, 0.77466, 0.95172]; the second minibatch is the first times ten, so the
    same (over the whole batch they would differ)."""
    import ablate.train.ppo as ppo

    calls: list = []
    policy, value_model = Recorded(calls, "policy", True), Recorded(calls, "value", False)
    reference = Recorded(calls, "reference", True)
    seen = []
    real_loss = ppo.clipped_policy_loss
    monkeypatch.setattr(ppo, "clipped_policy_loss",
                        lambda *a: seen.append(a[2].flatten().tolist()) or real_loss(*a))
    optimizers = [torch.optim.AdamW(m.parameters(), lr=0.0) for m in (policy, value_model)]
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lambda k: 1.0) for o in optimizers]
    cfg = PPOConfig(prompts_per_batch=4, minibatch_size=2, micro_batch_size=2, beta=0.1)
    ppo._train_on_rollout(policy, reference, value_model, optimizers, schedulers,
                          rollout([[10 + r, 2] for r in range(4)], [True] * 4),
                          torch.tensor([1.0, 2.0, 10.0, 20.0]), [0, 1, 2, 3], cfg,
                          torch.device("cpu"), 1, 0)
    assert [c for c in calls if c[0] == "policy"] == [
        ("policy", "experience", (0, 1)), ("policy", "loss", (0, 1)),
        ("policy", "experience", (2, 3)), ("policy", "loss", (2, 3))]
    whitened = [-0.90745, -0.81892, 0.77466, 0.95172]
    assert seen == [pytest.approx(whitened, abs=1e-5)] * 2


def test_learning_rate_schedules_at_the_paper_flags(tmp_path):
    """optax's linear schedules as EasyLM joins them, counted from update 0: lr·k/W while
    k < W (0 at the first update), then from lr at update W linearly to end_lr at update T.
    DPO (lr 5e-7, warm-up 0.1, end 0) and RM (1e-5, 0.03, end 1e-6) over T = 10 updates: W =
    ⌈0.1·10⌉ = ⌈0.03·10⌉ = 1, so update k ≥ 1 gets lr + (end − lr)·(k − 1)/9; the last, k = 9:
    5e-7/9 and 1e-5 − 9e-6·8/9 = 2e-6. PPO (lr 1e-6, warmup_epochs 0.1, end_lr = lr): 1024
    prompts in batches of 512 and minibatches of 64 are 16 updates a pass, W = ⌈1.6⌉ = 2:
    0, 5e-7, then 1e-6 to the end."""
    from ablate.train.common import warmup_then_linear
    from ablate.train.loop import LoopConfig, train_loop
    from ablate.train.ppo import ppo_updates, ppo_warmup_updates

    pairs = [TokenizedPair(i, (1,), (2,), (3,)) for i in range(20)]

    def logged_lrs(cfg, name):
        weight = nn.Linear(1, 1)
        (tmp_path / name).mkdir()
        train_loop(weight, pairs, LoopConfig.of(cfg, 1),
                   lambda group: (weight(torch.ones(len(group), 1)).sum(), {}),
                   tmp_path / name, logging.getLogger("test"), lambda *a: None, name)
        return [json.loads(line)["lr"] for line in (tmp_path / name / "metrics.jsonl").open()]

    dpo = logged_lrs(DPOConfig(batch_size=2, epochs=1), "dpo")
    assert dpo[:2] == pytest.approx([0.0, 5e-7], abs=0) and dpo[-1] == pytest.approx(5e-7 / 9)
    rm = logged_lrs(RMConfig(batch_size=2), "rm")
    assert rm[:2] == pytest.approx([0.0, 1e-5], abs=0) and rm[-1] == pytest.approx(2e-6)

    cfg = PPOConfig()
    total, warmup = ppo_updates([512, 512], cfg), ppo_warmup_updates(1024, cfg)
    assert (total, warmup) == (16, 2)
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    schedule = warmup_then_linear(optimizer, total, warmup, cfg.end_lr)
    lrs = []
    for _ in range(total):
        lrs.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert lrs == pytest.approx([0.0, 5e-7] + [1e-6] * 14, abs=0)


def test_adamw_second_update_uses_beta2_095_and_eps_1e8():
    """optax.adamw(b1=0.9, b2=0.95, eps=1e-8), weight decay 0 (the paper's flags). Gradients 1
    then 2, lr 1: m̂₂ = (0.9·0.1 + 0.1·2)/(1 − 0.9²) = 1.526316, v̂₂ = (0.95·0.05 + 0.05·4)/
    (1 − 0.95²) = 2.538462, so the second update is 1.526316/√2.538462 = 0.957986 (β2 = 0.999
    would give 0.965182). A first gradient of 1e-8 moves a weight by lr·1e-8/(1e-8 + ε) = lr/2."""
    from ablate.train.common import make_optimizer

    for cfg in (DPOConfig(), RMConfig(), PPOConfig()):
        model = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            model.weight.zero_()
        optimizer = make_optimizer(model, 1.0, 0.0, cfg.adam_beta2)
        moves = []
        for grad in (1.0, 2.0):
            before = model.weight.item()
            model.weight.grad = torch.full_like(model.weight, grad)
            optimizer.step()
            moves.append(before - model.weight.item())
        assert moves == pytest.approx([1.0, 0.957986], abs=1e-6), type(cfg).__name__
        tiny = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            tiny.weight.zero_()
        optimizer = make_optimizer(tiny, 1.0, 0.0, cfg.adam_beta2)
        tiny.weight.grad = torch.full_like(tiny.weight, 1e-8)
        optimizer.step()
        assert -tiny.weight.item() == pytest.approx(0.5, rel=1e-5)


def test_recipes_train_on_every_pair_with_the_paper_batches():
    """DPO: 8 pairs × 4 accumulated, lr 5e-7 to 0, warm-up 0.1, 3 epochs; RM: 32 × 16, lr 1e-5
    to 1e-6, warm-up 0.03, one epoch; PPO: 512 prompts, minibatches of 64, one PPO epoch, lr 1e-6,
    KL 0.05, T 0.7, 1024 new tokens. Both pair recipes train on every pair."""
    dpo, rm, ppo = DPOConfig(), RMConfig(), PPOConfig()
    assert (dpo.batch_size, dpo.lr, dpo.end_lr, dpo.warmup_ratio, dpo.epochs) == \
        (8 * 4, 5e-7, 0.0, 0.1, 3)
    assert (rm.batch_size, rm.lr, rm.end_lr, rm.warmup_ratio, rm.epochs) == \
        (32 * 16, 1e-5, 1e-6, 0.03, 1)
    assert (ppo.prompts_per_batch, ppo.minibatch_size, ppo.ppo_epochs, ppo.lr, ppo.beta,
            ppo.temperature, ppo.max_response_length, ppo.warmup_epochs, ppo.end_lr) == \
        (512, 64, 1, 1e-6, 0.05, 0.7, 1024, 0.1, None)
    pairs = [TokenizedPair(i, (1,), (2,), (3,)) for i in range(40)]
    for cfg in (dpo, rm):
        train, held = split_heldout(pairs, cfg.eval_fraction, 1)
        assert (len(train), len(held)) == (40, 0)
    assert math.isclose(dpo.weight_decay + rm.weight_decay, 0.0)


def test_ppo_rollouts_sample_from_the_50_most_likely_tokens_at_temperature_07():
    """EasyLM samples with ``GenerationConfig(do_sample=True, temperature=0.7, ...)`` and no
    ``top_k``, so transformers' default top_k = 50 applies (its Flax generate warps the logits by
    temperature, then keeps the 50 largest). With next-token logits fixed at 0 for 50 tokens and
    −0.01 for 10 others, the paper's sampling draws only from the first 50 (each 1/50), while
    sampling from every token would draw one of the 10 about 10 times in 60."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ablate.train.ppo import _generate
    from ablate.train.rollout import PromptItem

    vocab, eos = 60, 59
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, eos_token_id=eos, pad_token_id=eos)).eval()
    model.lm_head = nn.Linear(16, vocab, bias=True)  # logits = the bias, whatever the input
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.bias.copy_(torch.tensor([0.0] * 50 + [-0.01] * 10))
    tokenizer = SimpleNamespace(pad_token_id=eos, eos_token_id=eos,
                                decode=lambda ids, **kwargs: "")
    prompts = [PromptItem(i, (), (1, 2 + i), None) for i in range(16)]
    cfg = PPOConfig(max_response_length=24, minibatch_size=8)
    assert (cfg.temperature, cfg.top_k) == (0.7, 50)
    sampled = _generate(model, model, tokenizer, prompts, cfg, seed=0).responses
    assert sampled.numel() == 16 * 24 and int((sampled >= 50).sum()) == 0
    assert len(set(sampled.flatten().tolist())) > 40  # the 50 stay (about) uniform
    every = _generate(model, model, tokenizer, prompts, cfg.model_copy(update={"top_k": 0}),
                      seed=0)
    drawn = every.response_mask.bool()  # up to and including a sampled EOS (id 59)
    assert int(((every.responses >= 50) & drawn).sum()) > 20  # about 1 drawn token in 6
