import json

import pytest

from ablate.generate.reward_model import RewardScorer
from ablate.spec.schema import RMConfig
from ablate.train import rewardbench
from ablate.train.common import TrainingError
from ablate.train.rm import train_rm
from train_helpers import arithmetic_rows

FAST = dict(lr=2e-3, warmup_ratio=0.0, epochs=3, batch_size=8, micro_batch_size=4,
            max_length=128, eval_fraction=0.25)


def test_rm_trains_saves_a_loadable_model_and_scores(tmp_path, tiny_model_dir):
    rows = arithmetic_rows(40)
    result = train_rm(tiny_model_dir, rows, RMConfig(**FAST), 1, tmp_path / "rm")
    saved = json.loads((tmp_path / "rm" / "result.json").read_text())
    assert saved["heldout_accuracy"] == result["heldout_accuracy"]
    assert saved["metric"] == "heldout_pair_accuracy"
    assert result["heldout_pairs"] == 10 and result["train_pairs"] == 30
    assert result["heldout_accuracy"] > 0.7  # chosen answers differ systematically
    lines = (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == result["steps"] == 12

    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm" / "model")
    assert model.config.num_labels == 1

    scorer = RewardScorer(tmp_path / "rm" / "model", batch_size=3)
    prompts = [r["prompt"] for r in rows[:5]]
    chosen = scorer.score(prompts, [r["chosen"][0]["content"] for r in rows[:5]])
    rejected = scorer.score(prompts, [r["rejected"][0]["content"] for r in rows[:5]])
    assert len(chosen) == 5 and all(isinstance(x, float) for x in chosen)
    assert sum(c > r for c, r in zip(chosen, rejected)) >= 4
    # batching does not change a score
    alone = RewardScorer(tmp_path / "rm" / "model", batch_size=1).score(prompts[:2], [
        rows[0]["chosen"][0]["content"], rows[1]["chosen"][0]["content"]])
    assert alone == pytest.approx(chosen[:2], abs=1e-4)


def test_rm_margin_needs_margins_and_drops_long_pairs(tmp_path, tiny_model_dir):
    rows = arithmetic_rows(8)
    rows[0]["margin"] = None
    with pytest.raises(TrainingError, match="margin"):
        train_rm(tiny_model_dir, rows, RMConfig(**{**FAST, "margin": True}), 1, tmp_path / "m")
    result = train_rm(tiny_model_dir, arithmetic_rows(8), RMConfig(**{**FAST, "max_length": 60,
                                                                   "epochs": 1}),
                      1, tmp_path / "short")
    assert result["skipped"].get("longer than max_length", 0) > 0


def test_rewardbench_summary_golden():
    rows = [{"subset": s} for s in ["alpacaeval-easy", "alpacaeval-easy", "mt-bench-easy",
                                    "llmbar-natural", "donotanswer", "math-prm", "hep-python"]]
    chosen = [1, 0, 1, 1, 0, 1, 0]
    rejected = [0, 1, 0, 0, 1, 0, 0]  # the hep-python tie counts as wrong
    out = rewardbench.rewardbench_summary(rows, chosen, rejected)
    assert out["subsets"]["alpacaeval-easy"] == 50.0
    # Chat: (0.5·100 + 1·28) / 128
    assert out["sections"]["Chat"] == pytest.approx(100 * 78 / 128)
    assert out["sections"]["Chat Hard"] == 100.0 and out["sections"]["Safety"] == 0.0
    # Reasoning: math-prm weighs 984, hep-python 164
    assert out["sections"]["Reasoning"] == pytest.approx(100 * 984 / 1148)
    assert out["overall"] == pytest.approx((100 * 78 / 128 + 100 + 0 + 100 * 984 / 1148) / 4)
    assert out["missing_sections"] == []


def test_rewardbench_slice_loads_and_bad_rows_are_named(tmp_path):
    rows = rewardbench.load_rewardbench(rewardbench.SLICE)
    assert {rewardbench.SUBSET_SECTION[r["subset"]] for r in rows} == set(rewardbench.SECTIONS)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "c", "rejected": "", "subset": "hep-go"})
                   + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl row 0: field 'rejected'"):
        rewardbench.load_rewardbench(bad)


def test_evaluate_reward_model_on_the_slice(tiny_model_dir):
    class LengthScorer:  # prefers shorter answers: a deterministic stand-in for an RM
        def score(self, prompts, responses):
            return [-float(len(r)) for r in responses]

    rows = rewardbench.load_rewardbench(rewardbench.SLICE)
    out = rewardbench.evaluate_reward_model(LengthScorer(), rows)
    expected = rewardbench.rewardbench_summary(
        rows, [-len(r["chosen"]) for r in rows], [-len(r["rejected"]) for r in rows])
    assert out == expected and out["n_items"] == len(rows)
    # and a real (random) reward model runs end to end
    real = rewardbench.evaluate_reward_model(RewardScorer(tiny_model_dir), rows[:4])
    assert 0 <= real["overall"] <= 100
