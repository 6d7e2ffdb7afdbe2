"""ablate's DPO trainer against TRL's DPOTrainer, one epoch each over the same pairs, in one process.

Both sides get the same model, the same tokenised pairs (only pairs that fit ``--max-length``
whole, so neither side truncates differently), the same effective batch and micro-batch, float32,
and TRL its fastest setting: ``precompute_ref_log_probs=True`` and no gradient checkpointing. The
timed work on both sides is the reference log-prob pass plus one training epoch (model loading,
tokenisation and saving are left out). Figures: pairs/s, real (non-pad) tokens/s, peak resident
memory above the process's baseline, and ``ratio`` = ablate's pairs/s over TRL's; ``cpu_ratio``
compares CPU seconds (summed over threads), which a busy shared machine distorts less than wall
time.

    python -m perf.dpo_vs_trl --quick --json /tmp/dpo.json   # CPU, SmolLM2-135M, < 5 minutes

On CUDA both sides run bf16 autocast over float32 weights (TRL: ``bf16=True``; ablate: its
autocast), each side's model is moved to the GPU before its clock starts, the GPU is synchronised
before each reading, a short bf16 warm-up runs before the first side, and the JSON adds per side
the peak ``torch.cuda.max_memory_allocated`` (reset between sides) and the useful-FLOP
utilisation (``cuda_figures``). ``perf/gpu_check.sh`` runs it that way on a 1.7B-shaped model.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from perf.common import (
    Clock, PeakRSS, ablate_config, ablate_side, add_trainer_options, benchmark_parser, cuda_reset,
    first_step_clock, fitting_pairs, gpu_figures, on_cuda, parse_settings, ratios, resolve_model,
    run_comparison, run_context, skipped_model_saves, trl_config_fields, trl_side, variant_settings,
)


def run_trl(model_dir, rows, tokenizer, args, out: Path) -> dict:
    import trl
    import trl.trainer.dpo_trainer as dpo_trainer_module
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    cuda_reset()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if on_cuda():
        model.to("cuda")  # as ablate's side: the host-to-device copy is not timed
    config = trl.DPOConfig(
        **trl_config_fields(args, out), beta=0.1, loss_type=["sigmoid"],
        precompute_ref_log_probs=True, precompute_ref_batch_size=2 * args.micro_batch_size,
        dataset_num_proc=None)
    dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")}
                                 for r in rows])
    # TRL hashes every weight to key its reference-log-prob cache; time it so it can be told apart
    hash_seconds = []
    original_hash = dpo_trainer_module.hash_module

    def timed_hash(module):
        begun = time.perf_counter()
        try:
            return original_hash(module)
        finally:
            hash_seconds.append(time.perf_counter() - begun)

    dpo_trainer_module.hash_module = timed_hash
    first_step = first_step_clock()
    try:
        with PeakRSS() as memory, Clock() as clock:
            trainer = trl.DPOTrainer(model=model, args=config, train_dataset=dataset,
                                     processing_class=tokenizer, callbacks=[first_step])
            ref_seconds = clock.elapsed()
            first_step.started = clock.started + ref_seconds
            trainer.train()
    finally:
        dpo_trainer_module.hash_module = original_hash
    result = trl_side(trainer, clock, memory, first_step)
    # a one-off cost of TRL's reference cache key that grows with the weights, not the pairs:
    # reported apart so that a short run's ratio can be read without it
    result |= {"ref_seconds": ref_seconds, "train_seconds": clock.seconds - ref_seconds,
               "hash_seconds": round(sum(hash_seconds), 3)}
    if on_cuda():
        result["checks"]["hash_module_seconds"] = round(sum(hash_seconds), 2)
    del trainer, model
    return result


def run_ablate(model_dir, rows, args, out: Path, **settings) -> dict:
    """ablate's side; ``settings`` override DPOConfig fields (the ``--ablate-variants``)."""
    from ablate.spec.schema import DPOConfig
    from ablate.train.dpo import train_dpo

    cfg = ablate_config(DPOConfig, args, settings, max_prompt_length=args.max_prompt_length,
                        pad_multiple=args.pad_multiple)
    cuda_reset()
    with PeakRSS() as memory, skipped_model_saves(args.skip_save):
        summary = train_dpo(model_dir, rows, cfg, args.seed, out, out / "cache")
    result = ablate_side(
        summary, cfg, memory, out,
        seconds=summary["ref_logps_seconds"] + summary["train_seconds"],
        ref_seconds=summary["ref_logps_seconds"], train_seconds=summary["train_seconds"],
        cpu_seconds=summary["ref_logps_cpu_seconds"] + summary["train_cpu_seconds"])
    if on_cuda():
        bf16_weights = cfg.precision == "bf16_weights"
        result["checks"] = {"trainer_device": summary["device"],
                            "weights_dtype": "torch.bfloat16 (fp32 masters)" if bf16_weights
                            else "torch.float32", "autocast": None if bf16_weights else "bf16"}
    return result


def describe(side: dict, n_pairs: int, real_tokens: int) -> dict:
    return {**side, "pairs_per_second": round(n_pairs / side["seconds"], 4),
            "real_tokens_per_second": round(real_tokens / side["seconds"], 1),
            "train_real_tokens_per_second": round(real_tokens / side["train_seconds"], 1),
            "seconds": round(side["seconds"], 2), "ref_seconds": round(side["ref_seconds"], 2),
            "train_seconds": round(side["train_seconds"], 2),
            "cpu_seconds": round(side["cpu_seconds"], 2)}


def main(argv=None):
    parser = benchmark_parser(__doc__)
    add_trainer_options(parser, "DPOConfig", lr=5e-6)
    parser.add_argument("--max-prompt-length", type=int, default=192)
    parser.add_argument("--pad-multiple", type=int, default=0,
                        help="ablate's DPOConfig.pad_multiple (0: 64 on a GPU, none on CPU)")
    parser.add_argument("--ablate-only", action="store_true", help="run ablate's side alone "
                        "(no TRL side, no ratio): for comparing ablate settings in fresh processes")
    parser.add_argument("--ablate-settings", default="", help="DPOConfig overrides for "
                        "ablate's main side, e.g. 'attention_kernel=efficient' (fresh-process "
                        "A/B runs with --ablate-only)")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.max_length, args.max_prompt_length = 16, 256, 128
    variants = variant_settings(args.ablate_variants)
    main_settings = parse_settings(args.ablate_settings) if args.ablate_settings.strip() else {}

    model_dir = resolve_model(args.model)
    rows, pairs, tokenizer = fitting_pairs(model_dir, args.pairs, args.max_length,
                                           args.max_prompt_length, allow_fewer=args.allow_fewer,
                                           data_file=args.data_file)
    order = ["trl", "ablate"] if args.order == "trl-first" else ["ablate", "trl"]
    return run_comparison(
        ["ablate"] if args.ablate_only else order,
        {"trl": lambda out: run_trl(model_dir, rows, tokenizer, args, out),
         "ablate": lambda out: run_ablate(model_dir, rows, args, out, **main_settings)},
        lambda out, **settings: run_ablate(model_dir, rows, args, out, **settings),
        variants, lambda sides, done: assemble(args, model_dir, pairs, sides, done), args.json)


def assemble(args, model_dir: Path, pairs, sides: dict, raw_variants: list[dict]) -> dict:
    """The benchmark's JSON from the sides that ran (and the variants, when they have)."""
    real_tokens = sum(p.real_tokens for p in pairs)
    variants = [side if "error" in side else describe(side, len(pairs), real_tokens)
                for side in raw_variants]
    ablate = describe(sides["ablate"], len(pairs), real_tokens)
    trl_side = describe(sides["trl"], len(pairs), real_tokens) if "trl" in sides else None
    extra = {"variants": variants} if variants else {}
    if on_cuda():
        measured = [side for side in (ablate, trl_side, *variants)
                    if side is not None and "error" not in side]
        extra |= gpu_figures(
            model_dir, pairs, measured,
            "useful FLOPs = 8 x params x real tokens (6 for the training forward+backward, 2 "
            "for the reference forward), attention and padding not counted; real tokens count "
            "each pair's prompt twice, as the two sequences of a plain DPO forward hold it; "
            "flop_utilisation divides by ref+train seconds, train_flop_utilisation is 6 x "
            "params x tokens over train seconds, flop_utilisation_over_train_seconds is 8 x "
            "params x tokens over train seconds; processed_flop_utilisation counts the tokens "
            "the side's layout runs (a shared-prompt row runs its prompt once): the "
            "hardware's share")
        extra["timing_note"] = (
            "TRL's seconds include DPOTrainer construction (tokenising, hashing the weights, "
            "reference pass); ablate's are its reference pass plus its training loop as it "
            "reports them (each step's metrics logging included, timed until the last "
            "optimiser step has run on the device)")
    result = {
        "benchmark": "dpo_vs_trl", "model": args.model, "pairs": len(pairs),
        "real_tokens": real_tokens, "max_length": args.max_length,
        "batch_size": args.batch_size, "micro_batch_size": args.micro_batch_size,
        **run_context(), "order": args.order, "ablate": ablate, **extra,
    }
    if trl_side:
        unhashed = trl_side["seconds"] - trl_side.get("hash_seconds", 0.0)
        result |= {"trl": trl_side, **ratios(ablate, trl_side),
                   "ratio_without_trl_hashing": round(unhashed / ablate["seconds"], 3),
                   "train_ratio": round(trl_side["train_seconds"] / ablate["train_seconds"], 3)}
        for variant in variants:
            if "error" not in variant:  # each variant against the same TRL run
                variant["ratio_vs_trl"] = ratios(variant, trl_side)["ratio"]
                variant["ratio_vs_trl_without_hashing"] = round(unhashed / variant["seconds"], 3)
    return result


if __name__ == "__main__":
    main()
