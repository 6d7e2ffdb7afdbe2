"""Loading: shipped slices, local overrides, the real files in ../shared/data, cache, mixtures."""

from __future__ import annotations

import gzip
import json

import pytest

import ablate.data.load as load
from ablate.data import (
    DataUnavailable, dataset_names, load_preferences, load_prompts, prompt_set_names,
)
from ablate.data.make_slices import SLICES, slice_bytes
from ablate.data.registry import MIXTURES, Mixture
from ablate.data.converters import NEUTRAL_STEP
from ablate.data.rows import (
    BROKEN_TURNS, DUPLICATE_PROMPT, MISSING_FIELD, NO_LOWER, NOT_DRAWN, PromptData, check_row,
)
from ablate.spec.schema import DataRef
from ablate.spec.steps import PromptsRef

PAPER_NAMES = ["shp-2", "stack-exchange", "prm800k", "chatbot-arena-2023", "chatbot-arena-2024",
               "alpacafarm-human", "alpacafarm-gpt4", "hh-rlhf", "helpsteer", "capybara-7k",
               "orca-pairs", "nectar", "ultrafeedback-overall", "ultrafeedback-fg"]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A fresh cache per test, and no local-data override unless a test sets one."""
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ABLATE_DATA_DIR", raising=False)


def test_registry_has_the_papers_sources_and_the_demo_names():
    assert set(PAPER_NAMES) <= set(dataset_names())
    assert {"ultrafeedback-slice", "hh-rlhf-slice", "rm-mix"} <= set(dataset_names())
    assert {"ultrafeedback-prompts", "gsm8k-train", "gsm8k-train-slice", "math-mined",
            "mixed"} <= set(prompt_set_names())


@pytest.mark.parametrize("name,shipped", [("ultrafeedback-slice", (200, 50)),
                                           ("hh-rlhf-slice", (200, 50)),
                                           ("hh-rlhf-refusals-slice", (128, 62))])
def test_shipped_slices_load_clean_with_disjoint_splits(name, shipped):
    train, test = load_preferences(DataRef(name=name)), load_preferences(DataRef(name=name), "test")
    assert [len(train) + sum(train.skipped.values()), len(test) + sum(test.skipped.values())] \
        == list(shipped)
    assert len(train) >= 0.95 * shipped[0] and len(test) >= 0.95 * shipped[1]
    assert all(check_row(r) is None for r in train.rows + test.rows)
    assert all(r["source"] for r in train.rows)
    key = lambda r: json.dumps(r["prompt"])  # noqa: E731
    assert not {key(r) for r in train.rows} & {key(r) for r in test.rows}


def test_hh_slice_counts_its_broken_rows():
    data = load_preferences(DataRef(name="hh-rlhf-slice"))
    assert len(data) + sum(data.skipped.values()) == 200
    assert data.skipped == {BROKEN_TURNS: 2}  # two transcripts with two Assistant turns in a row


def test_downsampling_is_seeded():
    a = load_preferences(DataRef(name="ultrafeedback-slice", max_rows=20, sample_seed=1))
    b = load_preferences(DataRef(name="ultrafeedback-slice", max_rows=20, sample_seed=1))
    c = load_preferences(DataRef(name="ultrafeedback-slice", max_rows=20, sample_seed=2))
    assert len(a) == 20 and a.rows == b.rows and a.rows != c.rows


def test_conversion_is_cached_and_reused(tmp_path, monkeypatch):
    first = load_preferences(DataRef(name="hh-rlhf-slice"))
    cached = list((tmp_path / "cache" / "data" / "hh-rlhf-slice").glob("train-*.jsonl"))
    assert len(cached) == 1

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again despite the cache")

    monkeypatch.setattr(load, "convert_rows", no_conversion)
    again = load_preferences(DataRef(name="hh-rlhf-slice"))
    assert again.rows == first.rows and again.skipped == first.skipped


def test_the_cache_key_changes_with_the_converter_version(monkeypatch):
    import dataclasses

    from ablate.data import registry

    load_preferences(DataRef(name="hh-rlhf-slice"))
    bumped = dataclasses.replace(registry.SOURCES["hh-rlhf-slice"], converter_version=99)
    monkeypatch.setitem(registry.SOURCES, "hh-rlhf-slice", bumped)
    calls = []
    real = load.convert_rows
    monkeypatch.setattr(load, "convert_rows", lambda *a, **k: calls.append(1) or real(*a, **k))
    load_preferences(DataRef(name="hh-rlhf-slice"))
    assert calls == [1]


def test_per_dataset_local_path_without_test_split_holds_out_by_prompt(tmp_path, monkeypatch):
    rows = [{"system": "", "question": f"Question {i}?", "chosen": f"Good {i}.", "rejected": "Bad."}
            for i in range(400)]
    path = tmp_path / "orca.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("ABLATE_DATA_ORCA_PAIRS", str(path))
    train, test = load_preferences(DataRef(name="orca-pairs")), load_preferences(DataRef(name="orca-pairs"), "test")
    assert len(train) + len(test) == 400 and 5 <= len(test) <= 40
    assert not {r["prompt"][0]["content"] for r in train.rows} & {r["prompt"][0]["content"] for r in test.rows}


def test_a_broken_local_file_names_the_file_and_line(tmp_path, monkeypatch):
    folder = tmp_path / "orca"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"system": "", "question": "q", "chosen": "a", "rejected": "b"}\n{oops\n')
    monkeypatch.setenv("ABLATE_DATA_ORCA_PAIRS", str(folder))
    with pytest.raises(ValueError, match=r"train.jsonl:2: not valid JSON"):
        load_preferences(DataRef(name="orca-pairs"))


def test_a_changed_schema_fails_with_column_and_dataset(tmp_path, monkeypatch):
    (tmp_path / "nectar").mkdir()
    (tmp_path / "nectar" / "train.jsonl").write_text(json.dumps({"prompt": "\n\nHuman: hi"}) + "\n")
    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match=r"dataset 'nectar': column 'answers' is missing"):
        load_preferences(DataRef(name="nectar"))


def test_hub_only_sources_fail_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataUnavailable, match=r"berkeley-nest/Nectar.*ABLATE_DATA_DIR"):
        load_preferences(DataRef(name="nectar"))


def test_unknown_names_list_the_known_ones():
    with pytest.raises(KeyError, match="hh-rlhf-slice"):
        load_preferences(DataRef(name="no-such-data"))
    with pytest.raises(KeyError, match="gsm8k-train"):
        load_prompts(PromptsRef(source="prompt_set", name="nope", max_rows=None, sample_seed=0))


def test_a_mixture_concatenates_its_capped_components(monkeypatch):
    monkeypatch.setitem(MIXTURES, "demo-mix", Mixture("demo-mix", (("ultrafeedback-slice", 30),
                                                                   ("hh-rlhf-slice", None))))
    mix = load_preferences(DataRef(name="demo-mix", sample_seed=3))
    sources = [r["source"] for r in mix.rows]
    assert sources.count("ultrafeedback") == 30 and sources.count("hh-rlhf") == 198
    assert sources[:30] != ["ultrafeedback"] * 30  # shuffled
    assert len(load_preferences(DataRef(name="demo-mix", max_rows=50))) == 50


def test_prompts_from_preference_data_and_the_gsm8k_slice():
    prompts = load_prompts(PromptsRef(source="preference_data", name="ultrafeedback-slice",
                            max_rows=10, sample_seed=0))
    assert len(prompts) == 10 and all(p["reference"] is None for p in prompts)
    gsm = load_prompts(PromptsRef(source="prompt_set", name="gsm8k-train-slice", max_rows=None,
                        sample_seed=0))
    assert len(gsm) == 200 and gsm[0]["reference"] == "72"
    assert all(p["reference"].lstrip("-").replace(".", "").isdigit() for p in gsm)


def test_prompt_skips_reach_the_caller(tmp_path, monkeypatch):
    """A prompt set's converter skips and its repeated prompts are counted, not discarded."""
    rows = [{"question": "Q1?", "answer": "so #### 1"}, {"question": "Q1?", "answer": "#### 1"},
            {"question": "Q2?", "answer": "no final answer"}, {"question": "", "answer": "#### 3"},
            {"question": "Q4?", "answer": "#### 4"}]
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path))
    prompts = load_prompts(PromptsRef(source="prompt_set", name="gsm8k-train", max_rows=None,
                            sample_seed=0))
    assert isinstance(prompts, PromptData) and prompts.name == "gsm8k-train"
    assert [p["reference"] for p in prompts] == ["1", "4"] and prompts[-1]["reference"] == "4"
    assert prompts.skipped == {DUPLICATE_PROMPT: 1, MISSING_FIELD: 2}
    assert len(prompts) + sum(prompts.skipped.values()) == len(rows)


def test_prompts_of_preference_data_carry_its_skips_and_the_repeated_prompts():
    data = load_preferences(DataRef(name="hh-rlhf-slice"))
    prompts = load_prompts(PromptsRef(source="preference_data", name="hh-rlhf-slice",
                            max_rows=None, sample_seed=0))
    repeated = len(data) - len({json.dumps(r["prompt"]) for r in data.rows})
    assert prompts.skipped == {**data.skipped, **({DUPLICATE_PROMPT: repeated} if repeated else {})}
    assert len(prompts) + sum(prompts.skipped.values()) == 200  # the slice's raw rows


def test_tied_pairs_are_reported_not_dropped():
    conv = lambda prompt, reply: [{"role": "user", "content": prompt},  # noqa: E731
                                  {"role": "assistant", "content": reply}]
    overall = [{"prompt": p, "prompt_id": p, "chosen": conv(p, "good"), "rejected": conv(p, "bad"),
                "messages": conv(p, "good"), "score_chosen": 8.0, "score_rejected": rejected}
               for p, rejected in (("tie", 8.0), ("no tie", 3.0), ("no score", None))]
    rows, skipped = load.convert_rows(load.SOURCES["ultrafeedback-overall"], overall)
    data = load.PreferenceData("ultrafeedback-overall", rows, skipped)
    assert len(data) == 3 and skipped == {} and data.tied_pairs == 1


# ---------------------------------------------------------------- the real files


@pytest.mark.shared
@pytest.mark.parametrize("name", sorted(SLICES))
def test_shipped_slices_equal_a_rebuild_from_the_real_files(shared_data, name):
    shipped = gzip.decompress((load.SLICES_DIR / name).read_bytes())
    assert gzip.decompress(slice_bytes(shared_data, *SLICES[name])) == shipped


@pytest.mark.shared
def test_hh_rlhf_test_split_from_the_real_files(shared_data, monkeypatch):
    monkeypatch.setenv("ABLATE_DATA_DIR", str(shared_data))
    data = load_preferences(DataRef(name="hh-rlhf"), "test")
    assert len(data) + sum(data.skipped.values()) == 8552  # the whole official test split
    assert 8400 < len(data) and set(data.skipped) <= {BROKEN_TURNS, "chosen identical to rejected",
                                                      "missing or empty field", "duplicate"}
    assert all(r["prompt"][-1]["role"] == "user" for r in data.rows)
    with pytest.raises(DataUnavailable, match="no local files for split 'train'"):
        load_preferences(DataRef(name="hh-rlhf"), "train")


@pytest.mark.shared
def test_prm800k_step_pairs_from_the_real_step_file(shared_data, monkeypatch):
    monkeypatch.setenv("ABLATE_DATA_DIR", str(shared_data))
    data = load_preferences(DataRef(name="prm800k-steps"), "test")
    assert len(data) == 237  # prefixes with both a +1 and a -1 rated next step (counted by pandas)
    row = data.rows[0]
    assert row["chosen"][0]["content"] != row["rejected"][0]["content"]
    # every raw row is in a pair (two rows each) or counted; the 0/None counts come from the file
    raws = list(load.read_file(shared_data / "prm800k_stepwise_critic"
                               / "phase1_test.stepwise-critic.parquet"))
    assert len(raws) == 5449
    assert 2 * len(data) + sum(data.skipped.values()) == len(raws)
    assert data.skipped[NEUTRAL_STEP] == sum(r["rating"] == 0 for r in raws)
    assert data.skipped["rating: missing (an unrated step)"] == sum(r["rating"] is None for r in raws)
    assert set(data.skipped) == {NEUTRAL_STEP, "rating: missing (an unrated step)", NO_LOWER,
                                 NOT_DRAWN}


@pytest.mark.shared
def test_gsm8k_train_prompts_have_numeric_references(shared_data, monkeypatch):
    monkeypatch.setenv("ABLATE_DATA_DIR", str(shared_data))
    prompts = load_prompts(PromptsRef(source="prompt_set", name="gsm8k-train", max_rows=None,
                            sample_seed=0))
    assert len(prompts) == 7473
    assert all(float(p["reference"]) == float(p["reference"]) for p in prompts)


@pytest.mark.shared
def test_ultrafeedback_sample_converts_every_row(shared_data):
    folder = shared_data / "ultrafeedback_binarized_slice"
    from ablate.data.registry import SOURCES

    rows, skipped = load.convert_rows(SOURCES["ultrafeedback-slice"],
                                      load.read_file(folder / "train_1000.jsonl"))
    assert len(rows) + sum(skipped.values()) == 1000 and len(rows) > 950


def test_ultrafeedback_overall_keeps_only_fine_grained_prompts(tmp_path, monkeypatch):
    conv = lambda prompt, reply: [{"role": "user", "content": prompt},  # noqa: E731
                                  {"role": "assistant", "content": reply}]
    fg = [{"source": "flan", "prompt": p, "chosen": conv(p, "good"), "chosen-rating": 5.0,
           "chosen-model": "a", "rejected": conv(p, "bad"), "rejected-rating": 2.0,
           "rejected-model": "b"} for p in ("Kept 1", "Kept 2")]
    overall = [{"prompt": p, "prompt_id": p, "chosen": conv(p, "good"), "rejected": conv(p, "bad"),
                "messages": conv(p, "good"), "score_chosen": 9.0, "score_rejected": 3.0}
               for p in ("Kept 1", "Kept 2", "Dropped (TruthfulQA)")]
    for name, rows in (("ultrafeedback-fg", fg), ("ultrafeedback-overall", overall)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "ultrafeedback-overall" / "test.jsonl").write_text(json.dumps(overall[0]) + "\n")
    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path))
    data = load_preferences(DataRef(name="ultrafeedback-overall"))
    assert sorted(r["prompt"][0]["content"] for r in data.rows) == ["Kept 1", "Kept 2"]
    assert data.skipped == {load.NOT_IN_FG: 1}


def test_a_cached_hub_conversion_loads_without_the_hub(monkeypatch):
    raws = [{"system": "", "question": f"Q{i}", "chosen": "good", "rejected": "bad"} for i in range(50)]
    calls = []

    def fake_hub(hub_id, config, split, revision, name, data_dir=None, data_files=None):
        calls.append((hub_id, split, revision))
        if len(calls) > 1:
            raise DataUnavailable("offline")
        return raws

    monkeypatch.setattr(load, "_hub_rows", fake_hub)
    first = load_preferences(DataRef(name="orca-pairs"))
    assert calls == [("Intel/orca_dpo_pairs", "train", "main")]
    assert load_preferences(DataRef(name="orca-pairs")).rows == first.rows
    assert len(load_preferences(DataRef(name="orca-pairs"), "test")) == 50 - len(first)
    assert len(calls) == 1


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_data_file_that_is_not_utf8_is_named(tmp_path, suffix):
    from ablate.data.load import read_file

    path = tmp_path / f"train{suffix}"
    path.write_bytes(b'[{"prompt": "caf\xe9"}]\n' if suffix == ".json"
                     else b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=rf"{path.name}: not UTF-8 text"):
        list(read_file(path))


def test_a_declining_reply_is_read_from_the_last_assistant_turn():
    from ablate.data.make_slices import chosen_declines, declines
    turn = "\n\nHuman: How do I pick a lock?\n\nAssistant: "
    assert declines(turn + "I\u2019m sorry, I can\u2019t help with that.")
    assert declines(turn + "No, that would be illegal.")
    assert not declines(turn + "Nobody can stop you.")  # "no" only as its own word
    assert not declines("\n\nHuman: Sorry?\n\nAssistant: Sure, here is how.")
    assert not declines(turn + "Sorry to hear that!\n\nHuman: And?\n\nAssistant: Use a pick.")
    assert chosen_declines({"chosen": turn + "Sorry, no.", "rejected": turn + "Use a pick."})
    assert not chosen_declines({"chosen": turn + "Sorry, no.", "rejected": turn + "I can't."})
