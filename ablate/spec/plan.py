"""Steps and plans: what a grid expands into.

A step is one unit of work: a typed config (``ablate.spec.steps``; its class names the kind) and
named inputs (the ids of the steps whose outputs it reads). Its id hashes the kind, the config's
identity (what determines the result) and the inputs, so two grid cells that need the same work
(the SFT baseline's GSM8k eval, one RM shared by four PPO runs) share one step, and a setting
that only changes how a step runs keeps its id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping

from pydantic import ValidationError

from ablate.spec.steps import STEP_KINDS, StepConfig, execution_fields, identity

# The layout of stored plans and steps. A store written before typed step ids has none and is
# migrated by ``ablate store migrate``; one from a newer ablate is refused.
STORE_SCHEMA = 1


class StoreFormatError(ValueError):
    """A stored plan or step this code cannot read as it is; the message says what to do."""


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def config_hash(obj: Any, length: int = 12) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def step_id(kind: str, config: StepConfig, inputs: Mapping[str, str]) -> str:
    return config_hash({"kind": kind, "config": identity(config), "inputs": dict(inputs)})


@dataclass(frozen=True)
class Step:
    name: str  # readable, e.g. "eval gsm8k of alg=dpo,data=uf-fg,..."
    config: StepConfig
    inputs: Mapping[str, str] = field(default_factory=dict)  # role -> step id

    @property
    def kind(self) -> str:
        return self.config.kind

    @cached_property
    def id(self) -> str:
        return step_id(self.kind, self.config, self.inputs)

    def to_json(self) -> dict:
        return {"id": self.id, "kind": self.kind, "name": self.name,
                "config": self.config.model_dump(mode="json"), "inputs": dict(self.inputs)}

    def record(self) -> dict:
        """What a step's folder records (spec.json): the step, and apart from the fields that
        determine its result, the execution settings it ran with."""
        return {**self.to_json(), "schema": STORE_SCHEMA,
                "execution": execution_fields(self.config)}

    @classmethod
    def of(cls, kind: str, name: str, config: Mapping[str, Any],
           inputs: Mapping[str, str] | None = None) -> "Step":
        """A step from its config as JSON data, validated into its kind's config type."""
        step_kind = STEP_KINDS.get(kind)
        if step_kind is None:
            raise StoreFormatError(f"step {name!r}: unknown kind {kind!r}; "
                                   f"known: {', '.join(STEP_KINDS)}")
        try:
            typed = step_kind.config.model_validate(config)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}"
                                 for e in err.errors())
            raise StoreFormatError(f"step {name!r} ({kind}): its config does not fit this "
                                   f"ablate's {step_kind.config.__name__}: {problems}") from None
        return cls(name=name, config=typed, inputs=dict(inputs or {}))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Step":
        name = data.get("name", "?")
        step = cls.of(data.get("kind", ""), name, data.get("config", {}), data.get("inputs"))
        if "id" in data and data["id"] != step.id:
            raise StoreFormatError(f"step {name!r}: stored id {data['id']} does not match its "
                                   f"config's hash {step.id}")
        return step


@dataclass(frozen=True)
class Cell:
    """One row of a grid: its axis values, the step that yields its model, and its evaluations."""

    name: str
    axes: Mapping[str, Any]
    model_step: str | None  # None for the SFT baseline (the base model itself)
    evals: Mapping[str, str]  # benchmark -> eval step id
    is_baseline: bool = False

    def to_json(self) -> dict:
        return {"name": self.name, "axes": dict(self.axes), "model_step": self.model_step,
                "evals": dict(self.evals), "is_baseline": self.is_baseline}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Cell":
        return cls(name=data["name"], axes=data["axes"], model_step=data["model_step"],
                   evals=data["evals"], is_baseline=data.get("is_baseline", False))


@dataclass(frozen=True)
class Plan:
    grid: str
    cells: tuple[Cell, ...]
    steps: Mapping[str, Step]  # id -> step, each step once

    def order(self) -> list[Step]:
        """Steps in dependency order (inputs first), stable by kind then name."""
        rank = {kind: i for i, kind in enumerate(STEP_KINDS)}
        pending = sorted(self.steps.values(), key=lambda s: (rank.get(s.kind, 99), s.name))
        done: set[str] = set()
        ordered: list[Step] = []
        while pending:
            ready = [s for s in pending if all(i in done for i in s.inputs.values())]
            if not ready:
                raise ValueError("the plan has a dependency cycle or a missing input: "
                                 + ", ".join(s.name for s in pending))
            for step in ready:
                ordered.append(step)
                done.add(step.id)
            pending = [s for s in pending if s.id not in done]
        return ordered

    def upstream(self, step_id: str) -> list[str]:
        """The step and everything it depends on, inputs first."""
        seen: list[str] = []

        def visit(sid: str) -> None:
            for dep in self.steps[sid].inputs.values():
                visit(dep)
            if sid not in seen:
                seen.append(sid)

        visit(step_id)
        return seen

    def to_json(self) -> dict:
        return {"schema": STORE_SCHEMA, "grid": self.grid,
                "cells": [c.to_json() for c in self.cells],
                "steps": {sid: s.to_json() for sid, s in self.steps.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Plan":
        check_schema(data, f"plan of grid {data.get('grid')!r}")
        return cls(grid=data["grid"], cells=tuple(Cell.from_json(c) for c in data["cells"]),
                   steps={sid: Step.from_json(s) for sid, s in data["steps"].items()})


def check_schema(data: Mapping[str, Any], what: str) -> None:
    """Refuse a stored plan or step of another layout, saying what to do about it."""
    schema = data.get("schema")
    if schema is None:
        raise StoreFormatError(f"{what} was written before step configs were typed (its ids "
                               "hash other fields): run `ablate store migrate` to re-key the "
                               "store; nothing has to be recomputed")
    if not isinstance(schema, int) or schema > STORE_SCHEMA:
        raise StoreFormatError(f"{what} was written by a newer ablate (store schema {schema}; "
                               f"this one reads {STORE_SCHEMA}): upgrade ablate")
