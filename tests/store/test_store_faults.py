"""What the store says after things go wrong: a corrupt record, a killed process, a held lock,
a full disk, a rerun after a failure, a write that was killed half way."""

import errno
import fcntl
import json
import os
import stat

import pytest

import ablate.store.store as store_module
from ablate.spec.plan import Step
from ablate.store import RunStore, StepBusy, atomic_write_json
from ablate.store.store import blocked_state


def step(name="s") -> Step:
    return Step.of("eval", name, {"benchmark": "gsm8k", "protocol": "paper", "seed": 0})


def held_lock(folder):
    """Hold ``folder/.lock`` as another process running the step would (flock locks belong to
    an open file, so a second open in this process conflicts like another process)."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / ".lock", "a")
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def test_a_corrupt_done_marker_is_not_a_result_and_names_its_file(tmp_path):
    store = RunStore(tmp_path)
    s = step()
    store.begin(s)
    store.mark_done(s)
    done = store.step_dir(s) / "DONE.json"
    done.write_text('{"step": "abc", "outp')  # cut short by a full disk
    assert not store.is_done(s) and store.done_info(s) is None
    state = store.state(s)
    assert state["state"] == "corrupt" and state["file"] == str(done)
    assert str(done) in state["error"]
    done.write_text("[1, 2]")  # JSON, but not a record
    assert store.state(s)["state"] == "corrupt" and not store.is_done(s)


def test_running_without_a_process_holding_the_lock_is_interrupted(tmp_path):
    store = RunStore(tmp_path)
    s = step()
    store.set_state(s, "running", started=1.0)
    assert store.state(s)["state"] == "interrupted"  # the process was killed (no lock held)
    assert store.state(s)["log"].endswith("log.txt")
    holder = held_lock(store.step_dir(s))
    try:
        assert store.state(s)["state"] == "running"
    finally:
        holder.close()
    # a SLURM job's liveness is squeue's to say, not a lock on this machine
    store.set_state(s, "running", slurm_job_id="12")
    assert store.state(s)["state"] == "running"


def test_reset_refuses_a_step_another_process_runs(tmp_path):
    store = RunStore(tmp_path)
    s = step()
    folder = store.begin(s)
    (folder / "log.txt").write_text("the other run's log\n")
    holder = held_lock(folder)
    try:
        with pytest.raises(StepBusy, match=r"running in another process.*\.lock"):
            store.reset(s)
        assert (folder / "log.txt").read_text() == "the other run's log\n"
    finally:
        holder.close()
    store.reset(s)
    assert not (folder / "log.txt").exists()


def test_a_successful_rerun_forgets_the_old_error(tmp_path):
    store = RunStore(tmp_path)
    s = step()
    store.set_state(s, "failed", error="RuntimeError: boom", log_tail="...", failures=1)
    store.set_state(s, "running")
    store.set_state(s, "done", seconds=1.0)
    record = json.loads((store.step_dir(s) / "state.json").read_text())
    assert "error" not in record and "log_tail" not in record
    assert record["failures"] == 1  # the attempt count stays: SLURM retries read it


def test_files_are_written_with_the_umask_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "result.json", {"value": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "result.json").stat().st_mode) == 0o644


def test_a_finished_step_keeps_no_orphan_temp_files(tmp_path):
    store = RunStore(tmp_path)
    s = step()
    folder = store.begin(s)
    (folder / ".result.json.1234.tmp").write_text("half")  # a writer killed before its rename
    (folder / "checkpoints" / ".step_4.tmp").mkdir(parents=True)
    info = store.mark_done(s)
    assert not (folder / ".result.json.1234.tmp").exists()
    assert not (folder / "checkpoints" / ".step_4.tmp").exists()
    assert not any(".tmp" in name for name in info["outputs"])


def test_the_failed_state_is_recorded_even_on_a_full_disk(tmp_path, monkeypatch):
    from ablate.launch.job import record_end

    store = RunStore(tmp_path)
    s = step()
    store.begin(s)
    store.set_state(s, "running")

    def disk_full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(store_module, "atomic_write_text", disk_full)
    record_end(store, s, "failed", error="OSError: [Errno 28] No space left on device",
               log=str(store.step_dir(s) / "log.txt"))
    state = store.state(s)
    assert state["state"] == "failed" and "No space left" in state["error"]


def test_blocked_names_the_input_with_its_error_and_log(tmp_path):
    from ablate.spec.plan import Cell, Plan

    rm = Step.of("eval", "upstream", {"benchmark": "mmlu", "protocol": "paper", "seed": 0})
    user = Step("user", step().config, {"model": rm.id})
    plan = Plan(grid="g", cells=(Cell("c", {}, None, {}),), steps={rm.id: rm, user.id: user})
    states = {rm.id: {"state": "failed", "error": "TrainingError: no usable pairs",
                      "log": "/store/rm/log.txt"}, user.id: {"state": "pending"}}
    blocked = blocked_state(plan, states, user.id)
    assert blocked == {"state": "blocked", "blocked_by": rm.id, "log": "/store/rm/log.txt",
                       "error": "input failed: upstream: TrainingError: no usable pairs"}
    assert blocked_state(plan, {**states, rm.id: {"state": "running"}}, user.id) is None
