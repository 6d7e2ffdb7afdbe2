import json

import pytest
import torch

from ablate.spec.schema import DPOConfig
from ablate.train import dpo
from ablate.train.common import TrainingError
from ablate.train.dpo import train_dpo
from ablate.train.loop import StopRequested
from train_helpers import arithmetic_rows, assert_same_weights, load_weights

FAST = dict(lr=1e-3, warmup_ratio=0.0, epochs=1, batch_size=8, micro_batch_size=4,
            max_length=128, max_prompt_length=64, eval_fraction=0.2)


def run(tmp_path, name, model_dir, rows, seed=1, **overrides):
    cfg = DPOConfig(**{**FAST, **overrides})
    return train_dpo(model_dir, rows, cfg, seed, tmp_path / name, tmp_path / "cache")


def test_run_step_writes_model_metrics_summary_and_cache(tmp_path, tiny_model_dir, monkeypatch):
    import ablate.data
    from ablate.spec.plan import Step
    from ablate.store import StepContext

    rows = arithmetic_rows(20) + [{"prompt": "", "chosen": "a", "rejected": "b"}]

    class Data:
        def __init__(self, rows):
            self.rows, self.skipped = rows, {"unparsable": 2}

    monkeypatch.setattr(ablate.data, "load_preferences", lambda ref, split="train": Data(rows),
                        raising=False)
    seen = []
    step = Step.of("train_dpo", "dpo test", {"model": {"path": str(tiny_model_dir)},
                                             "data": {"name": "x"},
                                             "algorithm": DPOConfig(**FAST).model_dump(),
                                             "seed": 3})
    ctx = StepContext(step=step, out_dir=tmp_path / "step", cache_dir=tmp_path / "cache",
                      progress=lambda done, total, desc: seen.append((done, total, desc)))
    dpo.run_step(ctx)
    out = tmp_path / "step"
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["skipped"] == {"unparsable": 2, "empty or missing prompt": 1}
    assert summary["train_pairs"] == 16 and summary["heldout_pairs"] == 4
    assert summary["steps"] == 2 and seen[-1] == (2, 2, "dpo")
    assert summary["tokens_per_second"] > 0
    for key in ("reward_accuracy", "reward_margin"):
        assert summary["heldout_before"][key] == pytest.approx(0.0, abs=1e-5)  # policy == ref
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2]
    assert lines[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    AutoModelForCausalLM.from_pretrained(out / "model")
    AutoTokenizer.from_pretrained(out / "model")
    assert len(list((tmp_path / "cache" / "ref_logps").glob("*.pt"))) == 1
    assert not list((tmp_path / "cache" / "ref_logps").glob("*.tmp"))  # its temp file renamed


def test_training_raises_heldout_reward_accuracy(tmp_path, tiny_model_dir):
    rows = arithmetic_rows(40)
    summary = run(tmp_path, "a", tiny_model_dir, rows, epochs=4, eval_fraction=0.25)
    before, after = summary["heldout_before"], summary["heldout_after"]
    assert after["reward_margin"] > before["reward_margin"] + 0.05
    assert after["reward_accuracy"] > 0.7


def test_accumulation_8x1_equals_1x8(tmp_path, tiny_model_dir):
    rows = arithmetic_rows(17)
    run(tmp_path, "one", tiny_model_dir, rows, micro_batch_size=8, epochs=2)
    run(tmp_path, "eight", tiny_model_dir, rows, micro_batch_size=1, epochs=2)
    # Same data, same gradient up to float32 summation order; Adam divides by sqrt(v), which
    # magnifies rounding in near-zero gradient entries, so allow 2% of one lr-sized update.
    assert_same_weights(tmp_path / "one" / "model", tmp_path / "eight" / "model", atol=2e-5)
    losses = [[json.loads(l)["loss"] for l in (tmp_path / name / "metrics.jsonl").open()]
              for name in ("one", "eight")]
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    # and the run changed the weights at all
    start = load_weights(tiny_model_dir)
    trained = load_weights(tmp_path / "one" / "model")
    assert max((start[k] - trained[k]).abs().max().item() for k in start) > 1e-4


def test_resume_after_a_kill_mid_epoch_matches_an_uninterrupted_run(tmp_path, tiny_model_dir):
    rows = arithmetic_rows(30)
    kw = dict(batch_size=4, micro_batch_size=2, epochs=1.5, save_every_steps=2)
    run(tmp_path, "whole", tiny_model_dir, rows, **kw)
    cfg = DPOConfig(**{**FAST, **kw})
    with pytest.raises(StopRequested):
        train_dpo(tiny_model_dir, rows, cfg, 1, tmp_path / "killed", tmp_path / "cache",
                  stop_after_steps=3)
    assert (tmp_path / "killed" / "checkpoints" / "step_2").is_dir()
    summary = train_dpo(tiny_model_dir, rows, cfg, 1, tmp_path / "killed", tmp_path / "cache")
    assert summary["resumed_from_step"] == 2
    assert_same_weights(tmp_path / "whole" / "model", tmp_path / "killed" / "model", atol=1e-7)
    steps = [json.loads(l)["step"] for l in
             (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, summary["steps"] + 1))


def test_nan_loss_stops_with_step_and_rows_and_keeps_the_checkpoint(tmp_path, tiny_model_dir,
                                                                     monkeypatch):
    real = dpo.preference_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        losses, c, r = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 5:
            losses = losses * float("nan")
        return losses, c, r

    monkeypatch.setattr(dpo, "preference_loss", poisoned)
    rows = arithmetic_rows(20)
    # held-out eval makes call 1; steps 0 and 1 make calls 2-5 (two micro-batches each), so the
    # NaN lands in step 1's second micro-batch
    with pytest.raises(TrainingError, match=r"optimiser step 1, micro-batch 1 \(data rows"):
        run(tmp_path, "nan", tiny_model_dir, rows, batch_size=4, micro_batch_size=2,
            save_every_steps=1)
    checkpoints = tmp_path / "nan" / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["step_1"]
    assert (checkpoints / "step_1" / "sharded").is_dir()
    assert not (tmp_path / "nan" / "model").exists()


@pytest.mark.parametrize("loss", ["cdpo", "ipo", "ln_dpo", "simpo"])
def test_variants_train(tmp_path, tiny_model_dir, loss):
    extra = {"label_smoothing": 0.1} if loss == "cdpo" else {}
    summary = run(tmp_path, loss, tiny_model_dir, arithmetic_rows(12), loss=loss,
                  batch_size=6, micro_batch_size=3, **extra)
    assert summary["loss"] == loss and summary["steps"] == 2
    assert all(torch.isfinite(torch.tensor(summary["last"]["loss"])) for _ in [0])


def test_online_reference_equals_precomputed(tmp_path, tiny_model_dir):
    rows = arithmetic_rows(12)
    run(tmp_path, "pre", tiny_model_dir, rows, batch_size=6, micro_batch_size=3)
    run(tmp_path, "online", tiny_model_dir, rows, batch_size=6, micro_batch_size=3,
        ref_logps="online")
    assert_same_weights(tmp_path / "pre" / "model", tmp_path / "online" / "model", atol=1e-6)


def test_no_usable_pairs_is_a_clear_error(tmp_path, tiny_model_dir):
    rows = [{"prompt": "p", "chosen": "same", "rejected": "same"}]
    with pytest.raises(TrainingError, match="identical chosen and rejected"):
        run(tmp_path, "bad", tiny_model_dir, rows)
