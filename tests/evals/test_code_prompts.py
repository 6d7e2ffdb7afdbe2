"""The code benchmarks' paper protocol as open-instruct ran it: HumanEval+ with HumanEvalPack's
instruction, top_p 0.95 and 3 s; MBPP+ on the hub rows [100:] with its prompt, stop and the rows'
own assertions."""

from __future__ import annotations

import json

import pytest

from ablate.evals import EvalError, get_benchmark
from ablate.spec.expand import eval_config
from ablate.spec.plan import Step
from ablate.spec.schema import EvalConfig, PassAtK
from ablate.spec.steps import identity

def test_humaneval_paper_prompt_is_the_humanevalpack_instruction(shared_data, humanevalpack):
    bench = get_benchmark("humaneval_plus")
    item = bench.items("paper", shared_data)[0]
    user, prefix, stop = bench.prompt_parts(item, "paper")
    assert item["task_id"] == "HumanEval/0" and user.startswith(
        "Write a Python function `has_close_elements(numbers: List[float], threshold: float) -> "
        "bool` to solve the following problem:\nCheck if in given list")
    assert user == json.loads(humanevalpack.read_text().splitlines()[0])["instruction"]
    assert prefix == "Here is the function:\n\n```python\n" + item["prompt"]
    assert prefix.endswith('    True\n    """\n')
    assert stop == ("\nclass", "\ndef", "\n#", "\nif", "\nprint", "\n```")
    assert bench.program(item, "    return False\n", "paper").limits.cpu_s == 3
    full_user, full_prefix, _ = bench.prompt_parts(item, "full")
    assert full_user == "Complete the following python function.\n\n\n" + item["prompt"]
    assert full_prefix == "Here is the completed function:\n\n\n```python\n"


def test_humaneval_paper_without_humanevalpack_says_where_to_put_it(shared_data, monkeypatch):
    monkeypatch.delenv("ABLATE_HUMANEVALPACK", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(shared_data / "no-such-cache"))
    with pytest.raises(EvalError, match="HumanEvalPack's instructions .* put a copy at .*"
                       "humaneval_plus/humanevalpack.jsonl .* or use protocol full"):
        get_benchmark("humaneval_plus").items("paper", shared_data)


def test_mbpp_paper_items_prompt_stop_and_tests(tmp_path, mbppplus_hub):
    bench = get_benchmark("mbpp_plus")
    items = bench.items("paper", tmp_path)
    assert [i["item_id"] for i in items] == ["Mbpp/102", "Mbpp/103", "Mbpp/104"]  # [100:]
    user, prefix, stop = bench.prompt_parts(items[0], "paper")
    assert user == ("Complete the following python function.\n\n\n"
                    "Write a function to double a number (100).import math\ndef double_100(n)")
    assert prefix == "Here is the completed function:\n\n\n```python\n" and stop == ("```",)
    right = "def double_100(n):\n    return n + n\n"
    program = bench.program(items[0], right, "paper")
    assert program.source == right + "\n" + items[0]["test"] and program.limits.cpu_s == 10
    assert program.run().passed
    assert not bench.program(items[0], "def double_100(n):\n    return 4\n", "paper").run().passed


def test_mbpp_paper_without_the_hub_rows_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.delenv("ABLATE_MBPPPLUS_HUB", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(EvalError, match="evalplus/mbppplus .* put a copy at .*"
                       "mbpp_plus/mbppplus_hub_test.jsonl"):
        get_benchmark("mbpp_plus").items("paper", tmp_path)
    monkeypatch.setenv("ABLATE_MBPPPLUS_HUB", str(tmp_path / "absent.jsonl"))
    with pytest.raises(EvalError, match="ABLATE_MBPPPLUS_HUB names .* not a file"):
        get_benchmark("mbpp_plus").items("paper", tmp_path)


def test_paper_humaneval_samples_with_top_p_095_and_new_ids():
    paper = eval_config(EvalConfig(), "humaneval_plus")
    assert paper.sampler == PassAtK(n=20, temperature=0.8, top_p=0.95) and paper.version == 2
    mbpp = eval_config(EvalConfig(), "mbpp_plus")
    assert mbpp.sampler.top_p == 1.0 and mbpp.version == 2  # open-instruct's MBPP sets none
    full = eval_config(EvalConfig(protocol="full"), "humaneval_plus")
    assert full.sampler.top_p == 1.0 and full.version == 1
    # a top_p at its default is left out of the id: the full protocol's ids are unchanged
    assert "top_p" not in identity(full)["sampler"] and identity(paper)["sampler"]["top_p"] == 0.95
    assert Step(name="p", config=paper).id != Step(name="p", config=paper.model_copy(
        update={"sampler": PassAtK()})).id
    own = eval_config(EvalConfig(pass_at_k=PassAtK(top_p=1.0)), "humaneval_plus")
    assert own.sampler.top_p == 1.0  # a grid's own top_p is kept


def test_top_p_reaches_the_sampler(shared_data, humanevalpack, fake_env):
    bench = get_benchmark("humaneval_plus")
    items = bench.items("paper", shared_data)[:1]
    env = fake_env("paper", lambda prompt: "    return False\n",
                   sampler=PassAtK(n=1, top_p=0.95))
    bench.evaluate(items, env)
    assert env.top_p == 0.95 and env.stop[-1] == "\n```"
