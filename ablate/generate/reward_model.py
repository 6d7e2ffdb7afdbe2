"""Reward models at inference: a sequence-classification folder with one label (what RM training
writes), whose reward for a chat response is the head's output at the last token of the templated
(prompt, response).

``LastTokenReward`` computes that reward for a batch of rows; RM training wraps it for pairs
(``ablate.train.rm``). ``RewardScorer`` scores chat responses with it, on the ids RM training
built for an answer (``reward_model_ids``): best-of-N sampling, the reward-model judge and PPO's
reward all score through it. ``best_of_n_rewards`` is best-of-N's: the model in the step's
``reward_dtype``, on GPUs spread over all of them by accelerate's device map.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, ContextManager, Sequence

import torch
from torch import Tensor, nn

from ablate.data.chat_tokens import as_messages, reward_model_ids
from ablate.generate.base import GenerationError, release_accelerator_memory
from ablate.generate.forward import (
    attention_implementation, autocast, pad_sequences, padded_causal_mask,
)
from ablate.spec.model_shapes import (
    GPU_HEADROOM, SCORING_BATCH, scoring_batch_bytes, scoring_weight_bytes, shape_from_config,
)


class LastTokenReward(nn.Module):
    """A sequence-classification model's scalar at each sequence's last attended token.

    transformers' own pooling looks for the last token that is not the pad token; with chat models
    whose pad token is their end-of-turn token that would score the token before the end of the
    turn, so pooling here follows the attention mask instead (batches are right-padded).
    """

    def __init__(self, model: nn.Module,
                 context: Callable[[], ContextManager] = contextlib.nullcontext):
        super().__init__()
        self.rm = model
        self.context = context  # precision and attention kernel in training: forward_context
        if not hasattr(model, "score"):
            raise ValueError(f"{type(model).__name__} has no `score` head")

    def forward(self, input_ids: Tensor, attention_mask: Tensor,
                position_ids: Tensor | None = None, score_at: Tensor | None = None) -> Tensor:
        """Rewards [N] of right-padded rows under a 2-D ``attention_mask``; or, with a 4-D mask,
        ``position_ids`` and ``score_at`` [B, k] (a shared-prompt batch), the rewards [B, k] of
        the hidden states at those positions. One forward either way, so FSDP's root hooks run."""
        mask = attention_mask if score_at is not None else padded_causal_mask(
            attention_mask, attention_implementation(self.rm), next(self.rm.parameters()).dtype)
        with self.context():
            hidden = self.rm.base_model(input_ids=input_ids, attention_mask=mask,
                                        position_ids=position_ids, use_cache=False
                                        ).last_hidden_state
            # the last layer's device: with the layers spread over GPUs it is not the inputs'
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            if score_at is None:
                pooled = hidden[rows, attention_mask.sum(dim=1).to(hidden.device) - 1]
            else:
                pooled = hidden[rows[:, None].expand_as(score_at), score_at.to(hidden.device)]
            return self.rm.score(pooled).squeeze(-1).float()


def _from_pretrained(auto_class, folder: Path, dtype: torch.dtype, **kwargs) -> nn.Module:
    return auto_class.from_pretrained(folder, dtype=dtype, **kwargs)


def load_reward_model(model_dir: Path, dtype=torch.float32, build=_from_pretrained):
    """The reward model (one label) and its tokenizer. ``build(auto_class, folder, dtype,
    **config)`` makes the model: ``from_pretrained``, or a trainer's loader (a skeleton that
    sharding fills, ``ablate.train.fsdp.build_model``)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = build(AutoModelForSequenceClassification, model_dir, dtype, num_labels=1)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
            else tokenizer.eos_token_id
    return model, tokenizer


def max_scored_length(config) -> int:
    """The most tokens of a (prompt, response) a reward model reads: its context."""
    return getattr(config, "max_position_embeddings", 4096)


def scored_ids(tokenizer, prompts: Sequence[list[dict] | str], responses: Sequence[str],
               max_length: int) -> list[list[int]]:
    """What the reward model reads of each response to its prompt (chat messages, or a user
    message's text): the ids RM training built for an answer (``reward_model_ids``)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    ids = []
    for prompt, response in zip(prompts, responses):
        messages = as_messages(prompt, "user")
        if messages is None:
            raise ValueError(f"cannot score a response to an empty prompt: {prompt!r}")
        ids.append(reward_model_ids(tokenizer, messages, response, max_length))
    return ids


class RewardScorer:
    """Score chat responses with a trained reward model, frozen, in batches of similar length.

    ``build`` and ``place`` (the module to the device; a trainer shards it there) let a
    multi-process trainer hold its shards only; the default is the whole model on ``device``."""

    def __init__(self, model_dir: Path | str, device: str | torch.device | None = None,
                 batch_size: int = SCORING_BATCH, max_length: int | None = None,
                 dtype: torch.dtype = torch.float32, build=_from_pretrained,
                 place: Callable[[nn.Module], nn.Module] | None = None,
                 bf16_autocast: bool = True):
        self.device = torch.device(device) if device else \
            torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model, self.tokenizer = load_reward_model(Path(model_dir), dtype, build)
        model.requires_grad_(False)
        module = LastTokenReward(model).eval()
        self.module = place(module) if place else module.to(self.device)
        self.bf16_autocast = bf16_autocast  # on a GPU (``forward.autocast``)
        self.pad_token_id = model.config.pad_token_id
        self.batch_size = batch_size
        self.max_length = max_length or max_scored_length(model.config)

    def _tokens(self, prompt: list[dict] | str, response: str) -> list[int]:
        return scored_ids(self.tokenizer, [prompt], [response], self.max_length)[0]

    def score(self, prompts: Sequence[list[dict] | str], responses: Sequence[str]) -> list[float]:
        """The reward of each response to its prompt (chat messages, or a user message's text)."""
        return self.score_ids(scored_ids(self.tokenizer, prompts, responses, self.max_length))

    def batches(self, sequences: Sequence[Sequence[int]]) -> list[list[int]]:
        """Indices of ``sequences`` in batches of ``batch_size``, by length."""
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        return [order[start:start + self.batch_size]
                for start in range(0, len(order), self.batch_size)]

    @torch.no_grad()
    def score_batch(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        """The reward of each token sequence of one batch (one forward)."""
        ids, mask = pad_sequences(sequences, self.pad_token_id)
        with autocast(self.device) if self.bf16_autocast else contextlib.nullcontext():
            return [float(r) for r in self.module(ids.to(self.device),
                                                  mask.to(self.device)).cpu().tolist()]

    def score_ids(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        """The reward of each token sequence (``reward_model_ids``), in the order given."""
        scores = [0.0] * len(sequences)
        for group in self.batches(sequences):
            for i, reward in zip(group, self.score_batch([sequences[i] for i in group])):
                scores[i] = reward
        return scores

    def close(self) -> None:
        """Give the model's memory back."""
        self.module = None
        release_accelerator_memory()


# ---------------------------------------------------------------- best-of-N's reward model

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.float16}


def scoring_max_memory(free_bytes: Sequence[int], batch_bytes: float, weight_bytes: float,
                       headroom: float = GPU_HEADROOM) -> dict[int, int]:
    """What each GPU may hold of a reward model spread over them (``max_memory`` of
    ``from_pretrained(device_map="auto")``): ``headroom`` of its free memory less one scoring
    batch's tensors (a layer computes where it is kept, so any GPU may hold them). A GPU left
    without room takes nothing; weights that do not fit the rest are refused, so that nothing is
    put in CPU memory or on disk instead."""
    budget = {gpu: int(headroom * free - batch_bytes) for gpu, free in enumerate(free_bytes)}
    budget = {gpu: room for gpu, room in budget.items() if room > 0}
    if sum(budget.values()) < weight_bytes:
        gib = 2 ** 30
        raise GenerationError(
            f"the reward model's weights need {weight_bytes / gib:.1f} GiB; the {len(free_bytes)} "
            f"visible GPU(s) have {sum(budget.values()) / gib:.1f} GiB for them after one scoring "
            f"batch ({batch_bytes / gib:.1f} GiB each): give best-of-N more GPUs (steps.best_of_n "
            "in the cluster profile) or a smaller reward_dtype (the bon algorithm's)")
    return budget


def check_reward_dtype(reward_dtype: str) -> None:
    """Refuse a precision this process cannot score in (int8 needs CUDA and bitsandbytes), so
    that best-of-N stops before it samples."""
    if reward_dtype != "int8":
        return
    if not torch.cuda.is_available():
        raise GenerationError(
            "reward_dtype int8 (LLM.int8, the paper's best-of-N scoring) runs on CUDA GPUs only "
            "(bitsandbytes); on a CPU set the bon algorithm's reward_dtype to float32 or "
            "bfloat16")
    from importlib.util import find_spec

    if find_spec("bitsandbytes") is None:
        raise GenerationError("reward_dtype int8 needs bitsandbytes: pip install bitsandbytes "
                              "(or set the bon algorithm's reward_dtype to float32 or bfloat16)")


def best_of_n_rewards(model_dir: Path | str, reward_dtype: str,
                      prompts: Sequence[list[dict] | str], responses: Sequence[str],
                      batch_size: int = SCORING_BATCH) -> list[float]:
    """Best-of-N's rewards of ``responses``: tokenized first, so that on GPUs the room kept for
    a scoring batch is that of the widest one; then the model loads (``best_of_n_scorer``),
    scores and gives its memory back."""
    from transformers import AutoConfig, AutoTokenizer

    max_length = max_scored_length(AutoConfig.from_pretrained(model_dir))
    ids = scored_ids(AutoTokenizer.from_pretrained(model_dir), prompts, responses, max_length)
    if not ids:
        return []
    scorer = best_of_n_scorer(model_dir, reward_dtype, batch_size,
                              widest=max(len(seq) for seq in ids))
    try:
        return scorer.score_ids(ids)
    finally:
        scorer.close()


def best_of_n_scorer(model_dir: Path | str, reward_dtype: str, batch_size: int = SCORING_BATCH,
                     widest: int | None = None) -> RewardScorer:
    """Best-of-N's reward model, scoring in ``reward_dtype`` (``ablate.spec.schema.RewardDtype``).
    On a CPU the whole model in that dtype, in this process. On GPUs its decoder layers spread
    over all the visible ones by accelerate's device map (each layer whole on one GPU, the
    activations passed from one to the next): one process, so best-of-N stays one evaluation
    job, and the memory the generating engine held is free by then (``EvalEnv`` releases it)."""
    check_reward_dtype(reward_dtype)
    if not torch.cuda.is_available():
        return RewardScorer(model_dir, torch.device("cpu"), batch_size,
                            dtype=TORCH_DTYPES[reward_dtype])
    from functools import partial

    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    shape = shape_from_config(config.to_dict())
    # the widest batch to come (``widest`` tokens, where known), else the model's context
    width = min(widest or max_scored_length(config), max_scored_length(config))
    max_memory = scoring_max_memory(
        [torch.cuda.mem_get_info(gpu)[0] for gpu in range(torch.cuda.device_count())],
        scoring_batch_bytes(shape, batch_size, width, reward_dtype),
        scoring_weight_bytes(shape, reward_dtype))
    load: dict = {"device_map": "auto", "max_memory": max_memory}
    if reward_dtype == "int8":
        from transformers import BitsAndBytesConfig
        load["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    scorer = RewardScorer(model_dir, batch_size=batch_size, dtype=TORCH_DTYPES[reward_dtype],
                          build=partial(_from_pretrained, **load), place=_on_gpus_only,
                          # float32 weights computed under bf16 autocast as before; int8's
                          # unquantised parts compute in fp16, as bitsandbytes does
                          bf16_autocast=reward_dtype != "int8")
    scorer.device = scorer.module.rm.get_input_embeddings().weight.device
    return scorer


def _on_gpus_only(module: LastTokenReward) -> LastTokenReward:
    """The model as ``from_pretrained`` placed it, refused where a part went to CPU or disk."""
    elsewhere = sorted({str(d) for d in getattr(module.rm, "hf_device_map", {}).values()
                        if str(d) in ("cpu", "disk")})
    if elsewhere:
        raise GenerationError(f"the reward model did not fit the GPUs (parts went to "
                              f"{', '.join(elsewhere)}): give best-of-N more GPUs")
    return module
