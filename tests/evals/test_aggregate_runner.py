"""Category means reproduce the paper's tables; the eval step writes the documented files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ablate.evals import CATEGORIES, EvalError, average, benchmark_names, category_scores
from ablate.evals.runner import evaluate_benchmark, run_step

PAPER = Path(__file__).resolve().parents[3] / "shared" / "paper"


def test_every_benchmark_has_a_category():
    assert sorted(b for benches in CATEGORIES.values() for b in benches) == sorted(benchmark_names())


def test_categories_and_average():
    results = {b: 50.0 for b in benchmark_names()} | {"gsm8k": 40.0, "bbh": 60.0, "toxigen": 90.0}
    cats = category_scores(results)
    assert cats["reasoning"] == 50.0 and cats["safety"] == 70.0
    assert average(cats) == pytest.approx(sum(cats.values()) / 6)
    assert "coding" not in category_scores({"humaneval_plus": 10.0})  # partial: left out
    assert average({"factuality": 1.0}) is None
    with pytest.raises(KeyError, match="unknown benchmark"):
        category_scores({"gsm9k": 1.0})


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
            value = average({c: float(v) for c, v in cats.items()})
            assert value == pytest.approx(float(row["average"]), abs=0.051), (table.name, row)
            checked += 1
    assert checked >= 10


def test_run_step_writes_result_files(tiny_model_dir, tmp_path, monkeypatch):
    from ablate.spec.plan import Step
    from ablate.store import StepContext

    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path / "none"))  # use the shipped slices
    seen = []
    for bench, limit in (("gsm8k", 2), ("mmlu", 6)):
        step = Step("eval", f"eval {bench}", {
            "benchmark": bench, "protocol": "paper", "limit": limit, "seed": 0,
            "max_new_tokens": 8, "judge": None, "sampler": {"kind": "greedy"},
            "model": {"path": str(tiny_model_dir)}})
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
        evaluate_benchmark("gsm9k", tiny_model_dir, tmp_path)
    with pytest.raises(EvalError, match="unknown protocol"):
        evaluate_benchmark("gsm8k", tiny_model_dir, tmp_path, protocol="fast")
