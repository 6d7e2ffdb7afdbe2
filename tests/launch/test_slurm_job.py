"""What runs inside a SLURM job, without a cluster: the stop at the time-limit warning (in one
process), and a node that cannot get the first node's rendezvous."""

from __future__ import annotations

import hashlib
import json
import os
import signal

import pytest

import ablate.launch.job as job_module
from ablate.cli import plan_of
from ablate.launch.job import run_step
from ablate.launch.slurm_job import RendezvousError, SlurmStepJob, TorchrunStepJob
from ablate.spec import load_grid
from ablate.store import RunStore
from ablate.train.stop import STOP_SIGNAL

from test_slurm import losses, write_grid


def weights_digest(folder) -> str:
    import torch
    from safetensors.torch import load_file

    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        for name, tensor in sorted(load_file(path).items()):
            digest.update(name.encode() + tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.slow
def test_the_warning_signal_stops_training_at_a_checkpoint_then_it_resumes(tmp_path,
                                                                           monkeypatch):
    """SIGUSR2 during step 3 of a DPO run in the job's own process: the step finishes, a
    checkpoint of step 3 is written (periodic saves are off), the step is shown queued and
    submitit's requeue handler runs; the next run resumes from step 3 and ends with the weights
    and losses of an uninterrupted run."""
    from ablate.train.dpo import run_step as dpo

    grid = write_grid(tmp_path, "stopgrid", baseline=False)
    grid.write_text(grid.read_text().replace("save_every_steps: 2", "save_every_steps: 1000"))
    plan = plan_of(load_grid(grid))
    train = next(s for s in plan.steps.values() if s.kind == "train_dpo")
    reference = RunStore(tmp_path / "reference")
    assert run_step(reference, plan, train) == "done"

    def signalled_at_step_3(ctx):
        report = ctx.progress

        def progress(step, total, desc):
            report(step, total, desc)
            if step == 2:  # SLURM's warning arrives while step 3 runs
                os.kill(os.getpid(), STOP_SIGNAL)

        ctx.progress = progress
        dpo(ctx)

    requeued = []

    def submitits_requeue(signum, frame):  # what submitit's handler does: requeue, then exit
        requeued.append(signum)
        raise SystemExit(-1)

    store = RunStore(tmp_path / "store")
    plan_id = store.save_plan(plan)
    monkeypatch.setattr(job_module, "runner_for", lambda kind: signalled_at_step_3)
    previous = signal.signal(STOP_SIGNAL, submitits_requeue)
    try:
        with pytest.raises(SystemExit):
            SlurmStepJob(str(store.root), plan_id, train.id)()
        assert requeued == [STOP_SIGNAL]
        assert signal.getsignal(STOP_SIGNAL) is submitits_requeue  # put back
        state = store.state(train)
        assert state["state"] == "queued" and "after optimiser step 3" in state["reason"]
        assert (store.step_dir(train) / "checkpoints" / "step_3").is_dir()
        assert not store.is_done(train)

        monkeypatch.setattr(job_module, "runner_for", lambda kind: dpo)
        assert SlurmStepJob(str(store.root), plan_id, train.id)() == "done"
    finally:
        signal.signal(STOP_SIGNAL, previous)
    summary = json.loads((store.step_dir(train) / "train_summary.json").read_text())
    assert summary["resumed_from_step"] == 3
    ours, theirs = store.step_dir(train), reference.step_dir(train)
    assert losses(ours) == losses(theirs)
    assert weights_digest(ours / "model") == weights_digest(theirs / "model")


def test_a_node_without_the_rendezvous_fails_naming_it(tmp_path, monkeypatch):
    """The other nodes wait for the first node's address for this attempt of the job; a stale
    file of an earlier attempt does not count, and after the timeout the node fails clearly."""
    grid = write_grid(tmp_path, "rdzv", baseline=False)
    plan = plan_of(load_grid(grid))
    store = RunStore(tmp_path / "store")
    plan_id = store.save_plan(plan)
    train = next(s for s in plan.steps.values() if s.kind == "train_dpo")
    folder = store.step_dir(train)
    folder.mkdir(parents=True)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    (folder / "torchrun_rendezvous.json").write_text(json.dumps(
        {"attempt": "77.0", "master_addr": "old", "master_port": 1}))  # the previous run's
    job = TorchrunStepJob(str(store.root), plan_id, train.id, procs_per_node=2,
                          rendezvous_timeout_s=2)
    with pytest.raises(RendezvousError) as error:
        job.wait_for_rendezvous(store, train, node=1)
    message = str(error.value)
    assert "node 1 of SLURM job 77" in message and "torchrun_rendezvous.json" in message
    assert "within 2 s (rendezvous_timeout_s)" in message

    (folder / "torchrun_rendezvous.json").write_text(json.dumps(
        {"attempt": "77.1", "master_addr": "n1", "master_port": 23}))
    assert job.wait_for_rendezvous(store, train, node=1)["master_addr"] == "n1"


def test_an_evaluation_keeps_submitits_requeue_on_the_warning(tmp_path, monkeypatch):
    """Evaluations do not checkpoint: the warning requeues their job at once, as before."""
    grid = write_grid(tmp_path, "evalsignal", baseline=False)
    plan = plan_of(load_grid(grid))
    store = RunStore(tmp_path / "store")
    plan_id = store.save_plan(plan)
    evaluation = next(s for s in plan.steps.values() if s.kind == "eval")
    train = plan.steps[evaluation.inputs["model"]]
    store.mark_done(train, started=0.0)  # its input, as if trained

    def submitits_requeue(signum, frame):
        pass

    seen = []
    monkeypatch.setattr(job_module, "runner_for", lambda kind: lambda ctx: seen.append(
        signal.getsignal(STOP_SIGNAL)))
    previous = signal.signal(STOP_SIGNAL, submitits_requeue)
    try:
        assert SlurmStepJob(str(store.root), plan_id, evaluation.id)() == "done"
    finally:
        signal.signal(STOP_SIGNAL, previous)
    assert seen == [submitits_requeue]


@pytest.mark.slow
def test_ppo_asked_to_stop_saves_the_iteration_it_is_in(tmp_path, tiny_model_dir):
    """(Resuming PPO from a checkpoint: tests/train/test_ppo.py.)"""
    from ablate.spec.schema import PPOConfig
    from ablate.train.ppo import train_ppo
    from ablate.train.stop import Stopped, clear_stop_request, request_stop

    rows = [{"prompt": [{"role": "user", "content": f"say {word}"}], "reference": None}
            for word in ("abc", "de", "fgh", "ij")]
    # two iterations of 2 prompts; periodic saves off
    cfg = PPOConfig(lr=1e-3, beta=0.05, prompts_per_batch=2, minibatch_size=2, micro_batch_size=2,
                    max_prompt_length=64, max_response_length=4, no_eos_penalty=0.0,
                    no_eos_penalty_mode="add", value_init="policy", save_every_steps=1000)
    out = tmp_path / "ppo"
    request_stop()  # as the warning signal's handler does
    try:
        with pytest.raises(Stopped, match="after iteration 1"):
            train_ppo(tiny_model_dir, rows, cfg, 1, out, reward="perf.ppo_rewards:uppercase_share")
    finally:
        clear_stop_request()
    assert (out / "checkpoints" / "step_1").is_dir()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
