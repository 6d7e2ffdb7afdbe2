"""What the DPO and reward-model recipes share: preference pairs tokenised with the chat template,
the seeded, length-aware batch plan, the optimiser and schedule, and how the forward runs
(precision, attention kernel, compiled regions). A micro-batch's tensors are built in
``collate``, log-probs in ``logps``, checkpoints and the metrics log in ``checkpoints``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterable, Sequence

import torch
from torch import nn

from ablate.data.chat_tokens import as_messages, bos_added_by, encode_chat, keep_last
from ablate.generate.forward import autocast
from ablate.spec.seeds import derive_seed
from ablate.train import fsdp


class TrainingError(RuntimeError):
    pass


class NoTrainingData(TrainingError):
    """No usable pairs or prompts: every attempt on the same data ends the same way."""

    will_fail_again = True


# ---------------------------------------------------------------- tokenising preference pairs


@dataclass(frozen=True)
class TokenizedPair:
    index: int  # row number in the data the pair came from
    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...]
    margin: float | None = None

    @property
    def length(self) -> int:
        """Tokens of the longer of the two sequences: what the pair costs in a padded batch."""
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))

    def layout_length(self, shared_prompt: bool) -> int:
        """Tokens of the pair's row in a shared-prompt batch, or of its longer sequence."""
        if shared_prompt:
            return len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)
        return self.length

    @property
    def real_tokens(self) -> int:
        return 2 * len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)


def tokenize_pairs(rows: Sequence[dict], tokenizer, max_length: int, max_prompt_length: int,
                   drop_truncated: bool = False) -> tuple[list[TokenizedPair], Counter]:
    """Apply the chat template and split each row into prompt, chosen and rejected token ids.

    The completion is the template's text after the generation prompt, so the end-of-turn tokens
    are trained on and the prompt is not. Over-long pairs lose the start of the prompt (down to
    ``max_prompt_length``, a leading BOS kept) and then the end of the completions, as the
    paper's training code does; with ``drop_truncated`` (the paper's RM recipe) they are dropped
    instead. Returns the pairs and a count of skipped rows by reason; nothing is skipped silently.
    """
    skipped: Counter = Counter()
    pairs: list[TokenizedPair] = []
    for index, row in enumerate(rows):
        prompt = as_messages(row.get("prompt"), "user") if isinstance(row, dict) else None
        chosen = as_messages(row.get("chosen"), "assistant") if isinstance(row, dict) else None
        rejected = as_messages(row.get("rejected"), "assistant") if isinstance(row, dict) else None
        if prompt is None or chosen is None or rejected is None:
            field = "prompt" if prompt is None else "chosen" if chosen is None else "rejected"
            skipped[f"empty or missing {field}"] += 1
            continue
        if chosen == rejected:
            skipped["identical chosen and rejected"] += 1
            continue
        prompt_ids, chosen_ids, rejected_ids = encode_chat(tokenizer, prompt, [chosen, rejected],
                                                           where=f"row {index}")
        too_long = len(prompt_ids) + max(len(chosen_ids), len(rejected_ids)) > max_length
        if too_long and drop_truncated:
            skipped["longer than max_length"] += 1
            continue
        if too_long:
            prompt_ids = keep_last(prompt_ids, max_prompt_length, bos_added_by(tokenizer))
            # a prompt that fills max_length leaves no room (not a negative slice end, which
            # would keep all but the last tokens)
            room = max(0, max_length - len(prompt_ids))
            chosen_ids, rejected_ids = chosen_ids[:room], rejected_ids[:room]
        if not chosen_ids or not rejected_ids:
            skipped["fully truncated by max_length"] += 1
            continue
        if chosen_ids == rejected_ids:
            skipped["identical after truncation"] += 1
            continue
        margin = row.get("margin")
        pairs.append(TokenizedPair(index, tuple(prompt_ids), tuple(chosen_ids),
                                   tuple(rejected_ids), None if margin is None else float(margin)))
    return pairs, skipped


def split_heldout(pairs: list[TokenizedPair], fraction: float, seed: int):
    """A seeded held-out slice (at least one pair when ``fraction`` > 0 and two pairs exist)."""
    if fraction <= 0 or len(pairs) < 2:
        return pairs, []
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(pairs) - 1, max(1, round(fraction * len(pairs))))
    held = set(order[:n_eval])
    return ([p for i, p in enumerate(pairs) if i not in held],
            [p for i, p in enumerate(pairs) if i in held])


def pairs_digest(pairs: Iterable[TokenizedPair]) -> str:
    digest = hashlib.sha256()
    for p in pairs:
        digest.update(json.dumps([p.index, p.prompt_ids, p.chosen_ids, p.rejected_ids]).encode())
    return digest.hexdigest()


# ---------------------------------------------------------------- batching


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The pair order of one epoch: a pure function of (seed, epoch), so a resumed run sees the
    same batches as an uninterrupted one."""
    generator = torch.Generator().manual_seed(derive_seed(seed, "epoch-order", epoch))
    return torch.randperm(n, generator=generator).tolist()


def plan_batches(n_pairs: int, batch_size: int, epochs: float, seed: int,
                 lengths: Sequence[int] | None = None, length_grouping: int = 0
                 ) -> list[list[int]]:
    """All optimiser steps of the run, each a list of pair positions; a fractional epoch count
    stops part-way through the last epoch.

    With ``lengths`` and ``length_grouping`` > 1, each epoch's shuffled order is cut into windows
    of ``length_grouping`` batches, each window is sorted by length and cut into batches, and the
    epoch's batches are shuffled again: a batch holds pairs of similar length (little padding)
    while every pair is still seen once per epoch in a seeded random order of batches."""
    steps_per_epoch = math.ceil(n_pairs / batch_size)
    total = max(1, math.ceil(epochs * steps_per_epoch))
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < total:
        order = epoch_order(n_pairs, seed, epoch)
        if lengths is not None and length_grouping > 1:
            batches += _length_grouped(order, lengths, batch_size, length_grouping, seed, epoch)
        else:
            batches += [order[i:i + batch_size] for i in range(0, n_pairs, batch_size)]
        epoch += 1
    return batches[:total]


def _length_grouped(order: list[int], lengths: Sequence[int], batch_size: int, grouping: int,
                    seed: int, epoch: int) -> list[list[int]]:
    window = batch_size * grouping
    epoch_batches = []
    for start in range(0, len(order), window):
        ranked = sorted(order[start:start + window], key=lambda i: (-lengths[i], i))
        epoch_batches += [ranked[i:i + batch_size] for i in range(0, len(ranked), batch_size)]
    generator = torch.Generator().manual_seed(derive_seed(seed, "length-group-order", epoch))
    return [epoch_batches[i] for i in torch.randperm(len(epoch_batches),
                                                     generator=generator).tolist()]


def micro_batches(lengths: Sequence[int], positions: Sequence[int],
                  micro_batch_size: int) -> list[list[int]]:
    """Split one optimiser step's pairs into micro-batches of similar length (``lengths``: each
    pair's tokens in the batch layout, ``TokenizedPair.layout_length``), so that padding within
    a micro-batch is small. The step's gradient is a sum over its pairs, so how they are grouped
    does not change it."""
    ranked = sorted(positions, key=lambda i: (lengths[i], i))
    return [ranked[i:i + micro_batch_size] for i in range(0, len(ranked), micro_batch_size)]


# ---------------------------------------------------------------- optimiser and schedule


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, beta2: float
                   ) -> torch.optim.Optimizer:
    """AdamW with β1 0.9 and ε 1e-8 (optax's defaults, which the paper's optimiser keeps);
    biases and norms get no weight decay."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    # the fused kernel updates all parameters in a few launches; on a GPU the default foreach
    # path is several passes over the weights and optimiser state per step. Single process
    # only: the sharded (DTensor) case was not measured on a GPU here.
    fused = fsdp.world_size() == 1 and all(p.is_cuda for p in decay + no_decay)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr,
                             betas=(0.9, beta2), eps=1e-8, fused=fused or None)


def warmup_then_linear(optimizer, total_steps: int, warmup_steps: int, end_lr: float | None):
    """The paper's schedule (EasyLM/optimizers.py, optax's linear schedules counted from update
    0): update k < W gets lr·k/W, so the first update's is 0; from update W the rate goes
    linearly from lr to ``end_lr``, reached at update ``total_steps`` (one past the last), or
    stays at lr when ``end_lr`` is None (the paper's PPO)."""
    lr = optimizer.param_groups[0]["lr"]
    end_factor = 1.0 if end_lr is None else end_lr / lr

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        span = max(1, total_steps - warmup_steps)
        return 1.0 + (end_factor - 1.0) * min(step - warmup_steps, span) / span

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def compile_regions(model: nn.Module) -> int:
    """``torch.compile`` each decoder layer's MLP and RMSNorms, and the final norm, as small
    regions: in eager mode their element-wise work (SiLU times the up projection, the norms'
    float32 arithmetic, the casts) is many small kernels, each a launch and a pass over memory.
    Attention, the masks and the layer's control flow stay eager, so sequence lengths that vary
    from batch to batch do not recompile whole layers (compiling each whole layer was measured
    slower on an H200: perf/RESULTS.md). The layers share one compiled graph per region type.
    Returns how many modules were compiled."""
    compiled = 0
    for layer in fsdp.decoder_layers(model):
        for name in ("mlp", "input_layernorm", "post_attention_layernorm"):
            region = getattr(layer, name, None)
            if isinstance(region, nn.Module):
                region.compile(dynamic=True)
                compiled += 1
    if not compiled:
        raise TrainingError(f"compile_regions: {type(model).__name__}'s decoder layers have no "
                            "mlp / input_layernorm / post_attention_layernorm modules")
    norm = getattr(model.base_model, "norm", None)
    if isinstance(norm, nn.Module):
        norm.compile(dynamic=True)
        compiled += 1
    return compiled


def disable_dropout(model: nn.Module) -> int:
    """Turn dropout off in a model about to train on preferences (TRL's default too): the loss
    compares its log-probs or rewards with ones scored in eval mode (the reference pass,
    held-out metrics), so random masks would make them noisy and biased, and DPO's first loss
    would not be ln 2. Returns how many dropout settings were on."""
    switched = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout) and module.p > 0:
            module.p, switched = 0.0, switched + 1
        # transformers' attention modules keep their dropout rate as a float attribute
        rate = getattr(module, "attention_dropout", None)
        if isinstance(rate, float) and rate > 0:
            module.attention_dropout, switched = 0.0, switched + 1
    return switched


def device_for_training() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", fsdp.local_rank())
    return torch.device("cpu")


def attention_kernel(name: str, device: torch.device) -> Callable[[], ContextManager]:
    """Contexts that restrict PyTorch's scaled-dot-product attention to one kernel for the
    forwards run inside them (the backward follows the forward's kernel). ``auto`` leaves the
    choice to PyTorch, which on recent GPUs takes cuDNN for masked attention; cuDNN builds an
    execution plan for every new shape, a cost that batches of varying length keep paying
    early in a run. ``cudnn`` and ``efficient`` exist only on CUDA: asking for them elsewhere
    is an error here rather than a failure at the first forward."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"cudnn": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "math": SDPBackend.MATH}
    if name == "auto":
        return contextlib.nullcontext
    if name not in backends:
        raise TrainingError(f"attention_kernel {name!r}: expected auto, {', '.join(backends)}")
    if device.type != "cuda" and name != "math":
        raise TrainingError(f"attention_kernel {name!r} needs a CUDA GPU; this run is on "
                            f"{device.type} (use auto or math)")
    return lambda: sdpa_kernel([backends[name]])


def forward_context(device: torch.device, precision: str, attention: str
                    ) -> Callable[[], ContextManager]:
    """How the trainers' forwards run, as a factory of contexts that the forward modules
    (``CompletionLogps``, ``LastTokenReward``) enter around their work: bf16 autocast on a GPU
    under ``precision: autocast`` (bf16 weights need no casts: ``precision``), and the
    ``attention_kernel``. Checked here, before any forward runs."""
    if precision not in ("autocast", "bf16_weights"):
        raise TrainingError(f"precision {precision!r}: expected autocast or bf16_weights")
    kernel = attention_kernel(attention, device)
    casts = precision == "autocast"

    @contextlib.contextmanager
    def context():
        with autocast(device) if casts else contextlib.nullcontext(), kernel():
            yield

    return context


# ---------------------------------------------------------------- model identity


def model_identity(model_dir: Path) -> str:
    """What identifies a model's weights cheaply: its config and its weight files' sizes and
    modification times."""
    model_dir = Path(model_dir)
    parts = [(model_dir / "config.json").read_text()]
    for weights in sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin")):
        stat = weights.stat()
        parts.append(f"{weights.name}:{stat.st_size}:{int(stat.st_mtime)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()
