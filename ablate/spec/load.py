"""Strict YAML loading: every error names the file, the line and what was expected."""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, RootModel, ValidationError

from ablate.spec.schema import GridSpec, JudgeSpec


class JudgeFile(RootModel[dict[str, JudgeSpec]]):
    """A judges file: judge name -> definition."""


# The command that downloads what a grid's steps read (hub models, training data) into the
# caches, once, where the hub can be reached; a step that finds something missing names it.
FETCH_COMMAND = "ablate fetch GRID.yaml"


class SpecError(ValueError):
    """A grid or profile file that cannot be used, with a message meant for the user."""


def _locate(node: yaml.Node | None, loc: tuple) -> tuple[int | None, tuple]:
    """The 1-based line of the YAML node at a pydantic error location, as deep as it resolves,
    and the location as the file spells it.

    A key absent from the YAML before the last (the tag pydantic adds for a tagged union, as in
    ``algorithms.dpo.dpo.beta``) is skipped; a last one (a missing key) is kept."""
    line = node.start_mark.line + 1 if node is not None else None
    shown = []
    for depth, key in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == str(key)), None)
            if pair is None:
                if depth == len(loc) - 1:
                    shown.append(key)
                continue
            node = pair[1]
            line = pair[0].start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            shown.extend(loc[depth:])
            break
        shown.append(key)
    return line, tuple(shown)


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at ``loc`` (for suggesting valid keys).

    Walks fields, dict values (``algorithms.<name>``), and tagged unions (pydantic puts the tag,
    e.g. ``dpo``, into the location)."""
    current: Any = model
    for key in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(key))
            if field is None:
                return None
            current = field.annotation
            continue
        args = getattr(current, "__args__", ()) or ()
        origin = getattr(current, "__origin__", None)
        if origin is dict and len(args) == 2:
            current = args[1]
            continue
        members = [m for m in _models_in(current)]
        tagged = [m for m in members if getattr(m.model_fields.get("kind"), "default", None) == key]
        if tagged:
            current = tagged[0]
            continue
        if members:
            current = members[0]
            field = current.model_fields.get(str(key))
            if field is None:
                return None
            current = field.annotation
            continue
        return None
    found = _models_in(current)
    return found[0] if found else None


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()) or ():
        found.extend(_models_in(arg))
    return found


def format_validation_error(err: ValidationError, model: type[BaseModel], path: Path,
                            root: yaml.Node | None) -> str:
    lines = [f"{path}: invalid {model.__name__} ({err.error_count()} problem(s))"]
    for item in err.errors():
        loc = tuple(item["loc"])
        line, shown = _locate(root, loc)
        where = ".".join(str(k) for k in (shown if root is not None else loc)) or "(top level)"
        at = f"line {line}: " if line else ""
        if item["type"] == "extra_forbidden":
            owner = _model_at(model, loc[:-1])
            valid = sorted(owner.model_fields) if owner else []
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            listing = f" (valid keys: {', '.join(valid)})" if valid else ""
            lines.append(f"  {at}unknown key {where!r}{hint}{listing}")
        elif item["type"] == "missing":
            lines.append(f"  {at}missing required key {where!r}")
        else:
            lines.append(f"  {at}{where}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def read_yaml(path: Path) -> tuple[Any, yaml.Node | None]:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read it ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{path}: YAML syntax error at {where}{problem}") from None
    duplicate = _duplicate_key(root)
    if duplicate:
        key, line, first = duplicate
        raise SpecError(f"{path}: line {line}: key {key!r} repeats the one on line {first} "
                        "(YAML would keep only the last)")
    return data, root


def _duplicate_key(node: yaml.Node | None) -> tuple[str, int, int] | None:
    """The first key that a mapping holds twice: (key, its line, the first one's line)."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            line = key.start_mark.line + 1
            if key.value in seen:
                return key.value, line, seen[key.value]
            seen[key.value] = line
            found = _duplicate_key(value)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            found = _duplicate_key(item)
            if found:
                return found
    return None


def load_model(model: type[BaseModel], path: Path | str) -> Any:
    """Load and validate a YAML file into a frozen pydantic model, or raise ``SpecError``."""
    path = Path(path)
    data, root = read_yaml(path)
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, model, path, root)) from None


def import_path(path: str, what: str, form: str = "name") -> Any:
    """The object ``path`` (``"package.module:name"``) names; a ValueError says what is missing.
    ``what`` names it in the message (e.g. "the reward"). The current folder is searched too, so
    that a module beside the grid works without installing it (``python -m`` does the same)."""
    module_name, _, name = path.partition(":")
    if not module_name or not name:
        raise ValueError(f"{path!r} is not an import path of the form 'package.module:{form}'")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a module that fails while importing is the user's error too
        raise ValueError(f"cannot import {module_name!r} for {what} {path!r}: "
                         f"{type(exc).__name__}: {exc}") from None
    found = getattr(module, name, None)
    if found is None:
        raise ValueError(f"module {module_name!r} has no {name!r} ({what} {path!r})")
    return found


def judges_file() -> Path:
    """Judge definitions shared by grids: ``$ABLATE_JUDGES``, else ``./judges.yaml``."""
    return Path(os.environ.get("ABLATE_JUDGES", "judges.yaml"))


def shared_judges() -> dict[str, JudgeSpec]:
    """The judges defined in ``judges_file()`` (none when there is no such file)."""
    path = judges_file()
    return load_model(JudgeFile, path).root if path.is_file() else {}


def load_grid(path: Path | str) -> GridSpec:
    """A grid, with the shared judges added to its own (the grid's win): the full definition of
    each judge a benchmark uses goes into its eval steps' ids."""
    grid = load_model(GridSpec, path)
    judges = shared_judges()
    if not judges:
        return grid
    return grid.model_copy(update={"judges": {**judges, **grid.judges}})
