"""The paper's categories and how benchmark scores roll up into them (pure functions)."""

from __future__ import annotations

import math
from typing import Mapping

CATEGORIES: dict[str, tuple[str, ...]] = {
    "factuality": ("mmlu",),
    "reasoning": ("gsm8k", "bbh"),
    "coding": ("humaneval_plus", "mbpp_plus"),
    "truthfulness": ("truthfulqa",),
    "safety": ("toxigen", "xstest"),
    "inst_following": ("alpaca_eval_1", "alpaca_eval_2", "ifeval"),
}
BENCHMARK_CATEGORY = {b: c for c, benches in CATEGORIES.items() for b in benches}


def category_scores(results: Mapping[str, float]) -> dict[str, float]:
    """Category → mean of its benchmarks' category scores (higher is better), for the categories
    whose benchmarks are all present; a partial category would not be comparable to the paper's."""
    unknown = sorted(set(results) - set(BENCHMARK_CATEGORY))
    if unknown:
        raise KeyError(f"unknown benchmark(s) {unknown}; known: {sorted(BENCHMARK_CATEGORY)}")
    scores = {}
    for category, benches in CATEGORIES.items():
        values = [results[b] for b in benches if b in results and results[b] is not None]
        if len(values) == len(benches) and not any(math.isnan(v) for v in values):
            scores[category] = sum(values) / len(values)
    return scores


def average(categories: Mapping[str, float]) -> float | None:
    """Mean of the six categories; None unless all six are there (the paper's 'Average')."""
    if set(categories) != set(CATEGORIES):
        return None
    return sum(categories[c] for c in CATEGORIES) / len(CATEGORIES)
