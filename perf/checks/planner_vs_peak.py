"""The planner's peak memory for a DPO step beside the peak that step reaches on this GPU: ablate's
DPO trainer (its models built by ``ablate.train.fsdp.build_model``) over the first pairs of the
shipped UltraFeedback slice that fit, one process; ``torch.cuda.max_memory_allocated`` against
``ablate.launch.planner.estimate_training`` at the same settings and the same tokenized pairs.

    python -m perf.checks.planner_vs_peak --model /tmp/model-smollm2-1.7b --json out.json
    python -m perf.checks.planner_vs_peak --model M --estimate-only   # no GPU: the estimate alone

Prints one JSON object: the estimate (GiB, by component at its peak phase), the measured peak
(GiB) and ``ratio`` = estimate / measured (the planner's calibration test wants it within 15 %).
``perf/gpu_check.sh`` runs it as its ``planner`` step on the 1.7B shape.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

GIB = 2 ** 30


def planner_estimate(model_dir: Path, cfg, pairs, gpu_memory_gib: float) -> dict:
    """The planner's figures for one process training ``pairs`` under ``cfg`` (a DPOConfig)."""
    from ablate.launch.planner import Settings, counted_tokens, estimate_training
    from ablate.launch.profile import Resources
    from ablate.spec.model_shapes import shape_from_config
    from ablate.spec.plan import Step
    from ablate.spec.schema import DataRef, ModelSpec
    from ablate.spec.steps import DPOStep

    shape = shape_from_config(json.loads((model_dir / "config.json").read_text()))
    step = Step("dpo", DPOStep(model=ModelSpec(path=str(model_dir)), data=DataRef(name="check"),
                               algorithm=cfg, seed=1), {})
    tokens = counted_tokens(step, pairs)
    settings = Settings(checkpointing=cfg.gradient_checkpointing,
                        offload=getattr(cfg, "cpu_offload", False),
                        nodes=1, micro_batch=cfg.micro_batch_size)
    resources = Resources(gpus_per_node=1)
    estimate = estimate_training(step, {"policy": shape}, settings, resources, tokens)
    phase = estimate.peak_phase
    return {"params": shape.params, "longest_tokens": tokens.longest, "pairs": len(pairs),
            "peak_phase": phase, "estimate_gib": round(estimate.peak_bytes / GIB, 3),
            "components_gib": {k: round(v / GIB, 3) for k, v in estimate.phases[phase].items()},
            "fits_gpu_gib": gpu_memory_gib}


def measured_peak(model_dir: Path, rows, cfg, out: Path) -> float:
    """Peak GiB allocated on the GPU while ablate's DPO trainer runs one epoch of ``rows``."""
    import torch

    from ablate.train.dpo import train_dpo
    from perf.common import cuda_reset, skipped_model_saves

    cuda_reset()
    with skipped_model_saves(True):
        train_dpo(model_dir, rows, cfg, 1, out, out / "cache")
    return torch.cuda.max_memory_allocated() / GIB


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a transformers folder")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--max-prompt-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--estimate-only", action="store_true",
                        help="the planner's figure alone (no GPU needed)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/planner_vs_peak"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from ablate.spec.schema import DPOConfig
    from perf.common import fitting_pairs

    rows, pairs, _ = fitting_pairs(args.model, args.pairs, args.max_length,
                                   args.max_prompt_length, allow_fewer=True)
    # one epoch, no held-out split or intermediate checkpoint: the trainer's step as planned
    cfg = DPOConfig(batch_size=args.batch_size, micro_batch_size=args.micro_batch_size,
                    max_length=args.max_length, max_prompt_length=args.max_prompt_length,
                    epochs=1, eval_fraction=0.0, save_every_steps=10**6,
                    gradient_checkpointing=args.gradient_checkpointing)
    gpu_gib = None
    if not args.estimate_only:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --estimate-only for the planner's figure")
        gpu_gib = round(torch.cuda.get_device_properties(0).total_memory / GIB, 1)
    result = planner_estimate(args.model, cfg, pairs, gpu_gib)
    if not args.estimate_only:
        args.out.mkdir(parents=True, exist_ok=True)
        result["measured_gib"] = round(measured_peak(args.model, rows, cfg, args.out), 3)
        result["ratio"] = round(result["estimate_gib"] / result["measured_gib"], 3)
    print(json.dumps(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
