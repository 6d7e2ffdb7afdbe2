"""The paper protocol against open-instruct's evaluation code (allenai/open-instruct@959cbbc9d,
eval/{bbh,gsm,mmlu,toxigen}/run_eval.py): its item draws, prompt text and answer comparison,
re-derived here from its rules, item by item on the shared data."""

from __future__ import annotations

import json
import random

import pytest

from ablate.evals import get_benchmark
from ablate.evals.base import ItemResult
from ablate.evals.data import read_jsonl

TASKS_FIRST_DRAWS = {  # random.seed(42), then random.sample(examples, 40) per task in sorted order
    "boolean_expressions": [163, 28, 6, 189, 70, 62],
    "causal_judgement": [40, 178, 108, 87, 71, 39],
    "dyck_languages": [174, 108, 152, 16, 98, 97],
    "word_sorting": [184, 104, 125, 142, 194, 61],
}


def hf_exact_match(prediction: str, target: str) -> bool:
    # the exact_match of Hugging Face evaluate that open-instruct loads (lm-eval carries its code)
    from lm_eval.api.metrics import exact_match_hf_evaluate

    return exact_match_hf_evaluate([prediction], [target], ignore_case=True,
                                   ignore_punctuation=True)["exact_match"] == 1.0


# ------------------------------------------------------------------------------------------ BBH
def test_bbh_paper_items_are_one_seed_42_generator_across_tasks(shared_data):
    items = get_benchmark("bbh").items("paper", shared_data)
    rng = random.Random(42)
    expected = []
    for path in sorted((shared_data / "bbh" / "bbh").glob("*.json")):
        examples = json.loads(path.read_text())["examples"]
        expected += [(path.stem, e["input"], e["target"]) for e in rng.sample(examples, 40)]
    assert [(i["task"], i["input"], i["target"]) for i in items] == expected
    for task, head in TASKS_FIRST_DRAWS.items():
        drawn = [int(i["item_id"].split("/")[1]) for i in items if i["task"] == task]
        assert drawn[:6] == head, task


@pytest.mark.parametrize("reply,target,correct", [
    ("] ] )", "} >", False),  # two symbols against one: "  " != " ", not "" == ""
    ("} ] >", "] )", False),
    ("So the answer is ] }.", "] }", True),
    ("So the answer is ) ].", "} >", True),  # open-instruct's rule counts the symbols only
    ("So the answer is (A).", "(A)", True), ("So the answer is yes.", "Yes", True),
    ("the answer is  24 .", "24", True), ("So the answer is y es.", "yes", False),
    ("No idea", "(A)", False),
    ("Thus |he answer is (B).", "(B)", True),  # its pattern's class [t|T] takes "|" too
])
def test_bbh_exact_match_is_open_instructs(reply, target, correct):
    from ablate.evals.bbh import extract_answer, is_correct

    assert is_correct(reply, target) == correct
    assert hf_exact_match(extract_answer(reply), target) == correct


def test_bbh_an_all_bracket_answer_matches_only_targets_of_its_length(shared_data, fake_env):
    bbh = get_benchmark("bbh")
    items = [i for i in bbh.items("full", shared_data) if i["task"] == "dyck_languages"]
    env = fake_env("full", lambda prompt: "So the answer is ].", data_root=shared_data)
    results = bbh.evaluate(items, env)
    one_symbol = [i["item_id"] for i in items if len(i["target"].split()) == 1]
    assert [r.item_id for r in results if r.score] == one_symbol
    assert 0 < len(one_symbol) < len(items) / 2


def test_bbh_paper_stops_only_at_the_end_of_turn_and_reports_the_task_mean(shared_data,
                                                                           fake_env):
    bbh = get_benchmark("bbh")
    env = fake_env("paper", lambda prompt: "So the answer is True.", data_root=shared_data)
    bbh.evaluate(bbh.items("paper", shared_data)[:1], env)
    assert env.stop == ()
    full = fake_env("full", env.reply, data_root=shared_data)
    bbh.evaluate(bbh.items("full", shared_data)[:1], full)
    assert full.stop == ("\n\nQ:", "\n\n\n")
    results = [ItemResult("a/0", 1.0, extra={"task": "a"})] + [
        ItemResult(f"b/{k}", float(k == 0), extra={"task": "b"}) for k in range(3)]
    summary = bbh.summarize(results)
    assert summary.value == pytest.approx((100 + 100 / 3) / 2)
    assert summary.secondary["item_micro"] == pytest.approx(50.0)
    assert summary.secondary["exact_match_b"] == pytest.approx(100 / 3)


# ---------------------------------------------------------------------------------------- GSM8k
@pytest.mark.parametrize("reply,target,prediction,correct", [
    ("So the answer is 1,250.", "1250", "1250", True),
    ("First 12, then 1,000,000. So the answer is 1000000.", "1,000,000", "1000000", True),
    ("It is -7.", "7", "7", True),  # the sign is punctuation to evaluate's exact match
    ("So the total is 3.5 hours.", "3.5", "3.5", True),
    ("The answer is 18.0", "18", "18.0", False),
    ("The answer is .5", "0.5", ".5", False),
    ("So the answer is 5.\n\nQuestion: next? Answer: 6", "5", "6", False),
    ("No number here", "0", "No number here", False),
])
def test_gsm8k_paper_answer_is_open_instructs_last_number(reply, target, prediction, correct):
    from ablate.evals.gsm8k import is_correct, last_number

    assert last_number(reply) == prediction
    assert is_correct(reply, target, "paper") == correct
    assert hf_exact_match(prediction, target) == correct


def test_gsm8k_paper_prompt_and_stops_are_open_instructs(shared_data, fake_env):
    gsm8k = get_benchmark("gsm8k")
    items = gsm8k.items("paper", shared_data)[:3]
    env = fake_env("paper", lambda prompt: "So the answer is 3.")
    results = gsm8k.evaluate(items, env)
    assert env.stop == ()
    # open-instruct's exemplars are lm-eval's (Wei et al.'s) with "So the answer is" for "The
    # answer is"
    lm_eval = read_jsonl(shared_data / "gsm8k" / "cot_8shot_exemplars.jsonl")
    shots = "\n\n".join(f"Question: {e['question']}\nAnswer: "
                        + e["target"].replace(" The answer is ", " So the answer is ")
                        for e in lm_eval)
    for item, result in zip(items, results):
        user = ("Answer the following questions.\n\n" + shots + "\n\nQuestion: "
                + item["question"].strip())
        assert result.prompt == f"<|user|>\n{user}\n<|assistant|>\nAnswer:"
        assert result.score == float(item["target"] == "3")
    full = fake_env("full", env.reply)
    assert "The answer is 6." in gsm8k.evaluate(items, full)[0].prompt
    assert full.stop == ("Question:",)


# ----------------------------------------------------------------------------------------- MMLU
def open_instruct_mmlu_prompt(frame, k: int, subject: str) -> str:
    """open-instruct's gen_prompt with no shots, then format_example, on a pandas-read file."""
    prompt = f"The following are multiple choice questions (with answers) about " \
             f"{''.join(' ' + w for w in subject.split('_'))}.\n\n" + frame.iloc[k, 0]
    for j, letter in enumerate("ABCD"):
        prompt += f"\n{letter}. {frame.iloc[k, j + 1]}"
    return prompt + "\nAnswer:"


def test_mmlu_paper_prompt_is_open_instructs_byte_for_byte(shared_data):
    import pandas as pd

    from ablate.evals.mmlu import build_user_turn

    items = get_benchmark("mmlu").items("paper", shared_data)
    assert build_user_turn(items[0], [], "paper") == (
        "The following are multiple choice questions (with answers) about  abstract algebra.\n\n"
        "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
        "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:")
    by_id = {i["item_id"]: i for i in items}
    assert by_id["college_mathematics/8"]["choices"][0] == "nan"  # pandas reads "None" as NaN
    frames = {}
    for item in items:
        subject, k = item["item_id"].split("/")
        if subject not in frames:
            frames[subject] = pd.read_csv(shared_data / "mmlu" / "test" / f"{subject}_test.csv")
        assert build_user_turn(item, [], "paper") == \
            open_instruct_mmlu_prompt(frames[subject], int(k), subject), item["item_id"]
    full = {i["item_id"]: i for i in get_benchmark("mmlu").items("full", shared_data)}
    assert full["college_mathematics/8"]["choices"][0] == "None"
    assert build_user_turn(full["abstract_algebra/0"], []).startswith(
        "The following are multiple choice questions (with answers) about abstract algebra.")


# -------------------------------------------------------------------------------------- ToxiGen
def test_toxigen_paper_items_are_open_instructs_shuffle(shared_data):
    from ablate.evals.toxigen import GROUPS

    assert list(GROUPS) == sorted(GROUPS)
    rng = random.Random(42)
    expected = {}
    for group in GROUPS:
        path = shared_data / "toxigen" / "prompts" / f"hate_{group}_1k.txt"
        lines = [line.strip() for line in path.open()]
        rng.shuffle(lines)
        expected[group] = [p.replace("\\\\", "\\").replace("\\n", "\n") for p in lines[:500]]
    items = get_benchmark("toxigen").items("paper", shared_data)
    assert len(items) == 14 * 500 and [i["group"] for i in items[:14]] == list(GROUPS)
    for group in GROUPS:
        assert [i["prompt"] for i in items if i["group"] == group] == expected[group], group
    heads = {g: [i["item_id"] for i in items if i["group"] == g][:4] for g in ("asian", "black")}
    assert heads == {"asian": ["asian/776", "asian/507", "asian/895", "asian/922"],
                     "black": ["black/606", "black/998", "black/471", "black/699"]}
    full = get_benchmark("toxigen").items("full", shared_data)
    assert len(full) == 14 * 1000 and full[14]["item_id"] == "asian/1"


def test_toxigen_unescapes_backslashes_before_new_lines(tmp_path):
    from ablate.evals.toxigen import read_prompts

    path = tmp_path / "hate_x_1k.txt"
    path.write_text("a staple\\\\\\n- b\n  families\\\\n\\n- c  \n")
    assert read_prompts(path) == ["a staple\\\n- b", "families\n\n- c"]
