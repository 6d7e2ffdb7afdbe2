"""One BOS first wherever a chat prompt becomes token ids (``ablate.data.chat_tokens``).

Three tokenizers: a Llama-2-like one that adds ``<s>`` when tokenizing with special tokens under
Tulu 2's chat template (which renders no BOS): every path must put exactly one ``<s>`` first; the
same tokenizer under a template that renders ``<s>`` itself (Llama-3 style): nothing may change,
and never two BOS; SmolLM2's (its ``bos_token`` is ``<|im_start|>``, which its template renders
anyway, and it adds nothing when tokenizing with special tokens): nothing may change.
"""

from __future__ import annotations

import dataclasses
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from ablate.data.chat_tokens import (
    bos_added_by, chat_ids, decode_after, encode_chat, encode_chat_text, keep_last, with_bos,
)
from ablate.data.rows import count_tokens
from ablate.generate import SamplingParams, chat_prompt
from ablate.generate.base import encode_prompt, split_continuation
from ablate.generate.reward_model import RewardScorer
from ablate.train.common import pairs_digest, tokenize_pairs
from ablate.train.rollout import PromptItem, RewardModelScorer, tokenize_prompts

BOS = 1
WORDS = ("say hi hello go away what is two plus three five four six the answer question a b c d "
         "please think step by and then write it down again").split()
SPECIAL = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
# Tulu 2's chat template, as in allenai/tulu-2-dpo-13b's tokenizer_config.json.
TULU = ("{% for message in messages %}{% if message['role'] == 'system' %}"
        "{{ '<|system|>\n' + message['content'] + '\n' }}"
        "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}"
        "{% elif message['role'] == 'assistant' %}"
        "{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}{% endif %}"
        "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
        "{% endfor %}")
RENDERS_BOS = "{{ bos_token }}" + TULU  # a template that writes its BOS itself (Llama-3 style)


def llama2_like_tokenizer(chat_template: str):
    """A word-level tokenizer whose post-processor puts ``<s>`` first, as Llama-2's does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL + WORDS + list(".,?!:+"))}
    assert vocab["<s>"] == BOS
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS)])
    backend.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", chat_template=chat_template,
                                   additional_special_tokens=SPECIAL[3:])


@pytest.fixture(scope="module")
def tulu():
    return llama2_like_tokenizer(TULU)


@pytest.fixture(scope="module")
def renders_bos():
    return llama2_like_tokenizer(RENDERS_BOS)


@pytest.fixture(scope="module")
def smollm2(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def user(text):
    return [{"role": "user", "content": text}]


def assistant(text):
    return [{"role": "assistant", "content": text}]


def row(prompt="say hi", chosen="hello", rejected="go away"):
    return {"prompt": user(prompt), "chosen": assistant(chosen), "rejected": assistant(rejected)}


def rendered(tokenizer, messages, generation_prompt=True) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=generation_prompt)


# ------------------------------------------------------------------------------ the rule


def test_pure_helpers():
    assert with_bos([5, 6], 1) == [1, 5, 6]
    assert with_bos([1, 5, 6], 1) == [1, 5, 6]  # never two
    assert with_bos([5, 6], None) == [5, 6]
    assert keep_last([1, 5, 6, 7, 8], 3, 1) == [1, 7, 8]  # the cut keeps the BOS first
    assert keep_last([1, 5, 6, 7, 8], 1, 1) == [1]
    assert keep_last([1, 5, 6, 7, 8], 3, None) == [6, 7, 8]
    assert keep_last([5, 6, 7, 8], 3, 1) == [6, 7, 8]  # no BOS to keep
    assert keep_last([1, 5], 3, 1) == [1, 5]


def test_which_tokenizers_add_a_bos(tulu, renders_bos, smollm2):
    assert bos_added_by(tulu) == BOS and bos_added_by(renders_bos) == BOS
    # SmolLM2 names <|im_start|> as its BOS but adds nothing when tokenizing with special tokens.
    assert smollm2.bos_token == "<|im_start|>"
    assert smollm2("x")["input_ids"] == smollm2("x", add_special_tokens=False)["input_ids"]
    assert bos_added_by(smollm2) is None
    # Its template renders <|im_start|> first anyway: the rule leaves those ids as they are.
    ids = smollm2.apply_chat_template(user("hi"), tokenize=True, return_dict=False)
    assert ids[0] == smollm2.bos_token_id and chat_ids(smollm2, ids) == list(ids)


def test_the_rule_matches_tokenizing_the_text_with_special_tokens(tulu, renders_bos):
    text = rendered(tulu, user("say hi"))
    assert tulu(text, add_special_tokens=False)["input_ids"][0] != BOS  # what ablate did before
    assert encode_chat_text(tulu, text) == tulu(text)["input_ids"]  # what open-instruct feeds
    text = rendered(renders_bos, user("say hi"))
    assert encode_chat_text(renders_bos, text) == renders_bos(text, add_special_tokens=False)[
        "input_ids"]
    assert encode_chat_text(renders_bos, text).count(BOS) == 1


# ----------------------------------------------------------------------- DPO / RM training


def test_dpo_pairs_start_with_one_bos(tulu, renders_bos, smollm2):
    for tokenizer in (tulu, renders_bos):
        [pair], skipped = tokenize_pairs([row()], tokenizer, max_length=64, max_prompt_length=32)
        assert not skipped
        assert pair.prompt_ids[0] == BOS
        assert (pair.prompt_ids + pair.chosen_ids).count(BOS) == 1
        assert (pair.prompt_ids + pair.rejected_ids).count(BOS) == 1
    # Tulu: the ids are the ones Llama-2's tokenizer gives the whole rendered text.
    [pair], _ = tokenize_pairs([row()], tulu, max_length=64, max_prompt_length=32)
    full = rendered(tulu, user("say hi") + assistant("hello"), generation_prompt=False)
    assert list(pair.prompt_ids + pair.chosen_ids) == tulu(full)["input_ids"]
    # The reference log-prob cache is keyed by the token ids: log-probs cached for the ids
    # without the BOS are not served for the ids with it.
    without = dataclasses.replace(pair, prompt_ids=pair.prompt_ids[1:])
    assert pairs_digest([pair]) != pairs_digest([without])
    # Llama-3 style and SmolLM2: exactly what tokenizing the text without special tokens gives.
    for tokenizer in (renders_bos, smollm2):
        prompt_ids, chosen_ids = encode_chat(tokenizer, user("say hi"), [assistant("hello")])
        assert prompt_ids == tokenizer(rendered(tokenizer, user("say hi")),
                                       add_special_tokens=False)["input_ids"]


def test_a_cut_prompt_keeps_its_bos(tulu, smollm2):
    long = row(prompt="please think step by step and then write it down again " * 4)
    [pair], _ = tokenize_pairs([long], tulu, max_length=12, max_prompt_length=8)
    assert len(pair.prompt_ids) == 8 and pair.prompt_ids[0] == BOS
    assert pair.prompt_ids.count(BOS) == 1
    full, _ = encode_chat(tulu, long["prompt"], [long["chosen"]])
    assert list(pair.prompt_ids[1:]) == full[-7:]  # the end of the prompt, as before
    # No BOS added, none kept: SmolLM2's cut is the plain last-n slice it always was.
    [pair], _ = tokenize_pairs([long], smollm2, max_length=40, max_prompt_length=30)
    full, _ = encode_chat(smollm2, long["prompt"], [long["chosen"]])
    assert list(pair.prompt_ids) == full[-30:]


# ------------------------------------------------------------------------------------ PPO


def test_ppo_prompts_start_with_one_bos(tulu, renders_bos, smollm2):
    rows = [{"prompt": "say hi"}, {"prompt": user("what is two plus three ?")}]
    for tokenizer in (tulu, renders_bos):
        items, _ = tokenize_prompts(rows, tokenizer, max_prompt_length=64)
        assert len(items) == 2
        assert all(item.ids[0] == BOS and item.ids.count(BOS) == 1 for item in items)
    items, _ = tokenize_prompts(rows, tulu, max_prompt_length=64)
    assert list(items[1].ids) == tulu(rendered(tulu, rows[1]["prompt"]))["input_ids"]
    # The length limit counts the BOS: a prompt of exactly the limit without it is now one over.
    limit = len(items[1].ids) - 1
    assert len(tokenize_prompts(rows[1:], tulu, max_prompt_length=limit)[0]) == 0
    items, _ = tokenize_prompts(rows, smollm2, max_prompt_length=256)
    assert list(items[1].ids) == smollm2.apply_chat_template(
        rows[1]["prompt"], tokenize=True, add_generation_prompt=True, return_dict=False)


def test_ppo_reward_model_ids_start_with_one_bos(tulu, smollm2):
    item = PromptItem(0, tuple(user("say hi")), (), None)
    scorer = SimpleNamespace(tokenizer=tulu, max_length=64)
    ids = RewardModelScorer._ids(scorer, item, "hello")
    full = rendered(tulu, user("say hi") + assistant("hello"), generation_prompt=False)
    assert ids == tulu(full)["input_ids"]
    cut = RewardModelScorer._ids(SimpleNamespace(tokenizer=tulu, max_length=5), item, "hello")
    assert cut == [BOS] + ids[-4:]  # the end (where the reward is read) and the BOS
    scorer = SimpleNamespace(tokenizer=smollm2, max_length=512)
    assert RewardModelScorer._ids(scorer, item, "hello") == list(smollm2.apply_chat_template(
        user("say hi") + assistant("hello"), tokenize=True, return_dict=False))


def test_reward_scorer_cut_keeps_the_bos(tulu):
    """``RewardScorer`` (best-of-N, RM judges) cuts a long prompt from the left: the BOS stays."""
    scorer = SimpleNamespace(tokenizer=tulu, max_length=64)
    prompt = user("please think step by step and then write it down again " * 2)
    ids = RewardScorer._tokens(scorer, prompt, "hello")
    assert ids[0] == BOS and ids.count(BOS) == 1
    cut = RewardScorer._tokens(SimpleNamespace(tokenizer=tulu, max_length=10), prompt, "hello")
    assert len(cut) == 10 and cut[0] == BOS and cut[-4:] == ids[-4:]


# ------------------------------------------------------------------------ the length filter


def test_length_count_counts_the_ids_training_sees(tulu, renders_bos, smollm2):
    conversation = user("say hi") + assistant("hello")
    for tokenizer in (tulu, renders_bos, smollm2):
        prompt_ids, chosen_ids = encode_chat(tokenizer, user("say hi"), [assistant("hello")])
        assert count_tokens(tokenizer, conversation) == len(prompt_ids) + len(chosen_ids)
    assert count_tokens(tulu, conversation) == len(tulu(rendered(
        tulu, conversation, generation_prompt=False))["input_ids"])


# ------------------------------------------------------------------------- generation: hf


@pytest.fixture(scope="module")
def tulu_model_dir(tulu, tmp_path_factory):
    """A 2-layer Llama over the Tulu-templated tokenizer, weights scaled up so that greedy
    replies vary (a barely trained random model repeats one token)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tulu), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, bos_token_id=BOS,
                         eos_token_id=tulu.eos_token_id, pad_token_id=tulu.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.dim() == 2:
                weight.mul_(5.0)
    folder = tmp_path_factory.mktemp("tulu_like")
    model.save_pretrained(folder)
    tulu.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tulu_backend(tulu_model_dir):
    from ablate.generate.hf import HFBackend

    return HFBackend(tulu_model_dir, token_budget=2048, max_batch=2, min_shared_prefix=3)


def test_hf_generation_feeds_one_bos_first(tulu_backend, monkeypatch):
    from ablate.generate import hf

    backend = tulu_backend
    assert bos_added_by(backend.tokenizer) == BOS  # the saved and reloaded tokenizer too
    prompts = [chat_prompt(backend.tokenizer, "please think step by step : " + q) for q in
               ("what is two plus three ?", "say hi", "write the answer down")]
    contexts = []
    run = hf._DecodeBatch.run

    def record(self, rows, progress):
        contexts.extend(list(r.context) for r in rows)
        contexts.append(("shared prefix", self.prefix_len))
        return run(self, rows, progress)

    monkeypatch.setattr(hf._DecodeBatch, "run", record)
    texts = backend.generate(prompts, SamplingParams(max_new_tokens=6))
    expected = [backend.tokenizer(p)["input_ids"] for p in prompts]  # with special tokens: <s>
    assert contexts[:-1] == expected
    assert contexts[-1][1] >= 3  # "<s> <|user|> please ..." is shared: the prefix path ran
    for ids, [text] in zip(expected, texts):
        ids = torch.tensor([ids])
        out = backend.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=6, eos_token_id=list(backend.eos_ids),
                                     pad_token_id=backend.pad_id)
        # the reply decoded after the prompt, as the backend decodes it (``decode_after``)
        assert text == decode_after(backend.tokenizer, ids[0].tolist(),
                                    out[0, ids.shape[1]:].tolist())


def test_hf_loglikelihood_scores_options_after_one_bos(tulu_backend):
    backend = tulu_backend
    context = chat_prompt(backend.tokenizer, "what is two plus three ?") + "the answer is"
    requests = [(context, [" five", " four", " six"]),  # one token each: the batched path
                (context + " ", ["five .", "four or six ."])]  # several: the cached-context path
    got = backend.loglikelihood(requests)
    for (ctx_text, options), scores in zip(requests, got):
        for option, score in zip(options, scores):
            ctx, cont = backend._encode_pair(ctx_text, option)
            whole = backend.tokenizer(ctx_text + option)["input_ids"]  # <s> first
            assert ctx + cont == whole and ctx[0] == BOS and whole.count(BOS) == 1
            assert ctx == backend.tokenizer(ctx_text.rstrip())["input_ids"]
            with torch.no_grad():
                logprobs = torch.log_softmax(
                    backend.model(torch.tensor([whole])).logits[0].float(), -1)
            expected = sum(float(logprobs[len(ctx) - 1 + t, tok]) for t, tok in enumerate(cont))
            assert score == pytest.approx(expected, abs=1e-4)


def test_encoding_for_generation_is_unchanged_without_an_added_bos(renders_bos, smollm2):
    for tokenizer in (renders_bos, smollm2):
        text = chat_prompt(tokenizer, "say hi")
        assert encode_prompt(tokenizer, text) == tokenizer(text, add_special_tokens=False)[
            "input_ids"]
        ctx, cont = split_continuation(tokenizer, text + "the answer is", " five")
        assert ctx + cont == tokenizer(text + "the answer is five",
                                       add_special_tokens=False)["input_ids"]


# ----------------------------------------------------------------------- generation: vllm


class FakeLLM:
    """Records the token ids vLLM would get; a prompt token's log-prob is its position; every
    request generates the ids of "five"."""

    def __init__(self, tokenizer):
        self.prompts = []
        self.five = tokenizer("five", add_special_tokens=False)["input_ids"]

    def generate(self, inputs, sampling, use_tqdm=False):
        self.prompts.extend(p["prompt_token_ids"] for p in inputs)
        self.sampling = sampling
        outputs = []
        for p in inputs:
            ids = p["prompt_token_ids"]
            logprobs = [None] + [{tok: SimpleNamespace(logprob=float(t))}
                                 for t, tok in enumerate(ids) if t > 0]
            outputs.append(SimpleNamespace(
                prompt_token_ids=ids, prompt_logprobs=logprobs,
                outputs=[SimpleNamespace(text="five", token_ids=self.five)]))
        return outputs


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.SamplingParams = lambda **kw: SimpleNamespace(**kw)
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    vllm.inputs = inputs
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)


def test_vllm_samples_each_prompt_from_its_own_seed(fake_vllm, smollm2):
    """Each sample of each prompt is its own request with its own seed: one seed for all
    prompts would share streams across prompts, and seeds s + j would let run seed s + 1 replay
    seed s's samples."""
    from ablate.generate.vllm_backend import VLLMBackend

    backend = VLLMBackend.__new__(VLLMBackend)
    backend.tokenizer, backend.llm, backend.max_model_len = smollm2, FakeLLM(smollm2), 2048
    prompts = ["say hi", "say bye", "say hi"]
    out = backend.generate(prompts, SamplingParams(max_new_tokens=4, n=3, temperature=0.8, seed=1))
    assert out == [["five"] * 3] * 3
    first = [params.seed for params in backend.llm.sampling]
    assert len(first) == 9 and len(set(first)) == 9
    backend.generate(prompts, SamplingParams(max_new_tokens=4, n=3, temperature=0.8, seed=2))
    second = [params.seed for params in backend.llm.sampling]
    assert not set(first) & set(second)
    backend.generate(prompts, SamplingParams(max_new_tokens=4))
    assert all(params.seed is None for params in backend.llm.sampling)  # greedy


def test_vllm_backend_feeds_and_scores_the_same_ids(fake_vllm, tulu, smollm2):
    from ablate.generate.vllm_backend import VLLMBackend

    for tokenizer in (tulu, smollm2):
        backend = VLLMBackend.__new__(VLLMBackend)
        backend.tokenizer, backend.llm, backend.max_model_len = tokenizer, FakeLLM(tokenizer), 2048
        prompt = chat_prompt(tokenizer, "say hi")
        # the reply is the generated ids decoded after the prompt, as the transformers backend
        # decodes its own
        expected = decode_after(tokenizer, encode_prompt(tokenizer, prompt), backend.llm.five)
        assert expected.strip() == "five"
        assert backend.generate([prompt], SamplingParams(max_new_tokens=4)) == [[expected]]
        assert backend.llm.prompts == [encode_prompt(tokenizer, prompt)]
        context = prompt + "the answer is "
        [scores] = backend.loglikelihood([(context, ["five", "four or six"])])
        for option, score, fed in zip(["five", "four or six"], scores, backend.llm.prompts[1:]):
            ctx, cont = split_continuation(tokenizer, context, option)
            assert fed == ctx + cont
            # the option's tokens, scored from where the context's ids end
            assert score == sum(range(len(ctx), len(ctx) + len(cont)))
        if tokenizer is tulu:
            assert all(p[0] == BOS and p.count(BOS) == 1 for p in backend.llm.prompts)
        else:
            assert backend.llm.prompts[0] == tokenizer(prompt, add_special_tokens=False)[
                "input_ids"]
