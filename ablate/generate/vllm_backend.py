"""The vLLM backend: the same prompts, token ids, stops and scores as the transformers backend, with
vLLM's engine doing the forwards (an optional install: ``make setup-vllm``, README).

Both backends feed the ids ``encode_prompt`` makes and turn generated ids into text with the same
``decode_after`` and stop cut, so a greedy reply differs only where the two engines' arithmetic
picks another token. The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): no
spawned engine core, so a caller needs no ``__main__`` guard, and PPO can load its policy's weights
into the engine's model in place (``ablate.train.rollout.VLLMGenerator``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ablate.data.chat_tokens import decode_after
from ablate.generate.base import (
    GenerationError, Progress, SamplingParams, encode_prompt, release_accelerator_memory, row_seed,
    split_continuation, truncate_at_stop,
)

INSTALL = "make setup-vllm (a separate environment, .venv-vllm; README, Install)"
# The CPU build's KV cache (GiB), unless the environment sets VLLM_CPU_KVCACHE_SPACE: room for
# ~45k tokens of a 135M model in float32, small beside the machine's memory.
CPU_KV_CACHE_GIB = "2"


def import_vllm():
    """The vllm module, or one GenerationError naming the install command."""
    try:
        import vllm
    except ImportError as exc:
        raise GenerationError(f"the vllm engine is selected but vLLM is not installed ({exc}); "
                              f"install it with: {INSTALL}") from None
    return vllm


def start_engine(model_dir: Path | str, *, max_model_len: int | None = None,
                 gpu_memory_utilization: float = 0.85, dtype: str = "auto", seed: int = 0):
    """A vLLM ``LLM`` on ``model_dir`` in this process, or a GenerationError naming the model and
    vLLM's reason. float32 on a CPU (as the transformers backend computes there), the model's
    own dtype on a GPU."""
    import torch

    vllm = import_vllm()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)
    options = {"gpu_memory_utilization": gpu_memory_utilization} if on_gpu else {}
    try:
        return vllm.LLM(model=str(model_dir), max_model_len=max_model_len, seed=seed,
                        dtype=("float32" if dtype == "auto" and not on_gpu else dtype),
                        enforce_eager=not on_gpu, **options)
    except Exception as exc:  # vLLM raises many types (ValueError, OSError, RuntimeError, ...)
        raise GenerationError(f"vLLM cannot load the model {model_dir}: "
                              f"{engine_failure(exc)}") from None


def engine_failure(exc: Exception, limit: int = 400) -> str:
    """vLLM's reason in one line: a config's validation message (pydantic's text around it is
    boilerplate), else the exception's last line; cut at ``limit`` characters (an unsupported
    architecture's message lists every supported one)."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            reason = "; ".join(str(e.get("msg", e)) for e in errors())
        except Exception:  # not pydantic's errors(): fall back to the text
            reason = ""
    else:
        reason = ""
    if not reason:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = lines[-1] if lines else ""
    reason = f"{type(exc).__name__}: {reason}"
    return reason if len(reason) <= limit else reason[:limit] + " ..."


def check_model(model_dir: Path | str) -> None:
    """Before a grid runs anything: vLLM is installed and knows the model's architecture (read
    from its config.json, without loading weights), else a GenerationError naming the model and
    vLLM's reason. Trained models keep their base model's architecture, so a grid's base models
    are the ones to check."""
    import json

    vllm = import_vllm()
    config = Path(model_dir) / "config.json"
    try:
        architectures = json.loads(config.read_text()).get("architectures") or []
    except (OSError, ValueError) as exc:
        raise GenerationError(f"vLLM cannot load the model {model_dir}: {config}: {exc}") from None
    supported = set(vllm.ModelRegistry.get_supported_archs())
    if not any(a in supported for a in architectures):
        raise GenerationError(f"vLLM cannot load the model {model_dir}: its architectures "
                              f"{architectures} are not among those this vLLM "
                              f"({vllm.__version__}) supports")


def stop_engine(llm) -> None:
    """Stop an engine and give its memory back (a local grid runs its steps in one process, and
    the next step's model must fit). vLLM's shutdown is not part of its stable API: called where
    it exists."""
    if llm is None:
        return
    engine = getattr(llm, "llm_engine", None)
    for owner in (engine, getattr(engine, "engine_core", None)):
        shutdown = getattr(owner, "shutdown", None)
        if callable(shutdown):
            shutdown()
            break
    del engine
    release_accelerator_memory()


class VLLMBackend:
    name = "vllm"

    def __init__(self, model_dir: Path | str, gpu_memory_utilization: float = 0.85,
                 max_model_len: int | None = None, **_transformers_only):
        from transformers import AutoTokenizer

        self.model_dir = Path(model_dir)
        # The transformers backend's tokenizer, so both encode and decode the same way.
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.llm = start_engine(self.model_dir, max_model_len=max_model_len,
                                gpu_memory_utilization=gpu_memory_utilization)
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len

    def close(self) -> None:
        llm, self.llm = self.llm, None
        stop_engine(llm)

    def encode(self, text: str) -> list[int]:
        return encode_prompt(self.tokenizer, text)

    def generate(self, prompts: Sequence[str], params: SamplingParams,
                 progress: Progress | None = None) -> list[list[str]]:
        from vllm import SamplingParams as VSampling
        from vllm.inputs import TokensPrompt

        ids = [self.encode(p) for p in prompts]
        for k, prompt in enumerate(ids):
            if len(prompt) >= self.max_model_len:
                raise GenerationError(f"prompt {k} has {len(prompt)} tokens; the model's window "
                                      f"is {self.max_model_len}")
        # One request per sample, seeded as the transformers backend seeds its rows
        # (``row_seed``: prompt and sample index hashed with the run's seed), so no two samples
        # share a random stream; greedy requests have one sample each.
        requests, sampling = [], []
        for k, prompt in enumerate(ids):
            for j in range(params.n):
                requests.append(TokensPrompt(prompt_token_ids=prompt))
                sampling.append(VSampling(
                    temperature=params.temperature, top_p=params.top_p,
                    seed=None if params.greedy else row_seed(params.seed, k, j),
                    stop=list(params.stop) or None, include_stop_str_in_output=True,
                    max_tokens=min(params.max_new_tokens, self.max_model_len - len(prompt))))
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        if progress:
            progress(len(prompts), len(prompts))
        # The text of the ids, as the transformers backend decodes its own (vLLM's detokenizer
        # only decides where a stop string ends generation).
        texts = [truncate_at_stop(decode_after(self.tokenizer, o.prompt_token_ids,
                                               o.outputs[0].token_ids), params.stop)
                 for o in outputs]
        return [texts[k * params.n:(k + 1) * params.n] for k in range(len(prompts))]

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
