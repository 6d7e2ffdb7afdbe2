"""The sampler: greedy passes through; best-of-N keeps the reward model's favourite sample."""

from __future__ import annotations

import pytest

from ablate.evals import EvalEnv, EvalError
from ablate.spec.schema import BestOfN
from ablate.spec.steps import EvalStep


def env(tmp_path, backend, sampler=None, **kwargs) -> EvalEnv:
    config = EvalStep(benchmark="gsm8k", protocol="paper", seed=0,
                      **({"sampler": sampler} if sampler else {}))
    return EvalEnv(model_dir=tmp_path, config=config, _backend=backend, **kwargs)


def eval_config(bench, limit, **fields) -> EvalStep:
    return EvalStep(benchmark=bench, protocol="paper", seed=0, limit=limit, **fields)


class FakeBackend:
    tokenizer = None

    def __init__(self):
        self.calls = []

    def generate(self, prompts, params, progress=None):
        self.calls.append(params)
        return [[f"{p}:{'x' * (k + 1)}" for k in range(params.n)] for p in prompts]


def longest_wins(model_dir, reward_dtype, prompts, responses):
    """Best-of-N's rewards (``best_of_n_rewards``) as a stand-in: the longer, the better."""
    assert len(prompts) == len(responses)
    return [float(len(r)) for r in responses]


def test_greedy_and_best_of_n(monkeypatch, tmp_path):
    import ablate.generate.reward_model as reward_model

    monkeypatch.setattr(reward_model, "best_of_n_rewards", longest_wins)
    backend = FakeBackend()
    greedy = env(tmp_path, backend)
    assert greedy.generate(["a"], 5) == [["a:x"]] and backend.calls[-1].greedy
    best = env(tmp_path, backend, BestOfN(n=4, temperature=0.7, seed=3),
               reward_model_dir=tmp_path)
    assert best.generate(["a", "b"], 5) == [["a:xxxx"], ["b:xxxx"]]
    assert backend.calls[-1].n == 4 and backend.calls[-1].temperature == 0.7
    assert backend.calls[-1].seed == 3
    # code benchmarks ask for their own samples: best-of-N leaves those alone
    assert len(best.generate(["a"], 5, n=3, temperature=0.8)[0]) == 3
    # greedy samples are one reply: decoded once and repeated (vLLM refuses greedy n > 1)
    calls = len(backend.calls)
    assert greedy.generate(["a", "b"], 5, n=3) == [["a:x"] * 3, ["b:x"] * 3]
    assert len(backend.calls) == calls + 1 and backend.calls[-1].n == 1
    # ... under a best-of-N sampler too: those are the benchmark's own samples, not reranked
    assert best.generate(["a"], 5, n=3) == [["a:x"] * 3]
    assert backend.calls[-1].n == 1 and backend.calls[-1].greedy and best.best_of_n_calls == 1
    with pytest.raises(EvalError, match="reward_model"):
        env(tmp_path, backend, BestOfN(n=2)).generate(["a"], 5)


def test_result_says_whether_best_of_n_applied(monkeypatch, tmp_path):
    """Best-of-N reranks greedy generations (GSM8k); MMLU scores log-likelihoods, so its score
    under a best-of-N sampler is the model's own, and result.json says so."""
    import ablate.generate.reward_model as reward_model
    from ablate.evals.runner import evaluate_benchmark

    class ScoringBackend(FakeBackend):
        def loglikelihood(self, requests, progress=None):
            return [[-float(k) for k in range(len(options))] for _, options in requests]

    monkeypatch.setattr(reward_model, "best_of_n_rewards", longest_wins)
    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path / "none"))  # the shipped slices
    sampler = BestOfN(n=2, temperature=0.7, seed=1)
    applied = {}
    for bench, limit in (("gsm8k", 2), ("mmlu", 4)):
        result = evaluate_benchmark(eval_config(bench, limit, sampler=sampler), tmp_path,
                                    tmp_path / bench, reward_model_dir=tmp_path,
                                    backend=ScoringBackend())
        applied[bench] = result.model_extra["sampler_applied"]
    assert applied == {"gsm8k": True, "mmlu": False}
    greedy = evaluate_benchmark(eval_config("gsm8k", 2), tmp_path, tmp_path / "greedy",
                                backend=ScoringBackend())
    assert "sampler_applied" not in greedy.model_extra


def test_an_evaluation_gives_back_the_backend_it_loaded(monkeypatch, tmp_path):
    """A local grid runs its eval steps in one process: each must release its model (vLLM holds
    most of the GPU) before the next loads one; a backend handed in stays the caller's."""
    import ablate.generate
    from ablate.evals.runner import evaluate_benchmark

    class ClosingBackend(FakeBackend):
        closed = 0

        def close(self):
            ClosingBackend.closed += 1

    monkeypatch.setattr(ablate.generate, "load_backend", lambda *a, **k: ClosingBackend())
    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path / "none"))
    evaluate_benchmark(eval_config("gsm8k", 1), tmp_path, tmp_path / "own")
    assert ClosingBackend.closed == 1
    evaluate_benchmark(eval_config("gsm8k", 1), tmp_path, tmp_path / "given",
                       backend=ClosingBackend())
    assert ClosingBackend.closed == 1
