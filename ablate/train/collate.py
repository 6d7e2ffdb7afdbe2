"""The tensors of a micro-batch of preference pairs: right-padded rows (chosen, then rejected),
or the shared-prompt layout (one row per pair, the prompt once), the answer tokens each forward
scores, and the 4-D attention masks both layouts take. Built on the host, moved without waiting
for the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from ablate.generate.forward import (
    MASK_4D_ATTENTION, attention_implementation, causal_pairs, mask_for,
)
from ablate.train.common import TokenizedPair, TrainingError


def on_device(tensor: Tensor | None, device) -> Tensor | None:
    """A host batch tensor on ``device`` without waiting for the device: a blocking copy to a GPU
    synchronises the stream, so the next step's kernels could not queue behind the current ones.
    The copy to a GPU starts from pinned memory (PyTorch's caching host allocator, which keeps
    the block until the copy has run): from pageable memory CUDA may copy synchronously."""
    if tensor is None:
        return None
    if torch.device(device).type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


@dataclass
class ScoredTokens:
    """The answer tokens a forward scores, as flat indices built on the host when a batch is
    collated: selecting them on the device with a boolean mask would make the host wait for the
    forward (``nonzero`` must know how many there are), stalling the GPU's queue every step."""

    rows: Tensor  # [N]: batch row of each scored token
    positions: Tensor  # [N]: the position whose hidden state predicts it
    targets: Tensor  # [N]: its token id
    slots: Tensor  # [N]: the output sequence whose log-prob it adds to
    n_slots: int

    @classmethod
    def from_lists(cls, rows: list[int], positions: list[int], targets: list[int],
                   slots: list[int], n_slots: int) -> "ScoredTokens":
        return cls(*(torch.tensor(v, dtype=torch.long) for v in (rows, positions, targets, slots)),
                   n_slots)

    def to(self, device) -> "ScoredTokens":
        return ScoredTokens(*(on_device(t, device) for t in (self.rows, self.positions,
                                                             self.targets, self.slots)),
                            self.n_slots)


@dataclass
class SequenceBatch:
    """Chosen sequences first, then rejected, right-padded to the longest in the batch."""

    input_ids: Tensor  # [2B, T]
    attention_mask: Tensor  # [2B, T]
    scored: ScoredTokens  # completion tokens; slot = row
    completion_lengths: Tensor  # [2B]
    margins: Tensor | None  # [B]
    real_tokens: int

    def to(self, device) -> "SequenceBatch":
        return SequenceBatch(on_device(self.input_ids, device),
                             on_device(self.attention_mask, device), self.scored.to(device),
                             on_device(self.completion_lengths, device),
                             on_device(self.margins, device), self.real_tokens)


def padded_width(width: int, multiple: int) -> int:
    """``width`` rounded up to a multiple of ``multiple`` (fewer distinct shapes for kernels that
    plan per shape)."""
    return -(-width // multiple) * multiple


def collate_pairs(pairs: Sequence[TokenizedPair], pad_token_id: int, width_multiple: int = 1
                  ) -> SequenceBatch:
    sequences = [(p.prompt_ids, p.chosen_ids) for p in pairs] + \
                [(p.prompt_ids, p.rejected_ids) for p in pairs]
    width = padded_width(max(len(a) + len(b) for a, b in sequences), width_multiple)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    rows, positions, targets = [], [], []
    for row, (prompt, completion) in enumerate(sequences):
        tokens = prompt + completion
        n_prompt, n = len(prompt), len(tokens)
        input_ids[row, :n] = torch.tensor(tokens)
        attention_mask[row, :n] = 1
        # token t is predicted at position t - 1 (a first token has no prediction)
        scored = range(max(n_prompt, 1), n)
        rows += [row] * len(scored)
        positions += [t - 1 for t in scored]
        targets += [tokens[t] for t in scored]
    margins = None
    if all(p.margin is not None for p in pairs):
        margins = torch.tensor([p.margin for p in pairs], dtype=torch.float32)
    return SequenceBatch(input_ids, attention_mask,
                         ScoredTokens.from_lists(rows, positions, targets, rows, len(sequences)),
                         torch.tensor([len(b) for _, b in sequences]), margins,
                         sum(len(a) + len(b) for a, b in sequences))


# ---------------------------------------------------------------- shared-prompt batches

# Segment labels of a shared-prompt row.
PROMPT, CHOSEN, REJECTED, PADDING = 0, 1, 2, -1

@dataclass
class SharedPromptBatch:
    """Each pair as one row: prompt, then chosen, then rejected, right-padded.

    The prompt appears once. Chosen tokens take positions right after the prompt, rejected tokens
    take the same positions again (RoPE positions restart after the prompt) and may not attend to
    the chosen tokens (``shared_prompt_mask``), so every token attends to exactly what it attends
    to in its own full sequence: hidden states, the loss and its gradient equal those of the plain
    two-sequence layout up to float rounding, while the prompt's forward and backward run once
    instead of twice. The prompt's keys and values are ordinary activations of this forward, so
    the gradient of both answers flows back through them.
    """

    input_ids: Tensor  # [B, T]
    position_ids: Tensor  # [B, T]
    segments: Tensor  # [B, T]: PROMPT, CHOSEN, REJECTED or PADDING
    chosen_last: Tensor  # [B]: position of the chosen answer's last token
    rejected_last: Tensor  # [B]
    # the answer tokens: each is predicted from the previous position, except the rejected
    # answer's first token, which the prompt's last position predicts (as it does the chosen
    # answer's first token); slot = row for chosen tokens, B + row for rejected ones
    scored: ScoredTokens
    completion_lengths: Tensor  # [2B]: chosen answers first, then rejected
    margins: Tensor | None  # [B]
    real_tokens: int  # tokens in this layout (the prompt counted once)

    def to(self, device) -> "SharedPromptBatch":
        return SharedPromptBatch(
            *(on_device(t, device) for t in (self.input_ids, self.position_ids, self.segments,
                                            self.chosen_last, self.rejected_last)),
            self.scored.to(device), on_device(self.completion_lengths, device),
            on_device(self.margins, device), self.real_tokens)


def collate_shared_prompt(pairs: Sequence[TokenizedPair], pad_token_id: int,
                          width_multiple: int = 1) -> SharedPromptBatch:
    width = padded_width(max(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids)
                             for p in pairs), width_multiple)
    shape = (len(pairs), width)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    segments = torch.full(shape, PADDING, dtype=torch.long)
    chosen_last = torch.zeros(len(pairs), dtype=torch.long)
    rejected_last = torch.zeros(len(pairs), dtype=torch.long)
    rows, positions, targets, slots = [], [], [], []
    for row, pair in enumerate(pairs):
        n_p, n_c, n_r = len(pair.prompt_ids), len(pair.chosen_ids), len(pair.rejected_ids)
        n = n_p + n_c + n_r
        input_ids[row, :n] = torch.tensor(pair.prompt_ids + pair.chosen_ids + pair.rejected_ids)
        position_ids[row, :n_p + n_c] = torch.arange(n_p + n_c)
        position_ids[row, n_p + n_c:n] = torch.arange(n_p, n_p + n_r)
        # padding repeats the row's last position: real tokens never attend to it, and a
        # position past the real ones would index past a learned position table or change a
        # dynamic RoPE's scaling for the whole batch
        position_ids[row, n:] = n_p + n_r - 1
        segments[row, :n_p] = PROMPT
        segments[row, n_p:n_p + n_c] = CHOSEN
        segments[row, n_p + n_c:n] = REJECTED
        chosen_last[row], rejected_last[row] = n_p + n_c - 1, n - 1
        rows += [row] * (n_c + n_r)
        positions += list(range(n_p - 1, n_p + n_c - 1))
        positions += ([n_p - 1] + list(range(n_p + n_c, n - 1)))[:n_r]
        targets += pair.chosen_ids + pair.rejected_ids
        slots += [row] * n_c + [len(pairs) + row] * n_r
    margins = None
    if all(p.margin is not None for p in pairs):
        margins = torch.tensor([p.margin for p in pairs], dtype=torch.float32)
    return SharedPromptBatch(input_ids, position_ids, segments, chosen_last, rejected_last,
                             ScoredTokens.from_lists(rows, positions, targets, slots,
                                                     2 * len(pairs)),
                             torch.tensor([len(p.chosen_ids) for p in pairs]
                                          + [len(p.rejected_ids) for p in pairs]),
                             margins, sum(p.layout_length(True) for p in pairs))


def collate(pairs: Sequence[TokenizedPair], pad_token_id: int, shared_prompt: bool,
            width_multiple: int = 1) -> SequenceBatch | SharedPromptBatch:
    """A micro-batch in the plain layout (chosen rows, then rejected rows) or the shared-prompt
    one (a row per pair, prompt once), its width rounded up to a multiple of ``width_multiple``."""
    return collate_shared_prompt(pairs, pad_token_id, width_multiple) if shared_prompt \
        else collate_pairs(pairs, pad_token_id, width_multiple)


def shared_prompt_usable(model: nn.Module, wanted: bool, log=None, recipe: str = "") -> bool:
    """Whether a recipe that ``wanted`` the shared-prompt layout can have it: the model's
    attention must take a ready 4-D mask. Says why not."""
    attention = attention_implementation(model)
    if wanted and attention not in MASK_4D_ATTENTION:
        if log is not None:
            log.warning("%s: %r attention cannot take the shared-prompt mask; using the plain "
                        "two-sequence forward", recipe, attention)
        return False
    return wanted


def shared_prompt_mask(segments: Tensor, attention: str, dtype: torch.dtype) -> Tensor:
    """The 4-D attention mask [B, 1, T, T] of a shared-prompt batch: causal, except that rejected
    tokens do not see chosen ones. Padding sits after every real token, so causality alone keeps
    it out of real tokens' view, and each padding query still sees at least itself (no all-masked
    row, which would give NaN)."""
    if attention not in MASK_4D_ATTENTION:
        raise TrainingError(f"the shared-prompt forward needs one of {MASK_4D_ATTENTION} "
                            f"attention, not {attention!r}; set shared_prompt: false")
    across = (segments[:, :, None] == REJECTED) & (segments[:, None, :] == CHOSEN)
    return mask_for(causal_pairs(segments.shape[1], segments.device)[None] & ~across,
                    attention, dtype)


def width_multiple(setting: int, device: torch.device) -> int:
    """A config's ``pad_multiple``: 0 means 64 on a GPU (where cuDNN attention plans per shape)
    and none on CPU."""
    return setting or (64 if device.type == "cuda" else 1)
