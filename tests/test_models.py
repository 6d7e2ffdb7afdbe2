"""Model specs resolve to transformers folders; bad specs say what is wrong; the paper's Tulu 2
models talk in the Tulu 2 chat format."""

import json
import shutil
from pathlib import Path

import pytest

from ablate.models import ModelError, resolve_model
from ablate.spec.schema import ModelSpec


def test_tiny_builtin_is_a_loadable_folder(tiny_model_dir):
    from transformers import AutoConfig, AutoTokenizer

    assert resolve_model(ModelSpec(builtin="tiny-llama")) == tiny_model_dir
    config = AutoConfig.from_pretrained(tiny_model_dir)
    assert config.num_hidden_layers == 2 and config.hidden_size == 64
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


def test_local_path_and_errors(tmp_path, tiny_model_dir):
    assert resolve_model(ModelSpec(path=str(tiny_model_dir))) == tiny_model_dir
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(ModelSpec(path=str(tmp_path)))
    with pytest.raises(ModelError, match="unknown built-in model 'nope'"):
        resolve_model(ModelSpec(builtin="nope"))
    with pytest.raises(ModelError, match="nowhere: no such folder"):
        resolve_model(ModelSpec(path=str(tmp_path / "nowhere")))


def test_eval_command_reads_path_like_names_as_folders_and_fails_cleanly(tmp_path):
    from typer.testing import CliRunner

    from ablate.cli import app
    from ablate.evals.cli import model_spec_for

    assert model_spec_for("allenai/tulu-2-7b@main") == ModelSpec(hub="allenai/tulu-2-7b",
                                                                 revision="main")
    for name in ("/no/such/model", "./model", "runs/steps/train_dpo/abc/model"):
        assert model_spec_for(name).path
    missing = str(tmp_path / "no" / "model")
    out = CliRunner().invoke(app, ["eval", missing, "-b", "gsm8k", "--out", str(tmp_path / "o")])
    assert out.exit_code == 2 and "no such folder" in " ".join(out.output.split())
    assert out.exception is None or isinstance(out.exception, SystemExit)


def test_hub_offline_names_the_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="allenai/not-a-model@v1.*path:"):
        resolve_model(ModelSpec(hub="allenai/not-a-model", revision="v1"))


def test_a_hub_model_logs_its_commit_and_warns_on_a_branch(monkeypatch, tmp_path, caplog):
    import huggingface_hub

    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "snapshots" / commit
    snapshot.mkdir(parents=True)
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, revision, local_files_only: snapshot)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_bytes(b"")
    with caplog.at_level("INFO", logger="ablate.models"):
        assert resolve_model(ModelSpec(hub="someone/a-model", revision="main")) == snapshot
    assert f"someone/a-model@main is commit {commit}" in caplog.text
    assert f"pin `revision: {commit}`" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="ablate.models"):
        resolve_model(ModelSpec(hub="someone/a-model", revision=commit))
    assert "is commit" in caplog.text
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # a pinned commit


def open_instruct_tulu_prompt(messages: list[dict], eos: str) -> str:
    """allenai/open-instruct@959cbbc9d:eval/templates.py create_prompt_with_tulu_chat_format,
    add_bos=False (its evaluations' setting), re-derived."""
    text = ""
    for message in messages:
        if message["role"] == "system":
            text += "<|system|>\n" + message["content"] + "\n"
        elif message["role"] == "user":
            text += "<|user|>\n" + message["content"] + "\n"
        else:
            text += "<|assistant|>\n" + message["content"].strip() + eos + "\n"
    return text + "<|assistant|>\n"


@pytest.mark.parametrize("where", ["chat_template.jinja", "tokenizer_config.json"])
def test_a_tulu_2_model_formats_chats_as_the_paper_whatever_template_the_hub_has(
        monkeypatch, tmp_path, tiny_model_dir, where):
    import huggingface_hub
    from transformers import AutoTokenizer

    from ablate.generate.base import chat_prompt
    from ablate.models import PAPER_MODELS

    commit = "89abcdef0123456789abcdef0123456789abcdef"
    snapshot = tmp_path / "hub" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in tiny_model_dir.iterdir():
        if path.name != "chat_template.jinja":
            shutil.copy(path, snapshot / path.name)
    hub_template = "{% for m in messages %}<<{{ m['content'] }}>>{% endfor %}"  # not Tulu's
    if where == "chat_template.jinja":
        (snapshot / where).write_text(hub_template)
    else:
        config = json.loads((snapshot / where).read_text())
        (snapshot / where).write_text(json.dumps({**config, "chat_template": hub_template}))
    assert "<<Hi>>" in AutoTokenizer.from_pretrained(snapshot).apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False)
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, revision, **_: snapshot)
    spec = ModelSpec(hub="allenai/tulu-2-13b", revision=PAPER_MODELS["allenai/tulu-2-13b"].revision)
    folder = resolve_model(spec)
    assert resolve_model(spec) == folder != snapshot  # built once per commit
    tokenizer = AutoTokenizer.from_pretrained(folder)
    eos = tokenizer.eos_token
    assert chat_prompt(tokenizer, "What is 2+2?", "A:") == \
        "<|user|>\nWhat is 2+2?\n<|assistant|>\nA:"
    conversation = [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": " Hello there.\n"},
                    {"role": "user", "content": "Bye"}]
    assert tokenizer.apply_chat_template(conversation, tokenize=False,
                                         add_generation_prompt=True) == \
        open_instruct_tulu_prompt(conversation, eos)
    # training text ends with the answer and its EOS, as open-instruct's finetune.py writes it
    assert tokenizer.apply_chat_template(conversation[:3], tokenize=False) == \
        open_instruct_tulu_prompt(conversation[:3], eos).removesuffix("<|assistant|>\n")
    # the hub's files are read through, not copied; the snapshot itself is untouched
    assert (folder / "model.safetensors").is_symlink()
    assert hub_template in (snapshot / where).read_text()


def test_paper_grids_load_each_paper_model_at_its_recorded_revision():
    import yaml

    from ablate.models import PAPER_MODELS

    grids = sorted((Path(__file__).resolve().parents[1] / "grids").glob("table*.yaml"))
    seen = 0
    for grid in grids:
        for name, model in yaml.safe_load(grid.read_text())["models"].items():
            if model.get("hub") in PAPER_MODELS:
                assert model.get("revision") == PAPER_MODELS[model["hub"]].revision, (grid, name)
                seen += 1
    assert seen >= len(grids)


COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, tiny_model_dir):
    """A hub cache laid out as huggingface_hub writes it, holding the tiny model at COMMIT (with
    ``main`` pointing there), and the hub offline."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    folder = tmp_path / "hub" / "models--org--tiny"
    shutil.copytree(tiny_model_dir, folder / "snapshots" / COMMIT)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(COMMIT)
    return folder / "snapshots" / COMMIT


def test_a_cached_hub_model_is_read_without_the_network(hub_cache):
    for revision in ("main", COMMIT, None):
        for fetch in (False, True):
            assert resolve_model(ModelSpec(hub="org/tiny", revision=revision),
                                 fetch=fetch) == hub_cache


def test_a_model_or_file_missing_from_the_cache_is_named_with_the_fetch_command(hub_cache):
    with pytest.raises(ModelError, match=r"org/absent@main is not in the hub cache "
                                         r"\(.*models--org--absent\).*`ablate fetch GRID.yaml`"):
        resolve_model(ModelSpec(hub="org/absent"))
    (hub_cache / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=f"{hub_cache / 'model.safetensors'} is missing from "
                                         r"the hub cache.*`ablate fetch GRID.yaml`"):
        resolve_model(ModelSpec(hub="org/tiny", revision=COMMIT))
    # a sharded checkpoint: each shard its index names
    (hub_cache / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors",
                        "b": "model-00002-of-00002.safetensors"}}))
    (hub_cache / "model-00001-of-00002.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="model-00002-of-00002.safetensors is missing"):
        resolve_model(ModelSpec(hub="org/tiny", revision=COMMIT))
    # fetching asks the hub for what the cache lacks; offline, it cannot provide it
    with pytest.raises(ModelError, match="model-00002-of-00002.safetensors is missing from the "
                                         "hub cache, and the hub did not provide it"):
        resolve_model(ModelSpec(hub="org/tiny", revision=COMMIT), fetch=True)
