"""The DPO recipe on the embedded SmolLM2-135M-Instruct and the shipped UltraFeedback slice: the
policy fits its preference pairs (the implicit reward margin on the pairs it trains on grows from
zero and the loss falls below log 2). CI-sized (a minute or two on 2 cores).

Held-out generalisation on this model (accuracy and margin on pairs it never saw, and the reward
model's held-out accuracy) takes longer than CI allows; `perf/checks/smollm2_proof.py` measures
it and perf/RESULTS.md records the figures.
"""

import json
import math

import pytest

from ablate.spec.schema import DPOConfig
from ablate.spec.schema import DataRef


@pytest.mark.slow
def test_dpo_on_smollm2_fits_its_preference_pairs(tmp_path, smollm2_dir):
    from ablate.data import load_preferences
    from ablate.train.dpo import train_dpo

    rows = load_preferences(DataRef(name="ultrafeedback-slice", max_rows=8), "train").rows
    cfg = DPOConfig(lr=3e-5, warmup_ratio=0.0, epochs=3, batch_size=4, micro_batch_size=4,
                    max_length=192, max_prompt_length=96, eval_fraction=0.0)
    summary = train_dpo(smollm2_dir, rows, cfg, 1, tmp_path / "dpo", tmp_path / "cache")
    steps = [json.loads(line) for line in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    per_epoch = len(steps) // 3
    assert summary["train_pairs"] >= 6 and len(steps) == 3 * per_epoch
    first, last = steps[:per_epoch], steps[-per_epoch:]
    print("DPO smollm2 train pairs:", json.dumps({
        "pairs": summary["train_pairs"], "steps": len(steps),
        "first_epoch_margin": [round(s["rewards/margin"], 4) for s in first],
        "last_epoch_margin": [round(s["rewards/margin"], 4) for s in last],
        "last_epoch_loss": [round(s["loss"], 4) for s in last]}))
    # Before the first update the policy is the reference: margin 0, loss log 2.
    assert abs(steps[0]["rewards/margin"]) < 1e-3
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)
    mean = lambda xs, k: sum(s[k] for s in xs) / len(xs)  # noqa: E731
    assert mean(last, "rewards/margin") > mean(first, "rewards/margin") + 0.05
    assert mean(last, "loss") < math.log(2) - 0.02
    assert mean(last, "rewards/accuracy") > mean(first, "rewards/accuracy")
