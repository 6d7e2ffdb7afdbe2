"""Loading: raw rows (shipped slice, local override or hub) -> converted, cleaned, cached rows.

Where raw rows come from, first match wins:
1. a shipped slice (``packaged`` sources, files in ``ablate/data/slices/``);
2. ``$ABLATE_DATA_<NAME>`` (name upper-cased, ``-`` -> ``_``): a file, or a folder with
   ``train*``/``test*`` files;
3. ``$ABLATE_DATA_DIR``: the source's ``local_files`` patterns, else ``<dir>/<name>/train*`` and
   ``test*``;
4. the hub, via ``datasets.load_dataset(hub_id, config, split=..., revision=...)``.
Files may be .jsonl, .jsonl.gz, .json (a list) or .parquet.

A conversion is cached under ``$ABLATE_CACHE/data/<name>/`` keyed by the source revision (or the
local files' size and mtime), the converter version and the split, so every job of a grid reuses
it: ``ablate fetch`` (and the preflight of ``ablate grid``) converts each hub source once, where
the hub can be reached, and a job that misses the cache names the file and that command.
Downsampling happens after the cache and is cheap.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ablate.data.registry import MIXTURES, PROMPT_SETS, SOURCES, PromptSource, Source
from ablate.data.rows import (
    BROKEN_TURNS, DUPLICATE_PROMPT, MISSING_FIELD, NON_STRING, PreferenceData, PromptData, SkipRow,
    clean, downsample, first_user_text, is_held_out, mix_preferences, prompt_text,
)
from ablate.spec.load import FETCH_COMMAND
from ablate.spec.schema import DataRef
from ablate.spec.steps import PromptsRef
from ablate.store import atomic_write_json, atomic_write_jsonl

SLICES_DIR = Path(__file__).parent / "slices"
NOT_IN_FG = "prompt not in the fine-grained UltraFeedback set"
EXTENSIONS = (".jsonl", ".jsonl.gz", ".json", ".parquet")


class DataUnavailable(RuntimeError):
    """The source is not on this machine and the hub cannot be reached."""

    will_fail_again = True  # a job's node does not gain the data or a network by retrying


# ---------------------------------------------------------------- raw rows


def read_file(path: Path) -> Iterator[dict]:
    """The rows of a data file; a file that is not UTF-8 text (or not its format) is a
    ValueError naming the file."""
    try:
        yield from _read_rows(path)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as "
                         "UTF-8") from None


def _read_rows(path: Path) -> Iterator[dict]:
    name = path.name
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=2048):
            yield from batch.to_pylist()
    elif name.endswith(".json"):
        with open(path, encoding="utf-8") as handle:
            try:
                data = json.load(handle)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        yield from (data if isinstance(data, list) else data.get("data", []))
    elif name.endswith((".jsonl", ".jsonl.gz")):
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
    else:
        raise ValueError(f"{path}: unsupported file type; expected one of {EXTENSIONS}")


def _split_files(folder: Path, split: str) -> list[Path]:
    return sorted(p for p in folder.glob(f"{split}*") if p.name.endswith(EXTENSIONS))


def local_files(name: str, patterns: dict[str, tuple[str, ...]], split: str,
                packaged: bool = False) -> list[Path] | None:
    """The local files for one split, [] when a local root applies but has none, None to use the hub."""
    if packaged:
        return sorted(p for pat in patterns.get(split, ()) for p in SLICES_DIR.glob(pat))
    override = os.environ.get("ABLATE_DATA_" + name.upper().replace("-", "_"))
    if override:
        path = Path(override)
        if path.is_file():
            return [path] if split == "train" else []
        return _split_files(path, split)
    root = os.environ.get("ABLATE_DATA_DIR")
    if root:
        found = sorted(p for pat in patterns.get(split, ()) for p in Path(root).glob(pat))
        return found or _split_files(Path(root) / name, split)
    return None


def _fingerprint(paths: list[Path]) -> list:
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]


def _hub_rows(hub_id: str, config: str | None, split: str, revision: str,
              name: str, data_dir: str | None = None,
              data_files: str | None = None) -> Iterable[dict]:
    """One split of a hub dataset; ``data_files`` (a pattern in the repository) reads only the
    files that hold it, where one repository keeps many data sets."""
    import datasets

    try:
        return datasets.load_dataset(hub_id, config, split=split, revision=revision,
                                     data_dir=data_dir,
                                     data_files={split: data_files} if data_files else None)
    except Exception as exc:  # offline, gated, renamed: all end the same way for the user
        files = f", files={data_files}" if data_files else ""
        raise DataUnavailable(
            f"dataset {name!r}: could not load {hub_id} (config={config}, split={split}{files}, "
            f"revision={revision}) from the hub: {type(exc).__name__}: {exc}. Download it first "
            f"with `{FETCH_COMMAND}` where the hub can be reached, or point ABLATE_DATA_DIR (or "
            f"ABLATE_DATA_{name.upper().replace('-', '_')}) at local files"
        ) from exc


def raw_rows(source: Source, split: str) -> tuple[Callable[[], Iterable[dict]], Any]:
    """(a function giving the raw rows, the cache-key fingerprint) of one native split.

    The rows are only read when the cache misses, so a cached hub conversion works offline.
    """
    files = local_files(source.name, source.local_files, split, source.packaged)
    if files is not None:
        if not files:
            where = SLICES_DIR if source.packaged else (
                os.environ.get("ABLATE_DATA_" + source.name.upper().replace("-", "_"))
                or os.environ.get("ABLATE_DATA_DIR"))
            raise DataUnavailable(f"dataset {source.name!r}: no local files for split {split!r} "
                                  f"under {where} (patterns {source.local_files.get(split, ())} "
                                  f"or {source.name}/{split}*)")
        return (lambda: (row for path in files for row in read_file(path))), _fingerprint(files)
    hub_split = source.hub_splits[split]
    data_files = source.hub_data_files.get(split)
    fingerprint = [source.hub_id, source.config, source.data_dir, hub_split, source.revision]
    return (lambda: _hub_rows(source.hub_id, source.config, hub_split, source.revision,
                              source.name, source.data_dir, data_files),
            fingerprint + [data_files] if data_files else fingerprint)


def has_native_test(source: Source) -> bool:
    files = local_files(source.name, source.local_files, "test", source.packaged)
    return bool(files) if files is not None else "test" in source.hub_splits


# ---------------------------------------------------------------- conversion + cache


def cache_root() -> Path:
    return Path(os.environ.get("ABLATE_CACHE", Path.home() / ".cache" / "ablate")) / "data"


def convert_rows(source: Source, raws: Iterable[dict], seed: int = 0) -> tuple[list[dict], dict]:
    skipped: Counter = Counter()
    rows = clean(source.convert(raws, source.name, seed), skipped)
    return rows, dict(skipped)


def conversion_files(source: Source, split: str, fingerprint) -> tuple[Path, Path]:
    """The cache's files of one split's conversion: its rows (JSONL) and their record."""
    key = hashlib.sha256(json.dumps([source.name, split, fingerprint, source.converter_version],
                                    sort_keys=True, default=str).encode()).hexdigest()[:16]
    folder = cache_root() / source.name
    return folder / f"{split}-{key}.jsonl", folder / f"{split}-{key}.meta.json"


def converted(source: Source, split: str) -> tuple[list[dict], dict]:
    """All clean rows of one native split, from the cache when this conversion was done before
    (``ablate fetch`` does it once where the hub can be reached; a step then reads the cache)."""
    read_raws, fingerprint = raw_rows(source, split)
    rows_path, meta_path = conversion_files(source, split, fingerprint)
    if meta_path.is_file() and rows_path.is_file():
        meta = json.loads(meta_path.read_text())
        with open(rows_path) as handle:
            return [json.loads(line) for line in handle], meta["skipped"]
    try:
        raws = read_raws()
    except DataUnavailable as exc:
        raise DataUnavailable(f"{rows_path} is not in the cache. {exc}") from None
    rows, skipped = convert_rows(source, raws)
    atomic_write_jsonl(rows_path, rows)
    atomic_write_json(meta_path, {"skipped": skipped, "rows": len(rows), "key": fingerprint,
                                  "converter_version": source.converter_version})
    return rows, skipped


def _source_split(source: Source, split: str) -> tuple[list[dict], dict]:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if has_native_test(source):
        return converted(source, split)
    if not source.hold_out_test:
        if split == "test":
            raise ValueError(f"dataset {source.name!r} has no test split: the paper trained on "
                             "every row of it (its train split is all of them)")
        return converted(source, "train")
    rows, skipped = converted(source, "train")
    return [r for r in rows if is_held_out(r) == (split == "test")], skipped


def _restrict(rows: list[dict], skipped: dict, other: str) -> tuple[list[dict], dict]:
    allowed = {first_user_text(r) for split in ("train", "test")
               for r in _source_split(SOURCES[other], split)[0]}
    kept = [r for r in rows if first_user_text(r) in allowed]
    skipped = dict(skipped)
    if len(kept) < len(rows):
        skipped[NOT_IN_FG] = skipped.get(NOT_IN_FG, 0) + len(rows) - len(kept)
    return kept, skipped


def load_preferences(ref: DataRef, split: str = "train") -> PreferenceData:
    """A named preference dataset (or mixture), or a file or hub dataset of the grid's own, one
    split, downsampled per ``ref``."""
    if ref.name is None:
        from ablate.data.own import own_preferences

        data = own_preferences(ref, split)
        data.rows = downsample(data.rows, ref.max_rows, ref.sample_seed)
        return data
    if ref.name in MIXTURES:
        mixture = MIXTURES[ref.name]
        parts = [load_preferences(DataRef(name=name, max_rows=rows, sample_seed=ref.sample_seed),
                                  split) for name, rows in mixture.components]
        data = mix_preferences(ref.name, [(p, len(p)) for p in parts if len(p)], ref.sample_seed)
        data.rows = downsample(data.rows, ref.max_rows, ref.sample_seed)
        return data
    if ref.name not in SOURCES:
        raise KeyError(f"unknown dataset {ref.name!r}; known: {', '.join(sorted([*SOURCES, *MIXTURES]))}")
    source = SOURCES[ref.name]
    rows, skipped = _source_split(source, split)
    if source.restrict_to_prompts_of:
        rows, skipped = _restrict(rows, skipped, source.restrict_to_prompts_of)
    return PreferenceData(name=ref.name, rows=downsample(rows, ref.max_rows, ref.sample_seed),
                          skipped=dict(skipped))


# ---------------------------------------------------------------- prompt sets


def _check_prompt(row: dict) -> str | None:
    prompt = row.get("prompt")
    if not isinstance(prompt, list) or not prompt:
        return MISSING_FIELD
    for message in prompt:
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            return BROKEN_TURNS
        if not isinstance(message.get("content"), str):
            return NON_STRING if message.get("content") is not None else MISSING_FIELD
        if not message["content"].strip():
            return MISSING_FIELD
    if prompt[-1]["role"] != "user":
        return BROKEN_TURNS
    return None


def clean_prompts(rows: Iterable[dict | SkipRow], skipped: Counter) -> list[dict]:
    """Drop converter skips, unusable prompts and repeated prompts, counting each reason."""
    kept, seen = [], set()
    for row in rows:
        reason = row.reason if isinstance(row, SkipRow) else _check_prompt(row)
        if reason is None:
            key = prompt_text(row)
            reason = DUPLICATE_PROMPT if key in seen else None
            seen.add(key)
        if reason:
            skipped[reason] += row.rows if isinstance(row, SkipRow) else 1
        else:
            kept.append({"prompt": row["prompt"], "reference": row.get("reference")})
    return kept


def _preference_prompts(ref: DataRef) -> tuple[list[dict], dict]:
    """The deduplicated prompts of a preference dataset's train split; the skips are the
    preference loader's plus the repeated prompts."""
    data = load_preferences(ref)
    skipped = Counter(data.skipped)
    return clean_prompts(({"prompt": r["prompt"]} for r in data.rows), skipped), dict(skipped)


def prompt_rows(prompt_set: PromptSource) -> tuple[list[dict], dict]:
    if prompt_set.from_preferences:
        return _preference_prompts(DataRef(name=prompt_set.from_preferences))
    files = local_files(prompt_set.name, {"train": prompt_set.local_files}, "train",
                        prompt_set.packaged)
    if files is None:
        raws: Iterable[dict] = _hub_rows(prompt_set.hub_id, prompt_set.config, prompt_set.split,
                                         prompt_set.revision, prompt_set.name)
    elif not files:
        where = SLICES_DIR if prompt_set.packaged else os.environ.get("ABLATE_DATA_DIR")
        raise DataUnavailable(f"prompt set {prompt_set.name!r}: no local files under {where} "
                              f"(patterns {prompt_set.local_files} or {prompt_set.name}/train*)")
    else:
        raws = (row for path in files for row in read_file(path))
    skipped = Counter()
    return clean_prompts(prompt_set.convert(raws, prompt_set.name, 0), skipped), dict(skipped)


def load_prompts(ref: PromptsRef) -> PromptData:
    """Policy-training prompts: ``{"prompt": [messages], "reference": str | None}`` rows, with the
    skip counts by reason (``PromptData`` indexes and iterates as its rows). Preference data gives
    the prompts of its train split (deduplicated, no reference)."""
    if ref.source == "preference_data":
        source = ref.model_dump(exclude={"source", "max_rows", "sample_seed"})
        rows, skipped = _preference_prompts(DataRef(**source))
    elif ref.name is None:
        from ablate.data.own import own_prompts

        data = own_prompts(ref)
        rows, skipped = data.rows, data.skipped
    else:
        if ref.name not in PROMPT_SETS:
            raise KeyError(f"unknown prompt set {ref.name!r}; "
                           f"known: {', '.join(sorted(PROMPT_SETS))}")
        rows, skipped = prompt_rows(PROMPT_SETS[ref.name])
    return PromptData(name=ref.name or ref.describe(), rows=downsample(rows, ref.max_rows, ref.sample_seed),
                      skipped=skipped)
