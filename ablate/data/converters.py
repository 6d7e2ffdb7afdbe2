"""Converters from each source's own schema to the preference format (``ablate.data.rows``).

A converter takes the raw rows of one source split and yields rows or ``SkipRow``s. The first raw
row's columns are checked against what the converter reads, so a changed upstream schema fails
with the column and dataset name instead of a KeyError deep inside. Multi-rating sources are
binarized the way the paper's data card describes; where a random rejected response is drawn, the
draw is seeded by the prompt so that a conversion does not depend on row order.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from typing import Callable, Iterable, Iterator

from ablate.data.rows import (
    BROKEN_TURNS, MISSING_FIELD, NO_LOWER, NON_STRING, TIE, SkipRow, assistant, make_row,
    parse_transcript, require_columns, split_shared_prompt, stable_hash, system, user,
)

Converter = Callable[[Iterable[dict], str, int], Iterator[dict | SkipRow]]


def per_row(*columns: str):
    """Lift ``f(raw) -> row`` into a converter that checks columns and turns exceptions into skips."""

    def wrap(convert_one: Callable[[dict], dict]) -> Converter:
        def convert(raws: Iterable[dict], dataset: str, seed: int = 0) -> Iterator[dict | SkipRow]:
            for i, raw in enumerate(raws):
                if i == 0:
                    require_columns(raw, columns, dataset)
                try:
                    yield convert_one(raw)
                except SkipRow as skip:
                    yield skip

        convert.columns = columns
        convert.__doc__ = convert_one.__doc__
        return convert

    return wrap


def text(value) -> str:
    """A required string field: None/empty -> missing, anything else non-string -> non-string."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise SkipRow(MISSING_FIELD)
    if not isinstance(value, str):
        raise SkipRow(NON_STRING)
    return value


def seeded_rng(seed: int, key: str) -> random.Random:
    return random.Random(stable_hash(f"{seed}:{key}"))


def as_messages(value) -> list[dict]:
    """A list of ``{role, content}`` dicts (hub chat columns), checked for shape only."""
    if not isinstance(value, list) or not value:
        raise SkipRow(MISSING_FIELD)
    if not all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        raise SkipRow(BROKEN_TURNS)
    return [{"role": m["role"], "content": m["content"]} for m in value]


# ---------------------------------------------------------------- web


@per_row("history", "human_ref_A", "human_ref_B", "labels", "score_A", "score_B", "score_ratio")
def shp2(raw: dict) -> dict:
    """stanfordnlp/SHP-2: ``labels`` is 1 when comment A is preferred (more upvoted)."""
    a, b = text(raw["human_ref_A"]), text(raw["human_ref_B"])
    chosen, rejected = (a, b) if raw["labels"] == 1 else (b, a)
    return make_row([user(text(raw["history"]))], chosen, rejected, "shp-2",
                    margin=raw["score_ratio"],
                    ratings={"score_A": raw["score_A"], "score_B": raw["score_B"]})


@per_row("question", "response_j", "response_k")
def stack_exchange_paired(raw: dict) -> dict:
    """lvwerra/stack-exchange-paired: ``response_j`` was rated above ``response_k``."""
    return make_row([user(text(raw["question"]))], text(raw["response_j"]),
                    text(raw["response_k"]), "stack-exchange")


# ---------------------------------------------------------------- human


def prm800k_pairs(raws: Iterable[dict], dataset: str, seed: int = 0) -> Iterator[dict | SkipRow]:
    """PRM800k in its step-level form (one row per rated next step after a prefix of steps).

    A pair is a good step (rating 1) and a bad step (rating -1) after the same prefix; chosen and
    rejected are the prefix steps plus that step, so the pair differs only in the rated step.
    """
    columns = ("instruction", "responses", "next_response", "rating")
    groups: dict[tuple, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for i, raw in enumerate(raws):
        if i == 0:
            require_columns(raw, columns, dataset)
        try:
            question, step = text(raw["instruction"]), text(raw["next_response"])
            prefix = raw["responses"]
            prefix = [] if prefix is None else list(prefix)
            if not all(isinstance(s, str) for s in prefix):
                raise SkipRow(NON_STRING)
        except SkipRow as skip:
            yield skip
            continue
        if raw["rating"] in (1, -1):
            groups[(question, tuple(prefix))][int(raw["rating"])].append(step)
    for (question, prefix), by_rating in groups.items():
        if not by_rating[1] or not by_rating[-1]:
            yield SkipRow(NO_LOWER)
            continue
        rng = seeded_rng(seed, question + "\n".join(prefix))
        good, bad = rng.choice(sorted(by_rating[1])), rng.choice(sorted(by_rating[-1]))
        yield make_row([user(question)], "\n".join([*prefix, good]), "\n".join([*prefix, bad]),
                       "prm800k", margin=2.0)


prm800k_pairs.columns = ("instruction", "responses", "next_response", "rating")


@per_row("conversation_a", "conversation_b", "winner")
def chatbot_arena_2023(raw: dict) -> dict:
    """lmsys/chatbot_arena_conversations: ties dropped; both sides must share their user turns."""
    if raw["winner"] not in ("model_a", "model_b"):
        raise SkipRow(TIE)
    a, b = as_messages(raw["conversation_a"]), as_messages(raw["conversation_b"])
    chosen, rejected = (a, b) if raw["winner"] == "model_a" else (b, a)
    user_turns = lambda conv: [m["content"] for m in conv if m["role"] == "user"]  # noqa: E731
    if len(chosen) != len(rejected) or user_turns(chosen) != user_turns(rejected):
        raise SkipRow(BROKEN_TURNS)
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise SkipRow(BROKEN_TURNS)
    # Earlier assistant turns differ between the sides; the winner's history is the prompt.
    return make_row(chosen[:-1], [chosen[-1]], [rejected[-1]], "chatbot-arena-2023")


def _json_list(value) -> list:
    if value is None:
        raise SkipRow(MISSING_FIELD)
    try:
        parsed = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError:
        raise SkipRow(BROKEN_TURNS) from None
    if not isinstance(parsed, list) or not parsed:
        raise SkipRow(MISSING_FIELD)
    return parsed


@per_row("prompt", "response_a", "response_b", "winner_model_a", "winner_model_b", "winner_tie")
def chatbot_arena_2024(raw: dict) -> dict:
    """lmsys/lmsys-arena-human-preference-55k: prompt/response_* are JSON lists, one per turn."""
    if raw["winner_tie"] or raw["winner_model_a"] == raw["winner_model_b"]:
        raise SkipRow(TIE)
    prompts = _json_list(raw["prompt"])
    a, b = _json_list(raw["response_a"]), _json_list(raw["response_b"])
    chosen, rejected = (a, b) if raw["winner_model_a"] else (b, a)
    if not (len(prompts) == len(chosen) == len(rejected)):
        raise SkipRow(BROKEN_TURNS)
    history = []
    for prompt, reply in zip(prompts[:-1], chosen[:-1]):
        history += [user(prompt), assistant(reply)]
    return make_row(history + [user(prompts[-1])], chosen[-1], rejected[-1], "chatbot-arena-2024")


def alpaca_farm(source: str):
    @per_row("instruction", "input", "output_1", "output_2", "preference")
    def convert(raw: dict) -> dict:
        """tatsu-lab/alpaca_farm preference splits: ``preference`` is 1 or 2 (the better output)."""
        instruction = text(raw["instruction"])
        extra = raw["input"]
        prompt = f"{instruction}\n\n{extra}" if isinstance(extra, str) and extra.strip() else instruction
        if raw["preference"] not in (1, 2):
            raise SkipRow(TIE)
        one, two = text(raw["output_1"]), text(raw["output_2"])
        chosen, rejected = (one, two) if raw["preference"] == 1 else (two, one)
        return make_row([user(prompt)], chosen, rejected, source)

    return convert


def hh_rlhf(source: str):
    @per_row("chosen", "rejected")
    def convert(raw: dict) -> dict:
        """Anthropic/hh-rlhf: full transcripts that share everything but the last reply."""
        prompt, chosen, rejected = split_shared_prompt(parse_transcript(raw["chosen"]),
                                                       parse_transcript(raw["rejected"]))
        return make_row(prompt, chosen, rejected, source)

    return convert


HELPSTEER_ASPECTS = ("helpfulness", "correctness", "coherence", "complexity")  # verbosity left out


def helpsteer(raws: Iterable[dict], dataset: str, seed: int = 0) -> Iterator[dict | SkipRow]:
    """nvidia/HelpSteer: one row per (prompt, response) with 0-4 ratings. Per prompt, chosen = the
    best mean of the aspects except verbosity (a tie for best is dropped), rejected = a random
    response with a lower mean."""
    by_prompt: dict[str, list[tuple[float, str, dict]]] = defaultdict(list)
    for i, raw in enumerate(raws):
        if i == 0:
            require_columns(raw, ("prompt", "response", *HELPSTEER_ASPECTS), dataset)
        try:
            prompt, response = text(raw["prompt"]), text(raw["response"])
            scores = {a: raw[a] for a in HELPSTEER_ASPECTS}
            if not all(isinstance(v, (int, float)) for v in scores.values()):
                raise SkipRow(MISSING_FIELD)
        except SkipRow as skip:
            yield skip
            continue
        by_prompt[prompt].append((sum(scores.values()) / len(scores), response, scores))
    yield from _best_vs_random_lower(by_prompt, "helpsteer", seed)


def _best_vs_random_lower(by_prompt: dict[str, list[tuple[float, str, dict]]], source: str,
                          seed: int, prompt_messages: dict[str, list[dict]] | None = None):
    for prompt, scored in by_prompt.items():
        top = max(score for score, _, _ in scored)
        best = [s for s in scored if s[0] == top]
        lower = sorted((s for s in scored if s[0] < top), key=lambda s: (s[0], s[1]))
        if len(best) > 1:
            yield SkipRow(TIE)
            continue
        if not lower:
            yield SkipRow(NO_LOWER)
            continue
        chosen = best[0]
        rejected = seeded_rng(seed, prompt).choice(lower)
        messages = prompt_messages[prompt] if prompt_messages else [user(prompt)]
        yield make_row(messages, chosen[1], rejected[1], source, margin=chosen[0] - rejected[0],
                       ratings={"chosen": chosen[2], "rejected": rejected[2]})


# ---------------------------------------------------------------- synthetic


@per_row("chosen", "rejected", "rating_chosen", "rating_rejected")
def capybara(raw: dict) -> dict:
    """argilla/distilabel-capybara-dpo-7k-binarized: chosen/rejected are whole conversations."""
    prompt, chosen, rejected = split_shared_prompt(as_messages(raw["chosen"]),
                                                   as_messages(raw["rejected"]))
    margin = None
    if isinstance(raw["rating_chosen"], (int, float)) and isinstance(raw["rating_rejected"], (int, float)):
        margin = float(raw["rating_chosen"] - raw["rating_rejected"])
    return make_row(prompt, chosen, rejected, "capybara-7k", margin=margin)


@per_row("system", "question", "chosen", "rejected")
def orca_pairs(raw: dict) -> dict:
    """Intel/orca_dpo_pairs: GPT-4 (chosen) vs Llama-2-13B-chat (rejected), optional system."""
    prompt = [user(text(raw["question"]))]
    if isinstance(raw["system"], str) and raw["system"].strip():
        prompt.insert(0, system(raw["system"]))
    return make_row(prompt, text(raw["chosen"]), text(raw["rejected"]), "orca-pairs")


def nectar(raws: Iterable[dict], dataset: str, seed: int = 0) -> Iterator[dict | SkipRow]:
    """berkeley-nest/Nectar: 7 answers ranked by GPT-4 (rank 1 best). Chosen = the top-ranked
    answer, rejected = a random lower-ranked one (the Tulu 2.5 data card's binarization)."""
    for i, raw in enumerate(raws):
        if i == 0:
            require_columns(raw, ("prompt", "answers"), dataset)
        try:
            prompt = parse_transcript(raw["prompt"])
            if prompt[-1]["role"] != "user":
                raise SkipRow(BROKEN_TURNS)
            answers = raw["answers"]
            if not isinstance(answers, list) or len(answers) < 2:
                raise SkipRow(MISSING_FIELD)
            ranked = sorted(answers, key=lambda a: a.get("rank", float("inf")))
            best, rest = ranked[0], [a for a in ranked[1:] if a.get("rank") != ranked[0].get("rank")]
            if not rest:
                raise SkipRow(TIE)
            worse = seeded_rng(seed, json.dumps(prompt)).choice(rest)
            yield make_row(prompt, text(best.get("answer")), text(worse.get("answer")), "nectar",
                           ratings={"chosen_rank": best.get("rank"), "rejected_rank": worse.get("rank")})
        except SkipRow as skip:
            yield skip


nectar.columns = ("prompt", "answers")
helpsteer.columns = ("prompt", "response", *HELPSTEER_ASPECTS)
