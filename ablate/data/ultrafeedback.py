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

from ablate.data.converters import (
    Scored, _best_vs_random_lower, as_messages, checked_rows, per_row, row_error, text,
)
from ablate.data.rows import (
    MISSING_FIELD, NON_STRING, TIE, SkipRow, bad_field, make_row, require_columns,
    split_shared_prompt, user,
)

UF_ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")
CONTAMINATED = "TruthfulQA prompt (contaminates the truthfulness eval)"


def _is_truthfulqa(source) -> bool:
    return isinstance(source, str) and "truthful" in source.lower()


def ultrafeedback_mean_aspects(raws: Iterable[dict], dataset: str,
                               seed: int = 0) -> Iterator[dict | SkipRow]:
    """openbmb/UltraFeedback: per prompt, 4 completions each rated 1-5 on four aspects.

    A completion without any rating (or without a response) is left out of its prompt's choice; a
    prompt left with none is a counted skip, as is a completion that is not an object.
    """
    by_prompt: dict[str, list[Scored]] = defaultdict(list)
    for i, raw in checked_rows(raws, ultrafeedback_mean_aspects.columns, dataset):
        if isinstance(raw, SkipRow):
            yield raw
            continue
        try:
            if _is_truthfulqa(raw["source"]):
                raise SkipRow(CONTAMINATED)
            prompt = text(raw["instruction"])
            completions = raw["completions"]
            if not isinstance(completions, list):
                raise SkipRow(MISSING_FIELD)
            if not completions:
                raise bad_field("completions", "empty list")
            if not all(isinstance(c, dict) for c in completions):
                raise bad_field("completions", "a completion that is not an object")
            scored = []
            for completion in completions:
                ratings = {aspect: rating for aspect in UF_ASPECTS
                           if (rating := _aspect_rating(completion, aspect)) is not None}
                response = completion.get("response")
                if ratings and isinstance(response, str) and response.strip():
                    scored.append((sum(ratings.values()) / len(ratings), response, ratings, i))
            if not scored:
                raise bad_field("completions", "none with a rating and a response")
        except SkipRow as skip:
            yield skip
            continue
        except Exception as exc:
            raise row_error(dataset, i, raw, exc) from exc
        by_prompt[prompt] += scored  # a prompt in several rows pools their completions
    yield from _best_vs_random_lower(by_prompt, "ultrafeedback-fg", seed)


def _aspect_rating(completion: dict, aspect: str) -> float | None:
    """One aspect's 1-5 rating; None where it is "N/A" (the aspect did not apply) or absent."""
    annotations = completion.get("annotations")
    entry = annotations.get(aspect) if isinstance(annotations, dict) else None
    value = entry.get("Rating") if isinstance(entry, dict) else None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


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
    for i, raw in checked_rows(raws, gsm8k_prompts.columns, dataset):
        if isinstance(raw, SkipRow):
            yield raw
            continue
        try:
            row = {"prompt": [user(text(raw["question"]))],
                   "reference": gsm8k_reference(raw["answer"])}
        except SkipRow as skip:
            row = skip
        except Exception as exc:
            raise row_error(dataset, i, raw, exc) from exc
        yield row


def chat_prompts(raws: Iterable[dict], dataset: str, seed: int = 0) -> Iterator[dict | SkipRow]:
    """allenai/tulu-2.5-prompts splits: a ``messages`` chat (or a plain ``prompt`` string).

    A trailing assistant turn, when present, is the reference response and is not part of the
    prompt; only GSM8k-derived prompts carry a checkable final answer (``reference``).
    """
    for i, raw in checked_rows(raws, (), dataset):
        if isinstance(raw, SkipRow):
            yield raw
            continue
        if i == 0 and "messages" not in raw and "prompt" not in raw:
            require_columns(raw, ("messages",), dataset)
        try:
            if "messages" in raw:
                messages = as_messages(raw["messages"])
                while messages and messages[-1]["role"] == "assistant":
                    messages = messages[:-1]
            else:
                messages = [user(text(raw.get("prompt")))]
            if not messages:
                raise SkipRow(MISSING_FIELD)
            if any(not isinstance(m["content"], str) for m in messages):
                raise SkipRow(NON_STRING)
            reference = raw.get("ground_truth") if isinstance(raw.get("ground_truth"), str) else None
            row = {"prompt": messages, "reference": reference}
        except SkipRow as skip:
            row = skip
        except Exception as exc:
            raise row_error(dataset, i, raw, exc) from exc
        yield row


gsm8k_prompts.columns = ("question", "answer")
chat_prompts.columns = ("messages",)
