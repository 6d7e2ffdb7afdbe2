"""Trainer proof on the embedded model (issue 3): the reward model's and DPO's held-out figures on
SmolLM2-135M-Instruct and the shipped ``ultrafeedback-slice``, on CPU.

Pairs: only pairs whose chat-templated prompt + longer completion fit ``--max-length`` tokens are
used, for both trainers (the RM recipe drops longer pairs; here DPO gets the same pairs, so none is
truncated). Training pairs: ``--train-pairs`` drawn (seeded) from the slice's "train" split. Held
out: every fitting pair of the slice's "test" split plus, up to ``--heldout-pairs`` in all, the
fitting "train"-split pairs that were not drawn for training (disjoint rows; the "test" split
alone has too few short pairs for an interval that means anything). The trainers' own held-out
evaluation is used: their seeded held-out split is replaced, in this script only, by this one.

(1) Reward model (``ablate.train.rm.train_rm``, value head initialised at random with the seed):
held-out pair accuracy (chosen scored above rejected; a tie counts as wrong) of the untrained head
and of the trained RM, each with a Wilson 95% interval on the held-out count, also split by the
split the pair came from, and the mean reward margin (chosen - rejected).
(2) DPO (``ablate.train.dpo.train_dpo``, sigmoid loss): held-out implicit-reward accuracy and
margin before and after training, as ``train_dpo`` reports them (``heldout_before/after``).

    OMP_NUM_THREADS=1 python -m perf.checks.smollm2_proof --json /tmp/smollm2_proof.json
    OMP_NUM_THREADS=1 python -m perf.checks.smollm2_proof --quick   # a wiring check: tiny sizes

``--skip-rm`` / ``--skip-dpo`` run one trainer only. Nothing here asserts a figure.

``--preregistered NAME`` runs one of the settings in ``PREREGISTERED`` below (reward model only),
each written into this file, with its success criterion, before it was first run; the script
then prints whether the criterion held. Other flags may not be combined with it (except
``--json`` and ``--threads``), so the run is the registered one.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from perf.common import load_average, resolve_model, run_context


# Registered before running (issue 3, second RM proof, Nov 27 2026). Success criterion, the same
# for every entry: the Wilson 95% interval of the trained RM's held-out pair accuracy (ties count
# as wrong) lies above 0.5, i.e. its lower bound > 0.5. Chosen without any RM result on these
# data: what fits ~20 minutes of one CPU thread with the shared-prompt forward, the largest
# held-out set the slice allows at that length (so an accuracy near 0.6 can clear 0.5), a learning
# rate a few times the paper's 1e-5 because this run has ~30 optimiser steps where the paper has
# ~1,000, the RM recipe's warm-up ratio 0.03. Every registered setting that was run is reported in
# perf/RESULTS.md, passed or not.
PREREGISTERED: dict[str, dict] = {
    # hh-rlhf helpful-base: 189 train-split and 50 test-split pairs fit 512 tokens; 128 train,
    # held out: the 50 test-split pairs + the 61 unused train-split pairs.
    "rm-hh-512": dict(dataset="hh-rlhf-slice", max_length=512, train_pairs=128,
                      heldout_pairs=1000, epochs=2, batch_size=8, micro_batch=4, rm_lr=3e-5,
                      rm_warmup=0.03, seed=1, skip_dpo=True),
    # UltraFeedback: 101 train-split and 25 test-split pairs fit 512 tokens; 64 train, held out:
    # the 25 test-split pairs + the 37 unused train-split pairs (62).
    "rm-uf-512": dict(dataset="ultrafeedback-slice", max_length=512, train_pairs=64,
                      heldout_pairs=1000, epochs=2, batch_size=8, micro_batch=4, rm_lr=3e-5,
                      rm_warmup=0.03, seed=1, skip_dpo=True),
}
SUCCESS_CRITERION = "Wilson 95% lower bound of the trained RM's held-out pair accuracy > 0.5"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="a built-in model name")
    p.add_argument("--dataset", default="ultrafeedback-slice")
    p.add_argument("--max-length", type=int, default=256, help="tokens; longer pairs are not used")
    p.add_argument("--train-pairs", type=int, default=16)
    p.add_argument("--heldout-pairs", type=int, default=1000,
                   help="at most this many held-out pairs (all the test split's first)")
    p.add_argument("--epochs", type=float, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--rm-lr", type=float, default=2e-5)
    p.add_argument("--rm-warmup", type=float, default=0.03, help="RM warm-up ratio")
    p.add_argument("--rm-plain-forward", action="store_true",
                   help="the RM's plain two-sequence forward instead of the shared-prompt one")
    p.add_argument("--preregistered", choices=sorted(PREREGISTERED),
                   help="run a registered RM setting (see PREREGISTERED)")
    p.add_argument("--dpo-lr", type=float, default=2e-5)
    p.add_argument("--dpo-beta", type=float, default=0.1)
    p.add_argument("--skip-rm", action="store_true")
    p.add_argument("--skip-dpo", action="store_true")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--quick", action="store_true",
                   help="wiring check: 4 train and 4 held-out pairs of <= 192 tokens, 1 epoch")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    if args.preregistered:
        defaults = vars(p.parse_args([]))
        changed = [k for k, v in vars(args).items()
                   if v != defaults[k] and k not in ("preregistered", "json", "threads")]
        if changed:
            p.error(f"--preregistered fixes every setting; do not also pass {changed}")
        for key, value in PREREGISTERED[args.preregistered].items():
            setattr(args, key, value)
    if args.quick:
        args.max_length, args.train_pairs, args.heldout_pairs = 192, 4, 4
        args.epochs, args.batch_size, args.micro_batch = 1, 4, 2
    return args


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """Wilson score interval for k successes in n trials (95% by default)."""
    if n == 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def split_by_row(n_train: int):
    """A stand-in for ``split_heldout``: rows before ``n_train`` train, the rest are held out."""
    def split(pairs, fraction, seed):
        return ([p for p in pairs if p.index < n_train], [p for p in pairs if p.index >= n_train])
    return split


def accuracy_figures(chosen: torch.Tensor, rejected: torch.Tensor, source: list[str]) -> dict:
    correct = (chosen > rejected).tolist()
    out = {}
    for name in ("all", "test", "train_unused"):
        keep = [i for i, s in enumerate(source) if name == "all" or s == name]
        k, n = sum(correct[i] for i in keep), len(keep)
        out[name] = {"correct": k, "n": n, "accuracy": k / n if n else None,
                     "wilson95": wilson(k, n),
                     "mean_margin": (float((chosen - rejected)[keep].mean()) if n else None)}
    return out


def fmt(block: dict) -> str:
    lo, hi = block["wilson95"] or (float("nan"), float("nan"))
    return (f"{block['accuracy']:.3f} ({block['correct']}/{block['n']}, 95% CI {lo:.3f}-"
            f"{hi:.3f}), mean margin {block['mean_margin']:+.4f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import ablate.train.dpo as dpo_module
    import ablate.train.rm as rm_module
    from ablate.data import load_preferences
    from ablate.spec.schema import DPOConfig, RMConfig
    from ablate.train.common import tokenize_pairs
    from transformers import AutoTokenizer

    started = time.perf_counter()
    model_dir = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ref = {"name": args.dataset}
    train_data, test_data = load_preferences(ref, "train"), load_preferences(ref, "test")

    def fitting(rows):
        pairs, skipped = tokenize_pairs(rows, tokenizer, args.max_length, args.max_length,
                                        drop_truncated=True)
        return [rows[p.index] for p in pairs], dict(skipped)

    train_fit, train_skipped = fitting(train_data.rows)
    test_fit, test_skipped = fitting(test_data.rows)
    order = list(range(len(train_fit)))
    random.Random(args.seed).shuffle(order)
    if args.train_pairs >= len(order):
        sys.exit(f"only {len(order)} train-split pairs fit {args.max_length} tokens")
    train_rows = [train_fit[i] for i in order[:args.train_pairs]]
    unused = [train_fit[i] for i in order[args.train_pairs:]]
    held = ([(r, "test") for r in test_fit] + [(r, "train_unused") for r in unused])
    held = held[:args.heldout_pairs]
    rows = train_rows + [r for r, _ in held]
    source = [s for _, s in held]
    n_train = len(train_rows)
    info = {"command": " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "model_dir": str(model_dir), "machine": run_context(),
            "data": {"train_split_rows": len(train_data.rows), "test_split_rows":
                     len(test_data.rows), "train_split_fitting": len(train_fit),
                     "test_split_fitting": len(test_fit),
                     "skipped_train": {**getattr(train_data, "skipped", {}), **train_skipped},
                     "skipped_test": {**getattr(test_data, "skipped", {}), **test_skipped},
                     "train_pairs": n_train, "heldout_pairs": len(held),
                     "heldout_from_test": source.count("test"),
                     "heldout_from_train_unused": source.count("train_unused")}}
    print(f"{args.model} on {args.dataset}: pairs <= {args.max_length} tokens fit: "
          f"{len(train_fit)} of {len(train_data.rows)} train-split, {len(test_fit)} of "
          f"{len(test_data.rows)} test-split rows; training on {n_train}, holding out "
          f"{len(held)} ({source.count('test')} test split + {source.count('train_unused')} "
          f"unused train split); torch threads {torch.get_num_threads()}", flush=True)

    with tempfile.TemporaryDirectory(prefix="smollm2_proof_") as tmp:
        if not args.skip_rm:
            cfg = RMConfig(lr=args.rm_lr, warmup_ratio=args.rm_warmup, epochs=args.epochs,
                           batch_size=args.batch_size, micro_batch_size=args.micro_batch,
                           max_length=args.max_length, eval_fraction=0.5,
                           save_every_steps=10_000, shared_prompt=not args.rm_plain_forward)
            recorded: list[tuple[torch.Tensor, torch.Tensor]] = []
            pair_rewards, split = rm_module.pair_rewards, rm_module.split_heldout

            def recording(*a, **k):
                chosen, rejected = pair_rewards(*a, **k)
                recorded.append((chosen.float().clone(), rejected.float().clone()))
                return chosen, rejected

            rm_module.pair_rewards, rm_module.split_heldout = recording, split_by_row(n_train)
            began = time.perf_counter()
            try:
                result = rm_module.train_rm(
                    model_dir, rows, cfg, args.seed, Path(tmp) / "rm",
                    progress=lambda *a, **k: print(f"  rm: {a[:2]} "
                                                   f"({time.perf_counter() - began:.0f} s)",
                                                   flush=True))
            finally:
                rm_module.pair_rewards, rm_module.split_heldout = pair_rewards, split
            assert len(recorded) == 2 and result["heldout_pairs"] == len(held) \
                and result["train_pairs"] == n_train, (len(recorded), result)
            before, after = (accuracy_figures(c, r, source) for c, r in recorded)
            # train_rm's own figure is a float32 mean: equal to k/n up to rounding
            if abs(after["all"]["accuracy"] - result["heldout_accuracy"]) > 1e-6:
                print(f"WARNING: recorded accuracy {after['all']['accuracy']} differs from "
                      f"train_rm's {result['heldout_accuracy']}", flush=True)
            info["rm"] = {"config": cfg.model_dump(), "before": before, "after": after,
                          "train_loss_etc": {k: v for k, v in result.items()
                                             if k not in ("skipped",)},
                          "wall_seconds": time.perf_counter() - began}
            print(f"RM held-out pair accuracy, untrained head: {fmt(before['all'])}")
            print(f"RM held-out pair accuracy, trained:       {fmt(after['all'])}")
            for name in ("test", "train_unused"):
                if before[name]["n"]:
                    print(f"  {name}: before {fmt(before[name])}; after {fmt(after[name])}")
            # What a reward for length alone would score on the same held-out pairs (longer
            # chosen answer = correct, a tie wrong): the RM should be read against it too.
            held_pairs = [p for p in tokenize_pairs([r for r, _ in held], tokenizer,
                                                    args.max_length, args.max_length,
                                                    drop_truncated=True)[0]]
            longer = sum(len(p.chosen_ids) > len(p.rejected_ids) for p in held_pairs)
            info["rm"]["length_baseline"] = {"correct": longer, "n": len(held_pairs),
                                             "accuracy": longer / len(held_pairs),
                                             "wilson95": wilson(longer, len(held_pairs))}
            print(f"  longer-answer baseline on the same held-out pairs: "
                  f"{longer / len(held_pairs):.3f} ({longer}/{len(held_pairs)})")
            if args.preregistered:
                low = after["all"]["wilson95"][0]
                info["rm"]["preregistered"] = {
                    "name": args.preregistered, "settings": PREREGISTERED[args.preregistered],
                    "criterion": SUCCESS_CRITERION, "wilson95_lower": low, "met": low > 0.5}
                print(f"  registered setting {args.preregistered}: {SUCCESS_CRITERION}: "
                      f"lower bound {low:.3f} -> {'MET' if low > 0.5 else 'NOT MET'}")
            print(f"  RM wall {info['rm']['wall_seconds']:.0f} s", flush=True)
        if not args.skip_dpo:
            cfg = DPOConfig(lr=args.dpo_lr, beta=args.dpo_beta, epochs=args.epochs,
                            batch_size=args.batch_size, micro_batch_size=args.micro_batch,
                            max_length=args.max_length, max_prompt_length=args.max_length,
                            eval_fraction=0.5, save_every_steps=10_000)
            split = dpo_module.split_heldout
            dpo_module.split_heldout = split_by_row(n_train)
            began = time.perf_counter()
            try:
                summary = dpo_module.train_dpo(
                    model_dir, rows, cfg, args.seed, Path(tmp) / "dpo", Path(tmp) / "cache",
                    progress=lambda *a, **k: print(f"  dpo: {a[:2]} "
                                                   f"({time.perf_counter() - began:.0f} s)",
                                                   flush=True))
            finally:
                dpo_module.split_heldout = split
            assert summary["heldout_pairs"] == len(held) and summary["train_pairs"] == n_train
            b, a = summary["heldout_before"], summary["heldout_after"]
            n = summary["heldout_pairs"]
            info["dpo"] = {"config": cfg.model_dump(), "summary": summary,
                           "wall_seconds": time.perf_counter() - began}
            for label, m in (("before", b), ("after", a)):
                k = round(m["reward_accuracy"] * n)
                m["wilson95"] = wilson(k, n)
                lo, hi = m["wilson95"]
                print(f"DPO held-out {label}: reward accuracy {m['reward_accuracy']:.3f} "
                      f"({k}/{n}, 95% CI {lo:.3f}-{hi:.3f}), margin {m['reward_margin']:+.4f}, "
                      f"loss {m['loss']:.4f}")
            print(f"  DPO wall {info['dpo']['wall_seconds']:.0f} s", flush=True)
    info["wall_seconds"] = time.perf_counter() - started
    info["machine"]["load_average_end"] = load_average()
    print(f"wall time {info['wall_seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(info, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
