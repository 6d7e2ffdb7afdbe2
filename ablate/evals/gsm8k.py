"""GSM8k: 8-shot chain-of-thought, exact match of the final number.

The paper's protocol (open-instruct, mid-2024): a random 200-item subset of the test set (seed 42),
the 8 Wei et al. exemplars in front of the question inside one user turn, the chat template, the
assistant's turn opened with "Answer:", greedy, at most 512 new tokens. The answer is the last
number of the reply, compared after lm-eval's ``gsm8k_cot`` normalisation ("flexible-extract").
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from ablate.evals.base import Benchmark, EvalEnv, ItemResult
from ablate.evals.data import REPO, read_jsonl, require

# Part of the protocol, so shipped with the code (Wei et al.'s exemplars as lm-eval's gsm8k-cot.yaml
# holds them; identical to the shared data's copy, which a test checks).
EXEMPLARS = REPO / "benchmarks" / "gsm8k" / "cot_8shot_exemplars.jsonl"
INSTRUCTION = "Answer the following questions.\n\n"
# open-instruct's chat-format runs stop only at the model's end of turn: a blank line would cut a
# reply of several paragraphs before its answer. "Question:" stops a model that goes on to write
# the next exemplar-style question.
STOP = ("Question:",)
# lm-eval's gsm8k-cot.yaml: filter "flexible-extract" and exact_match's arguments.
FINAL_NUMBER = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")


def final_number(text: str) -> str:
    """The last number-like match, as lm-eval's regex filter with group_select=-1 picks it, except
    that a match holding no digit ("..." after the answer) is passed over: it can never equal a
    number."""
    matches = ["".join(m) if isinstance(m, tuple) else m for m in FINAL_NUMBER.findall(text)]
    matches = [m for m in matches if any(c.isdigit() for c in m)]
    return matches[-1].strip() if matches else "[invalid]"


def normalize(text: str) -> str:
    for pattern in IGNORE:
        text = re.sub(pattern, "", text)
    return text.lower()


def is_correct(reply: str, target: str) -> bool:
    return normalize(final_number(reply)) == normalize(target)


def build_user_turn(exemplars: list[dict], question: str) -> str:
    shots = "\n\n".join(f"Question: {e['question']}\nAnswer: {e['target']}" for e in exemplars)
    return f"{INSTRUCTION}{shots}\n\nQuestion: {question.strip()}"


class GSM8K(Benchmark):
    name, metric = "gsm8k", "exact_match"
    hub_id = "openai/gsm8k"
    data_revision = "github:openai/grade-school-math@3101c7d5072418e28b9008a6636bde82a006892c"
    required_files = ("gsm8k/test.jsonl",)
    paper_items, paper_seed, default_max_new_tokens = 200, 42, 512

    def items(self, protocol: str, data_dir: Path) -> list[dict]:
        test = read_jsonl(data_dir / "gsm8k" / "test.jsonl")
        indices = list(range(len(test)))
        if protocol == "paper":
            indices = random.Random(self.paper_seed).sample(indices, self.paper_items)
        items = []
        for i in indices:
            require(test[i], ("question", "answer"), f"gsm8k/test.jsonl row {i + 1}")
            target = test[i]["answer"].split("####")[-1].strip()
            items.append({"item_id": f"test-{i}", "question": test[i]["question"],
                          "target": target})
        return items

    def prompts(self, items: list[dict], env: EvalEnv) -> list[str]:
        exemplars = read_jsonl(EXEMPLARS)
        return [env.chat(build_user_turn(exemplars, item["question"]), "Answer:") for item in items]

    def evaluate(self, items: list[dict], env: EvalEnv) -> list[ItemResult]:
        prompts = self.prompts(items, env)
        replies = env.generate(prompts, env.new_tokens(self.default_max_new_tokens), STOP,
                               rm_prompts=[i["question"] for i in items])
        return [ItemResult(item["item_id"], float(is_correct(r[0], item["target"])), prompt,
                           r, {"prediction": final_number(r[0]), "target": item["target"]})
                for item, prompt, r in zip(items, prompts, replies)]
