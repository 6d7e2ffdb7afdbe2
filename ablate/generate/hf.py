"""The transformers backend: its own decode loop, because generate() wastes most of a CPU's time here.

What it does that ``model.generate`` on padded batches does not:
- the token prefix every prompt shares (GSM8k's 8-shot exemplars, ~700 of ~800 tokens) is run once;
  its KV cache is copied into each batch instead of being recomputed per prompt;
- prompts are sorted by length and batched to a token budget, so batches hold little padding;
- a sequence that hit EOS or a stop string leaves the batch (its rows are dropped from the cache);
- scoring computes logits only where they are needed: the last context position for single-token
  options (MMLU's " A".." D"), and the option positions for longer ones, the context run once per
  question for all its options.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import torch

from ablate.generate.base import GenerationError, Progress, SamplingParams, truncate_at_stop


def _growing_layer_class():
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A KV layer with room reserved up front. DynamicLayer appends with torch.cat, which
        re-copies the whole cache every decode step (measured here: 0.6 s of a 1.4 s step for
        SmolLM2 at 10 rows x 1300 positions); this writes the new step in place."""

        capacity = 0

        def lazy_initialization(self, key_states, value_states):
            self.device = key_states.device
            rows, heads, _, dim = key_states.shape
            self._keys = key_states.new_empty((rows, heads, self.capacity, dim))
            self._values = value_states.new_empty((rows, heads, self.capacity,
                                                   value_states.shape[-1]))
            self.length = 0
            self.is_initialized = True

        @property
        def keys(self):
            return self._keys[:, :, :self.length] if getattr(self, "is_initialized", False) else None

        @keys.setter
        def keys(self, value):
            if value is not None and getattr(self, "is_initialized", False):
                raise AttributeError("assign through update()")

        @property
        def values(self):
            return self._values[:, :, :self.length] if getattr(self, "is_initialized", False) else None

        @values.setter
        def values(self, value):
            if value is not None and getattr(self, "is_initialized", False):
                raise AttributeError("assign through update()")

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            new = key_states.shape[-2]
            if self.length + new > self._keys.shape[-2]:  # out of room: grow by half again
                extra = max(new, self._keys.shape[-2] // 2)
                self._keys = torch.cat([self._keys, self._keys.new_empty(
                    self._keys.shape[:2] + (extra, self._keys.shape[-1]))], dim=-2)
                self._values = torch.cat([self._values, self._values.new_empty(
                    self._values.shape[:2] + (extra, self._values.shape[-1]))], dim=-2)
            self._keys[:, :, self.length:self.length + new] = key_states
            self._values[:, :, self.length:self.length + new] = value_states
            self.length += new
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length if self.is_initialized else 0

        def batch_select_indices(self, indices):
            self._keys, self._values = self._keys[indices], self._values[indices]

    return GrowingLayer


def _growing_cache(capacity: int):
    from transformers import DynamicCache

    layer = _growing_layer_class()
    cache = DynamicCache()
    cache.layer_class_to_replicate = type("Sized", (layer,), {"capacity": capacity})
    return cache


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


def _row_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{prompt_index}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


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


class HFBackend:
    name = "hf"

    def __init__(self, model_dir: Path | str, device: str | None = None,
                 dtype: torch.dtype | None = None, token_budget: int = 24576, max_batch: int = 64,
                 min_shared_prefix: int = 32):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_dir = Path(model_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype,
                                                          attn_implementation="sdpa")
        self.model.to(self.device).eval()
        self.token_budget, self.max_batch = token_budget, max_batch
        # Scoring on a CPU is fastest in small batches (measured with SmolLM2 on MMLU prompts of
        # ~140 tokens: 22 s at 8 rows, 28 s at 16, 55 s at 64); a GPU wants them large.
        self.score_max_batch = max_batch if self.device.type == "cuda" else min(max_batch, 8)
        self.min_shared_prefix = min_shared_prefix
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id or 0
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None:
            eos.append(self.tokenizer.eos_token_id)
        self.eos_ids = set(eos)

    # ------------------------------------------------------------------ helpers
    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _prefix_cache(self, prefix: list[int]):
        out = self.model(input_ids=torch.tensor([prefix], device=self.device), use_cache=True,
                         logits_to_keep=1)
        return [(layer.keys, layer.values) for layer in out.cache.layers]

    def _expanded_cache(self, prefix_kv, rows: int, capacity: int | None = None):
        from transformers import DynamicCache

        cache = _growing_cache(capacity) if capacity else DynamicCache()
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

        rows = [(i, j) for i in range(len(prompts)) for j in range(params.n)]
        lengths = [len(encoded[i]) + params.max_new_tokens for i, _ in rows]
        results: list[list[str]] = [[""] * params.n for _ in prompts]
        done = 0
        for batch in pack_by_budget(lengths, self.token_budget, self.max_batch):
            texts = self._generate_batch([rows[k] for k in batch], encoded, prefix_len, prefix_kv,
                                         params)
            for k, text in zip(batch, texts):
                i, j = rows[k]
                results[i][j] = text
            done += len(batch)
            if progress:
                progress(done, len(rows))
        return results

    def _generate_batch(self, rows, encoded, prefix_len, prefix_kv, params: SamplingParams):
        n = len(rows)
        ids, mask, positions = self._left_padded([encoded[i][prefix_len:] for i, _ in rows],
                                                 prefix_len)
        capacity = ids.shape[1] + prefix_len + params.max_new_tokens
        cache = (self._expanded_cache(prefix_kv, n, capacity) if prefix_kv
                 else _growing_cache(capacity))
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                         cache=cache, use_cache=True, logits_to_keep=1)
        next_pos = positions[:, -1] + 1
        generators = None
        if not params.greedy:
            generators = [torch.Generator(device=self.device).manual_seed(_row_seed(params.seed, i, j))
                          for i, j in rows]
        tokens: list[list[int]] = [[] for _ in rows]
        alive = list(range(n))
        stop_window = max((len(s) for s in params.stop), default=0) + 8
        for step in range(params.max_new_tokens):
            chosen = self._pick(out.logits[:, -1, :], params, generators, alive)
            keep = []
            for local, row in enumerate(alive):
                token = int(chosen[local])
                if token in self.eos_ids:
                    continue
                tokens[row].append(token)
                if params.stop:
                    tail = self.tokenizer.decode(tokens[row][-stop_window:],
                                                 skip_special_tokens=True)
                    if any(s in tail for s in params.stop):
                        continue
                keep.append(local)
            if not keep or step == params.max_new_tokens - 1:
                break
            if len(keep) < len(alive):  # finished sequences leave the batch
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                mask, next_pos, chosen = mask[index], next_pos[index], chosen[index]
                alive = [alive[k] for k in keep]
            mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=1)
            out = self.model(input_ids=chosen[:, None], attention_mask=mask,
                             position_ids=next_pos[:, None], cache=cache, use_cache=True)
            next_pos = next_pos + 1
        return [truncate_at_stop(self.tokenizer.decode(t, skip_special_tokens=True), params.stop)
                for t in tokens]

    def _pick(self, logits: torch.Tensor, params: SamplingParams, generators, alive):
        if params.greedy:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits.float() / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs > params.top_p
            sorted_probs[outside] = 0.0
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        return torch.stack([torch.multinomial(probs[k], 1, generator=generators[row])[0]
                            for k, row in enumerate(alive)])

    # ------------------------------------------------------------------- scoring
    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        # lm-eval's convention: trailing context whitespace moves to the continuation, and the
        # continuation's tokens are those of the whole string after the context's tokens.
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.encode(context + continuation)
        context_ids = self.encode(context)
        return context_ids, whole[len(context_ids):]

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
            kv = [(layer.keys, layer.values) for layer in out.cache.layers]
            cache = self._expanded_cache(kv, len(members))
            width = longest - 1  # the last token of an option is predicted, never fed
            ids = torch.full((len(members), width), self.pad_id, dtype=torch.long)
            mask = torch.ones((len(members), len(context) + width), dtype=torch.long)
            for m, o in enumerate(options):
                ids[m, :len(o) - 1] = torch.tensor(o[:-1])
                mask[m, len(context) + len(o) - 1:] = 0
            positions = torch.arange(len(context), len(context) + width).expand(len(members), -1)
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                position_ids=positions.to(self.device), cache=cache,
                                use_cache=True).logits.float()
            logprobs = torch.log_softmax(logits, dim=-1)
            for m, (k, o) in enumerate(zip(members, options)):
                if len(o) > 1:
                    targets = torch.tensor(o[1:], device=self.device)
                    scores[k] += float(logprobs[m, torch.arange(len(o) - 1), targets].sum())
        return scores
