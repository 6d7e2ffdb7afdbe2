"""Training over two SLURM nodes (the local cluster's n1 and n2, two slurmd on this machine): one
submitit task per node starts torchrun with two workers, 4 ranks over gloo, and a DPO step and a
PPO iteration train to the losses of one process (the local executor). Nothing is mocked: the
second node's task takes the job's own path (rendezvous file, torchrun with --node_rank 1).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from ablate.cli import plan_of
from ablate.launch.local import run_plan
from ablate.launch.profile import load_profile
from ablate.launch.slurm import submit_plan
from ablate.spec import load_grid
from ablate.store import RunStore

from test_slurm import diagnosis, wait_settled

pytestmark = pytest.mark.slurm

TWO_NODES = """\
partition: debug
node_gpus: 0
# 4 CPUs a node for 2 processes: 2 threads each
train: {nodes: 2, procs_per_node: 2, cpus_per_task: 4, mem_gb: 4, time_min: 30}
eval: {cpus_per_task: 1, mem_gb: 2, time_min: 30}
"""

# DPO: 15 training pairs (one held out) in steps of 4, one pair per rank and step. PPO: one
# iteration of 8 prompts in minibatches of 4, with a checkable reward (no reward model to train);
# replies cut at 6 tokens keep their score (no EOS penalty).
GRID = """\
name: twonodes
models: {tiny: {builtin: tiny-llama}}
datasets: {uf: {name: ultrafeedback-slice, max_rows: 16}}
algorithms:
  dpo: {kind: dpo, lr: 1.0e-4, epochs: 1, batch_size: 4, micro_batch_size: 1, max_length: 128,
        max_prompt_length: 64, eval_fraction: 0.05}
  ppo: {kind: ppo, lr: 1.0e-4, prompts_per_batch: 8, minibatch_size: 4, micro_batch_size: 1,
        max_prompt_length: 128, max_response_length: 6, no_eos_penalty: 0.0,
        no_eos_penalty_mode: add, value_init: policy}
reward_models: {upper: {programmatic: "perf.ppo_rewards:uppercase_share"}}
axes: {model: [tiny], data: [uf], algorithm: [dpo, ppo], reward_model: [upper]}
baseline: false
eval: {benchmarks: [gsm8k], limit: {gsm8k: 2}}
"""

# Equal whatever the process count when the same tokens were sampled (PPO generation chunks draw
# from their own seeded streams); timings differ by nature.
EXACT = {"step", "rm_score", "response_length", "no_eos_share", "prompts", "response_tokens",
         "updates", "pairs", "tokens"}
TIMING = {"generation_seconds", "training_seconds", "rollout_tokens_per_second"}


def metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()
            if line.strip()]


@pytest.mark.slow
def test_two_nodes_train_dpo_and_ppo_to_the_one_process_losses(slurm_cluster, job_env, tmp_path):
    profile = tmp_path / "two-nodes.yaml"
    profile.write_text(TWO_NODES)
    grid = tmp_path / "twonodes.yaml"
    grid.write_text(GRID)
    plan = plan_of(load_grid(grid))
    store = RunStore(tmp_path / "store")
    submit_plan(plan, store, load_profile(profile))
    local = RunStore(tmp_path / "local")
    assert run_plan(plan, local, console=Console(file=open("/dev/null", "w"))).ok
    wait_settled(plan, store)

    for step in (s for s in plan.steps.values() if s.kind.startswith("train")):
        folder = store.step_dir(step)
        assert store.is_done(step), (diagnosis(plan, store), [
            p.read_text()[-3000:] for p in folder.glob("torchrun-node*.log")])
        assert json.loads((folder / "train_summary.json").read_text())["world_size"] == 4
        # each node's torchrun ran two of the four ranks, each with 4 CPUs / 2 processes threads
        where = {}
        for node in (0, 1):
            log = (folder / f"torchrun-node{node}.log").read_text()
            for rank, host, threads in re.findall(r"rank (\d) of 4 on (\S+): (\d+) threads", log):
                where[int(rank)] = host
                assert threads == "2", log
        assert set(where) == {0, 1, 2, 3}
        assert where[0] == where[1] != where[2] == where[3]

        ours, reference = metrics(folder), metrics(local.step_dir(step))
        assert len(ours) == len(reference) >= 1
        for mine, theirs in zip(ours, reference):
            assert mine.keys() == theirs.keys()
            for key in mine.keys() - TIMING:
                if key in EXACT:
                    assert mine[key] == theirs[key], key
                else:
                    # the same sums in another order (4 ranks, then the all-reduce): float rounding
                    assert mine[key] == pytest.approx(theirs[key], rel=1e-3, abs=1e-5), key
