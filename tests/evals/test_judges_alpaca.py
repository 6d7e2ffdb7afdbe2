"""Judges (cache, retries, failures) and AlpacaEval's win rates against the official leaderboard."""

from __future__ import annotations

import json
import random

import pytest

from ablate.evals import EvalError
from ablate.evals.alpaca import judge_messages, parse_preference, winrates
from ablate.evals.judges import OpenAIJudge, get_judge
from ablate.spec.schema import JudgeSpec
from fake_openai import FakeEndpoint


def test_openai_judge_retries_caches_and_counts_failures(endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "secret-123")
    judge = OpenAIJudge(endpoint, "judge-model", "JUDGE_KEY", tmp_path, backoff_s=0.01,
                        concurrency=1)
    FakeEndpoint.script = [429, 503]
    assert judge.complete(["pick-M please"]) == ["M"]
    assert judge.calls == 3 and FakeEndpoint.seen[-1][0] == "Bearer secret-123"
    again = OpenAIJudge(endpoint, "judge-model", "JUDGE_KEY", tmp_path, backoff_s=0.01)
    assert again.complete(["pick-M please"]) == ["M"] and again.calls == 0  # from the disk cache
    FakeEndpoint.script = [400]
    assert judge.complete(["pick-m now"]) == [None]  # not retryable: one failed judgement
    assert "secret-123" not in (tmp_path / "judgements" / "openai.jsonl").read_text()
    monkeypatch.delenv("JUDGE_KEY")
    with pytest.raises(EvalError, match="JUDGE_KEY"):
        OpenAIJudge(endpoint, "other", "JUDGE_KEY", tmp_path).complete(["x"])


def test_a_failed_judgement_logs_its_cause_without_the_key(endpoint, tmp_path, monkeypatch,
                                                           caplog):
    monkeypatch.setenv("JUDGE_KEY", "secret-123")
    judge = OpenAIJudge(endpoint, "judge-model", "JUDGE_KEY", tmp_path, backoff_s=0.01,
                        concurrency=1)
    FakeEndpoint.script = [400]
    with caplog.at_level("WARNING", logger="ablate.evals.judges"):
        assert judge.complete(["pick-m now"]) == [None]
    assert "HTTP Error 400" in caplog.text and endpoint in caplog.text
    assert "secret-123" not in caplog.text


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_stops_at_once_naming_endpoint_and_variable(endpoint, tmp_path,
                                                                  monkeypatch, status):
    monkeypatch.setenv("JUDGE_KEY", "secret-123")
    judge = OpenAIJudge(endpoint, "judge-model", "JUDGE_KEY", tmp_path, backoff_s=0.01,
                        concurrency=1)
    FakeEndpoint.script = [status] * 5
    with pytest.raises(EvalError, match=f"{endpoint}: HTTP {status}.*JUDGE_KEY") as raised:
        judge.complete(["pick-m now", "pick-M too"])
    assert "secret-123" not in str(raised.value)
    assert judge.calls == 1  # not retried, and the next prompt is not sent


def test_a_judge_definition_makes_its_judge(tmp_path, endpoint):
    judge = get_judge(JudgeSpec(base_url=endpoint, model="m", api_key_env="K", timeout_s=5,
                                concurrency=2), tmp_path)
    assert isinstance(judge, OpenAIJudge) and judge.model == "m"
    assert (judge.timeout_s, judge.concurrency) == (5, 2)
    with pytest.raises(EvalError, match="'old-gpt4' is an old store's judge"):
        get_judge(JudgeSpec(kind="unrecorded", name="old-gpt4"), tmp_path)
    with pytest.raises(EvalError, match="needs a path or the step's reward_model input"):
        get_judge(JudgeSpec(kind="reward_model"), tmp_path)


def test_preference_parsing():
    assert parse_preference({"text": "m"}) == 1.0 and parse_preference({"text": "M"}) == 2.0
    assert parse_preference({"text": "the second"}) is None and parse_preference(None) is None
    weighted = parse_preference({"top_logprobs": [{"token": "M", "logprob": -0.1},
                                                  {"token": "m", "logprob": -2.0}]})
    assert 1.8 < weighted < 1.9
    messages = judge_messages("Say hi", "hello", "hey")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert '"""Say hi"""' in messages[1]["content"] and '"""hey"""' in messages[1]["content"]


def test_alpaca_eval_1_asks_its_own_annotator_for_a_ranking():
    from ablate.evals import get_benchmark
    from ablate.evals.alpaca import parse_ranking

    ae1, ae2 = get_benchmark("alpaca_eval_1"), get_benchmark("alpaca_eval_2")
    assert (ae1.annotator, ae1.judge_max_tokens, ae1.judge_logprobs) == \
        (("alpaca_eval_gpt4", "alpaca_eval.txt"), 100, False)
    messages = judge_messages("Say hi", "hello", "hey", annotator=ae1.annotator)
    assert "ranks models by the quality of their answers" in messages[0]["content"]
    assert '"""hey"""' in messages[1]["content"]
    first = "[{'model': 'model_1', 'rank': 1}, {'model': 'model_2', 'rank': 2}]"
    second = "[{'model': 'model_1', 'rank': 2}, {'model': 'model_2', 'rank': 1}]"
    assert ae1.parse_judgement({"text": first}) == 1.0
    assert ae1.parse_judgement({"text": second}) == 2.0
    assert parse_ranking({"text": "model_2 is better"}) is None and parse_ranking(None) is None
    # AlpacaEval 2 keeps the m/M classifier
    assert ae2.parse_judgement({"text": "M"}) == 2.0 and ae2.judge_max_tokens == 1


def test_win_rate_reproduces_the_alpaca_eval_1_leaderboard(shared_data):
    rows = json.loads((shared_data / "alpaca_eval" / "annotations"
                       / "tulu-2-dpo-13b__alpaca_eval_gpt4.json").read_text())
    annotations = [{"preference": float(r["preference"]) if r["preference"] is not None else None,
                    "output_1": r["output_1"], "output_2": r["output_2"], "index": k,
                    "generator_1": r["generator_1"], "generator_2": r["generator_2"]}
                   for k, r in enumerate(rows)]
    rates = winrates([a for a in annotations if a["preference"] is not None], None)
    assert rates["win_rate"] == pytest.approx(88.12189054726367, abs=1e-6)


def test_missing_difficulty_file_is_a_clear_error(tmp_path):
    annotations = [{"preference": 2.0, "output_1": "a", "output_2": "bb", "index": 0,
                    "generator_1": "ref", "generator_2": "model"}]
    with pytest.raises(EvalError, match="does not exist"):
        winrates(annotations, tmp_path / "df_gamed.csv")


def test_judgement_cache_survives_a_torn_last_line(tmp_path):
    from ablate.evals.judges import JudgementCache

    path = tmp_path / "openai.jsonl"
    path.write_text('{"key": "a", "answer": {"winner": 1}}\n{"key": "b", "ans')  # killed mid-write
    cache = JudgementCache(path)
    assert cache.get("a") == {"winner": 1} and cache.get("b") is None
    cache.put("b", {"winner": 2})
    reloaded = JudgementCache(path)
    assert reloaded.get("a") == {"winner": 1} and reloaded.get("b") == {"winner": 2}


def test_identical_outputs_are_draws_the_judge_never_sees(endpoint, tmp_path, monkeypatch,
                                                           fake_env):
    from ablate.evals import get_benchmark

    monkeypatch.setenv("K", "key")
    bench = get_benchmark("alpaca_eval_1")
    items = [{"item_id": str(k), "index": k, "instruction": f"task {k}", "reference": ref,
              "reference_generator": "ref", "dataset": ""}
             for k, ref in enumerate(["same words", "pick-M: the reference", "short"])]
    outputs = {"task 0": "same words", "task 1": "mine", "task 2": "also mine"}
    ranking = "[{'model': 'model_1', 'rank': 1}, {'model': 'model_2', 'rank': 2}]"
    FakeEndpoint.answer = staticmethod(lambda content: ranking)  # the first output shown wins
    judge = JudgeSpec(base_url=endpoint, model="m", api_key_env="K")
    env = fake_env("paper", lambda prompt: outputs[prompt.split("\n")[1]], judge=judge,
                   cache_dir=tmp_path, seed=3)
    results = bench.evaluate(items, env)
    assert len(FakeEndpoint.seen) == 2
    assert all("same words" not in body["messages"][-1]["content"]
               for _, body in FakeEndpoint.seen)
    rng = random.Random(3)
    shown_first = [rng.random() < 0.5 for _ in items]  # True: the model's output came first
    assert [r.extra["preference"] for r in results] == \
        [1.5] + [2.0 if first else 1.0 for first in shown_first[1:]]
    summary = bench.summarize(results)
    wins = sum(shown_first[1:])
    assert summary.value == pytest.approx(100 * (0.5 + wins) / 3)
    counts = {k: summary.secondary[k] for k in ("n_wins", "n_wins_base", "n_draws", "n_total")}
    assert counts == {"n_wins": wins, "n_wins_base": 2 - wins, "n_draws": 1, "n_total": 3}
    assert all(type(v) is int for v in counts.values())
