"""Preference data and prompt sets: every source of the paper, converted to one clean format.

``load_preferences(ref, split)`` -> ``PreferenceData(name, rows, skipped)``; ``load_prompts(ref)`` ->
``PromptData(name, rows, skipped)`` whose rows are ``{"prompt": [messages], "reference": str | None}``
(it indexes and iterates as its rows). Skips are counted by reason, in raw rows; see
``ablate/data/rows.py`` for the format.
"""

from ablate.data.load import DataUnavailable, load_preferences, load_prompts
from ablate.data.registry import MIXTURES, PROMPT_SETS, SOURCES, dataset_names, prompt_set_names
from ablate.data.rows import (
    PreferenceData, PromptData, SchemaError, count_tokens, downsample, filter_by_length, mix_preferences,
)

__all__ = ["DataUnavailable", "MIXTURES", "PROMPT_SETS", "PreferenceData", "PromptData", "SOURCES", "SchemaError",
           "count_tokens", "dataset_names", "downsample", "filter_by_length", "load_preferences",
           "load_prompts", "mix_preferences", "prompt_set_names"]
