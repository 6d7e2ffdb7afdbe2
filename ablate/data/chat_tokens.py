"""Token ids of chat-templated text with the BOS token the model was trained with.

ablate renders a chat template to text and tokenizes it with ``add_special_tokens=False`` (as
``apply_chat_template(tokenize=True)`` does), so the template alone decides the special tokens.
Templates that render their BOS (Llama-3's ``<|begin_of_text|>``) need nothing more; Tulu 2's
(``<|user|>\\n...\\n<|assistant|>\\n``, a Llama-2 model) renders none, while Llama-2's tokenizer
puts ``<s>`` first whenever it tokenizes with special tokens, and the model was trained with it.
The rule here: prepend the tokenizer's BOS when the tokenizer itself adds one (found from its
behaviour, not from a list of model names) and the ids do not already start with it.
``encode_chat`` splits a templated conversation into prompt and answer ids on that rule, and
``reward_model_ids`` is what a reward model reads of a (prompt, response).

It lives in ``data`` because the length filter here must count the ids that training sees, and
``data`` imports only ``spec``/``store``; ``train``, ``generate`` and ``evals`` import it from here.
"""

from __future__ import annotations

import weakref
from typing import Any, Sequence

# tokenizer object -> the BOS id it adds (None: it adds none). Weak keys: a tokenizer that is
# dropped takes its entry with it.
_BOS_ADDED: "weakref.WeakKeyDictionary[Any, int | None]" = weakref.WeakKeyDictionary()
_PROBE = "x"


def bos_added_by(tokenizer: Any) -> int | None:
    """The BOS id ``tokenizer`` puts first when it tokenizes with special tokens, else None.

    Found by tokenizing a probe with and without special tokens (Llama-2: ``<s>`` then the
    probe's ids vs the probe's ids; SmolLM2: the same ids both ways), once per tokenizer object
    (a setting changed on that object afterwards, e.g. ``add_bos_token``, is not seen)."""
    try:
        return _BOS_ADDED[tokenizer]
    except (KeyError, TypeError):  # TypeError: an object that takes no weak reference
        pass
    bos = getattr(tokenizer, "bos_token_id", None)
    found = None
    if bos is not None:
        with_special = list(tokenizer(_PROBE, add_special_tokens=True)["input_ids"])
        without = list(tokenizer(_PROBE, add_special_tokens=False)["input_ids"])
        if with_special[:1] == [bos] and without[:1] != [bos]:
            found = int(bos)
    try:
        _BOS_ADDED[tokenizer] = found
    except TypeError:
        pass
    return found


def with_bos(ids: Sequence[int], bos: int | None) -> list[int]:
    """``ids`` with ``bos`` first, unless ``bos`` is None or the ids already start with it."""
    ids = [int(i) for i in ids]
    if bos is None or ids[:1] == [bos]:
        return ids
    return [bos, *ids]


def keep_last(ids: Sequence[int], n: int, bos: int | None) -> list[int]:
    """The last ``n`` ids (cutting the start of a too-long prompt), keeping a leading ``bos`` in
    front: the model was trained with its BOS first, and the cut must not remove it."""
    ids = list(ids)
    if len(ids) <= n:
        return ids
    if n <= 0:
        return []
    if bos is not None and ids[:1] == [bos]:
        return [bos] + ids[len(ids) - n + 1:]
    return ids[len(ids) - n:]


def chat_ids(tokenizer: Any, ids: Sequence[int]) -> list[int]:
    """Token ids of a rendered chat (from ``apply_chat_template(tokenize=True)`` or text
    tokenized without special tokens), with the BOS the tokenizer would have added."""
    if hasattr(ids, "keys"):  # a BatchEncoding from apply_chat_template(return_dict=True)
        ids = ids["input_ids"]
    return with_bos(ids, bos_added_by(tokenizer))


def encode_chat_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of chat-templated text: its own special tokens as written, plus the BOS the
    tokenizer would have added (``chat_ids``)."""
    return chat_ids(tokenizer, tokenizer(text, add_special_tokens=False)["input_ids"])


def decode_after(tokenizer: Any, context: Sequence[int], ids: Sequence[int],
                 context_tokens: int = 8) -> str:
    """The text ``ids`` add after ``context``, decoded in place. Decoding a reply's tokens on
    their own loses text on SentencePiece tokenizers: Llama-2's decoder strips the first "▁", so
    a code reply's first line comes back one space short of its indentation. The last few context
    tokens are decoded with the reply and their own text is cut off again, as vLLM's incremental
    detokenizer does; where that prefix does not decode stably (a split UTF-8 character), the
    reply is decoded alone."""
    head_ids = [int(i) for i in context[-context_tokens:]] if context_tokens else []
    head = tokenizer.decode(head_ids, skip_special_tokens=True)
    whole = tokenizer.decode(head_ids + [int(i) for i in ids], skip_special_tokens=True)
    if head_ids and "\ufffd" not in head and whole.startswith(head):
        return whole[len(head):]
    return tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


def as_messages(value: Any, role: str) -> list[dict] | None:
    """Rows carry chat messages; a bare string is one message of ``role``. None when empty."""
    if isinstance(value, str):
        value = [{"role": role, "content": value}] if value.strip() else []
    if not isinstance(value, list) or not value:
        return None
    for message in value:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) \
                or "role" not in message:
            return None
    if not any(m["content"].strip() for m in value):
        return None
    return value


def encode_chat(tokenizer, prompt: list[dict], answers: list[list[dict]], where: str = ""):
    """Token ids of the prompt (with the generation prompt) and of each answer's completion: the
    template's text after the generation prompt, end-of-turn tokens included. The prompt starts
    with the BOS the tokenizer adds where the template renders none (``chat_ids``).

    A completion's ids are those of the whole conversation after the prompt's, as the paper's
    training code (open-instruct) and the model's own generation see them: tokenized on its own,
    a SentencePiece tokenizer (Llama-2, Tulu 2) would put a "▁" before every reply. Where the
    whole text's tokens cross the prompt's end (a merge over the boundary), the completion is
    tokenized on its own instead, so chosen and rejected keep the same prompt ids."""
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    prompt_ids = encode_chat_text(tokenizer, prompt_text)
    completions = []
    for answer in answers:
        full = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
        if not full.startswith(prompt_text):
            raise ValueError(f"{where or 'a row'}: the chat template renders the prompt "
                             "differently once an answer follows; cannot split off the "
                             "completion")
        full_ids = encode_chat_text(tokenizer, full)
        if full_ids[:len(prompt_ids)] == prompt_ids:
            completions.append(full_ids[len(prompt_ids):])
        else:
            completions.append(tokenizer(full[len(prompt_text):], add_special_tokens=False)
                               ["input_ids"])
    return (prompt_ids, *completions)


def reward_model_ids(tokenizer, prompt: list[dict], response: str, max_length: int) -> list[int]:
    """What a reward model reads for (prompt, response): the ids RM training built for a pair's
    answer (``encode_chat``), the completion capped at half of ``max_length`` and the prompt cut
    from the left, BOS kept. Every reward model scores through this
    (``ablate.generate.reward_model``), so a reward is never read off ids the RM was not trained
    on."""
    prompt_ids, completion = encode_chat(tokenizer, prompt,
                                         [[{"role": "assistant", "content": response}]])
    completion = completion[:max_length // 2]
    return keep_last(prompt_ids, max_length - len(completion), bos_added_by(tokenizer)) \
        + completion
