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

import importlib
from typing import Any, Callable

RewardFunction = Callable[[Any, str], float]


def load_reward_function(path: str) -> RewardFunction:
    """The function ``path`` (``"module:function"``) names; a ValueError says what is missing."""
    module_name, _, name = path.partition(":")
    if not module_name or not name:
        raise ValueError(f"{path!r} is not an import path of the form 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} for the reward {path!r}: {exc}") from None
    function = getattr(module, name, None)
    if function is None:
        raise ValueError(f"module {module_name!r} has no {name!r} (reward {path!r})")
    if not callable(function):
        raise ValueError(f"{path!r} is not callable (a {type(function).__name__})")
    return function
