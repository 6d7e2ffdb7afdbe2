"""Typed, frozen configuration for grids and the steps they expand into.

Everything here is data: pydantic models with ``extra="forbid"`` so that a typo in a YAML file is an
error at load time, and ``frozen=True`` so that a resolved config cannot drift after its hash is
taken. The paper's hyperparameters (Ivison et al., 2024) are the defaults.
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator


class Frozen(BaseModel):
    # an infinite or NaN number is never a setting: it only fails (or loops) inside a job
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


EXECUTION = {"execution": True}
MAX_EPOCHS = 1000  # more passes than any run finishes: a larger number is a typo (1e308)


def execution(default, **kwargs):
    """A field that says how a step runs, not what it computes (batch slicing, padding, kernels,
    checkpoint interval): recorded in the step's folder, left out of its id, so changing it
    reuses every result (``ablate.spec.steps.identity``)."""
    return Field(default, json_schema_extra=EXECUTION, **kwargs)


def is_execution(field) -> bool:
    return isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("execution") is True


# ---------------------------------------------------------------- models and data


class ModelSpec(Frozen):
    """Where a model comes from: a built-in name, a local folder, or a hub id at a revision."""

    builtin: str | None = None
    path: str | None = None
    hub: str | None = None
    revision: str | None = None

    def describe(self) -> str:
        if self.builtin:
            return f"builtin:{self.builtin}"
        if self.path:
            return f"path:{self.path}"
        return f"hub:{self.hub}@{self.revision or 'main'}"


DataFormat = Literal["chat", "messages", "text"]
FORMAT_COLUMNS: dict[str, tuple[str, ...]] = {  # the columns each format reads, by ablate's name
    "chat": ("prompt", "chosen", "rejected"),  # message lists; prompt optional
    "messages": ("messages", "preference"),  # one conversation per row, marked chosen or rejected
    "text": ("prompt", "chosen", "rejected"),  # plain strings
}
PROMPT_FORMAT_COLUMNS: dict[str, tuple[str, ...]] = {
    "chat": ("messages", "reference"),  # a message list ending with a user turn
    "text": ("prompt", "reference"),  # a plain string
}


class DataSource(Frozen):
    """Where rows come from: a registry ``name``, a local file or folder (``path``: JSONL, JSON,
    Parquet or CSV), or a hub dataset (``hub`` at ``revision``, one ``split``), the last two read
    in a declared ``format`` with ``columns`` mapping ablate's column names to the file's.

    ``digest`` is what the rows are: a local file's content hash (also a registry name's
    ``$ABLATE_DATA_<NAME>`` file), a hub dataset's resolved commit; ``converter`` the registry
    converter's version. ablate fills both in when it loads a grid, so a changed file or
    converter is a new step id; the path itself is only where the file is
    found (an execution field), so moving a file keeps its results."""

    name: str | None = None
    path: str | None = execution(None)
    hub: str | None = None
    revision: str | None = None
    split: str = "train"
    format: DataFormat | None = None
    columns: dict[str, str] = Field(default_factory=dict)
    digest: str | None = None
    # a registry dataset's converter version (a mixture's, one per component): how raw rows
    # become pairs or prompts is part of what the rows are; filled in with the digest
    converter: str | None = None

    formats: ClassVar[dict[str, tuple[str, ...]]] = FORMAT_COLUMNS

    def format_columns(self) -> dict[str, tuple[str, ...]]:
        """The formats this kind of data may be read in, and the columns each reads."""
        return self.formats

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in ("name", "path", "hub") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("needs exactly one of name (a registry dataset), path (a local file "
                             f"or folder) or hub (a hub dataset); got {', '.join(given) or 'none'}")
        # values away from their defaults, not fields set: a stored plan sets every field
        changed = {k for k in ("format", "columns", "revision", "split")
                   if getattr(self, k) != type(self).model_fields[k].get_default(
                       call_default_factory=True)}
        if self.name is not None:
            extra = sorted(changed)
            if extra:
                raise ValueError(f"{', '.join(extra)} apply to path or hub data, not to the "
                                 f"registry dataset {self.name!r}")
            return self
        formats = self.format_columns()
        if self.format is None or self.format not in formats:
            raise ValueError(f"{'path' if self.path else 'hub'} data needs a format: one of "
                             f"{', '.join(formats)}" + (f" (got {self.format!r})" if self.format else ""))
        if self.path is not None and {"revision", "split"} & changed:
            raise ValueError("revision and split apply to hub data, not to a local path")
        unknown = sorted(set(self.columns) - set(formats[self.format]))
        if unknown:
            raise ValueError(f"columns: {', '.join(unknown)} not read by format {self.format!r} "
                             f"(it reads {', '.join(formats[self.format])})")
        return self

    def describe(self) -> str:
        where = self.name or (f"path:{self.path}" if self.path else
                              f"hub:{self.hub}@{self.revision or 'main'}:{self.split}")
        return where + (f" ({self.digest})" if self.digest else "")


class DataRef(DataSource):
    """Preference data, optionally downsampled."""

    max_rows: int | None = Field(default=None, gt=0)
    sample_seed: int = 0


# ---------------------------------------------------------------- algorithms


def adam_beta2():
    return Field(default=0.95, gt=0, lt=1, description="AdamW's second-moment decay: 0.95 in "
                 "the paper's optimiser (hamishivi/EasyLM, EasyLM/optimizers.py), 0.999 is "
                 "torch's default")


def cpu_offload():
    return execution(False, description="keep the sharded parameters, their gradients and the "
                     "optimiser state in CPU memory, moved to the GPU for each use (several "
                     "processes; less GPU memory, slower steps)")


class PairTraining(Frozen):
    """What the pair trainers (DPO, RM) share: how pairs become batches and how they run."""

    micro_batch_size: int = execution(8, gt=0)
    max_length: int = Field(default=4096, gt=0)
    weight_decay: float = 0.0
    max_grad_norm: float = Field(default=1.0, gt=0, description="clip the gradient's "
                                 "norm to this (0 or less would zero or flip it)")
    length_grouping: int = Field(
        default=16, ge=0, description="each epoch's shuffled pairs are sorted by length within "
        "windows of this many batches before being cut into batches (less padding); 0 or 1: "
        "plain shuffled batches")
    pad_multiple: int = execution(
        0, ge=0, description="right-pad each training micro-batch to a multiple of this "
        "many tokens (fewer distinct shapes for GPU attention kernels that plan per shape); "
        "0: 64 on a GPU, no padding on CPU")
    shared_prompt: bool = execution(
        True, description="run each pair's prompt once for both answers (exact; "
        "false: the plain chosen and rejected sequences)")
    adam_beta2: float = adam_beta2()
    gradient_checkpointing: bool = execution(False)
    cpu_offload: bool = cpu_offload()
    compile_regions: bool = execution(
        False, description="torch.compile each decoder layer's MLP and norms (fused "
        "element-wise kernels; attention and the varying lengths stay outside the graphs)")
    precision: Literal["autocast", "bf16_weights"] = Field(
        default="autocast", description="autocast: fp32 weights, bf16 autocast on a GPU, fp32 "
        "on CPU; bf16_weights: bf16 weights (on any device) with fp32 master copies that the "
        "optimiser steps, one process only (several use FSDP2's mixed precision)")
    attention_kernel: Literal["auto", "cudnn", "efficient", "math"] = execution(
        "auto", description="the kernel PyTorch's scaled-dot-product attention may use "
        "(auto: PyTorch's choice; cudnn and efficient need a CUDA GPU)")
    eval_fraction: float = Field(
        default=0.0, ge=0, lt=1, description="share of the pairs held out for validation and "
        "not trained on; the paper trained on every pair")
    save_every_steps: int = execution(200, gt=0)


class DPOConfig(PairTraining):
    """DPO and its variants. Defaults: the paper's Tulu 2 13B DPO recipe."""

    kind: Literal["dpo"] = "dpo"
    loss: Literal["sigmoid", "cdpo", "ipo", "ln_dpo", "simpo"] = "sigmoid"
    beta: float = Field(default=0.1, gt=0)
    label_smoothing: float = Field(default=0.0, ge=0, lt=0.5)
    simpo_gamma: float = 0.5
    lr: float = Field(default=5e-7, gt=0)
    end_lr: float = Field(default=0.0, ge=0, description="the learning rate the linear decay "
                          "reaches at the end of the run")
    warmup_ratio: float = Field(default=0.1, ge=0, le=1)
    epochs: float = Field(default=3, gt=0, le=MAX_EPOCHS)
    batch_size: int = Field(default=32, gt=0, description="effective batch in pairs")
    max_prompt_length: int = Field(default=2048, gt=0)
    # precomputed once or computed beside the policy: the same reference log-probs either way
    ref_logps: Literal["precompute", "online"] = execution("precompute")

    @model_validator(mode="after")
    def _consistent(self) -> "DPOConfig":
        if self.max_prompt_length >= self.max_length:
            raise ValueError(f"max_prompt_length ({self.max_prompt_length}) must be below "
                             f"max_length ({self.max_length}), or no answer token would fit")
        if self.label_smoothing > 0 and self.loss in ("sigmoid", "ipo"):
            raise ValueError(f"loss {self.loss!r} takes no label_smoothing (cdpo is DPO with "
                             "label smoothing; ln_dpo and simpo take it too)")
        return self


class RMConfig(PairTraining):
    """Bradley-Terry reward model training. Defaults: the paper's RM recipe."""

    kind: Literal["rm"] = "rm"
    lr: float = Field(default=1e-5, gt=0)
    # the paper's RM command: end_lr=1e-6, batch 32 x 16 accumulated (EasyLM
    # docs/paper_notes/unpacking_dpo_and_ppo.md)
    end_lr: float = Field(default=1e-6, ge=0, description="the learning rate the linear decay "
                          "reaches at the end of the run")
    warmup_ratio: float = Field(default=0.03, ge=0, le=1)
    epochs: float = Field(default=1, gt=0, le=MAX_EPOCHS)
    batch_size: int = Field(default=512, gt=0, description="effective batch in pairs")
    margin: bool = False


class PPOConfig(Frozen):
    """PPO against a reward model. Defaults: the paper's PPO recipe."""

    kind: Literal["ppo"] = "ppo"
    lr: float = Field(default=1e-6, gt=0)
    beta: float = Field(default=0.05, ge=0, description="KL penalty coefficient")
    prompts_per_batch: int = Field(default=512, gt=0)
    minibatch_size: int = Field(default=64, gt=0)
    micro_batch_size: int = execution(8, gt=0)
    ppo_epochs: int = Field(default=1, gt=0)
    epochs: float = Field(default=1, gt=0, le=MAX_EPOCHS, description="passes over the prompt set")
    max_prompt_length: int = Field(default=1024, gt=0)
    max_response_length: int = Field(default=1024, gt=0)
    temperature: float = Field(default=0.7, gt=0)
    top_k: int = Field(
        default=50, ge=0, description="rollouts sample from the `top_k` most likely tokens only "
        "(0: from every token); 50 is the paper's: its code leaves transformers' GenerationConfig "
        "default in place")
    scale_logps_by_temperature: bool = Field(
        default=False, description="false: the ratio's and the KL's log-probs come from the "
        "unscaled logits, as in the paper's code (it samples at `temperature` but scores at 1); "
        "true: from the logits divided by `temperature`, the distribution that sampled")
    no_eos_penalty: float = -10.0
    no_eos_penalty_mode: Literal["replace", "add"] = Field(
        default="replace", description="a response that never ends: replace: its score is "
        "`no_eos_penalty` instead of the reward model's (the paper's code); add: the reward "
        "model's score plus `no_eos_penalty`")
    experience: Literal["per_minibatch", "per_batch"] = Field(
        default="per_minibatch", description="per_minibatch (the paper's code): minibatches in "
        "rollout order, each scored by the current policy, reference and value model just before "
        "its own update (log-probs, values, advantages; advantages whitened within the "
        "minibatch); per_batch: the whole rollout scored once by the policy that sampled it, "
        "advantages whitened over the batch, minibatches in a seeded random order each PPO epoch")
    warmup_epochs: float = Field(
        default=0.1, ge=0, description="linear warm-up from 0 over this share of one pass's "
        "optimiser updates (the paper's --warmup_epochs=0.1)")
    end_lr: float | None = Field(
        default=None, ge=0, description="None: hold `lr` after the warm-up (the paper's code "
        "sets end_lr = lr); a number: decay linearly to it by the last update")
    adam_beta2: float = adam_beta2()
    gamma: float = 1.0
    lam: float = 0.95
    clip_ratio: float = 0.2
    value_clip: float = 0.2
    value_coef: float = 0.1
    whiten_advantages: bool = True
    value_init: Literal["reward_model", "policy"] = "reward_model"
    rollout_engine: Literal["transformers", "vllm"] = Field(
        default="transformers", description="what samples the rollouts: transformers' generate, "
        "or vLLM (a GPU, one process); they draw from other random streams, so the engine is "
        "part of what a run computes")
    max_kl: float = Field(default=100.0, gt=0, description="stop the run if KL passes this")
    max_grad_norm: float = Field(default=1.0, gt=0, description="clip the gradient's "
                                 "norm to this (0 or less would zero or flip it)")
    generation_batch_size: int | None = Field(
        default=None, gt=0, description="prompts sampled together by transformers' generate "
        "(None: minibatch_size); each batch samples from its own seeded stream, so this "
        "decides which tokens are drawn, unlike a micro-batch size")
    gradient_checkpointing: bool = execution(False)
    cpu_offload: bool = cpu_offload()
    save_every_steps: int = execution(10, gt=0)


# What best-of-N's reward model scores in (``BestOfN.reward_dtype``), largest first. Scores in
# another precision can rank a prompt's samples differently, so it is part of the result:
# - float32: fp32 weights; on a GPU the forward under bf16 autocast (what ablate always did)
# - bfloat16: bf16 weights and activations (half the memory)
# - int8: LLM.int8 (bitsandbytes) linear layers, the rest fp16 (a quarter of the memory); CUDA only
RewardDtype = Literal["float32", "bfloat16", "int8"]
# The paper's code scored best-of-N in 8 bits: it stopped vLLM, then loaded the reward model with
# ``AutoModelForSequenceClassification.from_pretrained(path, load_in_8bit=True,
# device_map="auto")`` (allenai/open-instruct@61b0d6896:eval/utils.py, ``bon_generation_vllm``;
# bitsandbytes then computes the unquantised parts in fp16). The paper protocol's default.
PAPER_BEST_OF_N_REWARD_DTYPE: RewardDtype = "int8"


class BoNConfig(Frozen):
    """Best-of-N: sample N responses from the SFT model, keep the one the RM scores highest.
    ``reward_dtype``: what the RM scores in (``RewardDtype``); unset, the eval protocol's
    (the paper's int8 under protocol paper, float32 otherwise)."""

    kind: Literal["bon"] = "bon"
    n: int = Field(default=16, gt=0)
    temperature: float = Field(default=0.7, gt=0)
    reward_dtype: RewardDtype = "float32"


AlgorithmConfig = Annotated[Union[DPOConfig, PPOConfig, BoNConfig], Field(discriminator="kind")]


class RewardModelSpec(Frozen):
    """A reward model: trained by ablate from a base model on preference data, or, with
    ``programmatic``, a checkable reward computed from the text, for which no reward model is
    trained."""

    data: DataRef | Literal["cell"] = "cell"
    base: str | None = None  # a model name of the grid; None means the cell's base model
    train: RMConfig = RMConfig()
    seed: int = 1  # fixed, not the cell's seed, so that every PPO cell shares one RM
    # A checkable reward, the import path of a function (``"package.module:function"``,
    # ``ablate.train.programmatic``): PPO scores its samples with it and no reward model is
    # trained, so the fields above do not apply. Best-of-N cannot use one (it ranks samples with a
    # trained RM).
    programmatic: str | None = None

    @model_validator(mode="after")
    def _programmatic_trains_nothing(self) -> "RewardModelSpec":
        unused = sorted({"data", "base", "train", "seed"} & self.model_fields_set)
        if self.programmatic is not None and unused:
            raise ValueError(f"programmatic reward {self.programmatic!r} trains no reward model, "
                             f"so {', '.join(unused)} do not apply: remove them")
        return self


class PromptSetRef(DataSource):
    """Policy-training prompts for PPO: a named prompt set (or "cell": the prompts of the cell's
    data), or a file or hub dataset of prompts."""

    formats: ClassVar[dict[str, tuple[str, ...]]] = PROMPT_FORMAT_COLUMNS
    max_rows: int | None = Field(default=None, gt=0)
    sample_seed: int = 0


# ---------------------------------------------------------------- evaluation


class Greedy(Frozen):
    """One greedy reply per item."""

    kind: Literal["greedy"] = "greedy"


class BestOfN(Frozen):
    """Sample ``n`` replies and keep the one a reward model scores highest (a best-of-N cell)."""

    kind: Literal["best_of_n"] = "best_of_n"
    n: int = Field(default=16, gt=0)
    temperature: float = Field(default=0.7, gt=0)
    seed: int = 1
    # float32 (the default) keeps the ids of steps made before it existed, which scored so
    reward_dtype: RewardDtype = "float32"


class PassAtK(Frozen):
    """Sample ``n`` completions per item to estimate pass@k (the code benchmarks; k is the
    benchmark's metric). Defaults: the paper's (open-instruct's codex_humaneval evaluation: 20
    samples at temperature 0.8)."""

    kind: Literal["pass_at_k"] = "pass_at_k"
    n: int = Field(default=20, gt=0)
    temperature: float = Field(default=0.8, ge=0)
    # nucleus sampling; 1.0 (none) keeps the ids of steps made before it existed, and the paper
    # protocol sets open-instruct's 0.95 (``ablate.spec.expand.eval_config``)
    top_p: float = Field(default=1.0, gt=0, le=1)


Sampler = Annotated[Union[Greedy, BestOfN, PassAtK], Field(discriminator="kind")]


class JudgeSpec(Frozen):
    """A judge: the model that grades outputs, where it runs, and how it is prompted.

    What it is (kind, model, annotator, temperature, a local judge's hub id and revision or
    folder, a panel's roles) enters the id of every eval step it judges; where it is reached (URL,
    the name of the environment variable holding the key, concurrency, a hub judge's local copy)
    does not. ``local``: a causal LM that ablate runs itself, read from the hub (``hub`` at
    ``revision``) or from a folder of one's own (``path``). ``panel``: several judges by role,
    for a benchmark that asks more than one question of each output (TruthfulQA: ``truth`` and
    ``info``). ``unrecorded`` stands for a judge of a store made before judges were recorded."""

    kind: Literal["openai", "reward_model", "local", "panel", "string_match",
                  "unrecorded"] = "openai"
    model: str | None = None  # the judge model's name at its endpoint
    annotator: str | None = None  # the prompt/annotator configuration; None: the benchmark's own
    temperature: float = 0.0
    path: str | None = None  # a local model folder (kinds reward_model, local); None: the cell's RM
    hub: str | None = None  # a local judge's hub id
    revision: str | None = None  # ... at this revision (a commit, so that it cannot move)
    roles: dict[str, "JudgeSpec"] = Field(default_factory=dict, description="a panel's judges")
    name: str | None = None  # unrecorded: the name the old store gave it
    local_copy: str | None = execution(None, description="a folder holding a hub judge's files, "
                                       "read instead of the hub (hub and revision still say "
                                       "which model it is)")
    base_url: str | None = execution(None)
    api_key_env: str | None = execution(None, description="the NAME of the environment "
                                        "variable holding the key; keys are never written")
    concurrency: int = execution(8, gt=0)
    timeout_s: float = execution(120.0, gt=0)
    max_retries: int = execution(6, ge=0)

    @model_validator(mode="after")
    def _complete(self) -> "JudgeSpec":
        if self.kind == "openai":
            missing = [f for f in ("base_url", "model", "api_key_env") if getattr(self, f) is None]
            if missing:
                raise ValueError(f"an openai judge needs {', '.join(missing)}")
        if self.kind == "local" and (self.hub is None) == (self.path is None):
            raise ValueError("a local judge needs exactly one of hub (a hub id, with its "
                             "revision) or path (a model folder of your own)")
        if self.kind != "local" and (self.hub or self.revision or self.local_copy):
            raise ValueError("hub, revision and local_copy apply to a local judge only")
        if self.kind == "local" and self.local_copy and self.hub is None:
            raise ValueError("local_copy is where a hub judge's files are; a judge given by "
                             "path needs none")
        if self.kind == "panel":
            if not self.roles:
                raise ValueError("a panel judge needs roles (role -> judge)")
            nested = sorted(r for r, j in self.roles.items() if j.kind == "panel")
            if nested:
                raise ValueError(f"a panel's roles are single judges, not panels: "
                                 f"{', '.join(nested)}")
        elif self.roles:
            raise ValueError("roles apply to a panel judge only")
        return self


JudgeSpec.model_rebuild()


class CustomBenchmark(Frozen):
    """A benchmark defined in the user's own module: ``module`` is ``"package.module:Class"``, a
    subclass of ``ablate.evals.Benchmark`` that declares its facts (``ablate.evals.custom``)."""

    module: str


class EvalConfig(Frozen):
    protocol: Literal["paper", "full"] = "paper"
    benchmarks: tuple[str, ...] = (
        "mmlu", "gsm8k", "bbh", "humaneval_plus", "mbpp_plus", "truthfulqa",
        "toxigen", "xstest", "alpaca_eval_1", "alpaca_eval_2", "ifeval",
    )
    limit: dict[str, PositiveInt] = Field(default_factory=dict, description="items per benchmark")
    max_new_tokens: dict[str, PositiveInt] = Field(default_factory=dict)
    seed: int = 42
    judge: str | None = None  # the judge of every judged benchmark: a name in `judges`
    judges: dict[str, str] = Field(default_factory=dict, description="benchmark -> judge name, "
                                   "overriding `judge` for that benchmark")
    mmlu_shots: Literal[0, 5] = 0
    pass_at_k: PassAtK = PassAtK()
    toxigen_classifier: ModelSpec = ModelSpec(hub="tomh/toxigen_roberta")
    custom: dict[str, CustomBenchmark] = Field(default_factory=dict, description="benchmarks of "
                                               "your own, by the name `benchmarks` lists them as")


# ---------------------------------------------------------------- the grid


class Axes(Frozen):
    model: tuple[str, ...]
    data: tuple[str, ...] = ("none",)
    algorithm: tuple[str, ...] = ("none",)
    reward_model: tuple[str, ...] = ("none",)
    prompts: tuple[str, ...] = ("none",)
    seed: tuple[int, ...] = (1,)


class CellRule(Frozen):
    """Matches cells by axis value; a value of ``"*"`` matches anything, a list matches any of it."""

    model: str | list[str] | None = None
    data: str | list[str] | None = None
    algorithm: str | list[str] | None = None
    reward_model: str | list[str] | None = None
    prompts: str | list[str] | None = None
    seed: int | list[int] | None = None


class Override(Frozen):
    """Named hyperparameter changes for the cells a rule matches, e.g. a smaller β for one data set."""

    name: str
    match: CellRule
    set: dict[str, object]  # dotted keys into the algorithm config, e.g. {"beta": 0.0325}


class GridSpec(Frozen):
    name: str
    description: str = ""
    models: dict[str, ModelSpec]
    judges: dict[str, JudgeSpec] = Field(default_factory=dict, description="judge definitions "
                                         "by name; $ABLATE_JUDGES or ./judges.yaml add more")
    datasets: dict[str, DataRef] = Field(default_factory=dict)
    algorithms: dict[str, AlgorithmConfig] = Field(default_factory=dict)
    reward_models: dict[str, RewardModelSpec] = Field(default_factory=dict)
    prompt_sets: dict[str, PromptSetRef] = Field(default_factory=dict)
    axes: Axes
    include: tuple[CellRule, ...] = ()
    exclude: tuple[CellRule, ...] = ()
    overrides: tuple[Override, ...] = ()
    baseline: bool = True  # evaluate each base model as the SFT baseline
    eval: EvalConfig = EvalConfig()
    labels: dict[str, str] = {}  # display names for the report: key or "<axis>.<key>" -> words

    @field_validator("name")
    @classmethod
    def _file_name(cls, name: str) -> str:
        # the name becomes a file name in the store and the report folder
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name):
            raise ValueError("a grid name is 1 to 100 letters, digits, '_', '-' or '.', starting "
                             "with a letter or digit (it names files: no '/', no '..')")
        return name
