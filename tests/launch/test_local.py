"""The local executor: dependency order, skip what is done, resume after an interruption,
--force redoes a step and what depends on it, one failure does not stop unrelated steps."""


import os

import pytest
from rich.console import Console

import ablate.launch.job as job
from ablate.launch.local import run_plan, select_steps
from ablate.spec.schema import GridSpec
from ablate.spec import expand
from ablate.store import RunStore, atomic_write_json

CALLS: list[str] = []


def fake_runner(ctx):
    CALLS.append(ctx.step.name)
    for role, folder in ctx.inputs.items():
        assert (folder / "DONE.json").is_file(), f"{role} input not done"
    if ctx.step.kind.startswith("train"):
        (ctx.out_dir / "model").mkdir(exist_ok=True)
    if getattr(ctx.step.config, "benchmark", None) == "ifeval":  # the one that fails
        raise RuntimeError("benchmark exploded")
    if ctx.step.name == INTERRUPT_AT[0]:
        raise KeyboardInterrupt
    atomic_write_json(ctx.out_dir / "result.json", {"value": 1.0})


INTERRUPT_AT = [""]


@pytest.fixture
def plan():
    grid = GridSpec.model_validate({
        "name": "t", "models": {"m": {"builtin": "tiny-llama"}},
        "axes": {"model": ["m"], "data": ["a", "b"], "algorithm": ["dpo"]},
        "eval": {"benchmarks": ["gsm8k", "mmlu"]}})
    return expand(grid)


@pytest.fixture(autouse=True)
def fake_runners(monkeypatch):
    CALLS.clear()
    INTERRUPT_AT[0] = ""
    monkeypatch.setattr(job, "runner_for", lambda kind: fake_runner)


def quiet():
    return Console(file=open("/dev/null", "w"))


def test_runs_in_order_then_skips_everything(tmp_path, plan):
    store = RunStore(tmp_path)
    summary = run_plan(plan, store, console=quiet())
    assert summary.ok and summary.count("done") == len(plan.steps) == 8
    assert CALLS.index("train_dpo data=a,alg=dpo,rm=none,prompts=none,seed=1") < \
        CALLS.index("eval gsm8k of data=a,alg=dpo,rm=none,prompts=none,seed=1")
    CALLS.clear()
    again = run_plan(plan, store, console=quiet())
    assert CALLS == [] and again.count("skipped") == 8


def test_interrupted_run_resumes_without_redoing(tmp_path, plan):
    store = RunStore(tmp_path)
    INTERRUPT_AT[0] = "eval mmlu of data=a,alg=dpo,rm=none,prompts=none,seed=1"
    with pytest.raises(KeyboardInterrupt):
        run_plan(plan, store, console=quiet())
    finished = list(CALLS[:-1])
    assert finished
    CALLS.clear()
    INTERRUPT_AT[0] = ""
    summary = run_plan(plan, store, console=quiet())
    assert summary.ok
    assert not set(finished) & set(CALLS)
    assert len(finished) + len(CALLS) == 8


def test_force_redoes_step_and_its_dependents(tmp_path, plan):
    store = RunStore(tmp_path)
    run_plan(plan, store, console=quiet())
    CALLS.clear()
    run_plan(plan, store, force=["mmlu"], console=quiet())
    assert sorted(CALLS) == sorted(s.name for s in plan.steps.values()
                                   if getattr(s.config, "benchmark", None) == "mmlu")
    train_a = next(s for s in plan.steps.values() if s.name.startswith("train_dpo data=a"))
    chosen = select_steps(plan, [train_a.id[:6]])
    assert len(chosen) == 3  # the training step and its two evals
    with pytest.raises(ValueError, match="matches no step"):
        select_steps(plan, ["nonsense"])


def test_failure_blocks_dependents_only(tmp_path):
    grid = GridSpec.model_validate({
        "name": "t", "models": {"m": {"builtin": "tiny-llama"}},
        "axes": {"model": ["m"], "data": ["a"], "algorithm": ["dpo"]},
        "eval": {"benchmarks": ["gsm8k", "ifeval"]}})
    plan = expand(grid)
    store = RunStore(tmp_path)
    summary = run_plan(plan, store, console=quiet())
    assert not summary.ok
    assert summary.count("failed") == 2 and summary.count("done") == 3
    failed = next(o.step for o in summary.outcomes if o.status == "failed")
    state = store.state(failed)
    assert state["state"] == "failed" and "benchmark exploded" in state["error"]
    assert "benchmark exploded" in state["log_tail"]


def test_slurm_jobs_use_the_cpus_they_were_given(monkeypatch):
    import torch

    from ablate.launch.job import match_threads_to_allocation

    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert match_threads_to_allocation() is None  # not in a SLURM job: nothing changes
    before = torch.get_num_threads()
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, "0")  # so that the end of the test restores the real value
        monkeypatch.delenv(name)
    try:
        assert match_threads_to_allocation() == 1
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", "2")
        assert match_threads_to_allocation() is None  # an explicit OMP_NUM_THREADS wins
    finally:
        torch.set_num_threads(before)


def test_a_step_running_elsewhere_is_waited_for_not_run_twice(tmp_path, plan):
    """Two ablate processes on one store: the second waits on the step's lock, then finds it
    done. (flock locks belong to each open file, so two threads stand in for two processes.)"""
    import threading
    import time

    store = RunStore(tmp_path / "store")
    step = next(s for s in plan.steps.values() if s.kind == "train_dpo")
    entered, runs = threading.Event(), []

    def slow_runner(ctx):
        runs.append(ctx.step.name)
        entered.set()
        time.sleep(0.5)
        (ctx.out_dir / "model").mkdir()

    first = threading.Thread(target=job.run_step, args=(store, plan, step),
                             kwargs={"runner": slow_runner})
    first.start()
    assert entered.wait(10)
    assert job.run_step(store, plan, step, runner=slow_runner) == "skipped"
    first.join()
    assert len(runs) == 1 and store.is_done(step)


def test_sigterm_stops_a_local_run_like_ctrl_c(tmp_path, plan, monkeypatch):
    """A killed step must not stay "running" in the store: SIGTERM becomes an interrupt, which
    the step records as its end."""
    import signal
    import time

    def terminated_runner(ctx):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the signal's exception arrives before this ends

    monkeypatch.setattr(job, "runner_for", lambda kind: terminated_runner)
    store = RunStore(tmp_path / "store")
    with pytest.raises(KeyboardInterrupt, match="stopped by signal"):
        run_plan(plan, store, console=quiet())
    first = plan.order()[0]
    assert store.state(first)["state"] == "interrupted"  # stopped, not failed
    assert "stopped by signal 15" in store.state(first)["error"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def test_without_a_terminal_each_step_prints_its_start_and_end(tmp_path, monkeypatch):
    """Under SLURM or CI rich draws no bars: `ablate grid` prints one timestamped line per step
    start and end instead, and each finished step's log ends with a line saying so."""
    import re

    from typer.testing import CliRunner

    from ablate.cli import app

    def runner(ctx):  # the training step fails, so its evaluations are blocked
        if ctx.step.kind == "train_dpo":
            raise RuntimeError("training exploded")
        atomic_write_json(ctx.out_dir / "result.json", {"value": 1.0})

    monkeypatch.setattr(job, "runner_for", lambda kind: runner)
    grid = tmp_path / "t.yaml"
    grid.write_text("name: t\nmodels: {m: {builtin: tiny-llama}}\n"
                    "datasets: {uf: {name: ultrafeedback-slice, max_rows: 8}}\n"
                    "algorithms: {dpo: {kind: dpo}}\n"
                    "axes: {model: [m], data: [uf], algorithm: [dpo]}\n"
                    "eval: {benchmarks: [gsm8k, mmlu]}\n")
    store = RunStore(tmp_path / "store")
    result = CliRunner().invoke(app, ["grid", str(grid), "--store", str(store.root)])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if re.match(r"\d\d:\d\d:\d\d ", line)]
    events = [re.sub(r" in \d+\.\d s$| \((eval|train_dpo), [0-9a-f]{12}\)$", "", line[9:])
              for line in lines]
    train, trained = "train_dpo data=uf,alg=dpo,rm=none,prompts=none,seed=1", "data=uf,alg=dpo"
    base = "of m (SFT baseline)"
    assert events == [f"start 1/5 {train}", f"failed 1/5 {train}",
                      f"start 2/5 eval gsm8k {base}", f"done 2/5 eval gsm8k {base}",
                      f"start 3/5 eval mmlu {base}", f"done 3/5 eval mmlu {base}",
                      f"blocked 4/5 eval gsm8k of {trained},rm=none,prompts=none,seed=1",
                      f"blocked 5/5 eval mmlu of {trained},rm=none,prompts=none,seed=1"], \
        result.output
    assert all(re.search(r" in \d+\.\d s$", line) for line in lines
               if line[9:].startswith(("done", "failed")))
    plan = store.load_plan_snapshot(next((store.root / "plans").iterdir()).stem)
    done = next(s for s in plan.steps.values() if s.name == f"eval gsm8k {base}")
    last = (store.step_dir(done) / "log.txt").read_text().splitlines()[-1]
    assert re.search(rf"finished eval gsm8k {re.escape(base)} in \d+\.\d s$", last), last
    failed = next(s for s in plan.steps.values() if s.kind == "train_dpo")
    assert "finished" not in (store.step_dir(failed) / "log.txt").read_text()
