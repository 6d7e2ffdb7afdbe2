"""Peak host memory of DPO training steps on the CPU, for the planner's check
(tests/launch/test_planner.py): a random Llama of the given shape, fp32, pairs of the given
length through the DPO trainer's own pieces (shared-prompt batches, chunked completion log-probs,
the sigmoid loss, AdamW), one micro-batch per optimiser step.

Large allocations are mapped and unmapped one by one (``MALLOC_MMAP_THRESHOLD_``, set by the
caller), so resident memory follows live tensors; the peak of the second step (after
``clear_refs`` resets the high-water mark) above the resident memory before the model existed is
what the planner estimates. Prints one JSON line per shape; the shapes run one after another
in one process (each model freed before the next baseline).

    MALLOC_MMAP_THRESHOLD_=65536 python -m perf.checks.training_memory --shapes '[{"hidden":
    256, "intermediate": 1024, "layers": 4, "heads": 4, "kv_heads": 4, "vocab": 4096,
    "micro_batch": 4, "prompt": 128, "answer": 384}]' 
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def resident(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


FIELDS = ("hidden", "intermediate", "layers", "heads", "kv_heads", "vocab", "micro_batch",
          "prompt", "answer")


def measure(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int,
            micro_batch: int, prompt: int, answer: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ablate.train.collate import collate
    from ablate.train.common import TokenizedPair, make_optimizer
    from ablate.train.logps import CompletionLogps
    from ablate.train.losses import preference_loss

    torch.manual_seed(0)
    pairs = [TokenizedPair(i, tuple(range(5, 5 + prompt)), tuple(range(7, 7 + answer)),
                           tuple(range(9, 9 + answer))) for i in range(micro_batch)]
    batch = collate(pairs, 0, True, 1)
    torch.ones(64, 64) @ torch.ones(64, 64)  # thread pools up before the baseline
    before = resident("VmRSS")
    config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, vocab_size=vocab,
                         tie_word_embeddings=False, attention_dropout=0.0)
    model = LlamaForCausalLM(config)
    model.config.use_cache = False
    policy = CompletionLogps(model)
    optimizer = make_optimizer(model, 1e-5, 0.0, 0.95)

    def step() -> None:
        logps = policy.batch_logps(batch)
        chosen, rejected = logps[:micro_batch], logps[micro_batch:]
        losses, _, _ = preference_loss("sigmoid", chosen, rejected, chosen.detach() * 0,
                                       rejected.detach() * 0, beta=0.1)
        losses.sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # AdamW's moments exist from here on
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
    step()
    peak = resident("VmHWM") - before
    params = sum(p.numel() for p in model.parameters())
    return {"params": params, "tokens": int(batch.input_ids.numel()), "peak_bytes": peak,
            "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_")}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", type=json.loads, required=True,
                        help=f"a JSON list of shapes, each with {', '.join(FIELDS)}")
    args = parser.parse_args(argv)
    for shape in args.shapes:
        print(json.dumps({**shape, **measure(**{k: shape[k] for k in FIELDS})}), flush=True)


if __name__ == "__main__":
    main()
