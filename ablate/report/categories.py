"""The paper's six categories and which benchmark feeds which.

A copy of the evals' mapping on purpose: reports must load without the torch-heavy evals layer.
``tests/report`` checks that the two agree whenever ``ablate.evals`` is importable.
"""

from __future__ import annotations

CATEGORIES = ("factuality", "reasoning", "coding", "truthfulness", "safety", "inst_following")

CATEGORY_OF = {
    "mmlu": "factuality",
    "gsm8k": "reasoning", "bbh": "reasoning",
    "humaneval_plus": "coding", "mbpp_plus": "coding",
    "truthfulqa": "truthfulness",
    "toxigen": "safety", "xstest": "safety",
    "alpaca_eval_1": "inst_following", "alpaca_eval_2": "inst_following", "ifeval": "inst_following",
}

LABELS = {
    "factuality": "Factuality", "reasoning": "Reasoning", "coding": "Coding",
    "truthfulness": "Truthfulness", "safety": "Safety", "inst_following": "Inst. Foll.",
    "average": "Average",
    "mmlu": "MMLU", "gsm8k": "GSM8k", "bbh": "BBH", "humaneval_plus": "HumanEval+",
    "mbpp_plus": "MBPP+", "truthfulqa": "TruthfulQA", "toxigen": "ToxiGen", "xstest": "XSTest",
    "alpaca_eval_1": "AlpacaEval 1", "alpaca_eval_2": "AlpacaEval 2", "ifeval": "IFEval",
}


def category_of(benchmark: str) -> str:
    """A benchmark's category; a paper-level row may name the category itself."""
    if benchmark in CATEGORIES:
        return benchmark
    try:
        return CATEGORY_OF[benchmark]
    except KeyError:
        raise KeyError(f"unknown benchmark {benchmark!r}; known: {', '.join(sorted(CATEGORY_OF))}") from None


def label(key: str) -> str:
    return LABELS.get(key, key)
