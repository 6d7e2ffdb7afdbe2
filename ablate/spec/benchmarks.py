"""The paper's benchmarks as facts the plan needs: category, how a model is asked, judge, version.

Torch-free and the one source of these facts: expansion reads them to build eval steps, the evals
layer reads a benchmark's category from here, and reports aggregate with the same rule. A
benchmark's protocol version enters its eval steps' ids: bump it when its items, prompts or scoring
change (per protocol), so that results computed under the old protocol are not reused under the
new one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal, Mapping, TypeVar

X = TypeVar("X")

Scoring = Literal["generate", "loglik", "pass_at_k"]


@dataclass(frozen=True)
class BenchmarkFacts:
    category: str
    # "generate": one greedy reply per item (what a best-of-N sampler reranks); "loglik": scored by
    # log-likelihood; "pass_at_k": sampled completions run against tests.
    scoring: Scoring
    judged: bool = False  # needs a judge model (a judge's definition enters the step id)
    annotator: str | None = None  # the judge's prompt the benchmark implements (judged ones)
    paper_version: int = 1  # of its "paper" protocol
    full_version: int = 1  # of its "full" protocol
    # Where its full protocol is scored another way (TruthfulQA: MC2, no judge)
    full_scoring: Scoring | None = None
    full_judged: bool | None = None
    judge_roles: tuple[str, ...] = ()  # the roles of its panel judge, where it needs several
    paper_top_p: float | None = None  # nucleus sampling of its paper protocol's pass@k samples

    def version(self, protocol: str) -> int:
        return self.paper_version if protocol == "paper" else self.full_version

    def scoring_under(self, protocol: str) -> Scoring:
        return self.full_scoring if protocol == "full" and self.full_scoring else self.scoring

    def judged_under(self, protocol: str) -> bool:
        if protocol == "full" and self.full_judged is not None:
            return self.full_judged
        return self.judged


# Versions 2: scored as open-instruct@959cbbc9d scores them (BBH's shared seed-42 draw and
# unstripped match; GSM8k's exemplars, stops and last number; MMLU's prompt byte for byte;
# ToxiGen's seed-42 shuffle and backslash handling; AlpacaEval's draws for identical outputs).
BENCHMARKS: dict[str, BenchmarkFacts] = {
    "mmlu": BenchmarkFacts("factuality", "loglik", paper_version=2),
    "gsm8k": BenchmarkFacts("reasoning", "generate", paper_version=2),
    # Versions 3: an answer also opens at "|he answer is" (open-instruct's class [t|T])
    "bbh": BenchmarkFacts("reasoning", "generate", paper_version=3, full_version=3),
    # Versions 2 of the code benchmarks: open-instruct's prompts, top_p 0.95 and 3 s per program
    # (HumanEval+); its items [100:], prompt and test assertions (MBPP+).
    "humaneval_plus": BenchmarkFacts("coding", "pass_at_k", paper_version=2, paper_top_p=0.95),
    "mbpp_plus": BenchmarkFacts("coding", "pass_at_k", paper_version=2),
    # Paper version 2: greedy generations judged truthful and informative by two local judges
    # (open-instruct's truth and info judges); its full protocol stays MC2 by log-likelihood.
    "truthfulqa": BenchmarkFacts("truthfulness", "generate", judged=True, paper_version=2,
                                 full_scoring="loglik", full_judged=False,
                                 judge_roles=("truth", "info"),
                                 annotator="open-instruct:eval/truthfulqa/utilities.py"
                                           ":format_end2end_prompt"),
    "toxigen": BenchmarkFacts("safety", "generate", paper_version=2, full_version=2),
    "xstest": BenchmarkFacts("safety", "generate", judged=True,
                             annotator="open-instruct:eval/xstest/classify_refusal.py:"
                                       "xstest_refusal_detect"),
    "alpaca_eval_1": BenchmarkFacts("inst_following", "generate", judged=True, paper_version=2,
                                    full_version=2, annotator="alpaca_eval_gpt4"),
    "alpaca_eval_2": BenchmarkFacts("inst_following", "generate", judged=True, paper_version=2,
                                    full_version=2,
                                    annotator="weighted_alpaca_eval_gpt4_turbo"),
    "ifeval": BenchmarkFacts("inst_following", "generate"),
}

# The paper's six categories, in its column order, and the benchmarks each averages.
CATEGORIES: dict[str, tuple[str, ...]] = {}
for _name, _facts in BENCHMARKS.items():
    CATEGORIES.setdefault(_facts.category, ())
    CATEGORIES[_facts.category] += (_name,)
CATEGORIES = {c: CATEGORIES[c] for c in ("factuality", "reasoning", "coding", "truthfulness",
                                          "safety", "inst_following")}
CATEGORY_OF: dict[str, str] = {b: f.category for b, f in BENCHMARKS.items()}


def category_of(benchmark: str, own: Mapping[str, str] | None = None) -> str:
    """A benchmark's category; a paper-level row may name the category itself. ``own``: the
    categories of a grid's own benchmarks (benchmark -> category), which are not the paper's."""
    if benchmark in CATEGORIES:
        return benchmark
    if own and benchmark in own:
        return own[benchmark]
    try:
        return CATEGORY_OF[benchmark]
    except KeyError:
        raise KeyError(f"unknown benchmark {benchmark!r}; "
                       f"known: {', '.join(sorted(CATEGORY_OF))}") from None


def aggregate(per_benchmark: Mapping[str, X | None], benchmarks: Iterable[str],
              own: Mapping[str, str] | None = None) -> dict[str, X | None]:
    """The paper's aggregation: each category the mean of its ``benchmarks`` (the ones a grid or
    a run has), the average the mean of those categories, on category scores (higher is better).

    Works on floats and on replicate arrays alike. A category with any of its benchmarks missing
    is missing, and so is the average: a partial mean would silently change what is compared.
    Readers mark a category with fewer benchmarks than the paper's, or an average over fewer
    than its six categories, as not the paper's aggregate. The categories of a grid's own
    benchmarks (``own``) are means of their own, after the paper's, and not in the average: it
    stays comparable with the paper's.
    """
    members: dict[str, list[str]] = {}
    for bench in benchmarks:
        members.setdefault(category_of(bench, own), []).append(bench)
    out: dict[str, X | None] = {}
    for category in [c for c in CATEGORIES if c in members]:
        values = [per_benchmark.get(b) for b in members[category]]
        out[category] = None if any(v is None for v in values) else sum(values) / len(values)
    cats = list(out.values())
    out["average"] = None if not cats or any(v is None for v in cats) else sum(cats) / len(cats)
    for category in [c for c in members if c not in CATEGORIES]:
        values = [per_benchmark.get(b) for b in members[category]]
        out[category] = None if any(v is None for v in values) else sum(values) / len(values)
    return out


def paper_aggregate(benchmarks: Iterable[str]) -> bool:
    """Whether an aggregate over ``benchmarks`` is the paper's: all 11, so every category whole."""
    return set(benchmarks) >= set(BENCHMARKS)
