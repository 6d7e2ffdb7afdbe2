"""The CLI on good and bad input: clear errors, nothing written into the store."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ablate.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_table2_dry_run_lists_ten_cells_and_baseline(tmp_path):
    result = invoke("grid", REPO / "grids" / "table2.yaml", "--dry-run", "--store", tmp_path)
    assert result.exit_code == 0, result.output
    cells = [line for line in result.output.splitlines() if line.strip().startswith("cell ")]
    assert len(cells) == 11
    assert sum("alg=ppo" in c for c in cells) == 5 and sum("alg=dpo" in c for c in cells) == 5
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_validate_ok():
    result = invoke("validate", REPO / "grids" / "smoke.yaml")
    assert result.exit_code == 0, result.output
    assert "3 cells" in result.output


@pytest.mark.parametrize("change, expected", [
    (("  algorithm: [dpo]", "  algorithm: [dpox]"), "unknown algorithm 'dpox'"),
    (("benchmarks: [gsm8k, mmlu]", "benchmarks: [gsm8k, mmluu]"), "unknown benchmark 'mmluu'"),
    (("name: ultrafeedback-slice", "name: ultrafeedback-slise"),
     "unknown dataset 'ultrafeedback-slise'"),
    (("{builtin: smollm2-135m-instruct}", "{builtin: smollm3}"), "unknown built-in model"),
    (("  seed: [1]", "  sed: [1]"), "did you mean 'seed'"),
    (("  seed: [1]", "  seed: [1"), "YAML syntax error"),
    (("  algorithm: [dpo]", "  algorithm: [none]"), "zero jobs"),
])
def test_bad_input_is_named_and_writes_nothing(tmp_path, change, expected):
    text = (REPO / "grids" / "smoke.yaml").read_text()
    assert change[0] in text
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace(change[0], change[1]).replace("baseline: true", "")
                   + ("baseline: false\n" if expected == "zero jobs" else ""))
    store = tmp_path / "store"
    result = invoke("grid", bad, "--store", store)
    assert result.exit_code == 2
    assert expected in result.output and str(bad) in result.output
    assert not store.exists()


@pytest.mark.parametrize("change, expected", [
    # a grid's name names files in the store and the report folder
    (("name: smoke", "name: ../elsewhere"), "name: Value error, a grid name is"),
    (("name: smoke", "name: a/b"), "name: Value error, a grid name is"),
    (("name: smoke", "name: ''"), "name: Value error, a grid name is"),
    # values that could only fail or loop inside a job
    (("lr: 2.0e-5", "lr: .inf"), "lr: Input should be a finite number"),
    (("epochs: 1", "epochs: 1.0e+308"), "epochs: Input should be less than or equal to 1000"),
    (("max_new_tokens: {gsm8k: 256}", "max_new_tokens: {gsm8k: 0}"),
     "max_new_tokens.gsm8k: Input should be greater than 0"),
    (("limit: {gsm8k: 10, mmlu: 40}", "limit: {gsm8k: -1, mmlu: 40}"),
     "limit.gsm8k: Input should be greater than 0"),
    (("{builtin: smollm2-135m-instruct}", "{path: /nonexistent/model}"),
     "models.smollm2.path: model path /nonexistent/model: no such folder"),
    (("benchmarks: [gsm8k, mmlu]", "benchmarks: [gsm8k, mmlu, alpaca_eval_2]\n  judge: gpt"),
     "unknown judge 'gpt'"),
])
def test_validate_refuses_what_would_only_fail_or_escape_the_store_later(tmp_path, change,
                                                                         expected):
    text = (REPO / "grids" / "smoke.yaml").read_text()
    assert change[0] in text
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace(change[0], change[1]))
    result = invoke("validate", bad)
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split()) and str(bad) in result.output


def test_a_grid_file_that_is_not_utf8_is_named(tmp_path, monkeypatch):
    # wide enough for the message on one line: where it wraps depends on the temp path's length
    monkeypatch.setenv("COLUMNS", "400")
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes((REPO / "grids" / "smoke.yaml").read_bytes() + "# caf\xe9\n".encode("latin-1"))
    result = invoke("validate", bad)
    assert result.exit_code == 2
    assert f"{bad}: not UTF-8 text" in "".join(result.output.split("\n"))


def test_unknown_programmatic_reward_is_refused_at_load(tmp_path):
    grid = tmp_path / "prog.yaml"
    grid.write_text(
        "name: prog\nmodels:\n  tiny: {builtin: tiny-llama}\n"
        "datasets:\n  uf: {name: ultrafeedback-slice, max_rows: 8}\n"
        "reward_models:\n  checkable: {programmatic: 'perf.ppo_rewards:gsm8k_exactt'}\n"
        "axes: {model: [tiny], data: [uf], algorithm: [ppo], reward_model: [checkable],\n"
        "       prompts: [gsm8k-train-slice]}\neval: {benchmarks: [gsm8k]}\n")
    result = invoke("grid", grid, "--store", tmp_path / "store")
    assert result.exit_code == 2
    assert "reward_models.checkable.programmatic: module 'perf.ppo_rewards' has no " \
        "'gsm8k_exactt'" in " ".join(result.output.split())
    assert not (tmp_path / "store").exists()
    fixed = grid.read_text().replace("gsm8k_exactt", "gsm8k_exact")
    grid.write_text(fixed)
    dry = invoke("grid", grid, "--dry-run", "--store", tmp_path / "store")
    assert dry.exit_code == 0, dry.output
    assert "train_ppo" in dry.output and "train_rm" not in dry.output


def test_grid_saves_its_description_and_labels_beside_the_plan(tmp_path, monkeypatch):
    """The report captions tables with them, and they are not part of the plan's id."""
    import json
    from types import SimpleNamespace

    import ablate.launch.local

    monkeypatch.setattr(ablate.launch.local, "run_plan", lambda *a, **k: SimpleNamespace(ok=True))
    result = invoke("grid", REPO / "grids" / "smoke.yaml", "--store", tmp_path)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "grids" / "smoke.json").read_text())
    assert saved["description"].startswith("SFT baseline vs DPO on two shipped preference slices")
    assert saved["labels"]["smollm2"] == "SmolLM2 135M Instruct"
    [snapshot] = (tmp_path / "plans").iterdir()
    from ablate.spec.plan import config_hash

    plan = {k: saved[k] for k in ("schema", "grid", "cells", "steps")}
    assert snapshot.stem == config_hash(plan)


def test_a_paper_grid_shows_its_judges_and_stops_before_running_without_their_key(
        tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    dry = invoke("grid", REPO / "grids" / "table1.yaml", "--dry-run", "--store", tmp_path)
    assert dry.exit_code == 0, dry.output
    assert "judge of alpaca_eval_1: gpt-4 via https://api.openai.com/v1" in dry.output
    assert "judge of alpaca_eval_2: gpt-4-1106-preview" in dry.output
    assert "judge of xstest: gpt-4-0613" in dry.output
    grid = tmp_path / "judged.yaml"
    grid.write_text("name: judged\nmodels: {m: {builtin: tiny-llama}}\naxes: {model: [m]}\n"
                    "eval: {benchmarks: [gsm8k, xstest, alpaca_eval_2]}\n")
    monkeypatch.setenv("ABLATE_RUNNERS", "eval=ablate_missing_module:run")  # nothing may run
    out = invoke("grid", grid, "--store", tmp_path / "store")
    assert out.exit_code == 2 and "no usable judge, so nothing was run" in out.output
    text = " ".join(out.output.split())
    assert "xstest's judge gpt-4-0613 needs the API key in $OPENAI_API_KEY (unset)" in text
    assert "or string_match" in text and "Traceback" not in out.output
    assert not (tmp_path / "store" / "steps").exists()


def test_validate_refuses_a_training_step_whose_length_limits_drop_every_pair(tmp_path):
    """The RM recipe drops pairs that do not fit and PPO prompts that do not: with limits no pair
    or prompt meets, the step is refused before anything is queued, not inside its job."""
    grid = tmp_path / "short.yaml"
    body = ("name: short\nmodels: {m: {builtin: tiny-llama}}\n"
            "datasets: {uf: {name: ultrafeedback-slice, max_rows: 8}}\n"
            "algorithms: {ppo: {kind: ppo, max_prompt_length: PROMPT}}\n"
            "reward_models: {rm: {data: cell, train: {max_length: LEN}}}\n"
            "axes: {model: [m], data: [uf], algorithm: [ppo], reward_model: [rm]}\n"
            "eval: {benchmarks: [gsm8k]}\n")
    grid.write_text(body.replace("LEN", "8").replace("PROMPT", "1024"))
    out = invoke("validate", grid)
    text = " ".join(out.output.split())
    assert out.exit_code == 2, out.output
    assert "train_rm rm=rm,data=uf: every one of its 8 rows is dropped before training" in text
    assert "longer than max_length" in text and "Traceback" not in out.output
    grid.write_text(body.replace("LEN", "4096").replace("PROMPT", "4"))
    out = invoke("validate", grid)
    text = " ".join(out.output.split())
    assert out.exit_code == 2 and "train_ppo" in text and "is dropped before training" in text
    grid.write_text(body.replace("LEN", "4096").replace("PROMPT", "1024"))
    fine = invoke("validate", grid)
    text = " ".join(fine.output.split())
    assert fine.exit_code == 0, fine.output
    assert "8 of 8 pairs fit its length limits" in text and "prompts fit" in text
