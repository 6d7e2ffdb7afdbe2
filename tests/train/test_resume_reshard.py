"""A checkpoint resumes on another number of processes: the same global batches in the same
order, the optimiser's state resharded by torch.distributed.checkpoint, and the loss curve of the
uninterrupted run."""

import json
import shutil

import pytest
import torch

from ablate.spec.schema import DPOConfig
from ablate.train import checkpoints, fsdp
from ablate.train.common import TrainingError
from ablate.train.dpo import train_dpo
from ablate.train.loop import LoopConfig, check_batch_divides, train_loop
from test_fsdp import losses, torchrun
from train_helpers import arithmetic_rows, assert_same_weights


def metrics(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_dpo_checkpoint_of_2_processes_resumes_on_4_and_on_1(tmp_path, tiny_model_dir):
    rows = arithmetic_rows(19)
    # 15 training pairs in batches of 4: steps of 4, 4, 4 and 3 pairs; a checkpoint at step 2
    cfg = DPOConfig(lr=1e-3, warmup_ratio=0.0, epochs=1, batch_size=4, micro_batch_size=1,
                    max_length=128, max_prompt_length=64, eval_fraction=0.2, save_every_steps=2)
    config = {"model": {"path": str(tiny_model_dir)}, "algorithm": cfg.model_dump(), "seed": 3}
    # the uninterrupted run, in this process (one process trains as two do: test_fsdp.py); the
    # torchrun runs read its reference log-probs from the same cache
    train_dpo(tiny_model_dir, rows, cfg, 3, tmp_path / "whole", tmp_path / "cache2")
    killed = torchrun(tmp_path, "dpo", config, rows, tmp_path / "killed",
                      extra=["--stop-after-steps", "3"], expect_ok=False)
    assert "stopped after step 3" in killed.stderr + killed.stdout
    saved = tmp_path / "killed" / "checkpoints" / "step_2"
    assert (saved / "sharded").is_dir() and {p.name for p in saved.glob("rng_rank*")} == \
        {"rng_rank0.pt", "rng_rank1.pt"}
    for name in ("on4", "on1"):
        shutil.copytree(tmp_path / "killed", tmp_path / name)

    torchrun(tmp_path, "dpo", config, rows, tmp_path / "on4", nproc=4)
    train_dpo(tiny_model_dir, rows, cfg, 3, tmp_path / "on1", tmp_path / "cache2")

    whole = json.loads((tmp_path / "whole" / "train_summary.json").read_text())
    assert whole["steps"] == 4 and whole["resumed_from_step"] == 0
    for name, processes in (("on4", 4), ("on1", 1)):
        resumed = json.loads((tmp_path / name / "train_summary.json").read_text())
        assert resumed["world_size"] == processes and resumed["resumed_from_step"] == 2
        # step 3 ran again after the resume (the killed run's line for it was dropped)
        assert [m["step"] for m in metrics(tmp_path / name)] == [1, 2, 3, 4]
        assert [m["pairs"] for m in metrics(tmp_path / name)] == [4, 4, 4, 3]
        # fp32 sums in another order: the curve agrees to float rounding, far below the step
        # to step change of the loss (> 1e-3 at this learning rate)
        assert losses(tmp_path / name) == pytest.approx(losses(tmp_path / "whole"), abs=1e-5)
        assert [m["grad_norm"] for m in metrics(tmp_path / name)] == pytest.approx(
            [m["grad_norm"] for m in metrics(tmp_path / "whole")], rel=1e-4)
        assert resumed["heldout_after"]["loss"] == pytest.approx(
            whole["heldout_after"]["loss"], abs=1e-5)
        assert_same_weights(tmp_path / "whole" / "model", tmp_path / name / "model", atol=2e-5)
    curve = losses(tmp_path / "whole")
    assert min(abs(a - b) for a, b in zip(curve, curve[1:])) > 1e-3


def test_a_batch_that_does_not_divide_among_the_processes_is_refused(monkeypatch, tmp_path):
    cfg = LoopConfig.of(DPOConfig(batch_size=6), seed=1)
    monkeypatch.setattr(fsdp, "world_size", lambda: 4)
    with pytest.raises(TrainingError, match=r"dpo batch_size is 6, which does not divide among "
                                            r"4 processes.*multiple of 4"):
        train_loop(None, [], cfg, None, tmp_path, None, None, "dpo")
    assert not (tmp_path / "checkpoints").exists()
    for processes in (1, 2, 3, 6):
        check_batch_divides(6, "dpo batch_size", processes)


def test_another_number_of_processes_derives_each_ranks_generators(tmp_path, monkeypatch):
    """Saved by 2 processes, resumed by 4: no saved stream is rank 3's, so each rank's is derived
    from the seed, the step and the rank: reproducible, and different between ranks."""
    monkeypatch.setattr(fsdp, "world_size", lambda: 4)
    schedule = {"world_size": 2}
    draws = {}
    for rank in (0, 3, 0):
        monkeypatch.setattr(fsdp, "rank", lambda rank=rank: rank)
        torch.manual_seed(99)
        checkpoints.resume_generators(tmp_path, schedule, seed=5, step=2)
        draw = torch.rand(4)
        assert rank not in draws or torch.equal(draws[rank], draw)
        draws[rank] = draw
    assert not torch.equal(draws[0], draws[3])
