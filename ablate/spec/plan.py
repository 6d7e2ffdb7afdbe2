"""Steps and plans: what a grid expands into.

A step is one unit of work with a kind, a resolved config (plain JSON data) and named inputs (the
ids of the steps whose outputs it reads). Its id is the hash of all three, so two grid cells that
need the same work (the SFT baseline's GSM8k eval, one RM shared by four PPO runs) share one step.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

STEP_KINDS = ("train_dpo", "train_rm", "train_ppo", "eval")


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def config_hash(obj: Any, length: int = 12) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


@dataclass(frozen=True)
class Step:
    kind: str
    name: str  # readable, e.g. "eval gsm8k of alg=dpo,data=uf-fg,..."
    config: Mapping[str, Any]
    inputs: Mapping[str, str] = field(default_factory=dict)  # role -> step id

    @property
    def id(self) -> str:
        return config_hash({"kind": self.kind, "config": self.config, "inputs": dict(self.inputs)})

    def to_json(self) -> dict:
        return {"id": self.id, "kind": self.kind, "name": self.name,
                "config": self.config, "inputs": dict(self.inputs)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Step":
        step = cls(kind=data["kind"], name=data["name"], config=data["config"],
                   inputs=dict(data.get("inputs", {})))
        if "id" in data and data["id"] != step.id:
            raise ValueError(f"step {data['name']!r}: stored id {data['id']} does not match "
                             f"its config's hash {step.id}")
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
        return {"grid": self.grid, "cells": [c.to_json() for c in self.cells],
                "steps": {sid: s.to_json() for sid, s in self.steps.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Plan":
        return cls(grid=data["grid"], cells=tuple(Cell.from_json(c) for c in data["cells"]),
                   steps={sid: Step.from_json(s) for sid, s in data["steps"].items()})
