"""Step configs: one frozen, typed config per step kind, and the table of kinds.

Expansion builds these; the launcher hands them to the runner as they are, so no layer re-parses
a dict or restates a default. A step's id hashes ``identity(config)``: the fields that determine
its result, without the ones that only say how it runs (``ablate.spec.schema.execution``) and
without fields left at their default. The second rule lets the schema grow: a new field whose
default reproduces the old behaviour keeps every existing id. Changing what an existing id means
(a default's value, a benchmark's protocol, a trainer's mechanics) is a versioned change: a
benchmark's protocol version (``ablate.spec.benchmarks``) and a trainer's ``version`` (its row of
``STEP_KINDS``) enter the ids, and a store migration re-keys older stores
(``ablate.store.migrate``).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Callable, ClassVar, Literal, Mapping

from pydantic import BaseModel, Field

from ablate.spec.schema import (
    FORMAT_COLUMNS, PROMPT_FORMAT_COLUMNS, DataRef, DataSource, DPOConfig, Frozen, JudgeSpec,
    ModelSpec, PPOConfig, RMConfig, Sampler, Greedy,
    is_execution,
)


def identity(model: BaseModel) -> dict[str, Any]:
    """The fields of ``model`` that determine a result, recursively: execution fields dropped,
    fields at their default dropped (``kind`` discriminators always kept)."""
    data: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        if is_execution(field):
            continue
        value = getattr(model, name)
        if name != "kind" and not field.is_required() \
                and value == field.get_default(call_default_factory=True):
            continue
        data[name] = _plain(value, identity)
    return data


def execution_fields(model: BaseModel) -> dict[str, Any]:
    """The execution fields of ``model``, recursively: how the step ran, recorded beside it."""
    data: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if is_execution(field):
            data[name] = _plain(value, lambda m: m.model_dump(mode="json"))
        elif isinstance(value, BaseModel):
            inner = execution_fields(value)
            if inner:
                data[name] = inner
        elif isinstance(value, Mapping):  # a panel judge's roles
            inner = {str(k): execution_fields(v) for k, v in value.items()
                     if isinstance(v, BaseModel)}
            if any(inner.values()):
                data[name] = inner
    return data


def _plain(value: Any, submodel) -> Any:
    if isinstance(value, BaseModel):
        return submodel(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, submodel) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, submodel) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    return value


class StepConfig(Frozen):
    kind: ClassVar[str]


class PromptsRef(DataSource):
    """PPO's prompts: the prompts of preference data, or a prompt set (each named, a file or a
    hub dataset)."""

    source: Literal["preference_data", "prompt_set"]
    max_rows: int | None = Field(default=None, gt=0)
    sample_seed: int = 0

    def format_columns(self) -> dict[str, tuple[str, ...]]:
        return FORMAT_COLUMNS if self.source == "preference_data" else PROMPT_FORMAT_COLUMNS


class TrainStep(StepConfig):
    """What every training step has: the trainer's mechanics version (its row of
    ``STEP_KINDS``), the base model and the run's seed."""

    version: int = 1
    model: ModelSpec
    seed: int


class DPOStep(TrainStep):
    kind: ClassVar[str] = "train_dpo"
    data: DataRef
    algorithm: DPOConfig


class RMStep(TrainStep):
    kind: ClassVar[str] = "train_rm"
    data: DataRef
    train: RMConfig


class PPOStep(TrainStep):
    """Input ``reward_model`` (a ``train_rm`` step) unless ``reward`` names a programmatic one."""

    kind: ClassVar[str] = "train_ppo"
    prompts: PromptsRef
    algorithm: PPOConfig
    reward: str | None = None  # a programmatic reward instead of the reward model input


class EvalStep(StepConfig):
    """One benchmark on one model: a ``model`` input (a training step), or ``model`` here (a base
    model); a best-of-N sampler also takes a ``reward_model`` input."""

    kind: ClassVar[str] = "eval"
    benchmark: str
    protocol: Literal["paper", "full"]
    version: int = 1  # the benchmark's protocol version (ablate.spec.benchmarks)
    limit: int | None = Field(default=None, gt=0)
    seed: int
    max_new_tokens: int | None = Field(default=None, gt=0)
    sampler: Sampler = Greedy()
    judge: JudgeSpec | None = None
    shots: int = Field(default=0, ge=0)
    classifier: ModelSpec | None = None  # a classifier the benchmark scores with (ToxiGen)
    model: ModelSpec | None = None
    # A benchmark of the user's own: its class ("package.module:Class") and its category, which
    # the report needs without importing it
    module: str | None = None
    category: str | None = None


@dataclass(frozen=True)
class StepKind:
    """A step kind: its config type, its runner ("module:function", imported only when a step
    runs, so that planning and status never load torch), the resources it is scheduled with, and
    its recipe in ``ablate.train.fsdp`` when it can run over several processes."""

    name: str
    config: type[StepConfig]
    runner: str
    resources: Literal["train", "eval"]
    recipe: str | None = None
    # A trainer's mechanics version: bump it when the same config would train another model
    # (an optimiser constant, a loss detail, a random stream), so older results are not reused.
    version: int = 1


STEP_KINDS: dict[str, StepKind] = {k.name: k for k in (
    # version 2: the paper's optimiser, schedules, data use and PPO mechanics (docs/protocol.md,
    # Training) and one seed derivation for the training streams (ablate.spec.seeds)
    StepKind("train_dpo", DPOStep, "ablate.train.dpo:run_step", "train", "dpo", version=2),
    StepKind("train_rm", RMStep, "ablate.train.rm:run_step", "train", "rm", version=2),
    # version 3 of PPO: rollouts sample from the 50 most likely tokens, as the paper's did
    # (PPOConfig.top_k; version 2 sampled from every token)
    StepKind("train_ppo", PPOStep, "ablate.train.ppo:run_step", "train", "ppo", version=3),
    StepKind("eval", EvalStep, "ablate.evals.runner:run_step", "eval"),
)}


def step_kind(name: str) -> StepKind:
    try:
        return STEP_KINDS[name]
    except KeyError:
        raise KeyError(f"unknown step kind {name!r}; known: {', '.join(STEP_KINDS)}") from None


def recipe_kind(recipe: str) -> StepKind:
    """The step kind whose multi-process recipe is ``recipe``."""
    for kind in STEP_KINDS.values():
        if kind.recipe == recipe:
            return kind
    raise KeyError(f"unknown recipe {recipe!r}; known: "
                   f"{', '.join(k.recipe for k in STEP_KINDS.values() if k.recipe)}")


def runner_overrides() -> dict[str, str]:
    """``ABLATE_RUNNERS="eval=pkg.mod:fn,train_dpo=..."``: replace a kind's runner in this process
    and in every job it submits (SLURM jobs and their torchrun workers inherit the environment).
    For plugins and for tests that need a runner to fail or pace itself inside a scheduler's job,
    where monkeypatching cannot reach."""
    overrides = {}
    for item in filter(None, os.environ.get("ABLATE_RUNNERS", "").split(",")):
        kind, sep, target = item.strip().partition("=")
        if not sep or ":" not in target:
            raise ValueError(f"ABLATE_RUNNERS: expected KIND=module:function, got {item!r}")
        overrides[kind] = target
    return overrides


def runner_for(kind: str) -> Callable:
    """The function that runs a step of ``kind`` (it takes the step's ``StepContext``)."""
    runners = {**{k: v.runner for k, v in STEP_KINDS.items()}, **runner_overrides()}
    if kind not in runners:
        raise KeyError(f"no runner for step kind {kind!r}; known: {', '.join(runners)}")
    module, _, name = runners[kind].partition(":")
    return getattr(importlib.import_module(module), name)
