"""What is checked before anything of a grid runs or is queued, so that a problem stops the
command at once instead of failing a job later: local model folders, the data each step trains
on, what its length limits keep, the judges' credentials and vLLM where a step will use it. Each
check raises a SpecError saying what is wrong; progress goes to the console the command line
passes in."""

from __future__ import annotations

import os

from rich.console import Console

from ablate.spec import GridSpec, Plan, SpecError
from ablate.spec.judges import missing_credentials
from ablate.store import RunStore


def check_training_lengths(plan: Plan, console: Console) -> None:
    """Each training step has something its length limits keep (counted as its trainer will);
    a step whose model or data cannot be read here is named and left to its job."""
    from ablate.train.preflight import usable_examples

    for step in plan.order():
        if not step.kind.startswith("train"):
            continue
        try:
            usable, rows, skipped = usable_examples(step)
        except Exception as exc:  # a hub model or dataset offline: the job will read it
            console.print(f"[yellow]note:[/] {step.name}: lengths not checked here "
                          f"({type(exc).__name__}: {str(exc)[:160]})", highlight=False)
            continue
        what = "prompts" if step.kind == "train_ppo" else "pairs"
        if not usable:
            raise SpecError(f"{step.name}: every one of its {rows:,} rows is dropped before "
                            f"training ({', '.join(f'{k}: {v}' for k, v in skipped.items())}); "
                            "raise its max_length / max_prompt_length, or check its data")
        console.print(f"{step.name}: {usable:,} of {rows:,} {what} fit its length limits",
                      highlight=False)


def check_plan_data(plan: Plan, console: Console) -> None:
    """Each declared file or hub dataset opened and its rows counted; a SpecError when one has
    no usable row (nothing would train)."""
    from ablate.data.load import DataUnavailable
    from ablate.data.own import check_source, plan_sources

    for ref, prompts in plan_sources(plan):
        try:
            checked = check_source(ref, prompts)
        except DataUnavailable as exc:
            raise SpecError(str(exc)) from None
        usable = len(checked.rows)
        sampled = f" (first {checked.read:,} checked)" if checked.read < checked.total else ""
        problems = "".join(f"\n  unusable: {line}" for line in checked.describe())
        if not usable:
            raise SpecError(f"{checked.label}: no usable row of {checked.read:,}{problems}")
        console.print(f"data {ref.describe()}: {checked.total:,} rows{sampled}, {usable:,} "
                      f"usable{problems}", highlight=False)


def check_model_paths(grid: GridSpec) -> None:
    """A local model folder that is not there fails every step that reads it, after queueing."""
    from ablate.models import ModelError, resolve_model

    for name, model in grid.models.items():
        if model.path is None:
            continue
        try:
            resolve_model(model)
        except ModelError as exc:
            raise SpecError(f"grid {grid.name!r}: models.{name}.path: {exc}") from None


def check_judges(plan: Plan, run_store: RunStore) -> None:
    """Before anything runs: every judge an unfinished eval step needs can be reached (its API
    key is set), or one SpecError says what is missing and how to provide it."""
    pending = {s.config.benchmark: s.config.judge for s in plan.order()
               if s.kind == "eval" and s.config.judge is not None and not run_store.is_done(s)}
    problems = missing_credentials(pending, os.environ)
    if problems:
        raise SpecError("no usable judge, so nothing was run:\n  " + "\n  ".join(problems))


def check_engine(plan: Plan, run_store: RunStore) -> None:
    """Before anything runs: where an unfinished step will use vLLM (PPO's ``rollout_engine``, or
    evals with ``$ABLATE_ENGINE=vllm``), vLLM is installed and supports each base model; else a
    SpecError says why."""
    from ablate.generate.base import ENGINE_VARIABLE

    pending = [s for s in plan.order() if not run_store.is_done(s)]
    on_vllm = [s for s in pending
               if getattr(getattr(s.config, "algorithm", None), "rollout_engine", None) == "vllm"
               or (s.kind == "eval" and os.environ.get(ENGINE_VARIABLE) == "vllm")]
    if not on_vllm:
        return
    from ablate.generate import GenerationError
    from ablate.generate.vllm_backend import check_model, import_vllm
    from ablate.models import ModelError, resolve_model

    models = {s.config.model for s in on_vllm if getattr(s.config, "model", None) is not None}
    try:
        import_vllm()
        for model in sorted(models, key=str):
            check_model(resolve_model(model))
    except (GenerationError, ModelError) as exc:
        raise SpecError(f"{exc}; nothing was run") from None
