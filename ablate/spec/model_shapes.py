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
