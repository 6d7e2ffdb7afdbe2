"""bf16 weights with fp32 master copies (``precision: bf16_weights``), for a single process.

Under the default (``autocast``) the weights stay fp32 and every forward casts each of them to
bf16 while the residual stream and the element-wise work around the matrix products stay fp32.
Here the model itself is bf16, so no forward casts anything and activations are half the bytes.
The fp32 masters keep small updates: at a learning rate of 5e-7 most updates are far below
bf16's resolution (about 0.4 % of a weight) and would round away if applied to bf16 weights.
Each bf16 gradient is added into its master's fp32 gradient as soon as backward has accumulated
it (and then freed), the optimiser steps the masters, and ``copy_back`` rounds them into the
model. Several processes use FSDP2's mixed-precision policy instead (bf16 compute, fp32 sharded
weights and gradient reduction), which does the same across shards.
"""

from __future__ import annotations

import torch
from torch import nn

from ablate.train import fsdp
from ablate.train.common import TrainingError


def master_weights(model: nn.Module, precision: str) -> "MasterWeights | None":
    """The masters of a model that is about to train, under ``precision: bf16_weights`` (None
    under ``autocast``). Call it once the model is on its device."""
    if precision != "bf16_weights":
        return None
    if fsdp.world_size() > 1:
        raise TrainingError("precision bf16_weights is for a single process; several processes "
                            "train with FSDP2's mixed precision (bf16 compute, fp32 sharded "
                            "weights and gradient reduction): use precision autocast")
    return MasterWeights(model)


class MasterWeights(nn.Module):
    """The fp32 masters of ``model``'s trainable weights; ``model`` is cast to bf16 in place.

    As a module its parameters are the masters, so the optimiser, gradient clipping and
    checkpoints take it where they would take the model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.names = [name for name, _ in named]
        self._weights = [p for _, p in named]  # a plain list: not registered as parameters here
        self.masters = nn.ParameterList(
            [nn.Parameter(p.detach().float().clone()) for p in self._weights])
        cast_parameters(model, torch.bfloat16)
        for weight, master in zip(self._weights, self.masters):
            weight.register_post_accumulate_grad_hook(
                lambda w, m=master: self._into_master(w, m))

    @staticmethod
    def _into_master(weight: torch.Tensor, master: torch.Tensor) -> None:
        if master.grad is None:
            master.grad = weight.grad.float()
        else:
            master.grad.add_(weight.grad)
        weight.grad = None

    @torch.no_grad()
    def copy_back(self) -> None:
        """Round the masters into the bf16 weights (after each optimiser step and a resume)."""
        torch._foreach_copy_(self._weights, list(self.masters))

    @torch.no_grad()
    def restore_fp32(self, model: nn.Module) -> None:
        """Make ``model`` fp32 again holding the masters' exact values (before it is saved)."""
        cast_parameters(model, torch.float32)
        for weight, master in zip(self._weights, self.masters):
            weight.copy_(master)


def cast_parameters(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast the parameters in place (the same Parameter objects, so hooks and ties hold). Not
    ``model.to(dtype)``: that would also cast float buffers such as the rotary embedding's
    inverse frequencies, which the model keeps in fp32 on purpose."""
    for param in model.parameters():
        param.data = param.data.to(dtype)
