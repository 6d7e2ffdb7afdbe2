"""The transformers backend: its own decode loop, because generate() wastes most of a CPU's time here.

What it does that ``model.generate`` on padded batches does not:
- the token prefix every prompt shares (GSM8k's 8-shot exemplars, ~700 of ~800 tokens) is run once;
  its KV cache is copied into each new row instead of being recomputed per prompt;
- continuous batching (``_DecodeBatch``): prompts wait longest first; when a completion ends (EOS, a
  stop string, the token limit) the next prompt is prefilled into its row, and once none wait,
  finished rows leave the cache, so no step is spent on finished rows or padding;
- greedy decoding verifies drafted tokens (``PromptLookup``: what followed the same few tokens
  earlier in the prompt or reply) several at a time, which turns a small model's long repetitive
  replies into a fraction of the forwards while choosing exactly the tokens one-token steps would;
- attention reads grouped KV heads in place under a mask on the CPU (``hf_cache``);
- scoring computes logits only where they are needed: the last context position for single-token
  options (MMLU's " A".." D"), and the option positions for longer ones, the context run once per
  question for all its options.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from ablate.data.chat_tokens import decode_after
from ablate.generate.base import (
    GenerationError, Progress, SamplingParams, encode_prompt, release_accelerator_memory, row_seed,
    split_continuation, truncate_at_stop,
)
from ablate.generate.hf_cache import ATTENTION, growing_cache, register_attention


def _cache_field() -> str:
    """The name of a forward's KV cache, as keyword and as output field: ``cache`` since
    transformers 5.24, ``past_key_values`` before (the transformers that vLLM's CPU build pins)."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    fields = CausalLMOutputWithPast.__dataclass_fields__
    return "cache" if "cache" in fields else "past_key_values"


CACHE = _cache_field()


def _common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    if not seqs:
        return 0
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
        if n == 0:
            break
    return n


def pack_by_budget(lengths: Sequence[int], budget: int, max_batch: int) -> list[list[int]]:
    """Indices sorted longest first, cut into batches whose padded size stays within ``budget``."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]  # the batch's longest row
        if current and (len(current) + 1 > max_batch or (len(current) + 1) * width > budget):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class PromptLookup:
    """Draft tokens for speculative greedy decoding (prompt-lookup decoding): where the last n
    tokens (n = max_n down to 1) occurred before in the prompt or the reply, propose the tokens
    that followed them there. Small models' GSM8k replies repeat their own phrases and the
    exemplars' ("... hours * 2 hours = ..."), so many drafts are right; a wrong draft costs only
    the extra positions in one forward, never a different output."""

    def __init__(self, tokens: Sequence[int], max_n: int = 3):
        self.tokens: list[int] = []
        self.max_n = max_n
        self.follows: dict[tuple[int, ...], int] = {}  # n-gram -> where its latest successor is
        for token in tokens:
            self.append(token)

    def append(self, token: int) -> None:
        end = len(self.tokens)  # the n-grams ending here are followed by ``token``
        self.tokens.append(token)
        for n in range(1, min(self.max_n, end) + 1):
            self.follows[tuple(self.tokens[end - n:end])] = end

    def draft(self, k: int) -> list[int]:
        if k <= 0:
            return []
        for n in range(min(self.max_n, len(self.tokens)), 0, -1):
            at = self.follows.get(tuple(self.tokens[-n:]))
            if at is not None:
                return self.tokens[at:at + k]
        return []


@dataclass(eq=False)
class _Row:
    """One completion being generated."""

    prompt: int
    sample: int
    context: list[int]  # the prompt's tokens
    tokens: list[int] = field(default_factory=list)  # the reply so far (EOS left out)
    generator: torch.Generator | None = None
    lookup: PromptLookup | None = None  # greedy only: where drafts come from
    pending: int = 0  # the latest chosen token, not yet run through the model
    position: int = 0  # its position id
    picks: int = 0  # tokens chosen so far, EOS included
    limit: int = 0  # the most tokens it may choose: max_new_tokens, or less near the window


class _DecodeBatch:
    """Continuous batching over one KV cache whose row r holds active completion ``rows[r]``.

    Slots are shared across rows (slot = index in the cache), positions are per row, and
    ``valid[r, slot]`` says which slots row r attends to; the holes are a row's left padding, the
    slots after a newcomer's prompt, and rejected draft positions. When a completion ends, the next
    waiting prompt (longest first) is prefilled and written into its row, so the batch stays full
    until the queue is empty; then finished rows leave the cache.

    Greedy steps feed each row its pending token plus up to ``k`` drafted tokens
    (``PromptLookup``) and keep the longest run of drafts the model itself would have chosen, plus
    the model's next choice: the same tokens as one-token steps, in fewer forwards. ``k`` shrinks
    as rows grow so rows x (1 + k) stays within ``step_tokens``: on a CPU each extra position in a
    forward costs a few % of one (measured: 30 layers' matmuls at 2 rows 75 ms, at 16 rows 120 ms
    for SmolLM2), but not nothing."""

    spare_slots = 64  # room reserved beyond prompt + reply (rejected drafts use some)
    min_holes = 64  # drop holes once a row's cache has this many (and >= 1/8 of it)

    def __init__(self, backend: "HFBackend", prefix_len: int, prefix_kv, params: SamplingParams):
        self.backend, self.params = backend, params
        self.prefix_len, self.prefix_kv = prefix_len, prefix_kv
        self.device = backend.device
        self.rows: list[_Row] = []
        self.cache = None
        self.valid: torch.Tensor | None = None  # [rows, room] bool
        self.stop_window = max((len(s) for s in params.stop), default=0) + 8

    # ------------------------------------------------------------------ the loop
    def run(self, rows: list[_Row], progress: Progress | None) -> None:
        waiting = deque(sorted(rows, key=lambda r: -len(r.context)))  # longest first
        self.max_reply = max(r.limit for r in rows)
        width = max(len(r.context) + r.limit for r in rows)
        slots = max(1, min(self.backend.max_batch, self.backend.token_budget // width))
        finished = 0

        def report(count: int) -> None:
            nonlocal finished
            finished += count
            if progress and count:
                progress(finished, len(rows))

        report(self._fill(list(range(slots)), waiting))
        while self.rows:
            ended = self._step()
            report(len(ended))
            free = ended
            if waiting:
                report(self._fill(ended, waiting))
                free = [r for r in ended if self.rows[r] is None]
            if free:
                keep = [r for r in range(len(self.rows)) if r not in set(free)]
                self._select(keep)

    def _fill(self, free: list[int], waiting: deque) -> int:
        """Prefill waiting prompts into the free rows (row indices, or fresh rows while the cache
        is empty); return how many of them ended at their first token."""
        ended_now = 0
        for r in free:
            if self.cache is not None:
                self.rows[r] = None  # type: ignore[call-overload]
        while free and waiting:
            group = [waiting.popleft() for _ in range(min(len(free), len(waiting)))]
            cache, mask, logits = self._prefill(group)
            picks = self.backend._pick(logits, self.params, [g.generator for g in group])
            live = []
            for k, (row, token) in enumerate(zip(group, picks)):
                row.position = len(row.context)
                if self.params.greedy:
                    row.lookup = PromptLookup(row.context)
                if self._accept(row, [token]):
                    ended_now += 1
                else:
                    live.append(k)
            if not live:
                continue
            first = self.cache is None
            self._place(cache, mask, live, [group[k] for k in live], free[:len(live)])
            # A first group with rows that ended at once leaves the batch smaller (rows are only
            # ever refilled in place), rather than growing the cache by rows.
            free = [] if first else free[len(live):]
        return ended_now

    def _prefill(self, group: list[_Row]):
        backend, n = self.backend, len(group)
        ids, mask, positions = backend._left_padded([r.context[self.prefix_len:] for r in group],
                                                    self.prefix_len)
        room = mask.shape[1] + (self.max_reply + self.spare_slots if self.cache is None else 0)
        cache = (backend._expanded_cache(self.prefix_kv, n, room) if self.prefix_kv
                 else growing_cache(room))
        out = backend.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                            **{CACHE: cache}, use_cache=True, logits_to_keep=1)
        return cache, mask.bool(), out.logits[:, -1, :]

    def _place(self, cache, mask: torch.Tensor, live: list[int], rows: list[_Row],
               targets: list[int]) -> None:
        if self.cache is None:  # the first group's cache becomes the batch's
            if len(live) < mask.shape[0]:
                cache.batch_select_indices(torch.tensor(live, device=self.device))
            self.cache, self.rows = cache, rows
            room = cache.layers[0]._keys.shape[-2]
            self.valid = torch.zeros((len(rows), room), dtype=torch.bool, device=self.device)
            self.valid[:, :mask.shape[1]] = mask[live]
            return
        index = torch.tensor(live, device=self.device)
        where = torch.tensor(targets, device=self.device)
        width = mask.shape[1]
        for layer, new in zip(self.cache.layers, cache.layers):
            layer.write_rows(where, new.keys[index], new.values[index])
        self._grow_valid(self.cache.get_seq_length())
        self.valid[where] = False
        self.valid[where, :width] = mask[index]
        for r, row in zip(targets, rows):
            self.rows[r] = row

    def _select(self, keep: list[int]) -> None:
        if not keep:
            self.rows = []
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.cache.batch_select_indices(index)
        self.valid = self.valid[index]
        self.rows = [self.rows[r] for r in keep]

    # ------------------------------------------------------------------ one step
    def _draft_limit(self) -> int:
        if not self.params.greedy:
            return 0
        backend = self.backend
        return max(0, min(backend.max_draft, backend.step_tokens // len(self.rows) - 1))

    def _step(self) -> list[int]:
        """One forward for every active row; return the rows that ended."""
        limit = self._draft_limit()
        drafts = [row.lookup.draft(min(limit, row.limit - row.picks - 1))
                  if limit else [] for row in self.rows]
        width = 1 + max(len(d) for d in drafts)
        pad = self.backend.pad_id
        ids = torch.tensor([[row.pending] + d + [pad] * (width - 1 - len(d))
                            for row, d in zip(self.rows, drafts)], device=self.device)
        # A row's pad slots repeat its last real position: counting on past it could run beyond
        # the model's window (learned position tables, dynamic RoPE); they are rejected anyway.
        positions = torch.tensor([[row.position + min(k, len(d)) for k in range(width)]
                                  for row, d in zip(self.rows, drafts)], device=self.device)
        start = self._ensure_room(width)
        self.valid[:, start:start + width] = True
        out = self.backend.model(input_ids=ids, attention_mask=self.valid[:, :start + width],
                                 position_ids=positions, **{CACHE: self.cache}, use_cache=True)
        if self.params.greedy:
            choices = out.logits.argmax(dim=-1).tolist()
        else:
            choices = [[t] for t in self.backend._pick(out.logits[:, -1, :], self.params,
                                                       [r.generator for r in self.rows])]
        ended = []
        for r, (row, draft, chosen) in enumerate(zip(self.rows, drafts, choices)):
            accepted = 0
            while accepted < len(draft) and draft[accepted] == chosen[accepted]:
                accepted += 1
            # Slots of the pending token and the accepted drafts stay; the rest become holes.
            self.valid[r, start + accepted + 1:start + width] = False
            row.position += accepted + 1
            if self._accept(row, chosen[:accepted + 1]):
                ended.append(r)
        return ended

    def _accept(self, row: _Row, chosen: list[int]) -> bool:
        """Append chosen tokens to a row in order; True when the row has ended (EOS, a stop
        string, or the token limit), later tokens then being dropped."""
        params, tokenizer = self.params, self.backend.tokenizer
        for token in chosen:
            row.picks += 1
            if token in self.backend.eos_ids:
                return True
            row.tokens.append(token)
            if row.lookup is not None:
                row.lookup.append(token)
            if params.stop:
                cut = max(0, len(row.tokens) - self.stop_window)
                before = row.tokens[max(0, cut - 4):cut]  # decoded with the tail, then cut off
                if len(before) < 4:
                    before = row.context[len(before) - 4:] + before
                tail = decode_after(tokenizer, before, row.tokens[cut:], context_tokens=4)
                if any(s in tail for s in params.stop):
                    return True
            if row.picks >= row.limit:
                return True
        row.pending = chosen[-1]
        return False

    def _ensure_room(self, adding: int) -> int:
        """Room for ``adding`` more slots; return where they start. Drops the holes first once
        they are many: every step's attention reads them (masked) for every row."""
        length = self.cache.get_seq_length()
        counts = self.valid[:, :length].sum(dim=1)
        width = int(counts.max())
        if length - width >= max(self.min_holes, length // 8):
            # Each row's attended slots, in order, moved to the front; the rest become holes.
            index = torch.sort((~self.valid[:, :length]).to(torch.int8), dim=1,
                               stable=True).indices[:, :width]
            for layer in self.cache.layers:
                layer.gather_slots(index)
            self.valid.zero_()
            self.valid[:, :width] = torch.arange(width, device=self.device) < counts[:, None]
            length = width
        self._grow_valid(length + adding)
        return length

    def _grow_valid(self, slots: int) -> None:
        if slots > self.valid.shape[1]:
            extra = max(slots - self.valid.shape[1], self.valid.shape[1] // 2)
            self.valid = torch.cat([self.valid, self.valid.new_zeros((len(self.rows), extra))],
                                   dim=1)


class HFBackend:
    name = "hf"

    def __init__(self, model_dir: Path | str, device: str | None = None,
                 dtype: torch.dtype | None = None, token_budget: int = 24576, max_batch: int = 64,
                 min_shared_prefix: int = 32, max_draft: int = 6,
                 step_tokens: int | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_dir = Path(model_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        register_attention()
        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype,
                                                          attn_implementation=ATTENTION)
        self.model.to(self.device).eval()
        self.token_budget, self.max_batch = token_budget, max_batch
        # Scoring on a CPU is fastest in small batches (measured with SmolLM2 on MMLU prompts of
        # ~140 tokens: 22 s at 8 rows, 28 s at 16, 55 s at 64); a GPU wants them large.
        self.score_max_batch = max_batch if self.device.type == "cuda" else min(max_batch, 8)
        self.min_shared_prefix = min_shared_prefix
        # Greedy decoding drafts up to ``max_draft`` tokens per row (0: off), keeping rows x
        # (1 + drafts) <= ``step_tokens``: a CPU pays a little for every position in a forward, a
        # GPU barely notices a few hundred.
        self.max_draft = max_draft
        self.step_tokens = step_tokens or (512 if self.device.type == "cuda" else 16)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id or 0
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None:
            eos.append(self.tokenizer.eos_token_id)
        self.eos_ids = set(eos)

    def close(self) -> None:
        self.model = None
        release_accelerator_memory()

    # ------------------------------------------------------------------ helpers
    def encode(self, text: str) -> list[int]:
        return encode_prompt(self.tokenizer, text)

    def _prefix_cache(self, prefix: list[int]):
        out = self.model(input_ids=torch.tensor([prefix], device=self.device), use_cache=True,
                         logits_to_keep=1)
        return [(layer.keys, layer.values) for layer in getattr(out, CACHE).layers]

    def _expanded_cache(self, prefix_kv, rows: int, capacity: int | None = None):
        from transformers import DynamicCache

        cache = growing_cache(capacity) if capacity else DynamicCache()
        for index, (keys, values) in enumerate(prefix_kv):
            cache.update(keys.expand(rows, -1, -1, -1).contiguous(),
                         values.expand(rows, -1, -1, -1).contiguous(), index)
        return cache

    def _left_padded(self, rows: list[list[int]], prefix_len: int):
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), prefix_len + width), dtype=torch.long)
        mask[:, :prefix_len] = 1
        for k, r in enumerate(rows):
            ids[k, width - len(r):] = torch.tensor(r)
            mask[k, prefix_len + width - len(r):] = 1
        positions = (mask.cumsum(1) - 1).clamp(min=0)[:, prefix_len:]
        return ids.to(self.device), mask.to(self.device), positions.to(self.device)

    # ---------------------------------------------------------------- generation
    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], params: SamplingParams,
                 progress: Progress | None = None) -> list[list[str]]:
        if not prompts:
            return []
        encoded = [self.encode(p) for p in prompts]
        if min(len(e) for e in encoded) == 0:
            raise GenerationError("an empty prompt cannot be continued")
        # Keep at least one token per prompt outside the prefix: its logits start the reply.
        shared = min(_common_prefix_len(encoded), min(len(e) for e in encoded) - 1)
        prefix_len = shared if shared >= self.min_shared_prefix else 0
        prefix_kv = self._prefix_cache(encoded[0][:prefix_len]) if prefix_len else None
        window = getattr(self.model.config, "max_position_embeddings", None)
        limits = [params.max_new_tokens if window is None
                  else min(params.max_new_tokens, window - len(e)) for e in encoded]
        if min(limits) <= 0:
            k = limits.index(min(limits))
            raise GenerationError(f"prompt {k} has {len(encoded[k])} tokens: it fills the model's "
                                  f"{window}-token window and leaves no room for a reply")
        # A reply ends at the window (as vLLM's do), not past the positions the model knows.
        rows = [_Row(i, j, encoded[i], limit=limits[i])
                for i in range(len(prompts)) for j in range(params.n)]
        if not params.greedy:
            for row in rows:
                row.generator = torch.Generator(device=self.device).manual_seed(
                    row_seed(params.seed, row.prompt, row.sample))
        _DecodeBatch(self, prefix_len, prefix_kv, params).run(rows, progress)
        results: list[list[str]] = [[""] * params.n for _ in prompts]
        for row in rows:
            results[row.prompt][row.sample] = truncate_at_stop(
                decode_after(self.tokenizer, row.context, row.tokens), params.stop)
        return results

    def _pick(self, logits: torch.Tensor, params: SamplingParams,
              generators: Sequence[torch.Generator | None]) -> list[int]:
        """One token per row from its next-token logits ``[rows, vocab]``."""
        if params.greedy:
            return logits.argmax(dim=-1).tolist()
        probs = torch.softmax(logits.float() / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs > params.top_p
            sorted_probs[outside] = 0.0
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        return [int(torch.multinomial(probs[k], 1, generator=g)[0])
                for k, g in enumerate(generators)]

    # ------------------------------------------------------------------- scoring
    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        return split_continuation(self.tokenizer, context, continuation)

    @torch.inference_mode()
    def loglikelihood(self, requests: Sequence[tuple[str, Sequence[str]]],
                      progress: Progress | None = None) -> list[list[float]]:
        pairs = []
        for r, (context, options) in enumerate(requests):
            encoded = [self._encode_pair(context, o) for o in options]
            if not encoded or any(not c or not o for c, o in encoded):
                raise GenerationError(f"request {r}: empty context or continuation")
            pairs.append(encoded)
        results: list[list[float]] = [[] for _ in requests]
        single = [r for r, enc in enumerate(pairs)
                  if all(len(o) == 1 and c == enc[0][0] for c, o in enc)]
        multi = [r for r in range(len(pairs)) if r not in set(single)]
        done = 0
        if single:
            lengths = [len(pairs[r][0][0]) for r in single]
            for batch in pack_by_budget(lengths, self.token_budget, self.score_max_batch):
                members = [single[k] for k in batch]
                logprobs = torch.log_softmax(
                    self._last_token_logits([pairs[r][0][0] for r in members]), dim=-1)
                for local, r in enumerate(members):
                    results[r] = [float(logprobs[local, o[0]]) for _, o in pairs[r]]
                done += len(members)
                if progress:
                    progress(done, len(requests))
        for r in multi:
            results[r] = self._score_options(pairs[r])
            done += 1
            if progress:
                progress(done, len(requests))
        return results

    def _last_token_logits(self, rows: list[list[int]]) -> torch.Tensor:
        """Next-token logits after each row. Rows are right-padded and run without an attention
        mask: causal attention never lets a real token see the padding after it, and without a
        mask SDPA takes its fused causal kernel instead of the much slower masked path. Only the
        last real position of each row goes through the output layer."""
        decoder, head = self.model.get_decoder(), self.model.get_output_embeddings()
        if decoder is None or head is None or getattr(self.model.config, "final_logit_softcapping",
                                                      None):
            ids, mask, positions = self._left_padded(rows, 0)
            return self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                              logits_to_keep=1).logits[:, -1, :].float()
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        for k, r in enumerate(rows):
            ids[k, :len(r)] = torch.tensor(r)
        hidden = decoder(input_ids=ids.to(self.device), use_cache=False).last_hidden_state
        last = torch.tensor([len(r) - 1 for r in rows], device=self.device)
        return head(hidden[torch.arange(len(rows), device=self.device), last]).float()

    def _score_options(self, encoded: list[tuple[list[int], list[int]]]) -> list[float]:
        scores: list[float] = [0.0] * len(encoded)
        by_context: dict[tuple[int, ...], list[int]] = {}
        for k, (context, _) in enumerate(encoded):
            by_context.setdefault(tuple(context), []).append(k)
        for context, members in by_context.items():
            out = self.model(input_ids=torch.tensor([list(context)], device=self.device),
                             use_cache=True, logits_to_keep=1)
            first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
            options = [encoded[k][1] for k in members]
            longest = max(len(o) for o in options)
            for k, o in zip(members, options):
                scores[k] = float(first[o[0]])
            if longest == 1:
                continue
            kv = [(layer.keys, layer.values) for layer in getattr(out, CACHE).layers]
            cache = self._expanded_cache(kv, len(members))
            width = longest - 1  # the last token of an option is predicted, never fed
            ids = torch.full((len(members), width), self.pad_id, dtype=torch.long)
            mask = torch.ones((len(members), len(context) + width), dtype=torch.long)
            for m, o in enumerate(options):
                ids[m, :len(o) - 1] = torch.tensor(o[:-1])
                mask[m, len(context) + len(o) - 1:] = 0
            positions = torch.arange(len(context), len(context) + width).expand(len(members), -1)
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                position_ids=positions.to(self.device), **{CACHE: cache},
                                use_cache=True).logits.float()
            logprobs = torch.log_softmax(logits, dim=-1)
            for m, (k, o) in enumerate(zip(members, options)):
                if len(o) > 1:
                    targets = torch.tensor(o[1:], device=self.device)
                    scores[k] += float(logprobs[m, torch.arange(len(o) - 1), targets].sum())
        return scores
