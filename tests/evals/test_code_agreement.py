"""HumanEval+/MBPP+ verdicts, scored through `ablate eval --outputs`, agree with evalplus's own
evaluator on identical programs.

Candidates are each problem's canonical solution and mutants of it (one operator or constant
changed), so that both verdicts occur; evalplus decides with `check_correctness` (base and plus
inputs against outputs of the canonical solution, its ground truth computed by `get_groundtruth`),
ablate with its sandboxed program (the canonical solution run once per task in the sandbox for
the expected outputs and their times, then each candidate).
"""

from __future__ import annotations

import gzip
import json

import pytest

from ablate.evals import get_benchmark

MUTATIONS = (("<=", "<"), ("<", "<="), (">", ">="), ("+ 1", "+ 2"), ("- 1", ""), ("==", "!="),
             ("True", "False"), ("sorted(", "list("), ("0", "1"))
PROBLEMS_PER_BENCHMARK = 8


def mutants(code: str) -> list[str]:
    """Each mutation applied at its first occurrence, the ones that change the code."""
    variants = []
    for old, new in MUTATIONS:
        if old in code:
            variants.append(code.replace(old, new, 1))
    return variants[:4]


def evalplus_verdicts(dataset: str, problems: dict, solutions: list[tuple[str, str]],
                      cache_dir, monkeypatch) -> list[bool]:
    import evalplus.evaluate as evalplus_evaluate
    from evalplus.eval import PASS

    monkeypatch.setattr(evalplus_evaluate, "CACHE_DIR", str(cache_dir))
    truth = evalplus_evaluate.get_groundtruth(problems, f"ablate-{dataset}-check", [])
    verdicts = []
    for k, (task_id, solution) in enumerate(solutions):
        result = evalplus_evaluate.check_correctness(dataset, k, problems[task_id], solution,
                                                     truth[task_id])
        verdicts.append(result["base"][0] == PASS and result["plus"][0] == PASS)
    return verdicts


def read_problems(path, count: int) -> dict:
    problems = {}
    with gzip.open(path, "rt") as rows:
        for line in rows:
            row = json.loads(line)
            problems[row["task_id"]] = row
            if len(problems) == count:
                break
    return problems


def evalplus_mbpp_problems(items: list[dict]) -> dict:
    """ablate's MBPP+ items as evalplus's loader gives them."""
    problems = {i["item_id"]: {k: v for k, v in i.items() if k != "item_id"} for i in items}
    for problem in problems.values():  # evalplus's loader decodes these from their JSON strings
        for key in ("base_input", "plus_input"):
            if isinstance(problem[key], str):
                problem[key] = json.loads(problem[key])
        problem["atol"] = float(problem["atol"] or 0)
        problem["prompt"] = ""  # the canonical solution is a whole program in MBPP+
    return problems


@pytest.mark.parametrize("task_id", ["Mbpp/793", "Mbpp/106", "Mbpp/580", "Mbpp/64", "Mbpp/737",
                                     "Mbpp/787", "Mbpp/255"])
def test_mbpp_plus_canonical_solutions_pass_where_inputs_need_evalplus_types(shared_data,
                                                                               task_id):
    """Mbpp/793 has no plus inputs ({} in the file); 106, 580 and 64 take tuples that the file
    holds as JSON lists, which evalplus turns back before calling the function; 737 and 787
    return match objects, which EvalPlus compares only as found or not; 255 needs more than
    2 GB."""
    bench = get_benchmark("mbpp_plus")
    item = next(i for i in bench.items("full", shared_data) if i["item_id"] == task_id)
    outcome = bench.program(item, item["canonical_solution"]).run()
    assert outcome.passed, outcome


def test_mbpp_plus_accepts_an_answer_in_another_order_where_evalplus_does(shared_data):
    bench = get_benchmark("mbpp_plus")
    item = next(i for i in bench.items("full", shared_data) if i["item_id"] == "Mbpp/2")
    reordered = "def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b)))\n"
    assert bench.program(item, reordered).run().passed
    wrong = "def similar_elements(a, b):\n    return tuple(set(a) | set(b))\n"
    assert not bench.program(item, wrong).run().passed


@pytest.mark.slow
def test_mbpp_599_heavy_inputs_pass_within_their_own_time_limits(shared_data):
    """sum_average takes inputs up to 1e8: ~20 s of CPU for the canonical solution alone, which the
    old single 20 s budget for canonical + candidate could not hold. Each input now has its own
    limit (4 x the canonical's time on it), and EvalPlus's plus check allows 63 s in all."""
    bench = get_benchmark("mbpp_plus")
    item = next(i for i in bench.items("full", shared_data) if i["item_id"] == "Mbpp/599")
    outcome = bench.program(item, item["canonical_solution"]).run()
    assert outcome.passed, outcome
    # another program at the canonical's speed passes; how much slower one may be depends on
    # the machine's load (a Python loop, about 2 x, took 40 s on the idle machine and 64.5 s, over
    # the plus check's 63 s, beside a parallel build)
    backwards = ("def sum_average(number):\n    total = sum(range(number, 0, -1))\n"
                 "    return total, total / number\n")
    assert bench.program(item, backwards).run().passed
    # a Python loop through str and int, about 10 times slower: over its limit on the first big
    # input, on any load
    loop = ("def sum_average(number):\n    total = 0\n    for i in range(1, number + 1):\n"
            "        total += int(str(i))\n    return total, total / number\n")
    slow = bench.program(item, loop).run()
    assert not slow.passed and "limit" in slow.detail, slow


SAMPLES = 5  # pass@k's n (every item of an outputs file has as many): canonical + 4 mutants


def samples_of(code: str) -> list[str]:
    """The canonical solution and its mutants, repeated up to SAMPLES."""
    group = [code, *mutants(code)]
    return [group[k % len(group)] for k in range(SAMPLES)]


def passed_through_outputs(tmp_path, shared_data, benchmark: str,
                           samples: dict[str, list[str]]) -> dict[str, list[bool]]:
    """Each sample's verdict after scoring ``samples`` with `ablate eval --outputs` (full
    protocol: the EvalPlus release's tasks)."""
    from typer.testing import CliRunner

    from ablate.evals.cli import app

    path, out = tmp_path / "outputs.jsonl", tmp_path / "out"
    path.write_text("".join(json.dumps({"benchmark": benchmark, "item_id": task_id,
                                        "output": group}) + "\n"
                            for task_id, group in samples.items()))
    result = CliRunner().invoke(app, ["--outputs", str(path), "--out", str(out), "--data-dir",
                                      str(shared_data), "--protocol", "full", "--limit",
                                      str(len(samples))])
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in (out / benchmark / "scores.jsonl").read_text().splitlines()]
    return {row["item_id"]: row["passed"] for row in rows}


def assert_same_verdicts(samples: dict[str, list[str]], ours: dict[str, list[bool]],
                         theirs: list[bool]) -> None:
    flat = [v for t in samples for v in ours[t]]
    print(f"{len(flat)} programs, {sum(flat)} pass")
    assert True in flat and False in flat  # both verdicts are exercised
    owners = [t for t in samples for _ in ours[t]]
    disagreements = [t for t, a, b in zip(owners, flat, theirs) if a != b]
    assert flat == theirs, f"verdicts differ on {disagreements}"


@pytest.mark.slow
def test_humaneval_plus_outputs_score_as_evalplus(shared_data, tmp_path, monkeypatch):
    items = get_benchmark("humaneval_plus").items("full", shared_data)[:PROBLEMS_PER_BENCHMARK]
    problems = read_problems(shared_data / "humaneval_plus" / "HumanEvalPlus-v0.1.10.jsonl.gz",
                             PROBLEMS_PER_BENCHMARK)
    assert [i["item_id"] for i in items] == list(problems)
    samples = {i["item_id"]: samples_of(i["canonical_solution"]) for i in items}
    ours = passed_through_outputs(tmp_path, shared_data, "humaneval_plus", samples)
    theirs = evalplus_verdicts("humaneval", problems,
                               [(t, problems[t]["prompt"] + body)
                                for t, group in samples.items() for body in group],
                               tmp_path / "evalplus", monkeypatch)
    assert_same_verdicts(samples, ours, theirs)


@pytest.mark.slow
def test_mbpp_plus_outputs_score_as_evalplus(shared_data, tmp_path, monkeypatch):
    items = get_benchmark("mbpp_plus").items("full", shared_data)[:PROBLEMS_PER_BENCHMARK]
    problems = evalplus_mbpp_problems(items)
    samples = {i["item_id"]: samples_of(i["canonical_solution"]) for i in items}
    ours = passed_through_outputs(tmp_path, shared_data, "mbpp_plus", samples)
    theirs = evalplus_verdicts("mbpp", problems,
                               [(t, code) for t, group in samples.items() for code in group],
                               tmp_path / "evalplus", monkeypatch)
    assert_same_verdicts(samples, ours, theirs)
