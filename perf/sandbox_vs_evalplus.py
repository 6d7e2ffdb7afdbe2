"""ablate's sandboxed HumanEval+/MBPP+ judge against evalplus's own evaluator, same samples.

    python -m perf.sandbox_vs_evalplus [--quick] [--json PATH] [--data DIR]

The samples are each task's canonical solution (the first tasks only with ``--quick``). ablate
judges them through the benchmarks' own ``evaluate`` (every program in the sandbox, under the
isolation ``sandbox.isolation_mode()`` reports; MBPP+'s canonical runs included, cache empty);
evalplus through ``evalplus.evaluate.evaluate`` in a child process, its ground-truth cache empty,
with as many workers as ablate uses. Timings are the evaluation calls, without interpreter start,
imports or ablate's one isolation check. The run fails if any verdict differs.
``ratio`` = evalplus's seconds over ablate's, both benchmarks together (> 1: ablate is faster).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUICK_TASKS = 20
# evalplus's evaluator run in a child: its watchdog thread would hold the exit for 20 s, so the
# child times only the call and leaves with os._exit
EVALPLUS_CHILD = r"""
import json, os, sys, time
from evalplus.evaluate import evaluate
dataset, samples, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
started = time.perf_counter()
evaluate(dataset, samples=samples, parallel=workers)
seconds = time.perf_counter() - started
results = json.load(open(samples.replace(".jsonl", "_eval_results.json")))["eval"]
verdicts = {task: [r["base_status"] == "pass" and r["plus_status"] == "pass" for r in rows]
            for task, rows in results.items()}
sys.stdout.write("\n" + json.dumps({"seconds": seconds, "verdicts": verdicts}) + "\n")
sys.stdout.flush()
os._exit(0)
"""


def read_rows(path: Path, count: int | None) -> list[dict]:
    rows = []
    with gzip.open(path, "rt") as lines:
        for line in lines:
            rows.append(json.loads(line))
            if count is not None and len(rows) == count:
                break
    return rows


def evalplus_side(dataset: str, rows: list[dict], samples: list[dict], workers: int,
                  folder: Path) -> dict:
    """evalplus's evaluator on its own copy of the problems and samples, caches empty."""
    problems, sample_file = folder / f"{dataset}_problems.jsonl", folder / f"{dataset}.jsonl"
    problems.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sample_file.write_text("".join(json.dumps(s) + "\n" for s in samples))
    variable = "HUMANEVAL_OVERRIDE_PATH" if dataset == "humaneval" else "MBPP_OVERRIDE_PATH"
    env = dict(os.environ, **{variable: str(problems)}, XDG_CACHE_HOME=str(folder / "cache"))
    done = subprocess.run([sys.executable, "-c", EVALPLUS_CHILD, dataset, str(sample_file),
                           str(workers)], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise SystemExit(f"evalplus failed on {dataset}:\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return {"seconds": report["seconds"],
            "verdicts": {task: ok[0] for task, ok in report["verdicts"].items()}}


def ablate_side(name: str, items: list[dict], solutions: dict[str, str], folder: Path) -> dict:
    """ablate's benchmark evaluate() with one sample per item, its canonical cache empty."""
    from ablate.evals import get_benchmark
    from ablate.evals.base import EvalEnv
    from ablate.spec.schema import PassAtK
    from ablate.spec.steps import EvalStep

    class CanonicalSamples(EvalEnv):
        def chat(self, user, assistant_prefix=""):
            return user

        def generate(self, prompts, max_new_tokens, stop=(), n=1, temperature=0.0,
                     rm_prompts=None):
            return [[solutions[item["item_id"]]] for item in items]

    bench = get_benchmark(name)
    config = EvalStep(benchmark=name, protocol="paper", seed=0, sampler=PassAtK(n=1))
    env = CanonicalSamples(model_dir=folder, config=config, cache_dir=folder / name)
    started = time.perf_counter()
    results = bench.evaluate(items, env)
    seconds = time.perf_counter() - started
    return {"seconds": seconds,
            "verdicts": {str(r.item_id): r.extra["passed"][0] for r in results}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"the first {QUICK_TASKS} tasks of each benchmark")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--data", type=Path,
                        default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    args = parser.parse_args()
    try:
        from ablate.evals import get_benchmark
        from ablate.evals.base import EvalError
        from ablate.evals.sandbox import isolation_mode
    except ImportError as exc:
        raise SystemExit(f"cannot import ablate ({exc}): run from the checkout with PYTHONPATH=. "
                         "or with the project installed")
    count = QUICK_TASKS if args.quick else None
    he_plus = args.data / "humaneval_plus/HumanEvalPlus-v0.1.10.jsonl.gz"
    mbpp_plus = args.data / "mbpp_plus/MbppPlus-v0.2.0.jsonl.gz"
    for path in (he_plus, mbpp_plus):
        if not path.is_file():
            raise SystemExit(f"missing {path}: point --data at the shared data folder")
    try:
        isolation = isolation_mode()  # its one-time check stays out of the timings
    except EvalError as exc:
        raise SystemExit(str(exc))
    workers = max(1, min(8, os.cpu_count() or 1))  # what ablate's code benchmarks use
    figures: dict = {"isolation": isolation, "workers": workers, "quick": args.quick,
                     "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
                     "python": platform.python_version()}
    with tempfile.TemporaryDirectory(prefix="ablate-perf-sandbox-") as tmp:
        folder = Path(tmp)
        # HumanEval+: evalplus's release file; ablate's prompt file (OriginFmt) has the same
        # task ids, and both get the release's canonical body as the completion
        he_rows = read_rows(he_plus, count)
        he_items = get_benchmark("humaneval_plus").items("paper", args.data)[:len(he_rows)]
        he_solutions = {r["task_id"]: r["canonical_solution"] for r in he_rows}
        he_samples = [{"task_id": r["task_id"], "solution": r["prompt"] + r["canonical_solution"]}
                      for r in he_rows]
        mbpp_rows = read_rows(mbpp_plus, count)
        mbpp_items = get_benchmark("mbpp_plus").items("paper", args.data)[:len(mbpp_rows)]
        mbpp_solutions = {r["task_id"]: r["canonical_solution"] for r in mbpp_rows}
        mbpp_samples = [{"task_id": r["task_id"], "solution": r["canonical_solution"]}
                        for r in mbpp_rows]
        runs = {
            "humaneval_plus": (ablate_side("humaneval_plus", he_items, he_solutions, folder),
                               evalplus_side("humaneval", he_rows, he_samples, workers, folder)),
            "mbpp_plus": (ablate_side("mbpp_plus", mbpp_items, mbpp_solutions, folder),
                          evalplus_side("mbpp", mbpp_rows, mbpp_samples, workers, folder)),
        }
    disagreements = []
    for name, (ours, theirs) in runs.items():
        differ = sorted(t for t, ok in ours["verdicts"].items() if ok != theirs["verdicts"].get(t))
        disagreements += [f"{name} {t}" for t in differ]
        figures[name] = {"tasks": len(ours["verdicts"]), "ablate_s": round(ours["seconds"], 2),
                         "evalplus_s": round(theirs["seconds"], 2),
                         "ratio": round(theirs["seconds"] / ours["seconds"], 3),
                         "passed": sum(ours["verdicts"].values())}
    total_ablate = sum(ours["seconds"] for ours, _ in runs.values())
    total_evalplus = sum(theirs["seconds"] for _, theirs in runs.values())
    figures["ratio"] = round(total_evalplus / total_ablate, 3)
    figures["verdicts_agree"] = not disagreements
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    if disagreements:
        raise SystemExit(f"verdicts differ on {len(disagreements)} samples: {disagreements[:10]}")


if __name__ == "__main__":
    main()
