"""A reply is decoded where it stands, after its prompt: Llama-2's SentencePiece decoder strips
the first "▁" of a string, so a code reply decoded alone loses one space of its indentation."""

from __future__ import annotations

import json

import pytest

from ablate.data.chat_tokens import decode_after
from ablate.generate import SamplingParams

CODE = 'def add(a, b):\n    """Return a + b."""\n'


@pytest.fixture(scope="module")
def llama_tokenizer():
    """transformers' own LlamaTokenizer (Metaspace, byte fallback, the Strip decoder) over a
    small vocabulary trained on a little Python."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers.models.llama.tokenization_llama import LlamaTokenizer

    corpus = [CODE + "    return a + b\n", "def f(x):\n    if x > 0:\n        return x\n"] * 50
    trained = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    trained.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first",
                                                     split=True)
    trained.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=[f"<0x{i:02X}>" for i in range(256)]))
    model = json.loads(trained.to_str())["model"]
    vocab = model["vocab"]
    for i in range(256):
        vocab.setdefault(f"<0x{i:02X}>", len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    for a, b in (("▁", "▁"), ("▁▁", "▁"), ("▁▁", "▁▁")):
        vocab.setdefault(a + b, len(vocab))
        merges.append((a, b))
    return LlamaTokenizer(vocab=vocab, merges=merges)


def split(tokenizer, prompt: str, reply: str) -> tuple[list[int], list[int]]:
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    whole = tokenizer(prompt + reply, add_special_tokens=False)["input_ids"]
    assert whole[:len(prompt_ids)] == prompt_ids
    return prompt_ids, whole[len(prompt_ids):]


def test_a_reply_keeps_its_indentation(llama_tokenizer):
    prompt_ids, reply_ids = split(llama_tokenizer, CODE, "    return a + b\n")
    assert llama_tokenizer.convert_ids_to_tokens(reply_ids)[0].startswith("▁")
    alone = llama_tokenizer.decode(reply_ids, skip_special_tokens=True)
    assert alone == "   return a + b\n"  # what decoding alone gives: a space short
    assert decode_after(llama_tokenizer, prompt_ids, reply_ids) == "    return a + b\n"
    assert decode_after(llama_tokenizer, [], reply_ids) == alone  # no context: nothing to do


def test_the_transformers_backend_decodes_replies_in_place(llama_tokenizer, tmp_path,
                                                           monkeypatch):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ablate.generate import hf

    config = LlamaConfig(vocab_size=len(llama_tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=512, bos_token_id=llama_tokenizer.bos_token_id,
                         eos_token_id=llama_tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    llama_tokenizer.save_pretrained(tmp_path)
    backend = hf.HFBackend(tmp_path, token_budget=2048, max_batch=2)
    prompt_ids, reply_ids = split(backend.tokenizer, CODE, "    return a + b\n")

    def reply_with_the_body(self, rows, progress):  # the model "generates" the function body
        for row in rows:
            row.tokens = list(reply_ids)

    monkeypatch.setattr(hf._DecodeBatch, "run", reply_with_the_body)
    [[text]] = backend.generate([CODE], SamplingParams(max_new_tokens=16))
    assert text == "    return a + b\n"
    program = CODE + text + "\nassert add(2, 3) == 5\n"
    exec(compile(program, "program.py", "exec"), {})  # IndentationError before
