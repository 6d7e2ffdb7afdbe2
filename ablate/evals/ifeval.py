"""IFEval: 541 prompts with verifiable instructions, scored by lm-eval's port of Google's checkers.

Primary metric: loose prompt-level accuracy (the paper's); strict and instruction-level reported.
The checkers need nltk's punkt_tab (shipped in benchmarks/nltk_data) and langdetect, which is
seeded here: unseeded, about one response in 180 flips between runs. (The one item with random
checker arguments is seeded too, see ``score_response``.)
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from ablate.evals.base import Benchmark, EvalEnv, ItemResult, Summary
from ablate.evals.data import REPO, read_jsonl, require

NLTK_DATA = REPO / "benchmarks" / "nltk_data"
METRICS = ("prompt_level_loose_acc", "prompt_level_strict_acc", "inst_level_loose_acc",
           "inst_level_strict_acc")


def checkers():
    """lm-eval's ifeval ``process_results``, imported with nltk data found offline."""
    paths = [p for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p]
    if str(NLTK_DATA) not in paths:
        os.environ["NLTK_DATA"] = os.pathsep.join(paths + [str(NLTK_DATA)])
        import nltk
        if str(NLTK_DATA) not in nltk.data.path:
            nltk.data.path.append(str(NLTK_DATA))
    import langdetect

    langdetect.DetectorFactory.seed = 0
    from lm_eval.tasks.ifeval.utils import process_results
    return process_results


def score_response(doc: dict, response: str) -> dict:
    """lm-eval's scores for one response. A few checkers draw random arguments when the data's
    are invalid (a letter_frequency item asks for the letter "#"), so the draw is seeded per item
    and the global random state left as it was."""
    state = random.getstate()
    random.seed(f"ifeval-{doc['key']}")
    try:
        return checkers()(doc, [response])
    finally:
        random.setstate(state)


class IFEval(Benchmark):
    name, metric = "ifeval", "prompt_level_loose_acc"
    hub_id = "google/IFEval"
    data_revision = "github:google-research/google-research@19638399 instruction_following_eval/data"
    required_files = ("ifeval/input_data.jsonl",)
    libraries = ("lm_eval", "langdetect", "nltk")
    default_max_new_tokens = 2048
    paper_settings = {"items": "all 541", "shots": 0, "prompt": "the prompt as the user turn",
                      "max_new_tokens": default_max_new_tokens, "stop": [],
                      "metric": "prompt_level_loose_acc"}

    def items(self, protocol: str, data_dir: Path) -> list[dict]:
        rows = read_jsonl(data_dir / "ifeval" / "input_data.jsonl")
        for n, row in enumerate(rows, 1):
            require(row, ("key", "prompt", "instruction_id_list", "kwargs"),
                    f"ifeval/input_data.jsonl row {n}")
        return [{"item_id": str(r["key"]), **r} for r in rows]

    def turns(self, items: list[dict], env: EvalEnv) -> list[tuple[str, str]]:
        return [(item["prompt"], "") for item in items]

    def evaluate(self, items: list[dict], env: EvalEnv) -> list[ItemResult]:
        prompts = self.prompts(items, env)
        replies = env.generate(prompts, env.new_tokens(self.default_max_new_tokens),
                               rm_prompts=[i["prompt"] for i in items])
        results = []
        for item, prompt, reply in zip(items, prompts, replies):
            scores = score_response(item, reply[0])
            results.append(ItemResult(item["item_id"], float(scores["prompt_level_loose_acc"]),
                                      prompt, reply, {k: scores[k] for k in METRICS}))
        return results

    def summarize(self, results: list[ItemResult]) -> Summary:
        def prompt_level(key):
            return 100.0 * sum(float(r.extra[key]) for r in results) / len(results)

        def inst_level(key):
            flat = [float(x) for r in results for x in r.extra[key]]
            return 100.0 * sum(flat) / len(flat)

        return Summary(prompt_level("prompt_level_loose_acc"), {
            "prompt_level_strict_acc": prompt_level("prompt_level_strict_acc"),
            "inst_level_loose_acc": inst_level("inst_level_loose_acc"),
            "inst_level_strict_acc": inst_level("inst_level_strict_acc")})
