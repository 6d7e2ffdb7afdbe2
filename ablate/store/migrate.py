"""Re-key a store written before typed step ids, so that nothing computed has to be redone.

Before store schema 1 a step's config was a dict whose every key entered its id (execution
settings too) and ``result.json`` had no unit. ``migrate_store`` reads each old step, builds the
typed config the current expansion would build for the same work, and moves the step's folder to
its new id. It writes a journal first and removes it last: an interrupted migration leaves the
journal, every command refuses the store until the migration is rerun, and a rerun finishes it
(each folder moves by one rename, so none is ever half moved).

Where an old step's meaning cannot be known (it was judged by a judge whose definition the old
store did not record), the step keeps a folder under its new id but is marked stale
(``STALE.json`` instead of ``DONE.json``): reported as stale, never reused.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from ablate.spec.benchmarks import BENCHMARKS
from ablate.spec.plan import STORE_SCHEMA, Cell, Plan, Step, StoreFormatError, config_hash
from ablate.spec.schema import BestOfN, EvalConfig, Greedy, JudgeSpec
from ablate.spec.steps import STEP_KINDS, EvalStep
from ablate.store.store import (
    DONE, STALE, RunStore, _file_digest, atomic_write_json, read_json,
)
DUPLICATES = "migrated-duplicates"


@dataclass
class MigrationReport:
    steps: int = 0  # old steps re-keyed
    plans: int = 0
    stale: dict[str, str] = field(default_factory=dict)  # new id -> why
    merged: dict[str, str] = field(default_factory=dict)  # old id -> the new id it shares
    nothing_to_do: bool = False


# How a benchmark was scored before typed ids, where that has changed since (TruthfulQA's
# protocols were MC2 by log-likelihood until its paper version 2).
LEGACY_SCORING = {"truthfulqa": "loglik"}


def _legacy_eval(config: dict[str, Any], inputs: dict[str, str]) -> tuple[EvalStep, dict, str | None]:
    """An old eval config as the typed config of the same work, its inputs, and why it is
    stale (None if it is not)."""
    config = dict(config)
    bench = config.get("benchmark")
    if bench not in BENCHMARKS:
        raise StoreFormatError(f"unknown benchmark {bench!r}")
    facts, defaults = BENCHMARKS[bench], EvalConfig()
    stale = None
    judge = config.pop("judge", None)
    if judge is None and bench == "xstest":  # the old runner's rule without a judge
        config["judge"] = JudgeSpec(kind="string_match")
    elif judge is not None:
        config["judge"] = JudgeSpec(kind="unrecorded", name=str(judge))
        stale = (f"judged by {judge!r}, whose definition (model, prompt) the store did not "
                 "record")
    sampler = config.pop("sampler", None) or {"kind": "greedy"}
    inputs = dict(inputs)
    scoring = LEGACY_SCORING.get(bench, facts.scoring)
    if scoring == "pass_at_k":  # the code benchmarks always sampled with these settings
        config["sampler"] = defaults.pass_at_k
    elif sampler.get("kind") == "best_of_n" and scoring == "generate":
        config["sampler"] = BestOfN.model_validate(sampler)
    else:  # best-of-N never applied here: the model's own score, the base model's step
        config["sampler"] = Greedy()
        inputs.pop("reward_model", None)
    if bench == "toxigen":
        config["classifier"] = defaults.toxigen_classifier
    for unused in ("options", "data_dir"):  # read by the old runner, never set by a grid
        if config.pop(unused, None):
            stale = stale or f"ran with `{unused}`, which no grid can set"
    return EvalStep.model_validate(config), inputs, stale


# What version 1 of the trainers did, for the fields added since with other defaults: an old
# step's config spells them out, so its id says how it was trained.
LEGACY_MECHANICS: dict[str, tuple[str, dict[str, Any]]] = {
    "train_dpo": ("algorithm", {"adam_beta2": 0.999, "end_lr": 0.0}),
    "train_rm": ("train", {"adam_beta2": 0.999, "end_lr": 0.0}),
    "train_ppo": ("algorithm", {"adam_beta2": 0.999, "end_lr": 0.0, "warmup_epochs": 0.0,
                                "scale_logps_by_temperature": True, "no_eos_penalty_mode": "add",
                                "experience": "per_batch"}),
}


# The registry's converter versions as the last code of store schema 0 had them (f546aac): an old
# step's data were converted by these, so its id records them. A converter changed since has a
# higher version, and its steps are not reused.
LEGACY_CONVERTERS: dict[str, str] = {
    "shp-2": "2", "stack-exchange": "1", "prm800k": "2", "chatbot-arena-2023": "1",
    "chatbot-arena-2024": "1", "alpacafarm-human": "1", "hh-rlhf": "1", "helpsteer": "2",
    "alpacafarm-gpt4": "1", "capybara-7k": "1", "orca-pairs": "1", "nectar": "2",
    "ultrafeedback-overall": "1", "ultrafeedback-fg": "1", "ultrafeedback-fg-raw": "2",
    "ultrafeedback-slice": "1", "hh-rlhf-slice": "1",
    "rm-mix": "ultrafeedback-fg:1,helpsteer:2,nectar:2,stack-exchange:1,hh-rlhf:1,prm800k:2",
}
LEGACY_PROMPT_CONVERTERS: dict[str, str] = {
    "ultrafeedback-prompts": "1", "gsm8k-train": "1", "gsm8k-train-slice": "1",
    "math-mined": "1", "mixed": "1",
}


def _legacy_data(ref: dict, prompts: bool = False) -> dict:
    """An old data reference with the converter version its rows were made by."""
    table = LEGACY_PROMPT_CONVERTERS if prompts else LEGACY_CONVERTERS
    name = ref.get("name")
    if name not in table:
        raise StoreFormatError(f"data {name!r} is not a dataset the old registry knew")
    return {**ref, "converter": table[name]}


def _legacy_rollout_engine(env: dict | None) -> tuple[str, str | None]:
    """What sampled an old PPO step's rollouts: the old trainer chose vLLM by itself on a CUDA
    machine that had it, so the step's recorded environment tells (or the step is stale)."""
    if env is None:
        return "transformers", "its environment (env.json) is missing, so the engine that " \
            "sampled its rollouts is unknown"
    on_gpu_with_vllm = env.get("device") == "cuda" and "vllm" in (env.get("packages") or {})
    return ("vllm" if on_gpu_with_vllm else "transformers"), None


def legacy_step(data: dict[str, Any], new_ids: dict[str, str],
                env: dict | None = None) -> tuple[Step, str | None]:
    """The current step for an old stored step (its inputs already re-keyed in ``new_ids``;
    ``env``: its recorded env.json)."""
    kind = STEP_KINDS.get(data.get("kind", ""))
    if kind is None:
        raise StoreFormatError(f"unknown step kind {data.get('kind')!r}")
    inputs = {role: new_ids[old] for role, old in (data.get("inputs") or {}).items()}
    stale = None
    try:
        if kind.name == "eval":
            config, inputs, stale = _legacy_eval(data["config"], inputs)
        else:
            section, old = LEGACY_MECHANICS[kind.name]
            raw = dict(data["config"])
            raw[section] = {**old, **raw.get(section, {})}
            if kind.name == "train_ppo":
                raw[section]["rollout_engine"], stale = _legacy_rollout_engine(env)
                prompts = raw["prompts"]
                raw["prompts"] = _legacy_data(prompts, prompts.get("source") == "prompt_set")
            else:
                raw["data"] = _legacy_data(raw["data"])
            config = kind.config.model_validate(raw)  # version 1: the default
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise StoreFormatError(f"config does not fit {kind.config.__name__}: {problems}") from None
    return Step(name=data["name"], config=config, inputs=inputs), stale


def _legacy_plans(store: RunStore) -> dict[str, dict]:
    """Stored plans (relative path -> JSON) written before schema 1; refuses newer ones."""
    found = {}
    for folder in ("grids", "plans"):
        for path in sorted((store.root / folder).glob("*.json")):
            try:
                data = read_json(path)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise StoreFormatError(f"{path}: unreadable plan ({exc})") from None
            schema = data.get("schema")
            if schema is None:
                found[f"{folder}/{path.name}"] = data
            elif not isinstance(schema, int) or schema > STORE_SCHEMA:
                raise StoreFormatError(f"{path}: written by a newer ablate (store schema "
                                       f"{schema}; this one reads {STORE_SCHEMA}): upgrade ablate")
    return found


def _order(steps: dict[str, dict]) -> list[str]:
    done: list[str] = []
    pending = sorted(steps)
    while pending:
        ready = [sid for sid in pending
                 if all(i in done for i in (steps[sid].get("inputs") or {}).values())]
        if not ready:
            missing = sorted({i for sid in pending for i in (steps[sid].get("inputs") or {}).values()
                              if i not in steps})
            raise StoreFormatError(f"steps {', '.join(pending)} read inputs that no stored plan "
                                   f"holds: {', '.join(missing) or '(a cycle)'}")
        done += ready
        pending = [sid for sid in pending if sid not in ready]
    return done


def _journal(store: RunStore) -> dict:
    """What the migration will do, computed once from the old plans and written before any
    folder moves."""
    plans = _legacy_plans(store)
    old_steps: dict[str, dict] = {}
    for data in plans.values():
        for sid, step in data["steps"].items():
            old_steps.setdefault(sid, step)
    new_ids: dict[str, str] = {}
    moves = []
    for old in _order(old_steps):
        folder = store.root / "steps" / old_steps[old]["kind"] / old
        try:
            env = read_json(folder / "env.json") if (folder / "env.json").is_file() else None
            step, stale = legacy_step(old_steps[old], new_ids, env)
        except StoreFormatError as exc:
            raise StoreFormatError(f"{folder}: {exc}") from None
        new_ids[old] = step.id
        # the step whose old config already meant exactly the new one keeps the folder when two
        # old steps become one (a best-of-N cell's MMLU is the base model's own MMLU)
        canonical = dict(old_steps[old].get("inputs") or {}).keys() == dict(step.inputs).keys()
        moves.append({"old": old, "kind": step.kind, "new": step.id, "stale": stale,
                      "canonical": canonical, "step": step.to_json()})
    moves.sort(key=lambda m: (not m["canonical"], m["old"]))
    by_old = {m["old"]: m["step"] for m in moves}
    new_plans = {}  # each grid's latest plan; the old snapshots go (their names are old hashes)
    for rel, data in plans.items():
        if not rel.startswith("grids/"):
            continue
        cells = [Cell.from_json({**c, "model_step": new_ids.get(c["model_step"]),
                                 "evals": {b: new_ids[s] for b, s in c["evals"].items()}})
                 for c in data["cells"]]
        steps = {new_ids[sid]: Step.from_json(by_old[sid]) for sid in data["steps"]}
        plan = Plan(grid=data["grid"], cells=tuple(cells), steps=steps)
        new_plans[rel] = {**plan.to_json(), "source": data.get("source")}
    return {"schema": STORE_SCHEMA, "moves": moves, "plans": new_plans,
            "old_plans": sorted(plans)}


def _check_idle(store: RunStore, moves: list[dict]) -> None:
    for move in moves:
        for sid in (move["old"], move["new"]):
            lock = store.root / "steps" / move["kind"] / sid / ".lock"
            if not lock.is_file():
                continue
            with open(lock, "a") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise StoreFormatError(f"{lock.parent}: the step is running; migrate the "
                                           "store when nothing runs on it") from None
                fcntl.flock(handle, fcntl.LOCK_UN)


def _typed_result(path: Path, kind: str) -> None:
    """Give an old result.json its type and unit: evals wrote percent, reward models a
    fraction."""
    if not path.is_file():
        return
    data = read_json(path)
    if "unit" in data:
        return
    if kind == "eval":
        data.update(kind="eval", unit="percent")
    elif kind == "train_rm":
        if "value" not in data and "accuracy" in data:
            data["value"] = data["accuracy"]
        data.update(kind="reward_model", unit="fraction")
    else:
        return
    atomic_write_json(path, data)


def _rewrite_records(folder: Path, step: Step, old: str, stale: str | None) -> None:
    atomic_write_json(folder / "spec.json", {**step.record(), "migrated_from": old})
    _typed_result(folder / "result.json", step.kind)
    done = folder / DONE
    if done.is_file():
        info = read_json(done)
        for rel in info.get("outputs", {}):
            if (folder / rel).is_file():
                info["outputs"][rel] = {"bytes": (folder / rel).stat().st_size,
                                        "sha256": _file_digest(folder / rel)}
        info.update(step=step.id, migrated_from=old)
        if stale:
            atomic_write_json(folder / STALE, {**info, "stale": stale})
            done.unlink()
        else:
            atomic_write_json(done, info)


def migrate_store(store: RunStore, log: Callable[[str], None] = lambda line: None) -> MigrationReport:
    """Migrate ``store`` to the current schema; safe to rerun after an interruption."""
    report = MigrationReport()
    journal_path = store.migration_journal
    if journal_path.is_file():
        journal = read_json(journal_path)
        log(f"finishing the interrupted migration recorded in {journal_path}")
    else:
        if not _legacy_plans(store):
            report.nothing_to_do = True
            return report
        journal = _journal(store)
        _check_idle(store, journal["moves"])
        atomic_write_json(journal_path, journal)
    for move in journal["moves"]:
        step = Step.from_json(move["step"])
        old_dir = store.root / "steps" / move["kind"] / move["old"]
        new_dir = store.root / "steps" / move["kind"] / move["new"]
        if old_dir != new_dir and old_dir.is_dir():
            if new_dir.is_dir():  # two old steps are one step now; keep the one already there
                spare = store.root / DUPLICATES / move["kind"] / move["old"]
                spare.parent.mkdir(parents=True, exist_ok=True)
                os.replace(old_dir, spare)
                report.merged[move["old"]] = move["new"]
                log(f"{old_dir.relative_to(store.root)}: the same work as "
                    f"{new_dir.relative_to(store.root)}; kept under {DUPLICATES}/")
                continue
            os.replace(old_dir, new_dir)
        if new_dir.is_dir():
            _rewrite_records(new_dir, step, move["old"], move["stale"])
        if move["stale"]:
            report.stale[move["new"]] = move["stale"]
        report.steps += 1
    for rel, data in journal["plans"].items():
        atomic_write_json(store.root / rel, data)
        if rel.startswith("grids/"):  # and the snapshot jobs would carry
            plan_id = config_hash({k: v for k, v in data.items() if k != "source"})
            atomic_write_json(store.root / "plans" / f"{plan_id}.json", data)
    for rel in journal["old_plans"]:
        if rel.startswith("plans/"):
            (store.root / rel).unlink(missing_ok=True)
    report.plans = len(journal["plans"])
    journal_path.unlink()
    return report
