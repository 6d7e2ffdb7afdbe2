"""What a user sees when vLLM is selected but cannot run: no vLLM, or a model vLLM cannot load."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from ablate.generate import GenerationError, load_backend


def test_vllm_selected_but_not_installed_names_the_install_command(tiny_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    with pytest.raises(GenerationError, match="vLLM is not installed.*make setup-vllm"):
        load_backend(tiny_model_dir, "vllm")
    monkeypatch.setenv("ABLATE_ENGINE", "vllm")  # auto defers to the variable
    with pytest.raises(GenerationError, match="make setup-vllm"):
        load_backend(tiny_model_dir)


def test_unknown_engine_is_refused(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("ABLATE_ENGINE", "vlm")
    with pytest.raises(GenerationError, match=r"unknown engine 'vlm'.*ABLATE_ENGINE.*hf, vllm"):
        load_backend(tiny_model_dir)


def test_eval_command_stops_on_missing_vllm_before_any_benchmark(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ablate.cli import app

    monkeypatch.setitem(sys.modules, "vllm", None)
    result = CliRunner().invoke(app, ["eval", "tiny-llama", "-b", "gsm8k,mmlu", "--limit", "2",
                                      "--engine", "vllm", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "make setup-vllm" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out" / "gsm8k").exists()  # no benchmark ran


def test_grid_on_vllm_without_vllm_runs_nothing(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ablate.cli import app

    monkeypatch.setitem(sys.modules, "vllm", None)
    monkeypatch.setenv("ABLATE_ENGINE", "vllm")
    store = tmp_path / "store"
    result = CliRunner().invoke(app, ["grid", "grids/smoke.yaml", "--store", str(store)])
    assert result.exit_code == 2, result.output
    assert "make setup-vllm" in result.output and "nothing was run" in result.output
    assert not (store / "steps").exists()


@pytest.mark.vllm
def test_grid_preflight_names_a_model_vllm_does_not_support(tiny_model_dir, tmp_path):
    from ablate.generate.vllm_backend import check_model

    check_model(tiny_model_dir)  # a Llama: supported
    folder = tmp_path / "odd-model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["NoSuchArchitectureForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(GenerationError, match=f"vLLM cannot load the model {folder}: its "
                       r"architectures \['NoSuchArchitectureForCausalLM'\] are not among"):
        check_model(folder)


@pytest.mark.vllm
def test_model_vllm_cannot_load_names_model_and_reason(tiny_model_dir, tmp_path):
    folder = tmp_path / "odd-model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["NoSuchArchitectureForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(GenerationError) as caught:
        load_backend(folder, "vllm")
    message = str(caught.value)
    assert f"vLLM cannot load the model {folder}" in message
    assert "NoSuchArchitectureForCausalLM" in message  # vLLM's reason, not only ours
