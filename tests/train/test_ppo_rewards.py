"""Programmatic rewards (functions named by import path; the examples in perf/ppo_rewards.py) and
the ``train_ppo`` step's reward wiring (a grid's ``reward_models.<name>.programmatic`` becomes the
step config's ``reward``, with no RM input)."""

from __future__ import annotations

import json

import pytest
import torch

from ablate.data.rows import PromptData
from ablate.spec.plan import Step
from ablate.store.context import StepContext
from ablate.train.common import TrainingError
from ablate.train.ppo import run_step
from ablate.train.programmatic import load_reward_function
from ablate.train.rollout import PromptItem
from perf.ppo_rewards import SHORT_RESPONSE_CHARS, digit_share, opens_with_lets, short_response
from test_ppo import UPPERCASE, build_char_model, letter_prompts, small_cfg

ITEM = PromptItem(0, (), (1,), None)
PROMPTS = {"source": "prompt_set", "name": "letters", "max_rows": None, "sample_seed": 0}


def test_short_response():
    assert SHORT_RESPONSE_CHARS == 200
    assert short_response(ITEM, "") == 1.0
    assert short_response(ITEM, "  \n") == 1.0  # surrounding whitespace does not count
    assert short_response(ITEM, " " + "a" * 50 + "\n") == pytest.approx(0.75)
    assert short_response(ITEM, "a" * 200) == 0.0
    assert short_response(ITEM, "a" * 1000) == 0.0  # floored at 0, never negative
    assert load_reward_function("perf.ppo_rewards:short_response") is short_response


def test_digit_share():
    assert digit_share(ITEM, "") == 0.0
    assert digit_share(ITEM, " \n\t") == 0.0  # no visible characters: 0, not a division by 0
    assert digit_share(ITEM, "42") == 1.0
    assert digit_share(ITEM, "a1 b2") == pytest.approx(0.5)  # the space does not count
    assert digit_share(ITEM, "x = 3.5\n") == pytest.approx(2 / 5)  # '.' and '=' count, not digits
    assert digit_share(ITEM, "\u0663\u0664") == 0.0  # non-ASCII digits (Arabic-Indic) do not count
    assert load_reward_function("perf.ppo_rewards:digit_share") is digit_share


def test_opens_with_lets():
    assert opens_with_lets(ITEM, "Let's break down the problem") == 1.0
    assert opens_with_lets(ITEM, "  \nlet's solve") == 1.0  # any case, leading whitespace
    assert opens_with_lets(ITEM, "Let\u2019s go") == 1.0  # curly apostrophe
    assert opens_with_lets(ITEM, "Let's, then:") == 1.0  # trailing punctuation of the word
    assert opens_with_lets(ITEM, "Let's") == 1.0
    assert opens_with_lets(ITEM, "Lets go") == 0.0  # no apostrophe: another word
    assert opens_with_lets(ITEM, "Let us see") == 0.0
    assert opens_with_lets(ITEM, "To solve this, let's") == 0.0  # only the first word counts
    assert opens_with_lets(ITEM, "Let'sgo") == 0.0
    assert opens_with_lets(ITEM, "") == 0.0 and opens_with_lets(ITEM, " \n") == 0.0
    assert load_reward_function("perf.ppo_rewards:opens_with_lets") is opens_with_lets


@pytest.mark.parametrize("path,problem", [
    ("short_response", "not an import path of the form 'package.module:function'"),
    (":short_response", "not an import path"),
    ("perf.ppo_rewards:", "not an import path"),
    ("perf.no_such_module:f", "cannot import 'perf.no_such_module'"),
    ("perf.ppo_rewards:shortest_response", "module 'perf.ppo_rewards' has no 'shortest_response'"),
    ("perf.ppo_rewards:SHORT_RESPONSE_CHARS", r"is not callable \(a int\)"),
])
def test_a_reward_path_that_names_no_function_says_why(path, problem):
    with pytest.raises(ValueError, match=problem):
        load_reward_function(path)


def ppo_step(tmp_path, config_extra: dict, inputs: dict | None = None) -> StepContext:
    step = Step.of("train_ppo", "ppo test", {
        "model": {"path": str(tmp_path / "none")}, "prompts": PROMPTS,
        "algorithm": small_cfg(epochs=1).model_dump(), "seed": 1, **config_extra},
        inputs={k: "x" for k in inputs or {}})
    ctx = StepContext(step=step, out_dir=tmp_path / "out", inputs=inputs or {},
                      cache_dir=tmp_path / "cache")
    ctx.out_dir.mkdir(parents=True)
    return ctx


def test_run_step_without_reward_model_or_programmatic_reward_fails_first(tmp_path,
                                                                          monkeypatch):
    import ablate.data

    def no_prompts(ref):
        raise AssertionError("the reward is checked before anything is loaded")

    monkeypatch.setattr(ablate.data, "load_prompts", no_prompts, raising=False)
    with pytest.raises(TrainingError, match=r"neither a `reward_model` input nor a programmatic "
                                            r"`reward`.*'module:function'"):
        run_step(ppo_step(tmp_path, {}))
    with pytest.raises(TrainingError, match=r"reward 'perf.ppo_rewards:gsm8k_exakt' is neither "
                                            r"'reward_model' nor a programmatic reward: module "
                                            r"'perf.ppo_rewards' has no 'gsm8k_exakt'"):
        run_step(ppo_step(tmp_path / "2", {"reward": "perf.ppo_rewards:gsm8k_exakt"}))


def test_run_step_with_programmatic_reward_needs_no_reward_model(tmp_path, monkeypatch):
    import ablate.data

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build_char_model(tmp_path / "char")
        monkeypatch.setattr(ablate.data, "load_prompts", lambda ref: PromptData(
            "letters", letter_prompts(8), {"duplicate prompt": 2}), raising=False)
        ctx = ppo_step(tmp_path, {"model": {"path": str(model)}, "reward": UPPERCASE})
        run_step(ctx)
    finally:
        torch.set_num_threads(threads)
    summary = json.loads((ctx.out_dir / "train_summary.json").read_text())
    assert summary["reward"] == UPPERCASE and summary["value_init"] == "policy"
    assert summary["prompts_skipped_by_loader"] == {"duplicate prompt": 2}
    assert (ctx.out_dir / "model" / "config.json").is_file()
