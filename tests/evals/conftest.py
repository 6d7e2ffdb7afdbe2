"""Helpers for the eval tests: lm-eval tasks built from local files (lm-eval runs offline that way)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml


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


@pytest.fixture(name="lm_eval_yaml")
def lm_eval_yaml_fixture():
    return lm_eval_yaml


@pytest.fixture
def make_lm_eval_task(tmp_path):
    return lambda docs, **config: lm_eval_task(tmp_path, docs, **config)
