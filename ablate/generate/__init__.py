"""Generation backends: batched sampling and log-likelihood scoring (transformers or vLLM)."""

from ablate.generate.base import (
    Backend, GenerationError, SamplingParams, chat_prompt, load_backend, truncate_at_stop,
)

__all__ = ["Backend", "GenerationError", "SamplingParams", "chat_prompt", "load_backend",
           "truncate_at_stop"]
