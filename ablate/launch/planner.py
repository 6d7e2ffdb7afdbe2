"""The planner: per step, the peak memory one GPU needs and the GPU-hours it takes, from the
models' shapes, the step's settings and the job's resources; a step that cannot fit is refused
with the settings that would make it fit.

Memory per GPU (bytes) under FSDP sharding over the job's ``world`` ranks, at each of a step's
peaks (the start of a micro-batch's backward, AdamW's step, PPO's generation):
- a trained model: fp32 weights (4 B/param) and AdamW's two fp32 moments (8 B/param), each
  sharded 1/world; fp32 gradients (4 B/param, sharded) while micro-batches accumulate (between
  optimiser steps with one micro-batch each they are freed, ``zero_grad(set_to_none=True)``),
  and during the step, plus one state-sized temporary where AdamW is not fused; with
  ``cpu_offload`` all of it lives in host memory; over several ranks FSDP gathers
  ``PREFETCHED_LAYERS`` decoder layers at a time (bf16, its mixed precision on a GPU).
- a frozen model as the trainers hold it (``frozen_bytes``): PPO's reference and reward model
  and DPO's online reference sharded with the policy, in bf16 over several GPUs and fp32 on
  one (``ablate.train.fsdp.frozen_dtype``).
- best-of-N's scoring (``scoring_phase``): the generating model released, the reward model in
  its ``reward_dtype`` spread layer by layer over the evaluation's GPUs (one process), and one
  scoring batch (``ablate.spec.model_shapes.scoring_batch_bytes``).
- activations of the longest micro-batch (``activation_bytes_per_token``): each decoder layer
  keeps its norms' fp32 inputs and outputs, the bf16 copies autocast feeds its five input
  projections, the rotated queries, the keys and values (repeated to every head: training
  batches are masked), the attention output, and the gated MLP's four intermediate tensors; with
  checkpointing only each layer's input plus one layer recomputed in the backward. The trainers
  chunk the output layer (``ablate.train.logps``): one chunk's logits and the layer's gradient
  (``output_layer_bytes``). On a CPU the math attention kernel also keeps each layer's softmax
  (``attention_scores_bytes``).
- PPO's generation: through the sharded policy, which FSDP gathers a layer at a time
  (``ablate.train.fsdp.generating``), and a bf16 KV cache for ``generation_batch_size`` prompts.

Calibration (tests/launch/test_planner.py checks each within 15 %): the H200 DPO run of
perf/RESULTS.md (1.7B shape, micro-batch 8 pairs, longest row 1,742 tokens, peak 58.6 GiB
allocated; the formulas: 62.2) and CPU runs of two small random models
(``perf.checks.training_memory``: fp32, peak resident memory above the process's own).
GPU-hours: FLOPs (8·P·T for DPO's reference pass plus training, 6·P·T for a reward model,
forward and backward passes of every PPO model, 2·P·T more where checkpointing recomputes the
forward) at ``USEFUL_FLOP_UTILISATION`` of the GPU's dense bf16 peak, with T the data's real
tokens where counted, else at the step's length limits (an upper bound) for its
rows (its ``max_rows``, else the paper's size of a registry data set: ``published_rows``).

The rules ``plan_step`` applies to a training step, in order, until it fits: activation
checkpointing on (on where the config sets ``gradient_checkpointing: true``, else only where the
step would not fit without it: it costs about a third more compute), then the micro-batch halved
down to 1 (both execution fields: the result is the same). A step that still does not fit is
refused with what would make it fit: ``cpu_offload``, or the fewest nodes that would.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import get_args

from ablate.data.registry import published_rows
from ablate.launch.profile import ClusterProfile, GPUSpec, Resources, resource_kind
from ablate.spec.model_shapes import (
    GPU_HEADROOM, KNOWN_SHAPES, SCORING_BATCH, ModelShape, scoring_batch_bytes, scoring_weight_bytes,
    shape_from_config,
)
from ablate.spec.plan import Plan, Step
from ablate.spec.schema import ModelSpec, RewardDtype

GIB = 2 ** 30
FP32, BF16 = 4, 2
ADAM_BYTES = 2 * FP32  # AdamW's two moments
PREFETCHED_LAYERS = 2  # FSDP gathers the next layer while one runs
# perf/RESULTS.md, DPO on the 1.7B shape on an H200 (2026-11-27): 19.1 % as 8·P·T over reference
# plus training seconds (the RM's 6·P·T over training seconds: 18.3 %)
USEFUL_FLOP_UTILISATION = 0.191
# answer tokens per output-layer chunk: CompletionLogps's default (ablate/train/logps.py; a test
# checks they agree)
LOGIT_CHUNK = 1024
EVAL_CONTEXT = 4096  # tokens of prompt and reply an evaluation's KV cache is sized for


# ---------------------------------------------------------------- pure formulas


def attention_scores_bytes(shape: ModelShape, rows: int, width: int, checkpointing: bool,
                           compute_bytes: int = FP32) -> float:
    """The softmax the math attention kernel keeps per layer (PyTorch's choice on a CPU with a
    mask; GPU kernels keep none): rows × heads × width² (one layer's under checkpointing)."""
    layers = 1 if checkpointing else shape.layers
    return layers * rows * shape.heads * width * width * compute_bytes


def activation_bytes_per_token(shape: ModelShape, checkpointing: bool, compute_bytes: int = BF16,
                               residual_bytes: int = FP32) -> float:
    """Activation bytes one token of a training micro-batch keeps for the backward pass:
    ``compute_bytes`` is what matmuls produce (bf16 under autocast, 4 in fp32), ``residual_bytes``
    the residual stream's (the weights' dtype)."""
    h, f = shape.hidden, shape.intermediate
    q = shape.heads * (shape.head_dim or h // shape.heads)
    casts = 5 * compute_bytes * h if compute_bytes != residual_bytes else 0  # q, k, v, gate, up
    # with a mask (every training batch has one) transformers repeats grouped keys and values
    # to every head before attention, so attention keeps them at the queries' width
    layer = (4 * residual_bytes * h + casts
             + compute_bytes * 4 * q  # rotated queries, keys, values; attention output
             + compute_bytes * 4 * f)  # gate, up, silu(gate), their product
    final_norm = 2 * residual_bytes * h
    if not checkpointing:
        return shape.layers * layer + final_norm
    return shape.layers * residual_bytes * h + layer + final_norm


def trained_model_bytes(params: float, world: int, accumulating: bool,
                        offload: bool) -> dict[str, float]:
    """Weights, gradients and optimiser state of a trained model on one GPU."""
    if offload:
        return {"weights": 0.0, "gradients": 0.0, "optimiser": 0.0}
    return {"weights": FP32 * params / world,
            "gradients": FP32 * params / world if accumulating else 0.0,
            "optimiser": ADAM_BYTES * params / world}


def host_bytes_per_rank(params: float, world: int) -> float:
    """Host memory one rank holds for an offloaded trained model (weights, gradients, moments)."""
    return (2 * FP32 + ADAM_BYTES) * params / world


def output_layer_bytes(shape: ModelShape, answer_tokens: int) -> float:
    """What the start of the backward adds under a language-model head: one chunk's fp32
    logits and their softmax, and the output layer's fp32 gradient (made first)."""
    return 2 * min(LOGIT_CHUNK, answer_tokens) * shape.vocab * FP32 \
        + shape.vocab * shape.hidden * FP32


def optimiser_step_bytes(params: float, world: int, offload: bool, fused: bool) -> float:
    """During AdamW's step: weights, gradients, both moments, and the unfused (foreach) path's
    one state-sized temporary (fused: one process on a GPU, ``ablate.train.common``)."""
    if offload:
        return 0.0
    return (2 * FP32 + ADAM_BYTES + (0 if fused else FP32)) * params / world


def trained_model_phases(shape: ModelShape, world: int, rows: int, width: int,
                         answer_tokens: int | None, checkpointing: bool, accumulating: bool,
                         offload: bool = False, compute_bytes: int = BF16,
                         residual_bytes: int = FP32, attention_scores: bool = False,
                         fused: bool = False) -> dict[str, dict[str, float]]:
    """Bytes per GPU of one trained model at its two peaks: the start of the backward of a
    micro-batch of ``rows`` × ``width`` tokens (``answer_tokens`` reach a language-model head;
    None: a reward or value head) and the optimiser step."""
    backward = {**trained_model_bytes(shape.params, world, accumulating, offload),
                "gathered layers": gathered_layers_bytes(shape, world, offload),
                "activations": rows * width * activation_bytes_per_token(
                    shape, checkpointing, compute_bytes, residual_bytes)}
    if attention_scores:
        backward["attention scores"] = attention_scores_bytes(shape, rows, width, checkpointing,
                                                              compute_bytes)
    if answer_tokens:
        backward["output layer"] = output_layer_bytes(shape, answer_tokens)
    step = {"weights, gradients, optimiser": optimiser_step_bytes(shape.params, world, offload,
                                                                  fused)}
    return {"backward": backward, "optimiser step": step}


def gathered_layers_bytes(shape: ModelShape, world: int, offload: bool) -> float:
    """The decoder layers FSDP holds whole while it computes (none on one unsharded rank)."""
    if world == 1 and not offload:
        return 0.0
    return PREFETCHED_LAYERS * shape.layer_params * BF16  # FSDP gathers bf16 on a GPU


def frozen_bytes(world: int) -> int:
    """Bytes per parameter of a frozen model in training: bf16 over several GPUs, fp32 on one
    (``ablate.train.fsdp.frozen_dtype``)."""
    return BF16 if world > 1 else FP32


def frozen_model_bytes(params: float, world: int) -> float:
    """A frozen model in training on one GPU: sharded 1/world."""
    return frozen_bytes(world) * params / world


def scoring_phase(shape: ModelShape, dtype: str, gpus: int) -> dict[str, float]:
    """Best-of-N's scoring on one GPU of ``gpus`` (``ablate.generate.reward_model.
    best_of_n_scorer``): the generating engine released, the reward model's weights in ``dtype``
    spread over the GPUs whole layer by whole layer (so one may hold a layer, or the
    embeddings, more than its share), and one scoring batch at the evaluation's context."""
    weights = scoring_weight_bytes(shape, dtype)
    unit = weights * max(shape.layer_params, shape.vocab * shape.hidden) / shape.params
    return {"reward model": weights / gpus + (unit if gpus > 1 else 0.0),
            "scoring batch": scoring_batch_bytes(shape, SCORING_BATCH, EVAL_CONTEXT, dtype)}


def kv_cache_bytes(shape: ModelShape, sequences: int, tokens: int) -> float:
    """A bf16 KV cache: keys and values of every layer for ``sequences`` × ``tokens``."""
    return 2 * shape.layers * shape.kv_dim * BF16 * sequences * tokens


def gpu_hours(flops: float, gpu: GPUSpec, utilisation: float = USEFUL_FLOP_UTILISATION) -> float:
    return flops / (utilisation * gpu.bf16_tflops * 1e12) / 3600


# ---------------------------------------------------------------- a step's plan


@dataclass(frozen=True)
class Tokens:
    """What a training step processes: ``examples`` (pairs or prompts; None if unknown),
    ``longest`` the tokens its longest example runs as (a pair's row or rows; a prompt with
    its longest reply) and ``tokens_per_example`` their mean (real tokens). Unknown: the step's
    length limits, an upper bound."""

    examples: int | None
    longest: int | None = None
    tokens_per_example: float | None = None
    counted: bool = False  # longest and tokens_per_example from the tokenized data


@dataclass(frozen=True)
class Estimate:
    phases: dict[str, dict[str, float]]  # phase -> component -> bytes per GPU
    host_bytes: float = 0.0  # per node, offloaded state
    flops: float | None = None

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda p: sum(self.phases[p].values()))

    @property
    def peak_bytes(self) -> float:
        return sum(self.phases[self.peak_phase].values())


@dataclass(frozen=True)
class Settings:
    checkpointing: bool
    offload: bool
    nodes: int
    micro_batch: int  # per rank: pairs (DPO, RM) or sequences (PPO)


@dataclass(frozen=True)
class StepPlan:
    step: Step
    resources: Resources
    settings: Settings
    checkpointing_by_rule: bool  # the planner turned checkpointing on (no fit without it)
    estimate: Estimate | None
    params: float | None
    gpu_hours: float | None
    fits: bool
    options: tuple[str, ...] = field(default=())  # settings that would make it fit
    note: str | None = None  # why it was not sized
    tokens: Tokens = Tokens(None)  # what it was sized for

    def describe_memory(self) -> str:
        if self.estimate is None:
            return "-"
        phase = self.estimate.peak_phase
        parts = self.estimate.phases[phase]
        shown = ", ".join(f"{k} {v / GIB:.1f}" for k, v in parts.items() if v >= 0.05 * GIB)
        return f"{self.estimate.peak_bytes / GIB:.1f} GiB at {phase} ({shown})"


def world_size(resources: Resources, nodes: int | None = None) -> int:
    return (nodes or resources.nodes) * resources.processes_per_node


def estimate_training(step: Step, shapes: dict[str, ModelShape], settings: Settings,
                      resources: Resources, tokens: Tokens) -> Estimate:
    """Peak memory per GPU and FLOPs of a DPO, RM or PPO step (``shapes``: role -> shape,
    ``policy`` always, ``reward_model`` for PPO)."""
    cfg = step.config
    world = world_size(resources, settings.nodes)
    policy = shapes["policy"]
    ckpt, offload = settings.checkpointing, settings.offload
    if step.kind in ("train_dpo", "train_rm"):
        algo = cfg.algorithm if step.kind == "train_dpo" else cfg.train
        per_example = 2 * algo.max_length  # both answers: one shared-prompt row or two rows
        longest = tokens.longest or per_example
        rows = settings.micro_batch
        phases = trained_model_phases(
            policy, world, rows, longest,
            rows * longest if step.kind == "train_dpo" else None, ckpt,
            algo.batch_size / world > rows, offload, fused=world == 1)
        if step.kind == "train_dpo" and algo.ref_logps == "online":  # a frozen copy throughout
            for parts in phases.values():
                parts["reference"] = frozen_model_bytes(policy.params, world)
        flops = None
        if tokens.examples is not None:
            total = tokens.examples * algo.epochs * (tokens.tokens_per_example or per_example)
            # a reference pass (DPO), forward and backward, the forward again if checkpointed
            flops = ((2 if step.kind == "train_dpo" else 0) + 6 + (2 if ckpt else 0)) \
                * policy.params * total
        host = host_bytes_per_rank(policy.params, world) * resources.processes_per_node \
            if offload else 0.0
        return Estimate(phases, host, flops)
    # PPO: policy, value model (the reward model's shape, or the policy's), reference, reward model
    algo = cfg.algorithm
    reward = shapes.get("reward_model")
    value = reward if algo.value_init == "reward_model" and reward is not None else policy
    sequence = tokens.longest or algo.max_prompt_length + algo.max_response_length
    accumulating = algo.minibatch_size / world > settings.micro_batch
    states = {f"policy {k}": v for k, v in
              trained_model_bytes(policy.params, world, accumulating, offload).items()}
    states.update({f"value {k}": v for k, v in
                   trained_model_bytes(value.params, world, accumulating, offload).items()})
    states["reference"] = frozen_model_bytes(policy.params, world)
    if reward is not None:
        states["reward model"] = frozen_model_bytes(reward.params, world)
    # each process samples chunks of generation_batch_size prompts through the sharded policy,
    # FSDP gathering its layers one at a time (ablate.train.rollout.sample_token_ids)
    generating = algo.generation_batch_size or algo.minibatch_size
    generation = {**states, "policy layers gathered": gathered_layers_bytes(policy, world, offload),
                  "kv cache": kv_cache_bytes(policy, generating, sequence)}
    frozen = {k: v for k, v in states.items() if k in ("reference", "reward model")}
    phases = {"generation": generation}
    for role, shape, head in (("policy", policy, True), ("value", value, False)):
        other = {k: v for k, v in states.items()
                 if k not in frozen and not k.startswith(role + " ")}
        for phase, parts in trained_model_phases(
                shape, world, settings.micro_batch, sequence,
                settings.micro_batch * algo.max_response_length if head else None, ckpt,
                accumulating, offload, fused=world == 1).items():
            phases[f"{role} {phase}"] = {**{f"{role} {k}": v for k, v in parts.items()},
                                         **other, **frozen}
    flops = None
    if tokens.examples is not None:
        n = tokens.examples * algo.epochs
        scored = n * (tokens.tokens_per_example or sequence)
        flops = (2 * policy.params * n * algo.max_response_length  # sampling
                 + 2 * (policy.params * 2 + value.params + (reward.params if reward else 0))
                 * scored  # policy, reference, value and reward passes over the rollouts
                 + (8 if ckpt else 6) * (policy.params + value.params) * scored
                 * algo.ppo_epochs)
    host = (host_bytes_per_rank(policy.params, world) + host_bytes_per_rank(value.params, world)) \
        * resources.processes_per_node if offload else 0.0
    return Estimate(phases, host, flops)


def estimate_eval(step: Step, shapes: dict[str, ModelShape], resources: Resources) -> Estimate:
    """An evaluation on one node: the model in bf16 over its GPUs with a KV cache for one
    sequence (generation engines batch as memory allows); a best-of-N step then releases it and
    scores the samples with the reward model spread over the same GPUs (``scoring_phase``)."""
    gpus = max(1, resources.gpus_per_node)
    policy = shapes["policy"]
    generation = {"weights": BF16 * policy.params / gpus,
                  "kv cache": kv_cache_bytes(policy, 1, EVAL_CONTEXT) / gpus}
    phases = {"generation": generation}
    if "reward_model" in shapes:
        phases["scoring"] = scoring_phase(shapes["reward_model"],
                                          step.config.sampler.reward_dtype, gpus)
    return Estimate(phases)


def gpu_budget(gpu: GPUSpec) -> float:
    """Bytes of one GPU a step may plan for."""
    return GPU_HEADROOM * gpu.memory_gib * GIB


def fits(estimate: Estimate, gpu: GPUSpec, resources: Resources) -> bool:
    return (estimate.peak_bytes <= gpu_budget(gpu)
            and estimate.host_bytes <= resources.mem_gb * 1e9)


def plan_step(step: Step, shapes: dict[str, ModelShape], resources: Resources, gpu: GPUSpec,
              tokens: Tokens = Tokens(None)) -> StepPlan:
    """Size one step on its resources and apply the rules (checkpointing, then smaller
    micro-batches); a step that still does not fit gets what would make it fit (``options``)."""
    params = max(s.params for s in shapes.values())
    if not step.kind.startswith("train"):
        est = estimate_eval(step, shapes, resources)
        settings = Settings(False, False, 1, 1)
        ok = fits(est, gpu, resources)
        options = []
        for gpus in range(max(1, resources.gpus_per_node) + 1, 17):
            wider = resources.model_copy(update={"gpus_per_node": gpus})
            if fits(estimate_eval(step, shapes, wider), gpu, wider):
                options.append(f"{gpus} GPUs (steps.{resource_kind(step)}: [{{min_params: "
                               f"{_billions(params)}, gpus_per_node: {gpus}}}] in the profile)")
                break
        if not ok and "scoring" in est.phases:
            dtypes = get_args(RewardDtype)  # largest first
            smaller = dtypes[dtypes.index(step.config.sampler.reward_dtype) + 1:]
            if smaller:
                options.append(f"a smaller reward_dtype (the bon algorithm's: "
                               f"{' or '.join(smaller)}; it can change which sample wins)")
        return StepPlan(step, resources, settings, False, est, params, None, ok,
                        () if ok else tuple(options))
    algo = step.config.algorithm if step.kind != "train_rm" else step.config.train
    chosen = getattr(algo, "gradient_checkpointing", False)
    can_checkpoint = hasattr(algo, "gradient_checkpointing")
    offload = getattr(algo, "cpu_offload", False)

    def sized(settings: Settings) -> tuple[Estimate, bool]:
        est = estimate_training(step, shapes, settings, resources, tokens)
        return est, fits(est, gpu, resources)

    def fitted(settings: Settings) -> tuple[Settings, Estimate, bool]:
        """The rules: checkpointing on, then the micro-batch halved (to 1), until it fits."""
        est, ok = sized(settings)
        if not ok and can_checkpoint and not settings.checkpointing:
            settings = replace(settings, checkpointing=True)
            est, ok = sized(settings)
        while not ok and settings.micro_batch > 1:
            settings = replace(settings, micro_batch=settings.micro_batch // 2)
            est, ok = sized(settings)
        return settings, est, ok

    configured = Settings(chosen, offload, resources.nodes, algo.micro_batch_size)
    settings, est, ok = fitted(configured)
    hours = gpu_hours(est.flops, gpu) if est.flops is not None else None
    if ok:
        return StepPlan(step, resources, settings, settings.checkpointing and not chosen, est,
                        params, hours, True, tokens=tokens)
    options = []
    where = "algorithm" if step.kind != "train_rm" else "reward_models.<name>.train"
    if not offload and hasattr(algo, "cpu_offload"):
        _, with_offload, ok_offload = fitted(replace(configured, offload=True))
        if ok_offload:
            options.append(f"cpu_offload: true ({where})")
        elif with_offload.peak_bytes <= gpu_budget(gpu):  # short of host memory only
            host_gb = math.ceil(with_offload.host_bytes / 1e9)
            options.append(f"cpu_offload: true ({where}) on nodes with {host_gb} GB for the job "
                           f"(mem_gb, now {resources.mem_gb:g})")
    for nodes in range(configured.nodes + 1, 65):
        if fitted(replace(configured, nodes=nodes))[2]:
            options.append(f"{nodes} nodes of {resources.processes_per_node} GPUs "
                           f"(steps.{resource_kind(step)}: [{{min_params: "
                           f"{_billions(params)}, nodes: {nodes}}}] in the profile)")
            break
    over = [phase for phase, parts in est.phases.items()
            if sum(parts.values()) > gpu_budget(gpu)]
    if "generation" in over:
        options.append("a smaller generation_batch_size (each process samples that many "
                       "prompts at a time and their KV cache is the peak; it changes which "
                       "tokens are drawn)")
    if not can_checkpoint and any(phase.endswith("backward") for phase in over):
        options.append(f"activation checkpointing, which {step.kind} steps do not have")
    return StepPlan(step, resources, settings, settings.checkpointing and not chosen, est, params,
                    hours, False, tuple(options), tokens=tokens)


def _billions(params: float) -> str:
    return f"{math.floor(params / 1e9)}B" if params >= 1e9 else f"{math.floor(params / 1e6)}M"


# ---------------------------------------------------------------- the models of a step


def step_models(plan: Plan, step: Step) -> dict[str, ModelSpec]:
    """Role -> model of a step: ``policy`` (the model trained or evaluated) and, for PPO and
    best-of-N, ``reward_model`` (the base of the reward model it reads)."""
    models: dict[str, ModelSpec] = {}
    if step.kind.startswith("train"):
        models["policy"] = step.config.model
    else:
        source = plan.steps.get(step.inputs.get("model", ""))
        models["policy"] = source.config.model if source is not None else step.config.model
    reward = plan.steps.get(step.inputs.get("reward_model", ""))
    if reward is not None and (step.kind == "train_ppo" or
                               getattr(getattr(step.config, "sampler", None), "kind", "")
                               == "best_of_n"):
        models["reward_model"] = reward.config.model
    return {role: spec for role, spec in models.items() if spec is not None}


def resolve_shape(spec: ModelSpec, cache_root: Path | None = None) -> ModelShape | None:
    """A model's shape without its weights: the paper's models' known shapes, else its
    ``config.json`` (a local folder, the hub's local cache, a prepared built-in); None if none
    is here."""
    candidates: list[Path] = []
    if spec.hub:
        if spec.hub in KNOWN_SHAPES:
            return KNOWN_SHAPES[spec.hub]
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(spec.hub, "config.json", revision=spec.revision)
            if isinstance(found, str):
                candidates.append(Path(found))
        except Exception:  # no hub client or a bad id: the shape is unknown
            pass
    elif spec.path:
        candidates.append(Path(spec.path) / "config.json")
    elif spec.builtin and cache_root is not None:
        candidates.append(cache_root / "models" / spec.builtin / "config.json")
    for path in candidates:
        try:
            return shape_from_config(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError):
            continue
    return None


def limit_tokens(step: Step) -> Tokens:
    """A training step's tokens as its config bounds them: its data's ``max_rows``, else the
    published size of a registry data set (if known), examples at its length limits."""
    data = getattr(step.config, "data", None)
    ref = data or step.config.prompts
    # PPO's prompts are a prompt set's, or the prompts of preference data (Table 2)
    prompt_set = data is None and getattr(ref, "source", None) != "preference_data"
    return Tokens(ref.max_rows or published_rows(ref.name, prompts=prompt_set))


def counted_tokens(step: Step, examples: list) -> Tokens:
    """A training step's tokens from its tokenized data (its trainer's pairs or prompts)."""
    if not examples:
        return Tokens(0)
    if step.kind == "train_ppo":
        reply = step.config.algorithm.max_response_length  # replies may run to the cap
        prompts = [len(item.ids) for item in examples]
        return Tokens(len(examples), max(prompts) + reply, sum(prompts) / len(prompts) + reply,
                      counted=True)
    algo = step.config.algorithm if step.kind == "train_dpo" else step.config.train
    longest = max(p.layout_length(True) if algo.shared_prompt else 2 * p.length
                  for p in examples)
    return Tokens(len(examples), longest, sum(p.real_tokens for p in examples) / len(examples),
                  counted=True)


def plan_resources(plan: Plan, profile: ClusterProfile, tokens_of=limit_tokens,
                   cache_root: Path | None = None) -> list[StepPlan]:
    """Every step of ``plan`` sized on the resources ``profile`` gives it (by kind and model
    size), in plan order; a step whose models' shapes are not known here is listed unsized.
    ``tokens_of(step)``: what a training step processes (``Tokens``)."""
    if profile.gpu is None:
        raise ValueError("the profile has no gpu: {memory_gib: ..., bf16_tflops: ...}, so no step "
                         "can be sized")
    plans = []
    for step in plan.order():
        models = step_models(plan, step)
        shapes = {role: resolve_shape(spec, cache_root) for role, spec in models.items()}
        missing = [models[r].describe() for r, s in shapes.items() if s is None]
        if missing or not shapes:
            resources = profile.resources_for(resource_kind(step), None)
            plans.append(StepPlan(step, resources, Settings(False, False, resources.nodes, 1), False,
                                  None, None, None, True,
                                  note=f"shape of {', '.join(missing) or 'its model'} not known "
                                  "here (no config.json)"))
            continue
        params = max(s.params for s in shapes.values())
        resources = profile.resources_for(resource_kind(step), params)
        tokens = tokens_of(step) if step.kind.startswith("train") else Tokens(None)
        plans.append(plan_step(step, shapes, resources, profile.gpu, tokens))
    return plans


def step_resources(profile: ClusterProfile, plan: Plan, step: Step,
                   cache_root: Path | None = None) -> Resources:
    """What a step's job asks SLURM for: its kind's resources at its largest model's size."""
    shapes = [resolve_shape(spec, cache_root) for spec in step_models(plan, step).values()]
    known = [s.params for s in shapes if s is not None]
    return profile.resources_for(resource_kind(step), max(known) if known else None)


def with_planned_settings(plan: Plan, plans: list[StepPlan]) -> Plan:
    """``plan`` with each training step's ``gradient_checkpointing`` and ``micro_batch_size`` as
    the planner chose them: execution fields, so every id (and result) stays the same."""
    steps = dict(plan.steps)
    for sp in plans:
        step = sp.step
        if not step.kind.startswith("train") or sp.estimate is None:
            continue
        where = "train" if step.kind == "train_rm" else "algorithm"
        algo = getattr(step.config, where)
        update = {"micro_batch_size": sp.settings.micro_batch}
        if hasattr(algo, "gradient_checkpointing"):
            update["gradient_checkpointing"] = sp.settings.checkpointing
        config = step.config.model_copy(update={where: algo.model_copy(update=update)})
        steps[step.id] = replace(step, config=config)
        assert steps[step.id].id == step.id  # execution fields only
    return replace(plan, steps=steps)
