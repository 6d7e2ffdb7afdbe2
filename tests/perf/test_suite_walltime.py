"""perf.suite_walltime: the projection arithmetic, the sampling, and a run on the tiny model."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from perf import suite_walltime

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def walltime():
    return suite_walltime


def test_projection_is_mean_times_items_plus_fixed_with_a_t_interval(walltime):
    # Blocks of 2 items at 1, 2 and 3 s/item from a protocol of 100 items, 5 s fixed cost.
    p = walltime.project_walltime([1.0, 2.0, 3.0], block_size=2, protocol_items=100, fixed_s=5.0)
    assert (p.sampled_items, p.blocks, p.mean_s_per_item, p.sd_s_per_item) == (6, 3, 2.0, 1.0)
    assert p.seconds == pytest.approx(205.0)
    # t(0.975, 2 df) = 4.302653; SE of the mean 1/sqrt(3); finite-population factor sqrt(1 - 6/100).
    half = 4.302653 * (1 / math.sqrt(3)) * math.sqrt(0.94) * 100
    assert p.high_s == pytest.approx(205.0 + half, rel=1e-6)
    assert p.low_s == 5.0  # 205 - 240.9 would be below the fixed cost: clipped there
    assert (p.min_s_per_item, p.max_s_per_item) == (1.0, 3.0)


def test_interval_narrows_to_nothing_when_the_sample_is_the_whole_protocol(walltime):
    p = walltime.project_walltime([1.0, 3.0], block_size=5, protocol_items=10)
    assert p.seconds == p.low_s == p.high_s == pytest.approx(20.0)


def test_one_block_has_no_interval_and_bad_inputs_are_refused(walltime):
    p = walltime.project_walltime([4.0], block_size=1, protocol_items=50)
    assert p.seconds == 200.0 and math.isnan(p.low_s) and math.isnan(p.sd_s_per_item)
    with pytest.raises(ValueError):
        walltime.project_walltime([], block_size=1, protocol_items=5)
    with pytest.raises(ValueError):
        walltime.project_walltime([1.0, 1.0], block_size=4, protocol_items=5)


def test_suite_total_sums_rows_and_their_bounds(walltime):
    a = walltime.project_walltime([1.0, 3.0], 1, 100)
    b = walltime.project_walltime([2.0, 2.0], 1, 10)
    seconds, low, high = walltime.suite_total([a, b], fixed_s=7.0)
    assert seconds == pytest.approx(7.0 + 200.0 + 20.0)
    assert low == pytest.approx(7.0 + a.low_s + b.low_s)
    assert high == pytest.approx(7.0 + a.high_s + b.high_s)


def test_sample_blocks_are_disjoint_seeded_and_fit_small_protocols(walltime):
    plan = walltime.SamplePlan(blocks=3, block_size=4)
    blocks = walltime.sample_blocks(100, plan, seed=1)
    flat = [i for b in blocks for i in b]
    assert [len(b) for b in blocks] == [4, 4, 4] and len(set(flat)) == 12
    assert all(0 <= i < 100 for i in flat)
    assert blocks == walltime.sample_blocks(100, plan, seed=1)
    assert blocks != walltime.sample_blocks(100, plan, seed=2)
    assert [len(b) for b in walltime.sample_blocks(9, plan, seed=0)] == [4, 4]  # 2 whole blocks
    with pytest.raises(ValueError):
        walltime.sample_blocks(3, plan, seed=0)


def test_every_benchmark_has_a_plan(walltime):
    from ablate.evals import benchmark_names

    assert set(walltime.PLANS) == set(walltime.QUICK_PLANS) == set(benchmark_names())


@pytest.mark.slow
def test_runs_on_the_tiny_model_and_reports_the_missing_classifier(shared_data, tiny_model_dir,
                                                                   tmp_path):
    out = tmp_path / "walltime.json"
    command = [sys.executable, "-m", "perf.suite_walltime", "--quick",
               "--model", str(tiny_model_dir), "--benchmarks", "mmlu,truthfulqa,toxigen",
               "--no-stand-ins", "--threads", "1", "--data-dir", str(shared_data),
               "--json", str(out)]
    env = {**__import__("os").environ, "ABLATE_TOXIGEN_CLASSIFIER": str(tmp_path / "absent")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = {r["benchmark"]: r for r in report["benchmarks"]}
    assert rows["mmlu"]["protocol_items"] == 14042 and rows["truthfulqa"]["protocol_items"] == 817
    for name in ("mmlu", "truthfulqa"):
        p = rows[name]["projection"]
        assert rows[name]["status"] == "measured" and p["sampled_items"] == \
            len(rows[name]["sampled_item_ids"])
        assert p["seconds"] == pytest.approx(p["fixed_s"] + p["protocol_items"]
                                             * p["mean_s_per_item"])
    assert rows["toxigen"]["status"] == "not runnable here" and "projection" not in rows["toxigen"]
    assert report["total"]["benchmarks_in_total"] == 2
    assert "not runnable here: classifier tomh/toxigen_roberta" in done.stdout
