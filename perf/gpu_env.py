"""Preflight for perf/gpu_check.sh: versions, the device, and the imports the checks need.

Exits non-zero (so the check stops at once) when an import fails or, with ``--require-cuda``,
when torch sees no GPU. Writes what it found as JSON to ``--json``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as metadata
import json
import platform
import sys
import time
import traceback
from pathlib import Path

PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "pydantic",
            "pydantic_core",
            "tokenizers", "safetensors", "huggingface_hub", "pyarrow", "fsspec", "dill",
            "multiprocess", "typing_extensions", "regex", "numpy", "pandas")
IMPORTS = ("torch", "transformers", "pydantic", "datasets", "trl", "trl.trainer.dpo_trainer",
           "trl.trainer.reward_trainer", "ablate.spec.schema",
           "ablate.data", "ablate.train.dpo", "ablate.train.rm", "ablate.generate.hf",
           "ablate.evals.gsm8k")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--require-cuda", action="store_true")
    args = parser.parse_args(argv)
    info: dict = {"python": sys.version.split()[0], "executable": sys.executable,
                  "machine": platform.node(), "versions": {}, "locations": {}, "import_errors": {}}
    for name in PACKAGES:
        try:
            info["versions"][name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            try:
                info["versions"][name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                info["versions"][name] = None
    for name in IMPORTS:
        started = time.perf_counter()
        try:
            module = importlib.import_module(name)
            info["locations"][name] = f"{getattr(module, '__file__', '?')} " \
                                      f"({time.perf_counter() - started:.1f} s)"
        except Exception:  # report every failure, then stop
            info["import_errors"][name] = traceback.format_exc(limit=3)
    import torch

    info["torch_runtime"] = torch.__version__
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                    memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count,
                    bf16_supported=torch.cuda.is_bf16_supported())
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            a @ a
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(10):
            a @ a
        torch.cuda.synchronize()
        info["bf16_matmul_tflops"] = round(10 * 2 * 8192**3 / (time.perf_counter() - started)
                                           / 1e12, 1)
        del a
    try:  # datasets needs a working pyarrow; TRL builds its dataset this way
        from datasets import Dataset

        Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}]).map(lambda r: r)
        info["datasets_ok"] = True
    except Exception:
        info["import_errors"]["datasets.Dataset.from_list"] = traceback.format_exc(limit=3)
    print(json.dumps(info, indent=1), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(info, indent=2) + "\n")
    if info["import_errors"]:
        print("PREFLIGHT FAILED: " + ", ".join(info["import_errors"]), flush=True)
        return 1
    if args.require_cuda and not info["cuda_available"]:
        print("PREFLIGHT FAILED: torch sees no GPU", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
