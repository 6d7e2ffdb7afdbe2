"""Benchmarks of one's own: checked against the interface when the grid is, else one message."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ablate.cli import app
from ablate.evals.custom import custom_facts, load_benchmark_class
from ablate.spec import expand
from ablate.spec.benchmarks import aggregate
from ablate.spec.schema import GridSpec

GOOD = """
from ablate.evals.custom import GenerativeBenchmark

class Bench(GenerativeBenchmark):
    category = "{category}"
    version = 2

    def items(self, protocol, data_dir):
        return [{{"item_id": "a", "answer": "x"}}]

    def prompt(self, item):
        return "say x"

    def score(self, item, reply):
        return float("x" in reply)
"""


@pytest.fixture
def module(tmp_path, monkeypatch):
    """Writes ``mybench_<n>.py`` on sys.path and returns its import path's module part."""
    monkeypatch.syspath_prepend(str(tmp_path))
    count = iter(range(100))

    def write(source: str) -> str:
        name = f"mybench_{tmp_path.name[-6:].replace('-', '_')}_{next(count)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        return name
    return write


def grid_file(tmp_path: Path, path: str) -> Path:
    spec = tmp_path / "g.yaml"
    spec.write_text("name: t\nmodels: {m: {builtin: tiny-llama}}\n"
                    "axes: {model: [m]}\n"
                    f"eval: {{benchmarks: [gsm8k, mine], custom: {{mine: {{module: '{path}'}}}}}}\n")
    return spec


def test_the_facts_come_from_the_class_and_enter_the_eval_step(module):
    path = module(GOOD.format(category="domain")) + ":Bench"
    facts = custom_facts(path)
    assert (facts.category, facts.scoring, facts.paper_version) == ("domain", "generate", 2)
    grid = GridSpec.model_validate({
        "name": "t", "models": {"m": {"builtin": "tiny-llama"}}, "axes": {"model": ["m"]},
        "eval": {"benchmarks": ["gsm8k", "mine"], "custom": {"mine": {"module": path}}}})
    step = next(s for s in expand(grid, custom_facts={"mine": facts}).steps.values()
                if s.config.benchmark == "mine")
    assert (step.config.module, step.config.category, step.config.version) == (path, "domain", 2)


def test_an_own_category_is_its_own_mean_outside_the_average():
    out = aggregate({"gsm8k": 40.0, "bbh": 20.0, "mine": 90.0}, ["gsm8k", "bbh", "mine"],
                    own={"mine": "domain"})
    assert out == {"reasoning": 30.0, "average": 30.0, "domain": 90.0}


@pytest.mark.parametrize("source,attr,message", [
    ("raise ImportError('no such thing')", "Bench", "cannot import 'mybench_.*': ImportError: "
                                                   "no such thing"),
    ("x = 1", "Bench", "has no 'Bench'"),
    ("class Bench:\n    pass", "Bench", "is not a subclass of ablate.evals.Benchmark"),
    ("from ablate.evals.custom import GenerativeBenchmark\nclass Bench(GenerativeBenchmark):\n"
     "    category = 'domain'\n    def items(self, p, d):\n        return []", "Bench",
     "does not implement prompt, score"),
    (GOOD.format(category="reasoning"), "Bench", "category 'reasoning' is one of the paper's"),
    (GOOD.replace('category = "{category}"', 'pass'), "Bench", "declares no category"),
])
def test_a_module_that_is_not_a_benchmark_is_one_message(tmp_path, module, monkeypatch, source,
                                                          attr, message):
    monkeypatch.setenv("COLUMNS", "400")
    path = f"{module(source)}:{attr}"
    with pytest.raises(ValueError, match=message):
        load_benchmark_class(path)
    out = CliRunner().invoke(app, ["validate", str(grid_file(tmp_path, path))])
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert "eval.custom.mine.module" in out.output


def test_a_custom_name_must_be_listed_and_not_shadow_a_builtin(tmp_path, module, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    path = module(GOOD.format(category="domain")) + ":Bench"
    spec = tmp_path / "g.yaml"
    spec.write_text("name: t\nmodels: {m: {builtin: tiny-llama}}\naxes: {model: [m]}\n"
                    f"eval: {{benchmarks: [gsm8k], custom: {{gsm8k: {{module: '{path}'}}}}}}\n")
    out = CliRunner().invoke(app, ["validate", str(spec)])
    assert out.exit_code == 2 and "'gsm8k' is a built-in benchmark" in out.output
    out = CliRunner().invoke(app, ["validate", str(grid_file(tmp_path, path))])
    assert out.exit_code == 0, out.output
