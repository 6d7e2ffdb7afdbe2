"""The paper's published preference splits (allenai/tulu-2.5-preference-data) and the raw PRM800k
release paired as the paper's code pairs it. The hub is not reachable here: files in the
dataset's exact schema are written by each test."""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from pathlib import Path

import pytest

import ablate.data.load as load
from ablate.data import load_preferences, load_prompts
from ablate.data.converters import NO_WRONG_SOLUTION
from ablate.data.registry import SOURCES, TULU25_PREFERENCES, TULU25_PREFERENCES_REVISION
from ablate.data.rows import (
    DIFFERENT_HISTORY, DUPLICATE, MISSING_FIELD, NOT_DRAWN, NOT_ENDING_WITH_ASSISTANT,
    SAME_RESPONSE, clean,
)
from ablate.spec.schema import DataRef
from ablate.spec.steps import PromptsRef

PAPER = Path(__file__).resolve().parents[2].parent / "shared" / "paper"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ABLATE_DATA_DIR", raising=False)


def chat(*turns):
    return [{"role": role, "content": content} for role, content in turns]


def pair(prompt, chosen, rejected, source="hh-rlhf"):
    """A row as the published files hold it: whole conversations sharing all but the last turn."""
    return {"chosen": chat(*prompt, ("assistant", chosen)),
            "rejected": chat(*prompt, ("assistant", rejected)), "source": source}


GOOD = [pair([("user", f"Question {i}?")], f"Good answer {i}.", "Bad answer.") for i in range(60)]
MULTI_TURN = pair([("user", "Hi"), ("assistant", "Hello!"), ("user", "Tell me a joke.")],
                  "A pun.", "No.")
BAD = [
    {"chosen": None, "rejected": chat(("user", "Q?"), ("assistant", "A."))},  # missing chosen
    {"chosen": chat(("user", "Q?"), ("assistant", "A.")), "rejected": []},  # empty rejected
    # ends on the user: nothing to prefer
    {"chosen": chat(("user", "Q?"), ("assistant", "A."), ("user", "More?")),
     "rejected": chat(("user", "Q?"), ("assistant", "B."), ("user", "More?"))},
    pair([("user", "Same?")], "Identical.", "Identical."),  # identical pair
    # each side has its own history: not one prompt
    {"chosen": chat(("user", "Hi"), ("assistant", "A1"), ("user", "Go on"), ("assistant", "A2")),
     "rejected": chat(("user", "Hi"), ("assistant", "B1"), ("user", "Go on"), ("assistant", "B2"))},
    GOOD[0],  # the same pair twice
]
EXPECTED_SKIPS = {MISSING_FIELD: 2, NOT_ENDING_WITH_ASSISTANT: 1, SAME_RESPONSE: 1,
                  DIFFERENT_HISTORY: 1, DUPLICATE: 1}


def write_split(root: Path, split: str, rows: list[dict]) -> Path:
    """The repository's layout: ``data/<split>-00000-of-00001.jsonl``."""
    path = root / "tulu-2.5-preference-data" / "data" / f"{split}-00000-of-00001.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_split_from_a_local_copy_trains_on_every_pair_and_counts_the_bad_rows(
        tmp_path, monkeypatch):
    write_split(tmp_path, "hh_rlhf", GOOD + [MULTI_TURN] + BAD)
    write_split(tmp_path, "hh_rlhf_60k", GOOD[:3])  # a neighbouring split's file is not read
    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path))
    data = load_preferences(DataRef(name="tulu25-hh-rlhf"))
    assert len(data) == 61  # every good pair: no share held out, as the paper trained
    assert data.skipped == EXPECTED_SKIPS
    assert len(data) + sum(data.skipped.values()) == len(GOOD) + 1 + len(BAD)
    multi = next(r for r in data.rows if r["chosen"][0]["content"] == "A pun.")
    assert multi["prompt"] == MULTI_TURN["chosen"][:-1]
    assert multi["rejected"] == [{"role": "assistant", "content": "No."}]
    assert {r["source"] for r in data.rows} == {"tulu25-hh-rlhf"}
    assert len(load_preferences(DataRef(name="tulu25-hh-rlhf-60k"))) == 3
    with pytest.raises(ValueError, match="'tulu25-hh-rlhf' has no test split: the paper trained"):
        load_preferences(DataRef(name="tulu25-hh-rlhf"), "test")


def test_data_show_names_the_split_its_skips_and_refuses_a_test_split(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ablate.data.cli import app

    write_split(tmp_path, "hh_rlhf", GOOD + BAD)
    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    out = CliRunner().invoke(app, ["show", "tulu25-hh-rlhf", "--n-examples", "0"])
    assert out.exit_code == 0, out.output
    assert "60 rows" in out.output and "the paper's size: 158,530 rows" in out.output
    for reason in EXPECTED_SKIPS:
        assert reason in out.output
    out = CliRunner().invoke(app, ["show", "tulu25-hh-rlhf", "--split", "test"])
    assert out.exit_code == 2 and "has no test split" in out.output
    listed = CliRunner().invoke(app, ["list"]).output
    assert "allenai/tulu-2.5-preference-data@6e87e7ba11ee, split hh_rlhf " in listed


def test_a_per_dataset_override_reads_the_same_file(tmp_path, monkeypatch):
    path = write_split(tmp_path, "nectar_60k", GOOD + BAD)
    monkeypatch.setenv("ABLATE_DATA_TULU25_NECTAR_60K", str(path))
    data = load_preferences(DataRef(name="tulu25-nectar-60k", max_rows=10, sample_seed=1))
    assert len(data) == 10 and data.skipped == EXPECTED_SKIPS
    prompts = load_prompts(PromptsRef(source="preference_data", name="tulu25-nectar-60k"))
    assert len(prompts) == 60 and prompts[0]["prompt"] == [{"role": "user",
                                                           "content": "Question 0?"}]


def test_the_hub_is_read_one_split_file_at_the_pinned_revision(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        return GOOD[:5]

    import datasets

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_preferences(DataRef(name="tulu25-ultrafeedback-mean-aspects"))
    assert len(data) == 5
    [(path, name, kwargs)] = calls
    assert (path, name) == ("allenai/tulu-2.5-preference-data", None)
    assert kwargs["split"] == "ultrafeedback_mean_aspects"
    assert kwargs["data_files"] == {"ultrafeedback_mean_aspects":
                                    "data/ultrafeedback_mean_aspects-*.jsonl"}
    assert kwargs["revision"] == TULU25_PREFERENCES_REVISION and len(kwargs["revision"]) == 40


def test_offline_without_a_local_copy_says_where_to_put_one(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(load.DataUnavailable, match=r"tulu-2.5-preference-data.*split=nectar, "
                                                   r"files=data/nectar-\*\.jsonl.*ABLATE_DATA_DIR"):
        load_preferences(DataRef(name="tulu25-nectar"))


def test_each_table1_row_has_a_split_of_the_papers_size():
    """Table 1's '#samples' column against the sources the Table 1 grid names for its rows."""
    import yaml

    grid = yaml.safe_load((Path(__file__).resolve().parents[2] / "grids" / "table1.yaml")
                          .read_text())
    with open(PAPER / "table1_preference_data.csv") as handle:
        sizes = {r["source"]: int(r["n_samples"]) for r in csv.DictReader(handle) if r["n_samples"]}
    assert len(sizes) == 14 == len(grid["axes"]["data"])
    for key in grid["axes"]["data"]:
        ref = grid["datasets"][key]
        source = SOURCES[ref["name"]]
        assert source.hub_id == TULU25_PREFERENCES and "max_rows" not in ref, key
        assert source.paper_rows == sizes[grid["labels"][key]], key


# ---------------------------------------------------------------- PRM800k, the raw release


def prm_row(problem, finish_reason, steps=("Step 1.", "So 5."), truth="Truth: 4."):
    """One line of openai/prm800k's phase2_train.jsonl (the fields the pairing reads, and some)."""
    return {"labeler": "l", "timestamp": "t", "generation": 1, "is_quality_control_question": False,
            "is_initial_screening_question": False,
            "question": {"problem": problem, "ground_truth_solution": truth,
                         "ground_truth_answer": "4", "pre_generated_steps": list(steps)
                         if steps is not None else None, "pre_generated_answer": "5",
                         "pre_generated_verifier_score": 0.1},
            "label": {"steps": [], "total_time": 1, "finish_reason": finish_reason}}


def prm_run(raws, seed=0):
    skipped = Counter()
    rows = clean(SOURCES["prm800k"].convert(raws, "prm800k", seed), skipped)
    return rows, dict(skipped)


def test_prm800k_pairs_a_problems_ground_truth_with_a_wrong_solution():
    raws = [prm_row("What is 2+2?", "found_error", ("2+2 is 5.",)),
            prm_row("What is 2+2?", "solution", ("2+2 is 4.",)),
            prm_row("What is 2+2?", "found_error", ("2+2 is 22.",)),
            # no solution with an error: no pair, each row counted
            prm_row("What is 3+3?", "solution"), prm_row("What is 3+3?", "give_up"),
            # a wrong solution without its steps is unusable (the rest of its problem is not)
            prm_row("What is 4+4?", "found_error", steps=None),
            prm_row("What is 4+4?", "found_error", ("4+4", "is 9.")),
            prm_row("What is 5+5?", "found_error", truth=None)]
    rows, skipped = prm_run(raws)
    assert [r["prompt"] for r in rows] == [[{"role": "user", "content": "What is 2+2?"}],
                                           [{"role": "user", "content": "What is 4+4?"}]]
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "Truth: 4."}]
    assert rows[0]["rejected"][0]["content"] in ("2+2 is 5.", "2+2 is 22.")
    assert rows[1]["rejected"] == [{"role": "assistant", "content": "4+4\nis 9."}]
    assert skipped == {NOT_DRAWN: 2, NO_WRONG_SOLUTION: 2,
                       "question: pre_generated_steps is not a list of strings": 1,
                       "question: no ground_truth_solution": 1}
    assert len(rows) + sum(skipped.values()) == len(raws)  # a pair stands for one raw row
    # the draw is the problem's own: another row order gives the same pairs
    shuffled = raws[:]
    random.Random(3).shuffle(shuffled)
    assert sorted(map(json.dumps, prm_run(shuffled)[0])) == sorted(map(json.dumps, rows))


def test_prm800k_reads_the_phase2_files_of_a_local_copy(tmp_path, monkeypatch):
    folder = tmp_path / "prm800k"
    folder.mkdir()
    (folder / "phase2_train.jsonl").write_text(
        "".join(json.dumps(prm_row(f"Problem {i}?", "found_error")) + "\n" for i in range(3)))
    (folder / "phase2_test.jsonl").write_text(json.dumps(prm_row("Held?", "found_error")) + "\n")
    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path))
    assert len(load_preferences(DataRef(name="prm800k"))) == 3
    assert len(load_preferences(DataRef(name="prm800k"), "test")) == 1
