"""Uncertainty for reports: bootstrap CIs, seed spread, paired tests against a baseline.

Everything works on *replicates*: for one run and one benchmark, the means of ``n_boot`` resamples
of its per-item scores. Category and overall averages get their CIs by averaging replicates the
same way the point estimates are averaged, and a paired test resamples the items two runs share
with the same indices for both. Seeds are fixed and derived from names, so the same store always
gives the same intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence, TypeVar

import numpy as np

from ablate.spec.seeds import derive_seed

N_BOOT = 2000
BASE_SEED = 20240612
LEVEL = 0.95
X = TypeVar("X", float, np.ndarray)


def stable_seed(*parts: str) -> int:
    """A seed from names (not Python's salted ``hash``): same names, same resamples, every run."""
    return derive_seed(BASE_SEED, *parts)


def bootstrap_means(scores: Sequence[float] | np.ndarray, n_boot: int = N_BOOT,
                    seed: int = BASE_SEED) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement) of ``scores``."""
    values = np.asarray(scores, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"bootstrap needs a non-empty 1-d array of scores, got shape {values.shape}")
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    chunk = max(1, 4_000_000 // values.size)  # bound the index matrix to ~32 MB
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        out[start:start + rows] = values[rng.integers(0, values.size, (rows, values.size))].mean(1)
    return out


def bootstrap_statistic(statistic: Callable[[np.ndarray], float], n_items: int,
                        n_boot: int = N_BOOT, seed: int = BASE_SEED) -> np.ndarray:
    """``statistic(indices)`` for ``n_boot`` resamples (with replacement) of ``n_items`` items: the
    bootstrap of a value that is not a mean of per-item scores (XSTest's refusal F1). Two runs'
    statistics in one function (a minus b) resample the same items for both: a paired test."""
    if n_items < 1:
        raise ValueError("bootstrap needs at least one item")
    rng = np.random.default_rng(seed)
    return np.array([statistic(rng.integers(0, n_items, n_items)) for _ in range(n_boot)])


def metric_on_items(metric: Callable[[Mapping[str, np.ndarray]], float],
                    rows: Mapping[str, Mapping[str, object]], ids: Sequence[str],
                    fields: Sequence[str]) -> Callable[[np.ndarray], float]:
    """``metric`` of the items ``ids[indices]``, from each item's ``fields`` (``rows``: item id ->
    its fields): what ``bootstrap_statistic`` resamples."""
    columns = {f: np.array([rows[i][f] for i in ids]) for f in fields}
    return lambda indices: metric({f: column[indices] for f, column in columns.items()})


def paired_metric_replicates(metric: Callable[[Mapping[str, np.ndarray]], float],
                             fields: Sequence[str], a: Mapping[str, Mapping[str, object]],
                             b: Mapping[str, Mapping[str, object]], n_boot: int = N_BOOT,
                             seed: int = BASE_SEED) -> np.ndarray:
    """Replicates of ``metric(a) - metric(b)`` over the items both runs have, each resample
    taking the same items for both (sorted item order, as ``paired_differences``)."""
    shared = sorted(set(a) & set(b))
    if not shared:
        raise ValueError("the two runs share no item_id: they cannot be paired")
    on_a, on_b = (metric_on_items(metric, run, shared, fields) for run in (a, b))
    return bootstrap_statistic(lambda indices: on_a(indices) - on_b(indices), len(shared),
                               n_boot, seed)


def percentile_ci(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    tail = (1 - level) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail])
    return float(low), float(high)


def bootstrap_ci(scores: Sequence[float] | np.ndarray, level: float = LEVEL, n_boot: int = N_BOOT,
                 seed: int = BASE_SEED) -> tuple[float, float]:
    """Percentile-bootstrap CI of the mean of ``scores``."""
    return percentile_ci(bootstrap_means(scores, n_boot, seed), level)


def paired_differences(a: Mapping[str, float], b: Mapping[str, float]) -> np.ndarray:
    """Per-item ``a - b`` over the items both have, in sorted item order."""
    shared = sorted(set(a) & set(b))
    if not shared:
        raise ValueError("the two runs share no item_id: they cannot be paired")
    return np.array([a[k] - b[k] for k in shared], dtype=float)


@dataclass(frozen=True)
class PairedTest:
    delta: float  # mean of a - b
    ci_low: float
    ci_high: float
    p_value: float
    n_pairs: int

    @property
    def within_noise(self) -> bool:
        return self.ci_low <= 0.0 <= self.ci_high


def paired_from_replicates(delta: float, replicates: np.ndarray, n_pairs: int,
                         level: float = LEVEL) -> PairedTest:
    """Paired-bootstrap CI of the difference and a two-sided p-value: how often a resampled
    difference lands on the other side of zero, counted as (k + 1) / (B + 1) so that B
    resamples never claim p = 0, only p < 1/B."""
    low, high = percentile_ci(replicates, level)
    resamples = replicates.size
    below, above = int(np.sum(replicates <= 0)), int(np.sum(replicates >= 0))
    p_value = 2 * (min(below, above) + 1) / (resamples + 1)
    return PairedTest(delta, low, high, min(1.0, p_value), n_pairs)


def paired_bootstrap(a: Mapping[str, float], b: Mapping[str, float], n_boot: int = N_BOOT,
                     seed: int = BASE_SEED, level: float = LEVEL) -> PairedTest:
    """Is run ``a`` different from run ``b`` on the same items? Pairs by item id."""
    diffs = paired_differences(a, b)
    return paired_from_replicates(float(diffs.mean()), bootstrap_means(diffs, n_boot, seed),
                                diffs.size, level)


def mean_sd(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for a single value) across seeds."""
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0:
        raise ValueError("mean_sd of no values")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else math.nan


def item_scale(value: float, item_mean: float) -> float | None:
    """How per-item scores map onto the reported value: 100 when the value is the mean of the
    items in percent. None when it is not (XSTest's refusal F1, AlpacaEval 2's length-controlled
    win rate): resampling the scores then bootstraps another quantity, and rescaling that spread
    onto the reported value would test the wrong metric (``ablate.spec.metrics`` recomputes the
    metrics it knows on resampled items instead)."""
    if abs(item_mean * 100 - value) <= 0.05:
        return 100.0
    return None


def to_category_scale(value_replicates: X, value: float, category_score: float,
                      higher_is_better: bool) -> X:
    """Replicates of a benchmark's value -> replicates of its category score (ToxiGen's is
    100 - % toxic, so the spread flips around the point estimate)."""
    sign = 1.0 if higher_is_better else -1.0
    return category_score + sign * (value_replicates - value)


