"""The ``eval`` step: one benchmark on one model, written as result.json, scores.jsonl, outputs.jsonl."""

from __future__ import annotations

import logging
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping

from ablate.evals import get_benchmark
from ablate.evals.base import EvalEnv, EvalError, check_protocol
from ablate.evals.data import load_items
from ablate.store import atomic_write_json, atomic_write_jsonl

CORE_LIBRARIES = ("torch", "transformers", "lm_eval")


def library_versions(names) -> dict[str, str]:
    versions = {}
    for name in dict.fromkeys(names):
        try:
            versions[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            try:
                versions[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                versions[name] = "not installed"
    return versions


def evaluate_benchmark(benchmark: str, model_dir: Path, out_dir: Path, *, protocol: str = "paper",
                       limit: int | None = None, seed: int = 0, max_new_tokens: int | None = None,
                       judge: str | None = None, sampler: Mapping[str, Any] | None = None,
                       reward_model_dir: Path | None = None, data_dir: Path | str | None = None,
                       options: Mapping[str, Any] | None = None,
                       cache_dir: Path = Path(".ablate-cache"), backend=None,
                       log: logging.Logger | None = None,
                       progress: Callable[[int, int], None] | None = None) -> dict:
    """Run one benchmark and write its three files into ``out_dir``; returns result.json's data."""
    started = time.time()
    check_protocol(protocol)
    bench = get_benchmark(benchmark)
    items, data_root = load_items(bench, protocol, limit, data_dir)
    env = EvalEnv(model_dir=Path(model_dir), protocol=protocol, seed=seed,
                  max_new_tokens=max_new_tokens, judge=judge,
                  sampler=dict(sampler or {"kind": "greedy"}), options=dict(options or {}),
                  reward_model_dir=reward_model_dir, data_root=data_root,
                  cache_dir=Path(cache_dir), log=log or logging.getLogger("ablate.evals"),
                  progress=progress or (lambda done, total: None), _backend=backend)
    env.log.info("%s: %d items (%s protocol) from %s", benchmark, len(items), protocol,
                 data_root or "the shipped slice")
    try:
        results = bench.evaluate(items, env)
    finally:
        if backend is None and env._backend is not None:  # the one this evaluation loaded
            env._backend.close()
            env._backend = None
    if len(results) != len(items):
        raise EvalError(f"{benchmark}: {len(items)} items but {len(results)} results")
    summary = bench.summarize(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(out_dir / "scores.jsonl", [r.score_row() for r in results])
    atomic_write_jsonl(out_dir / "outputs.jsonl", [r.output_row() for r in results])
    result = {
        "benchmark": benchmark, "category": bench.category, "protocol": protocol,
        "metric": bench.metric, "value": summary.value, "higher_is_better": bench.higher_is_better,
        "category_score": bench.category_score(summary.value), "secondary": summary.secondary,
        "n_items": len(results), "n_failed": summary.n_failed, "limit": limit,
        "versions": library_versions(CORE_LIBRARIES + bench.libraries),
        "data_revision": bench.data_revision,
        "data_source": str(data_root) if data_root else "shipped slice",
        "sampler": env.sampler, "judge": judge, "scores_file": "scores.jsonl",
        "outputs_file": "outputs.jsonl", "seconds": round(time.time() - started, 3),
    }
    if summary.provenance:
        result["provenance"] = summary.provenance
    if env.sampler.get("kind") == "best_of_n":
        # Best-of-N reranks greedy generations; a benchmark that scores log-likelihoods (MMLU,
        # TruthfulQA) or samples for pass@k (code) gets the model's own score, and says so.
        result["sampler_applied"] = env.best_of_n_calls > 0
        if not result["sampler_applied"]:
            env.log.warning("%s: the best_of_n sampler does not apply to this benchmark; its "
                            "score is the model's own", benchmark)
    atomic_write_json(out_dir / "result.json", result)
    return result


def run_step(ctx) -> None:
    config = ctx.config
    for key in ("benchmark", "protocol"):
        if key not in config:
            raise EvalError(f"eval step {ctx.step.name!r}: config has no {key!r}")
    if "model" in ctx.inputs:
        model_dir = ctx.input_model_dir("model")
    elif config.get("model"):
        from ablate.models import resolve_model
        model_dir = resolve_model(config["model"])
    else:
        raise EvalError(f"eval step {ctx.step.name!r}: no `model` input and no `model` in config")
    reward_model_dir = (ctx.input_model_dir("reward_model") if "reward_model" in ctx.inputs
                        else None)
    benchmark = config["benchmark"]
    evaluate_benchmark(
        benchmark, model_dir, ctx.out_dir, protocol=config["protocol"], limit=config.get("limit"),
        seed=config.get("seed", 0), max_new_tokens=config.get("max_new_tokens"),
        judge=config.get("judge"), sampler=config.get("sampler"),
        reward_model_dir=reward_model_dir, data_dir=config.get("data_dir"),
        options=config.get("options"), cache_dir=ctx.cache_dir, log=ctx.log,
        progress=lambda done, total: ctx.progress(done, total, benchmark))
