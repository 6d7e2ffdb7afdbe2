"""The one interface every generation backend offers: batched sampling and log-likelihood scoring.

Prompts are plain strings that already carry the model's chat template where a benchmark wants one
(``chat_prompt``), so the backend never guesses; stop strings cut a completion where lm-eval would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

from ablate.data.chat_tokens import encode_chat_text
from ablate.spec.seeds import derive_seed

Progress = Callable[[int, int], None]


class GenerationError(RuntimeError):
    pass


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    n: int = 1  # samples per prompt
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.n < 1:
            raise GenerationError(f"max_new_tokens and n must be >= 1, got {self}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise GenerationError(f"temperature must be >= 0 and top_p in (0, 1], got {self}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class Backend(Protocol):
    name: str

    def generate(self, prompts: Sequence[str], params: SamplingParams,
                 progress: Progress | None = None) -> list[list[str]]:
        """``params.n`` completions for each prompt, stop strings and EOS removed."""

    def loglikelihood(self, requests: Sequence[tuple[str, Sequence[str]]],
                      progress: Progress | None = None) -> list[list[float]]:
        """For each (context, continuations): sum of log p(continuation tokens | context)."""

    def close(self) -> None:
        """Give back the model's memory (a local grid runs its eval steps in one process)."""


def release_accelerator_memory() -> None:
    """Collect what was just dropped and return the CUDA cache, so the next step's model fits."""
    import gc

    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def row_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The sampling seed of one (prompt, sample): hashed, so that no two prompts, samples or run
    seeds share a random stream (seed s + 1 must not replay seed s's samples shifted by one)."""
    return derive_seed(seed, prompt_index, sample_index)


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """Cut at the earliest stop string, as lm-eval's ``generate_until`` does."""
    cut = len(text)
    for s in stop:
        if s:
            at = text.find(s)
            if at != -1:
                cut = min(cut, at)
    return text[:cut]


def encode_prompt(tokenizer, text: str) -> list[int]:
    """A prompt's token ids as every backend feeds them: the text's own special tokens (a chat
    template's, rendered by ``chat_prompt``) plus the BOS the tokenizer adds where the text has
    none, as training saw it (``ablate.data.chat_tokens``)."""
    return encode_chat_text(tokenizer, text)


def split_continuation(tokenizer, context: str, continuation: str
                       ) -> tuple[list[int], list[int]]:
    """Token ids of a log-likelihood request's context and of its continuation, lm-eval's way:
    trailing context whitespace moves to the continuation, and the continuation's tokens are those
    of the whole string after the context's tokens. Both are encoded by ``encode_prompt`` (one BOS
    first in each), so the continuation starts where the context's ids end."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = encode_prompt(tokenizer, context + continuation)
    context_ids = encode_prompt(tokenizer, context)
    return context_ids, whole[len(context_ids):]


def chat_prompt(tokenizer, user: str, assistant_prefix: str = "",
                system: str | None = None) -> str:
    """The model's own chat template around one user turn, ready for the assistant's reply."""
    if getattr(tokenizer, "chat_template", None) is None:
        # A base model without a template gets the Tulu format the paper's eval code falls back to.
        return f"<|user|>\n{user}\n<|assistant|>\n{assistant_prefix}"
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text + assistant_prefix


ENGINE_VARIABLE = "ABLATE_ENGINE"  # what ``auto`` means where it is set: hf or vllm
ENGINES = ("auto", "hf", "vllm")


def load_backend(model_dir: Path | str, kind: str = "auto", **options) -> Backend:
    """The engine ``kind`` names. ``auto``: ``$ABLATE_ENGINE`` where set, else vLLM on a GPU
    machine where it is installed, else transformers (on a CPU, transformers: perf/RESULTS.md,
    vLLM against lm-eval)."""
    import os

    if kind == "auto":
        kind = os.environ.get(ENGINE_VARIABLE) or "auto"
    if kind not in ENGINES:
        raise GenerationError(f"unknown engine {kind!r} (argument or ${ENGINE_VARIABLE}); "
                              f"valid: {', '.join(ENGINES)}")
    if kind == "vllm" or (kind == "auto" and _vllm_usable()):
        from ablate.generate.vllm_backend import VLLMBackend
        return VLLMBackend(model_dir, **options)
    from ablate.generate.hf import HFBackend
    return HFBackend(model_dir, **options)


def _vllm_usable() -> bool:
    from importlib.util import find_spec

    if find_spec("vllm") is None:
        return False
    import torch
    return torch.cuda.is_available()
