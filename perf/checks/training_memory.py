"""Peak host memory of DPO training steps on the CPU, for the planner's check
(tests/launch/test_planner.py): a random Llama of the given shape, fp32, pairs of the given
length through the DPO trainer's own pieces (shared-prompt batches, chunked completion log-probs,
the sigmoid loss, AdamW), one micro-batch per optimiser step.

Large allocations are mapped and unmapped one by one (``MALLOC_MMAP_THRESHOLD_``, set by the
caller), so resident memory follows live tensors; the peak of the second step (after
``clear_refs`` resets the high-water mark) above the resident memory before the model existed is
what the planner estimates. Prints one JSON line.

    MALLOC_MMAP_THRESHOLD_=65536 python -m perf.checks.training_memory --hidden 256 ...
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    for name, default in (("hidden", 256), ("intermediate", 1024), ("layers", 4), ("heads", 4),
                          ("kv-heads", 4), ("vocab", 4096), ("micro-batch", 4),
                          ("prompt", 128), ("answer", 384)):
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args(argv)

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ablate.train.collate import collate
    from ablate.train.common import TokenizedPair, make_optimizer
    from ablate.train.logps import CompletionLogps
    from ablate.train.losses import preference_loss

    torch.manual_seed(0)
    pairs = [TokenizedPair(i, tuple(range(5, 5 + args.prompt)),
                           tuple(range(7, 7 + args.answer)), tuple(range(9, 9 + args.answer)))
             for i in range(args.micro_batch)]
    batch = collate(pairs, 0, True, 1)
    torch.ones(64, 64) @ torch.ones(64, 64)  # thread pools up before the baseline
    before = resident("VmRSS")
    config = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, vocab_size=args.vocab,
                         tie_word_embeddings=False, attention_dropout=0.0)
    model = LlamaForCausalLM(config)
    model.config.use_cache = False
    policy = CompletionLogps(model)
    optimizer = make_optimizer(model, 1e-5, 0.0, 0.95)
    n = args.micro_batch

    def step() -> None:
        logps = policy.batch_logps(batch)
        losses, _, _ = preference_loss("sigmoid", logps[:n], logps[n:], logps[:n].detach() * 0,
                                       logps[n:].detach() * 0, beta=0.1)
        losses.sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # AdamW's moments exist from here on
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
    step()
    print(json.dumps({"params": sum(p.numel() for p in model.parameters()),
                      "tokens": int(batch.input_ids.numel()),
                      "peak_bytes": resident("VmHWM") - before,
                      "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_")}))


if __name__ == "__main__":
    main()
