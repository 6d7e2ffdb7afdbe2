"""The one preference format, and the pure functions that check, clean and reshape it.

A row is ``{"prompt": [messages], "chosen": [assistant messages], "rejected": [assistant messages],
"source": str, "margin": float | None, "ratings": dict | None}``; a message is
``{"role": "system" | "user" | "assistant", "content": str}``. Converters build rows; everything
here is independent of where a row came from.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

from ablate.data.chat_tokens import chat_ids
from ablate.spec.seeds import derive_seed

# Skip reasons, shared by every converter so that counts add up across sources.
MISSING_FIELD = "missing or empty field"
NON_STRING = "non-string content"
SAME_RESPONSE = "chosen identical to rejected"
BROKEN_TURNS = "broken multi-turn structure"
DUPLICATE = "duplicate"
TIE = "tie (no preference)"
NO_LOWER = "no lower-rated response"
TOO_LONG = "longer than max_length tokens"
# Grouped sources (several raw rows per prompt) make one pair per prompt; the group's other rows.
NOT_DRAWN = "not drawn (one pair per prompt, or per step prefix)"
NOT_AN_OBJECT = "row is not a JSON object"
# Whole-conversation pairs (chosen and rejected each a full chat): what makes one unusable.
NOT_ENDING_WITH_ASSISTANT = "conversation does not end with an assistant turn"
DIFFERENT_HISTORY = "chosen and rejected differ before their last turn"
DUPLICATE_PROMPT = "duplicate prompt"

# A transient key on a converted pair: how many raw rows it stands for (2 where chosen and rejected
# were separate raw rows). ``clean`` pops it, so that a removed pair is counted in raw rows too.
RAW_ROWS = "_raw_rows"

ROLES = ("system", "user", "assistant")
HELD_OUT_PERCENT = 5  # sources without a test split hold out this share of prompts, by prompt hash


class SchemaError(ValueError):
    """A source's raw rows lack a column the converter needs (the upstream schema changed), or a
    raw row holds a value the converter cannot read; the message names dataset, row and column."""


class SkipRow(Exception):
    """Raised (or yielded) by a converter for bad raw rows; the loader counts ``rows`` raw rows
    under ``reason`` (more than one where a whole group of rows, e.g. one prompt's, is dropped)."""

    def __init__(self, reason: str, rows: int = 1):
        super().__init__(reason)
        self.reason = reason
        self.rows = rows


def bad_field(column: str, problem: str) -> SkipRow:
    """A counted skip whose reason names the column: a row-level defect in a large crawled set."""
    return SkipRow(f"{column}: {problem}")


@dataclass
class PreferenceData:
    name: str
    rows: list[dict]
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def tied_pairs(self) -> int:
        """Kept pairs whose source rated both responses equally (margin 0), e.g. H4's overall
        UltraFeedback binarization keeps them: information, not a skip."""
        return sum(1 for row in self.rows if row.get("margin") == 0)


@dataclass
class PromptData(SequenceABC):
    """Policy-training prompts with the loader's skip counts; indexes and iterates as its rows."""

    name: str
    rows: list[dict]
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[index]

    def __iter__(self) -> Iterator[dict]:
        return iter(self.rows)


# ---------------------------------------------------------------- building messages


def user(content: Any) -> dict:
    return {"role": "user", "content": content}


def assistant(content: Any) -> dict:
    return {"role": "assistant", "content": content}


def system(content: Any) -> dict:
    return {"role": "system", "content": content}


def make_row(prompt: list[dict], chosen: Any, rejected: Any, source: str,
             margin: float | None = None, ratings: dict | None = None) -> dict:
    """``chosen``/``rejected`` may be a string (one assistant turn) or a list of messages."""
    as_messages = (lambda r: [assistant(r)] if not isinstance(r, list) else r)
    return {"prompt": prompt, "chosen": as_messages(chosen), "rejected": as_messages(rejected),
            "source": source, "margin": margin, "ratings": ratings}


def require_columns(raw: dict, columns: Sequence[str], dataset: str) -> None:
    missing = [c for c in columns if c not in raw]
    if missing:
        raise SchemaError(f"dataset {dataset!r}: column {missing[0]!r} is missing from the source "
                          f"rows (found columns: {sorted(raw)}); its upstream schema has changed")


_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def parse_transcript(text: Any) -> list[dict]:
    """Split an Anthropic-style ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` transcript into messages.

    Raises SkipRow when the text is not a string or its turns do not alternate from a Human turn.
    A trailing empty ``Assistant:`` (Nectar's prompts end with one) is dropped.
    """
    if not isinstance(text, str):
        raise SkipRow(NON_STRING if text is not None else MISSING_FIELD)
    if not text.startswith("\n\n"):
        text = "\n\n" + text
    parts = _TURN.split(text)
    if parts[0].strip():
        raise SkipRow(BROKEN_TURNS)
    messages = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if speaker == "Human" else "assistant",
                         "content": content.strip()})
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    if not messages:
        raise SkipRow(MISSING_FIELD)
    for i, message in enumerate(messages):
        if message["role"] != ("user" if i % 2 == 0 else "assistant"):
            raise SkipRow(BROKEN_TURNS)
    return messages


def split_shared_prompt(chosen: list[dict], rejected: list[dict]) -> tuple[list, list, list]:
    """Two full conversations that differ only in their last assistant turn -> prompt, chosen,
    rejected. Anything else (different histories, not ending on the assistant) is broken."""
    if (len(chosen) < 2 or len(chosen) != len(rejected) or chosen[:-1] != rejected[:-1]
            or chosen[-1].get("role") != "assistant" or rejected[-1].get("role") != "assistant"):
        raise SkipRow(BROKEN_TURNS)
    return chosen[:-1], [chosen[-1]], [rejected[-1]]


# ---------------------------------------------------------------- checking rows


def check_row(row: dict) -> str | None:
    """The reason this converted row is unusable, or None when it is a clean preference pair."""
    for key in ("prompt", "chosen", "rejected"):
        if not isinstance(row.get(key), list) or not row[key]:
            return MISSING_FIELD
        for message in row[key]:
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                return BROKEN_TURNS
            content = message.get("content")
            if content is None:
                return MISSING_FIELD
            if not isinstance(content, str):
                return NON_STRING
            if not content.strip():
                return MISSING_FIELD
    roles = [m["role"] for m in row["prompt"]]
    if roles[0] == "system":
        roles = roles[1:]
    expected = ["user" if i % 2 == 0 else "assistant" for i in range(len(roles))]
    if not roles or roles != expected or roles[-1] != "user":
        return BROKEN_TURNS
    for key in ("chosen", "rejected"):
        if any(m["role"] != "assistant" for m in row[key]):
            return BROKEN_TURNS
    if [m["content"].strip() for m in row["chosen"]] == [m["content"].strip() for m in row["rejected"]]:
        return SAME_RESPONSE
    return None


def row_key(row: dict) -> str:
    return json.dumps([row["prompt"], row["chosen"], row["rejected"]], sort_keys=True)


def prompt_text(row: dict) -> str:
    """The conversation before the response, as one string: the identity of a prompt."""
    return "\n".join(f"{m['role']}: {m['content'].strip()}" for m in row["prompt"])


def first_user_text(row: dict) -> str:
    return next(m["content"].strip() for m in row["prompt"] if m["role"] == "user")


def stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def is_held_out(row: dict) -> bool:
    """Deterministic held-out membership by prompt, so one prompt never lands in both splits."""
    return stable_hash(prompt_text(row)) % 100 < HELD_OUT_PERCENT


def clean(rows: Iterable[dict | SkipRow], skipped: Counter) -> list[dict]:
    """Drop converter skips, unusable rows and exact duplicates, counting each reason in raw rows."""
    kept, seen = [], set()
    for row in rows:
        if isinstance(row, SkipRow):
            skipped[row.reason] += row.rows
            continue
        raw_rows = row.pop(RAW_ROWS, 1)
        reason = check_row(row)
        if reason is None:
            key = row_key(row)
            if key in seen:
                reason = DUPLICATE
            seen.add(key)
        if reason:
            skipped[reason] += raw_rows
        else:
            kept.append(row)
    return kept


# ---------------------------------------------------------------- reshaping


def downsample(rows: list, max_rows: int | None, seed: int) -> list:
    """A seeded random subset of ``max_rows`` rows, in their original order."""
    if max_rows is None or max_rows >= len(rows):
        return list(rows)
    keep = sorted(random.Random(seed).sample(range(len(rows)), max_rows))
    return [rows[i] for i in keep]


def mix_preferences(name: str, parts: Sequence[tuple[PreferenceData, float]], seed: int = 0,
                    total: int | None = None) -> PreferenceData:
    """A weighted mixture: part i supplies ``weight_i / sum(weights)`` of ``total`` rows.

    ``total`` defaults to the largest mixture the parts allow without repeating a row. Rows keep
    their ``source``; the result is shuffled with ``seed``.
    """
    weights = [w for _, w in parts]
    if not parts or any(w <= 0 for w in weights):
        raise ValueError(f"mixture {name!r}: needs parts with positive weights, got {weights}")
    shares = [w / sum(weights) for w in weights]
    if total is None:
        total = int(min(len(data) / share for (data, _), share in zip(parts, shares)))
    rows, skipped = [], Counter()
    for i, ((data, _), share) in enumerate(zip(parts, shares)):
        want = round(total * share)
        if want > len(data):
            raise ValueError(f"mixture {name!r}: part {data.name!r} has {len(data)} rows, "
                             f"{want} wanted; lower the total or that part's weight")
        rows += downsample(data.rows, want, derive_seed(seed, "mixture-component", i))
        skipped.update(data.skipped)
    random.Random(derive_seed(seed, "mixture-order")).shuffle(rows)
    return PreferenceData(name=name, rows=rows, skipped=dict(skipped))


def render_messages(messages: list[dict]) -> str:
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def count_tokens(tokenizer: Any, messages: list[dict]) -> int:
    """Token count of a conversation under the model's chat template (plain join without one),
    counting the BOS that training puts first where the template renders none (``chat_tokens``)."""
    if getattr(tokenizer, "chat_template", None):
        return len(chat_ids(tokenizer, tokenizer.apply_chat_template(messages, tokenize=True)))
    return len(tokenizer(render_messages(messages), add_special_tokens=True)["input_ids"])


def filter_by_length(data: PreferenceData, tokenizer: Any, max_length: int,
                     max_prompt_length: int | None = None,
                     count: Callable[[Any, list[dict]], int] = count_tokens) -> PreferenceData:
    """Drop pairs whose prompt + longer response exceed ``max_length`` tokens (or whose prompt
    exceeds ``max_prompt_length``), as the paper's trainers did rather than truncating."""
    kept, skipped = [], Counter(data.skipped)
    for row in data.rows:
        prompt_tokens = count(tokenizer, row["prompt"]) if max_prompt_length else 0
        longest = max(count(tokenizer, row["prompt"] + row[k]) for k in ("chosen", "rejected"))
        if longest > max_length or (max_prompt_length and prompt_tokens > max_prompt_length):
            skipped[TOO_LONG] += 1
        else:
            kept.append(row)
    return PreferenceData(name=data.name, rows=kept, skipped=dict(skipped))
