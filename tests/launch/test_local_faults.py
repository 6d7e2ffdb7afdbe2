"""Local runs when things go wrong: two runs at once, --force beside a running step, a full disk,
SIGTERM, a corrupt or read-only store; what `grid` and `status` then say."""

import errno
import fcntl
import signal
from pathlib import Path

import pytest
from typer.testing import CliRunner

import ablate.launch.job as job
import ablate.store.store as store_module
from ablate.cli import app, plan_of
from ablate.launch.local import run_plan
from ablate.spec import load_grid
from ablate.store import RunStore, StepBusy, atomic_write_json

from test_local import quiet

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def grid_file(tmp_path):
    """The smoke grid (3 cells: the baseline and DPO on two slices), under a store in tmp."""
    path = tmp_path / "smoke.yaml"
    path.write_text((REPO / "grids" / "smoke.yaml").read_text())
    return path


@pytest.fixture
def plan(grid_file):
    return plan_of(load_grid(grid_file))


def writes_result(ctx):
    atomic_write_json(ctx.out_dir / "result.json", {"value": 1.0})


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})
    assert "Traceback" not in result.output, result.output
    return result


def test_force_refuses_a_step_another_process_is_running(tmp_path, plan, monkeypatch):
    monkeypatch.setattr(job, "runner_for", lambda kind: writes_result)
    store = RunStore(tmp_path / "store")
    run_plan(plan, store, console=quiet())
    train = next(s for s in plan.order() if s.kind == "train_dpo")
    folder = store.step_dir(train)
    (folder / "log.txt").write_text("the other run's log\n")
    with open(folder / ".lock", "a") as other_run:
        fcntl.flock(other_run, fcntl.LOCK_EX)
        with pytest.raises(StepBusy, match=f"{train.name}.*running in another process"):
            run_plan(plan, store, force=["train_dpo"], console=quiet())
        assert (folder / "log.txt").read_text() == "the other run's log\n"
        assert store.is_done(train)


def test_a_step_done_by_a_concurrent_run_is_not_claimed(tmp_path, plan, monkeypatch):
    store = RunStore(tmp_path / "store")
    order = plan.order()

    def runner(ctx):  # while the first step runs, another run finishes the second
        if ctx.step.id == order[0].id:
            store.begin(order[1])
            store.mark_done(order[1])
        writes_result(ctx)

    monkeypatch.setattr(job, "runner_for", lambda kind: runner)
    summary = run_plan(plan, store, console=quiet())
    by_step = {o.step.id: o for o in summary.outcomes}
    assert by_step[order[0].id].status == "done"
    assert by_step[order[1].id].shown == "skipped (done by another run)"
    assert summary.ok


def test_a_full_disk_records_the_failure_and_reports_its_cause(tmp_path, plan, monkeypatch):
    store = RunStore(tmp_path / "store")
    first = plan.order()[0]
    real_write = store_module.atomic_write_text
    disk_full = [False]

    def write(path, text):
        if disk_full[0]:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, text)

    def runner(ctx):
        disk_full[0] = True
        raise RuntimeError("checkpoint save failed: the cause")

    monkeypatch.setattr(store_module, "atomic_write_text", write)
    monkeypatch.setattr(job, "runner_for", lambda kind: runner)
    summary = run_plan(plan, store, console=quiet())
    failed = next(o for o in summary.outcomes if o.step.id == first.id)
    assert failed.status == "failed" and "the cause" in failed.error
    disk_full[0] = False
    state = store.state(first)
    assert state["state"] == "failed" and "the cause" in state["error"]


def test_sigterm_exits_143_and_the_step_is_interrupted(tmp_path, grid_file, plan, monkeypatch):
    import os

    def terminated(ctx):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the signal's exception arrives first")

    monkeypatch.setattr(job, "runner_for", lambda kind: terminated)
    result = invoke("grid", grid_file, "--store", tmp_path / "store")
    assert result.exit_code == 143, result.output
    states = {s.id: RunStore(tmp_path / "store").state(s)["state"] for s in plan.order()}
    assert "interrupted" in states.values() and "failed" not in states.values()


def test_status_shows_a_killed_step_interrupted_and_its_users_blocked(tmp_path, grid_file, plan):
    store = RunStore(tmp_path / "store")
    train = next(s for s in plan.order() if s.kind == "train_dpo")
    store.set_state(train, "running", started=1.0)  # its process was killed: no lock held
    result = invoke("status", grid_file, "--store", store.root)
    assert result.exit_code == 0
    assert "interrupted" in result.output and "killed?" in result.output
    assert f"log: {store.step_dir(train) / 'log.txt'}" in result.output
    assert f"blocked eval gsm8k of {train.name.removeprefix('train_dpo ')}" in result.output
    assert f"input interrupted: {train.name}" in result.output


def test_a_corrupt_done_marker_is_reported_and_rerun(tmp_path, grid_file, plan, monkeypatch):
    monkeypatch.setattr(job, "runner_for", lambda kind: writes_result)
    store_dir = tmp_path / "store"
    assert invoke("grid", grid_file, "--store", store_dir).exit_code == 0
    store = RunStore(store_dir)
    broken = plan.order()[-1]
    done = store.step_dir(broken) / "DONE.json"
    done.write_text("{not json")
    status = invoke("status", grid_file, "--store", store_dir)
    assert status.exit_code == 0 and "corrupt" in status.output
    assert f"file: {done}" in status.output
    again = invoke("grid", grid_file, "--store", store_dir)
    assert again.exit_code == 0 and "Nothing to do" not in again.output
    assert store.is_done(broken)


def test_a_read_only_store_with_nothing_to_do_is_fine(tmp_path, grid_file, monkeypatch):
    monkeypatch.setattr(job, "runner_for", lambda kind: writes_result)
    store_dir = tmp_path / "store"
    assert invoke("grid", grid_file, "--store", store_dir).exit_code == 0

    def read_only(path, text):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(store_module, "atomic_write_text", read_only)
    result = invoke("grid", grid_file, "--store", store_dir)
    assert result.exit_code == 0 and "Nothing to do" in result.output
    # a grid the store has not seen needs its plan written: one message naming the file
    other = tmp_path / "other.yaml"
    other.write_text(grid_file.read_text().replace("name: smoke", "name: other"))
    result = invoke("grid", other, "--store", store_dir)
    assert result.exit_code == 2
    assert "cannot write the run store" in result.output and "Permission denied" in result.output
