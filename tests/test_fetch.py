"""Download once, then offline: `ablate fetch` and the preflight of `ablate grid` put a grid's hub
models and training data in the caches; the steps read them with the hub unreachable; what is
missing fails before anything is queued, naming the file and the command that fetches it.
No test here reaches the network: the hub cache is a folder written by the test."""

import json
import os
import shutil
import socket

import pytest
from typer.testing import CliRunner

from ablate.cli import app
from ablate.data.load import conversion_files, raw_rows
from ablate.data.registry import SOURCES

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "test-org/tiny-llama"


def grid_text(revision: str = COMMIT) -> str:
    return f"""\
name: offline
models:
  tiny: {{hub: {REPO}, revision: {revision}}}
datasets:
  hh: {{name: hh-rlhf, max_rows: 4}}
algorithms:
  dpo: {{kind: dpo, lr: 1.0e-4, epochs: 1, batch_size: 4, micro_batch_size: 2, max_length: 128,
        max_prompt_length: 64}}
axes:
  model: [tiny]
  data: [hh]
  algorithm: [dpo]
eval:
  benchmarks: [mmlu]
  limit: {{mmlu: 1}}
"""


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """The hub unreachable: offline settings, and any connection attempt fails. Returns the hub
    cache folder (empty) the run reads."""
    from huggingface_hub import constants

    def unreachable(*args, **kwargs):
        raise OSError("the network is unreachable in this test")

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "ablate-cache"))
    monkeypatch.setattr(socket.socket, "connect", unreachable)
    monkeypatch.setattr(socket, "getaddrinfo", unreachable)
    return cache


def cache_model(cache, model_dir, repo=REPO, commit=COMMIT):
    """A hub cache entry as huggingface_hub lays it out: the snapshot of ``commit`` and the
    ``main`` ref pointing at it."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(model_dir, folder / "snapshots" / commit)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    return folder / "snapshots" / commit


def cache_conversion():
    """hh-rlhf's conversion in ablate's cache, as a fetch leaves it (the rows of its shipped
    slice, converted by the same converter)."""
    from ablate.data import load_preferences
    from ablate.spec.schema import DataRef

    source = SOURCES["hh-rlhf"]
    rows = load_preferences(DataRef(name="hh-rlhf-slice")).rows[:12]
    rows_path, meta_path = conversion_files(source, "train", raw_rows(source, "train")[1])
    rows_path.parent.mkdir(parents=True, exist_ok=True)
    rows_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta_path.write_text(json.dumps({"skipped": {}, "rows": len(rows)}))
    return rows_path


def invoke(*args):
    """Exit code and output without whitespace (the console wraps long paths at any point)."""
    out = CliRunner().invoke(app, [str(a) for a in args])
    return out.exit_code, squeezed(out.output)


def squeezed(text) -> str:
    return "".join(str(text).split())


def test_fetch_finds_what_is_cached_without_the_hub(tmp_path, offline, tiny_model_dir):
    snapshot = cache_model(offline, tiny_model_dir)
    cache_conversion()
    grid = tmp_path / "offline.yaml"
    grid.write_text(grid_text())
    code, output = invoke("fetch", grid)
    assert code == 0, output
    assert squeezed(f"model hub:{REPO}@{COMMIT}: {snapshot}") in output
    assert squeezed("data hh-rlhf: 4 rows in the cache") in output


def test_a_missing_model_or_dataset_fails_before_anything_runs_or_is_queued(
        tmp_path, offline, tiny_model_dir):
    grid = tmp_path / "offline.yaml"
    grid.write_text(grid_text())
    store = tmp_path / "store"
    missing_model = (f"model {REPO}@{COMMIT} is not in the hub cache "
                     f"({offline}/models--test-org--tiny-llama)")
    for args in (["grid", grid, "--store", store],
                 ["grid", grid, "--submit", "--cluster", "slurm/local.yaml", "--store", store],
                 ["fetch", grid]):
        code, output = invoke(*args)
        assert code == 2, output
        assert squeezed(missing_model) in output and "ablatefetchGRID.yaml" in output, output
    # no plan saved, no step folder: nothing was run or queued
    assert not (store / "grids").exists() and not (store / "steps").exists()

    cache_model(offline, tiny_model_dir)  # the model now, but not the data
    code, output = invoke("grid", grid, "--store", store)
    assert code == 2
    rows_file = conversion_files(SOURCES["hh-rlhf"], "train",
                                 raw_rows(SOURCES["hh-rlhf"], "train")[1])[0]
    assert squeezed(f"{rows_file} is not in the cache") in output
    assert "ablatefetchGRID.yaml" in output
    assert not (store / "steps").exists()


@pytest.mark.slow
def test_a_grid_whose_models_and_data_are_cached_runs_with_the_hub_unreachable(
        tmp_path, offline, tiny_model_dir):
    cache_model(offline, tiny_model_dir)
    cache_conversion()
    grid = tmp_path / "offline.yaml"
    grid.write_text(grid_text(revision="main"))  # a branch: its commit is read from the ref
    store = tmp_path / "store"
    code, output = invoke("grid", grid, "--store", store)
    assert code == 0, output
    done = sorted(p.parent.parent.name for p in store.glob("steps/*/*/DONE.json"))
    assert done == ["eval", "eval", "train_dpo"]
    summary = json.loads(next(store.glob("steps/train_dpo/*/train_summary.json")).read_text())
    assert summary["train_pairs"] == 4


def test_the_training_processes_read_the_hub_offline(tmp_path, monkeypatch):
    """The distributed entry point turns the hub offline for its process before anything reads
    a model or data (here a step file that is not there stops it right after)."""
    from ablate.train import fsdp

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with pytest.raises(FileNotFoundError):
        fsdp.main(["dpo", "--config", str(tmp_path / "absent.json"), "--out", str(tmp_path)])
    assert os.environ["HF_HUB_OFFLINE"] == os.environ["HF_DATASETS_OFFLINE"] == "1"
