"""vLLM backend for GPU machines (an optional extra; never imported on CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ablate.generate.base import (
    GenerationError, Progress, SamplingParams, encode_prompt, release_accelerator_memory, row_seed,
    split_continuation, truncate_at_stop,
)


class VLLMBackend:
    name = "vllm"

    def __init__(self, model_dir: Path | str, gpu_memory_utilization: float = 0.85,
                 max_model_len: int | None = None, **_ignored):
        try:
            from vllm import LLM
        except ImportError as exc:
            raise GenerationError("the vllm backend needs `pip install vllm` on a GPU machine "
                                  f"({exc})") from None
        self.llm = LLM(model=str(model_dir), gpu_memory_utilization=gpu_memory_utilization,
                       max_model_len=max_model_len, seed=0)
        self.tokenizer = self.llm.get_tokenizer()

    def close(self) -> None:
        """Stop vLLM's engine (it runs in its own process and holds most of the GPU) before the
        next step loads a model; the engine's shutdown is not part of vLLM's stable API, so it is
        called where it exists."""
        engine = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        shutdown = getattr(engine, "shutdown", None)
        if callable(shutdown):
            shutdown()
        self.llm = None
        release_accelerator_memory()

    def generate(self, prompts: Sequence[str], params: SamplingParams,
                 progress: Progress | None = None) -> list[list[str]]:
        from vllm import SamplingParams as VSampling
        from vllm.inputs import TokensPrompt

        # One seed per prompt: vLLM draws sample j of a request from seed + j, so one seed for
        # every prompt would give the j-th samples of all prompts one stream, and run seed s + 1
        # would replay s's samples 1..n-1.
        sampling = [VSampling(n=params.n, temperature=params.temperature, top_p=params.top_p,
                              seed=None if params.greedy else row_seed(params.seed, k, 0),
                              stop=list(params.stop) or None, max_tokens=params.max_new_tokens)
                    for k in range(len(prompts))]
        inputs = [TokensPrompt(prompt_token_ids=encode_prompt(self.tokenizer, p))
                  for p in prompts]
        outputs = self.llm.generate(inputs, sampling, use_tqdm=False)
        if progress:
            progress(len(prompts), len(prompts))
        return [[truncate_at_stop(c.text, params.stop) for c in o.outputs] for o in outputs]

    def loglikelihood(self, requests: Sequence[tuple[str, Sequence[str]]],
                      progress: Progress | None = None) -> list[list[float]]:
        from vllm import SamplingParams as VSampling
        from vllm.inputs import TokensPrompt

        flat, spans = [], []
        for r, (context, options) in enumerate(requests):
            for option in options:
                # The same ids as the transformers backend scores (``split_continuation``).
                ctx, continuation = split_continuation(self.tokenizer, context, option)
                if not ctx or not continuation:
                    raise GenerationError(f"request {r}: empty context or continuation")
                whole = ctx + continuation
                flat.append(TokensPrompt(prompt_token_ids=whole))
                spans.append((len(ctx), whole))
        outputs = self.llm.generate(flat, VSampling(max_tokens=1, prompt_logprobs=0),
                                    use_tqdm=False)
        scores = [sum(o.prompt_logprobs[t][whole[t]].logprob for t in range(start, len(whole)))
                  for o, (start, whole) in zip(outputs, spans)]
        result, k = [], 0
        for _, options in requests:
            result.append(scores[k:k + len(options)])
            k += len(options)
        if progress:
            progress(len(requests), len(requests))
        return result
