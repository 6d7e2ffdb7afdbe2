"""Two processes (gloo, FSDP2 per decoder layer) train to the same weights as one process."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from ablate.spec.plan import Step
from ablate.spec.schema import DPOConfig, RMConfig
from ablate.spec.steps import recipe_kind
from ablate.train.dpo import train_dpo
from ablate.train.rm import train_rm
from train_helpers import arithmetic_rows, assert_same_weights

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --rows replaces the step's data; the config still names some, as every step of its kind does
ROWS_FILE = {"dpo": {"data": {"name": "rows-file"}}, "rm": {"data": {"name": "rows-file"}},
             "ppo": {"prompts": {"source": "prompt_set", "name": "rows-file"}}}


def step_json(recipe: str, config: dict) -> dict:
    """The step file ``ablate.train.fsdp`` reads, as the SLURM launcher writes it."""
    return Step.of(recipe_kind(recipe).name, f"{recipe} (torchrun test)",
                   {**ROWS_FILE[recipe], **config}).to_json()


def torchrun(tmp_path, recipe, config, rows, out, timeout=240, extra=(), expect_ok=True,
             nproc=2):
    torchrun_bin = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun_bin is None:
        pytest.skip("torchrun is not installed next to this Python")
    (tmp_path / "config.json").write_text(json.dumps(step_json(recipe, config)))
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    proc = subprocess.run([torchrun_bin, "--standalone", "--nproc_per_node", str(nproc), "-m",
                           "ablate.train.fsdp", recipe, "--config", str(tmp_path / "config.json"),
                           "--rows", str(tmp_path / "rows.jsonl"), "--out", str(out),
                           "--cache", str(tmp_path / "cache2"), *extra],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    if expect_ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def losses(folder):
    return [json.loads(l)["loss"] for l in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_dpo_world_size_2_equals_1_with_a_sharded_resume(tmp_path, tiny_model_dir):
    rows = arithmetic_rows(19)
    cfg = DPOConfig(lr=1e-3, warmup_ratio=0.0, epochs=1, batch_size=8, micro_batch_size=2,
                    max_length=128, max_prompt_length=64, eval_fraction=0.2, save_every_steps=1)
    one = train_dpo(tiny_model_dir, rows, cfg, 1, tmp_path / "one", tmp_path / "cache1")
    config = {"model": {"path": str(tiny_model_dir)}, "algorithm": cfg.model_dump(), "seed": 1}
    # killed after step 1 (its sharded checkpoint saved), then resumed by a fresh launch
    killed = torchrun(tmp_path, "dpo", config, rows, tmp_path / "two",
                      extra=["--stop-after-steps", "1"], expect_ok=False)
    assert killed.returncode != 0 and "stopped after step 1" in killed.stderr + killed.stdout
    torchrun(tmp_path, "dpo", config, rows, tmp_path / "two")
    two = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert two["world_size"] == 2 and two["steps"] == one["steps"] == 2
    assert two["resumed_from_step"] == 1
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
    assert two["heldout_after"]["loss"] == pytest.approx(one["heldout_after"]["loss"], abs=1e-5)
    # the sharded checkpoint was written by both processes
    assert (tmp_path / "two" / "checkpoints" / "step_1" / "sharded").is_dir()
    assert_same_weights(tmp_path / "one" / "model", tmp_path / "two" / "model", atol=2e-5)


@pytest.mark.slow
def test_rm_world_size_2_equals_1(tmp_path, tiny_model_dir):
    rows = arithmetic_rows(17)
    # 13 training pairs in batches of 12: one step has one pair, so the second process has
    # nothing but an empty slot and must still join every collective with the same shapes.
    cfg = RMConfig(lr=1e-3, warmup_ratio=0.0, epochs=1, batch_size=12, micro_batch_size=4,
                   max_length=128, eval_fraction=0.25)
    one = train_rm(tiny_model_dir, rows, cfg, 1, tmp_path / "one")
    torchrun(tmp_path, "rm", {"model": {"path": str(tiny_model_dir)}, "train": cfg.model_dump(),
                              "seed": 1}, rows, tmp_path / "two")
    two = json.loads((tmp_path / "two" / "result.json").read_text())
    assert two["world_size"] == 2
    steps = [json.loads(l) for l in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert sorted(s["pairs"] for s in steps) == [1, 12]
    assert two["heldout_accuracy"] == one["heldout_accuracy"]
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
    assert_same_weights(tmp_path / "one" / "model", tmp_path / "two" / "model", atol=2e-5)


@pytest.mark.slow
def test_dpo_with_cpu_offload_and_checkpointing_on_2_ranks_equals_1_without(tmp_path,
                                                                            tiny_model_dir):
    """Both memory options change where tensors live and what is recomputed, not the result."""
    rows = arithmetic_rows(12)
    cfg = DPOConfig(lr=1e-3, warmup_ratio=0.0, epochs=1, batch_size=4, micro_batch_size=2,
                    max_length=128, max_prompt_length=64)
    one = train_dpo(tiny_model_dir, rows, cfg, 1, tmp_path / "one", tmp_path / "cache1")
    saving = cfg.model_copy(update={"cpu_offload": True, "gradient_checkpointing": True})
    torchrun(tmp_path, "dpo", {"model": {"path": str(tiny_model_dir)},
                               "algorithm": saving.model_dump(), "seed": 1}, rows,
             tmp_path / "two")
    two = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert two["world_size"] == 2 and two["steps"] == one["steps"] == 3
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
    assert_same_weights(tmp_path / "one" / "model", tmp_path / "two" / "model", atol=2e-5)
