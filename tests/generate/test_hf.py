"""The transformers backend against plain transformers calls on the tiny model."""

from __future__ import annotations

import pytest
import torch

from ablate.generate import GenerationError, SamplingParams, truncate_at_stop
from ablate.generate.hf import HFBackend, PromptLookup, _common_prefix_len, pack_by_budget


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


def test_replies_end_at_the_models_window(backend, monkeypatch):
    """A reply stops where the model's positions end (AlpacaEval asks for 8192 tokens of models
    with 4096), and a prompt that fills the window is an error naming it."""
    short, long = "Name a colour.", "A much longer question about trains and their speeds?"
    window = len(backend.encode(long)) + 5
    monkeypatch.setattr(backend.model.config, "max_position_embeddings", window)
    [[cut], [free]] = backend.generate([long, short], SamplingParams(max_new_tokens=12))
    tokens = backend.tokenizer(cut, add_special_tokens=False)["input_ids"]
    assert 0 < len(tokens) <= 5
    assert cut == backend.tokenizer.decode(reference_greedy(backend, long, 5),
                                           skip_special_tokens=True)
    room = window - len(backend.encode(short))
    assert free == backend.tokenizer.decode(reference_greedy(backend, short, min(12, room)),
                                            skip_special_tokens=True)
    monkeypatch.setattr(backend.model.config, "max_position_embeddings", len(backend.encode(long)))
    with pytest.raises(GenerationError, match="prompt 1 has .* window"):
        backend.generate([short, long], SamplingParams(max_new_tokens=4))


def test_drafted_steps_never_feed_positions_past_the_window(backend, monkeypatch):
    """Rows are padded to the widest draft of the step; a pad slot's position must not run past
    the model's window (a learned position table would index out of range)."""
    from ablate.generate import hf

    monkeypatch.setattr(hf.PromptLookup, "draft", lambda self, k: [self.tokens[-1]] * max(k, 0))
    long, short = "Tell me about the sea and the ships. " * 3 + "Go.", "Tell me"
    window = len(backend.encode(long)) + 6
    monkeypatch.setattr(backend.model.config, "max_position_embeddings", window)
    seen = []
    hook = backend.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(int(kwargs["position_ids"].max())),
        with_kwargs=True)
    try:
        replies = backend.generate([long, short], SamplingParams(max_new_tokens=40))
    finally:
        hook.remove()
    assert max(seen) < window
    # forced drafts are verified: the reply is still plain greedy, cut at the window
    assert replies[0][0] == backend.tokenizer.decode(reference_greedy(backend, long, 6),
                                                     skip_special_tokens=True)


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


def test_prompt_lookup_drafts_what_followed_the_latest_match():
    lookup = PromptLookup([5, 6, 7, 8, 5, 6, 9, 1, 2], max_n=3)
    assert lookup.draft(3) == []  # the last token, 2, was never followed by anything yet
    lookup.append(5)
    lookup.append(6)
    assert lookup.draft(2) == [9, 1]  # [5, 6] last occurred before 9 (the latest match wins)
    lookup.append(7)
    assert lookup.draft(4) == [8, 5, 6, 9]  # the 3-gram [5, 6, 7] beats the 1-gram [7]
    assert lookup.draft(0) == []


@pytest.fixture(scope="module")
def lively_model_dirs(tiny_model_dir, tmp_path_factory):
    """The tiny model with its matrices scaled up: at 3x its greedy replies repeat a token for a
    while and then switch (drafts partly accepted), at 10x every token is new (drafts rejected).
    At 1x it repeats one token forever, which would make every draft right."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folders = {}
    for scale in (3.0, 10.0):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        with torch.no_grad():
            for name, weight in model.named_parameters():
                if weight.dim() == 2 and "embed" not in name:
                    weight.mul_(scale)
        folders[scale] = tmp_path_factory.mktemp(f"lively{scale:g}")
        model.save_pretrained(folders[scale])
        AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folders[scale])
    return folders


@pytest.mark.parametrize("scale", [3.0, 10.0])
def test_continuous_batching_matches_one_at_a_time_greedy(lively_model_dirs, scale):
    # 2 rows in the batch for 6 prompts, replies ending at different lengths (extra EOS tokens
    # taken from the references), a shared prefix, and drafts off and on: every reply must be the
    # one plain greedy decoding of that prompt alone gives.
    backend = HFBackend(lively_model_dirs[scale], max_batch=2, min_shared_prefix=4,
                        step_tokens=16)
    shared = "Solve the problem and show the working: "
    prompts = [shared + q for q in ("2 + 2?", "a train leaves at noon, when?", "x", "name a bird",
                                    "the longest of these six questions about rivers?", "why")]
    plain = [reference_greedy(backend, p, 24) for p in prompts]
    backend.eos_ids = backend.eos_ids | {plain[0][7], plain[1][3], plain[2][13]}
    # generate() keeps the EOS token it stopped at; the backend drops it.
    references = [[t for t in reference_greedy(backend, p, 24) if t not in backend.eos_ids]
                  for p in prompts]
    assert len({len(r) for r in references}) >= 3  # rows really do finish at different steps
    forwards = {}
    for max_draft in (0, 4):
        backend.max_draft = max_draft
        calls = []
        handle = backend.model.register_forward_pre_hook(lambda module, args: calls.append(1))
        try:
            got = backend.generate(prompts, SamplingParams(max_new_tokens=24))
        finally:
            handle.remove()
        assert [g[0] for g in got] == [backend.tokenizer.decode(r, skip_special_tokens=True)
                                       for r in references], f"max_draft={max_draft}"
        forwards[max_draft] = len(calls)
    if scale == 3.0:  # replies that repeat themselves: accepted drafts save forwards
        assert forwards[4] < 0.7 * forwards[0], forwards


def test_dropping_holes_keeps_outputs(lively_model_dirs, monkeypatch):
    # No spare room and holes dropped early: the cache drops rejected drafts' holes and grows.
    from ablate.generate import hf

    backend = HFBackend(lively_model_dirs[3.0], max_batch=3, min_shared_prefix=4, max_draft=5,
                        step_tokens=18)
    prompts = ["Tell me about the sea. " * 3 + end for end in ("Go.", "Now go on.", "Begin")]
    expected = [backend.tokenizer.decode(reference_greedy(backend, p, 40), skip_special_tokens=True)
                for p in prompts]
    compactions = []
    ensure_room = hf._DecodeBatch._ensure_room

    def watched(self, slots):
        before = self.cache.get_seq_length()
        start = ensure_room(self, slots)
        if start < before:
            compactions.append((before, start))
        return start

    monkeypatch.setattr(hf._DecodeBatch, "spare_slots", 0)
    monkeypatch.setattr(hf._DecodeBatch, "min_holes", 4)
    monkeypatch.setattr(hf._DecodeBatch, "_ensure_room", watched)
    got = backend.generate(prompts, SamplingParams(max_new_tokens=40))
    assert compactions
    assert [g[0] for g in got] == expected


def test_attention_reads_shared_kv_heads_with_the_same_result(backend, tiny_model_dir):
    # Left-padded prefill (several positions under a mask) on the tiny model's 4 query / 2 KV
    # heads: ablate's attention must give transformers' sdpa logits exactly.
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir,
                                                     attn_implementation="sdpa").eval()
    assert backend.model.config.num_key_value_heads < backend.model.config.num_attention_heads
    ids, mask, positions = backend._left_padded([backend.encode("a short one"),
                                                 backend.encode("and a rather longer prompt")], 0)
    with torch.no_grad():
        ours = backend.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        theirs = reference(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    assert torch.equal(ours, theirs)


def test_close_gives_back_the_model(tiny_model_dir):
    import gc
    import weakref

    closing = HFBackend(tiny_model_dir)
    model = weakref.ref(closing.model)
    closing.close()
    gc.collect()
    assert closing.model is None and model() is None
