"""Each converter on a few rows built in code in the source's real schema (the hub is not
reachable here), plus: a schema change fails with the column and dataset name."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from ablate.data.converters import NEUTRAL_STEP, per_row
from ablate.data.registry import SOURCES
from ablate.data.rows import (
    BROKEN_TURNS, MISSING_FIELD, NO_LOWER, NON_STRING, NOT_AN_OBJECT, NOT_DRAWN,
    SAME_RESPONSE, TIE, SchemaError, clean,
)
from ablate.data.ultrafeedback import CONTAMINATED


def run(name, raws, seed=0):
    skipped = Counter()
    rows = clean(SOURCES[name].convert(raws, name, seed), skipped)
    return rows, dict(skipped)


def msgs(*pairs):
    return [{"role": role, "content": content} for role, content in pairs]


def only(rows):
    assert len(rows) == 1, rows
    row = rows[0]
    return row["prompt"], row["chosen"][0]["content"], row["rejected"][0]["content"]


def test_shp2_labels_pick_the_preferred_comment():
    base = {"post_id": "p", "domain": "askculinary_train", "upvote_ratio": 0.9, "history": "Why?",
            "c_root_id_A": "a", "c_root_id_B": "b", "created_at_utc_A": 1, "created_at_utc_B": 2,
            "score_A": 10, "score_B": 3, "human_ref_A": "Because A.", "human_ref_B": "Because B.",
            "labels": 1, "seconds_difference": 1.0, "score_ratio": 3.33}
    rows, _ = run("shp-2", [base])
    assert only(rows) == ([{"role": "user", "content": "Why?"}], "Because A.", "Because B.")
    assert rows[0]["margin"] == 3.33
    rows, _ = run("shp-2", [{**base, "labels": 0}])
    assert only(rows)[1:] == ("Because B.", "Because A.")


def test_stack_exchange_paired_prefers_response_j():
    raw = {"qid": 1, "question": "How to sort?", "date": "2020", "metadata": [],
           "response_j": "Use sorted().", "response_k": "Write bubble sort."}
    rows, skipped = run("stack-exchange", [raw, {**raw, "qid": 2, "response_k": "Use sorted()."}])
    assert only(rows)[1:] == ("Use sorted().", "Write bubble sort.")
    assert skipped == {SAME_RESPONSE: 1}


def test_prm800k_step_pairs_good_and_bad_steps_after_the_same_prefix():
    def step(prefix, text, rating):
        return {"instruction": "What is 2+2?", "responses": prefix, "next_response": text,
                "answer": None, "is_human_response": False, "is_solution": False,
                "is_preferred_response": rating == 1, "rating": rating}

    raws = [step([], "Add them.", 1.0), step([], "Multiply them.", -1.0),
            step(["Add them."], "It is 4.", 1.0), step(["Add them."], "It is 4 too.", 0.0)]
    rows, skipped = run("prm800k-steps", raws)
    assert only(rows)[1:] == ("Add them.", "Multiply them.")
    # the second prefix has no step rated -1; its 0-rated step is neither side
    assert skipped == {NO_LOWER: 1, NEUTRAL_STEP: 1}


def prm_step(question, prefix, text, rating):
    return {"instruction": question, "responses": prefix, "next_response": text, "answer": None,
            "is_human_response": False, "is_solution": False,
            "is_preferred_response": rating == 1, "rating": rating}


def test_prm800k_step_pairs_every_raw_row_is_in_a_pair_or_counted():
    raws = [
        # prefix [] of Q1: 2 good, 2 bad, a neutral, an unrated -> 1 pair (2 rows), 2 not drawn
        prm_step("Q1", [], "good a", 1), prm_step("Q1", [], "good b", 1),
        prm_step("Q1", [], "bad a", -1), prm_step("Q1", [], "bad b", -1),
        prm_step("Q1", [], "meh", 0), prm_step("Q1", [], "unrated", None),
        # prefix ["good a"] of Q1: only bad steps -> each row counted under the group's reason
        prm_step("Q1", ["good a"], "bad c", -1), prm_step("Q1", ["good a"], "bad d", -1),
        # Q2 has only neutral and unrated steps: it no longer vanishes uncounted
        prm_step("Q2", [], "meh", 0), prm_step("Q2", [], "meh too", 0),
        prm_step("Q2", [], "unrated", None),
        prm_step("Q3", [], "odd", 2), prm_step("Q3", [], "", 1),
    ]
    rows, skipped = run("prm800k-steps", raws)
    assert len(rows) == 1
    assert skipped == {NOT_DRAWN: 2, NO_LOWER: 2, NEUTRAL_STEP: 3,
                       "rating: missing (an unrated step)": 2, "rating: not -1, 0 or 1": 1,
                       MISSING_FIELD: 1}
    assert 2 * len(rows) + sum(skipped.values()) == len(raws)  # a pair is two raw rows


def test_a_grouped_pair_removed_by_the_cleaner_counts_its_raw_rows():
    """The same question and prefix twice in a split -> identical pairs; the duplicate pair is
    counted as the two raw rows it came from."""
    raws = [prm_step("Q", [], "good", 1), prm_step("Q", [], "bad", -1),
            prm_step("Q", ["x"], "good", 1), prm_step("Q", ["x"], "bad", -1)]
    rows, skipped = run("prm800k-steps", raws + raws[:2])
    assert len(rows) == 2 and skipped == {NOT_DRAWN: 2}
    rows, skipped = run("prm800k-steps", [prm_step("Q", [], "same", 1),
                                          prm_step("Q", [], "same", -1)])
    assert rows == [] and skipped == {SAME_RESPONSE: 2}


def test_chatbot_arena_2023_drops_ties_and_mismatched_user_turns():
    a = msgs(("user", "Hi"), ("assistant", "Hello from A"))
    b = msgs(("user", "Hi"), ("assistant", "Hello from B"))
    base = {"question_id": "q", "model_a": "m1", "model_b": "m2", "judge": "u", "turn": 1,
            "anony": True, "language": "English", "tstamp": 0.0, "openai_moderation": {},
            "toxic_chat_tag": {}, "conversation_a": a, "conversation_b": b, "winner": "model_b"}
    rows, skipped = run("chatbot-arena-2023", [
        base, {**base, "winner": "tie (bothbad)"},
        {**base, "conversation_b": msgs(("user", "Other"), ("assistant", "x"))}])
    assert only(rows)[1:] == ("Hello from B", "Hello from A")
    assert skipped == {TIE: 1, BROKEN_TURNS: 1}


def test_chatbot_arena_2024_decodes_json_turns():
    raw = {"id": 1, "model_a": "m1", "model_b": "m2",
           "prompt": json.dumps(["Q1", "Q2"]), "response_a": json.dumps(["A1", "A2"]),
           "response_b": json.dumps(["B1", "B2"]),
           "winner_model_a": 1, "winner_model_b": 0, "winner_tie": 0}
    rows, skipped = run("chatbot-arena-2024", [
        raw, {**raw, "id": 2, "winner_model_a": 0, "winner_tie": 1},
        {**raw, "id": 3, "response_b": json.dumps(["B1", None])}])
    prompt, chosen, rejected = only(rows)
    assert prompt == msgs(("user", "Q1"), ("assistant", "A1"), ("user", "Q2"))
    assert (chosen, rejected) == ("A2", "B2")
    assert skipped == {TIE: 1, MISSING_FIELD: 1}


@pytest.mark.parametrize("name", ["alpacafarm-human", "alpacafarm-gpt4"])
def test_alpaca_farm_preference_and_input(name):
    raw = {"instruction": "Translate", "input": "bonjour", "output_1": "hello",
           "output_2": "goodbye", "preference": 2}
    rows, _ = run(name, [raw])
    assert only(rows) == ([{"role": "user", "content": "Translate\n\nbonjour"}], "goodbye", "hello")
    assert rows[0]["source"] == name


def test_hh_rlhf_splits_the_shared_history():
    history = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Joke?"
    raw = {"chosen": history + "\n\nAssistant: A pun.", "rejected": history + "\n\nAssistant: No."}
    rows, skipped = run("hh-rlhf", [raw, {"chosen": raw["chosen"], "rejected": "\n\nHuman: Bye"}])
    prompt, chosen, rejected = only(rows)
    assert [m["role"] for m in prompt] == ["user", "assistant", "user"]
    assert (chosen, rejected) == ("A pun.", "No.")
    assert skipped == {BROKEN_TURNS: 1}


def test_helpsteer_mean_of_aspects_except_verbosity():
    def resp(prompt, text, h, c, verbosity):
        return {"prompt": prompt, "response": text, "helpfulness": h, "correctness": c,
                "coherence": 4, "complexity": 2, "verbosity": verbosity}

    raws = [resp("P1", "best", 4, 4, 0), resp("P1", "worse", 2, 2, 4), resp("P1", "worst", 0, 0, 4),
            resp("P2", "tie a", 3, 3, 1), resp("P2", "tie b", 3, 3, 4), resp("P3", "alone", 3, 3, 1)]
    rows, skipped = run("helpsteer", raws)
    prompt, chosen, rejected = only(rows)
    assert chosen == "best" and rejected in ("worse", "worst")
    # counted in raw rows: both tied responses, the lone one, the P1 response not drawn
    assert skipped == {TIE: 2, NO_LOWER: 1, NOT_DRAWN: 1}
    assert 2 * len(rows) + sum(skipped.values()) == len(raws)
    assert rows[0]["ratings"]["chosen"] == {"helpfulness": 4, "correctness": 4, "coherence": 4,
                                           "complexity": 2}
    # the random rejected response is seeded by prompt, so order does not matter
    assert run("helpsteer", raws[::-1])[0] == rows


def test_capybara_whole_conversations():
    conv = msgs(("user", "Q1"), ("assistant", "A1"), ("user", "Q2"))
    raw = {"source": "s", "conversation": [], "original_response": "", "generation_prompt": [],
           "raw_generation_responses": [], "new_generations": [], "prompt": "Q1",
           "chosen": conv + msgs(("assistant", "good")), "rejected": conv + msgs(("assistant", "bad")),
           "rating_chosen": 5, "rating_rejected": 2, "chosen_model": "x", "rejected_model": "y"}
    rows, _ = run("capybara-7k", [raw])
    assert only(rows) == (conv, "good", "bad") and rows[0]["margin"] == 3.0


def test_orca_pairs_keeps_the_system_prompt():
    raw = {"system": "You are helpful.", "question": "Q", "chosen": "good", "rejected": "bad"}
    rows, _ = run("orca-pairs", [raw, {**raw, "system": "", "question": "Q2"}])
    assert [m["role"] for m in rows[0]["prompt"]] == ["system", "user"]
    assert [m["role"] for m in rows[1]["prompt"]] == ["user"]


def test_nectar_top_rank_vs_a_random_lower_rank():
    answers = [{"answer": f"answer {r}", "model": f"m{r}", "rank": r} for r in (3, 1, 2, 7, 5, 4, 6)]
    raw = {"prompt": "\n\nHuman: Tell me a fact\n\nAssistant:", "answers": answers, "turns": 1,
           "num_responses": 7, "source": ["sharegpt"], "good_natured": True}
    rows, skipped = run("nectar", [raw, {**raw, "answers": [{"answer": 5, "rank": 1},
                                                           {"answer": "b", "rank": 2}]}])
    prompt, chosen, rejected = only(rows)
    assert prompt == [{"role": "user", "content": "Tell me a fact"}]
    assert chosen == "answer 1" and rejected != chosen
    assert skipped == {NON_STRING: 1}


def test_nectar_malformed_answers_are_counted_skips_naming_the_field():
    raw = {"prompt": "\n\nHuman: Tell me a fact\n\nAssistant:",
           "answers": [{"answer": "x", "rank": 1}, {"answer": "y", "rank": 2}]}
    bad = [{**raw, "answers": [{"answer": "x", "rank": None}, {"answer": "y", "rank": 2}]},
           {**raw, "answers": [{"answer": "x", "rank": 1}, {"answer": "y"}]},
           {**raw, "answers": ["x", "y"]},
           "not an object", {"prompt": raw["prompt"]}]
    rows, skipped = run("nectar", [raw, *bad])
    assert len(rows) == 1
    assert skipped == {"answers: an answer without a numeric rank": 2,
                       "answers: an answer that is not an object": 1, NOT_AN_OBJECT: 1,
                       "answers: column absent from this row": 1}


def test_shp2_rows_without_a_usable_label_are_counted():
    base = {"history": "Why?", "human_ref_A": "A.", "human_ref_B": "B.", "labels": 1,
            "score_A": 10, "score_B": 2, "score_ratio": 5.0}
    no_label = {k: v for k, v in base.items() if k != "labels"}
    rows, skipped = run("shp-2", [base, no_label, {**base, "labels": None}])
    assert len(rows) == 1
    assert skipped == {"labels: column absent from this row": 1, "labels: not 0 or 1": 1}


def test_an_unexpected_value_is_an_error_naming_dataset_row_and_column():
    ok = prm_step("Q", [], "good", 1)
    with pytest.raises(SchemaError, match=r"dataset 'prm800k-steps', raw row 1 \(from 0\), column "
                                          r"'responses'.*TypeError"):
        run("prm800k-steps", [ok, {**ok, "responses": 7}])

    @per_row("a", "b")
    def toy(raw):
        return {"x": raw["a"] + raw["b"]}

    with pytest.raises(SchemaError, match=r"dataset 'toy', raw row 2 \(from 0\), column 'b'"):
        list(toy([{"a": 1, "b": 2}, {"a": 1, "b": 3}, {"a": 1, "b": "2"}], "toy", 0))
    with pytest.raises(SchemaError, match=r"dataset 'toy': raw rows are lists"):
        list(toy([[1, 2]], "toy", 0))


def uf_completion(response, helpfulness, honesty, following, truthfulness):
    aspect = lambda r: {"Rating": str(r), "Rationale": "..."}  # noqa: E731
    return {"annotations": {"helpfulness": aspect(helpfulness), "honesty": aspect(honesty),
                            "instruction_following": aspect(following),
                            "truthfulness": {**aspect(truthfulness), "Type": ["0"]}},
            "critique": "", "custom_system_prompt": "", "fine-grained_score": 0.0, "model": "m",
            "overall_score": 7.0, "principle": "helpfulness", "response": response}


def test_ultrafeedback_fine_grained_from_raw_ratings():
    completions = [uf_completion("best", 5, 5, 5, 4), uf_completion("mid", 4, 4, 4, 4),
                   uf_completion("low", 1, 2, 1, "N/A"), uf_completion("also best", 5, 4, 5, 5)]
    raw = {"source": "evol_instruct", "instruction": "Explain X", "models": [],
           "completions": completions, "correct_answers": [], "incorrect_answers": []}
    tied = {**raw, "instruction": "Tied", "completions": completions[:1] + completions[3:]}
    contaminated = {**raw, "source": "truthful_qa", "instruction": "Is the earth flat?"}
    rows, skipped = run("ultrafeedback-fg-raw", [raw, tied, contaminated])
    assert rows == []  # "best" and "also best" both average 4.75: a tie for best is dropped
    assert skipped == {TIE: 2, CONTAMINATED: 1}


def test_ultrafeedback_fine_grained_unique_best():
    completions = [uf_completion("best", 5, 5, 5, 5), uf_completion("mid", 4, 4, 4, 4),
                   uf_completion("low", 1, 2, 1, "N/A")]
    raw = {"source": "flan", "instruction": "Explain Y", "models": [], "completions": completions,
           "correct_answers": [], "incorrect_answers": []}
    rows, skipped = run("ultrafeedback-fg-raw", [raw])
    assert skipped == {}
    _, chosen, rejected = only(rows)
    assert chosen == "best" and rejected in ("mid", "low")
    assert rows[0]["ratings"]["chosen"]["truthfulness"] == 5.0
    low = [r for seed in range(20) for r in run("ultrafeedback-fg-raw", [raw], seed)[0]
           if r["rejected"][0]["content"] == "low"]
    assert low and low[0]["ratings"]["rejected"] == {"helpfulness": 1.0, "honesty": 2.0,
                                                      "instruction_following": 1.0}


def test_ultrafeedback_raw_prompts_without_a_rated_completion_are_counted():
    good = {"source": "flan", "instruction": "Q", "models": [], "correct_answers": [],
            "incorrect_answers": [], "completions": [uf_completion("best", 5, 5, 5, 5),
                                                     uf_completion("low", 1, 1, 1, 1)]}
    unrated = {**uf_completion("z", 1, 1, 1, 1), "annotations": {}}
    all_na = uf_completion("n/a", "N/A", "N/A", "N/A", "N/A")
    raws = [good, {**good, "instruction": "empty", "completions": []},
            {**good, "instruction": "unrated", "completions": [unrated, all_na]},
            {**good, "instruction": "one rated", "completions": [unrated, good["completions"][0]]},
            {**good, "instruction": "oops", "completions": ["oops"]},
            {**good, "instruction": "bad annotations", "completions": [
                {**good["completions"][0], "annotations": ["not", "a", "dict"]}]}]
    rows, skipped = run("ultrafeedback-fg-raw", raws)
    assert len(rows) == 1
    assert skipped == {"completions: empty list": 1, NO_LOWER: 1,
                       "completions: none with a rating and a response": 2,
                       "completions: a completion that is not an object": 1}
    assert len(rows) + sum(skipped.values()) == len(raws)


def test_ultrafeedback_raw_prompt_in_two_rows_pools_them_and_counts_both_rows():
    best, low, mid = (uf_completion("best", 5, 5, 5, 5), uf_completion("low", 1, 1, 1, 1),
                      uf_completion("mid", 3, 3, 3, 3))
    raw = {"source": "flan", "instruction": "Q", "completions": [best]}
    # best from row 0, the only lower one from row 1: the pair stands for both rows
    rows, skipped = run("ultrafeedback-fg-raw", [raw, {**raw, "completions": [low]}])
    assert only(rows)[1:] == ("best", "low") and skipped == {}
    # three rows, the pair uses two of them: the third is counted as not drawn
    rows, skipped = run("ultrafeedback-fg-raw", [raw, {**raw, "completions": [low]},
                                                 {**raw, "completions": [mid]}])
    assert len(rows) == 1 and skipped == {NOT_DRAWN: 1}
    # the same row twice ties with itself for best: both raw rows are counted
    rows, skipped = run("ultrafeedback-fg-raw", [{**raw, "completions": [best, low]}] * 2)
    assert rows == [] and skipped == {TIE: 2}


def test_ultrafeedback_argilla_cleaned_and_h4():
    conv = lambda reply: msgs(("user", "Explain Z"), ("assistant", reply))  # noqa: E731
    argilla = {"source": "evol_instruct", "prompt": "Explain Z", "chosen": conv("good"),
               "chosen-rating": 4.75, "chosen-model": "a", "rejected": conv("bad"),
               "rejected-rating": 2.0, "rejected-model": "b"}
    rows, skipped = run("ultrafeedback-fg", [argilla, {**argilla, "source": "truthful_qa"},
                                             {**argilla, "prompt": "T", "rejected-rating": 4.75}])
    assert only(rows)[1:] == ("good", "bad") and rows[0]["margin"] == 2.75
    assert skipped == {CONTAMINATED: 1, TIE: 1}
    h4 = {"prompt": "Explain Z", "prompt_id": "id", "chosen": conv("good"), "rejected": conv("bad"),
          "messages": conv("good"), "score_chosen": 8.0, "score_rejected": 8.0}
    rows, _ = run("ultrafeedback-overall", [h4])
    assert only(rows)[1:] == ("good", "bad") and rows[0]["margin"] == 0.0  # ties are kept


@pytest.mark.parametrize("name", [n for n, s in SOURCES.items() if hasattr(s.convert, "columns")])
def test_a_missing_column_names_the_column_and_the_dataset(name):
    columns = SOURCES[name].convert.columns
    raw = {column: "x" for column in columns[1:]}  # drop the first column the converter reads
    with pytest.raises(SchemaError) as info:
        list(SOURCES[name].convert([raw], name, 0))
    assert repr(columns[0]) in str(info.value) and repr(name) in str(info.value)


def test_every_source_declares_its_columns():
    assert all(hasattr(s.convert, "columns") for s in SOURCES.values())
