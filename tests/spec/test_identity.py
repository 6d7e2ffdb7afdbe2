"""A step's id is its result: the fields that determine it and nothing else."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import yaml
from typer.testing import CliRunner

from ablate.cli import app
from ablate.spec import SpecError, expand, load_grid
from ablate.spec.schema import GridSpec
from ablate.spec.benchmarks import BENCHMARKS, BenchmarkFacts
from ablate.spec.plan import step_id
from ablate.spec.schema import DPOConfig, DataRef, ModelSpec
from ablate.spec.steps import DPOStep, identity

REPO = Path(__file__).resolve().parents[2]
JUDGED = {
    "name": "judged", "models": {"m": {"builtin": "tiny-llama"}},
    "judges": {"gpt4": {"base_url": "https://api.example/v1", "model": "gpt-4-0613",
                        "api_key_env": "JUDGE_KEY"}},
    "axes": {"model": ["m"], "data": ["ultrafeedback-slice"], "algorithm": ["dpo"]},
    "eval": {"benchmarks": ["gsm8k", "toxigen", "xstest", "alpaca_eval_1"], "judge": "gpt4"},
}


def ids(grid: dict | Path) -> dict[str, str]:
    """Step name -> id."""
    if isinstance(grid, dict):
        from ablate.spec.schema import GridSpec
        plan = expand(GridSpec.model_validate(grid))
    else:
        plan = expand(load_grid(grid))
    return {s.name: s.id for s in plan.steps.values()}


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    assert before.keys() == after.keys()
    return {name for name in before if before[name] != after[name]}


def test_execution_settings_leave_every_id_of_a_grid_unchanged(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    grid = yaml.safe_load((REPO / "grids" / "table2.yaml").read_text())
    faster = {**grid, "algorithms": {
        "dpo": {"kind": "dpo", "micro_batch_size": 2, "pad_multiple": 64, "compile_regions": True,
                "attention_kernel": "math", "shared_prompt": False,
                "gradient_checkpointing": True, "save_every_steps": 7, "ref_logps": "online"},
        "ppo": {"kind": "ppo", "micro_batch_size": 1, "save_every_steps": 3}},
        "reward_models": {"same-data-13b": {"data": "cell", "train": {
            "micro_batch_size": 1, "pad_multiple": 8, "gradient_checkpointing": True}}}}
    (tmp_path / "faster.yaml").write_text(yaml.safe_dump(faster))

    def dry_run_ids(path: Path) -> list[str]:
        out = CliRunner().invoke(app, ["grid", str(path), "--dry-run",
                                       "--store", str(tmp_path / "store")])
        assert out.exit_code == 0, out.output
        return sorted(re.findall(r"^│ ([0-9a-f]{12}) ", out.output, re.M))

    shown = dry_run_ids(REPO / "grids" / "table2.yaml")
    assert len(shown) == len(ids(REPO / "grids" / "table2.yaml")) > 100
    assert dry_run_ids(tmp_path / "faster.yaml") == shown
    # a setting that changes the result does change the ids that depend on it
    slower = {**grid, "algorithms": {"dpo": {"kind": "dpo", "beta": 0.2}}}
    (tmp_path / "beta.yaml").write_text(yaml.safe_dump(slower))
    assert dry_run_ids(tmp_path / "beta.yaml") != shown


def test_a_judges_definition_changes_its_evals_ids_and_nothing_else():
    before = ids(JUDGED)
    judged = {n for n in before if n.startswith(("eval xstest", "eval alpaca_eval_1"))}
    assert len(judged) == 4  # two benchmarks, the SFT baseline and the DPO cell
    for field, value in (("model", "gpt-4-turbo"), ("temperature", 0.5)):
        judge = {**JUDGED["judges"]["gpt4"], field: value}
        assert changed(before, ids({**JUDGED, "judges": {"gpt4": judge}})) == judged, field
    # where and how the judge is reached is not what it judges with
    judge = {**JUDGED["judges"]["gpt4"], "base_url": "http://127.0.0.1:8000/v1",
             "api_key_env": "OTHER_KEY", "concurrency": 2, "timeout_s": 9.0}
    assert changed(before, ids({**JUDGED, "judges": {"gpt4": judge}})) == set()
    # a judge for one benchmark only changes that benchmark's evals
    other = {**JUDGED["judges"]["gpt4"], "model": "gpt-4-turbo"}
    per_benchmark = {**JUDGED, "judges": {**JUDGED["judges"], "turbo": other},
                     "eval": {**JUDGED["eval"], "judges": {"alpaca_eval_1": "turbo"}}}
    assert changed(before, ids(per_benchmark)) == {n for n in judged if "alpaca" in n}


def test_a_judges_prompt_is_part_of_its_evals_ids(monkeypatch):
    """The prompt a benchmark gives its judge (its annotator) is written into the judge's
    definition: another prompt is another id; one the benchmark does not implement is refused."""
    before = ids(JUDGED)
    same = {**JUDGED["judges"]["gpt4"], "annotator": BENCHMARKS["xstest"].annotator}
    spelled = {**JUDGED, "judges": {**JUDGED["judges"], "explicit": same},
               "eval": {**JUDGED["eval"], "judges": {"xstest": "explicit"}}}
    assert changed(before, ids(spelled)) == set()
    other = {**JUDGED["judges"]["gpt4"], "annotator": "my-prompt"}
    with pytest.raises(SpecError, match="asks for the prompt 'my-prompt'"):
        ids({**JUDGED, "judges": {"gpt4": other}})
    monkeypatch.setitem(BENCHMARKS, "xstest", dataclasses.replace(BENCHMARKS["xstest"],
                                                                  annotator="another-prompt"))
    assert changed(before, ids(JUDGED)) == {n for n in before if n.startswith("eval xstest")}


def test_paper_judges_by_default_and_string_match_by_name():
    plan = expand(GridSpec.model_validate({**JUDGED, "eval": {
        **JUDGED["eval"], "judge": None, "judges": {"xstest": "string_match"}}}))
    judges = {s.config.benchmark: s.config.judge for s in plan.steps.values()
              if s.kind == "eval"}
    assert judges["alpaca_eval_1"].model == "gpt-4"
    assert judges["alpaca_eval_1"].annotator == "alpaca_eval_gpt4"
    assert judges["xstest"].kind == "string_match" and judges["gsm8k"] is None
    full = expand(GridSpec.model_validate({**JUDGED, "eval": {
        **JUDGED["eval"], "judge": None, "protocol": "full"}}))
    assert all(s.config.judge is None for s in full.steps.values() if s.kind == "eval")
    with pytest.raises(SpecError, match="string_match is XSTest's rule only"):
        expand(GridSpec.model_validate({**JUDGED, "eval": {**JUDGED["eval"],
                                                           "judge": "string_match"}}))


def test_the_toxigen_classifier_changes_the_toxigen_ids_and_nothing_else():
    before = ids(JUDGED)
    other = {**JUDGED, "eval": {**JUDGED["eval"],
                                "toxigen_classifier": {"path": "/models/my-classifier"}}}
    assert changed(before, ids(other)) == {n for n in before if n.startswith("eval toxigen")}


def test_a_benchmark_version_changes_only_that_benchmarks_ids(monkeypatch):
    before = ids(JUDGED)
    monkeypatch.setitem(BENCHMARKS, "gsm8k", BenchmarkFacts("reasoning", "generate",
                                                            paper_version=9))
    assert changed(before, ids(JUDGED)) == {n for n in before if n.startswith("eval gsm8k")}


def test_ppos_rollout_engine_is_part_of_its_id():
    """vLLM and transformers sample from other random streams: not an execution setting."""
    grid = yaml.safe_load((REPO / "grids" / "table2.yaml").read_text())
    before = ids(grid)
    vllm = {**grid, "algorithms": {"ppo": {"kind": "ppo", "rollout_engine": "vllm"}}}
    assert changed(before, ids(vllm)) == {n for n in before if "alg=ppo" in n}


def test_a_new_field_whose_default_keeps_the_old_behaviour_keeps_every_id():
    class GrownDPOConfig(DPOConfig):
        new_knob: float = 0.0  # as a later version might add

    class GrownDPOStep(DPOStep):
        algorithm: GrownDPOConfig

    fields = {"model": ModelSpec(builtin="tiny-llama"), "data": DataRef(name="uf"), "seed": 1}
    old = DPOStep(algorithm=DPOConfig(beta=0.2), **fields)
    grown = GrownDPOStep(algorithm=GrownDPOConfig(beta=0.2), **fields)
    assert step_id("train_dpo", grown, {}) == step_id("train_dpo", old, {})
    turned = GrownDPOStep(algorithm=GrownDPOConfig(beta=0.2, new_knob=0.5), **fields)
    assert step_id("train_dpo", turned, {}) != step_id("train_dpo", old, {})


def test_identity_keeps_a_samplers_kind_and_drops_what_only_says_how_it_runs():
    plan = expand(load_grid(REPO / "grids" / "table5.yaml"))
    for step in plan.steps.values():
        data = identity(step.config)
        sampler = data.get("sampler")
        assert sampler is None or "kind" in sampler  # best_of_n n=16 is not pass_at_k n=16
        text = repr(data)
        for execution in ("micro_batch_size", "pad_multiple", "save_every_steps", "base_url"):
            assert execution not in text


def test_runners_read_typed_configs_not_dicts():
    """No layer below the launcher re-parses a step config or restates its defaults."""
    offenders = []
    for folder in ("train", "evals"):
        for path in sorted((REPO / "ablate" / folder).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r'config\.get\(|config\["', line):
                    offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_a_trainers_version_changes_its_steps_and_what_depends_on_them(monkeypatch):
    import dataclasses

    from ablate.spec.steps import STEP_KINDS

    before = ids(JUDGED)
    bumped = dataclasses.replace(STEP_KINDS["train_dpo"],
                                 version=STEP_KINDS["train_dpo"].version + 1)
    monkeypatch.setitem(STEP_KINDS, "train_dpo", bumped)
    assert changed(before, ids(JUDGED)) == {n for n in before if "alg=dpo" in n}


def test_the_paper_mechanics_bump_changed_every_training_id_and_what_depends_on_it(monkeypatch):
    """Version 2 of DPO, RM and PPO training (the paper's optimiser, schedules, data use and
    PPO mechanics; one seed derivation): no id of a version 1 step, nor of an eval of one, is
    reused; the SFT baselines' evals keep theirs."""
    import dataclasses

    from ablate.spec.steps import STEP_KINDS

    trainers = ("train_dpo", "train_rm", "train_ppo")
    assert all(STEP_KINDS[k].version >= 2 for k in trainers)  # PPO 3: top-k sampling
    grid = REPO / "grids" / "table2.yaml"
    now = ids(grid)
    for kind in trainers:
        monkeypatch.setitem(STEP_KINDS, kind, dataclasses.replace(STEP_KINDS[kind], version=1))
    before = ids(grid)
    trained = {n for n in before if n.startswith(trainers)}
    assert {n.split()[0] for n in trained} == set(trainers)
    baseline = {n for n in before if n.startswith("eval") and "alg=" not in n}
    assert baseline and trained
    assert changed(before, now) == set(before) - baseline
