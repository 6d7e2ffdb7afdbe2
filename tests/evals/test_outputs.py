"""`ablate eval --outputs` scores a file of outputs through the benchmark's own scoring, and
`--export-items` writes the items such a file answers; bad files are refused by file and line,
before anything is written."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from ablate.evals import benchmark_names
from ablate.evals.cli import app
from ablate.evals.outputs import NOT_CHOSEN


def export(tmp_path, shared_data, benchmark, *args) -> list[dict]:
    path = tmp_path / f"{benchmark}-items.jsonl"
    result = CliRunner().invoke(app, ["--export-items", benchmark, str(path), "--data-dir",
                                      str(shared_data), *args])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in path.read_text().splitlines()]


def score(tmp_path, shared_data, lines: list, *args, out="out"):
    """Writes ``lines`` (dicts, or raw text) as a file and scores it; (exit code, output, out)."""
    path = tmp_path / "outputs.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                            for line in lines))
    out = tmp_path / out
    result = CliRunner().invoke(app, ["--outputs", str(path), "--out", str(out), "--data-dir",
                                      str(shared_data), *args])
    return result.exit_code, result.output, out


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def gold(row: dict):
    """A correct output for an exported item (a plausible one where no answer is public)."""
    bench, ref = row["benchmark"], row["reference"]
    if bench in ("gsm8k", "bbh"):
        return f"So the answer is {ref}."
    if bench == "mmlu":
        return ref
    if bench == "truthfulqa":
        return row["choices"][ref.index(1)]
    if bench == "xstest":
        return "I'm sorry, I cannot help with that." if ref == "refuse" else "Sure: like this."
    if bench in ("humaneval_plus", "mbpp_plus"):
        return [ref]
    if bench.startswith("alpaca_eval"):
        return ref  # identical to the reference: a draw that no judge is asked about
    return "Here is my answer."


GOLD_VALUE = {"gsm8k": 100.0, "bbh": 100.0, "mmlu": 100.0, "truthfulqa": 100.0,
              "humaneval_plus": 100.0, "mbpp_plus": 100.0, "alpaca_eval_1": 50.0,
              "alpaca_eval_2": 50.0}


@pytest.mark.slow
def test_every_benchmark_scores_exported_items_through_its_own_path(
        shared_data, tmp_path, monkeypatch, toxicity_stand_in, humanevalpack, mbppplus_hub):
    # AlpacaEval's outputs here are its references: draws, which no judge is asked about, so
    # this judge is never reached
    judges = tmp_path / "judges.yaml"
    judges.write_text("unreached: {kind: openai, base_url: 'http://127.0.0.1:9/v1', model: m, "
                      "api_key_env: UNREACHED_KEY}\n")
    monkeypatch.setenv("ABLATE_JUDGES", str(judges))
    monkeypatch.setenv("UNREACHED_KEY", "k")  # a key is asked for before anything is scored
    monkeypatch.setenv("ABLATE_TOXIGEN_CLASSIFIER", str(toxicity_stand_in))
    # TruthfulQA's paper protocol is judged by two local 7B judges: its MC2 (full) here
    paper = [b for b in benchmark_names() if b != "truthfulqa"]
    exported = {b: export(tmp_path, shared_data, b, "--limit", "3") for b in paper}
    exported["truthfulqa"] = export(tmp_path, shared_data, "truthfulqa", "--limit", "3",
                                    "--protocol", "full")
    lines = [{"benchmark": b, "item_id": r["item_id"], "output": gold(r)}
             for b, rows in exported.items() for r in rows]
    alpaca = ("alpaca_eval_1", "alpaca_eval_2")
    others = [b for b in paper if b not in alpaca]
    code, output, out = score(tmp_path, shared_data, lines, "--limit", "3", "--benchmarks",
                              ",".join(b for b in others if b != "xstest"))
    assert code == 0, output
    code, output, _ = score(tmp_path, shared_data, lines, "--limit", "3", "--benchmarks",
                            "xstest", "--judge", "string_match", out="out")
    assert code == 0, output
    code, output, _ = score(tmp_path, shared_data, lines, "--limit", "3", "--benchmarks",
                            "truthfulqa", "--protocol", "full", out="out")
    assert code == 0, output
    results = {b: json.loads((out / b / "result.json").read_text())["value"]
               for b in [*others, "truthfulqa"]}
    _, output, judged = score(tmp_path, shared_data, lines, "--limit", "3", "--benchmarks",
                              ",".join(alpaca), "--judge", "unreached", out="judged")
    judged_summary = json.loads((judged / "summary.json").read_text())
    # AE2's length-controlled win rate needs alpaca-eval's difficulty file, absent offline
    failed = judged_summary["failed"]
    assert set(failed) <= {"alpaca_eval_2"} and all("df_gamed" in e for e in failed.values())
    assert set(judged_summary["results"]) | set(failed) == set(alpaca), output
    for bench, value in [*results.items(), *judged_summary["results"].items()]:
        out = judged if bench in alpaca else tmp_path / "out"
        result = json.loads((out / bench / "result.json").read_text())
        assert result["n_items"] == 3 and result["given_outputs"]["n_missing"] == 0, bench
        if bench in GOLD_VALUE:
            assert value == pytest.approx(GOLD_VALUE[bench]), bench
    # the first items are all safe, so F1 over refusals is 0; each was answered as it should be
    xstest = json.loads((tmp_path / "out" / "xstest" / "result.json").read_text())
    assert xstest["secondary"]["accuracy"] == 100
    for bench in [*results, *judged_summary["results"]]:
        out = judged if bench in alpaca else tmp_path / "out"
        # what was scored is what was exported: the user turn and the assistant's opening
        scored = read_jsonl(out / bench / "outputs.jsonl")
        assert [r["item_id"] for r in scored] == [r["item_id"] for r in exported[bench]]
        for row, done in zip(exported[bench], scored):
            prefix = row["assistant_prefix"]
            assert done["prompt"] == row["input"] + (f"\n{prefix}" if prefix else ""), bench
        assert len(read_jsonl(out / bench / "scores.jsonl")) == 3
    assert all(not r["chat_template"] for r in exported["truthfulqa"])
    assert all(r["chat_template"] for r in exported["gsm8k"])


def test_export_writes_what_the_model_is_asked_and_the_reference(shared_data, tmp_path):
    rows = export(tmp_path, shared_data, "gsm8k", "--limit", "2")
    assert [r["item_id"] for r in rows] == ["test-1309", "test-228"]  # open-instruct's draw
    assert rows[0]["input"].startswith("Answer the following questions.\n\nQuestion: There are")
    assert rows[0]["assistant_prefix"] == "Answer:" and rows[0]["max_new_tokens"] == 512
    mmlu = export(tmp_path, shared_data, "mmlu", "--limit", "1")[0]
    assert mmlu["choices"] == ["A", "B", "C", "D"] and mmlu["reference"] == "B"
    full = export(tmp_path, shared_data, "gsm8k", "--limit", "1", "--protocol", "full")
    assert full[0]["item_id"] == "test-0" and "The answer is 6." in full[0]["input"]


def test_missing_items_are_named_and_left_out_not_scored_wrong(shared_data, tmp_path):
    rows = export(tmp_path, shared_data, "gsm8k", "--limit", "5")
    lines = [{"benchmark": "gsm8k", "item_id": r["item_id"], "output": gold(r)} for r in rows[:3]]
    code, output, out = score(tmp_path, shared_data, lines, "--limit", "5")
    assert code == 0, output
    result = json.loads((out / "gsm8k" / "result.json").read_text())
    assert result["value"] == 100.0 and result["n_items"] == 3
    assert result["given_outputs"]["n_missing"] == 2
    assert result["given_outputs"]["missing"] == [r["item_id"] for r in rows[3:]]


def test_stop_strings_cut_outputs_as_a_generation_would(shared_data, tmp_path):
    row = export(tmp_path, shared_data, "gsm8k", "--limit", "1", "--protocol", "full")[0]
    reply = f"The answer is {row['reference']}.\n\nQuestion: and next? Answer: 1234567"
    code, output, out = score(tmp_path, shared_data,
                              [{"benchmark": "gsm8k", "item_id": "test-0", "output": reply}],
                              "--protocol", "full", "--limit", "1")
    assert code == 0, output
    assert read_jsonl(out / "gsm8k" / "scores.jsonl")[0]["score"] == 1.0
    result = json.loads((out / "gsm8k" / "result.json").read_text())
    assert result["given_outputs"]["n_cut_at_stop"] == 1


def test_loglikelihood_benchmarks_take_log_likelihoods_or_the_chosen_choice(shared_data, tmp_path):
    mmlu = export(tmp_path, shared_data, "mmlu", "--limit", "2")
    # TruthfulQA's MC2 is its full protocol (the paper's is judged generation)
    tqa = export(tmp_path, shared_data, "truthfulqa", "--limit", "1", "--protocol", "full")[0]
    lls = [-1.0 - k for k in range(len(tqa["choices"]))]
    lines = [{"benchmark": "mmlu", "item_id": mmlu[0]["item_id"],
              "loglikelihoods": [-3.0, -1.0, -2.0, -4.0]},  # B
             {"benchmark": "mmlu", "item_id": mmlu[1]["item_id"], "output": " A "}]
    code, output, out = score(tmp_path, shared_data, lines, "--limit", "2")
    assert code == 0, output
    tqa_line = [{"benchmark": "truthfulqa", "item_id": tqa["item_id"], "loglikelihoods": lls}]
    code, output, _ = score(tmp_path, shared_data, tqa_line, "--limit", "2", "--protocol", "full")
    assert code == 0, output
    scores = read_jsonl(out / "mmlu" / "scores.jsonl")
    assert [s["prediction"] for s in scores] == [1, 0]
    assert scores[1]["loglikelihoods"] == [0.0, NOT_CHOSEN, NOT_CHOSEN, NOT_CHOSEN]
    weights = [math.exp(x) for x in lls]
    expected = sum(w for w, label in zip(weights, tqa["reference"]) if label) / sum(weights)
    assert read_jsonl(out / "truthfulqa" / "scores.jsonl")[0]["score"] == pytest.approx(expected)


@pytest.mark.parametrize("lines,message", [
    (['{"benchmark": "gsm8k", "item_id": "test-1309", "output": "1"}', "{oops"],
     r"outputs.jsonl:2: not valid JSON"),
    ([{"benchmark": "gsm9k", "item_id": "x", "output": "1"}],
     r"outputs.jsonl:1: unknown benchmark 'gsm9k'; valid: mmlu, gsm8k"),
    ([{"benchmark": "gsm8k", "item_id": "test-1309", "output": "1"},
      {"benchmark": "gsm8k", "item_id": "test-1309", "output": "2"}],
     r"outputs.jsonl:2: gsm8k item 'test-1309' again \(first on line 1\)"),
    ([{"benchmark": "gsm8k", "item_id": "test-1309"}],
     r"outputs.jsonl:1: give exactly one of 'output' and 'loglikelihoods'"),
    ([{"benchmark": "gsm8k", "item_id": "test-1309", "output": 7}],
     r"outputs.jsonl:1: 'output' must be a string"),
    ([{"benchmark": "gsm8k", "item_id": "test-0", "output": "1"}],
     r"outputs.jsonl:1: unknown item id 'test-0': not among the 200 items of gsm8k \(paper"),
    ([{"benchmark": "gsm8k", "item_id": "test-1309", "loglikelihoods": [-1.0]}],
     r"outputs.jsonl:1: gsm8k scores generated text: give 'output', not 'loglikelihoods'"),
    ([{"benchmark": "gsm8k", "item_id": "test-1309", "output": ["1", "2"]}],
     r"outputs.jsonl:1: gsm8k scores 1 output\(s\) per item, the line has 2"),
    ([{"benchmark": "mmlu", "item_id": "abstract_algebra/0", "output": "E"}],
     r"outputs.jsonl:1: mmlu takes the chosen choice \('A', 'B', 'C', 'D'\)"),
    ([{"benchmark": "mmlu", "item_id": "abstract_algebra/0", "loglikelihoods": [-1, -2]}],
     r"outputs.jsonl:1: 2 log-likelihoods for 4 choices"),
    ([{"benchmark": "humaneval_plus", "item_id": "HumanEval/0", "output": ["a", "b"]},
      {"benchmark": "humaneval_plus", "item_id": "HumanEval/1", "output": ["a"]}],
     r"humaneval_plus items need the same number of outputs .*line 2 has 1, line 1 has 2"),
    ([{"benchmark": "alpaca_eval_1", "item_id": "0", "output": "hi"}],
     r"alpaca_eval_1's judge gpt-4 needs the API key in \$OPENAI_API_KEY \(unset\); set it, "
     r"or name another with --judge"),
])
def test_bad_outputs_are_refused_by_file_and_line_before_anything_is_written(
        shared_data, tmp_path, lines, message):
    code, output, out = score(tmp_path, shared_data, lines)
    assert code == 2 and "Traceback" not in output
    import re
    assert re.search(message, " ".join(output.split())), output
    assert not out.exists()


def test_every_bad_line_is_listed(shared_data, tmp_path):
    lines = ["[1]", "{oops", {"benchmark": "gsm8k", "item_id": "", "output": "1"}]
    code, output, out = score(tmp_path, shared_data, lines)
    flat = " ".join(output.split())
    assert code == 2 and "3 bad line(s); nothing was scored" in flat
    assert all(f"outputs.jsonl:{n}:" in flat for n in (1, 2, 3))


def test_one_of_model_outputs_and_export(tmp_path):
    result = CliRunner().invoke(app, ["some-model", "--outputs", str(tmp_path / "x.jsonl")])
    assert result.exit_code == 2 and "give one of MODEL, --outputs FILE" in result.output
    assert "got MODEL and --outputs" in " ".join(result.output.split())
