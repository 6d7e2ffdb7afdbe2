"""Display names of the paper's categories and benchmarks. The category map itself lives once, in
``ablate.spec.benchmarks`` (torch-free)."""

from __future__ import annotations

from ablate.spec.benchmarks import CATEGORIES, CATEGORY_OF, category_of

__all__ = ["CATEGORIES", "CATEGORY_OF", "LABELS", "category_of", "label"]

LABELS = {
    "factuality": "Factuality", "reasoning": "Reasoning", "coding": "Coding",
    "truthfulness": "Truthfulness", "safety": "Safety", "inst_following": "Inst. Foll.",
    "average": "Average",
    "mmlu": "MMLU", "gsm8k": "GSM8k", "bbh": "BBH", "humaneval_plus": "HumanEval+",
    "mbpp_plus": "MBPP+", "truthfulqa": "TruthfulQA", "toxigen": "ToxiGen", "xstest": "XSTest",
    "alpaca_eval_1": "AlpacaEval 1", "alpaca_eval_2": "AlpacaEval 2", "ifeval": "IFEval",
}


def label(key: str) -> str:
    return LABELS.get(key, key)
