"""Checkable rewards for PPO runs that train no reward model: the examples of the programmatic
reward extension point (``ablate.train.programmatic``), used by the PPO tests and the CPU proofs
(``perf/checks/ppo_smollm2_proof.py``, ``perf/ppo_step.py``). A grid names one by import path, with the
repository root on ``PYTHONPATH``::

    reward_models:
      checkable: {programmatic: "perf.ppo_rewards:gsm8k_exact"}

Each takes the prompt item (``ablate.train.rollout.PromptItem``) and the reply's text.
"""

from __future__ import annotations

import re

from ablate.train.common import TrainingError

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> str | None:
    """The last number in a text, commas removed and a trailing ``.0`` dropped."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    number = found[-1].replace(",", "")
    return number[:-2] if number.endswith(".0") else number


def gsm8k_exact(item, response: str) -> float:
    """1 when the response's last number equals the reference's final answer (after ``####``
    when the reference is a full GSM8k solution), else 0."""
    if item.reference is None:
        raise TrainingError(f"prompt row {item.index} has no reference answer; the gsm8k_exact "
                            "reward needs prompts that carry one")
    target = last_number(item.reference.split("####")[-1])
    return float(target is not None and last_number(response) == target)


def uppercase_share(item, response: str) -> float:
    """Share of the response's ASCII letters that are capitals: a dense, checkable reward that
    even a random tiny model can climb (about 0.06 for uniformly random SmolLM2 tokens), used by
    the tests and the CPU proof."""
    letters = [c for c in response if c.isascii() and c.isalpha()]
    return sum(c.isupper() for c in letters) / len(letters) if letters else 0.0


SHORT_RESPONSE_CHARS = 200


def short_response(item, response: str) -> float:
    """``1 - len/200`` for the response's characters (surrounding whitespace removed), 0 at 200
    characters or more: a dense, checkable brevity reward for PPO on a real chat model
    (``perf/checks/ppo_smollm2_proof.py``; 10 CPU iterations there did not move it, see
    perf/RESULTS.md). It rewards nothing but being short, so its optimum is the empty reply; the
    KL penalty is what keeps the policy from it."""
    return 1.0 - min(len(response.strip()), SHORT_RESPONSE_CHARS) / SHORT_RESPONSE_CHARS


def digit_share(item, response: str) -> float:
    """Share of the response's non-whitespace characters that are ASCII digits (0 for a reply with
    none): a dense, per-character reward that a chat model can move within a capped reply of a few
    dozen tokens, unlike a length reward when every reply hits the cap
    (``perf/checks/ppo_smollm2_proof.py``). Its optimum is a reply of digits only."""
    visible = [c for c in response if not c.isspace()]
    return sum("0" <= c <= "9" for c in visible) / len(visible) if visible else 0.0


def opens_with_lets(item, response: str) -> float:
    """1 when the reply's first word is "Let's" (any case, straight or curly apostrophe, trailing
    punctuation ignored), else 0. A reward decided by the first one or two reply tokens, with a
    moderate base rate under SmolLM2-135M-Instruct on GSM8k questions (28 of 252 replies sampled
    at T = 0.7; most open with "To"), so that a short CPU PPO run can assign credit and move it
    (``perf/checks/ppo_smollm2_proof.py``). It pays for a minority opener, so sharpening the policy
    towards its most likely reply does not raise it."""
    words = response.split()
    return float(bool(words) and
                 words[0].replace("\u2019", "'").rstrip(".,:;!?").lower() == "let's")


# The proofs' --reward choices, by function name.
REWARDS = {f.__name__: f for f in (gsm8k_exact, uppercase_share, short_response, digit_share,
                                   opens_with_lets)}
