"""One tokenization of a reply for DPO/RM training, PPO's reward and best-of-N: the whole
conversation's ids after the prompt's, as the paper's training code and the model's own generation
see them (a SentencePiece tokenizer puts "▁" before a reply tokenized on its own)."""

from types import SimpleNamespace

import pytest

from ablate.data.chat_tokens import encode_chat, reward_model_ids
from ablate.generate.reward_model import RewardScorer
from ablate.train.common import tokenize_pairs
from ablate.train.rollout import PromptItem, RewardModelScorer

TULU = ("{% for message in messages %}{% if message['role'] == 'user' %}"
        "{{ '<|user|>\n' + message['content'] + '\n' }}{% elif message['role'] == 'assistant' %}"
        "{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}{% endif %}"
        "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
        "{% endfor %}")


@pytest.fixture(scope="module")
def sentencepiece_like():
    """A Llama-2-style tokenizer built in code: BPE over Metaspace with a "▁" before the first
    word of a string, BOS added by its post-processor, Tulu 2's chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first",
                                                     split=False)
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    corpus = [f"<|user|>\nWhat is {a} plus {b}?\n<|assistant|>\nThe answer is {a + b}. Hello"
              for a in range(9) for b in range(9)]
    backend.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=list("▁\n"),
        max_token_length=5))
    backend.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                           special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", chat_template=TULU)


def user(text):
    return [{"role": "user", "content": text}]


def assistant(text):
    return [{"role": "assistant", "content": text}]


def test_a_reply_has_the_ids_it_has_in_the_whole_conversation(sentencepiece_like):
    tok = sentencepiece_like
    assert tok.tokenize("Hello")[0] == "▁"  # on its own, a "▁" first
    prompt_ids, reply_ids = encode_chat(tok, user("What is 2 plus 3?"), [assistant("Hello")])
    whole = tok(tok.apply_chat_template(user("What is 2 plus 3?") + assistant("Hello"),
                                        tokenize=False))["input_ids"]
    assert prompt_ids + reply_ids == whole
    assert tok.convert_ids_to_tokens(reply_ids)[0] != "▁"


@pytest.mark.parametrize("reply", ["The answer is 5.", "5", "Hello", " 5"])
def test_ppo_and_best_of_n_score_the_ids_the_reward_model_trained_on(sentencepiece_like,
                                                                      tiny_model_dir, reply):
    from transformers import AutoTokenizer

    for tok in (sentencepiece_like, AutoTokenizer.from_pretrained(tiny_model_dir)):
        prompt = user("What is 2 plus 3?")
        [pair], _ = tokenize_pairs([{"prompt": prompt, "chosen": assistant(reply),
                                     "rejected": assistant(reply + " x")}], tok, 512, 256)
        trained = list(pair.prompt_ids) + list(pair.chosen_ids)
        ppo = RewardModelScorer._ids(SimpleNamespace(tokenizer=tok, max_length=512),
                                     PromptItem(0, tuple(prompt), (), None), reply)
        best_of_n = RewardScorer._tokens(SimpleNamespace(tokenizer=tok, max_length=512),
                                         prompt, reply)
        assert ppo == best_of_n == trained == reward_model_ids(tok, prompt, reply, 512)
