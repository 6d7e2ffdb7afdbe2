"""Cluster profiles (``slurm/*.yaml``): where and with what resources each kind of step runs.

A profile names the partition (and account, qos, constraint) and gives separate resources to the
three classes of step: ``train`` (DPO, reward model, PPO), ``eval`` (generation and scoring of a
benchmark) and ``judge`` (benchmarks scored by an LLM judge, e.g. AlpacaEval). A class may
override the partition and add its own sbatch flags. ``steps`` refines them per step kind and
model size (``rm: [{min_params: 30B, nodes: 4}]``), and ``gpu`` says what one GPU holds and
computes, for the planner (``ablate.launch.planner``). Loaded strictly (unknown keys are errors
with their line) by ``ablate.spec.load.load_model``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ablate.spec.load import SpecError, load_model
from ablate.spec.plan import Step
from ablate.spec.steps import step_kind

ResourceClass = Literal["train", "eval", "judge"]
RESOURCE_CLASSES: tuple[str, ...] = ("train", "eval", "judge")
# The kinds of job a profile sizes separately (``steps``), each within its class
ResourceKind = Literal["dpo", "rm", "ppo", "best_of_n", "eval", "judge"]
KIND_CLASS: dict[str, str] = {"dpo": "train", "rm": "train", "ppo": "train",
                              "best_of_n": "eval", "eval": "eval", "judge": "judge"}
TRAIN_KINDS = {"train_dpo": "dpo", "train_rm": "rm", "train_ppo": "ppo"}
SIZE_SUFFIX = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}


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


def parse_params(value: float | int | str) -> float:
    """A parameter count: a number, or ``"70B"``, ``"1.5b"``, ``"500M"``."""
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip().lower()
    number, suffix = (text[:-1], text[-1]) if text[-1:].isalpha() else (text, "")
    try:
        if suffix not in SIZE_SUFFIX:
            raise ValueError
        return float(number) * SIZE_SUFFIX[suffix]
    except ValueError:
        raise ValueError(f"{value!r} is not a parameter count (e.g. 30B, 500M, 7e9)") from None


class SizeRule(_Frozen):
    """Resources for the steps of one kind whose model has at least ``min_params`` parameters:
    the fields given replace the class's; the rule with the largest ``min_params`` that a step
    reaches wins (a step's size: its largest model, ``ablate.launch.planner.step_params``)."""

    min_params: float = Field(default=0, ge=0, description="e.g. 30B, 500M or 7e9; 0: every size")
    nodes: int | None = Field(default=None, gt=0)
    gpus_per_node: int | None = Field(default=None, ge=0)
    procs_per_node: int | None = Field(default=None, gt=0)
    cpus_per_task: int | None = Field(default=None, gt=0)
    mem_gb: float | None = Field(default=None, gt=0)
    time_min: int | None = Field(default=None, gt=0)

    @field_validator("min_params", mode="before")
    @classmethod
    def _count(cls, value):
        return parse_params(value)

    def changes(self) -> dict:
        return {k: getattr(self, k) for k in type(self).model_fields
                if k != "min_params" and getattr(self, k) is not None}


class GPUSpec(_Frozen):
    """One GPU of the partition, for the planner: its memory and its dense bf16 peak."""

    memory_gib: float = Field(gt=0, description="usable memory of one GPU (GiB)")
    bf16_tflops: float = Field(default=989, gt=0, description="dense bf16 peak (TFLOP/s): 989 "
                               "for an H100 SXM or H200")


class ClusterEnvironment(_Frozen):
    """What the processes of every job see: exported by the sbatch script before ``srun``, so
    that every node's tasks (and torchrun's workers) inherit it. Values are expanded by the job's
    shell (``$SCRATCH/ablate-cache`` works)."""

    interface: str | None = Field(default=None, description="network interface of the nodes' "
                                  "interconnect: NCCL_SOCKET_IFNAME and GLOO_SOCKET_IFNAME")
    env: dict[str, str] = Field(default_factory=dict, description="more variables, e.g. "
                                "{NCCL_IB_HCA: mlx5, NCCL_DEBUG: WARN}")
    cpu_bind: str | None = Field(default=None, description="srun --cpu-bind (cores, sockets, "
                                 "none, map_cpu:...)")
    cache_dir: str | None = Field(default=None, description="models and data cache on storage "
                                  "every node sees: ABLATE_CACHE, and HF_HOME beneath it")

    @model_validator(mode="after")
    def _variable_names(self) -> "ClusterEnvironment":
        bad = [name for name in self.env if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)]
        if bad:
            raise ValueError(f"environment.env: {', '.join(map(repr, bad))} cannot be an "
                             "environment variable's name (letters, digits and _)")
        return self

    def variables(self) -> dict[str, str]:
        out = {}
        if self.interface:
            out["NCCL_SOCKET_IFNAME"] = out["GLOO_SOCKET_IFNAME"] = self.interface
        if self.cache_dir:
            out["ABLATE_CACHE"] = self.cache_dir
            out["HF_HOME"] = f"{self.cache_dir}/huggingface"
        return {**out, **self.env}

    def export_lines(self) -> list[str]:
        def quoted(value: str) -> str:  # double quotes: $VARIABLES expand, nothing else does
            return '"' + re.sub(r'(["\\`])', r"\\\1", value) + '"'

        return [f"export {name}={quoted(value)}" for name, value in self.variables().items()]


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
    environment: ClusterEnvironment = ClusterEnvironment()
    rendezvous_timeout_s: int = Field(default=600, gt=0, description="how long the other nodes "
                                      "of a multi-node job wait for the first one's torchrun "
                                      "address before failing")
    train: Resources = Resources(cpus_per_task=4, mem_gb=32, time_min=24 * 60)
    eval: Resources = Resources(cpus_per_task=4, mem_gb=16, time_min=4 * 60)
    judge: Resources = Resources(cpus_per_task=4, mem_gb=16, time_min=4 * 60)
    # --- per step kind and model size, and the GPU the planner sizes steps for
    steps: dict[ResourceKind, tuple[SizeRule, ...]] = Field(
        default_factory=dict, description="per step kind, rules by model size over its class's "
        "resources, e.g. {rm: [{min_params: 30B, nodes: 4}]}")
    gpu: GPUSpec | None = Field(default=None, description="what one GPU holds and computes; "
                                "without it the dry run sizes no step")

    @model_validator(mode="after")
    def _single_node_classes(self) -> "ClusterProfile":
        for name in ("eval", "judge"):
            if getattr(self, name).nodes != 1:
                raise ValueError(f"{name}.nodes: evaluation jobs run on one node (got "
                                 f"{getattr(self, name).nodes})")
        for kind, rules in self.steps.items():
            for n, rule in enumerate(rules):
                if KIND_CLASS[kind] != "train" and (rule.nodes or 1) != 1:
                    raise ValueError(f"steps.{kind}[{n}].nodes: evaluation jobs run on one node "
                                     f"(got {rule.nodes})")
                if self.node_gpus is not None and (rule.gpus_per_node or 0) > self.node_gpus:
                    raise ValueError(f"steps.{kind}[{n}].gpus_per_node: {rule.gpus_per_node} "
                                     f"GPUs, but a node has {self.node_gpus} (node_gpus); raise "
                                     "its nodes instead")
        return self

    def resources(self, resource_class: str) -> Resources:
        return getattr(self, resource_class)

    def resources_for(self, kind: str, params: float | None) -> Resources:
        """A job's resources: its class's, changed by the largest of its kind's size rules that
        ``params`` reaches (a step of unknown size gets the rules for every size, min_params 0)."""
        resources = self.resources(KIND_CLASS[kind])
        reached = [r for r in self.steps.get(kind, ()) if r.min_params <= (params or 0)]
        for rule in sorted(reached, key=lambda r: r.min_params):
            resources = resources.model_copy(update=rule.changes())
        return resources

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


def resource_kind(step: Step) -> str:
    """Which of the profile's ``steps`` kinds sizes a step: dpo, rm, ppo, best_of_n (an eval
    ranking samples with a reward model), judge (scored by a model behind an API) or eval."""
    if step.kind in TRAIN_KINDS:
        return TRAIN_KINDS[step.kind]
    klass = resource_class(step)
    if klass == "judge":
        return "judge"
    return "best_of_n" if step.config.sampler.kind == "best_of_n" else "eval"


def resource_class(step: Step) -> str:
    """Which resources a step runs with: training, evaluation, or evaluation judged by a model
    behind an API (the profile's ``judge`` class)."""
    if step_kind(step.kind).resources == "train":
        return "train"
    judge = getattr(step.config, "judge", None)
    if judge is not None and judge.kind in ("openai", "unrecorded"):
        return "judge"
    return "eval"
