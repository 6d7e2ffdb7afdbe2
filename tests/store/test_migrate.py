"""``ablate store migrate``: a store written before typed step ids is re-keyed, nothing recomputed.

``legacy/store_v0`` was written by the code before this schema (see legacy/README.md)."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ablate.cli import app
from ablate.spec.plan import StoreFormatError
from ablate.store import RunStore
from ablate.store.migrate import legacy_step, migrate_store

LEGACY = Path(__file__).resolve().parent / "legacy"
# Runners that fail: after the migration nothing may run.
FAILING = ",".join(f"{kind}=ablate_missing_module:run" for kind in
                   ("train_dpo", "train_rm", "train_ppo", "eval"))
# The numbers of a table that come from the stored results: a migration must not change one of
# them. (CIs and paired tests also depend on the report's bootstrap streams, which derive their
# seeds as every stream does since the store was written: they are checked to hold the value.)
NUMBERS = ("row", "key", "value", "shown", "sd", "n_seeds", "delta_vs_baseline", "missing")


@pytest.fixture
def same_trainers(monkeypatch, legacy):
    """The trainers as the legacy store's (mechanics version 1, and its grid spelling out what
    they did in the fields added since, ``LEGACY_MECHANICS``). The identity change alone leaves
    every result reusable; a later versioned change of a trainer's mechanics does not
    (test_results_of_trainers_whose_mechanics_changed_since_are_not_reused)."""
    import dataclasses

    import yaml

    from ablate.spec.steps import STEP_KINDS
    from ablate.store.migrate import LEGACY_MECHANICS

    for kind in ("train_dpo", "train_rm", "train_ppo"):
        monkeypatch.setitem(STEP_KINDS, kind, dataclasses.replace(STEP_KINDS[kind], version=1))
    grid = yaml.safe_load((legacy / "grid.yaml").read_text())
    for name in ("dpo", "ppo"):
        grid["algorithms"][name].update(LEGACY_MECHANICS[f"train_{name}"][1])
    grid["reward_models"]["rm"]["train"].update(LEGACY_MECHANICS["train_rm"][1])
    # a default that changed since (the paper trained on every pair): the old one, spelled out
    grid["algorithms"]["dpo"]["eval_fraction"] = 0.05
    grid["reward_models"]["rm"]["train"]["eval_fraction"] = 0.05
    (legacy / "grid.yaml").write_text(yaml.safe_dump(grid))


@pytest.fixture
def legacy(tmp_path, monkeypatch) -> Path:
    shutil.copytree(LEGACY, tmp_path / "legacy")
    monkeypatch.chdir(tmp_path / "legacy")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("ABLATE_RUNNERS", FAILING)
    return tmp_path / "legacy"


def ablate(*args: str):
    return CliRunner().invoke(app, list(args))


def table_numbers(path: Path) -> list[tuple]:
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        if row["ci_low"] and row["value"]:
            assert float(row["ci_low"]) <= float(row["value"]) <= float(row["ci_high"]), row
    return [tuple(row[k] for k in NUMBERS) for row in rows]


def test_a_legacy_store_is_refused_then_migrated_and_nothing_runs_again(legacy, same_trainers):
    refused = ablate("grid", "grid.yaml", "--store", "store_v0")
    assert refused.exit_code == 2 and "ablate store migrate" in refused.output
    assert "Traceback" not in refused.output
    out = ablate("store", "migrate", "--store", "store_v0")
    assert out.exit_code == 0, out.output
    assert "33 steps re-keyed" in out.output and "2 duplicate steps merged" in out.output
    again = ablate("grid", "grid.yaml", "--store", "store_v0")
    assert again.exit_code == 0 and "Nothing to do: all 33 steps" in again.output, again.output
    report = ablate("report", "--all", "--grid", "legacy", "--store", "store_v0",
                    "--format", "csv", "--out", "migrated")
    assert report.exit_code == 0, report.output
    # every number of the tables is what the old code reported
    assert table_numbers(legacy / "migrated" / "tablesmoke.csv") == \
        table_numbers(LEGACY / "expected_report" / "tablesmoke.csv")
    assert ablate("store", "migrate", "--store", "store_v0").output.startswith(
        f"{RunStore('store_v0').root}: nothing to migrate")


def test_migrated_folders_say_what_they_hold(legacy):
    store = RunStore(legacy / "store_v0")
    report = migrate_store(store)
    assert report.steps == 33 and not report.stale
    plan = store.load_plan("legacy")
    rm = next(s for s in plan.steps.values() if s.kind == "train_rm")
    spec = json.loads((store.step_dir(rm) / "spec.json").read_text())
    assert spec["id"] == rm.id and spec["migrated_from"] != rm.id
    assert spec["execution"]["train"]["micro_batch_size"] == 4  # how it ran, apart
    result = json.loads((store.step_dir(rm) / "result.json").read_text())
    assert (result["kind"], result["unit"]) == ("reward_model", "fraction")
    done = json.loads((store.step_dir(rm) / "DONE.json").read_text())
    assert done["step"] == rm.id
    assert done["outputs"]["result.json"]["bytes"] == (store.step_dir(rm) / "result.json").stat().st_size
    # the best-of-N cell's MMLU was the base model's own: one step now, the spare kept aside
    assert len(list((store.root / "migrated-duplicates" / "eval").iterdir())) == 2


def test_an_interrupted_migration_is_refused_until_rerun_and_then_finishes(legacy, monkeypatch,
                                                                          same_trainers):
    store = RunStore(legacy / "store_v0")
    moves, real = [], os.replace

    def crash_after_five(src, dst):
        if Path(src).parent.parent.name == "steps":  # a step folder moving to its new id
            if len(moves) == 5:
                raise OSError("killed")
            moves.append(src)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", crash_after_five)
    with pytest.raises(OSError, match="killed"):
        migrate_store(store)
    monkeypatch.setattr(os, "replace", real)
    for args in (("grid", "grid.yaml", "--store", "store_v0"),
                 ("report", "--table", "smoke", "--grid", "legacy", "--store", "store_v0")):
        out = ablate(*args)
        assert out.exit_code != 0 and "migration was interrupted" in out.output, out.output
        assert "run `ablate store migrate` again" in " ".join(out.output.split())
    out = ablate("store", "migrate", "--store", "store_v0")
    assert out.exit_code == 0 and "finishing the interrupted migration" in out.output
    assert ablate("grid", "grid.yaml", "--store", "store_v0").exit_code == 0
    steps = [p for p in (store.root / "steps").glob("*/*") if p.is_dir()]
    assert len(steps) == 33 and all((p / "DONE.json").is_file() for p in steps)


def test_a_step_judged_by_an_unrecorded_judge_is_stale_never_reused(legacy):
    path = legacy / "store_v0" / "grids" / "legacy.json"
    plan = json.loads(path.read_text())
    old_id, old = next((sid, s) for sid, s in plan["steps"].items()
                       if s["config"].get("benchmark") == "gsm8k" and not s["inputs"])
    old["config"]["judge"] = "gpt4-of-2024"
    path.write_text(json.dumps(plan))
    out = ablate("store", "migrate", "--store", "store_v0")
    assert out.exit_code == 0 and "stale" in out.output and "gpt4-of-2024" in out.output
    store = RunStore(legacy / "store_v0")
    stale = next(s for s in store.load_plan("legacy").steps.values()
                 if getattr(s.config, "judge", None) is not None)
    state = store.state(stale)
    assert state["state"] == "stale" and "did not record" in state["stale"]
    assert not store.is_done(stale)
    # the grid's own GSM8k baseline (no judge) is a different step: it runs, the stale one not
    ran = ablate("grid", "grid.yaml", "--store", "store_v0")
    assert "eval gsm8k of smollm2 (SFT baseline)" in ran.output and ran.exit_code == 1


def test_bad_stored_configs_name_their_step_folder(legacy):
    path = legacy / "store_v0" / "grids" / "legacy.json"
    plan = json.loads(path.read_text())
    sid, step = next((k, s) for k, s in plan["steps"].items() if s["kind"] == "train_dpo")
    step["config"]["algorithm"]["bogus_knob"] = 1
    path.write_text(json.dumps(plan))
    out = ablate("store", "migrate", "--store", "store_v0")
    assert out.exit_code == 2 and f"steps/train_dpo/{sid}" in out.output
    assert "bogus_knob" in out.output and "Traceback" not in out.output
    assert not (legacy / "store_v0" / "migration.json").exists()  # refused before any move


def test_a_current_plan_with_an_unknown_field_or_a_newer_schema_is_refused(tmp_path):
    store = RunStore(tmp_path)
    (tmp_path / "grids").mkdir()
    path = tmp_path / "grids" / "g.json"
    path.write_text(json.dumps({"schema": 1, "grid": "g", "cells": [], "steps": {"x": {
        "kind": "eval", "name": "eval gsm8k of m", "inputs": {},
        "config": {"benchmark": "gsm8k", "protocol": "paper", "seed": 1, "bogus": 2}}}}))
    with pytest.raises(StoreFormatError, match=r"g\.json: step 'eval gsm8k of m'.*bogus"):
        store.load_plan("g")
    path.write_text(json.dumps({"schema": 7, "grid": "g", "cells": [], "steps": {}}))
    with pytest.raises(StoreFormatError, match="newer ablate"):
        store.check_current()
    with pytest.raises(StoreFormatError, match="newer ablate"):
        migrate_store(store)


def test_legacy_eval_configs_become_the_steps_expansion_builds():
    """Each rule of the conversion, by hand: code benchmarks sampled 20 at T=0.8, best-of-N never
    applied to MMLU, ToxiGen was scored by the paper's classifier."""
    base = {"protocol": "paper", "seed": 42, "limit": None, "max_new_tokens": None,
            "judge": None, "model": {"builtin": "m"}}
    bon = {"kind": "best_of_n", "n": 4, "temperature": 0.7, "seed": 1}
    step, stale = legacy_step({"kind": "eval", "name": "e", "inputs": {"reward_model": "r"},
                               "config": {**base, "benchmark": "mmlu", "sampler": bon}},
                              {"r": "R"})
    assert step.config.sampler.kind == "greedy" and step.inputs == {} and stale is None
    step, _ = legacy_step({"kind": "eval", "name": "e", "inputs": {"reward_model": "r"},
                           "config": {**base, "benchmark": "gsm8k", "sampler": bon}}, {"r": "R"})
    assert step.config.sampler.n == 4 and step.inputs == {"reward_model": "R"}
    step, _ = legacy_step({"kind": "eval", "name": "e", "config": {
        **base, "benchmark": "humaneval_plus", "sampler": {"kind": "greedy"}}}, {})
    assert (step.config.sampler.kind, step.config.sampler.n, step.config.sampler.temperature) \
        == ("pass_at_k", 20, 0.8)
    step, _ = legacy_step({"kind": "eval", "name": "e", "config": {
        **base, "benchmark": "toxigen", "sampler": {"kind": "greedy"}}}, {})
    assert step.config.classifier.hub == "tomh/toxigen_roberta"


def test_a_result_of_a_protocol_that_changed_since_is_not_reused(legacy, monkeypatch,
                                                                 same_trainers):
    """The store's GSM8k ran under version 1 of its protocol; were it version 2 now, a migrated
    GSM8k result must not stand in for the new protocol's."""
    from ablate.spec import expand, load_grid
    from ablate.spec.benchmarks import BENCHMARKS, BenchmarkFacts

    monkeypatch.setitem(BENCHMARKS, "gsm8k", BenchmarkFacts("reasoning", "generate",
                                                            full_version=2))
    from ablate.data.own import resolve_source

    store = RunStore(legacy / "store_v0")
    migrate_store(store)
    plan = expand(load_grid(legacy / "grid.yaml"), resolve=resolve_source)
    evals = [s for s in plan.steps.values() if s.kind == "eval"]
    assert {s.config.benchmark for s in evals if not store.is_done(s)} == {"gsm8k"}


def test_results_of_trainers_whose_mechanics_changed_since_are_not_reused(legacy):
    """The legacy store's models were trained by version 1 of the trainers; today's are version
    2 (the paper's optimiser and schedules): a grid retrains them and re-evaluates what they
    made, while the base model's evaluations and every stored result stay as they were."""
    from ablate.spec import expand, load_grid

    from ablate.data.own import resolve_source

    store = RunStore(legacy / "store_v0")
    migrate_store(store)
    plan = expand(load_grid(legacy / "grid.yaml"), resolve=resolve_source)
    rerun = {s.id for s in plan.steps.values() if not store.is_done(s)}
    trained = {s.id for s in plan.steps.values() if s.kind.startswith("train")}
    downstream = {s.id for s in plan.steps.values()
                  if any(sid in trained or sid in rerun for sid in s.inputs.values())}
    assert trained and rerun == trained | downstream
    assert all(s.kind == "eval" and not s.inputs for s in plan.steps.values()
               if s.id not in rerun)
    report = ablate("report", "--table", "smoke", "--grid", "legacy", "--store", "store_v0",
                    "--format", "csv", "--out", "migrated")
    assert report.exit_code == 0, report.output
    assert table_numbers(legacy / "migrated" / "tablesmoke.csv") == \
        table_numbers(LEGACY / "expected_report" / "tablesmoke.csv")


def test_an_old_ppo_steps_rollout_engine_comes_from_its_recorded_environment():
    """The old trainer picked vLLM itself on a CUDA machine that had it installed."""
    from ablate.store.migrate import _legacy_rollout_engine

    assert _legacy_rollout_engine({"device": "cpu", "packages": {"vllm": "0.9"}}) == \
        ("transformers", None)
    assert _legacy_rollout_engine({"device": "cuda", "packages": {"vllm": "0.9"}}) == \
        ("vllm", None)
    assert _legacy_rollout_engine({"device": "cuda", "packages": {}})[0] == "transformers"
    engine, stale = _legacy_rollout_engine(None)
    assert stale and "env.json" in stale
