"""BIG-Bench Hard: the official 3-shot CoT prompts, 40 items per task (paper), exact match of the
text after "the answer is"; the headline is the mean over tasks (open-instruct's
``average_exact_match``), the mean over items is in ``secondary``.

Prompt as in open-instruct: the task's CoT prompt (its canary line and separator stripped), then
"\n\nQ: <input>" in one user turn, the chat template, and the assistant's turn opened with "A:".
The answer is extracted as open-instruct does (the text between "the answer is " and the next
period, either case; the whole reply when absent) and compared ignoring case and punctuation
(open-instruct's exact match with ``ignore_case`` and ``ignore_punctuation``), so "So the answer is
A." matches the target "(A)" and "yes" matches "Yes"; nothing is stripped afterwards, so an
all-bracket Dyck answer does not become "" (which would match every target).

Paper protocol, as open-instruct@959cbbc9d:eval/bbh/run_eval.py (scripts/eval/bbh.sh):
``random.seed(42)`` once, then ``random.sample(examples, 40)`` for each task in file order (taken as
sorted: glob's order is the file system's), so the tasks share one generator; no stop sequence in
chat format (the reply ends at the model's end of turn).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from ablate.evals.base import Benchmark, EvalEnv, EvalError, ItemResult, Summary
from ablate.evals.data import read_json
from ablate.evals.exact_match import open_instruct_match

# open-instruct@959cbbc9d:eval/bbh/run_eval.py, its character class included: "|he answer is"
# also opens an answer there
ANSWER = re.compile(r"[t|T]he answer is (.*?)\.")
# the full protocol also stops where the model starts a next question
STOP = {"paper": (), "full": ("\n\nQ:", "\n\n\n")}


def extract_answer(reply: str) -> str:
    """The first "the answer is X." in the reply, else the whole reply, stripped."""
    match = ANSWER.search(reply)
    return (match.group(1) if match else reply).strip()


def is_correct(reply: str, target: str) -> bool:
    return open_instruct_match(extract_answer(reply), target)


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
    paper_settings = {
        "items": f"{per_task} per task, one random.seed({paper_seed}) generator", "shots": 3,
        "prompt": "CoT prompt + 'Q: ' input in one user turn; assistant opens with 'A:'",
        "max_new_tokens": default_max_new_tokens, "stop": list(STOP["paper"]),
        "answer": "text after 'the answer is' up to '.'", "metric": "mean over tasks"}

    def items(self, protocol: str, data_dir: Path) -> list[dict]:
        items = []
        rng = random.Random(self.paper_seed)  # one generator for all tasks, as open-instruct seeds
        for path in sorted((data_dir / "bbh" / "bbh").glob("*.json")):
            task = path.stem
            examples = read_json(path).get("examples")
            if not isinstance(examples, list):
                raise EvalError(f"{path}: expected an 'examples' list")
            indices = list(range(len(examples)))
            if protocol == "paper":  # in the order drawn, as open-instruct lists its predictions
                if len(examples) < self.per_task:
                    raise EvalError(f"{path}: the paper protocol draws {self.per_task} examples, "
                                    f"the file has {len(examples)}")
                indices = rng.sample(indices, self.per_task)
            for i in indices:
                items.append({"item_id": f"{task}/{i}", "task": task, **examples[i]})
        return items

    def turns(self, items: list[dict], env: EvalEnv) -> list[tuple[str, str]]:
        if env.data_root is None:
            raise EvalError("bbh needs its CoT prompt files: set ABLATE_DATA_DIR")
        prompts_by_task = {t: task_prompt(env.data_root / "bbh" / "cot-prompts" / f"{t}.txt")
                           for t in {i["task"] for i in items}}
        return [(f"{prompts_by_task[i['task']]}\n\nQ: {i['input']}", "A:") for i in items]

    def evaluate(self, items: list[dict], env: EvalEnv) -> list[ItemResult]:
        prompts = self.prompts(items, env)
        replies = env.generate(prompts, env.new_tokens(self.default_max_new_tokens),
                               STOP[env.protocol],
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
        if not results:
            return super().summarize(results)
        tasks: dict[str, list[float]] = {}
        for r in results:
            tasks.setdefault(r.extra["task"], []).append(r.score)
        per_task = {t: 100.0 * sum(v) / len(v) for t, v in sorted(tasks.items())}
        return Summary(sum(per_task.values()) / len(per_task),
                       {"item_micro": 100.0 * sum(r.score for r in results) / len(results),
                        **{f"exact_match_{t}": v for t, v in per_task.items()}})
