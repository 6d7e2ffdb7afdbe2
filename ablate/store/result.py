"""The result a step leaves in ``result.json``: typed, with its unit, so no reader guesses a scale.

An eval step writes an ``EvalResult`` (the benchmark's primary metric in percent, and what enters
its category mean); a reward-model step writes a ``RewardModelResult`` (held-out pair accuracy, a
fraction). Readers call ``read_result`` and get the right type back, or ``CorruptResult`` naming
the file and the field.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

Unit = Literal["percent", "fraction"]
UNIT_SCALE_TO_PERCENT: dict[str, float] = {"percent": 1.0, "fraction": 100.0}


class CorruptResult(ValueError):
    """A result file that cannot be read as a result; the message names the file and field."""


def _finite(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}")
    return value


class _Record(BaseModel):
    # Fields beyond the typed ones (versions, timings, a benchmark's own details) are kept as
    # written; the typed ones are what readers rely on.
    model_config = ConfigDict(extra="allow", frozen=True)

    metric: str
    value: float
    unit: Unit

    _value_finite = field_validator("value")(_finite)

    def in_percent(self) -> float:
        return self.value * UNIT_SCALE_TO_PERCENT[self.unit]

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class EvalResult(_Record):
    kind: Literal["eval"] = "eval"
    benchmark: str
    category: str
    protocol: str
    higher_is_better: bool
    category_score: float  # what enters the category mean, oriented so that higher is better
    secondary: dict[str, Any] = {}
    n_items: int
    n_failed: int = 0
    scores_file: str = "scores.jsonl"
    outputs_file: str = "outputs.jsonl"

    _score_finite = field_validator("category_score")(_finite)


class RewardModelResult(_Record):
    kind: Literal["reward_model"] = "reward_model"
    value: float | None  # None: no pairs were held out to measure it

    def in_percent(self) -> float | None:
        return None if self.value is None else super().in_percent()


RESULT_TYPES: dict[str, type[_Record]] = {"eval": EvalResult, "reward_model": RewardModelResult}


def read_result(path: Path) -> EvalResult | RewardModelResult:
    """The typed result in ``path``, or ``CorruptResult`` naming the file and what is wrong."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptResult(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CorruptResult(f"{path}: expected a JSON object")
    kind = data.get("kind")
    if kind not in RESULT_TYPES:
        raise CorruptResult(f"{path}: field 'kind' must be one of {', '.join(RESULT_TYPES)}, "
                            f"got {kind!r} (a store made before results were typed needs "
                            "`ablate store migrate`)")
    try:
        return RESULT_TYPES[kind].model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"field {'.'.join(map(str, e['loc']))!r}: {e['msg']}"
                             for e in err.errors())
        raise CorruptResult(f"{path}: {problems}") from None
