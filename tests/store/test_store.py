"""The store's done-markers, atomic writes and plan round-trip."""

import json
import os

import pytest

from ablate.spec.plan import Cell, Plan, Step
from ablate.store import RunStore, atomic_write_json, atomic_write_text


def step(name="s", **config) -> Step:
    return Step.of("eval", name, {"benchmark": "gsm8k", "protocol": "paper", "seed": 0, **config})


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    atomic_write_json(target, {"value": 1})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_json(target, {"value": 2})
    assert json.loads(target.read_text()) == {"value": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temp file left


def test_done_marker_is_written_last(tmp_path):
    store = RunStore(tmp_path)
    s = step()
    assert store.state(s)["state"] == "pending"
    folder = store.begin(s)
    assert (folder / "spec.json").is_file() and (folder / "env.json").is_file()
    assert not store.is_done(s)
    atomic_write_text(folder / "result.json", '{"value": 3}')
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "big.pt").write_text("x")
    info = store.mark_done(s, started=0.0)
    assert store.is_done(s)
    assert "result.json" in info["outputs"] and info["outputs"]["result.json"]["sha256"]
    assert not any(k.startswith("checkpoints/") for k in info["outputs"])
    assert store.state(s)["state"] == "done"


def test_reset_and_state(tmp_path):
    store = RunStore(tmp_path)
    s = step()
    store.begin(s)
    store.set_state(s, "failed", error="boom")
    assert store.state(s) == {**store.state(s), "state": "failed", "error": "boom"}
    store.mark_done(s)
    store.reset(s, keep_checkpoints=True)
    assert not store.is_done(s) and store.step_dir(s).exists()
    store.reset(s)
    # only the lock stays: a process waiting on it keeps the same file
    assert [p.name for p in store.step_dir(s).iterdir()] == [".lock"]
    assert store.state(s)["state"] == "pending"


def test_env_records_versions(tmp_path):
    folder = RunStore(tmp_path).begin(step())
    env = json.loads((folder / "env.json").read_text())
    assert "packages" in env and "git_sha" in env and "git_dirty" in env


def test_plan_round_trip_and_tamper_check(tmp_path):
    store = RunStore(tmp_path)
    a, b = step("a"), step("b", limit=3)
    plan = Plan(grid="g", cells=(Cell("c", {"seed": 1}, None, {"gsm8k": a.id}),),
                steps={a.id: a, b.id: b})
    store.save_plan(plan)
    loaded = store.load_plan("g")
    assert loaded.to_json() == plan.to_json()
    data = json.loads(store.plan_path("g").read_text())
    data["steps"][a.id]["config"]["limit"] = 99
    store.plan_path("g").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="does not match"):
        store.load_plan("g")
    with pytest.raises(FileNotFoundError, match="known: g"):
        store.load_plan("other")


def test_done_marker_records_the_gpus_a_step_used(tmp_path, monkeypatch):
    import sys
    import types

    store = RunStore(tmp_path)
    step = Step.of("eval", "e", {"benchmark": "mmlu", "protocol": "paper", "seed": 1})
    store.begin(step)
    fake_cuda = types.SimpleNamespace(is_available=lambda: True, device_count=lambda: 4,
                                      get_device_name=lambda i: "Fake H100")
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=fake_cuda))
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    info = store.mark_done(step)
    assert (info["gpus"], info["device"], info["gpu_name"]) == (8, "cuda", "Fake H100")
    monkeypatch.delitem(sys.modules, "torch")
    assert store.mark_done(step)["gpus"] == 0
