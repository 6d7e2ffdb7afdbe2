"""A decoder model's shape (what sizes its weights, activations and KV cache) and its parameter
count, from a transformers ``config.json`` or from the known shapes of the paper's models, so a
plan can be sized without downloading weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool = False  # input embedding and output layer share one matrix
    head_dim: int | None = None  # None: hidden / heads

    @property
    def kv_dim(self) -> int:
        """Width of the keys (and of the values) of one token in one layer."""
        return self.kv_heads * (self.head_dim or self.hidden // self.heads)

    @property
    def layer_params(self) -> int:
        """One Llama decoder layer: q and o (hidden²), k and v (hidden × kv_dim), the gated MLP's
        three matrices, two norms."""
        h, q = self.hidden, self.heads * (self.head_dim or self.hidden // self.heads)
        return 2 * h * q + 2 * h * self.kv_dim + 3 * h * self.intermediate + 2 * h

    @property
    def params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + self.layers * self.layer_params + self.hidden

    def describe(self) -> str:
        return f"{self.params / 1e9:.2f}B"


# The share of a GPU's memory a step may plan for (the rest: allocator fragmentation, CUDA's
# context); the planner and best-of-N's placement of its reward model both apply it
GPU_HEADROOM = 0.95
# Sequences of one reward-model forward at inference (``ablate.generate.reward_model``)
SCORING_BATCH = 8
# Bytes per weight of a reward model scoring in each ``RewardDtype`` (ablate.spec.schema): int8
# quantises the decoder layers' linear weights only (embeddings, norms and the head stay fp16)
SCORING_WEIGHT_BYTES = {"float32": 4, "bfloat16": 2, "int8": 2}
INT8_LINEAR_BYTES = 1


def scoring_weight_bytes(shape: ModelShape, dtype: str) -> float:
    """A reward model's weights in ``dtype`` (a ``RewardDtype``)."""
    if dtype != "int8":
        return SCORING_WEIGHT_BYTES[dtype] * shape.params
    linear = shape.layers * (shape.layer_params - 2 * shape.hidden)
    return INT8_LINEAR_BYTES * linear + SCORING_WEIGHT_BYTES[dtype] * (shape.params - linear)


def scoring_batch_bytes(shape: ModelShape, rows: int, width: int, dtype: str) -> float:
    """What one scoring forward of ``rows`` × ``width`` tokens adds on a GPU that runs one of its
    layers (no gradients: a layer's tensors are freed as the next is made): the residual stream
    and its normed copy, the compute-dtype copy a matmul reads, then the larger of attention's
    queries, keys, values (repeated to every head under a mask) and output and the gated MLP's
    three live tensors (up, silu(gate), their product); and the boolean 4-D attention mask
    (``ablate.generate.forward``)."""
    h, f = shape.hidden, shape.intermediate
    q = shape.heads * (shape.head_dim or h // shape.heads)
    residual = SCORING_WEIGHT_BYTES[dtype]  # float32's residual stream stays fp32 under autocast
    compute = 2  # bf16 autocast, bf16, or int8's fp16
    per_token = 2 * residual * h + compute * (h + max(4 * q, 3 * f))
    return rows * width * per_token + rows * width * width


def shape_from_config(config: Mapping) -> ModelShape:
    """The shape in a transformers ``config.json`` of a Llama-like decoder (KeyError when a
    field is missing)."""
    heads = int(config["num_attention_heads"])
    return ModelShape(hidden=int(config["hidden_size"]), layers=int(config["num_hidden_layers"]),
                      heads=heads, kv_heads=int(config.get("num_key_value_heads") or heads),
                      intermediate=int(config["intermediate_size"]),
                      vocab=int(config["vocab_size"]),
                      tied=bool(config.get("tie_word_embeddings", False)),
                      head_dim=config.get("head_dim"))


# The paper's models by hub id, from their config.json (the weights are Llama 2's shapes).
KNOWN_SHAPES: dict[str, ModelShape] = {
    # huggingface.co/allenai/tulu-2-13b@e06acc863f02971e2410152134744a1a7eb064c7:config.json
    "allenai/tulu-2-13b": ModelShape(hidden=5120, layers=40, heads=40, kv_heads=40,
                                     intermediate=13824, vocab=32000),
    # huggingface.co/allenai/tulu-2-70b@36935b4:config.json
    "allenai/tulu-2-70b": ModelShape(hidden=8192, layers=80, heads=64, kv_heads=8,
                                     intermediate=28672, vocab=32000),
}
