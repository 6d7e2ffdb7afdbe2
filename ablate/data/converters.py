"""Converters from each source's own schema to the preference format (``ablate.data.rows``).

A converter takes the raw rows of one source split and yields rows or ``SkipRow``s. The first raw
row's columns are checked against what the converter reads, so a changed upstream schema fails
with the column and dataset name instead of a KeyError deep inside. Multi-rating sources are
binarized the way the paper's data card describes; where a random rejected response is drawn, the
draw is seeded by the prompt so that a conversion does not depend on row order.

Every raw row ends in a kept pair or in a skip count (``SkipRow``, in raw rows): a malformed value
that a large crawled source is known to hold is a counted skip whose reason names the column; a
value no converter expects is a ``SchemaError`` naming the dataset, the row and the column, never
a bare traceback.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from typing import Callable, Iterable, Iterator

from ablate.data.rows import (
    BROKEN_TURNS, DIFFERENT_HISTORY, MISSING_FIELD, NO_LOWER, NON_STRING, NOT_AN_OBJECT, NOT_DRAWN,
    NOT_ENDING_WITH_ASSISTANT, RAW_ROWS, TIE, SchemaError, SkipRow, assistant, bad_field, make_row,
    parse_transcript, require_columns, split_shared_prompt, system, user,
)
from ablate.spec.seeds import derive_seed

Converter = Callable[[Iterable[dict], str, int], Iterator[dict | SkipRow]]
NEUTRAL_STEP = "rating 0 (a neutral step: neither chosen nor rejected)"
NO_WRONG_SOLUTION = "no model solution labelled wrong (finish_reason found_error)"


class ReadLog(dict):
    """A raw row that remembers the last column read, so that an unexpected error can name it."""

    last_read: str | None = None

    def __getitem__(self, key):
        self.last_read = key
        return super().__getitem__(key)


def checked_rows(raws: Iterable[dict], columns: tuple[str, ...],
                 dataset: str) -> Iterator[tuple[int, ReadLog | SkipRow]]:
    """(index, row) for each raw row; the first row's columns are checked (a schema change is an
    error), a later row that is not an object or lacks a column is a counted skip."""
    for i, raw in enumerate(raws):
        if i == 0:
            if not isinstance(raw, dict):
                raise SchemaError(f"dataset {dataset!r}: raw rows are {type(raw).__name__}s, not "
                                  f"objects with columns {list(columns)}")
            require_columns(raw, columns, dataset)
        if not isinstance(raw, dict):
            yield i, SkipRow(NOT_AN_OBJECT)
            continue
        absent = [c for c in columns if c not in raw]
        yield i, bad_field(absent[0], "column absent from this row") if absent else ReadLog(raw)


def row_error(dataset: str, index: int, raw: dict, exc: Exception) -> SchemaError:
    """An unexpected failure on one raw row, as an error naming the dataset, row and column."""
    column = (exc.args[0] if isinstance(exc, KeyError) and exc.args
              else getattr(raw, "last_read", None))
    where = f", column {column!r}" if column is not None else ""
    return SchemaError(f"dataset {dataset!r}, raw row {index} (from 0){where}: a value this "
                       f"converter cannot read ({type(exc).__name__}: {exc})")


def per_row(*columns: str):
    """Lift ``f(raw) -> row`` into a converter that checks columns, counts ``SkipRow``s and turns
    any other failure into an error naming the dataset, row and column."""

    def wrap(convert_one: Callable[[dict], dict]) -> Converter:
        def convert(raws: Iterable[dict], dataset: str, seed: int = 0) -> Iterator[dict | SkipRow]:
            for i, raw in checked_rows(raws, columns, dataset):
                if isinstance(raw, SkipRow):
                    yield raw
                    continue
                try:
                    row = convert_one(raw)
                except SkipRow as skip:
                    row = skip
                except Exception as exc:
                    raise row_error(dataset, i, raw, exc) from exc
                yield row

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
    """A random stream of its own for each prompt (``ablate.spec.seeds``), so that a prompt's
    draw does not depend on the rows before it."""
    return random.Random(derive_seed(seed, key))


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
    if raw["labels"] not in (0, 1):  # None would otherwise silently prefer B
        raise bad_field("labels", "not 0 or 1")
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


PRM800K_COLUMNS = ("instruction", "responses", "next_response", "rating")
PRM800K_RAW_COLUMNS = ("question", "label")


def prm800k_solution_pairs(raws: Iterable[dict], dataset: str,
                           seed: int = 0) -> Iterator[dict | SkipRow]:
    """openai/prm800k phase 2 as released (``phase2_train.jsonl``: one row per labelled model
    solution), paired as the paper's code pairs it (hamishivi/EasyLM@dbf2212:
    conversion_scripts/convert_preference_data.py, the phase-2 branch, whose output is the
    published ``prm800k_pairs_phase2`` split): per problem, chosen = the problem's ground-truth
    solution, rejected = a random model solution whose labeller found an error (``finish_reason``
    found_error), its pre-generated steps joined by newlines. Solutions labelled correct or given
    up on are not used. The pair stands for one raw row (the rejected solution's); the problem's
    other rows are not drawn; a problem without a wrong solution or a ground truth is a counted
    skip of each of its rows."""
    problems: dict[str, dict] = {}
    for i, raw in checked_rows(raws, PRM800K_RAW_COLUMNS, dataset):
        if isinstance(raw, SkipRow):
            yield raw
            continue
        try:
            question, label = raw["question"], raw["label"]
            if not isinstance(question, dict):
                raise bad_field("question", "not an object")
            if not isinstance(label, dict):
                raise bad_field("label", "not an object")
            problem = text(question.get("problem"))
            wrong = None
            if label.get("finish_reason") == "found_error":
                steps = question.get("pre_generated_steps")
                if not isinstance(steps, list) or not steps \
                        or not all(isinstance(step, str) for step in steps):
                    raise bad_field("question", "pre_generated_steps is not a list of strings")
                wrong = "\n".join(steps)
        except SkipRow as skip:
            yield skip
            continue
        except Exception as exc:
            raise row_error(dataset, i, raw, exc) from exc
        group = problems.setdefault(problem, {"rows": 0, "truth": None, "wrong": []})
        group["rows"] += 1
        truth = question.get("ground_truth_solution")
        if group["truth"] is None and isinstance(truth, str) and truth.strip():
            group["truth"] = truth
        if wrong is not None:
            group["wrong"].append(wrong)
    for problem, group in problems.items():
        if group["truth"] is None:
            yield SkipRow(bad_field("question", "no ground_truth_solution").reason,
                          rows=group["rows"])
            continue
        if not group["wrong"]:
            yield SkipRow(NO_WRONG_SOLUTION, rows=group["rows"])
            continue
        rejected = seeded_rng(seed, problem).choice(sorted(group["wrong"]))
        yield {**make_row([user(problem)], group["truth"], rejected, "prm800k"), RAW_ROWS: 1}
        if group["rows"] > 1:
            yield SkipRow(NOT_DRAWN, rows=group["rows"] - 1)


def prm800k_pairs(raws: Iterable[dict], dataset: str, seed: int = 0) -> Iterator[dict | SkipRow]:
    """PRM800k in its step-level form (one row per rated next step after a prefix of steps).

    A pair is a good step (rating 1) and a bad step (rating -1) after the same prefix; chosen and
    rejected are the prefix steps plus that step, so the pair differs only in the rated step. Each
    pair stands for two raw rows; every other row is counted: rating 0 or missing, a prefix
    without both a good and a bad step (each of its rows), the prefix's steps not drawn.
    """
    groups: dict[tuple, dict[int, list[str]]] = defaultdict(lambda: {1: [], -1: []})
    for i, raw in checked_rows(raws, PRM800K_COLUMNS, dataset):
        if isinstance(raw, SkipRow):
            yield raw
            continue
        try:
            question, step = text(raw["instruction"]), text(raw["next_response"])
            prefix = raw["responses"]
            prefix = [] if prefix is None else list(prefix)
            if not all(isinstance(s, str) for s in prefix):
                raise SkipRow(NON_STRING)
            rating = raw["rating"]
            if rating is None:
                raise bad_field("rating", "missing (an unrated step)")
            if rating == 0:
                raise SkipRow(NEUTRAL_STEP)
            if rating not in (1, -1):
                raise bad_field("rating", "not -1, 0 or 1")
        except SkipRow as skip:
            yield skip
            continue
        except Exception as exc:
            raise row_error(dataset, i, raw, exc) from exc
        groups[(question, tuple(prefix))][int(rating)].append(step)
    for (question, prefix), by_rating in groups.items():
        group_rows = len(by_rating[1]) + len(by_rating[-1])
        if not by_rating[1] or not by_rating[-1]:
            yield SkipRow(NO_LOWER, rows=group_rows)
            continue
        rng = seeded_rng(seed, question + "\n".join(prefix))
        good, bad = rng.choice(sorted(by_rating[1])), rng.choice(sorted(by_rating[-1]))
        yield {**make_row([user(question)], "\n".join([*prefix, good]), "\n".join([*prefix, bad]),
                          "prm800k", margin=2.0), RAW_ROWS: 2}
        if group_rows > 2:
            yield SkipRow(NOT_DRAWN, rows=group_rows - 2)


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
    by_prompt: dict[str, list[Scored]] = defaultdict(list)
    for i, raw in checked_rows(raws, helpsteer.columns, dataset):
        if isinstance(raw, SkipRow):
            yield raw
            continue
        try:
            prompt, response = text(raw["prompt"]), text(raw["response"])
            scores = {a: raw[a] for a in HELPSTEER_ASPECTS}
            if not all(isinstance(v, (int, float)) for v in scores.values()):
                raise SkipRow(MISSING_FIELD)
        except SkipRow as skip:
            yield skip
            continue
        except Exception as exc:
            raise row_error(dataset, i, raw, exc) from exc
        by_prompt[prompt].append((sum(scores.values()) / len(scores), response, scores, i))
    yield from _best_vs_random_lower(by_prompt, "helpsteer", seed)


# (mean rating, response, per-aspect ratings, index of the raw row the response came from)
Scored = tuple[float, str, dict, int]


def _best_vs_random_lower(by_prompt: dict[str, list[Scored]], source: str, seed: int,
                          prompt_messages: dict[str, list[dict]] | None = None):
    """Per prompt: the best response vs a random lower-rated one. A dropped prompt counts each of
    its raw rows under the reason; a kept one counts its rows outside the pair as not drawn."""
    for prompt, scored in by_prompt.items():
        group_rows = len({s[3] for s in scored})
        top = max(s[0] for s in scored)
        best = [s for s in scored if s[0] == top]
        lower = sorted((s for s in scored if s[0] < top), key=lambda s: (s[0], s[1]))
        if len(best) > 1:
            yield SkipRow(TIE, rows=group_rows)
            continue
        if not lower:
            yield SkipRow(NO_LOWER, rows=group_rows)
            continue
        chosen = best[0]
        rejected = seeded_rng(seed, prompt).choice(lower)
        messages = prompt_messages[prompt] if prompt_messages else [user(prompt)]
        pair_rows = len({chosen[3], rejected[3]})
        yield {**make_row(messages, chosen[1], rejected[1], source, margin=chosen[0] - rejected[0],
                          ratings={"chosen": chosen[2], "rejected": rejected[2]}),
               RAW_ROWS: pair_rows}
        if group_rows > pair_rows:
            yield SkipRow(NOT_DRAWN, rows=group_rows - pair_rows)


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
    for i, raw in checked_rows(raws, nectar.columns, dataset):
        if isinstance(raw, SkipRow):
            yield raw
            continue
        try:
            prompt = parse_transcript(raw["prompt"])
            if prompt[-1]["role"] != "user":
                raise SkipRow(BROKEN_TURNS)
            answers = raw["answers"]
            if not isinstance(answers, list) or len(answers) < 2:
                raise SkipRow(MISSING_FIELD)
            if not all(isinstance(a, dict) for a in answers):
                raise bad_field("answers", "an answer that is not an object")
            if not all(_is_number(a.get("rank")) for a in answers):  # unrankable, not "worst"
                raise bad_field("answers", "an answer without a numeric rank")
            ranked = sorted(answers, key=lambda a: a["rank"])
            best, rest = ranked[0], [a for a in ranked[1:] if a["rank"] != ranked[0]["rank"]]
            if not rest:
                raise SkipRow(TIE)
            worse = seeded_rng(seed, json.dumps(prompt)).choice(rest)
            row = make_row(prompt, text(best.get("answer")), text(worse.get("answer")), "nectar",
                           ratings={"chosen_rank": best["rank"], "rejected_rank": worse["rank"]})
        except SkipRow as skip:
            row = skip
        except Exception as exc:
            raise row_error(dataset, i, raw, exc) from exc
        yield row


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


# ---------------------------------------------------------------- the paper's published splits


def tulu25_pairs(source: str):
    @per_row("chosen", "rejected")
    def convert(raw: dict) -> dict:
        """allenai/tulu-2.5-preference-data: ``chosen`` and ``rejected`` are whole conversations
        (lists of ``{role, content}``) that share every turn but the last, an assistant turn."""
        chosen, rejected = as_messages(raw["chosen"]), as_messages(raw["rejected"])
        if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
            raise SkipRow(NOT_ENDING_WITH_ASSISTANT)
        # The paper's trainer reads each side with its own history; a pair here has one prompt.
        if chosen[:-1] != rejected[:-1]:
            raise SkipRow(DIFFERENT_HISTORY)
        return make_row(chosen[:-1], [chosen[-1]], [rejected[-1]], source)

    return convert


nectar.columns = ("prompt", "answers")
helpsteer.columns = ("prompt", "response", *HELPSTEER_ASPECTS)
prm800k_pairs.columns = PRM800K_COLUMNS
prm800k_solution_pairs.columns = PRM800K_RAW_COLUMNS
