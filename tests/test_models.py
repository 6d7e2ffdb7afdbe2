"""Model specs resolve to transformers folders; bad specs say what is wrong."""

import pytest

from ablate.models import ModelError, resolve_model


def test_tiny_builtin_is_a_loadable_folder(tiny_model_dir):
    from transformers import AutoConfig, AutoTokenizer

    assert resolve_model({"builtin": "tiny-llama"}) == tiny_model_dir
    config = AutoConfig.from_pretrained(tiny_model_dir)
    assert config.num_hidden_layers == 2 and config.hidden_size == 64
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


def test_local_path_and_errors(tmp_path, tiny_model_dir):
    assert resolve_model({"path": str(tiny_model_dir)}) == tiny_model_dir
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model({"path": str(tmp_path)})
    with pytest.raises(ModelError, match="unknown built-in model 'nope'"):
        resolve_model({"builtin": "nope"})


def test_hub_offline_names_the_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="allenai/not-a-model@v1.*path:"):
        resolve_model({"hub": "allenai/not-a-model", "revision": "v1"})
