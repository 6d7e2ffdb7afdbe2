"""What the benchmarks in perf/ share: the offline environment, the command line every benchmark
takes (``--quick``, ``--json PATH``, ``--model``), the model and data they run on, clocks and
memory meters, the description of the machine, the JSON they write, and the machinery of the
trainer comparisons with TRL (the same pairs on both sides, ratios, ablate's variants, the GPU's
useful-FLOP figures).

Run every script as a module from the repository root (``python -m perf.dpo_vs_trl --quick``):
``perf`` is then a package and ``ablate`` the checkout's.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import torch

# Nothing can be downloaded where these run; fail fast instead of retrying a hub that is not there.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- command line, model, data

def benchmark_parser(doc: str, quick_help: str = "CPU-sized run (< 5 minutes)",
                     model: str | None = "smollm2-135m-instruct",
                     model_help: str = "a built-in model name or a transformers folder"
                     ) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes: ``--quick``, ``--json`` and
    ``--model``; its description is the first line of ``doc`` (the script's docstring)."""
    parser = argparse.ArgumentParser(description=doc.strip().split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--model", default=model, help=model_help)
    return parser


def resolve_model(name: str | Path) -> Path:
    """A transformers folder as given, else the built-in model of that name (prepared once)."""
    if Path(name).is_dir():
        return Path(name)
    from ablate.models import prepare_builtin

    return prepare_builtin(str(name))


def shared_data_dir() -> Path:
    """The shared data folder beside the checkout (``$ABLATE_SHARED_DATA`` to point elsewhere),
    as the tests find it."""
    return Path(os.environ.get("ABLATE_SHARED_DATA", REPO.parent / "shared" / "data"))


# ---------------------------------------------------------------- machine and output

def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run_context() -> dict:
    """Precision, device and machine of this run, for the JSON of every benchmark here. Other
    jobs on a shared machine move CPU timings, so the load average is recorded too."""
    cuda = torch.cuda.is_available()
    return {"precision": "bf16" if cuda else "float32",
            "device": torch.cuda.get_device_name() if cuda else
            f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)",
            "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                       f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
            "torch": torch.__version__, "load_average": load_average()}


def _nan_to_none(value):
    """JSON has no NaN: an undefined figure is written as null."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


def emit(result: dict, path: Path | None, show: bool = True) -> dict:
    """Print the result and write it to ``path`` (whole file or none: a temp file, then
    renamed)."""
    text = json.dumps(_nan_to_none(result), indent=2, default=str)
    if show:
        print(text, flush=True)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, path)
    return result


# ---------------------------------------------------------------- clocks and meters

def on_cuda() -> bool:
    return torch.cuda.is_available()


def cuda_sync() -> None:
    if on_cuda():
        torch.cuda.synchronize()


class Clock:
    """Wall and process-CPU seconds of a block, the GPU synchronised at both ends."""

    def __enter__(self):
        cuda_sync()
        self.started, self.cpu_started = time.perf_counter(), time.process_time()
        return self

    def elapsed(self) -> float:
        """Wall seconds so far (the GPU synchronised first)."""
        cuda_sync()
        return time.perf_counter() - self.started

    def __exit__(self, *exc):
        self.seconds = self.elapsed()
        self.cpu_seconds = time.process_time() - self.cpu_started


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


def cuda_reset() -> None:
    """Free what the last side left and restart the peak-memory counter."""
    gc.collect()
    if on_cuda():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


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


# ---------------------------------------------------------------- useful-FLOP figures (CUDA)

PEAK_BF16_FLOPS = (  # dense bf16 tensor-core peak by device-name fragment, first match wins
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
    ("H800", 989e12), ("A100", 312e12), ("L40S", 362e12))


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


def utilisation(flops: float, seconds: float, peak: float | None) -> float | None:
    return None if not peak or not seconds else round(flops / seconds / peak, 4)


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


def processed_tokens(pairs, shared_prompt: bool) -> int:
    """Tokens a layout runs, padding aside: the shared-prompt one runs each prompt once."""
    return sum((1 if shared_prompt else 2) * len(p.prompt_ids) + len(p.chosen_ids)
               + len(p.rejected_ids) for p in pairs)


def gpu_figures(model_dir: Path, pairs, sides: list[dict], flops_note: str,
                sequence_classification: bool = False, ref_multiplier: int = 2) -> dict:
    """On CUDA: adds each measured side's useful-FLOP figures (``cuda_figures``, with the tokens
    its layout runs) and returns what the run's JSON says about them (parameters, peak, notes)."""
    params = count_parameters(model_dir, sequence_classification)
    peak, peak_note = peak_bf16_flops()
    real_tokens = sum(p.real_tokens for p in pairs)
    for side in sides:
        shared = side.get("settings", {}).get("shared_prompt", False)
        side.update(cuda_figures(side, params, real_tokens, peak, ref_multiplier=ref_multiplier,
                                 processed_tokens=processed_tokens(pairs, shared)))
    return {"params": params, "peak_bf16_flops": peak, "peak_note": peak_note,
            "flops_note": flops_note, "torch": torch.__version__}


# ---------------------------------------------------------------- trainer comparisons with TRL

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
                  data_name: str = "ultrafeedback-slice", allow_fewer: bool = False,
                  data_file: Path | None = None):
    """The first ``n`` preference rows whose pair fits ``max_length`` untruncated, with their
    tokenisation (ablate's, which TRL's reproduces token for token on these rows). With
    ``allow_fewer``, too few fitting pairs is a warning and all that fit are used. The rows come
    from the shipped ``data_name``, or from ``data_file`` in its native format."""
    from transformers import AutoTokenizer

    from ablate.data import load_preferences
    from ablate.spec.schema import DataRef
    from ablate.train.common import tokenize_pairs

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = rows_from_file(data_file, data_name) if data_file else \
        load_preferences(DataRef(name=data_name), "train").rows
    pairs, _ = tokenize_pairs(rows, tokenizer, 10**9, 10**9)
    keep = [p for p in pairs if p.length <= max_length and len(p.prompt_ids) <= max_prompt_length]
    if len(keep) < n and not (allow_fewer and keep):
        raise SystemExit(f"only {len(keep)} pairs of {data_name} fit max length {max_length}")
    if len(keep) < n:
        print(f"WARNING: only {len(keep)} pairs of {data_name} fit max length {max_length} "
              f"(prompt {max_prompt_length}); using {len(keep)} instead of {n}", flush=True)
    keep = keep[:n]
    return [rows[p.index] for p in keep], keep, tokenizer


def add_trainer_options(parser: argparse.ArgumentParser, config: str, lr: float) -> None:
    """The options the DPO and RM comparisons share (``config``: the ablate config class whose
    fields ``--ablate-variants`` overrides)."""
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=lr)
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
                        help=f"ablate's {config}.length_grouping (0: plain shuffled batches)")
    parser.add_argument("--ablate-variants", default="", help="after the comparison, ablate "
                        f"alone again with these {config} overrides, e.g. "
                        "'precision=bf16_weights;defaults' ('defaults': the main side again, "
                        "warm, as a control; reported under 'variants', each with its ratio "
                        "against the same TRL run)")


def trl_config_fields(args, out: Path) -> dict:
    """The fields of a TRL trainer config that both comparisons set alike: one epoch of the
    benchmark's batches from ``args.lr`` decaying linearly, no warm-up, no gradient checkpointing,
    no saving, a log line per step; bf16 autocast on a GPU, the CPU otherwise."""
    return dict(output_dir=str(out), use_cpu=not on_cuda(), bf16=on_cuda(),
                learning_rate=args.lr, lr_scheduler_type="linear", warmup_steps=0,
                num_train_epochs=1, per_device_train_batch_size=args.micro_batch_size,
                gradient_accumulation_steps=args.batch_size // args.micro_batch_size,
                gradient_checkpointing=False, max_length=args.max_length, save_strategy="no",
                logging_steps=1, report_to=[], seed=args.seed, dataloader_num_workers=0)


def trl_device_checks(trainer) -> dict:
    """Where a TRL trainer really ran (device, weight dtype, mixed precision): a GPU figure is only
    comparable if both sides ran as configured."""
    param = next(trainer.model.parameters())
    return {"trainer_device": str(trainer.args.device), "model_device": str(param.device),
            "weights_dtype": str(param.dtype), "bf16": trainer.args.bf16,
            "mixed_precision": str(trainer.accelerator.mixed_precision)}


def first_step_clock():
    """A TRL callback that times the first optimiser step (CUDA synchronised) from its
    ``started``."""
    from transformers import TrainerCallback

    class FirstStepClock(TrainerCallback):
        started: float | None = None
        seconds: float | None = None

        def on_step_end(self, args, state, control, **kwargs):
            if self.seconds is None and self.started is not None:
                cuda_sync()
                self.seconds = time.perf_counter() - self.started

    return FirstStepClock()


def trl_side(trainer, clock: Clock, memory: PeakRSS, first_step) -> dict:
    """A TRL trainer's figures once ``trainer.train()`` has run under ``clock`` and ``memory``."""
    result = {"seconds": clock.seconds, "cpu_seconds": clock.cpu_seconds,
              "peak_rss_gib": memory.gib,
              "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
              "steps": trainer.state.global_step, "first_step_seconds": first_step.seconds}
    if on_cuda():
        result.update(cuda_memory())
        result["checks"] = trl_device_checks(trainer)
    return result


def ablate_config(config_class, args, settings: dict, **fields):
    """ablate's trainer config for one epoch of the benchmark's batches, no held-out split, no
    intermediate checkpoint, and TRL's schedule and AdamW (linear to 0, β2 0.999) so that both
    sides compute the same steps; ``fields`` add the recipe's own, ``settings`` (a variant's
    overrides) come last."""
    common = dict(lr=args.lr, warmup_ratio=0.0, end_lr=0.0, adam_beta2=0.999, epochs=1,
                  batch_size=args.batch_size,
                  micro_batch_size=args.micro_batch_size, max_length=args.max_length,
                  eval_fraction=0.0, save_every_steps=10**6,
                  length_grouping=args.length_grouping)
    return config_class(**(common | fields | settings))


def ablate_side(summary: dict, cfg, memory: PeakRSS, out: Path, **timing) -> dict:
    """ablate's figures from a trainer's summary, its config and its ``out/metrics.jsonl``;
    ``timing``: the seconds the benchmark times."""
    side = {**timing, "peak_rss_gib": memory.gib,
            "losses": [json.loads(line)["loss"] for line in (out / "metrics.jsonl").open()],
            "steps": summary["steps"], "first_step_seconds": summary.get("first_step_seconds"),
            "after_first_step_tokens": summary.get("after_first_step_tokens"),
            "settings": {key: getattr(cfg, key) for key in (
                "length_grouping", "pad_multiple", "shared_prompt", "compile_regions",
                "attention_kernel", "precision")}}
    if on_cuda():
        side.update(cuda_memory())
    return side


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


def variant_settings(spec: str) -> list[dict]:
    """``--ablate-variants``: settings separated by ';', each as ``parse_settings`` reads it."""
    return [parse_settings(v) for v in spec.split(";") if v.strip()]


def run_variants(run_side, settings_list: list[dict], tmp: Path) -> list[dict]:
    """ablate alone once per settings dict (``run_side(out_dir, **settings)``); a variant
    that fails is recorded with its error, so that it does not lose the comparison."""
    variants = []
    for number, settings in enumerate(settings_list):
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


def run_comparison(order: list[str], run_side: dict, run_variant, settings_list: list[dict],
                   assemble_result, json_path: Path | None) -> dict:
    """Each side in ``order`` (``run_side[name](out_dir)``), then ablate's variants, in one
    process; the comparison is written before the variants run, so that a timeout loses only
    them. Returns the final result."""
    if on_cuda():
        cuda_warmup()
    with tempfile.TemporaryDirectory() as tmp:
        sides = {}
        for name in order:
            sides[name] = run_side[name](Path(tmp) / name)
            print(f"{name}: {sides[name]['seconds']:.1f} s", flush=True)
            cuda_reset()
        emit(assemble_result(sides, []), json_path, show=False)
        variants = run_variants(run_variant, settings_list, Path(tmp))
    return emit(assemble_result(sides, variants), json_path)
