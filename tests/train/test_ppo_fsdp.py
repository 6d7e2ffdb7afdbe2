"""PPO with two processes (gloo, FSDP2 per decoder layer for the policy, reference and value
models) against one process: the same sampled tokens, the same metrics and the same weights.

What is equal, and why: generation chunks of ``minibatch_size`` prompts each sample from their own
seeded stream, whichever process runs them, and every forward of a micro-batch sees the same rows
and padding as in one process; so the sampled tokens, rewards, response lengths and the sequence
KL of the first iteration are exactly equal. The gradient of a minibatch is summed in another
order (each process's micro-batches, then the reduce-scatter), so weights and later float metrics
agree to float rounding, not bit for bit.
"""

import json
import shutil

import pytest
import torch

from ablate.spec.schema import PPOConfig
from ablate.train.ppo import train_ppo
from test_fsdp import step_json, torchrun
from test_ppo import UPPERCASE, letter_prompts, read_metrics
from train_helpers import assert_same_weights

# Exactly equal when the same tokens were sampled; the rest to float rounding.
EXACT = {"rm_score", "response_length", "no_eos_share", "prompts", "response_tokens", "step",
         "updates"}
TIMING = {"generation_seconds", "training_seconds", "rollout_tokens_per_second"}


def ppo_config() -> PPOConfig:
    # 10 prompts an iteration in generation chunks of 4 (4, 4, 2: process 0 samples two chunks,
    # process 1 one) and minibatches of 4, 4, 2 in micro-batches of 2 (the last minibatch has one
    # micro-batch: process 1 runs a stand-in for it). Checkpoint after every iteration. Replies
    # are cut at 6 tokens, so the paper's no-EOS rule (the score replaced) would zero every
    # reward and leave nothing to train on: the score is kept instead.
    return PPOConfig(lr=1e-3, beta=0.05, prompts_per_batch=10, minibatch_size=4,
                     micro_batch_size=2, ppo_epochs=1, epochs=2 * 10 / 20, max_prompt_length=64,
                     max_response_length=6, no_eos_penalty=0.0, no_eos_penalty_mode="add",
                     value_init="policy", save_every_steps=1)


@pytest.mark.slow
def test_ppo_world_size_2_equals_1_with_a_sharded_resume_on_2_and_on_1(tmp_path, tiny_model_dir):
    rows, cfg = letter_prompts(20), ppo_config()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = train_ppo(tiny_model_dir, rows, cfg, 1, tmp_path / "one", reward=UPPERCASE)
    finally:
        torch.set_num_threads(threads)
    config = {"model": {"path": str(tiny_model_dir)}, "algorithm": cfg.model_dump(), "seed": 1,
              "reward": UPPERCASE}
    # killed after iteration 1 (its sharded checkpoint saved), then resumed by a fresh launch
    killed = torchrun(tmp_path, "ppo", config, rows, tmp_path / "two",
                      extra=["--stop-after-steps", "1"], expect_ok=False)
    assert killed.returncode != 0 and "stopped after iteration 1" in killed.stderr + killed.stdout
    assert (tmp_path / "two" / "checkpoints" / "step_1" / "policy" / "sharded").is_dir()
    assert (tmp_path / "two" / "checkpoints" / "step_1" / "value" / "sharded").is_dir()
    shutil.copytree(tmp_path / "two", tmp_path / "two_then_one")  # resumed by one process below
    torchrun(tmp_path, "ppo", config, rows, tmp_path / "two")
    two = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["iterations"] == one["iterations"] == 2 and two["resumed_from"] == 1

    m1 = read_metrics(tmp_path / "one")
    assert_same_run(m1, read_metrics(tmp_path / "two"))
    # The first iteration's KL is not 0: each minibatch is scored just before its own update
    # (the paper's PPO), so the third sees the policy that the first two updates moved.
    assert m1[0]["kl"] != 0.0 != m1[1]["kl"]  # it moved, and the same way in both runs
    assert_same_weights(tmp_path / "one" / "model", tmp_path / "two" / "model", atol=2e-5)

    # the checkpoint of two processes resumed by one: the same run again
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        then_one = train_ppo(tiny_model_dir, rows, cfg, 1, tmp_path / "two_then_one",
                             reward=UPPERCASE)
    finally:
        torch.set_num_threads(threads)
    assert then_one["resumed_from"] == 1 and then_one["world_size"] == 1
    assert_same_run(m1, read_metrics(tmp_path / "two_then_one"))
    assert_same_weights(tmp_path / "one" / "model", tmp_path / "two_then_one" / "model",
                        atol=2e-5)


def assert_same_run(m1: list[dict], m2: list[dict]) -> None:
    """Two runs' metrics: the sampled tokens' figures exactly, the rest to float rounding."""
    assert len(m1) == len(m2) == 2
    for a, b in zip(m1, m2):
        assert a.keys() == b.keys()
        for key in a.keys() - TIMING:
            if key in EXACT:
                assert a[key] == b[key], (key, a[key], b[key])
            else:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), key


def test_torchrun_entry_passes_upstream_folders_to_the_step(tmp_path, monkeypatch):
    """A SLURM multi-process PPO step gets its reward model as ``--input reward_model=DIR``; the
    entry point must hand it to run_step as the context's input (else PPO has no reward)."""
    from ablate.train import fsdp, ppo

    seen = {}
    monkeypatch.setattr(ppo, "run_step", lambda ctx: seen.update(inputs=dict(ctx.inputs),
                                                                 kind=ctx.step.kind))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(step_json("ppo", {"model": {"path": "unused"}, "algorithm": {},
                                                   "seed": 1})))
    rm_dir = tmp_path / "steps" / "rm"
    fsdp.main(["ppo", "--config", str(config), "--out", str(tmp_path / "out"),
               "--input", f"reward_model={rm_dir}"])
    assert seen == {"inputs": {"reward_model": rm_dir}, "kind": "train_ppo"}
    with pytest.raises(SystemExit, match="expected ROLE=DIR"):
        fsdp.main(["ppo", "--config", str(config), "--out", str(tmp_path / "out"),
                   "--input", "reward_model"])


@pytest.mark.slow
def test_one_ppo_iteration_with_a_sharded_reward_model_on_2_and_4_ranks_equals_1(tmp_path):
    """Every model sharded (policy, reference, value model from the RM, and the RM itself, each
    process scoring its own batches of the responses): each rank holds about 1/world of each,
    and the iteration's metrics and updated weights are the 1-process run's."""
    from test_ppo import build_char_model, save_reward_model

    policy = build_char_model(tmp_path / "policy")
    rm_step = tmp_path / "rm_step"
    save_reward_model(policy, rm_step / "model", seed=1)
    rows = letter_prompts(8)
    # one iteration of 8 prompts: generation batches of 2 (4 of them: one per rank on 4, two
    # each on 2), minibatches of 4 in micro-batches of 2, the RM scoring 2 responses a forward
    cfg = PPOConfig(lr=1e-3, beta=0.05, prompts_per_batch=8, minibatch_size=4,
                    micro_batch_size=2, generation_batch_size=2, ppo_epochs=1, epochs=1,
                    max_prompt_length=64, max_response_length=6, no_eos_penalty=0.0,
                    no_eos_penalty_mode="add", value_init="reward_model", warmup_epochs=0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = train_ppo(policy, rows, cfg, 1, tmp_path / "one",
                        reward_model_dir=rm_step / "model")
    finally:
        torch.set_num_threads(threads)
    config = {"model": {"path": str(policy)}, "algorithm": cfg.model_dump(), "seed": 1}
    for world in (2, 4):
        out = tmp_path / f"world{world}"
        torchrun(tmp_path, "ppo", config, rows, out, nproc=world,
                 extra=["--input", f"reward_model={rm_step}"])
        summary = json.loads((out / "train_summary.json").read_text())
        assert summary["world_size"] == world and summary["iterations"] == 1
        for name, held in summary["held_parameters"].items():
            total = one["held_parameters"][name][0]
            assert len(held) == world and sum(held) == total, name
            # FSDP splits each tensor's rows as torch.chunk does: near-even pieces
            assert max(abs(h - total / world) for h in held) <= 0.1 * total / world, (name, held)
        [a], [b] = read_metrics(tmp_path / "one"), read_metrics(out)
        assert a.keys() == b.keys()
        for key in a.keys() - TIMING:
            if key in EXACT:
                assert a[key] == b[key], (world, key, a[key], b[key])
            else:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (world, key)
        assert a["kl"] != 0.0  # the second minibatch saw the policy the first update moved
        assert a["value_loss"] > 0 and a["policy_grad_norm"] > 0
        assert_same_weights(tmp_path / "one" / "model", out / "model", atol=2e-5)
