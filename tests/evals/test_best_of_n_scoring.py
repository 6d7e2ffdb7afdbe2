"""Best-of-N's scoring path: the generating model released before the reward model loads, the
same choices and rewards as scoring beside it; the reward model's precision; and how the GPUs'
memory is shared out for it (``ablate.generate.reward_model``)."""

from __future__ import annotations

import pytest

from ablate.evals import EvalEnv
from ablate.generate.base import GenerationError
from ablate.spec.schema import BestOfN
from ablate.spec.steps import EvalStep

PROMPTS = ["What is 2 + 2?", "Name a colour."]


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


on_a_cpu = pytest.mark.skipif(_has_cuda(), reason="the CPU's path (a GPU spreads the model)")


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tiny_model_dir):
    """The tiny Llama with a random one-label head: a reward model as RM training writes one."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(7)
    out = tmp_path_factory.mktemp("rm")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1,
                                                               dtype=torch.float32)
    model.score.weight.data.normal_(0, 1.0)  # spread the rewards so that samples differ
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def test_released_then_reloaded_scoring_chooses_as_scoring_beside_the_generator(
        monkeypatch, tiny_model_dir, reward_model_dir, tmp_path):
    """An evaluation's own backend is closed after the N samples are drawn and before the reward
    model loads; the choices equal those of the earlier path (the generator kept, the reward
    model loaded whole in fp32 beside it), and so do the rewards."""
    import ablate.generate.reward_model as reward_model
    from ablate.generate import SamplingParams, load_backend

    sampler = BestOfN(n=4, temperature=1.0, seed=5)
    config = EvalStep(benchmark="gsm8k", protocol="paper", seed=0, sampler=sampler)
    env = EvalEnv(model_dir=tiny_model_dir, config=config, reward_model_dir=reward_model_dir,
                  backend_kind="hf")

    seen = {}
    real_rewards = reward_model.best_of_n_rewards

    def rewards(*args):
        seen["backend at load"] = env._backend
        seen["rewards"] = real_rewards(*args)
        return seen["rewards"]

    monkeypatch.setattr(reward_model, "best_of_n_rewards", rewards)
    chosen = env.generate(PROMPTS, max_new_tokens=8)
    assert seen["backend at load"] is None and env._backend is None  # released first

    # the earlier path: the same samples from a generator that stays loaded, scored by the
    # reward model as it was loaded before (whole, fp32, on this process's device)
    kept = load_backend(tiny_model_dir, "hf")
    samples = kept.generate(PROMPTS, SamplingParams(max_new_tokens=8, n=sampler.n,
                                                    temperature=sampler.temperature,
                                                    seed=sampler.seed))
    kept.close()
    assert len({s for row in samples for s in row}) > 2  # the samples differ, so choice matters
    before = reward_model.RewardScorer(reward_model_dir)
    rewards = before.score([p for p, row in zip(PROMPTS, samples) for _ in row],
                           [s for row in samples for s in row])
    assert seen["rewards"] == rewards  # the same numbers, not merely close
    expected = [[row[max(range(len(row)), key=lambda k: rewards[i * len(row) + k])]]
                for i, row in enumerate(samples)]
    assert chosen == expected


@on_a_cpu
def test_reward_dtype_on_a_cpu(reward_model_dir):
    """float32 is the model as it was always loaded; bfloat16 holds bf16 weights and scores
    close to it; int8 is refused on a CPU with what to choose instead."""
    import torch

    from ablate.generate.reward_model import RewardScorer, best_of_n_scorer

    prompts, replies = ["Hi"] * 3, ["Hello there.", "No.", "Good morning to you!"]
    full = best_of_n_scorer(reward_model_dir, "float32")
    assert full.module.rm.dtype == torch.float32 and full.device.type == "cpu"
    assert full.score(prompts, replies) == RewardScorer(reward_model_dir).score(prompts, replies)
    half = best_of_n_scorer(reward_model_dir, "bfloat16")
    assert half.module.rm.dtype == torch.bfloat16
    assert half.score(prompts, replies) == pytest.approx(full.score(prompts, replies), abs=0.1)
    half.close()
    assert half.module is None
    with pytest.raises(GenerationError, match="CUDA GPUs only.*float32 or bfloat16"):
        best_of_n_scorer(reward_model_dir, "int8")


@on_a_cpu
def test_int8_on_a_cpu_is_refused_before_sampling(tmp_path):
    from test_sampler import FakeBackend

    backend = FakeBackend()
    config = EvalStep(benchmark="gsm8k", protocol="paper", seed=0,
                      sampler=BestOfN(reward_dtype="int8"))
    env = EvalEnv(model_dir=tmp_path, config=config, reward_model_dir=tmp_path, _backend=backend)
    with pytest.raises(GenerationError, match="reward_dtype int8"):
        env.generate(["a"], 5)
    assert backend.calls == []  # nothing was sampled


def test_max_memory_per_gpu_by_hand():
    from ablate.generate.reward_model import scoring_max_memory

    # half of each GPU's free memory, less one scoring batch of 10 bytes
    assert scoring_max_memory([100, 80], batch_bytes=10, weight_bytes=70, headroom=0.5) == \
        {0: 40, 1: 30}
    # a GPU without room for the batch takes no layer
    assert scoring_max_memory([100, 16], batch_bytes=10, weight_bytes=40, headroom=0.5) == {0: 40}
    # weights that do not fit are refused (never placed in CPU memory or on disk)
    with pytest.raises(GenerationError, match="more GPUs .steps.best_of_n"):
        scoring_max_memory([100, 80], batch_bytes=10, weight_bytes=71, headroom=0.5)


def test_a_result_names_the_engine_released_before_scoring(monkeypatch, tmp_path):
    """The engine is closed before the reward model loads; the result still lists vLLM's version
    where vLLM generated."""
    import ablate.generate
    import ablate.generate.reward_model as reward_model
    from ablate.evals.runner import evaluate_benchmark
    from test_sampler import longest_wins

    class FakeVLLM:
        name, tokenizer, closed = "vllm", None, 0

        def generate(self, prompts, params, progress=None):
            return [[f"{p}:{'x' * (k + 1)}" for k in range(params.n)] for p in prompts]

        def close(self):
            FakeVLLM.closed += 1

    monkeypatch.setattr(ablate.generate, "load_backend", lambda *a, **k: FakeVLLM())
    monkeypatch.setattr(reward_model, "best_of_n_rewards", longest_wins)
    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path / "none"))  # the shipped slice
    config = EvalStep(benchmark="gsm8k", protocol="paper", seed=0, limit=1,
                      sampler=BestOfN(n=2))
    result = evaluate_benchmark(config, tmp_path, tmp_path / "out", reward_model_dir=tmp_path)
    assert FakeVLLM.closed == 1 and "vllm" in result.versions


def test_on_gpus_the_model_is_spread_by_a_device_map_sized_for_the_widest_batch(
        monkeypatch, reward_model_dir):
    """The GPU branch's wiring, with CUDA stood in for (no GPU here): from_pretrained gets
    device_map auto and each GPU's free memory less the widest batch's tensors, bf16 weights
    keep autocast, int8 asks for bitsandbytes, and a model placed partly off the GPUs is
    refused."""
    import json
    from types import SimpleNamespace

    import torch

    import ablate.generate.reward_model as reward_model
    from ablate.spec.model_shapes import scoring_batch_bytes, shape_from_config

    made = {}

    class Captured:
        def __init__(self, model_dir, **kwargs):
            made.update(kwargs)
            weight = SimpleNamespace(device=torch.device("cuda", 0))
            self.module = SimpleNamespace(rm=SimpleNamespace(
                get_input_embeddings=lambda: SimpleNamespace(weight=weight)))

    gib = 2 ** 30
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda gpu: ((10 - gpu) * gib, 80 * gib))
    monkeypatch.setattr(reward_model, "RewardScorer", Captured)
    scorer = reward_model.best_of_n_scorer(reward_model_dir, "bfloat16", widest=12)
    shape = shape_from_config(json.loads((reward_model_dir / "config.json").read_text()))
    batch = scoring_batch_bytes(shape, 8, 12, "bfloat16")
    assert made["build"].keywords == {
        "device_map": "auto", "max_memory": {0: int(0.95 * 10 * gib - batch),
                                             1: int(0.95 * 9 * gib - batch)}}
    assert made["dtype"] == torch.bfloat16 and made["bf16_autocast"]
    assert scorer.device == torch.device("cuda", 0)
    from importlib.util import find_spec

    if find_spec("bitsandbytes") is None:  # not installed here
        with pytest.raises(GenerationError, match="needs bitsandbytes"):
            reward_model.best_of_n_scorer(reward_model_dir, "int8")

    placed = SimpleNamespace(rm=SimpleNamespace(hf_device_map={"model.layers.0": 0,
                                                               "model.layers.1": "cpu"}))
    with pytest.raises(GenerationError, match="did not fit the GPUs .parts went to cpu"):
        made["place"](placed)
    placed.rm.hf_device_map["model.layers.1"] = 1
    assert made["place"](placed) is placed
