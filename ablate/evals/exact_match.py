"""open-instruct's answer comparison: Hugging Face evaluate's ``exact_match`` with ``ignore_case``
and ``ignore_punctuation`` (open-instruct@959cbbc9d:eval/bbh/run_eval.py and eval/gsm/run_eval.py).
"""

from __future__ import annotations

import string

PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalise(text: str) -> str:
    """Lower case, ASCII punctuation removed, whitespace kept: evaluate strips nothing, so "] )"
    becomes " " and matches only an answer with as many symbols, never every answer."""
    return text.lower().translate(PUNCTUATION)


def open_instruct_match(prediction: str, target: str) -> bool:
    return normalise(prediction) == normalise(target)
