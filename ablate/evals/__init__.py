"""The paper's 11-benchmark suite: a registry of benchmarks by name and the step runner.

Adding a benchmark is a module with a ``Benchmark`` subclass plus one line in ``BENCHMARKS``, and
its facts (category, how it is scored, judge) in ``ablate.spec.benchmarks``. A grid may also name
a benchmark of the user's own by its class (``ablate.evals.custom``).
"""

from __future__ import annotations

from importlib import import_module

from ablate.evals.base import PROTOCOLS, Benchmark, EvalEnv, EvalError, ItemResult, Summary

BENCHMARKS: dict[str, str] = {  # name -> "module:class", imported only when used
    "mmlu": "ablate.evals.mmlu:MMLU",
    "gsm8k": "ablate.evals.gsm8k:GSM8K",
    "bbh": "ablate.evals.bbh:BBH",
    "humaneval_plus": "ablate.evals.code:HumanEvalPlus",
    "mbpp_plus": "ablate.evals.code:MBPPPlus",
    "truthfulqa": "ablate.evals.truthfulqa:TruthfulQA",
    "toxigen": "ablate.evals.toxigen:ToxiGen",
    "xstest": "ablate.evals.xstest:XSTest",
    "alpaca_eval_1": "ablate.evals.alpaca:AlpacaEval1",
    "alpaca_eval_2": "ablate.evals.alpaca:AlpacaEval2",
    "ifeval": "ablate.evals.ifeval:IFEval",
}


def benchmark_names() -> list[str]:
    return list(BENCHMARKS)


def get_benchmark(name: str, module: str | None = None) -> Benchmark:
    """A built-in benchmark by name, or one of the user's own by its class (``module``)."""
    if module is not None:
        from ablate.evals.custom import custom_benchmark

        return custom_benchmark(name, module)
    if name not in BENCHMARKS:
        raise EvalError(f"unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)}")
    module, cls = BENCHMARKS[name].split(":")
    return getattr(import_module(module), cls)()


__all__ = ["BENCHMARKS", "PROTOCOLS", "Benchmark", "EvalEnv", "EvalError", "ItemResult", "Summary",
           "benchmark_names", "get_benchmark"]
