"""Training losses as pure functions of per-sequence log-probs (or rewards).

Every preference loss takes the summed log-probs of the chosen and rejected completions under the
policy (and, except SimPO, the frozen reference), plus completion lengths where a variant
normalises by length, and returns ``(per_pair_losses, chosen_rewards, rejected_rewards)``. The
implicit rewards are what DPO's paper calls r(x, y) = β log π(y|x)/π_ref(y|x) (or the variant's
analogue); ``preference_metrics`` turns them into the numbers logged during training.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

PreferenceLoss = Literal["sigmoid", "cdpo", "ipo", "ln_dpo", "simpo"]
NEEDS_REFERENCE = {"sigmoid": True, "cdpo": True, "ipo": True, "ln_dpo": True, "simpo": False}


def _per_token(logps: Tensor, lengths: Tensor | None, loss: str) -> Tensor:
    if lengths is None:
        raise ValueError(f"the {loss!r} loss normalises by completion length: pass the lengths")
    return logps / lengths.clamp(min=1).to(logps.dtype)


def dpo_sigmoid_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor,
                     ref_rejected: Tensor, beta: float, label_smoothing: float = 0.0):
    """DPO (Rafailov et al., 2023); with ``label_smoothing`` ε > 0 it is conservative DPO:
    the preference label is assumed flipped with probability ε."""
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    logits = chosen_rewards - rejected_rewards
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return losses, chosen_rewards, rejected_rewards


def ipo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor,
             ref_rejected: Tensor, beta: float, chosen_lengths: Tensor, rejected_lengths: Tensor):
    """IPO (Azar et al., 2023): regress the log-ratio gap onto 1/(2β). The log-ratios are averaged
    per token, as TRL does after confirming it with the IPO authors; summed log-ratios make the
    squared loss grow with length."""
    chosen_ratio = _per_token(policy_chosen - ref_chosen, chosen_lengths, "ipo")
    rejected_ratio = _per_token(policy_rejected - ref_rejected, rejected_lengths, "ipo")
    losses = (chosen_ratio - rejected_ratio - 1 / (2 * beta)) ** 2
    return losses, beta * chosen_ratio, beta * rejected_ratio


def ln_dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor,
                ref_rejected: Tensor, beta: float, chosen_lengths: Tensor,
                rejected_lengths: Tensor, label_smoothing: float = 0.0):
    """Length-normalised DPO: DPO on per-token log-ratios, so longer answers earn no extra reward."""
    return dpo_sigmoid_loss(_per_token(policy_chosen, chosen_lengths, "ln_dpo"),
                            _per_token(policy_rejected, rejected_lengths, "ln_dpo"),
                            _per_token(ref_chosen, chosen_lengths, "ln_dpo"),
                            _per_token(ref_rejected, rejected_lengths, "ln_dpo"),
                            beta, label_smoothing)


def simpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, beta: float, gamma: float,
               chosen_lengths: Tensor, rejected_lengths: Tensor, label_smoothing: float = 0.0):
    """SimPO (Meng et al., 2024): reference-free, reward = β · mean token log-prob, with a target
    margin γ: loss = −log σ(r_c − r_r − γ)."""
    chosen_rewards = beta * _per_token(policy_chosen, chosen_lengths, "simpo")
    rejected_rewards = beta * _per_token(policy_rejected, rejected_lengths, "simpo")
    logits = chosen_rewards - rejected_rewards - gamma
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return losses, chosen_rewards, rejected_rewards


def preference_loss(loss: PreferenceLoss, policy_chosen: Tensor, policy_rejected: Tensor,
                    ref_chosen: Tensor | None, ref_rejected: Tensor | None, *, beta: float,
                    label_smoothing: float = 0.0, simpo_gamma: float = 0.5,
                    chosen_lengths: Tensor | None = None, rejected_lengths: Tensor | None = None):
    """Dispatch on the config's ``loss`` name; returns (losses, chosen_rewards, rejected_rewards).

    ``cdpo`` is DPO with label smoothing; ``ln_dpo`` and ``simpo`` take ``label_smoothing`` too;
    a plain ``sigmoid`` and ``ipo`` ignore it (DPOConfig refuses it for them), so that the name
    says exactly which objective ran.
    """
    if loss not in NEEDS_REFERENCE:
        raise ValueError(f"unknown preference loss {loss!r}; valid: {', '.join(NEEDS_REFERENCE)}")
    if NEEDS_REFERENCE[loss] and (ref_chosen is None or ref_rejected is None):
        raise ValueError(f"the {loss!r} loss needs reference log-probs")
    if loss == "sigmoid":
        return dpo_sigmoid_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    if loss == "cdpo":
        if label_smoothing <= 0:
            raise ValueError("loss 'cdpo' needs label_smoothing > 0 (the assumed label-flip rate)")
        return dpo_sigmoid_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta,
                                label_smoothing)
    if loss == "ipo":
        return ipo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta,
                        chosen_lengths, rejected_lengths)
    if loss == "ln_dpo":
        return ln_dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta,
                           chosen_lengths, rejected_lengths, label_smoothing)
    return simpo_loss(policy_chosen, policy_rejected, beta, simpo_gamma, chosen_lengths,
                      rejected_lengths, label_smoothing)


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor,
                       margin: Tensor | None = None) -> Tensor:
    """Reward-model loss −log σ(r_c − r_r − m); the margin m (Llama 2's) asks pairs rated far
    apart to be separated by more. Per pair, not reduced."""
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin.to(diff.dtype)
    return -F.logsigmoid(diff)


def preference_metrics(chosen_rewards: Tensor, rejected_rewards: Tensor) -> dict[str, Tensor]:
    """Means over the batch, as 0-d tensors on the rewards' device (read them together, once):
    the rewards, how often chosen beats rejected (ties count as wrong) and by how much."""
    chosen_rewards, rejected_rewards = chosen_rewards.detach().float(), rejected_rewards.detach().float()
    return {"rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/accuracy": (chosen_rewards > rejected_rewards).float().mean(),
            "rewards/margin": (chosen_rewards - rejected_rewards).mean()}


# ---- PPO losses ----
#
# Per-token tensors are [batch, response_tokens], right-padded; ``mask`` is 1 on response tokens.
# Token t's value is the value model's estimate before t is sampled, and its log-prob is under the
# sampling temperature, as in the rollout.


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """(x − mean) / √(var + 1e-6) over the masked entries (unbiased variance, the paper's PPO
    code's ``whiten``); padding comes back as 0. Without ``shift_mean`` the mean is added back, as
    TRL does for advantages it keeps centred."""
    mean = masked_mean(values, mask)
    n = mask.sum().clamp(min=2)
    variance = (((values - mean) ** 2) * mask).sum() / (n - 1)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-6)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def no_eos_scores(scores: Tensor, ended_with_eos: Tensor, penalty: float, mode: str) -> Tensor:
    """The score of each response after the no-EOS rule: ``replace`` gives a response that never
    ended ``penalty`` instead of its score (the paper's PPO code: ``jnp.where(last == eos,
    reward, -10.0)``), ``add`` lowers its score by ``-penalty``."""
    if mode == "replace":
        return torch.where(ended_with_eos, scores, torch.full_like(scores, penalty))
    if mode == "add":
        return scores + penalty * (~ended_with_eos).to(scores.dtype)
    raise ValueError(f"no_eos_penalty_mode {mode!r}: expected replace or add")


def kl_penalized_rewards(scores: Tensor, logps: Tensor, ref_logps: Tensor, mask: Tensor,
                         beta: float) -> tuple[Tensor, Tensor]:
    """Per-token rewards: −β·(log π − log π_ref) at every response token, plus the sequence's
    score at its last token. Returns (rewards, per-token KL estimate log π − log π_ref)."""
    kl = (logps - ref_logps) * mask
    rewards = -beta * kl
    last = (mask.sum(dim=1) - 1).clamp(min=0).long()
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards = rewards.index_put((rows, last), scores.to(rewards.dtype), accumulate=True)
    return rewards * mask, kl


def gae_advantages(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float,
                   lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016) over each response.

    δ_t = r_t + γ V_{t+1} − V_t with V = 0 after the last token; A_t = δ_t + γλ A_{t+1}.
    Returns (advantages, returns = advantages + values), both 0 on padding."""
    mask = mask.to(values.dtype)
    values = values * mask
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        # padding after a response neither carries a value nor breaks the recursion
        running = running * mask[:, t]
        next_value = values[:, t] * mask[:, t] + next_value * (1 - mask[:, t])
        advantages[:, t] = running
    return advantages * mask, (advantages + values) * mask


def clipped_policy_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor,
                        clip_ratio: float) -> tuple[Tensor, Tensor]:
    """PPO's clipped surrogate: max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)) with ρ = π/π_old, per token.
    Returns (per-token losses, per-token 1.0 where the clipped branch was taken); both unreduced
    so that micro-batches can be summed and normalised by the minibatch's token count."""
    ratio = torch.exp(logps - old_logps)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_ratio, 1 + clip_ratio)
    return torch.maximum(unclipped, clipped) * mask, (clipped > unclipped).to(logps.dtype) * mask


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
                       value_clip: float) -> tuple[Tensor, Tensor]:
    """½·max((V − R)², (clip(V, V_old ± ε) − R)²) per token, and where the clipped branch won."""
    clipped_values = old_values + torch.clamp(values - old_values, -value_clip, value_clip)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    return 0.5 * torch.maximum(unclipped, clipped) * mask, \
        (clipped > unclipped).to(values.dtype) * mask


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """1 − Var(R − V)/Var(R) over the masked tokens: 1 is a perfect critic, ≤ 0 a useless one."""
    returns_var = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    residual = returns - values
    residual_var = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    return float("nan") if returns_var <= 0 else float(1 - residual_var / returns_var)
