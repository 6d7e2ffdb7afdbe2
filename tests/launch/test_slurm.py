"""`ablate grid --submit` against a real SLURM scheduler (the local two-node cluster): the grid
runs to the local executor's results, a requeued training resumes from its checkpoint, a failing
evaluation is retried then shown failed, and submitting twice does not duplicate work.

Training is the real DPO recipe on the tiny Llama; evaluations are ``slurm_runners.weights_eval``
(a checksum of the evaluated weights: equal only if the same model was trained), selected in the
jobs through ``ABLATE_RUNNERS``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from ablate.cli import app, plan_of
from ablate.launch.local import run_plan
from ablate.launch.profile import load_profile
from ablate.launch.job import log_tail
from ablate.launch.slurm import (
    LIVE_STATES, TRACKED, cancel_plan, refresh_states, slurm_states, submit_plan,
)
from ablate.spec import load_grid
from ablate.store import RunStore
from ablate.train.checkpoints import latest_checkpoint

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
LOCAL_PROFILE = REPO / "slurm" / "local.yaml"

pytestmark = pytest.mark.slurm

GRID = """\
name: {name}
models:
  tiny: {{builtin: tiny-llama}}
datasets:
  uf: {{name: ultrafeedback-slice, max_rows: {rows}}}
algorithms:
  dpo: {{kind: dpo, lr: 1.0e-4, epochs: 1, batch_size: 2, micro_batch_size: 2, max_length: 128,
        max_prompt_length: 64, save_every_steps: 2}}
axes: {{model: [tiny], data: [uf], algorithm: [dpo]}}
baseline: {baseline}
eval: {{benchmarks: [gsm8k, mmlu], limit: {{gsm8k: 4, mmlu: 4}}}}
"""


def write_grid(folder: Path, name: str, baseline: bool = True, rows: int = 24) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(GRID.format(name=name, baseline=str(baseline).lower(), rows=rows))
    return path


def quiet() -> Console:
    return Console(file=open("/dev/null", "w"))


# When the test first saw each requeued job held (job id -> time).
_held_since: dict[str, float] = {}


def release_requeued(after: float = 10) -> None:
    """SLURM holds a requeued job for ~2 minutes (reason BeginTime) while its nodes clean up the
    last run; start it ``after`` seconds instead: sooner, but not while the last run's processes
    may still be exiting (slow on a loaded machine)."""
    out = subprocess.run(["squeue", "--noheader", "--array", "--format=%i|%r"],
                         capture_output=True, text=True)
    for line in out.stdout.splitlines():
        job_id, _, reason = line.partition("|")
        if reason.strip() != "BeginTime":
            _held_since.pop(job_id, None)
            continue
        if time.time() - _held_since.setdefault(job_id, time.time()) >= after:
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"],
                           capture_output=True)


def recorded_jobs(plan, store) -> list[str]:
    return [j for s in plan.steps.values() if (j := store.state(s).get("slurm_job_id"))]


def wait_settled(plan, store, timeout: float = 900) -> None:
    """Until none of the plan's jobs is listed as live (squeue --states=all also lists jobs that
    ended a moment ago), and no step is waiting for one as ``ablate status`` sees it: the store's
    states corrected by squeue, where a step left "queued" or "retrying" whose job is gone is
    "lost", and one whose job is requeued is "queued" again."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        release_requeued()
        live_jobs = [j for j, seen in slurm_states(recorded_jobs(plan, store)).items()
                     if seen["state"] in LIVE_STATES]
        states = refresh_states(plan, store, {s.id: store.state(s) for s in plan.steps.values()})
        waiting = [sid for sid, state in states.items() if state.get("state") in TRACKED
                   or str(state.get("state")).upper() in LIVE_STATES]
        if not live_jobs and not waiting:
            return
        time.sleep(1)
    raise AssertionError(f"jobs still queued after {timeout} s:\n{diagnosis(plan, store)}")


def diagnosis(plan, store) -> str:
    """What a failed SLURM test needs to be understood afterwards: each step's state as status
    sees it, its log's end, and its job's output and scheduler events."""
    states = refresh_states(plan, store, {s.id: store.state(s) for s in plan.steps.values()})
    conf = Path(os.environ.get("SLURM_CONF", "/nonexistent"))
    controller_log = conf.parent / "log" / "slurmctld.log"
    out = []
    for step in plan.steps.values():
        state = states[step.id]
        shown = {k: v for k, v in state.items() if k != "outputs"}  # the files of a done step
        out.append(f"== {step.name}: {json.dumps(shown, default=str)[:2000]}")
        out.append(log_tail(store.step_dir(step) / "log.txt", 15))
        for key in ("slurm_log", "slurm_err"):
            if state.get(key):
                out.append(f"-- {state[key]}\n{log_tail(Path(state[key]), 15)}")
        job = str(state.get("slurm_job_id") or "").split("_")[0]
        if job and controller_log.is_file():
            events = [line for line in controller_log.read_text(errors="replace").splitlines()
                      if f"JobId={job} " in line or f"JobId={job}_" in line
                      or line.endswith(f"JobId={job}")]
            out.append("-- slurmctld:\n" + "\n".join(events[-30:]))
    return "\n".join(out)


def results(plan, store) -> dict:
    """Eval values by step name, and the training summary's final metrics."""
    out = {}
    for step in plan.steps.values():
        folder = store.step_dir(step)
        if step.kind == "eval":
            out[step.name] = json.loads((folder / "result.json").read_text())["value"]
        else:
            summary = json.loads((folder / "train_summary.json").read_text())
            out[step.name] = {"last": summary["last"], "heldout_after": summary["heldout_after"]}
    return out


def losses(folder: Path) -> list[float]:
    """A training step's loss curve, one value per optimiser step."""
    return [json.loads(line)["loss"] for line in (folder / "metrics.jsonl").read_text().splitlines()
            if line.strip()]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The grid run by the local executor, uninterrupted: what SLURM runs must match it."""
    folder = tmp_path_factory.mktemp("local")
    mp = pytest.MonkeyPatch()
    mp.setenv("ABLATE_RUNNERS", "eval=slurm_runners:weights_eval")
    mp.syspath_prepend(str(HERE))
    try:
        plan = plan_of(load_grid(write_grid(folder, "slurmgrid")))
        store = RunStore(folder / "store")
        assert run_plan(plan, store, console=quiet()).ok
        yield plan, store
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def local_reference(local_run):
    return results(*local_run)


@pytest.mark.slow
def test_grid_through_sbatch_matches_local_and_is_not_duplicated(
        slurm_cluster, job_env, local_reference, tmp_path):
    grid = write_grid(tmp_path, "slurmgrid")
    store_dir = tmp_path / "store"
    cli = CliRunner()
    first = cli.invoke(app, ["grid", str(grid), "--submit", "--cluster", str(LOCAL_PROFILE),
                             "--store", str(store_dir)])
    assert first.exit_code == 0, first.output
    plan, store = plan_of(load_grid(grid)), RunStore(store_dir)
    submitted = recorded_jobs(plan, store)
    assert len(submitted) == 5
    # One training job, then the evaluations of each model as one array: 3 sbatch submissions.
    assert len({j.split("_")[0] for j in submitted}) == 3
    train = next(s for s in plan.steps.values() if s.kind == "train_dpo")
    dependent = [s for s in plan.steps.values() if train.id in s.inputs.values()]
    assert all(store.state(s)["after"] == [store.state(train)["slurm_job_id"]] for s in dependent)

    # Submitting again while the jobs are queued or running submits nothing.
    again = submit_plan(plan, store, load_profile(LOCAL_PROFILE))
    assert not [r for r in again if r["action"] == "submitted"], again
    assert sorted(recorded_jobs(plan, store)) == sorted(submitted)

    wait_settled(plan, store)
    assert all(store.is_done(s) for s in plan.steps.values()), \
        {s.name: store.state(s) for s in plan.steps.values()}
    assert results(plan, store) == local_reference

    # And once everything is done, again nothing.
    done = submit_plan(plan, store, load_profile(LOCAL_PROFILE))
    assert {r["action"] for r in done} == {"done"}
    status = cli.invoke(app, ["status", str(grid), "--store", str(store_dir)])
    assert status.exit_code == 0 and "done" in status.output and "failed" not in status.output


@pytest.mark.slow
def test_requeued_training_resumes_from_its_checkpoint(slurm_cluster, job_env, local_reference,
                                                       tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATE_RUNNERS", "eval=slurm_runners:weights_eval,"
                       "train_dpo=slurm_runners:paced_train_dpo")
    grid = write_grid(tmp_path, "slurmgrid")
    plan, store = plan_of(load_grid(grid)), RunStore(tmp_path / "store")
    submit_plan(plan, store, load_profile(LOCAL_PROFILE))
    train = next(s for s in plan.steps.values() if s.kind == "train_dpo")
    job_id = store.state(train)["slurm_job_id"]
    checkpoints = store.step_dir(train) / "checkpoints"
    deadline = time.time() + 600
    while latest_checkpoint(checkpoints) is None:
        assert time.time() < deadline and not store.is_done(train), "no checkpoint seen"
        time.sleep(0.2)
    # The scheduler takes the node back mid-run, as a preemption does.
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    wait_settled(plan, store)

    assert store.is_done(train), diagnosis(plan, store)
    summary = json.loads((store.step_dir(train) / "train_summary.json").read_text())
    assert summary["resumed_from_step"] >= 2
    log = (store.step_dir(train) / "log.txt").read_text()
    assert log.count(f"start {train.name}") >= 2
    assert results(plan, store) == local_reference


@pytest.mark.slow
def test_failing_evaluation_is_retried_then_failed_while_others_finish(slurm_cluster, job_env,
                                                                        monkeypatch, tmp_path):
    monkeypatch.setenv("ABLATE_TEST_FAIL_BENCHMARK", "mmlu")
    # A quick stand-in for training: this test is about the evaluation's retries.
    monkeypatch.setenv("ABLATE_RUNNERS", "eval=slurm_runners:weights_eval,"
                       "train_dpo=slurm_runners:sleep_train")
    monkeypatch.setenv("ABLATE_TEST_SLEEP", "0")
    grid = write_grid(tmp_path, "failgrid", baseline=False)
    store_dir = tmp_path / "store"
    cli = CliRunner()
    out = cli.invoke(app, ["grid", str(grid), "--submit", "--cluster", str(LOCAL_PROFILE),
                           "--store", str(store_dir)])
    assert out.exit_code == 0, out.output
    plan, store = plan_of(load_grid(grid)), RunStore(store_dir)
    wait_settled(plan, store)

    mmlu = next(s for s in plan.steps.values() if getattr(s.config, "benchmark", None) == "mmlu")
    others = [s for s in plan.steps.values() if s.id != mmlu.id]
    assert all(store.is_done(s) for s in others)
    state = store.state(mmlu)
    assert state["state"] == "failed" and state["failures"] == 2  # local.yaml: max_attempts 2
    assert "exploded" in state["error"] and "exploded" in state["log_tail"]
    assert (store.step_dir(mmlu) / "log.txt").read_text().count(f"start {mmlu.name}") == 2

    status = cli.invoke(app, ["status", str(grid), "--store", str(store_dir)])
    assert "failed" in status.output and "exploded" in status.output, status.output
    logs = cli.invoke(app, ["logs", mmlu.id[:8], "--store", str(store_dir)])
    assert logs.exit_code == 0, logs.output
    assert "exploded" in logs.output and "SLURM job output" in logs.output

    # Fixed, then submitted again: only the failed step runs.
    monkeypatch.delenv("ABLATE_TEST_FAIL_BENCHMARK")
    rows = submit_plan(plan, store, load_profile(LOCAL_PROFILE))
    assert [r["step"] for r in rows if r["action"] == "submitted"] == [mmlu.id]
    wait_settled(plan, store)
    assert store.is_done(mmlu), diagnosis(plan, store)


def test_cancel_stops_queued_and_running_jobs(slurm_cluster, job_env, monkeypatch, tmp_path):
    monkeypatch.setenv("ABLATE_RUNNERS", "train_dpo=slurm_runners:sleep_train")
    monkeypatch.setenv("ABLATE_TEST_SLEEP", "300")
    grid = write_grid(tmp_path, "cancelgrid", baseline=False)
    plan, store = plan_of(load_grid(grid)), RunStore(tmp_path / "store")
    rows = submit_plan(plan, store, load_profile(LOCAL_PROFILE))
    assert {r["action"] for r in rows} == {"submitted"}
    cancelled = cancel_plan(plan, store)
    assert len(cancelled) == 3  # the training job and its two evaluations (array tasks)
    deadline = time.time() + 60
    def live():  # squeue --states=all keeps listing them, as CANCELLED, for a while
        return {j: s for j, s in slurm_states(cancelled).items()
                if s["state"] in LIVE_STATES - {"COMPLETING"}}

    while live() and time.time() < deadline:
        time.sleep(0.5)
    assert not live()
    assert {store.state(s)["state"] for s in plan.steps.values()} == {"cancelled"}


def test_unknown_partition_is_refused_before_anything_is_submitted(slurm_cluster, tmp_path):
    profile = tmp_path / "wrong.yaml"
    profile.write_text("partition: nosuchpartition\n")
    grid = write_grid(tmp_path, "badpart")
    store_dir = tmp_path / "store"
    out = CliRunner().invoke(app, ["grid", str(grid), "--submit", "--cluster", str(profile),
                                   "--store", str(store_dir)])
    assert out.exit_code == 2
    text = " ".join(out.output.split())
    assert "wrong.yaml" in text and "Invalid partition name" in text
    assert not (store_dir / "steps").exists() and not (store_dir / "grids").exists()


@pytest.mark.slow
def test_multi_process_training_runs_torchrun_inside_the_job(slurm_cluster, job_env, tmp_path):
    """train.procs_per_node: 2 -> one submitit task on the node starts torchrun with two workers
    (gloo on CPU); the result matches the single-process run of the local executor."""
    profile = tmp_path / "two-procs.yaml"
    profile.write_text("partition: debug\nnode_gpus: 0\n"
                       "train: {procs_per_node: 2, cpus_per_task: 2, mem_gb: 4, time_min: 30}\n"
                       "eval: {cpus_per_task: 1, mem_gb: 2, time_min: 30}\n")
    # 16 rows: 15 training pairs in steps of 4, so that each of the two ranks has a pair in every
    # step (a rank without one trips ablate.train.loop's stats all-reduce: reported to its owner).
    grid = write_grid(tmp_path, "twoprocs", baseline=False, rows=16)
    # one pair held out (5%), to compare the held-out metrics of the two runs
    grid.write_text(grid.read_text().replace("batch_size: 2,", "batch_size: 4,").replace(
        "max_length: 128,", "max_length: 128, eval_fraction: 0.05,"))
    plan = plan_of(load_grid(grid))
    local = RunStore(tmp_path / "local")
    assert run_plan(plan, local, console=quiet()).ok
    store = RunStore(tmp_path / "store")
    submit_plan(plan, store, load_profile(profile))
    wait_settled(plan, store)
    train = next(s for s in plan.steps.values() if s.kind == "train_dpo")
    assert store.is_done(train), diagnosis(plan, store)
    summary = json.loads((store.step_dir(train) / "train_summary.json").read_text())
    assert summary["world_size"] == 2
    assert "DPO done" in (store.step_dir(train) / "torchrun-node0.log").read_text()
    reference = results(plan, local)[train.name]["heldout_after"]
    # two ranks batch the scoring passes differently, so the float32 sums of per-token log-probs
    # round differently; the reward margin, a difference of two close rewards, carries that
    # rounding in absolute terms (6e-6 seen): the same tolerance as tests/train/test_fsdp.py
    assert summary["heldout_after"] == pytest.approx(reference, rel=1e-4, abs=1e-5)


@pytest.mark.slow
def test_a_time_limit_stops_training_at_a_checkpoint_and_the_job_resumes_from_it(
        slurm_cluster, job_env, tmp_path, monkeypatch):
    """Two nodes, one training process each (torchrun), a 3-minute time limit and SLURM's warning
    signal 90 s before it; the DPO step, held after its first step until that warning comes, is
    asked to stop, saves a checkpoint after its next step (periodic saves are off), and the job
    requeues and resumes from it: the loss curve is the uninterrupted one-process run's."""
    from ablate.launch.job import run_step

    grid = write_grid(tmp_path, "timelimit", baseline=False)
    # steps of 4 pairs (2 a process): 6 of them
    grid.write_text(grid.read_text().replace("save_every_steps: 2", "save_every_steps: 1000")
                    .replace("batch_size: 2,", "batch_size: 4,"))
    plan = plan_of(load_grid(grid))
    train = next(s for s in plan.steps.values() if s.kind == "train_dpo")
    reference = RunStore(tmp_path / "reference")
    assert run_step(reference, plan, train) == "done"

    monkeypatch.setenv("ABLATE_RUNNERS", "eval=slurm_runners:weights_eval,"
                       "train_dpo=slurm_runners:paced_train_dpo")
    # SLURM's warning came between 69 and over 105 s into the 3-minute job here (its timer runs
    # every 30 s or so, later on a loaded machine): the first run waits for it instead of being
    # paced to outlast it. The 70 s and more left after the warning hold the stop (one step),
    # the save and the requeue; the resumed run, 1 s a step, ends before its own warning, or
    # stops and requeues again.
    monkeypatch.setenv("ABLATE_TEST_STEP_PAUSE", "1")
    monkeypatch.setenv("ABLATE_TEST_HOLD_FOR_STOP", "1")
    profile = tmp_path / "short.yaml"
    profile.write_text("partition: debug\nnode_gpus: 0\nsignal_delay_s: 90\nmax_requeues: 10\n"
                       "train: {nodes: 2, procs_per_node: 1, cpus_per_task: 1, mem_gb: 3, "
                       "time_min: 3}\neval: {cpus_per_task: 1, mem_gb: 2, time_min: 30}\n")
    store = RunStore(tmp_path / "store")
    submit_plan(plan, store, load_profile(profile))
    wait_settled(plan, store)

    folder = store.step_dir(train)
    assert store.is_done(train), (diagnosis(plan, store),
                                  log_tail(folder / "torchrun-node0.log", 30))
    summary = json.loads((folder / "train_summary.json").read_text())
    # only the stop could have saved: the resumed run started from a step > 0
    assert 0 < summary["resumed_from_step"] < summary["steps"], diagnosis(plan, store)
    assert summary["world_size"] == 2
    log = (folder / "log.txt").read_text()
    assert "stopped on request after optimiser step" in log
    assert log.count(f"start {train.name}") >= 2
    # two processes sum each step's gradient in another order: float rounding
    assert losses(folder) == pytest.approx(losses(reference.step_dir(train)), rel=1e-4, abs=1e-6)
