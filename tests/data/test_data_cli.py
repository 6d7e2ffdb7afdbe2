"""``ablate data show`` and ``export`` on the shipped slices."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ablate.data.cli import app


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ABLATE_DATA_DIR", raising=False)


def invoke(*args):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_show_prints_counts_lengths_skips_and_examples():
    result = invoke("show", "hh-rlhf-slice", "--n-examples", "1")
    assert result.exit_code == 0, result.output
    assert "hh-rlhf-slice (dataset, split train): 198 rows" in result.output
    assert "length in characters" in result.output and "median" in result.output
    assert "broken multi-turn structure" in result.output
    assert "example 0" in result.output and "example 1" not in result.output
    assert "rejected" in result.output


def test_show_test_split_and_a_prompt_set():
    assert "split test" in invoke("show", "ultrafeedback-slice", "--split", "test").output
    output = invoke("show", "gsm8k-train-slice", "--n-examples", "1").output
    assert "200 rows" in output and "reference 72" in output


def test_show_a_prompt_set_counts_its_skips():
    output = invoke("show", "gsm8k-train-slice", "--n-examples", "0").output
    assert "skipped rows" in output and "(none)" in output


def test_show_reports_kept_ties_as_information():
    output = invoke("show", "ultrafeedback-slice", "--n-examples", "0").output
    assert "pairs rated equal by the source (margin 0, kept):" in output


def test_show_counts_malformed_rows_and_names_an_unreadable_one(tmp_path, monkeypatch):
    ok = {"prompt": "\n\nHuman: Hi\n\nAssistant:",
          "answers": [{"answer": "x", "rank": 1}, {"answer": "y", "rank": 2}]}
    bad = {**ok, "prompt": "\n\nHuman: Hey\n\nAssistant:",
           "answers": [{"answer": "x", "rank": None}, {"answer": "y", "rank": 2}]}
    (tmp_path / "nectar.jsonl").write_text(json.dumps(ok) + "\n" + json.dumps(bad) + "\n")
    monkeypatch.setenv("ABLATE_DATA_NECTAR", str(tmp_path / "nectar.jsonl"))
    result = invoke("show", "nectar", "--n-examples", "0")
    assert result.exit_code == 0, result.output
    assert "answers: an answer without a numeric rank" in result.output
    step = {"instruction": "Q", "responses": [], "next_response": "good", "rating": 1}
    (tmp_path / "prm.jsonl").write_text(json.dumps(step) + "\n"
                                        + json.dumps({**step, "responses": 7}) + "\n")
    monkeypatch.setenv("ABLATE_DATA_PRM800K_STEPS", str(tmp_path / "prm.jsonl"))
    result = invoke("show", "prm800k-steps")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "dataset 'prm800k-steps', raw row 1 (from 0), column 'responses'" in result.output


def test_show_rejects_unknown_names_and_splits():
    result = invoke("show", "hh-rlhf-slise")
    assert result.exit_code == 2 and "unknown dataset or prompt set 'hh-rlhf-slise'" in result.output
    result = invoke("show", "hh-rlhf-slice", "--split", "dev")
    assert result.exit_code == 2 and "split must be 'train' or 'test'" in result.output


def test_export_writes_the_converted_rows(tmp_path):
    out = tmp_path / "rows.jsonl"
    result = invoke("export", "ultrafeedback-slice", str(out), "--max-rows", "7", "--seed", "1")
    assert result.exit_code == 0 and "wrote 7 rows" in result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 7 and set(rows[0]) == {"prompt", "chosen", "rejected", "source", "margin",
                                              "ratings"}


def test_list_shows_sources_and_prompt_sets():
    output = invoke("list").output
    assert "hh-rlhf-slice" in output and "rm-mix" in output and "gsm8k-train" in output
