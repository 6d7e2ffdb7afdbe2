"""The transformers backend against plain transformers calls on the tiny model."""

from __future__ import annotations

import pytest
import torch

from ablate.generate import GenerationError, SamplingParams, truncate_at_stop
from ablate.generate.hf import HFBackend, _common_prefix_len, pack_by_budget


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    return HFBackend(tiny_model_dir, token_budget=2048, max_batch=3, min_shared_prefix=4)


def reference_greedy(backend, prompt: str, max_new: int) -> list[int]:
    ids = torch.tensor([backend.encode(prompt)])
    out = backend.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_new, eos_token_id=list(backend.eos_ids),
                                 pad_token_id=backend.pad_id)
    return out[0, ids.shape[1]:].tolist()


def test_pure_helpers():
    assert _common_prefix_len([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert _common_prefix_len([[5], [6]]) == 0
    assert pack_by_budget([3, 10, 5, 1], budget=20, max_batch=8) == [[1, 2], [0, 3]]
    assert truncate_at_stop("a\n\nQuestion: b", ["Question:", "\n\n"]) == "a"
    with pytest.raises(GenerationError):
        SamplingParams(max_new_tokens=0)


def test_greedy_matches_transformers_generate_with_shared_prefix(backend):
    shared = "Answer the following questions step by step, carefully. " * 3
    prompts = [shared + q for q in ("What is 2+2?", "Name a colour.", "Why?",
                                    "A much longer question about trains and their speeds?")]
    texts = backend.generate(prompts, SamplingParams(max_new_tokens=12))
    for prompt, [text] in zip(prompts, texts):
        expected = backend.tokenizer.decode(reference_greedy(backend, prompt, 12),
                                            skip_special_tokens=True)
        assert text == expected


@pytest.mark.slow
def test_stop_strings_and_sampling_reproducible(backend):
    prompts = ["Tell me a story.", "Count to ten."]
    full = backend.generate(prompts, SamplingParams(max_new_tokens=16))
    stop = full[0][0][3:5]
    cut = backend.generate(prompts, SamplingParams(max_new_tokens=16, stop=(stop,)))
    assert cut[0][0] == truncate_at_stop(full[0][0], [stop])
    params = SamplingParams(max_new_tokens=8, n=3, temperature=1.0, seed=7)
    first = backend.generate(prompts, params)
    assert len(first) == 2 and all(len(samples) == 3 for samples in first)
    assert len(set(first[0])) > 1  # temperature 1 over a random model: the samples differ
    assert backend.generate(prompts, params) == first  # same seed, same samples
    assert backend.generate(prompts, SamplingParams(max_new_tokens=8, n=3, temperature=1.0,
                                                    seed=8)) != first


def test_loglikelihood_matches_full_forward(backend):
    requests = [("The capital of France is", [" Paris", " a big city", " B"]),
                ("Answer:", [" A", " B", " C", " D"]),
                ("Q: what? A:", [" yes, certainly not"])]
    got = backend.loglikelihood(requests)
    for (context, options), scores in zip(requests, got):
        for option, score in zip(options, scores):
            ctx, cont = backend._encode_pair(context, option)
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                logprobs = torch.log_softmax(backend.model(ids).logits[0].float(), -1)
            expected = sum(float(logprobs[len(ctx) - 1 + t, tok]) for t, tok in enumerate(cont))
            assert score == pytest.approx(expected, abs=1e-4)


def test_batched_one_token_options_match_unpadded_forwards(backend):
    # Questions of different lengths share a right-padded, mask-free batch (the MMLU path).
    requests = [(f"Question {k}: " + "why " * (3 + 5 * k) + "Answer:", [" A", " B", " C", " D"])
                for k in range(6)]
    got = backend.loglikelihood(requests)
    for (context, options), scores in zip(requests, got):
        ctx, _ = backend._encode_pair(context, options[0])
        with torch.no_grad():
            logprobs = torch.log_softmax(backend.model(torch.tensor([ctx])).logits[0, -1].float(), -1)
        expected = [float(logprobs[backend._encode_pair(context, o)[1][0]]) for o in options]
        assert scores == pytest.approx(expected, abs=1e-4)
