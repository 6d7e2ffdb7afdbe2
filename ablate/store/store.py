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

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from ablate.spec.plan import Plan, Step, StoreFormatError, check_schema, config_hash

DONE = "DONE.json"
STATE = "state.json"
MIGRATION_JOURNAL = "migration.json"
STALE = "STALE.json"
LOCK = ".lock"
STALE_ON_SUCCESS = ("error", "log_tail", "reason")
TRACKED_PACKAGES = ("ablate", "torch", "transformers", "tokenizers", "datasets", "accelerate",
                    "trl", "lm_eval", "evalplus", "alpaca_eval", "vllm", "submitit")


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file. The
    file is created with the umask's permissions (mkstemp's 0600 would hide results from the
    group on a shared cluster)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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


class StepBusy(RuntimeError):
    """A step another process is running, where this one needs it idle."""


class CorruptRecord(ValueError):
    def __init__(self, path: Path, why: str):
        super().__init__(f"{path}: unreadable ({why}); delete it to run the step again")
        self.path = path


def _read_record(path: Path) -> dict | None:
    """A step's JSON record, None when absent; ``CorruptRecord`` when it is not a JSON object."""
    try:
        data = read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptRecord(path, f"{type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict):
        raise CorruptRecord(path, f"a JSON {type(data).__name__}, not an object")
    return data


def lock_is_held(folder: Path) -> bool:
    """Whether a process holds ``folder/.lock`` now (it is running the step)."""
    try:
        fd = os.open(folder / LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)  # closing drops a lock this call took
    return False


ENDED_BADLY = ("failed", "blocked", "interrupted", "lost", "corrupt")


def blocked_state(plan: Plan, states: dict[str, dict], step_id: str) -> dict | None:
    """``blocked`` with what blocked it, when an input of the step ended badly: the input's
    name, its error and its log, so the user reads the cause without looking it up."""
    for input_id in plan.steps[step_id].inputs.values():
        upstream = states.get(input_id, {})
        if upstream.get("state") in ENDED_BADLY:
            name = plan.steps[input_id].name
            return {"state": "blocked", "blocked_by": input_id,
                    "error": f"input {upstream['state']}: {name}: "
                             f"{upstream.get('error') or '(no error recorded)'}",
                    "log": upstream.get("log") or upstream.get("file")}
    return None


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
        """A readable DONE.json: a corrupt one (a full disk, a hand edit) is not a result."""
        return self.done_info(step) is not None

    def done_info(self, step: Step) -> dict | None:
        try:
            return _read_record(self.step_dir(step) / DONE)
        except CorruptRecord:
            return None

    def state(self, step: Step) -> dict:
        """``done``, or the last recorded state (``running``, ``failed``, ``submitted``, ...),
        ``interrupted`` when it says running but no process holds the step's lock (a local run
        that was killed; a SLURM job's liveness is squeue's to say), ``corrupt`` when a record
        cannot be read, or ``pending`` when the step never started."""
        folder = self.step_dir(step)
        try:
            done = _read_record(folder / DONE)
            if done is not None:
                return {"state": "done", **done}
            stale = _read_record(folder / STALE)  # a migrated result whose meaning is unknown
            if stale is not None:
                return {**stale, "state": "stale"}
            state = _read_record(folder / STATE)
        except CorruptRecord as exc:
            return {"state": "corrupt", "error": str(exc), "file": str(exc.path)}
        if state is None:
            return {"state": "pending"}
        if state.get("state") == "running" and not state.get("slurm_job_id") \
                and not lock_is_held(folder):
            return {**state, "state": "interrupted",
                    "error": state.get("error") or "the process running it stopped without "
                    "recording why (killed?)", "log": str(folder / "log.txt")}
        return state

    @contextlib.contextmanager
    def lock(self, step: Step, wait: bool = True):
        """Hold ``<step>/.lock`` while a step runs or is reset: a second ablate process on the
        same store (two local runs, a local run beside a SLURM job, a ``--force``) waits here,
        or with ``wait=False`` gets ``StepBusy``, instead of working in the same folder."""
        folder = self.step_dir(step)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / LOCK, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                raise StepBusy(f"step {step.name!r} is running in another process (it holds "
                               f"{folder / LOCK}); wait for it to finish or stop it, then "
                               "run again") from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def set_state(self, step: Step, state: str, **extra: Any) -> None:
        folder = self.step_dir(step)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            previous = _read_record(folder / STATE) or {}
        except CorruptRecord:
            previous = {}
        if state in ("running", "done"):  # an earlier attempt's error is not this one's
            previous = {k: v for k, v in previous.items() if k not in STALE_ON_SUCCESS}
        atomic_write_json(folder / STATE, {**previous, **extra, "state": state,
                                           "updated": time.time()})

    def set_state_in_place(self, step: Step, state: str, **fields: Any) -> None:
        """Overwrite ``state.json`` in place with only ``fields``: on a full disk, where the temp
        file of ``set_state`` cannot be written, the old record's own space still holds a short
        one, so the step does not keep saying "running"."""
        record = json.dumps({**fields, "state": state, "updated": time.time()}, default=str)
        with open(self.step_dir(step) / STATE, "r+" if (self.step_dir(step) / STATE).is_file()
                  else "w", encoding="utf-8") as handle:
            handle.truncate(0)
            handle.write(record + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def begin(self, step: Step) -> Path:
        """Create the step's folder with its spec and environment; keep partial outputs (resume)."""
        folder = self.step_dir(step)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "spec.json", step.record())
        atomic_write_json(folder / "env.json", environment())
        return folder

    def mark_done(self, step: Step, started: float | None = None) -> dict:
        folder = self.step_dir(step)
        for orphan in folder.rglob(".*.tmp"):  # left by a write that was killed half way
            if orphan.is_file():
                orphan.unlink()
            else:
                shutil.rmtree(orphan, ignore_errors=True)
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
        """Forget a step's result so that it runs again (``--force``). Refused (``StepBusy``)
        while another process runs the step: its folder is that run's."""
        folder = self.step_dir(step)
        if not folder.exists():
            return
        with self.lock(step, wait=False):
            if keep_checkpoints:
                for name in (DONE, STATE):
                    (folder / name).unlink(missing_ok=True)
                return
            for entry in folder.iterdir():
                if entry.name == LOCK:  # a waiting process holds this file open: keep it
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()

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
        try:
            unchanged = read_json(self.plan_path(plan.grid)) == json.loads(
                json.dumps(saved, default=str))
        except (OSError, ValueError):
            unchanged = False
        if not unchanged:  # a store that has nothing to run needs no write (read-only is fine)
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
