"""Benchmarks of the user's own, named in a grid by class: ``eval.custom.<name>.module:
"package.module:Class"`` (a guide with a complete example: docs/own-data.md,
examples/my_benchmark.py).

The class subclasses ``Benchmark`` and declares the facts the plan needs, which ablate reads when
it loads the grid (``custom_facts``): ``category``, ``scoring``, ``version`` (bump it when its
items, prompts or scoring change, so that old results are not reused) and ``metric``. The simplest
is a ``GenerativeBenchmark``: ``items()``, ``prompt(item)`` and ``score(item, reply)``; its results
are written, bootstrapped and reported as the built-in benchmarks' are.

Its category is a column of its own, never one of the paper's six: mixed into one of them it
would change what that column and the Average mean, and they would no longer compare with the
paper's. The report shows it after the paper's categories, outside the Average.
"""

from __future__ import annotations

import inspect
from abc import abstractmethod
from pathlib import Path
from typing import Any

from ablate.evals.base import Benchmark, EvalEnv, EvalError, ItemResult
from ablate.spec.benchmarks import CATEGORIES, BenchmarkFacts
from ablate.spec.load import import_path

SCORINGS = ("generate",)  # what a benchmark of one's own may declare (no judge, no sandbox)


class GenerativeBenchmark(Benchmark):
    """One greedy reply per item from the model's chat template, scored by ``score``."""

    metric = "accuracy"
    scoring = "generate"
    version = 1
    max_new_tokens = 256
    category: str  # a column of its own in the report (not one of the paper's six)

    @abstractmethod
    def items(self, protocol: str, data_dir: Path | None) -> list[dict]:
        """Every item in a fixed order, each a JSON object with a unique ``item_id``."""

    @abstractmethod
    def prompt(self, item: dict) -> str:
        """What the user says to the model for ``item``."""

    @abstractmethod
    def score(self, item: dict, reply: str) -> float:
        """``reply``'s score on ``item``, 0..1 (the metric is its mean, in percent)."""

    def evaluate(self, items: list[dict], env: EvalEnv) -> list[ItemResult]:
        prompts = [env.chat(self.prompt(item)) for item in items]
        replies = env.generate(prompts, env.new_tokens(self.max_new_tokens))
        return [ItemResult(str(item["item_id"]), float(self.score(item, reply[0])), prompt,
                           [reply[0]]) for item, prompt, reply in zip(items, prompts, replies)]


def load_benchmark_class(path: str) -> type[Benchmark]:
    """The class ``path`` names, checked against the interface; a ValueError says what is wrong."""
    cls = import_path(path, "the benchmark", "Class")
    if not (inspect.isclass(cls) and issubclass(cls, Benchmark)):
        raise ValueError(f"{path!r} is not a subclass of ablate.evals.Benchmark (got "
                         f"{type(cls).__name__} {cls!r}); see docs/own-data.md")
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise ValueError(f"{path!r} does not implement {', '.join(missing)}")
    category = getattr(cls, "category", None)
    if not isinstance(category, str) or not category.strip():
        raise ValueError(f"{path!r} declares no category (a class attribute `category = "
                         "\"...\"`: the report's column for it)")
    if category in CATEGORIES or category == "average":
        raise ValueError(f"{path!r}: category {category!r} is one of the paper's; a benchmark "
                         "of your own is a column of its own (mixed into the paper's, that "
                         "column and the Average would no longer compare with the paper's): "
                         "name another")
    if getattr(cls, "scoring", None) not in SCORINGS:
        raise ValueError(f"{path!r}: scoring must be one of {', '.join(SCORINGS)}, got "
                         f"{getattr(cls, 'scoring', None)!r}")
    version = getattr(cls, "version", None)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{path!r}: version must be a positive integer, got {version!r}")
    if not isinstance(getattr(cls, "metric", None), str):
        raise ValueError(f"{path!r} declares no metric (a class attribute `metric = \"...\"`)")
    return cls


def custom_facts(path: str) -> BenchmarkFacts:
    """What the plan needs of a benchmark of one's own, as its class declares it."""
    cls = load_benchmark_class(path)
    return BenchmarkFacts(cls.category, cls.scoring, judged=False, paper_version=cls.version,
                          full_version=cls.version)


def custom_benchmark(name: str, path: str) -> Any:
    try:
        bench = load_benchmark_class(path)()
    except ValueError as exc:
        raise EvalError(f"benchmark {name!r}: {exc}") from None
    bench.name = name
    return bench


def grid_custom_facts(grid) -> dict[str, BenchmarkFacts]:
    """The facts of a grid's own benchmarks (``eval.custom``), each checked against the
    interface; a SpecError names the field."""
    from ablate.spec.load import SpecError

    facts = {}
    for name, custom in grid.eval.custom.items():
        try:
            facts[name] = custom_facts(custom.module)
        except ValueError as exc:
            raise SpecError(f"grid {grid.name!r}: eval.custom.{name}.module: {exc}") from None
    return facts
