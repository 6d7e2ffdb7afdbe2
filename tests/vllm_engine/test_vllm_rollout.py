"""PPO's vLLM rollouts: after a policy update the engine computes with the updated weights (its
log-probs of a fixed continuation equal the trainer's), and closing it frees the engine."""

from __future__ import annotations

import gc
import shutil
import weakref

import pytest
import torch

pytestmark = pytest.mark.vllm

# float32 on both sides, a 2-layer model: the engine's kernels and the trainer's forward agree to
# rounding (measured well below this); an update moves the log-probs by orders of magnitude more
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def small_policy_dir(tiny_model_dir, tmp_path_factory):
    """A random 2-layer Llama with SmolLM2's tokenizer and 32-wide heads (vLLM's CPU attention
    takes head sizes from 32 up; the tiny model's are 16)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("policy")
    for name in tiny_model_dir.iterdir():
        if name.suffix != ".safetensors" and name.name != "config.json":
            shutil.copy(name, folder / name.name)
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.num_attention_heads, config.num_key_value_heads, config.head_dim = 2, 1, 32
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    return folder


def trainer_logps(policy, tokenizer, prompt: list[int], continuation: list[int]) -> list[float]:
    from ablate.train.ppo import response_logps
    from ablate.train.rollout import build_rollout, eos_token_ids, left_pad

    pad = tokenizer.pad_token_id
    prompt_ids, prompt_mask = left_pad([prompt], pad)
    batch = build_rollout(prompt_ids, prompt_mask, torch.tensor([continuation]),
                          eos_token_ids(tokenizer, policy), pad, tokenizer)
    with torch.no_grad():
        return response_logps(policy, batch, temperature=1.0)[0].tolist()


def test_engine_follows_the_policy_update_and_closes(small_policy_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ablate.train.rollout import PromptItem, VLLMGenerator

    tokenizer = AutoTokenizer.from_pretrained(small_policy_dir)
    policy = AutoModelForCausalLM.from_pretrained(small_policy_dir, dtype=torch.float32)
    messages = ({"role": "user", "content": "Say something kind."},)
    prompt = tokenizer.apply_chat_template(list(messages), tokenize=True,
                                           add_generation_prompt=True, return_dict=False)
    continuation = tokenizer("You are doing well today.", add_special_tokens=False)["input_ids"]
    engine = VLLMGenerator(small_policy_dir, tokenizer, max_model_len=512)
    try:
        before = engine.continuation_logprobs(prompt, continuation)
        assert before == pytest.approx(trainer_logps(policy, tokenizer, prompt, continuation),
                                       abs=TOLERANCE)

        # one optimiser step that raises the continuation's likelihood
        optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
        ids = torch.tensor([prompt + continuation])
        labels = ids.clone()
        labels[0, :len(prompt)] = -100
        policy(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        expected = trainer_logps(policy, tokenizer, prompt, continuation)
        assert max(abs(a - b) for a, b in zip(expected, before)) > 100 * TOLERANCE

        # a rollout loads the updated weights before it samples
        rollout = engine.generate(policy, [PromptItem(0, messages, tuple(prompt), None)],
                                  temperature=1.0, max_new_tokens=6, seed=3)
        assert rollout.responses.shape[0] == 1
        after = engine.continuation_logprobs(prompt, continuation)
        assert after == pytest.approx(expected, abs=TOLERANCE)
        sampled = rollout.responses[0][rollout.response_mask[0].bool()].tolist()
        assert engine.continuation_logprobs(prompt, sampled) == pytest.approx(
            trainer_logps(policy, tokenizer, prompt, sampled), abs=TOLERANCE)
    finally:
        llm = weakref.ref(engine.llm)
        engine.close()
    gc.collect()
    assert engine.llm is None and llm() is None  # nothing keeps the engine (and its memory)
