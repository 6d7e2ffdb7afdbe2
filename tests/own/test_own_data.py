"""Data declared in a grid by path: identity by content, and every bad input named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ablate.cli import app
from ablate.data import load_preferences, load_prompts
from ablate.data.own import check_source, resolve_source
from ablate.spec import SpecError, expand
from ablate.spec.schema import DataRef, GridSpec
from ablate.spec.steps import PromptsRef

REPO = Path(__file__).resolve().parents[2]
PAIRS = [{"prompt": f"question {i}?", "chosen": f"good answer {i}", "rejected": f"bad {i}"}
         for i in range(6)]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def grid(datasets: dict, **extra) -> GridSpec:
    return GridSpec.model_validate({
        "name": "t", "models": {"m": {"builtin": "tiny-llama"}}, "datasets": datasets,
        "axes": {"model": ["m"], "data": list(datasets), "algorithm": ["dpo"]},
        "eval": {"benchmarks": ["gsm8k"]}, **extra})


def dpo_id(g: GridSpec) -> str:
    plan = expand(g, resolve=resolve_source)
    return next(s.id for s in plan.steps.values() if s.kind == "train_dpo")


def test_a_changed_row_changes_the_training_id_and_a_moved_file_does_not(tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", PAIRS)
    spec = {"mine": {"path": str(data), "format": "text"}}
    before = dpo_id(grid(spec))
    write_jsonl(data, [*PAIRS[:-1], {**PAIRS[-1], "chosen": "a better answer"}])
    after = dpo_id(grid(spec))
    assert after != before
    moved = write_jsonl(tmp_path / "elsewhere.jsonl", PAIRS[:-1] + [
        {**PAIRS[-1], "chosen": "a better answer"}])
    assert dpo_id(grid({"mine": {"path": str(moved), "format": "text"}})) == after


def test_a_registry_datasets_converter_and_an_override_file_enter_its_ids(tmp_path, monkeypatch):
    import dataclasses

    from ablate.data import registry

    spec = {"uf": {"name": "ultrafeedback-slice", "max_rows": 8}}
    plain = expand(grid(spec))  # without a resolver: nothing says how the rows were made
    plain_id = next(s.id for s in plain.steps.values() if s.kind == "train_dpo")
    resolved = dpo_id(grid(spec))
    assert resolved != plain_id
    bumped = dataclasses.replace(registry.SOURCES["ultrafeedback-slice"], converter_version=9)
    monkeypatch.setitem(registry.SOURCES, "ultrafeedback-slice", bumped)
    assert dpo_id(grid(spec)) not in (plain_id, resolved)
    monkeypatch.undo()
    assert dpo_id(grid(spec)) == resolved
    override = write_jsonl(tmp_path / "uf.jsonl", PAIRS)
    monkeypatch.setenv("ABLATE_DATA_ULTRAFEEDBACK_SLICE", str(override))
    with_override = dpo_id(grid(spec))
    write_jsonl(override, PAIRS[:-1])
    assert len({plain_id, with_override, dpo_id(grid(spec))}) == 3


def test_path_data_without_a_resolver_is_refused():
    with pytest.raises(SpecError, match="digest was not resolved"):
        expand(grid({"mine": {"path": "x.jsonl", "format": "text"}}))


def test_formats_read_the_same_pairs(tmp_path):
    chat = write_jsonl(tmp_path / "chat.jsonl", [
        {"chosen": [{"role": "user", "content": p["prompt"]},
                    {"role": "assistant", "content": p["chosen"]}],
         "rejected": [{"role": "user", "content": p["prompt"]},
                      {"role": "assistant", "content": p["rejected"]}]} for p in PAIRS])
    messages = write_jsonl(tmp_path / "messages.jsonl", [
        {"conv": [{"role": "user", "content": p["prompt"]},
                  {"role": "assistant", "content": p[k]}], "label": k == "chosen"}
        for p in PAIRS for k in ("rejected", "chosen")])
    renamed = tmp_path / "renamed.csv"
    renamed.write_text("q,good,bad\n" + "".join(f"{p['prompt']},{p['chosen']},{p['rejected']}\n"
                                                 for p in PAIRS))
    refs = [DataRef(path=str(chat), format="chat"),
            DataRef(path=str(messages), format="messages",
                    columns={"messages": "conv", "preference": "label"}),
            DataRef(path=str(renamed), format="text",
                    columns={"prompt": "q", "chosen": "good", "rejected": "bad"})]
    loaded = [load_preferences(resolve_source(r)) for r in refs]
    strip = [[(r["prompt"], r["chosen"], r["rejected"]) for r in d.rows] for d in loaded]
    assert len(strip[0]) == 6 and strip[0] == strip[1] == strip[2]


def test_prompt_files_and_the_prompts_of_own_preferences(tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [{"q": "first?"}, {"q": "second?"}, {"q": "first?"},
                                              {"q": ""}])
    ref = resolve_source(PromptsRef(source="prompt_set", path=str(data), format="text",
                                    columns={"prompt": "q"}))
    prompts = load_prompts(ref)
    assert [r["prompt"][0]["content"] for r in prompts] == ["first?", "second?"]
    assert prompts.skipped == {"duplicate prompt": 1, "column 'q': empty": 1}
    pairs = resolve_source(PromptsRef(source="preference_data", format="text",
                                      path=str(write_jsonl(tmp_path / "x.jsonl", PAIRS))))
    assert len(load_prompts(pairs)) == 6


BAD = [
    ("missing column", [{"prompt": "q", "chosen": "a"}],
     "column 'rejected': missing from the data (its columns: prompt, chosen)", "bad.jsonl:1"),
    ("wrong type", [PAIRS[0], {**PAIRS[1], "chosen": ["not", "a string"]}],
     "column 'chosen': expected a string, got a list", "bad.jsonl:2"),
    ("identical", [PAIRS[0], {**PAIRS[1], "rejected": PAIRS[1]["chosen"]}],
     "chosen identical to rejected", "bad.jsonl:2"),
]


@pytest.mark.parametrize("case,rows,reason,where", BAD, ids=[b[0] for b in BAD])
def test_bad_rows_are_counted_and_named(tmp_path, case, rows, reason, where):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    checked = check_source(resolve_source(DataRef(path=str(path), format="text")))
    assert reason in checked.problems
    assert checked.problems[reason][-1].endswith(where)


def test_a_conversation_must_end_with_an_assistant_turn(tmp_path):
    turn = [{"role": "user", "content": "hi"}]
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"chosen": turn + [{"role": "assistant", "content": "hello"}], "rejected": turn}])
    checked = check_source(resolve_source(DataRef(path=str(path), format="chat")))
    assert checked.problems == {"column 'rejected': the conversation does not end with an "
                                "assistant turn": [f"{path}:1"]}


def validate(tmp_path, data: Path, fmt: str = "text"):
    spec = tmp_path / "g.yaml"
    spec.write_text(f"name: t\nmodels: {{m: {{builtin: tiny-llama}}}}\n"
                    f"datasets: {{mine: {{path: {data}, format: {fmt}}}}}\n"
                    "axes: {model: [m], data: [mine], algorithm: [dpo]}\n"
                    "eval: {benchmarks: [gsm8k]}\n")
    return CliRunner().invoke(app, ["validate", str(spec)])


def test_validate_counts_and_refuses_a_file_with_no_usable_row(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    some = write_jsonl(tmp_path / "some.jsonl", [*PAIRS, {**PAIRS[0], "chosen": 3}])
    out = validate(tmp_path, some)
    assert out.exit_code == 0, out.output
    assert "7 rows, 6 usable" in out.output and "sha256:" in out.output
    assert f"1 row(s): column 'chosen': expected a string, got a number ({some}:7)" in out.output

    none = write_jsonl(tmp_path / "none.jsonl", [{**p, "rejected": p["chosen"]} for p in PAIRS])
    out = validate(tmp_path, none)
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert f"{none}: no usable row of 6" in out.output
    assert "6 row(s): chosen identical to rejected" in out.output


@pytest.mark.parametrize("content,message", [
    ("", "the file is empty"),
    (None, "no such file or folder"),
    ('{"prompt": "q"\n', "not valid JSON"),
])
def test_unreadable_files_are_one_message(tmp_path, monkeypatch, content, message):
    monkeypatch.setenv("COLUMNS", "300")
    path = tmp_path / "f.jsonl"
    if content is not None:
        path.write_text(content)
    out = validate(tmp_path, path)
    assert out.exit_code == 2 and message in out.output and "Traceback" not in out.output
    assert str(path) in out.output


def test_declaration_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="path data needs a format"):
        DataRef(path="x.jsonl")
    with pytest.raises(ValueError, match="exactly one of name"):
        DataRef(name="a", path="x.jsonl", format="text")
    with pytest.raises(ValueError, match="columns: answer not read by format 'text'"):
        DataRef(path="x.jsonl", format="text", columns={"answer": "a"})


def test_hub_data_offline_is_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COLUMNS", "300")
    spec = tmp_path / "g.yaml"
    spec.write_text("name: t\nmodels: {m: {builtin: tiny-llama}}\n"
                    "datasets: {h: {hub: someone/prefs, format: chat}}\n"
                    "axes: {model: [m], data: [h], algorithm: [dpo]}\neval: {benchmarks: [gsm8k]}\n")
    out = CliRunner().invoke(app, ["validate", str(spec)])
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert "hub dataset 'someone/prefs'" in out.output and "path:" in out.output
