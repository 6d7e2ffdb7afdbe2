"""What a benchmark is: a data source, an ordered item list per protocol, prompts, and a metric.

A benchmark module subclasses ``Benchmark`` and is registered by name in ``ablate.evals``. The
runner hands it an ``EvalEnv`` (the model behind a generation backend, the sampler, the judge) and
writes whatever it returns; the benchmark never touches the step folder.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

from ablate.spec.benchmarks import CATEGORY_OF
from ablate.spec.schema import BestOfN, JudgeSpec, Sampler
from ablate.spec.steps import EvalStep

PROTOCOLS = ("paper", "full")


class EvalError(RuntimeError):
    """Bad benchmark name, protocol, data file or judge answer; the message says which and why."""


@dataclass
class ItemResult:
    item_id: str
    score: float  # this item's contribution to the primary metric, 0..1 for mean metrics
    prompt: str = ""
    outputs: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # secondary per-item metrics, labels

    def score_row(self) -> dict:
        return {"item_id": self.item_id, "score": self.score, **self.extra}

    def output_row(self) -> dict:
        return {"item_id": self.item_id, "prompt": self.prompt, "outputs": self.outputs}


@dataclass(frozen=True)
class Summary:
    value: float  # primary metric in percent
    secondary: dict[str, float] = field(default_factory=dict)
    n_failed: int = 0  # items whose judgement or execution failed (scored as 0)
    provenance: dict[str, Any] = field(default_factory=dict)  # how it was judged (the sandbox)


@dataclass
class EvalEnv:
    """The model and the step's config as a benchmark sees them."""

    model_dir: Path
    config: EvalStep
    reward_model_dir: Path | None = None
    data_root: Path | None = None  # the full data folder, None when items came from a slice
    cache_dir: Path = Path(".ablate-cache")
    backend_kind: str = "auto"
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("ablate.evals"))
    progress: Callable[[int, int], None] = lambda done, total: None
    _backend: Any = None
    best_of_n_calls: int = 0  # generations a best_of_n sampler reranked (0: it never applied)

    def __post_init__(self) -> None:
        self._owns_backend = self._backend is None  # a backend handed in is shared: kept open
        self._released_engine: str | None = None

    @property
    def protocol(self) -> str:
        return self.config.protocol

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def sampler(self) -> Sampler:
        return self.config.sampler

    @property
    def judge(self) -> JudgeSpec | None:
        return self.config.judge

    @property
    def backend(self):
        if self._backend is None:
            from ablate.generate import load_backend
            self._backend = load_backend(self.model_dir, self.backend_kind)
        return self._backend

    def release_backend(self) -> None:
        """Free the model's memory for what runs after generation (a judge model, best-of-N's
        reward model), where this evaluation loaded the model itself."""
        if self._owns_backend and self._backend is not None:
            self._released_engine = getattr(self._backend, "name", None)
            self._backend.close()
            self._backend = None

    @property
    def engine(self) -> str | None:
        """The name of the engine that generated (``vllm``, ``hf``), released or not."""
        return getattr(self._backend, "name", None) or self._released_engine

    @property
    def tokenizer(self):
        return self.backend.tokenizer

    def new_tokens(self, default: int) -> int:
        """The step's ``max_new_tokens`` where the grid set one, else the benchmark's."""
        return self.config.max_new_tokens or default

    def chat(self, user: str, assistant_prefix: str = "") -> str:
        from ablate.generate import chat_prompt
        return chat_prompt(self.tokenizer, user, assistant_prefix)

    def generate(self, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str] = (),
                 n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
                 rm_prompts: Sequence[str] | None = None) -> list[list[str]]:
        """``n`` completions per prompt; under a best-of-N sampler a single greedy answer is
        replaced by the reward model's favourite of N samples."""
        from ablate.generate import SamplingParams

        if isinstance(self.sampler, BestOfN) and n == 1 and temperature == 0.0:
            return self._best_of_n(prompts, max_new_tokens, stop, rm_prompts or prompts)
        # greedy samples are all the same reply: decode it once (vLLM refuses greedy n > 1); a
        # best-of-N sampler leaves a benchmark's own samples alone, greedy ones included
        once = 1 if temperature == 0.0 else n
        params = SamplingParams(max_new_tokens=max_new_tokens, n=once, temperature=temperature,
                                top_p=top_p, seed=self.seed, stop=tuple(stop))
        replies = self.backend.generate(list(prompts), params, progress=self.progress)
        return replies if once == n else [r * n for r in replies]

    def _best_of_n(self, prompts, max_new_tokens, stop, rm_prompts) -> list[list[str]]:
        from ablate.generate import SamplingParams

        if self.reward_model_dir is None:
            raise EvalError("a best_of_n sampler needs a reward_model input")
        self.best_of_n_calls += 1
        # heavy, so imported late
        from ablate.generate.reward_model import best_of_n_rewards, check_reward_dtype

        sampler = self.sampler
        check_reward_dtype(sampler.reward_dtype)  # before sampling, not after
        params = SamplingParams(max_new_tokens=max_new_tokens, n=sampler.n,
                                temperature=sampler.temperature, seed=sampler.seed,
                                stop=tuple(stop))
        samples = self.backend.generate(list(prompts), params, progress=self.progress)
        # every sample is drawn: the engine's memory goes to the reward model (a 70B one fills
        # the job's GPUs); a benchmark asks for its generations once, so it is not reloaded
        self.release_backend()
        flat_prompts = [p for p, s in zip(rm_prompts, samples) for _ in s]
        scores = best_of_n_rewards(self.reward_model_dir, sampler.reward_dtype, flat_prompts,
                                   [x for s in samples for x in s])
        best, k = [], 0
        for s in samples:
            chunk = list(scores[k:k + len(s)])
            best.append([s[chunk.index(max(chunk))]])
            k += len(s)
        return best


class Benchmark(ABC):
    name: str
    metric: str
    higher_is_better: bool = True
    data_revision: str = ""  # the source's revision the item list comes from
    libraries: tuple[str, ...] = ()  # packages whose versions go into result.json
    hub_id: str = ""
    required_files: tuple[str, ...] = ()  # relative to a data folder
    # The paper protocol's settings as docs/protocol.md lists them (setting -> value); a test
    # compares the two, so neither changes alone.
    paper_settings: ClassVar[dict[str, Any]] = {}

    @abstractmethod
    def items(self, protocol: str, data_dir: Path) -> list[dict]:
        """The protocol's full item list in a fixed order; each a JSON dict with ``item_id``."""

    @abstractmethod
    def evaluate(self, items: list[dict], env: EvalEnv) -> list[ItemResult]:
        ...

    def metric_under(self, protocol: str) -> str:
        """The primary metric a protocol reports (one for most benchmarks)."""
        return self.metric

    def uses_chat_template(self, protocol: str) -> bool:
        """Whether the user turn goes through the model's chat template."""
        return True

    def turns(self, items: list[dict], env: EvalEnv) -> list[tuple[str, str]]:
        """What the model is asked for each item: (user turn, text the assistant's turn opens
        with). ``evaluate`` builds its prompts from these, so an export of them is what is scored."""
        raise EvalError(f"{self.name}: its class does not say what the model is asked (turns)")

    def prompts(self, items: list[dict], env: EvalEnv) -> list[str]:
        """The items' turns in the model's chat template."""
        return [env.chat(user, prefix) for user, prefix in self.turns(items, env)]

    def summarize(self, results: list[ItemResult]) -> Summary:
        if not results:
            raise EvalError(f"{self.name}: no items were evaluated")
        return Summary(100.0 * sum(r.score for r in results) / len(results))

    @property
    def category(self) -> str:
        return CATEGORY_OF[self.name]

    def category_score(self, value: float) -> float:
        return value if self.higher_is_better else 100.0 - value


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise EvalError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    return protocol
