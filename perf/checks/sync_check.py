"""Does a DPO or RM training step on a GPU make the host wait for the device before its one
end-of-step read (``StepWork.read``)? Runs a few real steps of ``train_dpo`` and ``train_rm`` with
``torch.cuda.set_sync_debug_mode("warn")`` switched on inside ``loop.accumulate_step`` (forward,
loss, backward, clipping; batch collation, host work by design, excluded) and lists every
synchronising call CUDA reports, with where it came from. The CPU counterpart is
tests/train/test_host_syncs.py (a dispatch mode that sees ``.item()`` and boolean indexing, but
not blocking copies).

    python -m perf.checks.sync_check --model DIR --json OUT.json      # on a GPU
"""

from __future__ import annotations

import argparse
import tempfile
import traceback
import warnings
from pathlib import Path

import torch

from perf.common import emit, fitting_pairs, run_context


def watched(recipe: str, model_dir: Path, rows, args) -> dict:
    from ablate.spec.schema import DPOConfig, RMConfig
    from ablate.train import dpo, loop, rm

    syncs: list[str] = []
    real_step = loop.accumulate_step
    module, collates = (dpo, ["collate"]) if recipe == "dpo" else (rm, ["collate"])
    real_collates = {name: getattr(module, name) for name in collates}

    def step(*a, **k):
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out = real_step(*a, **k)
            for w in caught:
                if "synchroniz" in str(w.message).lower():
                    first_line = str(w.message).split("\n")[0][:200]
                    syncs.append(f"{first_line} ({w.filename}:{w.lineno})")
            return out
        finally:
            torch.cuda.set_sync_debug_mode("default")

    def host_side(name):
        def run(*a, **k):
            mode = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("default")
            try:
                return real_collates[name](*a, **k)
            finally:
                torch.cuda.set_sync_debug_mode(mode)
        return run

    loop.accumulate_step = step
    for name in collates:
        setattr(module, name, host_side(name))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            common = dict(batch_size=args.batch_size, micro_batch_size=args.micro_batch_size,
                          epochs=1, eval_fraction=0.0, max_length=args.max_length,
                          save_every_steps=10**6)
            if recipe == "dpo":
                summary = dpo.train_dpo(model_dir, rows, DPOConfig(
                    **common, max_prompt_length=args.max_prompt_length), 1, Path(tmp) / "run",
                    Path(tmp) / "cache")
            else:
                summary = rm.train_rm(model_dir, rows, RMConfig(**common), 1, Path(tmp) / "run")
    except Exception:
        return {"recipe": recipe, "error": traceback.format_exc()[-2000:]}
    finally:
        loop.accumulate_step = real_step
        for name, real in real_collates.items():
            setattr(module, name, real)
    return {"recipe": recipe, "steps": summary["steps"], "synchronising_calls": len(syncs),
            "calls": sorted(set(syncs))[:20]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--max-prompt-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        return emit({"benchmark": "sync_check", "skipped": "needs CUDA (the CPU counterpart is "
                     "tests/train/test_host_syncs.py)", **run_context()}, args.json)
    rows, _, _ = fitting_pairs(Path(args.model), args.pairs, args.max_length,
                               args.max_prompt_length, allow_fewer=True)
    results = [watched(recipe, Path(args.model), rows, args) for recipe in ("dpo", "rm")]
    for result in results:
        print(result, flush=True)
    return emit({"benchmark": "sync_check", "model": args.model, "pairs": len(rows),
                 **run_context(), "recipes": results}, args.json)


if __name__ == "__main__":
    main()
