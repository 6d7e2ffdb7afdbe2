"""Completion log-probs without full-vocabulary logits: only answer positions reach the output
layer, a chunk at a time, and the backward recomputes each chunk's logits.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import torch
from torch import Tensor, nn

from ablate.generate.forward import attention_implementation, padded_causal_mask
from ablate.train.collate import ScoredTokens, SequenceBatch, SharedPromptBatch, shared_prompt_mask
from ablate.train.common import TrainingError


class _TokenLogps(torch.autograd.Function):
    """log softmax(h Wᵀ)[target] per token, a chunk of tokens at a time.

    The full-vocabulary logits of a chunk live only inside this function: backward recomputes them
    instead of keeping [tokens, vocab] floats alive between forward and backward.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int) -> Tensor:
        acc = torch.promote_types(hidden.dtype, torch.float32)  # softmax at least in fp32
        out = torch.empty(hidden.shape[0], dtype=acc, device=hidden.device)
        lse = torch.empty_like(out)
        for start in range(0, hidden.shape[0], chunk):
            logits = (hidden[start:start + chunk] @ weight.T).to(acc)
            lse[start:start + chunk] = torch.logsumexp(logits, dim=-1)
            out[start:start + chunk] = logits.gather(
                1, targets[start:start + chunk, None]).squeeze(1) - lse[start:start + chunk]
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        hidden, weight, targets, lse = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        acc = lse.dtype
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) \
            if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], ctx.chunk):
            h = hidden[start:start + ctx.chunk]
            g = grad_out[start:start + ctx.chunk].to(acc)
            logits = (h @ weight.T).to(acc)
            # d logp[t] / d logits = onehot(t) - softmax; scaled by the incoming gradient
            grad_logits = torch.exp(logits - lse[start:start + ctx.chunk, None]).mul_(-g[:, None])
            grad_logits.scatter_add_(1, targets[start:start + ctx.chunk, None], g[:, None])
            grad_logits = grad_logits.to(h.dtype)
            if grad_hidden is not None:
                grad_hidden[start:start + ctx.chunk] = grad_logits @ weight
            if grad_weight is not None:
                grad_weight += (grad_logits.T @ h).to(acc)
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None


def token_logps(hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int = 1024) -> Tensor:
    """Per-token log-probs of ``targets`` [N] given final hidden states [N, H] and the output
    embedding [V, H]. Under autocast the matmuls run in the autocast dtype, the softmax in fp32."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    else:
        hidden = hidden.to(weight.dtype)
    with torch.autocast(device_type, enabled=False):
        return _TokenLogps.apply(hidden, weight, targets, chunk)


class CompletionLogps(nn.Module):
    """A causal LM that returns each sequence's summed completion log-prob.

    Only the hidden states of completion positions go through the output layer, chunk by chunk;
    prompt and padding positions never get vocabulary logits. Wrapping the LM in a module (rather
    than calling its parts from outside) gives FSDP one root whose forward covers the embeddings
    and output layer.
    """

    def __init__(self, causal_lm: nn.Module, chunk: int = 1024,
                 context: Callable[[], ContextManager] = contextlib.nullcontext):
        super().__init__()
        self.lm = causal_lm
        self.chunk = chunk
        self.context = context  # precision and attention kernel: common.forward_context
        head = causal_lm.get_output_embeddings()
        if getattr(head, "bias", None) is not None:
            raise TrainingError("output layers with a bias are not supported by CompletionLogps")
        if getattr(causal_lm.config, "final_logit_softcapping", None):
            raise TrainingError("models with logit soft-capping are not supported yet")

    def forward(self, input_ids: Tensor, attention_mask: Tensor, scored: ScoredTokens,
                position_ids: Tensor | None = None) -> Tensor:
        """Summed log-probs [scored.n_slots] of the ``scored`` tokens, per slot: a row each for
        right-padded rows (2-D ``attention_mask``); for a shared-prompt batch (4-D mask,
        ``position_ids``), each pair's chosen answer, then each rejected answer."""
        if attention_mask.dim() == 2:
            attention_mask = padded_causal_mask(attention_mask, attention_implementation(self.lm),
                                                next(self.lm.parameters()).dtype)
        with self.context():
            hidden = self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                        position_ids=position_ids, use_cache=False
                                        ).last_hidden_state
            logps = token_logps(hidden[scored.rows, scored.positions],
                                self.lm.get_output_embeddings().weight, scored.targets,
                                self.chunk)
        return torch.zeros(scored.n_slots, dtype=logps.dtype, device=input_ids.device).index_add(
            0, scored.slots, logps)

    def batch_logps(self, batch: "SequenceBatch | SharedPromptBatch") -> Tensor:
        """[2B] summed completion log-probs, chosen answers first, in either layout (the
        shared-prompt one runs each prompt once)."""
        if isinstance(batch, SequenceBatch):
            return self(batch.input_ids, batch.attention_mask, batch.scored)
        mask = shared_prompt_mask(batch.segments, attention_implementation(self.lm),
                                  next(self.lm.parameters()).dtype)
        return self(batch.input_ids, mask, batch.scored, batch.position_ids)
