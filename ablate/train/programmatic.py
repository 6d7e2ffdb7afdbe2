"""Programmatic rewards: PPO can score its samples with a function of the text instead of a
trained reward model, for runs whose answers can be checked.

A grid names the function by import path, ``reward_models.<name>.programmatic:
"package.module:function"``, and the ``train_ppo`` step's config carries that path as ``reward``.
PPO calls ``function(item, response) -> float`` once per sample: ``item`` is the prompt
(``ablate.train.rollout.PromptItem``: ``messages``, the prompt set's checkable ``reference`` or
None, its row ``index``) and ``response`` the sampled reply's text. The module must be importable
where the step runs (installed, or on ``PYTHONPATH``). Examples: ``perf/ppo_rewards.py``.
"""

from __future__ import annotations

from typing import Any, Callable

from ablate.spec.load import import_path

RewardFunction = Callable[[Any, str], float]


def load_reward_function(path: str) -> RewardFunction:
    """The function ``path`` (``"module:function"``) names; a ValueError says what is missing."""
    function = import_path(path, "the reward", "function")
    if not callable(function):
        raise ValueError(f"{path!r} is not callable (a {type(function).__name__})")
    return function
