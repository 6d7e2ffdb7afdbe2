"""PPO's pure functions against numbers derived by hand (the derivations are in the comments)."""

import math

import pytest
import torch

from ablate.train.losses import (
    clipped_policy_loss, clipped_value_loss, explained_variance, gae_advantages,
    kl_penalized_rewards, masked_mean, masked_whiten,
)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_gae_lambda_half_gamma_one():
    # δ2 = 1 − 0.7 = 0.3 → A2 = 0.3; δ1 = 0.7 − 0.6 = 0.1 → A1 = 0.1 + 0.5·0.3 = 0.25;
    # δ0 = 0.6 − 0.5 = 0.1 → A0 = 0.1 + 0.5·0.25 = 0.225; returns = A + V
    adv, ret = gae_advantages(t([0, 0, 1]), t([0.5, 0.6, 0.7]), t([1, 1, 1]), 1.0, 0.5)
    assert adv.tolist()[0] == pytest.approx([0.225, 0.25, 0.3])
    assert ret.tolist()[0] == pytest.approx([0.725, 0.85, 1.0])


def test_gae_discounted():
    # γ = 0.5, λ = 1: δ2 = 0.3; δ1 = 0.5·0.7 − 0.6 = −0.25 → A1 = −0.25 + 0.5·0.3 = −0.1;
    # δ0 = 0.5·0.6 − 0.5 = −0.2 → A0 = −0.2 + 0.5·(−0.1) = −0.25
    adv, _ = gae_advantages(t([0, 0, 1]), t([0.5, 0.6, 0.7]), t([1, 1, 1]), 0.5, 1.0)
    assert adv.tolist()[0] == pytest.approx([-0.25, -0.1, 0.3])


def test_gae_ignores_padding_after_the_response():
    # the value 9 on padding must not leak in: δ1 = 2 − 1 = 1, A1 = 1; δ0 = 1 − 1 = 0, A0 = 1
    adv, ret = gae_advantages(t([0, 2, 5]), t([1, 1, 9]), t([1, 1, 0]), 1.0, 1.0)
    assert adv.tolist()[0] == pytest.approx([1, 1, 0])
    assert ret.tolist()[0] == pytest.approx([2, 2, 0])


def test_gae_rows_are_independent():
    rewards, values = t([0, 0, 1], [0, 2, 5]), t([0.5, 0.6, 0.7], [1, 1, 9])
    adv, _ = gae_advantages(rewards, values, t([1, 1, 1], [1, 1, 0]), 1.0, 0.5)
    assert adv[0].tolist() == pytest.approx([0.225, 0.25, 0.3])


def test_whiten_uses_only_masked_entries():
    # mean 2, unbiased variance ((−1)² + 0 + 1²)/2 = 1 → [−1, 0, 1]; padding → 0
    out = masked_whiten(t([1, 2, 3, 100]), t([1, 1, 1, 0]))
    assert out.tolist()[0] == pytest.approx([-1, 0, 1, 0], abs=1e-6)
    kept = masked_whiten(t([1, 2, 3, 100]), t([1, 1, 1, 0]), shift_mean=False)
    assert kept.tolist()[0] == pytest.approx([1, 2, 3, 0], abs=1e-6)
    assert masked_mean(t([1, 2, 3, 100]), t([1, 1, 1, 0])).item() == pytest.approx(2)


def test_kl_penalty_and_score_at_last_token():
    # kl = [0.5, 0, −1]; rewards = −0.1·kl, plus the score 2 on the last real token
    rewards, kl = kl_penalized_rewards(torch.tensor([2.0, 1.0], dtype=torch.float64),
                                       t([-1, -2, -3], [-1, -1, -7]),
                                       t([-1.5, -2, -2], [-1, -2, 0]),
                                       t([1, 1, 1], [1, 1, 0]), beta=0.1)
    assert kl[0].tolist() == pytest.approx([0.5, 0, -1])
    assert kl[1].tolist() == pytest.approx([0, 1, 0])
    assert rewards.tolist()[0] == pytest.approx([-0.05, 0, 2.1])
    # second row ends at index 1: score 1 lands there, padding gets nothing
    assert rewards.tolist()[1] == pytest.approx([0, 1 - 0.1, 0])


def test_clipped_policy_loss_four_cases():
    # ρ = 1.5, A = 1: max(−1.5, −1.2) = −1.2 (clipped); ρ = 1.5, A = −1: max(1.5, 1.2) = 1.5;
    # ρ = 0.5, A = 1: max(−0.5, −0.8) = −0.5; ρ = 0.5, A = −1: max(0.5, 0.8) = 0.8 (clipped)
    logps = t([math.log(1.5), math.log(1.5), math.log(0.5), math.log(0.5)])
    loss, clipped = clipped_policy_loss(logps, torch.zeros_like(logps), t([1, -1, 1, -1]),
                                        t([1, 1, 1, 1]), 0.2)
    assert loss.tolist()[0] == pytest.approx([-1.2, 1.5, -0.5, 0.8])
    assert clipped.tolist()[0] == [1, 0, 0, 1]


def test_clipped_policy_loss_gradient_vanishes_when_clipped():
    logps = torch.tensor([[math.log(1.5)]], requires_grad=True)
    loss, _ = clipped_policy_loss(logps, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), 0.2)
    loss.sum().backward()
    assert logps.grad.item() == 0


def test_clipped_value_loss():
    # V_old 1, V 1.5, R 2: unclipped 0.25, clipped V = 1.2 → 0.64 → ½·0.64 = 0.32 (clipped)
    # V_old 1, V 1.5, R 1: unclipped 0.25, clipped (1.2 − 1)² = 0.04 → ½·0.25 = 0.125
    loss, clipped = clipped_value_loss(t([1.5, 1.5, 7]), t([1, 1, 0]), t([2, 1, 0]),
                                       t([1, 1, 0]), 0.2)
    assert loss.tolist()[0] == pytest.approx([0.32, 0.125, 0])
    assert clipped.tolist()[0] == [1, 0, 0]


def test_explained_variance():
    returns, mask = t([1, 2, 3]), t([1, 1, 1])
    assert explained_variance(returns, returns, mask) == pytest.approx(1)
    assert explained_variance(t([2, 2, 2]), returns, mask) == pytest.approx(0)
    # residual [1, 1, 1] has no variance: a constant offset still explains everything
    assert explained_variance(returns - 1, returns, mask) == pytest.approx(1)
