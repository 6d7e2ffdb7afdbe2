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

On CUDA both sides run bf16 autocast over float32 weights (TRL: ``bf16=True``; ablate: its
autocast), each side's model is moved to the GPU before its clock starts, the GPU is synchronised
before each reading, a short bf16 warm-up runs before the first side, and the JSON adds per side
the peak ``torch.cuda.max_memory_allocated`` (reset between sides) and the useful-FLOP
utilisation (``cuda_figures``). ``perf/gpu_check.sh`` runs it that way on a 1.7B-shaped model.
"""

from __future__ import annotations

import argparse
import contextlib
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


# ---------------------------------------------------------------- CUDA-only helpers

PEAK_BF16_FLOPS = (  # dense bf16 tensor-core peak by device-name fragment, first match wins
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
    ("H800", 989e12), ("A100", 312e12), ("L40S", 362e12))


def on_cuda() -> bool:
    return torch.cuda.is_available()


def peak_bf16_flops() -> tuple[float | None, str]:
    """The bf16 dense peak assumed for the utilisation figures, and where it came from."""
    if os.environ.get("ABLATE_PEAK_FLOPS"):
        return float(os.environ["ABLATE_PEAK_FLOPS"]), "ABLATE_PEAK_FLOPS"
    name = torch.cuda.get_device_name()
    for fragment, flops in PEAK_BF16_FLOPS:
        if fragment in name:
            return flops, (f"assumed dense bf16 peak {flops / 1e12:g} TFLOP/s for {name!r} "
                           f"(matched {fragment!r}; H100 SXM and H200 figure is 989)")
    return None, f"no bf16 peak known for {name!r}; set ABLATE_PEAK_FLOPS"


def count_parameters(model_dir: Path, sequence_classification: bool = False) -> int:
    """Parameters that take part in matrix products per token, counted on the meta device: all
    distinct ones for a causal LM (a tied embedding counts once, as the output layer); without
    the input embedding (a lookup) for a sequence classifier."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(model_dir)
    if sequence_classification:
        config.num_labels = 1
    cls = AutoModelForSequenceClassification if sequence_classification else AutoModelForCausalLM
    with torch.device("meta"):
        model = cls.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    if sequence_classification:
        total -= model.get_input_embeddings().weight.numel()
    return total


def cuda_reset() -> None:
    """Free what the last side left and restart the peak-memory counter."""
    gc.collect()
    if on_cuda():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def cuda_sync() -> None:
    if on_cuda():
        torch.cuda.synchronize()


def cuda_memory() -> dict:
    return {"peak_gpu_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
            "peak_gpu_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3)}


def cuda_warmup(seconds: float = 2.0) -> None:
    """CUDA context, cuBLAS handles and clocks up before the first side's clock starts."""
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(20):
            a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize()
    del a
    cuda_reset()


def utilisation(flops: float, seconds: float, peak: float | None) -> float | None:
    return None if not peak or not seconds else round(flops / seconds / peak, 4)


@contextlib.contextmanager
def skipped_model_saves(enabled: bool):
    """With ``enabled``, model and tokenizer ``save_pretrained`` only create the folder: the
    trainers' final save of a multi-GB model is untimed and irrelevant to the comparison."""
    if not enabled:
        yield
        return
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    def no_save(self, save_directory, *args, **kwargs):
        Path(save_directory).mkdir(parents=True, exist_ok=True)

    saved = PreTrainedModel.save_pretrained, PreTrainedTokenizerBase.save_pretrained
    PreTrainedModel.save_pretrained = PreTrainedTokenizerBase.save_pretrained = no_save
    try:
        yield
    finally:
        PreTrainedModel.save_pretrained, PreTrainedTokenizerBase.save_pretrained = saved


def rows_from_file(path: Path, data_name: str) -> list[dict]:
    """Raw rows of a JSONL(.gz) file in ``data_name``'s native format, converted as the
    registry converts that source (a bigger sample than the shipped slice, e.g. the 1000 rows of
    ../shared/data/ultrafeedback_binarized_slice/train_1000.jsonl for ultrafeedback-slice)."""
    import gzip

    from ablate.data.registry import SOURCES

    with (gzip.open if str(path).endswith(".gz") else open)(path, "rt") as lines:
        raw = [json.loads(line) for line in lines if line.strip()]
    # rows the converter skips (a missing field) are dropped, as the loader drops them
    return [row for row in SOURCES[data_name].convert(raw, data_name) if isinstance(row, dict)]


def fitting_pairs(model_dir: Path, n: int, max_length: int, max_prompt_length: int,
                  data_name: str = "ultrafeedback-slice", drop_truncated_only: bool = False,
                  allow_fewer: bool = False, data_file: Path | None = None):
    """The first ``n`` preference rows whose pair fits ``max_length`` untruncated, with their
    tokenisation (ablate's, which TRL's reproduces token for token on these rows). With
    ``allow_fewer``, too few fitting pairs is a warning and all that fit are used. The rows come
    from the shipped ``data_name``, or from ``data_file`` in its native format."""
    from transformers import AutoTokenizer

    from ablate.data import load_preferences
    from ablate.train.common import tokenize_pairs

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = rows_from_file(data_file, data_name) if data_file else \
        load_preferences({"name": data_name}, "train").rows
    pairs, _ = tokenize_pairs(rows, tokenizer, 10**9, 10**9)
    keep = [p for p in pairs if p.length <= max_length and len(p.prompt_ids) <= max_prompt_length]
    if len(keep) < n and not (allow_fewer and keep):
        raise SystemExit(f"only {len(keep)} pairs of {data_name} fit max length {max_length}")
    if len(keep) < n:
        print(f"WARNING: only {len(keep)} pairs of {data_name} fit max length {max_length} "
              f"(prompt {max_prompt_length}); using {len(keep)} instead of {n}", flush=True)
    keep = keep[:n]
    return [rows[p.index] for p in keep], keep, tokenizer


def trl_device_checks(trainer) -> dict:
    """Where a TRL trainer really ran (device, weight dtype, mixed precision): a GPU figure is only
    comparable if both sides ran as configured."""
    param = next(trainer.model.parameters())
    return {"trainer_device": str(trainer.args.device), "model_device": str(param.device),
            "weights_dtype": str(param.dtype), "bf16": trainer.args.bf16,
            "mixed_precision": str(trainer.accelerator.mixed_precision)}


def first_step_clock():
    """A TRL callback class that times the first optimiser step (CUDA synchronised)."""
    from transformers import TrainerCallback

    class FirstStepClock(TrainerCallback):
        started: float | None = None
        seconds: float | None = None

        def on_step_end(self, args, state, control, **kwargs):
            if self.seconds is None and self.started is not None:
                cuda_sync()
                self.seconds = time.perf_counter() - self.started

    return FirstStepClock()


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
        with PeakRSS() as memory:
            cuda_sync()
            started, cpu_started = time.perf_counter(), time.process_time()
            trainer = trl.DPOTrainer(model=model, args=config, train_dataset=dataset,
                                     processing_class=tokenizer, callbacks=[first_step])
            cuda_sync()
            ref_done = time.perf_counter()
            first_step.started = ref_done
            trainer.train()
            cuda_sync()
            finished, cpu_finished = time.perf_counter(), time.process_time()
    finally:
        dpo_trainer_module.hash_module = original_hash
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result = {"seconds": finished - started, "ref_seconds": ref_done - started,
              "train_seconds": finished - ref_done, "cpu_seconds": cpu_finished - cpu_started,
              "peak_rss_gib": memory.gib, "losses": losses, "steps": trainer.state.global_step,
              "first_step_seconds": first_step.seconds,
              # a one-off cost of TRL's reference cache key that grows with the weights, not
              # the pairs: reported apart so that a short run's ratio can be read without it
              "hash_seconds": round(sum(hash_seconds), 3)}
    if on_cuda():
        result.update(cuda_memory())
        result["checks"] = {**trl_device_checks(trainer),
                            "hash_module_seconds": round(sum(hash_seconds), 2)}
    del trainer, model
    return result


def run_ablate(model_dir, rows, args, out: Path, **settings) -> dict:
    """ablate's side; ``settings`` override DPOConfig fields (the ``--ablate-variants``)."""
    from ablate.spec.schema import DPOConfig
    from ablate.train.dpo import train_dpo

    fields = dict(lr=args.lr, warmup_ratio=0.0, epochs=1, batch_size=args.batch_size,
                  micro_batch_size=args.micro_batch_size, max_length=args.max_length,
                  max_prompt_length=args.max_prompt_length, eval_fraction=0.0,
                  save_every_steps=10**6, length_grouping=args.length_grouping,
                  pad_multiple=args.pad_multiple)
    cfg = DPOConfig(**(fields | settings))
    cuda_reset()
    with PeakRSS() as memory, skipped_model_saves(args.skip_save):
        summary = train_dpo(model_dir, rows, cfg, args.seed, out, out / "cache")
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").open()]
    result = {"seconds": summary["ref_logps_seconds"] + summary["train_seconds"],
              "ref_seconds": summary["ref_logps_seconds"],
              "train_seconds": summary["train_seconds"],
              "cpu_seconds": summary["ref_logps_cpu_seconds"] + summary["train_cpu_seconds"],
              "peak_rss_gib": memory.gib, "losses": losses, "steps": summary["steps"],
              "first_step_seconds": summary.get("first_step_seconds"),
              "after_first_step_tokens": summary.get("after_first_step_tokens"),
              "settings": {"length_grouping": cfg.length_grouping,
                           "pad_multiple": cfg.pad_multiple,
                           "shared_prompt": cfg.shared_prompt,
                           "compile_regions": cfg.compile_regions,
                           "attention_kernel": cfg.attention_kernel,
                           "precision": cfg.precision}}
    if on_cuda():
        result.update(cuda_memory())
        bf16_weights = cfg.precision == "bf16_weights"
        result["checks"] = {"trainer_device": summary["device"],
                            "weights_dtype": "torch.bfloat16 (fp32 masters)" if bf16_weights
                            else "torch.float32", "autocast": None if bf16_weights else "bf16"}
    return result


def run_context() -> dict:
    """Precision, device and machine of this run, for the JSON of every benchmark here."""
    cuda = torch.cuda.is_available()
    return {"precision": "bf16" if cuda else "float32",
            "device": torch.cuda.get_device_name() if cuda else
            f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)",
            "machine": platform.node()}


def ratios(ablate: dict, peer: dict) -> dict:
    """ablate over the peer for throughput and CPU time (> 1: ablate is faster) and peak memory
    (ablate's over the peer's: < 1 means ablate uses less)."""
    out = {"ratio": round(ablate["pairs_per_second"] / peer["pairs_per_second"], 3),
           "cpu_ratio": round(peer["cpu_seconds"] / ablate["cpu_seconds"], 3),
           "memory_ratio": round(ablate["peak_rss_gib"] / max(peer["peak_rss_gib"], 1e-9), 3)}
    if "peak_gpu_allocated_gib" in ablate and "peak_gpu_allocated_gib" in peer:
        out["memory_ratio_gpu"] = round(ablate["peak_gpu_allocated_gib"]
                                        / max(peer["peak_gpu_allocated_gib"], 1e-9), 3)
    return out


def emit(result: dict, path: Path | None, show: bool = True) -> dict:
    """Print the result and write it to ``path`` (temp file, then rename)."""
    if show:
        print(json.dumps(result, indent=1), flush=True)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, path)
    return result


def cuda_figures(side: dict, params: int, real_tokens: int, peak: float | None,
                 train_multiplier: int = 6, ref_multiplier: int = 2,
                 processed_tokens: int | None = None) -> dict:
    """Useful-FLOP utilisation: (train_multiplier + ref_multiplier)·params·real tokens over the
    timed seconds, and train_multiplier·params·real tokens over the training seconds alone.
    ``processed_tokens``: the tokens the side's layout actually runs (a shared-prompt row runs
    its prompt once, where the real-token count has it twice), for the hardware's share."""
    useful = (train_multiplier + ref_multiplier) * params * real_tokens
    figures = {"useful_flops": float(useful),
               "flop_utilisation": utilisation(useful, side["seconds"], peak),
               "train_flop_utilisation": utilisation(train_multiplier * params * real_tokens,
                                                     side["train_seconds"], peak)}
    if processed_tokens is not None:
        figures["processed_tokens"] = processed_tokens
        figures["processed_flop_utilisation"] = utilisation(
            (train_multiplier + ref_multiplier) * params * processed_tokens, side["seconds"],
            peak)
    if ref_multiplier:
        figures["flop_utilisation_over_train_seconds"] = utilisation(
            useful, side["train_seconds"], peak)
    # after the first optimiser step (compiling, kernel selection): ablate counts the tokens of
    # the later steps; for TRL they are estimated as the steps' mean share of the epoch
    first = side.get("first_step_seconds")
    if first is not None and side.get("steps", 0) > 1:
        later_tokens = side.get("after_first_step_tokens") or \
            real_tokens * (side["steps"] - 1) / side["steps"]
        figures["after_first_step_train_flop_utilisation"] = utilisation(
            train_multiplier * params * later_tokens, side["train_seconds"] - first, peak)
        figures["after_first_step_tokens_estimated"] = not side.get("after_first_step_tokens")
    return figures


def describe(side: dict, n_pairs: int, real_tokens: int) -> dict:
    return {**side, "pairs_per_second": round(n_pairs / side["seconds"], 4),
            "real_tokens_per_second": round(real_tokens / side["seconds"], 1),
            "train_real_tokens_per_second": round(real_tokens / side["train_seconds"], 1),
            "seconds": round(side["seconds"], 2), "ref_seconds": round(side["ref_seconds"], 2),
            "train_seconds": round(side["train_seconds"], 2),
            "cpu_seconds": round(side["cpu_seconds"], 2)}


def parse_settings(spec: str) -> dict:
    """'shared_prompt=false,length_grouping=0' -> {'shared_prompt': False, 'length_grouping': 0};
    'defaults' -> {} (a warm re-run of the main side: a control for the variants, which run
    after it in the same process)."""
    if spec.strip() == "defaults":
        return {}
    settings = {}
    for item in spec.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key:
            raise SystemExit(f"--ablate-settings / --ablate-variants: {item!r} is not "
                             "KEY=VALUE")
        settings[key] = int(value) if value.lstrip("-").isdigit() else \
            {"true": True, "false": False}.get(value.lower(), value)
    return settings


def run_variants(run_side, variant_settings: list[dict], tmp: Path) -> list[dict]:
    """ablate alone once per settings dict (``run_side(out_dir, **settings)``); a variant
    that fails is recorded with its error, so that it does not lose the comparison."""
    variants = []
    for number, settings in enumerate(variant_settings):
        try:
            side = run_side(tmp / f"variant{number}", **settings)
        except Exception as error:
            print(f"ablate variant {settings} failed: {error!r}", flush=True)
            variants.append({"settings": settings, "overrides": settings,
                             "error": f"{type(error).__name__}: {error}"[:2000]})
        else:
            print(f"ablate variant {settings}: {side['seconds']:.1f} s", flush=True)
            variants.append({**side, "overrides": settings})
        cuda_reset()
    return variants


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
    parser.add_argument("--allow-fewer", action="store_true", help="use all fitting pairs when "
                        "fewer than --pairs fit, instead of stopping")
    parser.add_argument("--data-file", type=Path, help="UltraFeedback rows (JSONL, optionally "
                        "gzipped, trl-lib/ultrafeedback_binarized format) instead of the shipped "
                        "200-row slice: more pairs make a longer, steadier epoch")
    parser.add_argument("--skip-save", action="store_true", help="skip ablate's final model save "
                        "(untimed; saves minutes on a multi-GB model)")
    parser.add_argument("--length-grouping", type=int, default=16,
                        help="ablate's DPOConfig.length_grouping (0: plain shuffled batches)")
    parser.add_argument("--pad-multiple", type=int, default=0,
                        help="ablate's DPOConfig.pad_multiple (0: 64 on a GPU, none on CPU)")
    parser.add_argument("--ablate-only", action="store_true", help="run ablate's side alone "
                        "(no TRL side, no ratio): for comparing ablate settings in fresh processes")
    parser.add_argument("--ablate-settings", default="", help="DPOConfig overrides for "
                        "ablate's main side, e.g. 'attention_kernel=efficient' (fresh-process "
                        "A/B runs with --ablate-only)")
    parser.add_argument("--ablate-variants", default="", help="after the comparison, ablate "
                        "alone again with these DPOConfig overrides, e.g. "
                        "'length_grouping=0;pad_multiple=1;defaults' ('defaults': the main "
                        "side again, warm, as a control; reported under 'variants', each with "
                        "its ratio against the same TRL run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.max_length, args.max_prompt_length = 16, 256, 128
    variant_settings = [parse_settings(v) for v in args.ablate_variants.split(";") if v.strip()]
    main_settings = parse_settings(args.ablate_settings) if args.ablate_settings.strip() else {}

    from ablate.models import prepare_builtin

    model_dir = Path(args.model) if Path(args.model).is_dir() else prepare_builtin(args.model)
    rows, pairs, tokenizer = fitting_pairs(model_dir, args.pairs, args.max_length,
                                           args.max_prompt_length, allow_fewer=args.allow_fewer,
                                           data_file=args.data_file)
    if on_cuda():
        cuda_warmup()
    order = ["trl", "ablate"] if args.order == "trl-first" else ["ablate", "trl"]
    return run_comparison(
        ["ablate"] if args.ablate_only else order,
        {"trl": lambda out: run_trl(model_dir, rows, tokenizer, args, out),
         "ablate": lambda out: run_ablate(model_dir, rows, args, out, **main_settings)},
        lambda out, **settings: run_ablate(model_dir, rows, args, out, **settings),
        variant_settings, lambda sides, variants: assemble(args, model_dir, pairs, sides,
                                                           variants), args.json)


def run_comparison(order: list[str], run_side: dict, run_variant, variant_settings: list[dict],
                   assemble_result, json_path: Path | None) -> dict:
    """Each side in ``order`` (``run_side[name](out_dir)``), then ablate's variants, in one
    process; the comparison is written before the variants run, so that a timeout loses only
    them. Returns the final result."""
    with tempfile.TemporaryDirectory() as tmp:
        sides = {}
        for name in order:
            sides[name] = run_side[name](Path(tmp) / name)
            print(f"{name}: {sides[name]['seconds']:.1f} s", flush=True)
            cuda_reset()
        emit(assemble_result(sides, []), json_path, show=False)
        variants = run_variants(run_variant, variant_settings, Path(tmp))
    return emit(assemble_result(sides, variants), json_path)


def processed_tokens(pairs, shared_prompt: bool) -> int:
    """Tokens a layout runs, padding aside: the shared-prompt one runs each prompt once."""
    return sum((1 if shared_prompt else 2) * len(p.prompt_ids) + len(p.chosen_ids)
               + len(p.rejected_ids) for p in pairs)


def assemble(args, model_dir: Path, pairs, sides: dict, raw_variants: list[dict]) -> dict:
    """The benchmark's JSON from the sides that ran (and the variants, when they have)."""
    real_tokens = sum(p.real_tokens for p in pairs)
    variants = [side if "error" in side else describe(side, len(pairs), real_tokens)
                for side in raw_variants]
    ablate = describe(sides["ablate"], len(pairs), real_tokens)
    trl_side = describe(sides["trl"], len(pairs), real_tokens) if "trl" in sides else None
    extra = {"variants": variants} if variants else {}
    if on_cuda():
        params = count_parameters(model_dir)
        peak, peak_note = peak_bf16_flops()
        for side in (ablate, trl_side, *variants) if trl_side else (ablate, *variants):
            if "error" not in side:
                shared = side.get("settings", {}).get("shared_prompt", False)
                side.update(cuda_figures(side, params, real_tokens, peak,
                                         processed_tokens=processed_tokens(pairs, shared)))
        extra |= {"params": params, "peak_bf16_flops": peak, "peak_note": peak_note,
                  "flops_note": "useful FLOPs = 8 x params x real tokens (6 for the training "
                  "forward+backward, 2 for the reference forward), attention and padding not "
                  "counted; real tokens count each pair's prompt twice, as the two sequences "
                  "of a plain DPO forward hold it; flop_utilisation divides by ref+train "
                  "seconds, train_flop_utilisation is 6 x params x tokens over train seconds, "
                  "flop_utilisation_over_train_seconds is 8 x params x tokens over train "
                  "seconds; processed_flop_utilisation counts the tokens the side's layout "
                  "runs (a shared-prompt row runs its prompt once): the hardware's share",
                  "timing_note": "TRL's seconds include DPOTrainer construction (tokenising, "
                  "hashing the weights, reference pass); ablate's are its reference pass plus "
                  "its training loop as it reports them (each step's metrics logging "
                  "included, timed until the last optimiser step has run on the device)",
                  "torch": torch.__version__}
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
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
