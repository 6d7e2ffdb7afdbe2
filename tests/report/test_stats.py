import math

import numpy as np
import pytest

from ablate.spec.benchmarks import aggregate
from ablate.report.stats import (
    bootstrap_ci, bootstrap_means, mean_sd, paired_bootstrap, to_category_scale,
)
from ablate.report.tables import fmt


def test_bootstrap_ci_covers_the_mean_and_shrinks_with_more_items():
    rng = np.random.default_rng(0)
    small = (rng.random(50) < 0.4).astype(float)
    large = (rng.random(2000) < 0.4).astype(float)
    low_s, high_s = bootstrap_ci(small)
    low_l, high_l = bootstrap_ci(large)
    assert low_s <= small.mean() <= high_s and low_l <= large.mean() <= high_l
    assert (high_l - low_l) < (high_s - low_s) / 3
    # a binomial proportion's 95% half-width is about 1.96 * sqrt(p(1-p)/n)
    assert (high_l - low_l) / 2 == pytest.approx(1.96 * math.sqrt(0.24 / 2000), rel=0.15)


def test_bootstrap_is_deterministic_for_a_seed():
    scores = [0, 1, 1, 0, 1]
    assert np.array_equal(bootstrap_means(scores, 100, seed=3), bootstrap_means(scores, 100, seed=3))
    assert not np.array_equal(bootstrap_means(scores, 100, seed=3), bootstrap_means(scores, 100, seed=4))
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_means([])


def test_paired_bootstrap_separates_real_differences_from_noise():
    rng = np.random.default_rng(1)
    base = {f"q{i}": float(rng.random() < 0.5) for i in range(400)}
    same_flipped = dict(base)
    for key in list(base)[:6]:  # 6 of 400 items flip: noise
        same_flipped[key] = 1.0 - base[key]
    better = {k: 1.0 if i % 3 else v for i, (k, v) in enumerate(base.items())}
    noise = paired_bootstrap(same_flipped, base)
    real = paired_bootstrap(better, base)
    assert noise.within_noise and noise.p_value > 0.05
    assert not real.within_noise and real.p_value < 0.01 and real.delta > 0.2
    assert real.n_pairs == 400
    # no resample crossed zero: p is below 1/B, never 0 (2 x 1/(B+1) with B resamples)
    resamples = bootstrap_means([1.0], seed=1).size
    assert real.p_value == pytest.approx(2 / (resamples + 1))
    with pytest.raises(ValueError, match="share no item_id"):
        paired_bootstrap({"a": 1.0}, {"b": 1.0})


def test_mean_sd_across_seeds():
    assert mean_sd([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    mean, sd = mean_sd([5.0])
    assert mean == 5.0 and math.isnan(sd)


def test_aggregate_categories_and_average_and_missing():
    benches = ["gsm8k", "bbh", "mmlu"]
    out = aggregate({"gsm8k": 40.0, "bbh": 50.0, "mmlu": 60.0}, benches)
    assert out == {"factuality": 60.0, "reasoning": 45.0, "average": 52.5}
    partial = aggregate({"gsm8k": 40.0, "bbh": None, "mmlu": 60.0}, benches)
    assert partial["reasoning"] is None and partial["average"] is None and partial["factuality"] == 60.0
    reps = aggregate({"gsm8k": np.array([1.0, 2.0]), "bbh": np.array([3.0, 4.0]),
                      "mmlu": np.array([5.0, 6.0])}, benches)
    assert np.allclose(reps["average"], [3.5, 4.5])


def test_category_scale_flips_lower_is_better():
    reps = np.array([8.0, 12.0])
    assert np.allclose(to_category_scale(reps, 10.0, 90.0, higher_is_better=False), [92.0, 88.0])
    assert np.allclose(to_category_scale(reps, 10.0, 10.0, higher_is_better=True), reps)


def test_fmt_rounds_half_up_on_decimals():
    assert fmt(57.25) == "57.3" and fmt(0.15) == "0.2" and fmt(2.675, 2) == "2.68"
    assert fmt(-0.04, signed=True) == "+0.0" and fmt(1.3, signed=True) == "+1.3"
    assert fmt(None) == "" and fmt(float("nan")) == ""


def test_every_registered_benchmark_has_its_facts_and_its_category_from_them():
    evals = pytest.importorskip("ablate.evals")
    from ablate.spec.benchmarks import BENCHMARKS, CATEGORY_OF

    assert set(evals.BENCHMARKS) == set(BENCHMARKS)
    for name in evals.BENCHMARKS:
        assert evals.get_benchmark(name).category == CATEGORY_OF[name]


def test_refusal_f1_by_hand():
    from ablate.spec.metrics import refusal_f1

    # unsafe = positives: tp 2 (items 0, 1), fp 1 (item 2), fn 1 (item 3): 2*2 / (4 + 1 + 1)
    assert refusal_f1([1, 1, 0, 1, 0], [1, 1, 1, 0, 0]) == pytest.approx(4 / 6)
    assert refusal_f1([1, 0], [0, 0]) == 0.0  # nothing refused: no true positive


def test_a_metric_that_is_not_a_mean_is_bootstrapped_by_recomputing_it_on_resampled_items():
    """XSTest's F1: the replicates are F1 of resampled items (a run that refuses exactly the
    unsafe prompts keeps F1 100 on every resample), and a paired test draws the same items for
    both runs (a run against itself differs by exactly 0)."""
    from ablate.report.stats import bootstrap_statistic, metric_on_items, paired_metric_replicates
    from ablate.spec.metrics import ITEM_METRICS

    fields, metric = ITEM_METRICS["xstest"]
    perfect = {f"i{k}": {"unsafe": k % 2 == 0, "refused": k % 2 == 0} for k in range(40)}
    never = {f"i{k}": {"unsafe": k % 2 == 0, "refused": False} for k in range(40)}
    ids = sorted(perfect)
    on_perfect = metric_on_items(metric, perfect, ids, fields)
    assert on_perfect(np.arange(40)) == 100.0
    replicates = bootstrap_statistic(on_perfect, 40, n_boot=200, seed=1)
    assert np.all(replicates == 100.0)
    diffs = paired_metric_replicates(metric, fields, perfect, never, n_boot=200, seed=1)
    assert np.all(diffs == 100.0)  # every resample holds an unsafe item with 40 items
    assert np.all(paired_metric_replicates(metric, fields, never, never, n_boot=50) == 0.0)
    # half the unsafe prompts refused: F1 = 2*10 / (20 + 0 + 10) on all items, spread around it
    half = {f"i{k}": {"unsafe": k % 2 == 0, "refused": k % 4 == 0} for k in range(40)}
    on_half = metric_on_items(metric, half, ids, fields)
    assert on_half(np.arange(40)) == pytest.approx(100 * 20 / 30)
    spread = bootstrap_statistic(on_half, 40, n_boot=500, seed=2)
    assert spread.min() < 100 * 20 / 30 < spread.max() and spread.max() < 100.0
