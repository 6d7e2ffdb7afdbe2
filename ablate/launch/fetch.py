"""Downloads before a run: every hub model and training dataset the steps read, fetched once by
the process that plans the run, so that each step's own process (a compute node, one of many
ranks) reads them from the caches with the hub offline (`ablate fetch`, and `ablate grid` before
anything runs or is queued)."""

from __future__ import annotations

from rich.console import Console

from ablate.spec import SpecError


def hub_models(value, found: dict) -> dict:
    """Every hub model a step's config names, anywhere in it (its model, a classifier, a local
    judge without a local copy), keyed by repo and revision."""
    from pydantic import BaseModel

    from ablate.spec.schema import JudgeSpec, ModelSpec

    if isinstance(value, ModelSpec) and value.hub:
        found.setdefault(value.describe(), value)
    elif isinstance(value, JudgeSpec) and value.kind == "local" and value.hub and not (
            value.path or value.local_copy):
        spec = ModelSpec(hub=value.hub, revision=value.revision)
        found.setdefault(spec.describe(), spec)
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            hub_models(getattr(value, name), found)
    elif isinstance(value, dict):
        for item in value.values():
            hub_models(item, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            hub_models(item, found)
    return found


def fetch_plan(steps: list, console: Console) -> None:
    """Download, once and here, every hub model the steps name and every dataset they train on,
    into the caches their jobs read with the hub offline (``ablate.models``, ``ablate.data``); a
    SpecError names the step and what could not be had."""
    from ablate.data import load_preferences, load_prompts
    from ablate.data.load import DataUnavailable
    from ablate.models import ModelError, resolve_model
    from ablate.spec.steps import PromptsRef

    models: dict[str, tuple[str, object]] = {}
    data: dict[str, tuple[str, object]] = {}
    for step in steps:
        for key, spec in hub_models(step.config, {}).items():
            models.setdefault(key, (step.name, spec))
        for attr in ("data", "prompts"):
            ref = getattr(step.config, attr, None) if step.kind.startswith("train") else None
            if ref is not None:
                data.setdefault(ref.model_dump_json(), (step.name, ref))
    for step_name, spec in models.values():
        try:
            folder = resolve_model(spec, fetch=True)
        except ModelError as exc:
            raise SpecError(f"{step_name}: {exc}") from None
        console.print(f"model {spec.describe()}: {folder}", highlight=False)
    for step_name, ref in data.values():
        try:
            loaded = load_prompts(ref) if isinstance(ref, PromptsRef) else load_preferences(ref)
        except (DataUnavailable, KeyError, ValueError) as exc:
            why = exc.args[0] if isinstance(exc, KeyError) else exc  # a KeyError's str quotes
            raise SpecError(f"{step_name}: {why}") from None
        console.print(f"data {ref.describe()}: {len(loaded.rows):,} rows in the cache",
                      highlight=False)
