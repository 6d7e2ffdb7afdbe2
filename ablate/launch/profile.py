"""Cluster profiles (``slurm/*.yaml``): where and with what resources each kind of step runs.

A profile names the partition (and account, qos, constraint) and gives separate resources to the
three classes of step: ``train`` (DPO, reward model, PPO), ``eval`` (generation and scoring of a
benchmark) and ``judge`` (benchmarks scored by an LLM judge, e.g. AlpacaEval). A class may
override the partition and add its own sbatch flags. Loaded strictly (unknown keys are errors with
their line) by ``ablate.spec.load.load_model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ablate.spec.load import SpecError, load_model
from ablate.spec.plan import Step
from ablate.spec.steps import step_kind

ResourceClass = Literal["train", "eval", "judge"]
RESOURCE_CLASSES: tuple[str, ...] = ("train", "eval", "judge")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(_Frozen):
    """What one job of a class asks SLURM for."""

    nodes: int = Field(default=1, gt=0)
    gpus_per_node: int = Field(default=0, ge=0)
    procs_per_node: int | None = Field(
        default=None, gt=0, description="training processes per node (torchrun's nproc_per_node); "
        "default: gpus_per_node, or 1 without GPUs")
    cpus_per_task: int = Field(default=1, gt=0)
    mem_gb: float = Field(default=4, gt=0, description="memory per node")
    time_min: int = Field(default=60, gt=0)
    partition: str | None = None  # overrides the profile's
    qos: str | None = None
    constraint: str | None = None
    sbatch: dict[str, str | int | bool] = Field(default_factory=dict,
                                                description="extra sbatch flags, e.g. {exclusive: true}")

    @property
    def processes_per_node(self) -> int:
        return self.procs_per_node or max(1, self.gpus_per_node)

    @property
    def world_size(self) -> int:
        return self.nodes * self.processes_per_node


class ClusterProfile(_Frozen):
    partition: str | None = None  # None: the cluster's default partition
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    node_gpus: int | None = Field(default=None, ge=0, description="GPUs one node of the partition "
                                  "has; default: asked from sinfo's GRES")
    setup: tuple[str, ...] = Field(default=(), description="shell lines run before each job "
                                   "(module loads, activating the environment)")
    sbatch: dict[str, str | int | bool] = Field(default_factory=dict,
                                                description="extra sbatch flags for every job")
    max_attempts: int = Field(default=2, gt=0, description="runs of a failing step before it is "
                              "marked failed (a preemption or time-out requeue does not count)")
    max_requeues: int = Field(default=3, ge=0, description="time-outs/preemptions survived")
    signal_delay_s: int = Field(default=120, gt=0, description="seconds before the time limit at "
                                "which a job checkpoints and requeues itself")
    array_parallelism: int = Field(default=64, gt=0)
    log_dir: str | None = None  # submitit's folder; default <store>/slurm
    train: Resources = Resources(cpus_per_task=4, mem_gb=32, time_min=24 * 60)
    eval: Resources = Resources(cpus_per_task=4, mem_gb=16, time_min=4 * 60)
    judge: Resources = Resources(cpus_per_task=4, mem_gb=16, time_min=4 * 60)

    @model_validator(mode="after")
    def _single_node_classes(self) -> "ClusterProfile":
        for name in ("eval", "judge"):
            if getattr(self, name).nodes != 1:
                raise ValueError(f"{name}.nodes: evaluation jobs run on one node (got "
                                 f"{getattr(self, name).nodes})")
        return self

    def resources(self, resource_class: str) -> Resources:
        return getattr(self, resource_class)

    def partition_for(self, resource_class: str) -> str | None:
        return self.resources(resource_class).partition or self.partition


@dataclass(frozen=True)
class LoadedProfile:
    """A validated profile and the file it came from (errors name the file)."""

    path: Path
    config: ClusterProfile

    @property
    def name(self) -> str:
        return self.path.stem


def load_profile(path: Path | str | None) -> LoadedProfile:
    if path is None:
        raise SpecError("--submit needs a cluster profile: --cluster slurm/NAME.yaml "
                        "(see slurm/README.md; slurm/local.yaml is the one-node local cluster)")
    path = Path(path)
    if not path.is_file():
        near = sorted(p.name for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
        hint = f"; profiles in {path.parent}: {', '.join(near)}" if near else ""
        raise SpecError(f"{path}: no such cluster profile{hint}")
    return LoadedProfile(path, load_model(ClusterProfile, path))


def resource_class(step: Step) -> str:
    """Which resources a step runs with: training, evaluation, or evaluation judged by a model
    behind an API (the profile's ``judge`` class)."""
    if step_kind(step.kind).resources == "train":
        return "train"
    judge = getattr(step.config, "judge", None)
    if judge is not None and judge.kind in ("openai", "unrecorded"):
        return "judge"
    return "eval"
