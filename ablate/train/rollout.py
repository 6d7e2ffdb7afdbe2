"""PPO's experience: prompts tokenised with the chat template, sampled responses (batched
transformers ``generate``, or vLLM on a GPU where it is installed), and their scores (a trained
reward model, or a programmatic reward for checkable runs).

Layout shared by every tensor here: a batch row is ``[left padding | prompt | response | right
padding]``; every prompt ends at column ``P - 1`` and response token ``j`` sits at column
``P + j``, so the logits that score it are at column ``P + j - 1`` for every row alike.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from ablate.data.chat_tokens import as_messages, chat_ids, decode_after, reward_model_ids
from ablate.generate.base import row_seed
from ablate.generate.reward_model import RewardScorer
from ablate.spec.seeds import derive_seed
from ablate.train import fsdp
from ablate.train.common import TrainingError
from ablate.train.programmatic import RewardFunction, load_reward_function


@dataclass(frozen=True)
class PromptItem:
    index: int  # row number in the prompt set
    messages: tuple  # chat messages (dicts), as the prompt set gave them
    ids: tuple[int, ...]  # chat-templated prompt with the generation prompt
    reference: str | None  # a checkable answer (GSM8k), when the prompt set has one


def tokenize_prompts(rows: Sequence[dict], tokenizer, max_prompt_length: int
                     ) -> tuple[list[PromptItem], Counter]:
    """Apply the chat template with the generation prompt (and the BOS the tokenizer adds where
    the template renders none, as in DPO/RM training: ``chat_tokens``). Prompts longer than
    ``max_prompt_length`` tokens are dropped (truncating a prompt changes the question) and
    counted, as are empty ones."""
    items: list[PromptItem] = []
    skipped: Counter = Counter()
    for index, row in enumerate(rows):
        messages = as_messages(row.get("prompt"), "user") if isinstance(row, dict) else None
        if messages is None:
            skipped["empty or malformed prompt"] += 1
            continue
        ids = chat_ids(tokenizer, tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True, return_dict=False))
        if len(ids) > max_prompt_length:
            skipped[f"prompt longer than max_prompt_length={max_prompt_length}"] += 1
            continue
        reference = row.get("reference")
        items.append(PromptItem(index, tuple(messages), tuple(int(i) for i in ids),
                                None if reference is None else str(reference)))
    return items, skipped


@dataclass
class Rollout:
    input_ids: Tensor  # [B, P + R]: left-padded prompts, then right-padded responses
    attention_mask: Tensor  # [B, P + R]
    prompt_width: int  # P
    responses: Tensor  # [B, R] response token ids, pad after the end
    response_mask: Tensor  # [B, R] 1 up to and including the first EOS
    ended_with_eos: Tensor  # [B] bool
    texts: list[str]  # decoded responses, special tokens removed

    @property
    def position_ids(self) -> Tensor:
        # Left padding must not shift positions: generate counted them from the first real token.
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)

    def select(self, rows: Sequence[int]) -> "Rollout":
        """A subset of the rows, trimmed to its own longest response."""
        rows_t = torch.as_tensor(list(rows), dtype=torch.long)
        mask = self.response_mask[rows_t]
        width = max(1, int(mask.sum(1).max()))
        keep = self.prompt_width + width
        return Rollout(self.input_ids[rows_t, :keep], self.attention_mask[rows_t, :keep],
                       self.prompt_width, self.responses[rows_t, :width], mask[:, :width],
                       self.ended_with_eos[rows_t], [self.texts[i] for i in rows])

    def to(self, device) -> "Rollout":
        return Rollout(self.input_ids.to(device), self.attention_mask.to(device),
                       self.prompt_width, self.responses.to(device),
                       self.response_mask.to(device), self.ended_with_eos.to(device), self.texts)


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int) -> tuple[Tensor, Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    return ids, mask


def build_rollout(prompt_ids: Tensor, prompt_mask: Tensor, generated: Tensor, eos_ids: set[int],
                  pad_token_id: int, tokenizer) -> Rollout:
    """Cut each sampled continuation after its first EOS token (kept: the policy chose it)."""
    batch, width = generated.shape
    is_eos = torch.zeros_like(generated, dtype=torch.bool)
    for eos in eos_ids:
        is_eos |= generated == eos
    has_eos = is_eos.any(dim=1)
    first_eos = torch.where(has_eos, is_eos.float().argmax(dim=1),
                            torch.full((batch,), width - 1, dtype=torch.long))
    columns = torch.arange(width)[None, :]
    response_mask = (columns <= first_eos[:, None]).long()
    responses = torch.where(response_mask.bool(), generated, torch.full_like(generated,
                                                                              pad_token_id))
    texts = [decode_after(tokenizer, p[pm.bool()].tolist(), r[m.bool()].tolist())
             for p, pm, r, m in zip(prompt_ids, prompt_mask, responses, response_mask)]
    return Rollout(torch.cat([prompt_ids, responses], dim=1),
                   torch.cat([prompt_mask, response_mask], dim=1), prompt_ids.shape[1],
                   responses, response_mask, has_eos, texts)


def eos_token_ids(tokenizer, model_config) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model_config, "generation_config", None) or model_config,
                         "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return {i for i in ids if i is not None}


def chunk_seed(seed: int, chunk: int) -> int:
    """The sampling seed of one generation chunk: each chunk of ``batch_size`` prompts draws from
    its own seeded stream, so a chunk samples the same tokens whichever process generates it."""
    return derive_seed(seed, "generation-chunk", chunk)


@torch.no_grad()
def sample_token_ids(model, tokenizer, prompts: Sequence[PromptItem], *, temperature: float,
                     max_new_tokens: int, seed: int, batch_size: int,
                     chunks: Sequence[int] | None = None, calls: int | None = None,
                     top_k: int = 0) -> tuple[Tensor, Tensor, Tensor, int]:
    """Sample one continuation per prompt of the chunks ``chunks`` (all when None) of
    ``batch_size`` prompts: temperature sampling from the ``top_k`` most likely tokens (0: from
    every token), no top-p and nothing else, as ``PPOConfig`` says.

    Under several processes ``model`` is sharded (``fsdp.generating``): its forwards are
    collective, so every process makes ``calls`` generate calls (a stand-in, discarded, where it
    has fewer chunks) and each call keeps stepping until every process's call is done
    (``synced_gpus``; a finished process's steps sample nothing).

    Returns the left-padded prompts (all of them), their mask, the sampled ids ``[N,
    max_new_tokens]`` (pad after a chunk's end; rows of chunks not sampled here are 0) and the
    width the sampled chunks reached. The caller's RNG state is left as it was."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = eos_token_ids(tokenizer, model)
    config = GenerationConfig(do_sample=True, temperature=temperature, top_k=top_k, top_p=1.0,
                              max_new_tokens=max_new_tokens, pad_token_id=pad,
                              eos_token_id=sorted(eos))
    prompt_ids, prompt_mask = left_pad([p.ids for p in prompts], pad)
    generated = torch.zeros(len(prompts), max_new_tokens, dtype=torch.long)
    width = 0
    n_chunks = -(-len(prompts) // batch_size)
    was_training = model.training
    model.eval()
    # transformers fills every field left unset in ``config`` from the model's own
    # generation_config.json (repetition_penalty, min_p, no_repeat_ngram_size, ...): a bare one
    # for the call keeps the sampling plain, the distribution whose log-probs PPO computes.
    shipped = model.generation_config
    model.generation_config = GenerationConfig(bos_token_id=shipped.bos_token_id,
                                               pad_token_id=pad, eos_token_id=sorted(eos))
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            todo = list(range(n_chunks) if chunks is None else chunks)
            for call in range(len(todo) if calls is None else calls):
                chunk = todo[call] if call < len(todo) else 0  # 0: a stand-in's prompts
                rows = slice(chunk * batch_size, min((chunk + 1) * batch_size, len(prompts)))
                torch.manual_seed(chunk_seed(seed, chunk))
                out = model.generate(input_ids=prompt_ids[rows].to(device),
                                     attention_mask=prompt_mask[rows].to(device),
                                     generation_config=config,
                                     synced_gpus=fsdp.world_size() > 1
                                     )[:, prompt_ids.shape[1]:].cpu()
                if call >= len(todo):
                    continue
                generated[rows] = pad
                generated[rows, :out.shape[1]] = out
                width = max(width, out.shape[1])
    finally:
        model.generation_config = shipped
    model.train(was_training)
    return prompt_ids, prompt_mask, generated, width


def generate_transformers(model, tokenizer, prompts: Sequence[PromptItem], *, temperature: float,
                          max_new_tokens: int, seed: int, batch_size: int) -> Rollout:
    """One sampled response per prompt (``sample_token_ids``), cut after its first EOS."""
    prompt_ids, prompt_mask, generated, width = sample_token_ids(
        model, tokenizer, prompts, temperature=temperature, max_new_tokens=max_new_tokens,
        seed=seed, batch_size=batch_size)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return build_rollout(prompt_ids, prompt_mask, generated[:, :width],
                         eos_token_ids(tokenizer, model), pad, tokenizer)


class VLLMGenerator:
    """Rollouts with vLLM (``ablate.generate.vllm_backend``'s engine, in this process), the
    policy's current weights loaded into the engine's model before each batch is sampled.

    float32 on a CPU, as the trainer computes there; bfloat16 on a GPU. ``close`` stops the engine
    and gives its memory back (PPO calls it when the step ends)."""

    def __init__(self, model_dir, tokenizer, max_model_len: int, gpu_memory_utilization=0.3):
        from ablate.generate.base import GenerationError
        from ablate.generate.vllm_backend import start_engine

        self.tokenizer = tokenizer
        try:
            self.llm = start_engine(model_dir, max_model_len=max_model_len,
                                    gpu_memory_utilization=gpu_memory_utilization,
                                    dtype="bfloat16" if torch.cuda.is_available() else "auto")
        except GenerationError as exc:
            raise TrainingError(f"rollout_engine vllm: {exc}") from None

    def close(self) -> None:
        from ablate.generate.vllm_backend import stop_engine

        llm, self.llm = self.llm, None
        stop_engine(llm)

    def sync_weights(self, policy) -> None:
        """Load ``policy``'s parameters into the engine's model and drop the prefix cache computed
        with the old ones. vLLM's in-place reload takes them by their transformers names and
        redoes what loading does after the checkpoint is read (its CPU layers repack their
        weights, so a plain ``load_weights`` on the running model fails)."""
        weights = [(name, p.detach()) for name, p in policy.state_dict().items()]
        try:
            self.llm.collective_rpc("reload_weights",
                                    kwargs={"weights_iterator": iter(weights)})
        except AttributeError as exc:
            raise TrainingError("this vLLM version cannot reload weights in place "
                                f"({exc}); set rollout_engine: transformers") from None
        self.llm.reset_prefix_cache()

    def continuation_logprobs(self, prompt_ids: Sequence[int], continuation: Sequence[int]
                              ) -> list[float]:
        """The engine's log p(continuation token | everything before it), token by token: what
        its current weights give, for checking them against the trainer's."""
        from vllm import SamplingParams

        whole = [int(i) for i in prompt_ids] + [int(i) for i in continuation]
        out = self.llm.generate([{"prompt_token_ids": whole}],
                                SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
        logprobs = out[0].prompt_logprobs
        return [logprobs[t][whole[t]].logprob for t in range(len(prompt_ids), len(whole))]

    def generate(self, policy, prompts: Sequence[PromptItem], *, temperature: float,
                 max_new_tokens: int, seed: int, top_k: int = 0) -> Rollout:
        from vllm import SamplingParams

        self.sync_weights(policy)
        # one seed per prompt: a seed shared by the batch would draw every prompt's reply from
        # the same random stream
        params = [SamplingParams(temperature=temperature, top_k=top_k or -1, top_p=1.0,
                                 seed=row_seed(seed, k, 0), max_tokens=max_new_tokens)
                  for k in range(len(prompts))]
        outputs = self.llm.generate([{"prompt_token_ids": list(p.ids)} for p in prompts], params,
                                    use_tqdm=False)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else self.tokenizer.eos_token_id
        sampled = [list(o.outputs[0].token_ids) or [pad] for o in outputs]
        width = max(len(s) for s in sampled)
        generated = torch.tensor([s + [pad] * (width - len(s)) for s in sampled])
        prompt_ids, prompt_mask = left_pad([p.ids for p in prompts], pad)
        return build_rollout(prompt_ids, prompt_mask, generated,
                             eos_token_ids(self.tokenizer, policy), pad, self.tokenizer)


def vllm_usable() -> bool:
    """vLLM is installed: its CUDA build on a GPU, its CPU build elsewhere (make setup-vllm)."""
    return importlib.util.find_spec("vllm") is not None


# ---------------------------------------------------------------- rewards


class RewardModelScorer:
    """PPO's reward: a trained RM (``RewardScorer``) on each (prompt item, response), as a tensor.

    The text goes through the RM's own tokenizer and chat template and is split into prompt and
    completion ids exactly as in RM training (``reward_model_ids``; tokenizing the conversation
    whole gives other ids, e.g. SentencePiece's "▁" before the reply), so an RM whose tokenizer
    differs from the policy's also scores the same text, not mismatched ids.

    Under several processes the RM is sharded like the trained models (``fsdp.build_model``,
    ``fsdp.shard``) and each process scores its own batches of the responses (a stand-in where
    it has fewer, since every sharded forward is collective); the rewards are then summed so
    that every process holds them all.
    """

    def __init__(self, model_dir, device, policy_tokenizer, log, batch_size: int = 8,
                 dtype: torch.dtype = torch.float32):
        self.scorer = RewardScorer(model_dir, device, batch_size, dtype=dtype,
                                   build=fsdp.build_model,
                                   place=lambda module: fsdp.shard(module, module.rm, device))
        self.tokenizer, self.max_length = self.scorer.tokenizer, self.scorer.max_length
        if self.tokenizer.get_vocab() != policy_tokenizer.get_vocab():
            log.info("the reward model's tokenizer differs from the policy's: responses are "
                     "decoded and re-tokenised with the RM's tokenizer before scoring")

    @property
    def module(self) -> torch.nn.Module:
        return self.scorer.module

    def _ids(self, item: PromptItem, response: str) -> list[int]:
        return reward_model_ids(self.tokenizer, list(item.messages), response, self.max_length)

    def __call__(self, items: Sequence[PromptItem], responses: Sequence[str]) -> Tensor:
        sequences = [self._ids(i, r) for i, r in zip(items, responses)]
        batches = self.scorer.batches(sequences)
        mine, slots = fsdp.rank_slots(len(batches))
        scores = torch.zeros(len(sequences))
        scored = torch.zeros(len(sequences), dtype=torch.bool)
        for slot in range(slots):
            group = batches[mine[slot]] if slot < len(mine) else batches[0]  # a stand-in
            rewards = self.scorer.score_batch([sequences[i] for i in group])
            if slot < len(mine):
                scores[group] = torch.tensor(rewards)
                scored[group] = True
        fsdp.reshard(self.scorer.module)
        return fsdp.combine_rows(scores, scored)


def make_scorer(reward: str, reward_model_dir, device, policy_tokenizer, log,
                dtype: torch.dtype = torch.float32, batch_size: int = 8
                ) -> Callable[[Sequence[PromptItem], Sequence[str]], Tensor]:
    """PPO's scorer: the reward model (held in ``dtype``, scoring ``batch_size`` responses a
    forward) for ``reward_model``, else the programmatic reward function ``reward`` names
    (``programmatic``)."""
    if reward == "reward_model":
        if reward_model_dir is None:
            raise TrainingError("PPO with reward 'reward_model' needs a reward_model input")
        return RewardModelScorer(reward_model_dir, device, policy_tokenizer, log, batch_size,
                                 dtype)
    function = programmatic_reward(reward)
    return lambda items, responses: torch.tensor([function(i, r) for i, r in
                                                  zip(items, responses)], dtype=torch.float32)


def programmatic_reward(reward: str) -> RewardFunction:
    """The reward function a step's ``reward`` names, or a TrainingError saying why not."""
    try:
        return load_reward_function(reward)
    except ValueError as exc:
        raise TrainingError(f"PPO reward {reward!r} is neither 'reward_model' nor a programmatic "
                            f"reward: {exc}") from None
