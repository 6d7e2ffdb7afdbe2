"""Before anything is queued: does a training step have anything to train on?

The trainers drop pairs and prompts that do not fit their length limits; a setting under which
every one is dropped would fail only inside its job. ``usable_examples`` counts them the way the
trainer will, with the step's own tokenizer and data, so `ablate validate` and `ablate grid
--submit` can refuse such a step first.
"""

from __future__ import annotations

from collections import Counter

from ablate.spec.plan import Step


def usable_examples(step: Step) -> tuple[int, int, dict]:
    """(usable, rows, skipped by reason) of a training step's pairs (DPO, RM) or prompts (PPO),
    as its trainer tokenizes and filters them."""
    examples, rows, skipped = tokenized_examples(step)
    return len(examples), rows, skipped


def tokenized_examples(step: Step) -> tuple[list, int, dict]:
    """(the tokenized pairs or prompts its trainer keeps, rows, skipped by reason) of a training
    step, as its trainer tokenizes and filters them."""
    from transformers import AutoTokenizer

    from ablate.data import load_preferences, load_prompts
    from ablate.models import resolve_model
    from ablate.train.common import tokenize_pairs
    from ablate.train.rollout import tokenize_prompts

    config = step.config
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.model))
    if step.kind == "train_ppo":
        loaded = load_prompts(config.prompts)
        items, skipped = tokenize_prompts(loaded.rows, tokenizer, config.algorithm.max_prompt_length)
        return items, len(loaded.rows), dict(Counter(loaded.skipped) + skipped)
    data = load_preferences(config.data, "train")
    if step.kind == "train_rm":  # the paper's RM recipe drops pairs that do not fit
        pairs, skipped = tokenize_pairs(data.rows, tokenizer, config.train.max_length,
                                        config.train.max_length, drop_truncated=True)
    else:
        pairs, skipped = tokenize_pairs(data.rows, tokenizer, config.algorithm.max_length,
                                        config.algorithm.max_prompt_length)
    return pairs, len(data.rows), dict(Counter(data.skipped) + skipped)
