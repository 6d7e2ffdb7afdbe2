"""GSM8k: 8-shot chain-of-thought, exact match of the final number.

Both protocols put the 8 Wei et al. exemplars in front of the question inside one user turn ("Answer
the following questions.", "Question: ...\nAnswer: ..." blocks), apply the chat template, open the
assistant's turn with "Answer:" and decode greedily, at most 512 new tokens.

Paper protocol, as open-instruct@959cbbc9d:eval/gsm/run_eval.py run by scripts/eval/gsm.sh
(``--n_shot 8 --max_num_examples 200 --use_chat_format``): 200 test items drawn by
``random.seed(42); random.sample(test, 200)``; the exemplars worded as its eval/gsm/examplars.py
("... So the answer is 6."); no stop sequence (the chat format stops at the model's end of turn);
the prediction is the last number of the reply after digit-grouping commas are removed (the whole
reply when it has none), compared by exact match ignoring case and punctuation.

Full protocol: every test item, with lm-eval's gsm8k-cot exemplars ("... The answer is 6."), a stop
at "Question:" and lm-eval's "flexible-extract" answer with its normalisation.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from ablate.evals.base import Benchmark, EvalEnv, ItemResult
from ablate.evals.data import REPO, read_jsonl, require
from ablate.evals.exact_match import open_instruct_match

# Part of the protocol, so shipped with the code: the exemplars as open-instruct's
# eval/gsm/examplars.py words them (paper) and as lm-eval's gsm8k-cot.yaml holds them (full;
# identical to the shared data's copy, which a test checks).
EXEMPLARS = {"paper": REPO / "benchmarks" / "gsm8k" / "open_instruct_8shot_exemplars.jsonl",
             "full": REPO / "benchmarks" / "gsm8k" / "cot_8shot_exemplars.jsonl"}
INSTRUCTION = "Answer the following questions.\n\n"
# A blank line would cut a reply of several paragraphs before its answer, so the full protocol stops
# only where a model goes on to write the next exemplar-style question.
STOP = {"paper": (), "full": ("Question:",)}
# open-instruct's answer: the last number once "1,000" is read as "1000"
DIGIT_COMMA = re.compile(r"(\d),(\d)")
NUMBER = re.compile(r"[-+]?\d*\.\d+|\d+")
# lm-eval's gsm8k-cot.yaml: filter "flexible-extract" and exact_match's arguments.
FINAL_NUMBER = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")


def last_number(text: str) -> str:
    """open-instruct's prediction: the last number, or the whole reply when it holds none."""
    numbers = NUMBER.findall(DIGIT_COMMA.sub(r"\1\2", text))
    return numbers[-1] if numbers else text


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


def prediction(reply: str, protocol: str) -> str:
    return last_number(reply) if protocol == "paper" else final_number(reply)


def is_correct(reply: str, target: str, protocol: str) -> bool:
    if protocol == "paper":
        return open_instruct_match(last_number(reply), target)
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
    paper_settings = {
        "items": f"{paper_items} of test, random.seed({paper_seed}) sample", "shots": 8,
        "prompt": "exemplars + question in one user turn; assistant opens with 'Answer:'",
        "max_new_tokens": default_max_new_tokens, "stop": list(STOP["paper"]),
        "answer": "last number, digit commas removed", "metric": "exact_match"}

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

    def turns(self, items: list[dict], env: EvalEnv) -> list[tuple[str, str]]:
        exemplars = read_jsonl(EXEMPLARS[env.protocol])
        return [(build_user_turn(exemplars, item["question"]), "Answer:") for item in items]

    def evaluate(self, items: list[dict], env: EvalEnv) -> list[ItemResult]:
        prompts = self.prompts(items, env)
        replies = env.generate(prompts, env.new_tokens(self.default_max_new_tokens),
                               STOP[env.protocol], rm_prompts=[i["question"] for i in items])
        return [ItemResult(item["item_id"], float(is_correct(r[0], item["target"], env.protocol)),
                           prompt, r, {"prediction": prediction(r[0], env.protocol),
                                       "target": item["target"]})
                for item, prompt, r in zip(items, prompts, replies)]
