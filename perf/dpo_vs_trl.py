"""ablate's DPO trainer against TRL's DPOTrainer, one epoch each over the same pairs, in one process.

Both sides get the same model, the same tokenised pairs (only pairs that fit ``--max-length``
whole, so neither side truncates differently), the same effective batch and micro-batch, float32,
and TRL its fastest setting: ``precompute_ref_log_probs=True`` and no gradient checkpointing. The
timed work on both sides is the reference log-prob pass plus one training epoch (model loading,
tokenisation and saving are left out). Figures: pairs/s, real (non-pad) tokens/s, peak resident
memory above the process's baseline, and ``ratio`` = ablate's pairs/s over TRL's; ``cpu_ratio``
compares CPU seconds (summed over threads), which a busy shared machine distorts less than wall
time.

    python perf/dpo_vs_trl.py --quick --json /tmp/dpo.json   # CPU, SmolLM2-135M, < 5 minutes
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 20 ms."""

    def __enter__(self):
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed memory back before measuring
        except OSError:
            pass
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def gib(self) -> float:
        return round((self.peak - self.base) / 2**30, 3)


def fitting_pairs(model_dir: Path, n: int, max_length: int, max_prompt_length: int,
                  data_name: str = "ultrafeedback-slice", drop_truncated_only: bool = False):
    """The first ``n`` preference rows whose pair fits ``max_length`` untruncated, with their
    tokenisation (ablate's, which TRL's reproduces token for token on these rows)."""
    from transformers import AutoTokenizer

    from ablate.data import load_preferences
    from ablate.train.common import tokenize_pairs

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = load_preferences({"name": data_name}, "train").rows
    pairs, _ = tokenize_pairs(rows, tokenizer, 10**9, 10**9)
    keep = [p for p in pairs if p.length <= max_length and len(p.prompt_ids) <= max_prompt_length]
    if len(keep) < n:
        raise SystemExit(f"only {len(keep)} pairs of {data_name} fit max length {max_length}")
    keep = keep[:n]
    return [rows[p.index] for p in keep], keep, tokenizer


def run_trl(model_dir, rows, tokenizer, args, out: Path) -> dict:
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = trl.DPOConfig(
        output_dir=str(out), use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(), beta=0.1, loss_type=["sigmoid"], learning_rate=args.lr,
        lr_scheduler_type="linear", warmup_steps=0, num_train_epochs=1,
        per_device_train_batch_size=args.micro_batch_size,
        gradient_accumulation_steps=args.batch_size // args.micro_batch_size,
        precompute_ref_log_probs=True, precompute_ref_batch_size=2 * args.micro_batch_size,
        gradient_checkpointing=False, max_length=args.max_length, save_strategy="no",
        logging_steps=1, report_to=[], seed=args.seed, dataloader_num_workers=0,
        dataset_num_proc=None)
    dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")}
                                 for r in rows])
    with PeakRSS() as memory:
        started, cpu_started = time.perf_counter(), time.process_time()
        trainer = trl.DPOTrainer(model=model, args=config, train_dataset=dataset,
                                 processing_class=tokenizer)
        ref_done = time.perf_counter()
        trainer.train()
        finished, cpu_finished = time.perf_counter(), time.process_time()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"seconds": finished - started, "ref_seconds": ref_done - started,
            "train_seconds": finished - ref_done, "cpu_seconds": cpu_finished - cpu_started,
            "peak_rss_gib": memory.gib, "losses": losses}


def run_ablate(model_dir, rows, args, out: Path) -> dict:
    from ablate.spec.schema import DPOConfig
    from ablate.train.dpo import train_dpo

    cfg = DPOConfig(lr=args.lr, warmup_ratio=0.0, epochs=1, batch_size=args.batch_size,
                    micro_batch_size=args.micro_batch_size, max_length=args.max_length,
                    max_prompt_length=args.max_prompt_length, eval_fraction=0.0,
                    save_every_steps=10**6)
    with PeakRSS() as memory:
        summary = train_dpo(model_dir, rows, cfg, args.seed, out, out / "cache")
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").open()]
    return {"seconds": summary["ref_logps_seconds"] + summary["train_seconds"],
            "ref_seconds": summary["ref_logps_seconds"], "train_seconds": summary["train_seconds"],
            "cpu_seconds": summary["ref_logps_cpu_seconds"] + summary["train_cpu_seconds"],
            "peak_rss_gib": memory.gib, "losses": losses}


def describe(side: dict, n_pairs: int, real_tokens: int) -> dict:
    return {**side, "pairs_per_second": round(n_pairs / side["seconds"], 4),
            "real_tokens_per_second": round(real_tokens / side["seconds"], 1),
            "train_real_tokens_per_second": round(real_tokens / side["train_seconds"], 1),
            "seconds": round(side["seconds"], 2), "ref_seconds": round(side["ref_seconds"], 2),
            "train_seconds": round(side["train_seconds"], 2),
            "cpu_seconds": round(side["cpu_seconds"], 2)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU-sized run (< 5 minutes)")
    parser.add_argument("--json", type=Path, help="write both sides' figures here")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a built-in name or a "
                        "transformers folder")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--max-prompt-length", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--order", choices=["trl-first", "ablate-first"], default="trl-first")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.max_length, args.max_prompt_length = 16, 256, 128

    from ablate.models import prepare_builtin

    model_dir = Path(args.model) if Path(args.model).is_dir() else prepare_builtin(args.model)
    rows, pairs, tokenizer = fitting_pairs(model_dir, args.pairs, args.max_length,
                                           args.max_prompt_length)
    real_tokens = sum(p.real_tokens for p in pairs)
    with tempfile.TemporaryDirectory() as tmp:
        sides = {}
        order = ["trl", "ablate"] if args.order == "trl-first" else ["ablate", "trl"]
        for side in order:
            if side == "trl":
                sides["trl"] = run_trl(model_dir, rows, tokenizer, args, Path(tmp) / "trl")
            else:
                sides["ablate"] = run_ablate(model_dir, rows, args, Path(tmp) / "ablate")
            print(f"{side}: {sides[side]['seconds']:.1f} s", flush=True)
    ablate, trl_side = (describe(sides[k], len(pairs), real_tokens) for k in ("ablate", "trl"))
    result = {
        "benchmark": "dpo_vs_trl", "model": args.model, "pairs": len(pairs),
        "real_tokens": real_tokens, "max_length": args.max_length,
        "batch_size": args.batch_size, "micro_batch_size": args.micro_batch_size,
        "precision": "bf16" if torch.cuda.is_available() else "float32",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else
        f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)",
        "machine": platform.node(), "order": args.order,
        "ablate": ablate, "trl": trl_side,
        "ratio": round(ablate["pairs_per_second"] / trl_side["pairs_per_second"], 3),
        "train_ratio": round(trl_side["train_seconds"] / ablate["train_seconds"], 3),
        "cpu_ratio": round(trl_side["cpu_seconds"] / ablate["cpu_seconds"], 3),
        "memory_ratio": round(ablate["peak_rss_gib"] / max(trl_side["peak_rss_gib"], 1e-9), 3),
    }
    print(json.dumps({k: v for k, v in result.items()}, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
