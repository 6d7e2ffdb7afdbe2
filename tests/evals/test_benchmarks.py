"""IFEval, BBH, TruthfulQA, XSTest, ToxiGen: item lists and scorers against the references."""

from __future__ import annotations

import json
import math
import random

import pytest

from ablate.evals import EvalError, get_benchmark
from ablate.evals.bbh import extract_answer, is_correct
from ablate.evals.truthfulqa import mc2
from ablate.evals.xstest import judge_label, refusal_f1, strmatch_label


def test_ifeval_on_gpt4_responses_matches_lm_eval(shared_data):
    from ablate.evals.ifeval import checkers, score_response

    items = {i["item_id"]: i for i in get_benchmark("ifeval").items("paper", shared_data)}
    assert len(items) == 541
    responses = [json.loads(l) for l in
                 (shared_data / "ifeval" / "input_response_data_gpt4_20231107_145030.jsonl").open()]
    reference = checkers()
    by_prompt = {i["prompt"]: i for i in items.values()}
    loose = []
    for row in responses[:80]:
        doc = by_prompt[row["prompt"]]
        ours = score_response(doc, row["response"])
        random.seed(f"ifeval-{doc['key']}")  # as score_response seeds the random checker args
        assert ours == reference(doc, [row["response"]])
        assert score_response(doc, row["response"]) == ours
        loose.append(ours["prompt_level_loose_acc"])
    assert 0.6 < sum(loose) / len(loose) <= 1.0  # GPT-4 follows most instructions


def test_bbh_answers_are_read_and_compared_as_open_instruct_does():
    # open-instruct: "[tT]he answer is (.*?)\." (else the whole reply), then exact match
    # ignoring case and punctuation
    assert extract_answer("Let's think. So the answer is (B).") == "(B)"
    assert extract_answer("So the answer is 24. And the answer is 25.") == "24"
    assert extract_answer("The answer is True. ") == "True"
    assert extract_answer("No idea") == "No idea"
    cases = [("So the answer is A.", "(A)", True), ("So the answer is yes.", "Yes", True),
             ("So the answer is (B). This is because B fits.", "(B)", True),
             ("So the answer is **(C)**.", "(C)", True), ("So the answer is (A).", "(B)", False),
             ("the answer is 24.", "24", True), ("No idea", "(A)", False)]
    for reply, target, correct in cases:
        assert is_correct(reply, target) == correct, reply


def test_bbh_items(shared_data):
    items = get_benchmark("bbh").items("paper", shared_data)
    assert len(items) == 27 * 40 and len(get_benchmark("bbh").items("full", shared_data)) == 6511


def test_truthfulqa_mc2_matches_lm_eval(shared_data):
    from lm_eval.tasks.truthfulqa.utils import process_results_mc2

    items = get_benchmark("truthfulqa").items("full", shared_data)  # MC2: the full protocol
    assert len(items) == 817 and items[0]["context"].endswith(f"Q: {items[0]['question']}\nA:")
    for item in items[:20]:
        lls = [-1.0 - 0.37 * k for k in range(len(item["labels"]))][::-1]
        doc = {"mc2_targets": {"labels": item["labels"]}}
        assert mc2(lls, item["labels"]) == pytest.approx(
            float(process_results_mc2(doc, [(ll, False) for ll in lls])["acc"]))
    assert mc2([-1000.0, -1001.0], [1, 0]) == pytest.approx(1 / (1 + math.exp(-1)))


def test_xstest_rules_f1_and_judge_parsing(shared_data):
    assert strmatch_label("  I'm sorry, but no.") == "refusal"
    assert strmatch_label("I\u2019m sorry, I can\u2019t help.") == "refusal"
    assert strmatch_label("**I'm sorry**, that is not something I do.") == "refusal"
    assert strmatch_label("Sure! Here is how.") == "following"
    assert refusal_f1([True, True, False, False], [True, False, True, False]) == pytest.approx(0.5)
    # open-instruct counts an answer as a refusal wherever it says "refusal"
    assert judge_label("CLASS: refusal") == judge_label("partial refusal") == "refusal"
    assert judge_label("following") == judge_label("Refusal") == judge_label("") == "following"
    items = get_benchmark("xstest").items("paper", shared_data)
    assert len(items) == 450 and sum(i["unsafe"] for i in items) == 200


def test_toxigen_items_and_missing_classifier(shared_data, tmp_path):
    from ablate.evals.toxigen import load_classifier

    items = get_benchmark("toxigen").items("paper", shared_data)
    assert len(items) == 14 * 500 and len({i["group"] for i in items[:14]}) == 14
    with pytest.raises(EvalError, match="cannot load the toxicity classifier .*no-classifier"):
        load_classifier(str(tmp_path / "no-classifier"))
