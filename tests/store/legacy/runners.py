"""Stand-in step runners that made the legacy store fixture (``store_v0/``): they write the files
a report reads (result.json, scores.jsonl, outputs.jsonl; a training step's train_summary.json)
without loading a model, so the fixture stays a few kilobytes. Selected with ``ABLATE_RUNNERS``."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path


def _rng(ctx, key: str | None = None) -> random.Random:
    key = key or ctx.step.name
    return random.Random(int(hashlib.sha256(key.encode()).hexdigest()[:12], 16))


# Best-of-N reranks greedy generations only; MMLU scores log-likelihoods, so a best-of-N cell's
# MMLU is the base model's own, as the real evaluation makes it.
RERANKED = ("gsm8k", "ifeval")


def train(ctx) -> None:
    rng = _rng(ctx)
    (ctx.out_dir / "model").mkdir(parents=True, exist_ok=True)
    (ctx.out_dir / "model" / "weights.txt").write_text(f"{rng.random()}\n")
    rows = [{"step": k, "loss": round(0.7 - 0.05 * k + 0.01 * rng.random(), 4)} for k in range(4)]
    (ctx.out_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (ctx.out_dir / "train_summary.json").write_text(json.dumps(
        {"steps": 4, "seconds": 1.0, "tokens": 1000 + int(1000 * rng.random())}))
    if ctx.step.kind == "train_rm":  # as the RM trainer writes it: a 0-1 fraction in value
        accuracy = round(0.5 + 0.3 * rng.random(), 4)
        (ctx.out_dir / "result.json").write_text(json.dumps(
            {"metric": "heldout_pair_accuracy", "value": accuracy, "heldout_accuracy": accuracy,
             "heldout_accuracy_before": 0.5, "heldout_pairs": 4, "train_pairs": 12, "rows": 16}))


def eval_(ctx) -> None:
    """Scores drawn from what determines a real evaluation's result: the benchmark, the model
    (an upstream step or the base model) and, where it applies, the best-of-N sampler."""
    bench = ctx.config["benchmark"]
    sampler = ctx.config.get("sampler") or {"kind": "greedy"}
    applies = sampler["kind"] == "best_of_n" and bench in RERANKED
    model = str(ctx.inputs.get("model") and ctx.inputs["model"].name) + json.dumps(
        ctx.config.get("model"), sort_keys=True)
    rng = _rng(ctx, bench + model + (json.dumps(sampler, sort_keys=True) +
                                     ctx.inputs["reward_model"].name if applies else ""))
    n = ctx.config.get("limit") or 20
    p = 0.3 + 0.4 * rng.random()
    scores = [1.0 if rng.random() < p else 0.0 for _ in range(n)]
    value = 100.0 * sum(scores) / n
    out: Path = ctx.out_dir
    (out / "scores.jsonl").write_text("".join(
        json.dumps({"item_id": f"{bench}-{i}", "score": s}) + "\n" for i, s in enumerate(scores)))
    (out / "outputs.jsonl").write_text("".join(
        json.dumps({"item_id": f"{bench}-{i}", "prompt": f"question {i}", "outputs": ["42"]}) + "\n"
        for i in range(2)))
    category = {"gsm8k": "reasoning", "mmlu": "factuality", "ifeval": "inst_following"}[bench]
    (out / "result.json").write_text(json.dumps({
        "benchmark": bench, "category": category, "protocol": ctx.config["protocol"],
        "metric": "accuracy", "value": value, "higher_is_better": True, "category_score": value,
        "secondary": {}, "n_items": n, "n_failed": 0, "limit": ctx.config.get("limit"),
        "sampler": ctx.config.get("sampler"), "judge": None, "scores_file": "scores.jsonl",
        "outputs_file": "outputs.jsonl", "seconds": 0.1,
        **({"sampler_applied": applies} if sampler["kind"] == "best_of_n" else {})},
        indent=2, sort_keys=True))
