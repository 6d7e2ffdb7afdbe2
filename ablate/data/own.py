"""Data declared in a grid by where it is: a local file or folder, or a hub dataset, in a format.

``resolve_source(ref)`` fills in ``ref.digest`` (what the rows are: a file's SHA-256, a hub
dataset's commit), which enters the step id; ``check_source(ref)`` opens the data before anything
runs and names every unusable row (file, row, column); ``own_preferences`` / ``own_prompts`` read
it as the trainers do. Files are read through ``datasets`` (``json``, ``parquet`` and ``csv``
builders), so a local file and a hub dataset take the same path once loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from ablate.data.load import DataUnavailable, cache_root, read_file
from ablate.data.rows import (
    ROLES, PreferenceData, PromptData, SkipRow, check_row, clean, make_row, split_shared_prompt,
    user,
)
from ablate.spec.load import SpecError
from ablate.data.registry import MIXTURES, PROMPT_SETS, SOURCES, converter_version
from ablate.spec.schema import DataSource, PromptSetRef

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
SAMPLE = 10_000  # rows a check reads: enough to see a format's problems, bounded for hub data
SHOWN_ROWS = 5  # row numbers named per problem


class Problem(Exception):
    """Why one raw row is unusable, and in which column (None: the row as a whole)."""

    def __init__(self, column: str | None, text: str):
        super().__init__(text)
        self.column, self.text = column, text

    @property
    def reason(self) -> str:
        return f"column {self.column!r}: {self.text}" if self.column else self.text


# ---------------------------------------------------------------- where the rows are


def _files(path: Path) -> list[Path]:
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in BUILDERS)
        if not files:
            raise SpecError(f"{path}: no data files in this folder (expected "
                            f"{', '.join(BUILDERS)})")
    else:
        raise SpecError(f"{path}: no such file or folder")
    for file in files:
        if file.suffix not in BUILDERS:
            raise SpecError(f"{file}: unsupported file type {file.suffix!r}; expected one of "
                            f"{', '.join(BUILDERS)}")
    if len({BUILDERS[f.suffix] for f in files}) > 1:
        raise SpecError(f"{path}: mixes file types ({', '.join(sorted({f.suffix for f in files}))}); "
                        "keep one type per folder")
    return files


_DIGESTS: dict[tuple, str] = {}  # a grid names one file in many steps: hash it once


def file_digest(path: Path) -> str:
    """SHA-256 over a file's bytes, or over a folder's data files (relative name and bytes)."""
    files = _files(path)
    key = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _DIGESTS:
        _DIGESTS[key] = _hash_files(path, files)
    return _DIGESTS[key]


def _hash_files(path: Path, files: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def hub_commit(hub: str, revision: str | None) -> str:
    """The commit a hub dataset's revision (a branch, tag or commit) resolves to now."""
    try:
        from huggingface_hub import HfApi

        sha = HfApi().dataset_info(hub, revision=revision or "main").sha
    except Exception as exc:  # offline, gated, missing: all end the same way for the user
        raise DataUnavailable(
            f"hub dataset {hub!r} (revision {revision or 'main'}): could not resolve its commit: "
            f"{type(exc).__name__}: {exc}. Offline, download it once and give its local copy "
            "as `path:` instead") from None
    return f"commit:{sha}"


def override_path(name: str) -> Path | None:
    """``$ABLATE_DATA_<NAME>``: a local file or folder standing in for a registry dataset."""
    value = os.environ.get("ABLATE_DATA_" + name.upper().replace("-", "_"))
    return Path(value) if value else None


def resolve_source(ref: DataSource) -> DataSource:
    """``ref`` with what its rows are: a local file's content digest (path made absolute), a hub
    dataset's commit; for a registry dataset its converter's version and, where
    ``$ABLATE_DATA_<NAME>`` replaces its source, that file's digest (the registry pins its own
    sources' revisions)."""
    if ref.path is not None:
        path = Path(ref.path).expanduser().resolve()
        return ref.model_copy(update={"path": str(path), "digest": file_digest(path)})
    if ref.hub is not None:
        try:
            return ref.model_copy(update={"digest": hub_commit(ref.hub, ref.revision)})
        except DataUnavailable as exc:
            raise SpecError(str(exc)) from None
    prompts = isinstance(ref, PromptSetRef) or getattr(ref, "source", None) == "prompt_set"
    known = PROMPT_SETS if prompts else {**SOURCES, **MIXTURES}
    update = {"converter": converter_version(ref.name, prompts)} if ref.name in known else {}
    override = override_path(ref.name)
    if override is not None:
        update["digest"] = file_digest(override)
    return ref.model_copy(update=update)


# ---------------------------------------------------------------- raw rows


@dataclass
class RawRows:
    """The raw rows of a source, each with where it is (``file:row``, rows counted from 1)."""

    label: str
    columns: list[str]
    total: int
    rows: Iterator[tuple[str, dict]]


def _load(builder: str, file: Path, cache: Path):
    import datasets

    datasets.disable_progress_bars()
    return datasets.load_dataset(builder, data_files=[str(file)], split="train",
                                 cache_dir=str(cache))


def _file_rows(file: Path, cache: Path) -> tuple[list[str], list[tuple[str, dict]]]:
    """One file's columns and rows (with ``file:row``), read by ``datasets``; JSON whose columns
    ``datasets`` cannot give one type (a string in one row, a list in another) is read row by row
    instead, so that each bad row is named rather than the whole file refused."""
    try:
        data = _load(BUILDERS[file.suffix], file, cache)
        rows = list(data)
        columns = list(data.column_names)
    except Exception as exc:
        if BUILDERS[file.suffix] != "json":
            raise SpecError(f"{file}: could not be read: {type(exc).__name__}: {exc}") from None
        try:
            rows = list(read_file(file))
        except ValueError as bad:
            raise SpecError(str(bad)) from None
        rows = [r if isinstance(r, dict) else {"": r} for r in rows]
        columns = list(dict.fromkeys(k for r in rows for k in r))
    return columns, [(f"{file}:{i}", row) for i, row in enumerate(rows, 1)]


def raw_rows(ref: DataSource) -> RawRows:
    if ref.hub is not None:
        return _hub_rows(ref)
    path = Path(ref.path)
    files = _files(path)
    if ref.digest and file_digest(path) != ref.digest:
        # the step's id names the content it was planned with; other content is another step
        raise SpecError(f"{path}: changed since the grid was expanded (digest {ref.digest}, now "
                        f"{file_digest(path)}); run `ablate grid` again to plan it anew")
    if all(f.stat().st_size == 0 for f in files):
        raise SpecError(f"{path}: the file is empty")
    cache = cache_root() / "datasets" / (ref.digest or file_digest(path)).replace(":", "-")
    columns: list[str] = []
    rows: list[tuple[str, dict]] = []
    for file in files:
        if file.stat().st_size:
            more, found = _file_rows(file, cache)
            columns += [c for c in more if c not in columns]
            rows += found
    if not rows:
        raise SpecError(f"{path}: the file has no rows")
    return RawRows(str(path), columns, len(rows), iter(rows))


def _hub_rows(ref: DataSource) -> RawRows:
    import datasets

    revision = ref.digest.removeprefix("commit:") if ref.digest else ref.revision
    try:
        data = datasets.load_dataset(ref.hub, split=ref.split, revision=revision)
    except Exception as exc:  # offline, gated, renamed: all end the same way for the user
        raise DataUnavailable(
            f"hub dataset {ref.hub!r} (split {ref.split}, revision {revision or 'main'}): could "
            f"not be loaded: {type(exc).__name__}: {exc}. Offline, download it once and give its "
            "local copy as `path:` instead") from None
    label = f"{ref.hub}@{revision or 'main'}:{ref.split}"
    return RawRows(label, list(data.column_names), len(data),
                   ((f"{label} row {i + 1}", row) for i, row in enumerate(data)))


# ---------------------------------------------------------------- formats


def _messages(value: Any, column: str, last: str | None = None) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise Problem(column, f"expected a non-empty list of messages, got {_kind(value)}")
    for message in value:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise Problem(column, f"each message needs a role ({', '.join(ROLES)}) and content")
        _text(message.get("content"), column)
    if last and value[-1]["role"] != last:
        raise Problem(column, f"the conversation does not end with {'an' if last[0] == 'a' else 'a'} "
                              f"{last} turn")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _text(value: Any, column: str) -> str:
    if not isinstance(value, str):
        raise Problem(column, f"expected a string, got {_kind(value)}")
    if not value.strip():
        raise Problem(column, "empty")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return {list: "a list", dict: "an object", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


def _answer(value: Any, column: str) -> list[dict]:
    """An answer: a string (one assistant turn) or assistant messages."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": _text(value, column)}]
    return _messages(value, column, last="assistant")


def _pair(raw: dict, ref: DataSource, col) -> dict:
    if ref.format == "text":
        return make_row([user(_text(raw.get(col("prompt")), col("prompt")))],
                        _text(raw.get(col("chosen")), col("chosen")),
                        _text(raw.get(col("rejected")), col("rejected")), source="own")
    prompt = raw.get(col("prompt"))
    if prompt is not None:  # a prompt column: chosen and rejected are the answers alone
        prompt = [user(_text(prompt, col("prompt")))] if isinstance(prompt, str) \
            else _messages(prompt, col("prompt"), last="user")
        return make_row(prompt, _answer(raw.get(col("chosen")), col("chosen")),
                        _answer(raw.get(col("rejected")), col("rejected")), source="own")
    chosen = _messages(raw.get(col("chosen")), col("chosen"), last="assistant")
    rejected = _messages(raw.get(col("rejected")), col("rejected"), last="assistant")
    try:
        prompt, chosen, rejected = split_shared_prompt(chosen, rejected)
    except SkipRow:
        raise Problem(None, f"{col('chosen')} and {col('rejected')} must be the same "
                            "conversation up to their last (assistant) turn") from None
    return make_row(prompt, chosen, rejected, source="own")


def _preference(value: Any, column: str) -> bool:
    if value in ("chosen", True, 1):
        return True
    if value in ("rejected", False, 0):
        return False
    raise Problem(column, f"expected chosen/rejected (or true/false, 1/0), got {value!r}")


def _column_problem(raw: RawRows, names: Iterable[str]) -> Problem | None:
    missing = [n for n in names if n not in raw.columns]
    if missing:
        return Problem(missing[0], f"missing from the data (its columns: "
                                   f"{', '.join(raw.columns) or 'none'})")
    return None


@dataclass
class Checked:
    """Rows converted from a source, and the unusable ones by reason with where they are."""

    label: str
    total: int  # rows in the source
    read: int = 0  # rows read (all, or the first SAMPLE for a check)
    rows: list[dict] = field(default_factory=list)
    problems: dict[str, list[str]] = field(default_factory=dict)  # reason -> positions

    def add(self, problem: Problem, where: str | list[str]) -> None:
        self.problems.setdefault(problem.reason, []).extend(
            [where] if isinstance(where, str) else where)

    @property
    def unusable(self) -> int:
        return sum(len(v) for v in self.problems.values())

    def skipped(self) -> dict[str, int]:
        return {reason: len(where) for reason, where in self.problems.items()}

    def describe(self) -> list[str]:
        """One line per reason: how many rows, and the first few by file and row."""
        lines = []
        for reason, where in sorted(self.problems.items(), key=lambda kv: -len(kv[1])):
            shown = ", ".join(where[:SHOWN_ROWS]) + (", ..." if len(where) > SHOWN_ROWS else "")
            lines.append(f"{len(where)} row(s): {reason} ({shown})")
        return lines


def _mapper(ref: DataSource):
    return lambda name: ref.columns.get(name, name)


def convert_preferences(ref: DataSource, limit: int | None = None) -> Checked:
    """Pairs in ablate's format from a path or hub source, every unusable row named."""
    raw = raw_rows(ref)
    col = _mapper(ref)
    out = Checked(raw.label, raw.total)
    required = ("messages", "preference") if ref.format == "messages" else ("chosen", "rejected")
    if ref.format == "text":
        required = ("prompt", "chosen", "rejected")
    rows = list(_take(raw.rows, limit))
    out.read = len(rows)
    missing = _column_problem(raw, [col(n) for n in required])
    if missing:
        out.add(missing, [w for w, _ in rows])
        return out
    pairs: list[tuple[str, dict]] = []
    if ref.format == "messages":
        pairs = _pairs_from_messages(rows, col, out)
    else:
        for where, row in rows:
            try:
                pairs.append((where, _pair(row, ref, col)))
            except Problem as problem:
                out.add(problem, where)
    seen = set()
    for where, pair in pairs:
        reason = check_row(pair)
        key = json.dumps([pair["prompt"], pair["chosen"], pair["rejected"]], sort_keys=True)
        if reason is None and key in seen:
            reason = "duplicate of an earlier row"
        seen.add(key)
        if reason:
            out.add(Problem(None, reason), where)
        else:
            out.rows.append(pair)
    return out


def _pairs_from_messages(rows, col, out: Checked) -> list[tuple[str, dict]]:
    """One pair per prompt: its first chosen and first rejected conversation (same history)."""
    groups: dict[str, dict[bool, tuple[str, list[dict]]]] = {}
    order: list[str] = []
    for where, row in rows:
        try:
            messages = _messages(row.get(col("messages")), col("messages"), last="assistant")
            if len(messages) < 2:
                raise Problem(col("messages"), "needs a prompt before the answer")
            chosen = _preference(row.get(col("preference")), col("preference"))
        except Problem as problem:
            out.add(problem, where)
            continue
        key = json.dumps(messages[:-1], sort_keys=True)
        if key not in groups:
            groups[key] = {}
            order.append(key)
        if chosen in groups[key]:
            out.add(Problem(col("preference"), "a second answer of the same kind to one prompt "
                                               "(one pair per prompt)"), where)
            continue
        groups[key][chosen] = (where, messages)
    pairs = []
    for key in order:
        group = groups[key]
        if len(group) < 2:
            (only, (where, _)), = group.items()
            out.add(Problem(col("preference"), f"no {'rejected' if only else 'chosen'} answer "
                                               "to the same prompt to pair with"), where)
            continue
        (where, good), (_, bad) = group[True], group[False]
        pairs.append((where, make_row(good[:-1], good[-1:], bad[-1:], source="own")))
    return pairs


def convert_prompts(ref: DataSource, limit: int | None = None) -> Checked:
    """Prompt rows (``{"prompt": [messages], "reference": ...}``) from a path or hub source."""
    raw = raw_rows(ref)
    col = _mapper(ref)
    out = Checked(raw.label, raw.total)
    rows = list(_take(raw.rows, limit))
    out.read = len(rows)
    name = "messages" if ref.format == "chat" else "prompt"
    missing = _column_problem(raw, [col(name)])
    if missing:
        out.add(missing, [w for w, _ in rows])
        return out
    seen = set()
    for where, row in rows:
        try:
            value = row.get(col(name))
            prompt = _messages(value, col(name), last="user") if ref.format == "chat" \
                else [user(_text(value, col(name)))]
        except Problem as problem:
            out.add(problem, where)
            continue
        key = json.dumps(prompt, sort_keys=True)
        if key in seen:
            out.add(Problem(None, "duplicate prompt"), where)
            continue
        seen.add(key)
        reference = row.get(col("reference"))
        out.rows.append({"prompt": prompt, "reference": None if reference is None else str(reference)})
    return out


def _take(rows: Iterator, limit: int | None) -> Iterator:
    for i, row in enumerate(rows):
        if limit is not None and i >= limit:
            return
        yield row


# ---------------------------------------------------------------- as the trainers read it


def own_preferences(ref: DataSource, split: str) -> PreferenceData:
    """All usable pairs of a path or hub source; it has one split (all its rows)."""
    if split != "train":
        raise ValueError(f"{ref.describe()}: has one split (train, all its rows); a held-out "
                         "split comes from the trainer's eval_fraction")
    checked = convert_preferences(ref)
    rows = clean(checked.rows, Counter())
    return PreferenceData(name=ref.describe(), rows=rows, skipped=checked.skipped())


def own_prompts(ref: DataSource) -> PromptData:
    checked = convert_prompts(ref)
    return PromptData(name=ref.describe(), rows=checked.rows, skipped=checked.skipped())


def check_source(ref: DataSource, prompts: bool = False) -> Checked:
    """Open a declared source before anything runs: its first ``SAMPLE`` rows checked."""
    return (convert_prompts if prompts else convert_preferences)(ref, SAMPLE)


def plan_sources(plan) -> list[tuple[DataSource, bool]]:
    """The distinct path and hub sources a plan's training steps read: (source, is prompts)."""
    found: dict[str, tuple[DataSource, bool]] = {}
    for step in plan.steps.values():
        for attr, is_prompts in (("data", False), ("prompts", True)):
            ref = getattr(step.config, attr, None)
            if isinstance(ref, DataSource) and ref.name is None:
                prompts = is_prompts and getattr(ref, "source", "") == "prompt_set"
                found.setdefault(ref.model_dump_json(include=set(DataSource.model_fields)),
                                 (ref, prompts))
    return list(found.values())
