"""Golden values for each loss, derived by hand from the papers' formulas.

The log-probs are chosen so that the logit inside the sigmoid is 0 or ln 3, where
−log σ(0) = ln 2, −log σ(ln 3) = ln(4/3) and −log σ(−ln 3) = ln 4.
"""

import math

import pytest
import torch

from ablate.train.losses import (
    bradley_terry_loss, preference_loss, preference_metrics,
)

LN3 = math.log(3)


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_dpo_sigmoid_golden():
    # pair 0: chosen ratio +3, rejected ratio −2 → β·Δ = 0.2·5 = 1 → loss = −log σ(1)
    # pair 1: chosen ratio −1, rejected ratio −1 → Δ = 0 → ln 2
    losses, rc, rr = preference_loss("sigmoid", t(-7.0, -11.0), t(-12.0, -4.0), t(-10.0, -10.0),
                                     t(-10.0, -3.0), beta=0.2)
    assert losses.tolist() == pytest.approx([math.log1p(math.exp(-1.0)), math.log(2)], abs=1e-12)
    assert rc.tolist() == pytest.approx([0.6, -0.2])
    assert rr.tolist() == pytest.approx([-0.4, -0.2])
    metrics = preference_metrics(rc, rr)
    assert metrics["rewards/accuracy"] == 0.5  # the tie counts as wrong
    assert metrics["rewards/margin"] == pytest.approx(0.5)
    assert metrics["rewards/chosen"] == pytest.approx(0.2)


def test_sigmoid_ignores_label_smoothing_and_cdpo_uses_it():
    args = (t(LN3 * 10), t(0.0), t(0.0), t(0.0))  # β·Δ = 0.1 · 10 ln 3 = ln 3
    plain, _, _ = preference_loss("sigmoid", *args, beta=0.1, label_smoothing=0.25)
    assert plain.item() == pytest.approx(math.log(4 / 3))
    # cDPO: 0.75·ln(4/3) + 0.25·ln 4
    smoothed, _, _ = preference_loss("cdpo", *args, beta=0.1, label_smoothing=0.25)
    assert smoothed.item() == pytest.approx(0.75 * math.log(4 / 3) + 0.25 * math.log(4))
    with pytest.raises(ValueError, match="label_smoothing"):
        preference_loss("cdpo", *args, beta=0.1, label_smoothing=0.0)


def test_ipo_golden():
    # per-token ratios: chosen 6/3 = 2, rejected −4/2 = −2 → h = 4; 1/(2β) = 2.5 → (4 − 2.5)² = 2.25
    losses, rc, rr = preference_loss("ipo", t(-4.0), t(-8.0), t(-10.0), t(-4.0), beta=0.2,
                                     chosen_lengths=t(3), rejected_lengths=t(2))
    assert losses.item() == pytest.approx(2.25)
    assert (rc.item(), rr.item()) == pytest.approx((0.4, -0.4))


def test_ln_dpo_golden():
    # per-token: policy −2, −3; reference −3, −2 → Δ = 1 − (−1) = 2; β = ln3 / 2 → loss ln(4/3)
    losses, rc, rr = preference_loss("ln_dpo", t(-8.0), t(-6.0), t(-12.0), t(-4.0),
                                     beta=LN3 / 2, chosen_lengths=t(4), rejected_lengths=t(2))
    assert losses.item() == pytest.approx(math.log(4 / 3))
    assert rc.item() == pytest.approx(LN3 / 2)


def test_simpo_golden_needs_no_reference():
    # β·(−1) − β·(−3) − γ = 2·2 − (4 − ln 3) = ln 3
    losses, rc, rr = preference_loss("simpo", t(-5.0), t(-6.0), None, None, beta=2.0,
                                     simpo_gamma=4 - LN3, chosen_lengths=t(5),
                                     rejected_lengths=t(2))
    assert losses.item() == pytest.approx(math.log(4 / 3))
    assert (rc.item(), rr.item()) == pytest.approx((-2.0, -6.0))


def test_reference_and_lengths_are_required():
    with pytest.raises(ValueError, match="reference"):
        preference_loss("sigmoid", t(-1.0), t(-2.0), None, None, beta=0.1)
    with pytest.raises(ValueError, match="length"):
        preference_loss("ipo", t(-1.0), t(-2.0), t(-1.0), t(-2.0), beta=0.1)
    with pytest.raises(ValueError, match="unknown"):
        preference_loss("kto", t(-1.0), t(-2.0), t(-1.0), t(-2.0), beta=0.1)


def test_bradley_terry_golden_with_margin():
    losses = bradley_terry_loss(t(1.0, 0.0), t(1.0, LN3))
    assert losses.tolist() == pytest.approx([math.log(2), math.log(4)])
    # margin m = 1: r_c − r_r − m = (1 + ln 3) − 0 − 1 = ln 3
    with_margin = bradley_terry_loss(t(1 + LN3), t(0.0), margin=t(1.0))
    assert with_margin.item() == pytest.approx(math.log(4 / 3))


def test_dpo_gradient_matches_hand_derivation():
    # d/dπ_c [−log σ(βΔ)] = −β(1 − σ(βΔ)); at Δ = 0: −β/2
    policy_chosen = t(-3.0).requires_grad_()
    losses, _, _ = preference_loss("sigmoid", policy_chosen, t(-3.0), t(-3.0), t(-3.0), beta=0.5)
    losses.sum().backward()
    assert policy_chosen.grad.item() == pytest.approx(-0.25)


def test_ln_dpo_and_simpo_take_label_smoothing():
    # SimPO with β·(mean logp difference) − γ = ln 3: 0.75·ln(4/3) + 0.25·ln 4 when smoothed
    lengths = t(1.0), t(1.0)
    args = (t(LN3 * 10 + 5.0), t(0.0))
    plain, _, _ = preference_loss("simpo", *args, None, None, beta=0.1, simpo_gamma=0.5,
                                  chosen_lengths=lengths[0], rejected_lengths=lengths[1])
    smoothed, _, _ = preference_loss("simpo", *args, None, None, beta=0.1, simpo_gamma=0.5,
                                     label_smoothing=0.25, chosen_lengths=lengths[0],
                                     rejected_lengths=lengths[1])
    assert plain.item() == pytest.approx(math.log(4 / 3))
    assert smoothed.item() == pytest.approx(0.75 * math.log(4 / 3) + 0.25 * math.log(4))
    ln_args = (t(LN3 * 10), t(0.0), t(0.0), t(0.0))
    ln_smoothed, _, _ = preference_loss("ln_dpo", *ln_args, beta=0.1, label_smoothing=0.25,
                                        chosen_lengths=t(1.0), rejected_lengths=t(1.0))
    assert ln_smoothed.item() == pytest.approx(0.75 * math.log(4 / 3) + 0.25 * math.log(4))


def test_dpo_config_refuses_settings_that_would_silently_misbehave():
    from pydantic import ValidationError

    from ablate.spec.schema import DPOConfig, RMConfig

    for loss in ("sigmoid", "ipo"):
        with pytest.raises(ValidationError, match="takes no label_smoothing"):
            DPOConfig(loss=loss, label_smoothing=0.1)
    DPOConfig(loss="simpo", label_smoothing=0.1)
    with pytest.raises(ValidationError, match="max_prompt_length .* must be below max_length"):
        DPOConfig(max_length=512, max_prompt_length=512)
    for norm in (0.0, -1.0):  # 0 would zero the gradient, a negative norm would flip it
        with pytest.raises(ValidationError, match="max_grad_norm"):
            DPOConfig(max_grad_norm=norm)
        with pytest.raises(ValidationError, match="max_grad_norm"):
            RMConfig(max_grad_norm=norm)
