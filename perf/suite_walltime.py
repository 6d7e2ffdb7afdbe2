"""Projected wall time of the whole paper-protocol suite (11 benchmarks) for one model on this machine.

    python -m perf.suite_walltime [--quick] [--json PATH] [--model smollm2-135m-instruct]
        [--benchmarks mmlu,gsm8k,...] [--items N] [--block-size B] [--threads T] [--seed S]
        [--data-dir DIR] [--alpaca-judge reward_model] [--judge-rm DIR] [--no-stand-ins]

The full suite at the paper's protocol is tens of CPU-hours, so for each benchmark this runs
ablate's own evaluation path (``Benchmark.items`` for the paper protocol, then
``Benchmark.evaluate`` and ``Benchmark.summarize`` with the transformers backend: the same
prompts, generation settings, samples per prompt and scoring as ``ablate eval --protocol paper``)
on a seeded random sample of the protocol's items, and projects

    projected seconds = fixed seconds + protocol items x measured seconds per item.

The sample is evaluated in *blocks* of B items, each block one ``evaluate`` call, so the backend
batches inside a block as it would over the whole list (the defaults below size a block near the
rows the backend packs into one batch at full scale; smaller blocks batch less and so overstate
the time). Seconds per item is each block's wall time over B; its mean and spread over the blocks
give a t interval (95 %, with the finite-population correction) for the projection. Fixed seconds
= building the protocol's item list + summarising (once per benchmark at full scale).

What does not run offline here, and what the script does then:
- ToxiGen's classifier ``tomh/toxigen_roberta`` is not on this machine: the row says "not runnable
  here" and is left out of the total. Unless ``--no-stand-ins``, the same ``ToxiGen.evaluate`` then
  runs with a random-weight classifier of the same architecture and size (RoBERTa-large, 355M,
  SmolLM2's tokenizer in place of RoBERTa's) so its cost is known; that estimate is shown apart.
  Set ``ABLATE_TOXIGEN_CLASSIFIER`` to a local copy of the real classifier to time the real thing.
- AlpacaEval 1/2: the paper's judge is GPT-4(-turbo) over an API, unreachable here. They are timed
  with the local reward-model judge (``--judge-rm``, default the embedded model with an untrained
  scalar head: its win rates mean nothing, its cost is that of a 135M RM). API time is not in the
  figure; ``--alpaca-judge NAME`` times a judge from judges.yaml instead.
  AlpacaEval 2's length-controlled win rate needs alpaca-eval's df_gamed.csv (hub only): without
  ``ABLATE_ALPACA_DF_GAMED`` the summary fails after judging; the time is still measured.
- XSTest uses its string-match refusal rules (the protocol's judge-free option).
- TruthfulQA: the paper's judged generation needs two 7B judges (hub only); its MC2 is timed.
Everything else (MMLU, GSM8k, BBH, HumanEval+/MBPP+ sandboxed execution, IFEval's checkers) runs
here in full.
"""

from __future__ import annotations

import math
import os
import platform
import random
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from perf.common import (
    benchmark_parser, emit, load_average, resolve_model, run_context, shared_data_dir,
)


@dataclass(frozen=True)
class SamplePlan:
    blocks: int
    block_size: int  # items per evaluate() call


# Block sizes near the rows HFBackend packs into one batch at full scale (token budget 24,576 /
# (prompt + max new tokens), at most 64 rows, 8 for CPU scoring): ~11 rows at 2,048 new tokens,
# ~18 for GSM8k (~800-token prompts + 512), ~34 rows = 1-2 problems x 20 samples for the code
# benchmarks. Log-likelihood benchmarks are cheap per item, so they get more.
PLANS: dict[str, SamplePlan] = {
    "mmlu": SamplePlan(4, 32), "gsm8k": SamplePlan(3, 18), "bbh": SamplePlan(3, 12),
    "humaneval_plus": SamplePlan(4, 2), "mbpp_plus": SamplePlan(4, 2),
    "truthfulqa": SamplePlan(4, 16), "toxigen": SamplePlan(3, 32), "xstest": SamplePlan(3, 11),
    "alpaca_eval_1": SamplePlan(3, 11), "alpaca_eval_2": SamplePlan(3, 11),
    "ifeval": SamplePlan(3, 11)}
QUICK_PLANS: dict[str, SamplePlan] = {
    **{name: SamplePlan(2, 1) for name in PLANS}, "mmlu": SamplePlan(2, 8),
    "truthfulqa": SamplePlan(2, 4), "gsm8k": SamplePlan(2, 2)}

SCORING_NOTES = {
    "mmlu": "log-likelihood of A-D, no judge",
    "gsm8k": "exact match, no judge",
    "bbh": "exact match, no judge",
    "humaneval_plus": "20 samples/problem run in the sandbox here",
    "mbpp_plus": "20 samples/problem run in the sandbox here",
    "truthfulqa": "MC2 log-likelihood (the full protocol; the paper's judged generation by two "
                  "local 7B judges is not timed)",
    "toxigen": "needs classifier tomh/toxigen_roberta",
    "xstest": "string-match refusal rules (no judge)",
    "ifeval": "lm-eval's checkers, offline",
}


# ------------------------------------------------------------------ projection (pure functions)
@dataclass(frozen=True)
class Projection:
    protocol_items: int
    sampled_items: int
    blocks: int
    mean_s_per_item: float
    sd_s_per_item: float  # over blocks (nan with one block)
    min_s_per_item: float
    max_s_per_item: float
    fixed_s: float
    seconds: float
    low_s: float  # nan when the interval is undefined (one block)
    high_s: float
    confidence: float


def project_walltime(s_per_item_by_block: Sequence[float], block_size: int, protocol_items: int,
                     fixed_s: float = 0.0, confidence: float = 0.95) -> Projection:
    """Full-protocol seconds from equal-sized blocks of a simple random sample of the items.

    Each block's seconds per item is one observation; the mean over blocks times the protocol's
    item count (plus the once-per-benchmark fixed cost) is the projection, and a t interval on the
    mean, shrunk by the finite-population correction sqrt(1 - n/N) (a sample that is most of the
    protocol leaves little to guess), scaled the same way, is its interval."""
    k = len(s_per_item_by_block)
    if k == 0 or block_size < 1 or protocol_items < 1:
        raise ValueError(f"need >= 1 block, block_size >= 1 and protocol_items >= 1; got {k} "
                         f"blocks, block_size {block_size}, protocol_items {protocol_items}")
    sampled = k * block_size
    if sampled > protocol_items:
        raise ValueError(f"sampled {sampled} items from a protocol of {protocol_items}")
    mean = sum(s_per_item_by_block) / k
    seconds = fixed_s + protocol_items * mean
    if k == 1:
        sd = low = high = math.nan
    else:
        from scipy.stats import t

        sd = math.sqrt(sum((x - mean) ** 2 for x in s_per_item_by_block) / (k - 1))
        fpc = math.sqrt(1.0 - sampled / protocol_items)
        half = t.ppf(0.5 + confidence / 2, k - 1) * sd / math.sqrt(k) * fpc * protocol_items
        low, high = max(fixed_s, seconds - half), seconds + half
    return Projection(protocol_items, sampled, k, mean, sd, min(s_per_item_by_block),
                      max(s_per_item_by_block), fixed_s, seconds, low, high, confidence)


def suite_total(projections: Sequence[Projection], fixed_s: float = 0.0) -> tuple[float, float, float]:
    """(seconds, low, high) of the whole suite: the sum of the projections plus the one-off cost
    (loading the model). The bounds are the sums of the benchmarks' bounds (conservative: it
    assumes every benchmark lands at its own bound at once); nan if any interval is undefined."""
    seconds = fixed_s + sum(p.seconds for p in projections)
    low = fixed_s + sum(p.low_s for p in projections)
    high = fixed_s + sum(p.high_s for p in projections)
    return seconds, low, high


def sample_blocks(n_items: int, plan: SamplePlan, seed: int) -> list[list[int]]:
    """Indices of a seeded simple random sample, cut into ``plan.blocks`` blocks of
    ``plan.block_size`` (fewer, still equal, blocks if the protocol is too small)."""
    blocks = min(plan.blocks, n_items // plan.block_size)
    if blocks < 1:
        raise ValueError(f"a block of {plan.block_size} does not fit {n_items} items")
    chosen = random.Random(seed).sample(range(n_items), blocks * plan.block_size)
    return [chosen[b * plan.block_size:(b + 1) * plan.block_size] for b in range(blocks)]


# ------------------------------------------------------------------ measuring
def cpu_seconds() -> float:
    """This process's CPU time plus its finished children's (the code sandbox's programs)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def roberta_large_stand_in(tokenizer):
    """A random-weight sequence classifier with tomh/toxigen_roberta's architecture and size
    (RoBERTa-large: 24 layers, hidden 1024, 16 heads, 355M parameters, 512 positions), for
    timing only. RoBERTa's own tokenizer is not here; SmolLM2's byte-level BPE (49k) cuts
    English into a similar number of tokens."""
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(vocab_size=max(50265, len(tokenizer)), hidden_size=1024,
                           num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                           max_position_embeddings=520, type_vocab_size=1, num_labels=2,
                           pad_token_id=1)  # 520: room for RoBERTa's pad-offset positions
    torch.manual_seed(0)
    return RobertaForSequenceClassification(config).eval()


def output_token_stats(results, tokenizer, max_new_tokens: int | None) -> dict:
    """Reply lengths, re-tokenized from the returned text (stop strings and EOS already cut), so
    approximate: a reply that ran to the cap may re-tokenize to a few tokens more or less."""
    if max_new_tokens is None:
        return {}
    lengths = [len(tokenizer(o, add_special_tokens=False)["input_ids"])
               for r in results for o in r.outputs]
    if not lengths:
        return {}
    return {"outputs": len(lengths), "max_new_tokens": max_new_tokens,
            "mean_output_tokens": sum(lengths) / len(lengths), "max_output_tokens": max(lengths),
            "outputs_near_cap": sum(n >= 0.9 * max_new_tokens for n in lengths)}


def measure_benchmark(name: str, plan: SamplePlan, backend, model_dir: Path, data_root: Path,
                      args, scratch: Path) -> dict:
    from ablate.evals import get_benchmark
    from ablate.evals.base import EvalEnv, EvalError
    from ablate.evals.cli import cli_judge
    from ablate.spec.expand import eval_config
    from ablate.spec.schema import EvalConfig, JudgeSpec

    bench = get_benchmark(name)
    # TruthfulQA's paper protocol is judged by two local 7B judges that cannot be had here: its
    # MC2 (the full protocol) is timed instead, and SCORING_NOTES says so
    protocol = "full" if name == "truthfulqa" else "paper"
    row: dict = {"benchmark": name, "category": bench.category,
                 "metric": bench.metric_under(protocol), "scoring": SCORING_NOTES.get(name, ""),
                 "status": "measured"}
    started = time.perf_counter()
    items = bench.items(protocol, data_root)
    items_s = time.perf_counter() - started
    row["protocol_items"] = len(items)

    judge, reward_model_dir = None, None
    if name.startswith("alpaca_eval"):
        reward_model_dir = Path(args.judge_rm) if args.judge_rm else model_dir
        judge = JudgeSpec(kind="reward_model", path=str(reward_model_dir)) \
            if args.alpaca_judge == "reward_model" else cli_judge(args.alpaca_judge)
        row["scoring"] = ("paper: GPT-4 judge over an API (not reachable here); timed with "
                          f"{args.alpaca_judge!r}")
        if args.alpaca_judge == "reward_model":
            row["scoring"] += f" = reward model {reward_model_dir}" + (
                "" if args.judge_rm else " (untrained head: cost only, win rate meaningless)")
    restore = None
    if name == "toxigen":
        import ablate.evals.toxigen as toxigen

        classifier = EvalConfig().toxigen_classifier.hub
        source = toxigen.classifier_location(EvalConfig().toxigen_classifier)
        try:
            toxigen.load_classifier(source)
            row["scoring"] = f"classifier {source}"
        except EvalError as exc:
            row["status"] = "not runnable here"
            row["reason"] = (f"classifier {classifier} is not available offline "
                             f"({str(exc)[:160]})")
            if args.no_stand_ins:
                return row
            stand_in = (backend.tokenizer, roberta_large_stand_in(backend.tokenizer))
            restore = toxigen.load_classifier
            toxigen.load_classifier = lambda _source: stand_in  # timing only, see the docstring
            row["scoring"] = ("STAND-IN: random-weight RoBERTa-large classifier (same size as "
                              f"{classifier}); estimate only, not in the total")

    blocks = sample_blocks(len(items), plan, args.seed)
    block_s, block_cpu_s, results = [], [], []
    try:
        for block in blocks:
            config = eval_config(EvalConfig(seed=args.seed, protocol=protocol), name, judge=judge)
            env = EvalEnv(model_dir=model_dir, config=config, reward_model_dir=reward_model_dir,
                          data_root=data_root, cache_dir=scratch / name, _backend=backend)
            chosen = [items[i] for i in block]
            wall, cpu = time.perf_counter(), cpu_seconds()
            block_results = bench.evaluate(chosen, env)
            block_s.append(time.perf_counter() - wall)
            block_cpu_s.append(cpu_seconds() - cpu)
            if len(block_results) != len(chosen):
                raise EvalError(f"{name}: {len(chosen)} items but {len(block_results)} results")
            results += block_results
            print(f"  {name}: block of {len(chosen)} in {block_s[-1]:.1f} s", flush=True)
    finally:
        if restore is not None:
            toxigen.load_classifier = restore

    started = time.perf_counter()
    try:
        summary = bench.summarize(results)
        row["sample_value"] = summary.value
    except EvalError as exc:  # AlpacaEval 2 without df_gamed.csv: judged, but no LC win rate
        row["summary_error"] = str(exc)[:300]
    summary_s = time.perf_counter() - started

    size = plan.block_size
    projection = project_walltime([s / size for s in block_s], size, len(items),
                                  fixed_s=items_s + summary_s)
    cpu_mean = sum(block_cpu_s) / (len(block_cpu_s) * size)
    row.update({"block_size": size, "block_seconds": block_s, "block_cpu_seconds": block_cpu_s,
                "items_list_s": items_s, "summary_s": summary_s, "cpu_s_per_item": cpu_mean,
                "projected_cpu_hours": (items_s + summary_s + cpu_mean * len(items)) / 3600,
                "sampled_item_ids": [items[i]["item_id"] for b in blocks for i in b],
                "projection": asdict(projection),
                **output_token_stats(results, backend.tokenizer,
                                     getattr(bench, "default_max_new_tokens", None)
                                     if name not in ("mmlu", "truthfulqa") else None)})
    return row


# ------------------------------------------------------------------ report
def hours(seconds: float) -> str:
    return "n/a" if seconds is None or math.isnan(seconds) else f"{seconds / 3600:.2f}"


def print_table(rows: list[dict], total: dict) -> None:
    header = (f"{'benchmark':<15} {'category':<15} {'protocol items':>14} {'sampled':>8} "
              f"{'s/item (sd)':>16} {'projected h [95% CI]':>24}")
    print(header)
    print("-" * len(header))
    for row in rows:
        p = row.get("projection")
        if row["status"] == "failed":
            tail = f"failed: {row['reason'][:60]}"
        elif row["status"] == "not runnable here":
            tail = f"not runnable here: {row['reason'][:110]}"
        else:
            tail = None
        if p:
            sd = "n/a" if math.isnan(p["sd_s_per_item"]) else f"{p['sd_s_per_item']:.3f}"
            cells = (f"{row['protocol_items']:>14} {p['sampled_items']:>8} "
                     f"{p['mean_s_per_item']:>8.3f} ({sd:>5}) "
                     f"{hours(p['seconds']):>7} [{hours(p['low_s'])}, {hours(p['high_s'])}]")
        else:
            cells = f"{row.get('protocol_items', ''):>14} {'-':>8}"
        print(f"{row['benchmark']:<15} {row['category']:<15} {cells}")
        if tail:
            print(f"{'':<15} {tail}" + ("  (stand-in estimate above, not in the total)"
                                         if p and row["status"] == "not runnable here" else ""))
    print("-" * len(header))
    print(f"projected suite total ({total['benchmarks_in_total']} of {total['benchmarks']} "
          f"benchmarks, model load included): {hours(total['seconds'])} h "
          f"[{hours(total['low_s'])}, {hours(total['high_s'])}] (interval: sum of the rows' bounds)")
    if total.get("with_stand_ins_seconds") is not None:
        print(f"  with the stand-in estimates of the benchmarks not runnable here: "
              f"{hours(total['with_stand_ins_seconds'])} h")
    print(f"actual wall time of this sampled run: {total['sampled_run_wall_s']:.0f} s "
          f"(model load {total['model_load_s']:.1f} s)")


def main() -> None:
    parser = benchmark_parser(
        __doc__, quick_help="a few items per benchmark (blocks of 1-8 items; minutes)")
    parser.add_argument("--benchmarks", default="all", help="comma-separated names, or all")
    parser.add_argument("--items", type=int, help="sampled items per benchmark (rounded down to "
                        "whole blocks, at least one; overrides the plan)")
    parser.add_argument("--block-size", type=int, help="items per evaluate() call (overrides)")
    parser.add_argument("--seed", type=int, default=0, help="item sample and generation seed")
    parser.add_argument("--threads", type=int, help="torch threads [default: torch's]")
    parser.add_argument("--data-dir", type=Path, help="benchmark data [default: $ABLATE_DATA_DIR, "
                        "else ../shared/data next to the repo]")
    parser.add_argument("--alpaca-judge", default="reward_model",
                        help="judge for AlpacaEval: reward_model (local) or a judges.yaml name")
    parser.add_argument("--judge-rm", help="reward model folder for the local judge [default: the "
                        "evaluated model with an untrained head, a cost stand-in]")
    parser.add_argument("--no-stand-ins", action="store_true",
                        help="skip the stand-in estimate of benchmarks not runnable here")
    args = parser.parse_args()

    import torch

    from ablate.evals import benchmark_names
    from ablate.generate import SamplingParams
    from ablate.generate.hf import HFBackend

    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    # The RM judge's untrained head and the stand-in classifier print load reports every block.
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    names = benchmark_names() if args.benchmarks == "all" else \
        [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    unknown = sorted(set(names) - set(benchmark_names()))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; valid: {', '.join(benchmark_names())}")
    data_root = args.data_dir or Path(os.environ.get("ABLATE_DATA_DIR") or shared_data_dir())
    if not data_root.is_dir():
        parser.error(f"no benchmark data folder at {data_root}: pass --data-dir")
    plans = QUICK_PLANS if args.quick else PLANS
    if args.block_size or args.items:
        def override(plan: SamplePlan) -> SamplePlan:
            size = args.block_size or plan.block_size
            blocks = (args.items // size) if args.items else plan.blocks
            return SamplePlan(max(1, blocks), size)
        plans = {n: override(p) for n, p in plans.items()}

    run_started = time.perf_counter()
    load_start = load_average()
    started = time.perf_counter()
    model_dir = resolve_model(args.model)
    backend = HFBackend(model_dir)
    model_load_s = time.perf_counter() - started
    # One-time allocation and dispatch costs, paid once per run, not per benchmark.
    warm = backend.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}],
                                                 tokenize=False, add_generation_prompt=True)
    backend.generate([warm], SamplingParams(max_new_tokens=4))
    backend.loglikelihood([(warm, [" A", " B"])])

    report: dict = {
        "command": " ".join([Path(sys.executable).name] + sys.argv), "quick": args.quick,
        "model": str(args.model), "model_dir": str(model_dir), "backend": "transformers (HFBackend)",
        "data_dir": str(data_root), "seed": args.seed, **run_context(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "load_average_start": load_start, "plans": {n: asdict(plans[n]) for n in names},
        "benchmarks": []}

    with tempfile.TemporaryDirectory(prefix="suite-walltime-") as scratch:
        for name in names:
            print(f"{name} ...", flush=True)
            try:
                row = measure_benchmark(name, plans[name], backend, model_dir, data_root, args,
                                        Path(scratch))
            except Exception as exc:  # recorded, and the other benchmarks still run
                from ablate.evals import get_benchmark
                row = {"benchmark": name, "category": get_benchmark(name).category,
                       "status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:400]}
            report["benchmarks"].append(row)
            if args.json:  # a run stopped part-way still leaves the benchmarks it finished
                emit(report, args.json, show=False)

    measured = [r for r in report["benchmarks"] if r["status"] == "measured"]
    seconds, low, high = suite_total([Projection(**r["projection"]) for r in measured],
                                     fixed_s=model_load_s)
    stand_ins = [r for r in report["benchmarks"]
                 if r["status"] == "not runnable here" and r.get("projection")]
    total = {"benchmarks": len(names), "benchmarks_in_total": len(measured),
             "seconds": seconds, "low_s": low, "high_s": high, "hours": seconds / 3600,
             "cpu_hours": sum(r["projected_cpu_hours"] for r in measured),
             "with_stand_ins_seconds": (seconds + sum(r["projection"]["seconds"] for r in stand_ins)
                                        if stand_ins else None),
             "not_in_total": {r["benchmark"]: r.get("reason", "") for r in report["benchmarks"]
                              if r["status"] != "measured"},
             "model_load_s": model_load_s,
             "sampled_run_wall_s": time.perf_counter() - run_started}
    report["total"] = total
    report["load_average_end"] = load_average()
    print()
    print_table(report["benchmarks"], total)
    print(f"load average at start {load_start}, at end {report['load_average_end']}")
    if args.json:
        emit(report, args.json, show=False)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
