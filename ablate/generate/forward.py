"""What a batched forward over token rows needs, at inference and in training alike: right-padded
rows, the attention masks a model's attention implementation takes for them, and bf16 autocast on
a GPU. The reward model scores through these (``reward_model``), and the trainers build their
batches with them (``ablate.train.collate``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

# Attention implementations that take a ready 4-D mask as given (transformers returns a 4-D mask
# unchanged); flash-attention kernels only read 2-D padding masks.
MASK_4D_ATTENTION = ("sdpa", "eager")


def pad_sequences(sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[Tensor, Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` for token lists of unequal length."""
    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, :len(seq)] = 1
    return ids, mask


def attention_implementation(model: nn.Module) -> str:
    return getattr(model.config, "_attn_implementation", None) or "eager"


def padded_causal_mask(attention_mask: Tensor, attention: str, dtype: torch.dtype) -> Tensor:
    """The 4-D mask [B, 1, T, T] of right-padded rows (causal, padding keys hidden), for the
    attention implementations that take one. Given the 2-D mask, transformers first checks it for
    padding, which on a GPU makes the host wait for the device; others get the 2-D mask as is.
    A padding query still sees its row's real tokens (no all-masked row)."""
    if attention not in MASK_4D_ATTENTION:
        return attention_mask
    causal = causal_pairs(attention_mask.shape[1], attention_mask.device)
    return mask_for(causal[None] & attention_mask.bool()[:, None, :], attention, dtype)


def causal_pairs(width: int, device) -> Tensor:
    """[query, key] True where the query may attend to the key: itself and what came before."""
    positions = torch.arange(width, device=device)
    return positions[None, :] <= positions[:, None]


def mask_for(allowed: Tensor, attention: str, dtype: torch.dtype) -> Tensor:
    """[B, T, T] allowed pairs as the implementation takes them: ``sdpa`` a boolean mask (True =
    attend); ``eager`` adds the mask to its scores, so 0 / the dtype's minimum."""
    allowed = allowed[:, None]
    if attention == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
        ~allowed, torch.finfo(dtype).min)


def autocast(device: torch.device):
    """bf16 autocast on GPU; float32 on CPU (CPU bf16 is slower here and less exact)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
