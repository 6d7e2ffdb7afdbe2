"""The SLURM launcher without a cluster: profiles, bad input caught before anything is submitted,
the dry run's sbatch scripts, grouping into jobs and arrays, and how squeue's answers read."""

from __future__ import annotations

import dataclasses
import subprocess

import pytest
from typer.testing import CliRunner

import ablate.launch.slurm as slurm
import ablate.launch.slurm_job as slurm_job
from ablate.cli import app, plan_of
from ablate.launch.default_profile import gpus_in_gres
from ablate.launch.profile import load_profile, resource_class
from ablate.launch.slurm import (
    SlurmError, group_steps, preflight, refresh_states, submit_plan,
)
from ablate.spec import SpecError, expand
from ablate.spec.schema import GridSpec
from ablate.spec.steps import STEP_KINDS
from ablate.store import RunStore

from test_slurm import LOCAL_PROFILE, REPO, write_grid


@pytest.fixture
def plan():
    return expand(GridSpec.model_validate({
        "name": "g", "models": {"m": {"builtin": "tiny-llama"}},
        "axes": {"model": ["m"], "data": ["a", "b"], "algorithm": ["dpo"]},
        "judges": {"api": {"base_url": "http://127.0.0.1:9/v1", "model": "judge",
                           "api_key_env": "JUDGE_KEY"}},
        "eval": {"benchmarks": ["gsm8k", "mmlu", "alpaca_eval_2"], "judge": "api"}}))


def test_shipped_profiles_load():
    for path in sorted((REPO / "slurm").glob("*.yaml")):
        profile = load_profile(path)
        assert profile.config.train.time_min > 0, path


def test_missing_and_malformed_profiles(tmp_path):
    with pytest.raises(SpecError, match="no such cluster profile.*local.yaml"):
        load_profile(LOCAL_PROFILE.parent / "nope.yaml")
    with pytest.raises(SpecError, match="--cluster slurm/NAME.yaml"):
        load_profile(None)
    bad = tmp_path / "bad.yaml"
    bad.write_text("partition: debug\ntrain:\n  gpus_per_nod: 2\n")
    with pytest.raises(SpecError, match=r"line 3: unknown key 'train.gpus_per_nod'; did you mean "
                                        r"'gpus_per_node'"):
        load_profile(bad)
    bad.write_text("partition: [debug\n")
    with pytest.raises(SpecError, match="YAML syntax error"):
        load_profile(bad)
    bad.write_text("eval: {nodes: 2}\n")
    with pytest.raises(SpecError, match="evaluation jobs run on one node"):
        load_profile(bad)


def test_no_sbatch_on_path_fails_before_writing(plan, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    store = RunStore(tmp_path / "store")
    with pytest.raises(SlurmError, match="no `sbatch`.*on the PATH"):
        submit_plan(plan, store, load_profile(LOCAL_PROFILE))
    assert not store.root.exists()


def test_more_gpus_per_node_than_the_nodes_have(plan, tmp_path):
    profile = tmp_path / "big.yaml"
    profile.write_text("partition: gpu\nnode_gpus: 4\ntrain: {gpus_per_node: 8}\n")
    with pytest.raises(SlurmError, match=r"big.yaml: the grid's train jobs ask for 8 GPUs per node"
                                         r".*partition gpu has 4"):
        preflight(plan, list(plan.steps.values()), load_profile(profile), dry_run=True)
    # Through the CLI: exit code 2, nothing written.
    grid = write_grid(tmp_path, "gpus")
    out = CliRunner().invoke(app, ["grid", str(grid), "--submit", "--cluster", str(profile),
                                   "--dry-run", "--store", str(tmp_path / "store")])
    assert out.exit_code == 2 and "8 GPUs per node" in " ".join(out.output.split())
    assert not (tmp_path / "store").exists()


def ppo_plan():
    return expand(GridSpec.model_validate({
        "name": "p", "models": {"m": {"builtin": "tiny-llama"}},
        "datasets": {"a": {"name": "a"}},
        "algorithms": {"ppo": {"kind": "ppo"}},
        "reward_models": {"rm": {}},
        "axes": {"model": ["m"], "data": ["a"], "algorithm": ["ppo"], "reward_model": ["rm"]},
        "eval": {"benchmarks": ["gsm8k"]}}))


def test_multi_process_training_only_for_recipes_that_support_it(tmp_path, monkeypatch):
    ppo = ppo_plan()
    profile = tmp_path / "multi.yaml"
    profile.write_text("train: {nodes: 2, gpus_per_node: 8}\nnode_gpus: 8\n")
    # every training recipe runs sharded now (PPO included: tests/train/test_ppo_fsdp.py) ...
    preflight(ppo, list(ppo.steps.values()), load_profile(profile), dry_run=True)
    # ... and a recipe without a multi-process entry point is refused before anything is queued
    monkeypatch.setitem(STEP_KINDS, "train_ppo",
                        dataclasses.replace(STEP_KINDS["train_ppo"], recipe=None))
    with pytest.raises(SlurmError, match="train_ppo steps train in one process"):
        preflight(ppo, list(ppo.steps.values()), load_profile(profile), dry_run=True)


def test_dry_run_prints_scripts_and_table_and_submits_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # a dry run needs no SLURM client
    monkeypatch.setenv("COLUMNS", "200")
    grid = write_grid(tmp_path, "dry")
    out = CliRunner().invoke(app, ["grid", str(grid), "--submit", "--cluster", str(LOCAL_PROFILE),
                                   "--dry-run", "--store", str(tmp_path / "store")])
    assert out.exit_code == 0, out.output
    assert out.output.count("#!/bin/bash") == 3  # one training job, two evaluation arrays
    assert "#SBATCH --array=0-1%2" in out.output
    assert "#SBATCH --dependency=afterok:new0" in out.output
    assert "#SBATCH --partition=debug" in out.output and "#SBATCH --requeue" in out.output
    assert "would submit" in out.output and "dry run: nothing submitted" in out.output
    assert not (tmp_path / "store").exists()


def test_jobs_group_training_alone_and_evaluations_per_model(plan):
    groups = group_steps(plan.order())
    train = [g for g in groups if g.klass == "train"]
    assert len(train) == 2 and all(len(g.steps) == 1 for g in train)
    assert groups[:2] == train  # training is submitted first
    evals = [g for g in groups if g.klass == "eval"]
    # the baseline and two trained models: gsm8k + mmlu of each as one array
    assert len(evals) == 3 and all(len(g.steps) == 2 for g in evals)
    judged = [g for g in groups if g.klass == "judge"]
    assert len(judged) == 3 and all(s.config.benchmark == "alpaca_eval_2"
                                    for g in judged for s in g.steps)
    for group in evals + judged:
        assert len({tuple(sorted(s.inputs.values())) for s in group.steps}) == 1
    assert {resource_class(s) for s in plan.steps.values()} == {"train", "eval", "judge"}


def test_gres_parsing():
    assert gpus_in_gres("gpu:a100:8(S:0-1)") == 8
    assert gpus_in_gres("gpu:4,shard:8") == 4
    assert gpus_in_gres("(null)") == 0


def test_status_reads_squeue_and_the_store(plan, tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    steps = plan.order()
    for n, step in enumerate(steps[:4]):
        store.set_state(step, "submitted", slurm_job_id=str(100 + n), slurm_log=f"/logs/{n}")
    monkeypatch.setattr(slurm.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(slurm, "slurm_states", lambda ids: {
        "100": {"state": "RUNNING", "reason": "None"},
        "101": {"state": "PENDING", "reason": "Dependency"},
        "102": {"state": "PENDING", "reason": "DependencyNeverSatisfied"}})
    states = refresh_states(plan, store, {s.id: store.state(s) for s in steps})
    assert [states[s.id]["state"] for s in steps[:4]] == ["running", "queued", "blocked", "lost"]
    assert "gone from the queue" in states[steps[3].id]["error"]
    assert states[steps[0].id]["log"] == "/logs/0"
    assert states[steps[4].id]["state"] == "pending"
    # the per-step view shows the same corrected states, not the store's "submitted"
    from ablate.cli import step_table

    table = step_table(plan, store, states)
    shown = list(table.columns[4].cells)
    assert shown[:4] == ["running", "queued", "blocked", "lost"]


def test_a_step_whose_requeue_never_ran_is_shown_lost_or_failed_with_why(plan, tmp_path,
                                                                       monkeypatch):
    """A step stopped before its time limit is "queued" in the store until its requeued run
    starts; if SLURM ends the job instead, status says so, not "queued" for ever."""
    store = RunStore(tmp_path)
    train = next(s for s in plan.order() if s.kind == "train_dpo")
    # evaluations of the base model: not blocked by the training's end
    evals = [s for s in plan.order() if s.kind == "eval" and train.id not in s.inputs.values()][:2]
    assert len(evals) == 2
    store.set_state(train, "queued", slurm_job_id="7",
                    reason="requeued before the time limit: stopped on request after optimiser "
                           "step 2; its checkpoint is saved")
    store.set_state(evals[0], "retrying", slurm_job_id="8_0", error="RuntimeError: boom")
    store.set_state(evals[1], "retrying", slurm_job_id="8_1", error="RuntimeError: boom")
    monkeypatch.setattr(slurm.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(slurm, "slurm_states", lambda ids: {
        "7": {"state": "TIMEOUT", "reason": "TimeLimit"},
        "8_1": {"state": "PENDING", "reason": "BeginTime"}})  # 8_0 is gone
    states = refresh_states(plan, store, {s.id: store.state(s) for s in plan.order()})
    assert states[train.id]["state"] == "failed"
    assert states[train.id]["error"] == (
        "SLURM job 7 ended TIMEOUT after the step asked for it to be requeued (requeued before "
        "the time limit: stopped on request after optimiser step 2; its checkpoint is saved); "
        "submit again to run it (a training step resumes from its last checkpoint)")
    assert states[evals[0].id]["state"] == "lost"
    assert states[evals[0].id]["error"].startswith(
        "SLURM job 8_0 is gone from the queue after the step asked for it to be requeued "
        "(RuntimeError: boom)")
    assert states[evals[1].id]["state"] == "retrying"  # its requeued run waits: still true


def test_status_shows_dependents_of_a_failed_step_as_blocked(plan, tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    train = next(s for s in plan.order() if s.kind == "train_dpo")
    users = [s for s in plan.order() if train.id in s.inputs.values()]
    store.set_state(train, "failed", slurm_job_id="7", error="RuntimeError: boom")
    for n, step in enumerate(users):
        store.set_state(step, "submitted", slurm_job_id=f"8_{n}")
    monkeypatch.setattr(slurm.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(slurm, "slurm_states", lambda ids: {})  # SLURM cancelled them
    states = refresh_states(plan, store, {s.id: store.state(s) for s in plan.order()})
    assert states[train.id]["state"] == "failed"
    assert {states[s.id]["state"] for s in users} == {"blocked"}
    assert states[users[0].id]["error"] == f"input failed: {train.name}: RuntimeError: boom"


def test_a_queued_job_runs_the_plan_it_was_submitted_with(plan, tmp_path, monkeypatch):
    """Re-expanding an edited grid replaces the grid's latest plan; a job still waiting in the
    queue must find its step in the snapshot it was submitted with."""
    import ablate.launch.job as job_module
    from ablate.launch.job import StepJob

    store = RunStore(tmp_path / "store")
    first_id = store.save_plan(plan)
    step = next(s for s in plan.steps.values() if s.kind == "train_dpo")
    edited = expand(GridSpec.model_validate({
        "name": "g", "models": {"m": {"builtin": "tiny-llama"}},
        "axes": {"model": ["m"], "data": ["a"], "algorithm": ["dpo"], "seed": [7]},
        "eval": {"benchmarks": ["gsm8k"]}}))
    assert step.id not in edited.steps
    assert store.save_plan(edited) != first_id and step.id not in store.load_plan("g").steps
    assert store.save_plan(plan) == first_id  # the same content is the same snapshot

    ran = []
    def fake_run_step(store, plan, step, **kw):
        ran.append((plan, step))
        return "done"

    monkeypatch.setattr(job_module, "run_step", fake_run_step)
    monkeypatch.setattr(slurm_job, "run_step", fake_run_step)
    assert StepJob(str(store.root), first_id, step.id)() == "done"
    assert ran[0][1] == step and set(ran[0][0].steps) == set(plan.steps)
    assert slurm.SlurmStepJob(str(store.root), first_id, step.id)() == "done"
    assert ran[1][1] == step
    with pytest.raises(FileNotFoundError, match="no saved plan 'nope'"):
        StepJob(str(store.root), "nope", step.id)()


PPO_GRID = """\
name: ppo
models: {tiny: {builtin: tiny-llama}}
datasets: {uf: {name: ultrafeedback-slice, max_rows: 8}}
algorithms: {ppo: {kind: ppo}}
reward_models: {rm: {}}
axes: {model: [tiny], data: [uf], algorithm: [ppo], reward_model: [rm]}
baseline: false
eval: {benchmarks: [gsm8k]}
"""


def test_status_shows_ppo_blocked_by_its_failed_reward_model(tmp_path, monkeypatch):
    """The reward model's job failed for good; SLURM cancelled the PPO job that depended on it
    (--kill-on-invalid-dep), so squeue lists it CANCELLED for a while, then not at all."""
    from ablate.spec import load_grid

    grid = tmp_path / "ppo.yaml"
    grid.write_text(PPO_GRID)
    plan = plan_of(load_grid(grid))
    store = RunStore(tmp_path / "store")
    rm = next(s for s in plan.order() if s.kind == "train_rm")
    ppo = next(s for s in plan.order() if s.kind == "train_ppo")
    rm_log = str(store.step_dir(rm) / "log.txt")
    store.set_state(rm, "failed", slurm_job_id="7", failures=1, log=rm_log,
                    error="NoTrainingData: no usable preference pairs (8 rows)")
    store.set_state(ppo, "submitted", slurm_job_id="8", slurm_log="/logs/8_0_log.out")
    monkeypatch.setattr(slurm.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    for squeue_says in ({"8": {"state": "CANCELLED", "reason": "DependencyNeverSatisfied"}}, {}):
        monkeypatch.setattr(slurm, "slurm_states", lambda ids: squeue_says)
        result = CliRunner().invoke(app, ["status", str(grid), "--store", str(store.root)],
                                    env={"COLUMNS": "300"})
        assert result.exit_code == 0, result.output
        assert (f"blocked {ppo.name}: input failed: {rm.name}: NoTrainingData: no usable "
                "preference pairs") in result.output
        assert f"log: {rm_log}" in result.output


def test_squeue_is_asked_for_finished_jobs_too(monkeypatch):
    """Without sacct (the local cluster has none), a job that failed or was cancelled is still
    in squeue --states=all for a while: it must read as failed, not lost."""
    asked = []

    def fake_run(cmd, timeout=60):
        asked.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "5|FAILED|NonZeroExitCode\n6_1|CANCELLED|None\n",
                                           "")

    monkeypatch.setattr(slurm, "_run", fake_run)
    monkeypatch.setattr(slurm.shutil, "which", lambda tool: None)  # no sacct
    found = slurm.slurm_states(["5", "6_1"])
    assert "--states=all" in asked[0]
    assert found["5"]["state"] == "FAILED" and found["6_1"]["state"] == "CANCELLED"


def test_status_shows_a_failed_job_failed_and_a_retrying_one_retrying(plan, tmp_path,
                                                                      monkeypatch):
    store = RunStore(tmp_path)
    first, second, third = [s for s in plan.order() if s.kind == "eval"][:3]
    store.set_state(first, "submitted", slurm_job_id="10", slurm_log="/logs/10")
    store.set_state(second, "retrying", slurm_job_id="11", failures=1, retry="attempt 2 of 3",
                    error="RuntimeError: CUDA error: unspecified launch failure")
    store.set_state(third, "submitted", slurm_job_id="12")
    monkeypatch.setattr(slurm.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(slurm, "slurm_states", lambda ids: {
        "10": {"state": "FAILED", "reason": "NonZeroExitCode"},
        "11": {"state": "PENDING", "reason": "BeginTime"},
        "12": {"state": "COMPLETED", "reason": "None"}})
    states = refresh_states(plan, store, {s.id: store.state(s) for s in plan.order()})
    assert states[first.id]["state"] == "failed" and states[first.id]["log"] == "/logs/10"
    assert "FAILED (NonZeroExitCode)" in states[first.id]["error"]
    assert states[second.id]["state"] == "retrying"
    assert states[second.id]["error"] == ("attempt 2 of 3 queued after: RuntimeError: CUDA "
                                          "error: unspecified launch failure")
    assert states[third.id]["state"] == "lost"  # finished, yet no result


@pytest.mark.parametrize("error, retried", [
    (RuntimeError("CUDA error: an illegal memory access"), True),
    (type("NoTrainingData", (RuntimeError,), {"will_fail_again": True})("no usable pairs"), False),
    (ValueError("bad row"), False),
])
def test_an_error_that_will_fail_again_is_not_retried(plan, tmp_path, monkeypatch, error,
                                                      retried):
    import ablate.launch.job as job_module

    store = RunStore(tmp_path / "store")
    plan_id = store.save_plan(plan)
    step = next(s for s in plan.order() if s.kind == "train_dpo")

    def failing(ctx):
        raise error

    requeued = []
    monkeypatch.setattr(job_module, "runner_for", lambda kind: failing)
    monkeypatch.setattr(slurm_job, "_requeue", lambda job_id: requeued.append(job_id) or True)
    monkeypatch.setenv("SLURM_JOB_ID", "31")
    with pytest.raises(type(error)):
        slurm.SlurmStepJob(str(store.root), plan_id, step.id, max_attempts=3)()
    assert bool(requeued) == retried
    assert store.state(step)["state"] == ("retrying" if retried else "failed")


def test_each_eval_array_of_a_grid_has_its_own_job_name(plan, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    rows = submit_plan(plan, RunStore(tmp_path / "store"), load_profile(LOCAL_PROFILE),
                       dry_run=True)
    names = {}
    for row in rows:
        job = row["job_id"].split("_")[0]
        names[job] = next(line for line in row["sbatch"].splitlines()
                          if line.startswith("#SBATCH --job-name="))
    assert len(set(names.values())) == len(names) > 2, names
