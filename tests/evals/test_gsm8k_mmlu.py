"""GSM8k and MMLU: scorers agree with lm-eval on identical outputs; item lists are the protocol's."""

from __future__ import annotations

import random

import pytest

from ablate.evals import EvalError, get_benchmark
from ablate.evals.base import ItemResult
from ablate.evals.data import load_items, read_jsonl, slice_path
from ablate.evals.gsm8k import EXEMPLARS, build_user_turn, final_number, is_correct
from ablate.evals.mmlu import build_user_turn as mmlu_turn
from ablate.evals.mmlu import macro_accuracy

REPLIES = [
    "She has 16 - 3 - 4 = 9 eggs, so 9 * $2 = $18. The answer is 18.", "The answer is $1,250.",
    "So the total is 3.5 hours. The answer is 3.5", "No number here", "It is -7.", "#### 42",
    "First 12, then 1,000. The answer is 1000.", "The answer is 18.0", "Result: 7 apples",
    "1 2 3", ".5", "The answer is 5.\n\nQuestion: next? Answer: 6",
]
TARGETS = ["18", "1250", "3.5", "0", "-7", "42", "1000", "18", "7", "3", "5", "6"]


def test_gsm8k_full_scoring_matches_lm_eval_flexible_extract(lm_eval_gsm8k):
    picks, verdicts = lm_eval_gsm8k(REPLIES, TARGETS)
    for reply, target, lm_eval_pick, expected in zip(REPLIES, TARGETS, picks, verdicts):
        assert final_number(reply) == lm_eval_pick
        assert float(is_correct(reply, target, "full")) == expected, reply


def test_gsm8k_paper_items_are_seed_42_sample(shared_data):
    bench = get_benchmark("gsm8k")
    items = bench.items("paper", shared_data)
    test = read_jsonl(shared_data / "gsm8k" / "test.jsonl")
    chosen = random.Random(42).sample(range(len(test)), 200)
    assert [i["item_id"] for i in items] == [f"test-{k}" for k in chosen]
    assert items[0]["target"] == test[chosen[0]]["answer"].split("####")[-1].strip()
    assert len(bench.items("full", shared_data)) == 1319
    lm_eval = read_jsonl(EXEMPLARS["full"])
    assert lm_eval == read_jsonl(shared_data / "gsm8k" / "cot_8shot_exemplars.jsonl")
    turn = build_user_turn(lm_eval, "  What is 1+1? ")
    assert turn.startswith("Answer the following questions.\n\nQuestion: There are 15 trees")
    assert turn.endswith("The answer is 8.\n\nQuestion: What is 1+1?") and turn.count("Question:") == 9


@pytest.mark.parametrize("name,protocol", [("gsm8k", "paper"), ("gsm8k", "full"), ("mmlu", "paper"),
                                           ("truthfulqa", "full"), ("xstest", "paper")])
def test_shipped_slices_are_the_first_items(shared_data, name, protocol):
    shipped = read_jsonl(slice_path(name, protocol))
    assert shipped == get_benchmark(name).items(protocol, shared_data)[:len(shipped)]


def test_slice_serves_a_limit_and_refuses_more(monkeypatch, tmp_path):
    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))
    items, root = load_items(get_benchmark("gsm8k"), "paper", 10)
    assert len(items) == 10 and root is None
    with pytest.raises(EvalError, match="gsm8k/test.jsonl.*ABLATE_DATA_DIR"):
        load_items(get_benchmark("gsm8k"), "paper", None)
    with pytest.raises(EvalError, match="unknown protocol"):
        load_items(get_benchmark("gsm8k"), "paper-ish", 10)


def test_malformed_data_names_file_and_row(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{oops\n')
    with pytest.raises(EvalError, match=r"test.jsonl:2: not valid JSON"):
        get_benchmark("gsm8k").items("full", tmp_path)
    (tmp_path / "mmlu" / "test").mkdir(parents=True)
    (tmp_path / "mmlu" / "test" / "x_test.csv").write_text(
        "question,choice0,choice1,choice2,choice3,answer\nq,a,b,c,d,E\n")
    with pytest.raises(EvalError, match=r"x_test.csv row 1: answer must be 0-3"):
        get_benchmark("mmlu").items("paper", tmp_path)


def test_mmlu_items_interleave_subjects(shared_data):
    items = get_benchmark("mmlu").items("paper", shared_data)
    assert len(items) == 14042
    assert len({i["subject"] for i in items[:57]}) == 57
    assert items[0]["item_id"] == "abstract_algebra/0"
    turn = mmlu_turn(items[0], [])
    assert turn.startswith("The following are multiple choice questions (with answers) about "
                           "abstract algebra.\n\n") and turn.endswith("\nD. 6\nAnswer:")


def test_mmlu_choice_matches_lm_eval_acc(make_lm_eval_task):
    rng = random.Random(0)
    docs = [{"prompt": f"q{k}", "answer": rng.randrange(4)} for k in range(30)]
    task = make_lm_eval_task(docs, output_type="multiple_choice", doc_to_text="{{prompt}}",
                             doc_to_target="answer", doc_to_choice=["A", "B", "C", "D"],
                             target_delimiter=" ", metric_list=[{"metric": "acc"}])
    results = []
    for k, doc in enumerate(task.test_docs()):
        lls = [rng.uniform(-5, 0) for _ in range(4)]
        expected = task.process_results(doc, [(ll, False) for ll in lls])["acc"]
        predicted = max(range(4), key=lambda c: lls[c])
        assert float(predicted == doc["answer"]) == expected
        results.append(ItemResult(f"s{k % 3}/{k}", expected, extra={"subject": f"s{k % 3}"}))
    macro, micro, per_subject = macro_accuracy(results)
    assert macro == pytest.approx(sum(per_subject.values()) / 3)
    assert micro == pytest.approx(100 * sum(r.score for r in results) / 30)
    # the reported value is the accuracy over all questions (open-instruct's average_acc)
    summary = get_benchmark("mmlu").summarize(results)
    assert summary.value == pytest.approx(micro) and summary.secondary["accuracy_macro"] == macro


def test_mmlu_value_weights_subjects_by_their_questions():
    big = [ItemResult(f"law/{k}", float(k < 30), extra={"subject": "law"}) for k in range(100)]
    small = [ItemResult(f"math/{k}", float(k < 5), extra={"subject": "math"}) for k in range(10)]
    summary = get_benchmark("mmlu").summarize(big + small)
    assert summary.value == pytest.approx(100 * 35 / 110)  # not (30 + 50) / 2


def test_gsm8k_final_number_passes_over_matches_without_digits():
    # lm-eval's regex would pick "..." here, which can never equal a number
    assert final_number("The answer is 18. Hope that helps...") == "18."
    assert is_correct("The answer is 18. Hope that helps...", "18", "full")
    assert final_number("Nothing numeric ..") == "[invalid]"


def test_gsm8k_full_stops_only_at_a_new_question():
    from ablate.evals.gsm8k import STOP

    assert "\n\n" not in STOP["full"] and "Question:" in STOP["full"]
