"""The preference format's pure functions: checks, transcripts, sampling, mixtures, lengths."""

from __future__ import annotations

from collections import Counter

import pytest

from ablate.data.rows import (
    BROKEN_TURNS, DUPLICATE, MISSING_FIELD, NON_STRING, SAME_RESPONSE, TOO_LONG, PreferenceData,
    SkipRow, check_row, clean, downsample, filter_by_length, is_held_out, make_row,
    mix_preferences, parse_transcript, split_shared_prompt, user,
)


def pair(prompt="Hi?", chosen="Hello.", rejected="Go away.", source="t"):
    return make_row([user(prompt)], chosen, rejected, source)


def test_a_clean_pair_passes():
    assert check_row(pair()) is None


@pytest.mark.parametrize("row, reason", [
    (pair(prompt=""), MISSING_FIELD),
    (pair(chosen="   "), MISSING_FIELD),
    (pair(rejected=None), MISSING_FIELD),
    (pair(chosen=42), NON_STRING),
    (pair(prompt=["a list"]), NON_STRING),
    (pair(chosen="Same.", rejected="Same. "), SAME_RESPONSE),
    ({**pair(), "prompt": []}, MISSING_FIELD),
    ({**pair(), "prompt": [{"role": "assistant", "content": "x"}]}, BROKEN_TURNS),
    ({**pair(), "prompt": [user("a"), user("b")]}, BROKEN_TURNS),
    ({**pair(), "prompt": [{"role": "robot", "content": "a"}]}, BROKEN_TURNS),
    ({**pair(), "chosen": [user("not an assistant")]}, BROKEN_TURNS),
])
def test_bad_rows_get_their_reason(row, reason):
    assert check_row(row) == reason


def test_system_prompt_then_alternating_turns_is_fine():
    row = pair()
    row["prompt"] = [{"role": "system", "content": "Be kind."}, user("a"),
                     {"role": "assistant", "content": "b"}, user("c")]
    assert check_row(row) is None


def test_clean_counts_every_reason_and_drops_duplicates():
    skipped = Counter()
    rows = clean([pair(), pair(), pair(chosen=None), SkipRow("tie (no preference)"),
                  pair(prompt="Other?")], skipped)
    assert len(rows) == 2
    assert skipped == {DUPLICATE: 1, MISSING_FIELD: 1, "tie (no preference)": 1}


def test_parse_transcript_alternates_and_drops_trailing_empty_assistant():
    text = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Bye?\n\nAssistant:"
    assert parse_transcript(text) == [user("Hi there"), {"role": "assistant", "content": "Hello!"},
                                      user("Bye?")]


@pytest.mark.parametrize("text, reason", [
    (None, MISSING_FIELD), (5, NON_STRING),
    ("\n\nHuman: a\n\nAssistant: b\n\nAssistant: c", BROKEN_TURNS),
    ("\n\nAssistant: starts wrong", BROKEN_TURNS),
    ("no speakers at all", BROKEN_TURNS),
])
def test_parse_transcript_rejects_broken_text(text, reason):
    with pytest.raises(SkipRow) as info:
        parse_transcript(text)
    assert info.value.reason == reason


def test_split_shared_prompt_needs_the_same_history():
    a = [user("q"), {"role": "assistant", "content": "good"}]
    b = [user("q"), {"role": "assistant", "content": "bad"}]
    assert split_shared_prompt(a, b) == ([user("q")], [a[1]], [b[1]])
    with pytest.raises(SkipRow):
        split_shared_prompt(a, [user("other q"), b[1]])


def test_downsample_is_seeded_ordered_and_a_subset():
    rows = list(range(100))
    first, again, other = downsample(rows, 10, 1), downsample(rows, 10, 1), downsample(rows, 10, 2)
    assert first == again and first != other
    assert first == sorted(first) and set(first) <= set(rows)
    assert downsample(rows, None, 0) == rows and downsample(rows, 500, 0) == rows


def test_held_out_is_by_prompt_and_about_five_percent():
    rows = [pair(prompt=f"question {i}") for i in range(4000)]
    held = [r for r in rows if is_held_out(r)]
    assert 0.035 < len(held) / len(rows) < 0.065
    assert is_held_out(pair(prompt="question 7", chosen="x")) == is_held_out(pair(prompt="question 7"))


def test_mixture_follows_weights_and_is_reproducible():
    a = PreferenceData("a", [pair(prompt=f"a{i}", source="a") for i in range(100)], {"tie": 2})
    b = PreferenceData("b", [pair(prompt=f"b{i}", source="b") for i in range(30)])
    mix = mix_preferences("m", [(a, 3.0), (b, 1.0)], seed=0)
    counts = Counter(r["source"] for r in mix.rows)
    assert counts == {"a": 90, "b": 30}  # b limits the size: 30 / 0.25 = 120 rows
    assert mix.skipped == {"tie": 2}
    assert mix.rows == mix_preferences("m", [(a, 3.0), (b, 1.0)], seed=0).rows
    assert Counter(r["source"] for r in mix_preferences("m", [(a, 1), (b, 1)], total=40).rows) == \
        {"a": 20, "b": 20}
    with pytest.raises(ValueError, match="part 'b' has 30 rows"):
        mix_preferences("m", [(a, 1), (b, 1)], total=100)


class WordTokenizer:
    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": text.split()}


def test_filter_by_length_drops_long_pairs_and_counts_them():
    data = PreferenceData("d", [pair(chosen="short"), pair(prompt="Other", rejected="very " * 50)])
    kept = filter_by_length(data, WordTokenizer(), max_length=20)
    assert len(kept) == 1 and kept.skipped == {TOO_LONG: 1}
    assert len(filter_by_length(data, WordTokenizer(), max_length=20, max_prompt_length=1)) == 0


def test_filter_by_length_with_the_models_chat_template(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = PreferenceData("d", [pair(), pair(prompt="Other", chosen="word " * 300)])
    kept = filter_by_length(data, tokenizer, max_length=128)
    assert [r["prompt"][0]["content"] for r in kept.rows] == ["Hi?"]
