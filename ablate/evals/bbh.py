"""BIG-Bench Hard: the official 3-shot CoT prompts, 40 items per task (paper), exact match of the
text after "the answer is".

Prompt as in open-instruct: the task's CoT prompt (its canary line and separator stripped), then
"\n\nQ: <input>" in one user turn, the chat template, and the assistant's turn opened with "A:".
The answer is extracted as open-instruct does (the text between "the answer is " and the next
period, either case; the whole reply when absent) and compared ignoring case and punctuation
(open-instruct's exact match with ``ignore_case`` and ``ignore_punctuation``), so "So the answer is
A." matches the target "(A)" and "yes" matches "Yes".
"""

from __future__ import annotations

import random
import re
import string
from pathlib import Path

from ablate.evals.base import Benchmark, EvalEnv, EvalError, ItemResult, Summary
from ablate.evals.data import read_json

# open-instruct's eval/bbh/run_eval.py
ANSWER = re.compile(r"[tT]he answer is (.*?)\.")
STOP = ("\n\nQ:", "\n\n\n")


def extract_answer(reply: str) -> str:
    """The first "the answer is X." in the reply, else the whole reply, stripped."""
    match = ANSWER.search(reply)
    return (match.group(1) if match else reply).strip()


def normalise(answer: str) -> str:
    """As exact match with ignore_case and ignore_punctuation: lower case, punctuation removed."""
    return answer.lower().translate(str.maketrans("", "", string.punctuation)).strip()


def is_correct(reply: str, target: str) -> bool:
    return normalise(extract_answer(reply)) == normalise(target)


def task_prompt(path: Path) -> str:
    if not path.is_file():
        raise EvalError(f"missing BBH prompt file {path}")
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if len(lines) < 3 or not lines[1].startswith("-----"):
        raise EvalError(f"{path}: expected a canary line and a '-----' separator first")
    return "".join(lines[2:]).strip()


class BBH(Benchmark):
    name, metric = "bbh", "exact_match"
    hub_id = "lukaemon/bbh"
    data_revision = "github:suzgunmirac/BIG-Bench-Hard@9ee07bd481feebf959a6b59d61ea57bdcf30964d"
    required_files = ("bbh/bbh", "bbh/cot-prompts")
    per_task, paper_seed, default_max_new_tokens = 40, 42, 512

    def items(self, protocol: str, data_dir: Path) -> list[dict]:
        items = []
        for path in sorted((data_dir / "bbh" / "bbh").glob("*.json")):
            task = path.stem
            examples = read_json(path).get("examples")
            if not isinstance(examples, list):
                raise EvalError(f"{path}: expected an 'examples' list")
            indices = list(range(len(examples)))
            if protocol == "paper":
                indices = sorted(random.Random(self.paper_seed).sample(indices, self.per_task))
            for i in indices:
                items.append({"item_id": f"{task}/{i}", "task": task, **examples[i]})
        return items

    def evaluate(self, items: list[dict], env: EvalEnv) -> list[ItemResult]:
        if env.data_root is None:
            raise EvalError("bbh needs its CoT prompt files: set ABLATE_DATA_DIR")
        prompts_by_task = {t: task_prompt(env.data_root / "bbh" / "cot-prompts" / f"{t}.txt")
                           for t in {i["task"] for i in items}}
        prompts = [env.chat(f"{prompts_by_task[i['task']]}\n\nQ: {i['input']}", "A:")
                   for i in items]
        replies = env.generate(prompts, env.new_tokens(self.default_max_new_tokens), STOP,
                               rm_prompts=[i["input"] for i in items])
        results = []
        for item, prompt, reply in zip(items, prompts, replies):
            answer = extract_answer(reply[0])
            results.append(ItemResult(item["item_id"], float(is_correct(reply[0], item["target"])),
                                      prompt,
                                      reply, {"task": item["task"], "prediction": answer,
                                              "target": item["target"]}))
        return results

    def summarize(self, results: list[ItemResult]) -> Summary:
        tasks: dict[str, list[float]] = {}
        for r in results:
            tasks.setdefault(r.extra["task"], []).append(r.score)
        per_task = {t: 100.0 * sum(v) / len(v) for t, v in tasks.items()}
        return Summary(100.0 * sum(r.score for r in results) / len(results),
                       {"task_macro": sum(per_task.values()) / len(per_task)})
