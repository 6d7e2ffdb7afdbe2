"""What the DPO and reward-model recipes share: preference pairs tokenised with the chat template,
length-aware micro-batches, log-probs without full-vocabulary logits, the optimiser and schedule.
Checkpoints and the metrics log are in ``checkpoints``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Sequence

import torch
from torch import Tensor, nn

from ablate.train import fsdp


class TrainingError(RuntimeError):
    pass


# ---------------------------------------------------------------- tokenising preference pairs


@dataclass(frozen=True)
class TokenizedPair:
    index: int  # row number in the data the pair came from
    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...]
    margin: float | None = None

    @property
    def length(self) -> int:
        """Tokens of the longer of the two sequences: what the pair costs in a padded batch."""
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))

    def layout_length(self, shared_prompt: bool) -> int:
        """Tokens of the pair's row in a shared-prompt batch, or of its longer sequence."""
        if shared_prompt:
            return len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)
        return self.length

    @property
    def real_tokens(self) -> int:
        return 2 * len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)


def as_messages(value: Any, role: str) -> list[dict] | None:
    """Rows carry chat messages; a bare string is one message of ``role``. None when empty."""
    if isinstance(value, str):
        value = [{"role": role, "content": value}] if value.strip() else []
    if not isinstance(value, list) or not value:
        return None
    for message in value:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) \
                or "role" not in message:
            return None
    if not any(m["content"].strip() for m in value):
        return None
    return value


def encode_chat(tokenizer, prompt: list[dict], answers: list[list[dict]], where: str = ""):
    """Token ids of the prompt (with the generation prompt) and of each answer's completion: the
    template's text after the generation prompt, end-of-turn tokens included."""
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    completions = []
    for answer in answers:
        full = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
        if not full.startswith(prompt_text):
            raise TrainingError(f"{where or 'a row'}: the chat template renders the prompt "
                                "differently once an answer follows; cannot split off the "
                                "completion")
        completions.append(tokenizer(full[len(prompt_text):], add_special_tokens=False)
                           ["input_ids"])
    return (tokenizer(prompt_text, add_special_tokens=False)["input_ids"], *completions)


def tokenize_pairs(rows: Sequence[dict], tokenizer, max_length: int, max_prompt_length: int,
                   drop_truncated: bool = False) -> tuple[list[TokenizedPair], Counter]:
    """Apply the chat template and split each row into prompt, chosen and rejected token ids.

    The completion is the template's text after the generation prompt, so the end-of-turn tokens
    are trained on and the prompt is not. Over-long pairs lose the start of the prompt (down to
    ``max_prompt_length``) and then the end of the completions, as the paper's training code does;
    with ``drop_truncated`` (the paper's RM recipe) they are dropped instead. Returns the pairs and
    a count of skipped rows by reason; nothing is skipped silently.
    """
    skipped: Counter = Counter()
    pairs: list[TokenizedPair] = []
    for index, row in enumerate(rows):
        prompt = as_messages(row.get("prompt"), "user") if isinstance(row, dict) else None
        chosen = as_messages(row.get("chosen"), "assistant") if isinstance(row, dict) else None
        rejected = as_messages(row.get("rejected"), "assistant") if isinstance(row, dict) else None
        if prompt is None or chosen is None or rejected is None:
            field = "prompt" if prompt is None else "chosen" if chosen is None else "rejected"
            skipped[f"empty or missing {field}"] += 1
            continue
        if chosen == rejected:
            skipped["identical chosen and rejected"] += 1
            continue
        prompt_ids, chosen_ids, rejected_ids = encode_chat(tokenizer, prompt, [chosen, rejected],
                                                           where=f"row {index}")
        too_long = len(prompt_ids) + max(len(chosen_ids), len(rejected_ids)) > max_length
        if too_long and drop_truncated:
            skipped["longer than max_length"] += 1
            continue
        if too_long:
            prompt_ids = prompt_ids[-max_prompt_length:]
            room = max_length - len(prompt_ids)
            chosen_ids, rejected_ids = chosen_ids[:room], rejected_ids[:room]
        if not chosen_ids or not rejected_ids:
            skipped["fully truncated by max_length"] += 1
            continue
        if chosen_ids == rejected_ids:
            skipped["identical after truncation"] += 1
            continue
        margin = row.get("margin")
        pairs.append(TokenizedPair(index, tuple(prompt_ids), tuple(chosen_ids),
                                   tuple(rejected_ids), None if margin is None else float(margin)))
    return pairs, skipped


def split_heldout(pairs: list[TokenizedPair], fraction: float, seed: int):
    """A seeded held-out slice (at least one pair when ``fraction`` > 0 and two pairs exist)."""
    if fraction <= 0 or len(pairs) < 2:
        return pairs, []
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(pairs) - 1, max(1, round(fraction * len(pairs))))
    held = set(order[:n_eval])
    return ([p for i, p in enumerate(pairs) if i not in held],
            [p for i, p in enumerate(pairs) if i in held])


def pairs_digest(pairs: Iterable[TokenizedPair]) -> str:
    digest = hashlib.sha256()
    for p in pairs:
        digest.update(json.dumps([p.index, p.prompt_ids, p.chosen_ids, p.rejected_ids]).encode())
    return digest.hexdigest()


# ---------------------------------------------------------------- batching


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The pair order of one epoch: a pure function of (seed, epoch), so a resumed run sees the
    same batches as an uninterrupted one."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def plan_batches(n_pairs: int, batch_size: int, epochs: float, seed: int,
                 lengths: Sequence[int] | None = None, length_grouping: int = 0
                 ) -> list[list[int]]:
    """All optimiser steps of the run, each a list of pair positions; a fractional epoch count
    stops part-way through the last epoch.

    With ``lengths`` and ``length_grouping`` > 1, each epoch's shuffled order is cut into windows
    of ``length_grouping`` batches, each window is sorted by length and cut into batches, and the
    epoch's batches are shuffled again: a batch holds pairs of similar length (little padding)
    while every pair is still seen once per epoch in a seeded random order of batches."""
    steps_per_epoch = math.ceil(n_pairs / batch_size)
    total = max(1, math.ceil(epochs * steps_per_epoch))
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < total:
        order = epoch_order(n_pairs, seed, epoch)
        if lengths is not None and length_grouping > 1:
            batches += _length_grouped(order, lengths, batch_size, length_grouping, seed, epoch)
        else:
            batches += [order[i:i + batch_size] for i in range(0, n_pairs, batch_size)]
        epoch += 1
    return batches[:total]


def _length_grouped(order: list[int], lengths: Sequence[int], batch_size: int, grouping: int,
                    seed: int, epoch: int) -> list[list[int]]:
    window = batch_size * grouping
    epoch_batches = []
    for start in range(0, len(order), window):
        ranked = sorted(order[start:start + window], key=lambda i: (-lengths[i], i))
        epoch_batches += [ranked[i:i + batch_size] for i in range(0, len(ranked), batch_size)]
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch + 7_919)
    return [epoch_batches[i] for i in torch.randperm(len(epoch_batches),
                                                     generator=generator).tolist()]


def micro_batches(pairs: Sequence[TokenizedPair], positions: Sequence[int],
                  micro_batch_size: int) -> list[list[int]]:
    """Split one optimiser step's pairs into micro-batches of similar length, so that padding
    within a micro-batch is small. The step's gradient is a sum over its pairs, so how they are
    grouped does not change it."""
    ranked = sorted(positions, key=lambda i: (pairs[i].length, i))
    return [ranked[i:i + micro_batch_size] for i in range(0, len(ranked), micro_batch_size)]


def pad_sequences(sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[Tensor, Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` for token lists of unequal length."""
    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, :len(seq)] = 1
    return ids, mask


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

# Attention implementations that take a ready 4-D mask as given (transformers returns a 4-D mask
# unchanged); flash-attention kernels only read 2-D padding masks.
SHARED_PROMPT_ATTENTION = ("sdpa", "eager")


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
    prompt_lengths: Tensor  # [B]
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
                                            self.chosen_last, self.rejected_last,
                                            self.prompt_lengths)),
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
        # padding continues the row's positions (it is never attended to by real tokens)
        position_ids[row, n:] = torch.arange(n_p + n_r, n_p + n_r + width - n)
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
                             torch.tensor([len(p.prompt_ids) for p in pairs]),
                             ScoredTokens.from_lists(rows, positions, targets, slots,
                                                     2 * len(pairs)),
                             torch.tensor([len(p.chosen_ids) for p in pairs]
                                          + [len(p.rejected_ids) for p in pairs]),
                             margins, sum(p.layout_length(True) for p in pairs))


def shared_prompt_mask(segments: Tensor, attention: str, dtype: torch.dtype) -> Tensor:
    """The 4-D attention mask [B, 1, T, T] of a shared-prompt batch: causal, except that rejected
    tokens do not see chosen ones. Padding sits after every real token, so causality alone keeps
    it out of real tokens' view, and each padding query still sees at least itself (no all-masked
    row, which would give NaN)."""
    if attention not in SHARED_PROMPT_ATTENTION:
        raise TrainingError(f"the shared-prompt forward needs one of {SHARED_PROMPT_ATTENTION} "
                            f"attention, not {attention!r}; set shared_prompt: false")
    across = (segments[:, :, None] == REJECTED) & (segments[:, None, :] == CHOSEN)
    return _attention_mask(_causal(segments.shape[1], segments.device)[None] & ~across,
                           attention, dtype)


def padded_causal_mask(attention_mask: Tensor, attention: str, dtype: torch.dtype) -> Tensor:
    """The 4-D mask [B, 1, T, T] of right-padded rows (causal, padding keys hidden), for the
    attention implementations that take one. Given the 2-D mask, transformers first checks it for
    padding, which on a GPU makes the host wait for the device; others get the 2-D mask as is.
    A padding query still sees its row's real tokens (no all-masked row)."""
    if attention not in SHARED_PROMPT_ATTENTION:
        return attention_mask
    causal = _causal(attention_mask.shape[1], attention_mask.device)
    return _attention_mask(causal[None] & attention_mask.bool()[:, None, :], attention, dtype)


def _causal(width: int, device) -> Tensor:
    positions = torch.arange(width, device=device)
    return positions[None, :] <= positions[:, None]  # [query, key]


def _attention_mask(allowed: Tensor, attention: str, dtype: torch.dtype) -> Tensor:
    """[B, T, T] allowed pairs as the implementation takes them: ``sdpa`` a boolean mask (True =
    attend); ``eager`` adds the mask to its scores, so 0 / the dtype's minimum."""
    allowed = allowed[:, None]
    if attention == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
        ~allowed, torch.finfo(dtype).min)


def width_multiple(setting: int, device: torch.device) -> int:
    """A config's ``pad_multiple``: 0 means 64 on a GPU (where cuDNN attention plans per shape)
    and none on CPU."""
    return setting or (64 if device.type == "cuda" else 1)


def attention_implementation(model: nn.Module) -> str:
    return getattr(model.config, "_attn_implementation", None) or "eager"


# ---------------------------------------------------------------- log-probs


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
                 attention: Callable[[], ContextManager] = contextlib.nullcontext):
        super().__init__()
        self.lm = causal_lm
        self.chunk = chunk
        self.attention = attention  # see attention_kernel
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
        with self.attention():
            hidden = self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                        position_ids=position_ids, use_cache=False
                                        ).last_hidden_state
        logps = token_logps(hidden[scored.rows, scored.positions],
                            self.lm.get_output_embeddings().weight, scored.targets, self.chunk)
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


# ---------------------------------------------------------------- optimiser and schedule


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; biases and norms get no weight decay."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    # the fused kernel updates all parameters in a few launches; on a GPU the default foreach
    # path is several passes over the weights and optimiser state per step. Single process
    # only: the sharded (DTensor) case was not measured on a GPU here.
    fused = fsdp.world_size() == 1 and all(p.is_cuda for p in decay + no_decay)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr,
                             fused=fused or None)


def linear_warmup_decay(optimizer, total_steps: int, warmup_ratio: float):
    """Linear warm-up over ``warmup_ratio`` of the steps, then linear decay to zero."""
    warmup = math.ceil(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def compile_regions(model: nn.Module) -> int:
    """``torch.compile`` each decoder layer's MLP and RMSNorms, and the final norm, as small
    regions: in eager mode their element-wise work (SiLU times the up projection, the norms'
    float32 arithmetic, the casts) is many small kernels, each a launch and a pass over memory.
    Attention, the masks and the layer's control flow stay eager, so sequence lengths that vary
    from batch to batch do not recompile whole layers (compiling each whole layer was measured
    slower on an H200: perf/RESULTS.md). The layers share one compiled graph per region type.
    Returns how many modules were compiled."""
    compiled = 0
    for layer in fsdp.decoder_layers(model):
        for name in ("mlp", "input_layernorm", "post_attention_layernorm"):
            region = getattr(layer, name, None)
            if isinstance(region, nn.Module):
                region.compile(dynamic=True)
                compiled += 1
    if not compiled:
        raise TrainingError(f"compile_regions: {type(model).__name__}'s decoder layers have no "
                            "mlp / input_layernorm / post_attention_layernorm modules")
    norm = getattr(model.base_model, "norm", None)
    if isinstance(norm, nn.Module):
        norm.compile(dynamic=True)
        compiled += 1
    return compiled


def device_for_training() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", fsdp.local_rank())
    return torch.device("cpu")


def autocast(device: torch.device):
    """bf16 autocast on GPU; float32 on CPU (CPU bf16 is slower here and less exact)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def attention_kernel(name: str, device: torch.device) -> Callable[[], ContextManager]:
    """Contexts that restrict PyTorch's scaled-dot-product attention to one kernel for the
    forwards run inside them (the backward follows the forward's kernel). ``auto`` leaves the
    choice to PyTorch, which on recent GPUs takes cuDNN for masked attention; cuDNN builds an
    execution plan for every new shape, a cost that batches of varying length keep paying
    early in a run. ``cudnn`` and ``efficient`` exist only on CUDA: asking for them elsewhere
    is an error here rather than a failure at the first forward."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"cudnn": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "math": SDPBackend.MATH}
    if name == "auto":
        return contextlib.nullcontext
    if name not in backends:
        raise TrainingError(f"attention_kernel {name!r}: expected auto, {', '.join(backends)}")
    if device.type != "cuda" and name != "math":
        raise TrainingError(f"attention_kernel {name!r} needs a CUDA GPU; this run is on "
                            f"{device.type} (use auto or math)")
    return lambda: sdpa_kernel([backends[name]])


# ---------------------------------------------------------------- model identity


def model_identity(model_dir: Path) -> str:
    """What identifies a model's weights cheaply: its config and its weight files' sizes and
    modification times."""
    model_dir = Path(model_dir)
    parts = [(model_dir / "config.json").read_text()]
    for weights in sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin")):
        stat = weights.stat()
        parts.append(f"{weights.name}:{stat.st_size}:{int(stat.st_mtime)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()
