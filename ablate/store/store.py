"""The run store: one folder per step, ``DONE.json`` written last and atomically.

Layout::

    <root>/steps/<kind>/<step id>/   spec.json env.json log.txt state.json DONE.json + outputs
                                     (STALE.json instead of DONE.json: a migrated result whose
                                     meaning is unknown, never reused)
    <root>/grids/<grid name>.json    the grid's latest expanded plan: cells -> their step ids
    <root>/plans/<plan id>.json      every plan saved, by the hash of its content: a queued job
                                     reads the plan it was submitted with, whatever the grid
                                     became since
    <root>/cache/                    shared caches (reference log-probs, converted data)
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from ablate.spec.plan import Plan, Step, StoreFormatError, check_schema, config_hash

DONE = "DONE.json"
STATE = "state.json"
MIGRATION_JOURNAL = "migration.json"
STALE = "STALE.json"
TRACKED_PACKAGES = ("ablate", "torch", "transformers", "tokenizers", "datasets", "accelerate",
                    "trl", "lm_eval", "evalplus", "alpaca_eval", "vllm", "submitit")


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows))


def read_json(path: Path) -> Any:
    with open(path) as handle:
        return json.load(handle)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def accelerators() -> dict[str, Any]:
    """The GPUs this step ran on (the cost table's GPU-hours): this node's CUDA devices times the
    job's nodes. torch is only asked if the step already imported it; the store never loads it."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return {"gpus": 0, "device": "cpu"}
    nodes = int(os.environ.get("SLURM_JOB_NUM_NODES") or os.environ.get("SLURM_NNODES") or 1)
    return {"gpus": torch.cuda.device_count() * nodes, "device": "cuda",
            "gpu_name": torch.cuda.get_device_name(0), "nodes": nodes}


def environment() -> dict[str, Any]:
    """What produced a result: code version, packages, machine."""
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {**accelerators(), "git_sha": _git("rev-parse", "HEAD"), "git_dirty": bool(status) if status is not None
            else None, "python": sys.version.split()[0], "packages": versions,
            "host": socket.gethostname(), "platform": platform.platform(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _file_digest(path: Path, limit: int = 64 << 20) -> str | None:
    """sha256 of files up to ``limit`` bytes; big checkpoints are listed by size only."""
    if path.stat().st_size > limit:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class RunStore:
    def __init__(self, root: Path | str):
        self.root = Path(root).resolve()

    # ---------------------------------------------------------------- layout
    def step_dir(self, step: Step) -> Path:
        return self.root / "steps" / step.kind / step.id

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    def find_step_dir(self, step_id: str) -> Path | None:
        matches = list((self.root / "steps").glob(f"*/{step_id}*"))
        return matches[0] if len(matches) == 1 else None

    # ---------------------------------------------------------------- state
    def is_done(self, step: Step) -> bool:
        return (self.step_dir(step) / DONE).is_file()

    def done_info(self, step: Step) -> dict | None:
        path = self.step_dir(step) / DONE
        return read_json(path) if path.is_file() else None

    def state(self, step: Step) -> dict:
        """``done``, or the last recorded state (``running``, ``failed``, ``submitted``), or
        ``pending`` when the step never started."""
        folder = self.step_dir(step)
        if (folder / DONE).is_file():
            return {"state": "done", **read_json(folder / DONE)}
        if (folder / STALE).is_file():  # a migrated result whose meaning could not be known
            return {**read_json(folder / STALE), "state": "stale"}
        if (folder / STATE).is_file():
            try:
                return read_json(folder / STATE)
            except (OSError, json.JSONDecodeError):
                return {"state": "unknown"}
        return {"state": "pending"}

    def set_state(self, step: Step, state: str, **extra: Any) -> None:
        folder = self.step_dir(step)
        folder.mkdir(parents=True, exist_ok=True)
        previous = {}
        if (folder / STATE).is_file():
            try:
                previous = read_json(folder / STATE)
            except (OSError, json.JSONDecodeError):
                previous = {}
        atomic_write_json(folder / STATE, {**previous, **extra, "state": state,
                                           "updated": time.time()})

    def begin(self, step: Step) -> Path:
        """Create the step's folder with its spec and environment; keep partial outputs (resume)."""
        folder = self.step_dir(step)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "spec.json", step.record())
        atomic_write_json(folder / "env.json", environment())
        return folder

    def mark_done(self, step: Step, started: float | None = None) -> dict:
        folder = self.step_dir(step)
        outputs = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = path.relative_to(folder).as_posix()
            if rel in (DONE, STATE, "log.txt") or rel.startswith(("checkpoints/", ".")):
                continue
            outputs[rel] = {"bytes": path.stat().st_size, "sha256": _file_digest(path)}
        info = {"step": step.id, "kind": step.kind, "name": step.name, "finished": time.time(),
                "seconds": round(time.time() - started, 3) if started else None,
                **accelerators(), "outputs": outputs}
        atomic_write_json(folder / DONE, info)
        return info

    def reset(self, step: Step, keep_checkpoints: bool = False) -> None:
        """Forget a step's result so that it runs again (``--force``)."""
        folder = self.step_dir(step)
        if not folder.exists():
            return
        if keep_checkpoints:
            for name in (DONE, STATE):
                (folder / name).unlink(missing_ok=True)
        else:
            shutil.rmtree(folder)

    # ---------------------------------------------------------------- plans
    def plan_path(self, grid_name: str) -> Path:
        return self.root / "grids" / f"{grid_name}.json"

    def check_current(self) -> None:
        """Refuse a store this ablate would misread: one whose migration stopped half way, or
        whose plans were written under another schema (their steps live under other ids, so
        running on it would silently redo every step)."""
        self.check_not_migrating()
        for path in sorted((self.root / "grids").glob("*.json")):
            try:
                check_schema(read_json(path), f"plan of grid {path.stem!r}")
            except StoreFormatError as exc:
                raise StoreFormatError(f"{path}: {exc}") from None
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
                raise StoreFormatError(f"{path}: not a readable plan ({exc})") from None

    def save_plan(self, plan: Plan, source: str | None = None, about: dict | None = None) -> str:
        """Save ``plan`` as its grid's latest and as an immutable snapshot; returns the
        snapshot's id, which jobs carry. ``about``: words the report shows (the grid's
        description and labels), saved beside the plan and not part of its id."""
        self.check_current()
        plan_id = config_hash(plan.to_json())
        snapshot = self.root / "plans" / f"{plan_id}.json"
        saved = {**plan.to_json(), "source": source, **(about or {})}
        if not snapshot.is_file():
            atomic_write_json(snapshot, saved)
        atomic_write_json(self.plan_path(plan.grid), saved)
        return plan_id

    def _read_plan(self, path: Path) -> Plan:
        self.check_not_migrating()
        try:
            return Plan.from_json(read_json(path))
        except StoreFormatError as exc:
            raise StoreFormatError(f"{path}: {exc}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise StoreFormatError(f"{path}: not a readable plan ({type(exc).__name__}: "
                                   f"{exc})") from None

    def load_plan_snapshot(self, plan_id: str) -> Plan:
        path = self.root / "plans" / f"{plan_id}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{self.root}: no saved plan {plan_id!r} ({path} is missing)")
        return self._read_plan(path)

    def load_plan(self, grid_name: str) -> Plan:
        path = self.plan_path(grid_name)
        if not path.is_file():
            known = sorted(p.stem for p in (self.root / "grids").glob("*.json"))
            raise FileNotFoundError(f"{self.root}: no plan for grid {grid_name!r}; "
                                    f"known: {', '.join(known) or '(none: run `ablate grid`)'}")
        return self._read_plan(path)

    def plans(self) -> list[Plan]:
        return [self._read_plan(p) for p in sorted((self.root / "grids").glob("*.json"))]

    # ---------------------------------------------------------------- migration
    @property
    def migration_journal(self) -> Path:
        return self.root / MIGRATION_JOURNAL

    def check_not_migrating(self) -> None:
        """A migration that stopped half way leaves its journal: nothing reads the store until
        the migration is rerun, which finishes it."""
        if self.migration_journal.is_file():
            raise StoreFormatError(f"{self.root}: a store migration was interrupted "
                                   f"({self.migration_journal} is there); run `ablate store "
                                   "migrate` again to finish it")
