"""Helpers for the eval tests: lm-eval tasks built from local files (lm-eval runs offline that way)."""

from __future__ import annotations

import json
import threading
from http.server import HTTPServer
from pathlib import Path

import pytest
import yaml

from fake_openai import FakeEndpoint, pick


def lm_eval_task(tmp_path: Path, docs: list[dict], **config):
    from lm_eval.api.task import ConfigurableTask

    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return ConfigurableTask(config={"task": "ablate_check", "dataset_path": "json",
                                    "dataset_kwargs": {"data_files": {"test": str(data)}},
                                    "test_split": "test", **config})


def lm_eval_yaml(relative: str) -> dict:
    import lm_eval

    path = Path(lm_eval.__file__).parent / "tasks" / relative
    text = path.read_text()
    # The task YAMLs use custom !function tags; the parts read here do not need them.
    loader = yaml.SafeLoader
    loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    return yaml.load(text, Loader=loader)


def lm_eval_gsm8k(replies: list[str], targets: list[str]) -> tuple[list[str], list[float]]:
    """lm-eval's gsm8k-cot "flexible-extract" answer of each reply and its exact-match score."""
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters import build_filter_ensemble

    config = lm_eval_yaml("gsm8k/gsm8k-cot.yaml")
    spec = next(f for f in config["filter_list"] if f["name"] == "flexible-extract")
    ensemble = build_filter_ensemble("flexible-extract", [
        (step["function"], {k: v for k, v in step.items() if k != "function"})
        for step in spec["filter"]])
    metric_args = {k: v for k, v in config["metric_list"][0].items()
                   if k in ("ignore_case", "ignore_punctuation", "regexes_to_ignore")}
    filtered = [[r] for r in replies]
    for make_filter in ensemble.filters:  # regex, then take_first
        filtered = list(make_filter().apply(filtered, [{}] * len(replies)))
    picks = [r[0] if isinstance(r, list) else r for r in filtered]
    return picks, [exact_match_hf_evaluate([p], [t], **metric_args)["exact_match"]
                   for p, t in zip(picks, targets)]


@pytest.fixture(name="lm_eval_gsm8k")
def lm_eval_gsm8k_fixture():
    return lm_eval_gsm8k


@pytest.fixture(name="lm_eval_yaml")
def lm_eval_yaml_fixture():
    return lm_eval_yaml


@pytest.fixture
def make_lm_eval_task(tmp_path):
    return lambda docs, **config: lm_eval_task(tmp_path, docs, **config)


class FakeEnv:
    """What a benchmark's ``evaluate`` uses of an EvalEnv, with scripted replies: ``reply(prompt)``
    answers each prompt, and the stop sequences of the last ``generate`` call are kept."""

    def __init__(self, protocol: str, reply, data_root: Path | None = None, **settings):
        self.protocol, self.reply, self.data_root = protocol, reply, data_root
        self.seed, self.judge, self.reward_model_dir = 0, None, None
        self.cache_dir, self.stop = Path("."), None
        self.__dict__.update(settings)

    def chat(self, user: str, assistant_prefix: str = "") -> str:
        return f"<|user|>\n{user}\n<|assistant|>\n{assistant_prefix}"

    def new_tokens(self, default: int) -> int:
        return default

    def generate(self, prompts, max_new_tokens, stop=(), n=1, temperature=0.0, top_p=1.0,
                 rm_prompts=None):
        self.stop, self.top_p = tuple(stop), top_p
        return [[self.reply(p)] for p in prompts]


@pytest.fixture
def fake_env():
    return FakeEnv


# HumanEvalPack's row for HumanEval/0 (bigcode/humanevalpack data/python/data/humanevalpack.jsonl)
HEP_0 = ("Write a Python function `has_close_elements(numbers: List[float], threshold: float) -> "
         "bool` to solve the following problem:\nCheck if in given list of numbers, are any two "
         "numbers closer to each other than\ngiven threshold.\n>>> has_close_elements([1.0, 2.0, "
         "3.0], 0.5)\nFalse\n>>> has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)\nTrue")


@pytest.fixture
def humanevalpack(tmp_path, monkeypatch):
    """HumanEvalPack's instruction file (hub-only): HumanEval/0's real row, the others made up."""
    path = tmp_path / "humanevalpack.jsonl"
    rows = [{"task_id": f"Python/{n}", "instruction": HEP_0 if n == 0 else f"task {n}"}
            for n in range(164)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("ABLATE_HUMANEVALPACK", str(path))
    return path


def hub_rows(count: int) -> list[dict]:
    """Rows in the hub dataset evalplus/mbppplus's columns; row k doubles its input."""
    return [{"task_id": k + 2, "prompt": f"Write a function to double a number ({k}).",
             "code": f"import math\ndef double_{k}(n):\n    return 2 * n",
             "source_file": "x", "test_imports": [],
             "test_list": [f"assert double_{k}(2) == 4"],
             "test": f"assert double_{k}(2) == 4\nassert double_{k}(5) == 10\n"}
            for k in range(count)]




@pytest.fixture
def mbppplus_hub(tmp_path, monkeypatch):
    """The hub dataset evalplus/mbppplus's test split (hub-only) in its columns: 103 made-up rows."""
    path = tmp_path / "mbppplus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in hub_rows(103)))
    monkeypatch.setenv("ABLATE_MBPPPLUS_HUB", str(path))
    return path


@pytest.fixture(scope="session")
def judge_stand_ins(tmp_path_factory, tiny_model_dir):
    """Two tiny random causal LMs in place of the 7B judges (not reachable offline)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    folders = {}
    for seed, role in enumerate(("truth", "info")):
        out = tmp_path_factory.mktemp(role)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                             bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(seed)
        LlamaForCausalLM(config).save_pretrained(out)
        tokenizer.save_pretrained(out)
        folders[role] = out
    return folders


@pytest.fixture(scope="module")
def toxicity_stand_in(tmp_path_factory, tiny_model_dir):
    """A random 2-label classifier in place of tomh/toxigen_roberta (not reachable offline)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    out = tmp_path_factory.mktemp("toxicity")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         num_labels=2, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def endpoint():
    server = HTTPServer(("127.0.0.1", 0), FakeEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeEndpoint.script, FakeEndpoint.seen, FakeEndpoint.answer = [], [], staticmethod(pick)
    FakeEndpoint.top_logprobs = None
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
