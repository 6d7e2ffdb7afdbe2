"""ablate's reward-model trainer against TRL's RewardTrainer, one epoch each over the same pairs,
in one process.

Both sides train a 1-label sequence-classification head on the same model from the same
tokenised pairs (TRL gets ablate's token ids as a processed dataset, so the tokens are identical),
same batch and micro-batch, float32, no gradient checkpointing (TRL's default turns it on, which
is slower for a small model). Timed: the training epoch only. Figures as in ``dpo_vs_trl.py``.

    python -m perf.rm_vs_trl --quick --json /tmp/rm.json

On CUDA: bf16 autocast on both sides, the GPU synchronised around the timed epoch, and the JSON
adds each side's peak ``torch.cuda.max_memory_allocated`` (reset between sides) and its
useful-FLOP utilisation (6 x params x real tokens over the epoch's seconds).
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

import torch

from perf.common import (
    Clock, PeakRSS, ablate_config, ablate_side, add_trainer_options, benchmark_parser, cuda_reset,
    emit, first_step_clock, fitting_pairs, gpu_figures, on_cuda, ratios, resolve_model,
    run_comparison, run_context, skipped_model_saves, trl_config_fields, trl_side, variant_settings,
)


def run_trl(model_dir, pairs, tokenizer, args, out: Path) -> dict:
    import trl
    from datasets import Dataset

    from ablate.generate.reward_model import load_reward_model

    cuda_reset()
    model, _ = load_reward_model(model_dir)
    if on_cuda():
        model.to("cuda")
    config = trl.RewardConfig(**trl_config_fields(args, out))
    dataset = Dataset.from_list([{"chosen_ids": list(p.prompt_ids + p.chosen_ids),
                                  "rejected_ids": list(p.prompt_ids + p.rejected_ids)}
                                 for p in pairs])
    first_step = first_step_clock()
    trainer = trl.RewardTrainer(model=model, args=config, train_dataset=dataset,
                                processing_class=tokenizer, callbacks=[first_step])
    with PeakRSS() as memory, Clock() as clock:
        first_step.started = clock.started
        trainer.train()
    result = trl_side(trainer, clock, memory, first_step)
    del trainer, model
    return result


def run_ablate(model_dir, rows, args, out: Path, **settings) -> dict:
    """ablate's side; ``settings`` override RMConfig fields (the ``--ablate-variants``)."""
    from ablate.spec.schema import RMConfig
    from ablate.train.rm import train_rm

    cfg = ablate_config(RMConfig, args, settings)
    cuda_reset()
    with PeakRSS() as memory, skipped_model_saves(args.skip_save):
        result = train_rm(model_dir, rows, cfg, args.seed, out)
    return ablate_side(result, cfg, memory, out, seconds=result["train_seconds"],
                       cpu_seconds=result["train_cpu_seconds"])


def shared_prompt_ab(model_dir, pairs, args) -> dict:
    """ablate's RM forward+backward over the same pairs and micro-batches, plain two-sequence
    layout against the shared-prompt layout (at several pairs per forward), interleaved round by
    round on one loaded model, with process CPU time (steadier than wall time on a shared
    machine). No optimiser step, so every round computes the same thing; the first round is a
    warm-up and not counted."""
    from ablate.train.collate import collate
    from ablate.train.common import micro_batches
    from ablate.train.losses import bradley_terry_loss
    from ablate.generate.reward_model import load_reward_model
    from ablate.train.rm import PairRewards

    model, _ = load_reward_model(model_dir)
    model.config.use_cache = False
    scorer = PairRewards(model).train()
    pad = model.config.pad_token_id
    steps = [list(range(i, min(i + args.batch_size, len(pairs))))
             for i in range(0, len(pairs), args.batch_size)]

    def epoch(layout: str, per_forward: int) -> float:
        loss_total = 0.0
        lengths = [p.layout_length(layout == "shared") for p in pairs]
        for step in steps:
            for group in micro_batches(lengths, step, per_forward):
                batch = collate([pairs[i] for i in group], pad, layout == "shared")
                chosen, rejected = scorer.batch_rewards(batch)
                loss = bradley_terry_loss(chosen, rejected).sum()
                loss.backward()
                loss_total += loss.item()
        model.zero_grad(set_to_none=True)
        return loss_total

    load_start = list(os.getloadavg())
    variants = [("plain", args.micro_batch_size)] + [("shared", n) for n in args.ab_per_forward]
    timings: dict[str, dict] = {f"{layout}@{n}": {"wall": [], "cpu": [], "loss": None}
                                for layout, n in variants}
    for round_ in range(args.ab_rounds + 1):
        order = variants if round_ % 2 == 0 else variants[::-1]
        for layout, n in order:
            with Clock() as clock:
                loss = epoch(layout, n)
            wall, cpu = clock.seconds, clock.cpu_seconds
            entry = timings[f"{layout}@{n}"]
            entry["loss"] = loss
            if round_:
                entry["wall"].append(round(wall, 2))
                entry["cpu"].append(round(cpu, 2))
            print(f"  round {round_} {layout} x{n}: {wall:.1f} s wall, {cpu:.1f} s CPU, "
                  f"loss {loss:.6f}", flush=True)
    base = timings[f"plain@{args.micro_batch_size}"]
    for entry in timings.values():
        entry["median_wall"] = statistics.median(entry["wall"])
        entry["median_cpu"] = statistics.median(entry["cpu"])
        entry["cpu_speedup_vs_plain"] = round(base["median_cpu"] / entry["median_cpu"], 3)
        entry["wall_speedup_vs_plain"] = round(base["median_wall"] / entry["median_wall"], 3)
    return {"benchmark": "rm_shared_prompt_ab", "model": args.model, "pairs": len(pairs),
            "real_tokens": sum(p.real_tokens for p in pairs),
            "shared_prompt_tokens": sum(p.real_tokens - len(p.prompt_ids) for p in pairs),
            "max_length": args.max_length, "batch_size": args.batch_size,
            "rounds": args.ab_rounds, "torch_threads": torch.get_num_threads(),
            "load_average_start": load_start, "load_average_end": list(os.getloadavg()),
            **run_context(), "variants": timings}


def main(argv=None):
    parser = benchmark_parser(__doc__)
    add_trainer_options(parser, "RMConfig", lr=1e-5)
    parser.add_argument("--ab-rounds", type=int, default=0, help="instead of the TRL "
                        "comparison: this many interleaved rounds of plain vs shared-prompt "
                        "forward+backward in ablate's RM (after one warm-up round)")
    parser.add_argument("--ab-per-forward", type=int, nargs="+", default=[1, 2, 4],
                        help="pairs per forward of the shared-prompt variants in the A/B")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.max_length = 16, 256
    variants = variant_settings(args.ablate_variants)

    model_dir = resolve_model(args.model)
    rows, pairs, tokenizer = fitting_pairs(model_dir, args.pairs, args.max_length,
                                           args.max_length, allow_fewer=args.allow_fewer,
                                           data_file=args.data_file)
    if args.ab_rounds:
        return emit(shared_prompt_ab(model_dir, pairs, args), args.json)
    return run_comparison(
        ["trl", "ablate"] if args.order == "trl-first" else ["ablate", "trl"],
        {"trl": lambda out: run_trl(model_dir, pairs, tokenizer, args, out),
         "ablate": lambda out: run_ablate(model_dir, rows, args, out)},
        lambda out, **settings: run_ablate(model_dir, rows, args, out, **settings),
        variants, lambda sides, done: assemble(args, model_dir, pairs, sides, done), args.json)


def assemble(args, model_dir: Path, pairs, sides: dict, raw_variants: list[dict]) -> dict:
    """The benchmark's JSON from the two sides (and the variants, when they have run)."""
    real_tokens = sum(p.real_tokens for p in pairs)
    ablate, trl_side = dict(sides["ablate"]), dict(sides["trl"])
    variants = [dict(v) for v in raw_variants]
    measured = [side for side in (ablate, trl_side, *variants) if "error" not in side]
    for side in measured:
        side["pairs_per_second"] = round(len(pairs) / side["seconds"], 4)
        side["real_tokens_per_second"] = round(real_tokens / side["seconds"], 1)
        side["seconds"] = round(side["seconds"], 2)
        side["cpu_seconds"] = round(side["cpu_seconds"], 2)
    for variant in variants:
        if "error" not in variant:  # each variant against the same TRL run
            variant["ratio_vs_trl"] = ratios(variant, trl_side)["ratio"]
    extra = {"variants": variants} if variants else {}
    if on_cuda():
        for side in measured:
            side["train_seconds"] = side["seconds"]
        extra |= gpu_figures(
            model_dir, pairs, measured,
            "useful FLOPs = 6 x params x real tokens over the training epoch's seconds (params "
            "without the input embedding, a lookup); attention and padding not counted; real "
            "tokens count each pair's prompt twice; processed_flop_utilisation counts the "
            "tokens the side's layout runs", sequence_classification=True, ref_multiplier=0)
    return {
        "benchmark": "rm_vs_trl", "model": args.model, "pairs": len(pairs),
        "real_tokens": real_tokens, "max_length": args.max_length,
        "batch_size": args.batch_size, "micro_batch_size": args.micro_batch_size,
        **run_context(), "order": args.order, "ablate": ablate, "trl": trl_side,
        **ratios(ablate, trl_side), **extra,
    }


if __name__ == "__main__":
    main()
