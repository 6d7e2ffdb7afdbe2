"""UltraFeedback, as the paper built it, and the prompt-set converters.

* fine-grained (``ultrafeedback-fg``): Argilla's cleaned binarization of UltraFeedback, where chosen
  is the response with the highest mean of the four aspect ratings (helpfulness, honesty,
  instruction following, truthfulness), rejected a random response with a lower mean, ties dropped
  and TruthfulQA prompts removed. ``ultrafeedback_mean_aspects`` rebuilds exactly that from the raw
  openbmb/UltraFeedback rows (so the per-aspect ratings are kept).
* overall (``ultrafeedback-overall``): H4's binarization by the critique's overall score,
  restricted by the loader to the prompts of the fine-grained set.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Iterator

from ablate.data.converters import _best_vs_random_lower, as_messages, per_row, text
from ablate.data.rows import (
    MISSING_FIELD, NON_STRING, TIE, SkipRow, make_row, require_columns, split_shared_prompt, user,
)

UF_ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")
CONTAMINATED = "TruthfulQA prompt (contaminates the truthfulness eval)"


def _is_truthfulqa(source) -> bool:
    return isinstance(source, str) and "truthful" in source.lower()


def ultrafeedback_mean_aspects(raws: Iterable[dict], dataset: str,
                               seed: int = 0) -> Iterator[dict | SkipRow]:
    """openbmb/UltraFeedback: per prompt, 4 completions each rated 1-5 on four aspects."""
    by_prompt: dict[str, list[tuple[float, str, dict]]] = defaultdict(list)
    for i, raw in enumerate(raws):
        if i == 0:
            require_columns(raw, ("source", "instruction", "completions"), dataset)
        try:
            if _is_truthfulqa(raw["source"]):
                raise SkipRow(CONTAMINATED)
            prompt = text(raw["instruction"])
            if not isinstance(raw["completions"], list):
                raise SkipRow(MISSING_FIELD)
        except SkipRow as skip:
            yield skip
            continue
        for completion in raw["completions"]:
            ratings = {}
            for aspect in UF_ASPECTS:
                value = ((completion.get("annotations") or {}).get(aspect) or {}).get("Rating")
                try:
                    ratings[aspect] = float(value)
                except (TypeError, ValueError):  # "N/A": the aspect did not apply
                    continue
            response = completion.get("response")
            if ratings and isinstance(response, str) and response.strip():
                by_prompt[prompt].append((sum(ratings.values()) / len(ratings), response, ratings))
    yield from _best_vs_random_lower(by_prompt, "ultrafeedback-fg", seed)


ultrafeedback_mean_aspects.columns = ("source", "instruction", "completions")


@per_row("source", "prompt", "chosen", "rejected", "chosen-rating", "rejected-rating")
def ultrafeedback_argilla_cleaned(raw: dict) -> dict:
    """argilla/ultrafeedback-binarized-preferences-cleaned: already binarized by mean aspect rating;
    the checks re-apply the paper's rules (no TruthfulQA prompts, no ties)."""
    if _is_truthfulqa(raw["source"]):
        raise SkipRow(CONTAMINATED)
    if raw["chosen-rating"] == raw["rejected-rating"]:
        raise SkipRow(TIE)
    prompt, chosen, rejected = split_shared_prompt(as_messages(raw["chosen"]),
                                                   as_messages(raw["rejected"]))
    margin = None
    if all(isinstance(raw[k], (int, float)) for k in ("chosen-rating", "rejected-rating")):
        margin = float(raw["chosen-rating"] - raw["rejected-rating"])
    return make_row(prompt, chosen, rejected, "ultrafeedback-fg", margin=margin,
                    ratings={"chosen_mean": raw["chosen-rating"],
                             "rejected_mean": raw["rejected-rating"]})


@per_row("prompt", "chosen", "rejected", "score_chosen", "score_rejected")
def ultrafeedback_h4(raw: dict) -> dict:
    """HuggingFaceH4/ultrafeedback_binarized (train_prefs/test_prefs): chosen = the best overall
    score, rejected = a random other completion; chosen/rejected are whole conversations."""
    prompt, chosen, rejected = split_shared_prompt(as_messages(raw["chosen"]),
                                                   as_messages(raw["rejected"]))
    # Ties are kept: the overall set is H4's binarization as published, only prompt-filtered.
    return make_row(prompt, chosen, rejected, "ultrafeedback-overall",
                    margin=_difference(raw["score_chosen"], raw["score_rejected"]),
                    ratings={"overall_chosen": raw["score_chosen"],
                             "overall_rejected": raw["score_rejected"]})


@per_row("prompt", "chosen", "rejected", "metadata")
def ultrafeedback_trl_slice(raw: dict) -> dict:
    """The vendored trl-lib/ultrafeedback_binarized sample: plain strings + overall scores."""
    meta = raw["metadata"] if isinstance(raw["metadata"], dict) else {}
    chosen_score, rejected_score = meta.get("score_chosen"), meta.get("score_rejected")
    return make_row([user(text(raw["prompt"]))], text(raw["chosen"]), text(raw["rejected"]),
                    "ultrafeedback", margin=_difference(chosen_score, rejected_score),
                    ratings={"overall_chosen": chosen_score, "overall_rejected": rejected_score})


def _difference(a, b) -> float | None:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a - b)
    return None


# ---------------------------------------------------------------- prompt sets


def gsm8k_reference(answer) -> str:
    """GSM8k's final answer: the text after ``####``, without thousands separators."""
    if not isinstance(answer, str) or "####" not in answer:
        raise SkipRow(MISSING_FIELD)
    return answer.split("####")[-1].strip().replace(",", "")


def gsm8k_prompts(raws: Iterable[dict], dataset: str, seed: int = 0) -> Iterator[dict | SkipRow]:
    """openai/gsm8k (main): question -> prompt, the number after ``####`` -> reference."""
    for i, raw in enumerate(raws):
        if i == 0:
            require_columns(raw, ("question", "answer"), dataset)
        try:
            yield {"prompt": [user(text(raw["question"]))], "reference": gsm8k_reference(raw["answer"])}
        except SkipRow as skip:
            yield skip


def chat_prompts(raws: Iterable[dict], dataset: str, seed: int = 0) -> Iterator[dict | SkipRow]:
    """allenai/tulu-2.5-prompts splits: a ``messages`` chat (or a plain ``prompt`` string).

    A trailing assistant turn, when present, is the reference response and is not part of the
    prompt; only GSM8k-derived prompts carry a checkable final answer (``reference``).
    """
    for i, raw in enumerate(raws):
        if i == 0 and "messages" not in raw and "prompt" not in raw:
            require_columns(raw, ("messages",), dataset)
        try:
            if "messages" in raw:
                messages = as_messages(raw["messages"])
                while messages and messages[-1]["role"] == "assistant":
                    messages = messages[:-1]
            else:
                messages = [user(text(raw["prompt"]))]
            if not messages:
                raise SkipRow(MISSING_FIELD)
            if any(not isinstance(m["content"], str) for m in messages):
                raise SkipRow(NON_STRING)
            reference = raw.get("ground_truth") if isinstance(raw.get("ground_truth"), str) else None
            yield {"prompt": messages, "reference": reference}
        except SkipRow as skip:
            yield skip


gsm8k_prompts.columns = ("question", "answer")
chat_prompts.columns = ("messages",)
