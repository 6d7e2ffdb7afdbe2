"""TruthfulQA MC2: normalised probability mass on the true answers, by log-likelihood (no judge).

Prompt as lm-eval's ``truthfulqa_mc2``: the 6-shot QA primer, then "\n\nQ: <question>\nA:", each
answer scored as " <answer>". Plain text (no chat template), as lm-eval runs it by default.
"""

from __future__ import annotations

import math
from pathlib import Path

from ablate.evals.base import Benchmark, EvalEnv, EvalError, ItemResult
from ablate.evals.data import read_json


def mc2(loglikelihoods: list[float], labels: list[int]) -> float:
    """Share of the (renormalised) probability on true answers; computed stably in log space."""
    top = max(loglikelihoods)
    probs = [math.exp(ll - top) for ll in loglikelihoods]
    return sum(p for p, label in zip(probs, labels) if label == 1) / sum(probs)


class TruthfulQA(Benchmark):
    name, metric = "truthfulqa", "mc2"
    hub_id = "truthfulqa/truthful_qa"
    data_revision = "github:sylinrl/TruthfulQA (via SimarBhatiaSB7/TruthX@9f9e3d00) mc_task.json"
    required_files = ("truthfulqa/mc_task.json", "truthfulqa/qa_primer.txt")
    chat_template = False
    paper_settings = {"items": "all 817", "shots": 6,
                      "prompt": "QA primer + 'Q: <question>\\nA:', plain text",
                      "answer": "log-likelihood of each answer", "metric": "mc2"}

    def turns(self, items: list[dict], env: EvalEnv) -> list[tuple[str, str]]:
        return [(i["context"], "") for i in items]

    def items(self, protocol: str, data_dir: Path) -> list[dict]:
        rows = read_json(data_dir / "truthfulqa" / "mc_task.json")
        primer = (data_dir / "truthfulqa" / "qa_primer.txt").read_text(encoding="utf-8").strip()
        items = []
        for n, row in enumerate(rows):
            targets = row.get("mc2_targets")
            if not isinstance(targets, dict) or not targets or "question" not in row:
                raise EvalError(f"truthfulqa/mc_task.json item {n}: needs question and mc2_targets")
            items.append({"item_id": str(n), "question": row["question"],
                          "context": f"{primer}\n\nQ: {row['question']}\nA:",
                          "choices": list(targets), "labels": [int(v) for v in targets.values()]})
        return items

    def evaluate(self, items: list[dict], env: EvalEnv) -> list[ItemResult]:
        requests = [(i["context"], [f" {c}" for c in i["choices"]]) for i in items]
        scores = env.backend.loglikelihood(requests, progress=env.progress)
        return [ItemResult(i["item_id"], mc2(lls, i["labels"]), i["context"], [],
                           {"loglikelihoods": lls, "labels": i["labels"]})
                for i, lls in zip(items, scores)]
