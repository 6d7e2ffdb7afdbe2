"""MBPP+ judged as EvalPlus's evaluator does (evalplus/evaluate.py, evalplus/eval/__init__.py).

Each task's canonical solution runs once, in the sandbox, for every input's expected output and its
time (cached per process, and on disk per machine and interpreter). Each sample's program then gets
those outputs as a file, compares with EvalPlus's oracles, and fails when a call takes longer than
its input's limit (4 x the canonical's time, at least 1 s). ``ablate.evals.code`` defines the
benchmark; this module is its judge.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import platform
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from ablate.evals.base import EvalError
from ablate.evals.sandbox import Limits, Program, run_program

# EvalPlus's protocol (evalplus/eval/__init__.py, evalplus/gen/util): each input has its own time
# limit, the canonical solution's time on it times DEFAULT_GT_TIME_LIMIT_FACTOR (4), at least
# DEFAULT_MIN_TIME_LIMIT (1 s); and each of the base and plus checks runs in a process that is
# killed after min(60 s, the sum of its limits) + 3 s. EvalPlus times the wall clock; ablate times
# the CPU clock of the sandboxed process, the same on an idle machine and steady under load.
EVALPLUS_CHECK_TIMEOUT_S = 60.0  # EVALPLUS_TIMEOUT_PER_TASK's default
EVALPLUS_CHECK_GRACE_S = 3.0  # untrusted_check: +1, +1 without fast_check, join(timeout + 1)
START_UP_ALLOWANCE_S = 10  # python, numpy, reading the files, comparing: outside the call timings
EVALPLUS_MEMORY_MB = 4096  # Mbpp/255's combinations need more than 2 GB
# An expected output larger than this stays out of the file and is recomputed by the canonical
# solution inside the candidate's program (Mbpp/255's pickled outputs reach 780 MB in all).
MAX_SHIPPED_OUTPUT_BYTES = 4 << 20
MAX_SHIPPED_TOTAL_BYTES = 12 << 20  # under the sandbox's 16 MB file-size limit
CANONICAL_LIMITS = Limits(cpu_s=180, wall_s=600.0, memory_mb=EVALPLUS_MEMORY_MB)

# Runs the canonical solution once over a task's inputs, in the sandbox: each input's expected
# output (pickled alone, or None where it is too large to ship) and its call's CPU time. Timed
# as EvalPlus's trusted_exec does it: the deep copy of the input is outside the timing.
MBPP_CANONICAL = r"""
import copy, io, json, pickle, time

class _TooLarge(Exception):
    pass

class _CappedSink(io.RawIOBase):
    def __init__(self, cap):
        self.cap, self.parts, self.size = cap, [], 0
    def writable(self):
        return True
    def write(self, data):
        self.size += len(data)
        if self.size > self.cap:
            raise _TooLarge
        self.parts.append(bytes(data))
        return len(data)

def _pickled(value, cap):
    sink = _CappedSink(cap)
    try:  # the pickler streams its frames to the sink, so a huge output stops early
        pickle.Pickler(sink, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    except Exception:  # too large, or not picklable: the candidate's program recomputes it
        return None
    return b"".join(sink.parts)

_namespace = {{}}
exec({canonical!r}, _namespace)
_function = _namespace[{entry!r}]
with open("inputs.pkl", "rb") as _file:
    _inputs = pickle.load(_file)
_expected, _times, _room = [], [], {total_cap}
for _inp in _inputs:
    _args = copy.deepcopy(_inp)
    _start = time.process_time()
    _out = _function(*_args)
    _times.append(time.process_time() - _start)
    if {not_none!r}:  # EvalPlus keeps only whether there is a match
        _out = _out is not None
    _data = _pickled(_out, min({output_cap}, _room))
    _room -= len(_data or b"")
    _expected.append(_data)
with open("expected.pkl", "wb") as _file:
    pickle.dump(_expected, _file, protocol=pickle.HIGHEST_PROTOCOL)
with open("run.json", "w") as _file:
    json.dump({{"times": _times,
               "recomputed": [i for i, data in enumerate(_expected) if data is None]}}, _file)
"""

# EvalPlus's output comparison (exact, or allclose for floats) and its special oracles, against
# the canonical solution's outputs on the same inputs, each call timed against its input's limit.
MBPP_HARNESS = """
import copy as _copy
import os as _os
import pickle as _pickle
import sys as _sys
import threading as _threading
import time as _time
import numpy as _np

def _is_floats(x):
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)):
        return all(isinstance(i, float) for i in x)
    if isinstance(x, _np.ndarray):
        return x.dtype in (_np.float64, _np.float32)
    return False

def _assertion(out, exp, atol):
    exact = out == exp
    if atol == 0 and _is_floats(exp):
        atol = 1e-6
    if not exact and atol != 0:
        _np.testing.assert_allclose(out, exp, atol=atol)
    else:
        assert exact

def _matches(out, exp, inp, atol):
    # EvalPlus's special oracles for MBPP+ tasks with more than one right answer
    entry = {entry!r}
    if entry in {not_none_tasks!r}:  # exp says whether there is a match: only that counts
        if isinstance(out, bool):
            assert out == exp
        else:
            assert (out is not None) == exp
    elif entry in {set_eq!r}:  # any order
        assert set(out) == set(exp)
    elif entry == "are_equivalent" or (entry == "sum_div" and out == 0):
        pass
    elif entry in ("surface_Area", "digit_distance_nums") and out != exp:
        _oracles = {{}}
        exec({oracles!r}, _oracles)
        if entry == "surface_Area":
            assert abs(out - _oracles["_surface_Area"](*inp)) <= atol
        else:
            assert out == _oracles["_digit_distance_nums"](*inp)
    else:
        _assertion(out, exp, atol)

class _TimeLimitExceeded(Exception):
    pass

class _Watchdog:
    # Ends the program once the running call has used more CPU time than its input allows, so
    # that an endless call costs its limit, not the whole program's backstop. The check after
    # each call decides the verdict; this only stops a call that would never return.
    def __init__(self):
        self.armed = None  # (input index, CPU-time deadline, limit) of the running call
        self._exit = _os._exit
        _threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self):
        while True:
            armed = self.armed
            left = 0.1 if armed is None else armed[1] - _time.process_time()
            if left < 0 and self.armed is armed:
                _sys.__stderr__.write(f"input {{armed[0]}} still running after its limit of "
                                      f"{{armed[2]:.3f}} s of CPU time\\n")
                _sys.__stderr__.flush()
                self._exit(1)
            # CPU time grows no faster than the wall clock for one thread: no late wake-up
            _time.sleep(min(0.1, max(0.002, left)))

def _check_all(solution_source):
    # The expected outputs are read before the sample's code runs, and the sample runs in a
    # namespace of its own: rewriting expected.pkl, or the harness's names, changes nothing.
    with open("inputs.pkl", "rb") as _file:
        inputs = _pickle.load(_file)
    with open("expected.pkl", "rb") as _file:
        expected = _pickle.load(_file)
    solution = {{"__name__": "__main__"}}
    exec(compile(solution_source, "solution.py", "exec"), solution)
    function = solution[{entry!r}]
    limits = {limits!r}
    reference = None
    watchdog = _Watchdog()
    for first, end, budget in {checks!r}:  # EvalPlus's base and plus checks
        used = 0.0
        for i in range(first, end):
            if expected[i] is None:  # too large to ship: the canonical solution recomputes it
                if reference is None:
                    reference = {{}}
                    exec({canonical!r}, reference)
                exp = reference[{entry!r}](*_copy.deepcopy(inputs[i]))
                if {not_none!r}:
                    exp = exp is not None
            else:
                exp = _pickle.loads(expected[i])
            args = _copy.deepcopy(inputs[i])
            start = _time.process_time()
            watchdog.armed = (i, start + limits[i], limits[i])
            out = function(*args)
            took = _time.process_time() - start
            watchdog.armed = None
            if took > limits[i]:
                raise _TimeLimitExceeded(f"input {{i}} took {{took:.3f}} s of CPU time, "
                                         f"its limit is {{limits[i]:.3f}} s")
            used += took
            if used > budget:
                raise _TimeLimitExceeded(f"inputs {{first}}..{{i}} took {{used:.3f}} s of CPU "
                                         f"time, EvalPlus's check allows {{budget:.3f}} s")
            _matches(out, exp, inputs[i], {atol})

_check_all({completion!r})
"""


@dataclass(frozen=True)
class CanonicalRun:
    """A task's canonical solution run once: what each candidate is compared with and timed
    against. ``expected`` is the sandbox's file as it wrote it, handed on to the candidates'
    sandboxes unread (it is a pickle: this process never loads it)."""

    inputs: bytes  # pickled deserialised inputs, base then plus
    expected: bytes  # pickled list: each input's pickled output, or None to recompute
    times: tuple[float, ...]  # CPU seconds of each input's call
    recomputed: tuple[int, ...]  # inputs whose output was too large to ship
    n_base: int

    @property
    def time_limits(self) -> tuple[float, ...]:
        from evalplus.config import DEFAULT_GT_TIME_LIMIT_FACTOR, DEFAULT_MIN_TIME_LIMIT

        return tuple(max(DEFAULT_MIN_TIME_LIMIT, DEFAULT_GT_TIME_LIMIT_FACTOR * t)
                     for t in self.times)

    def checks(self) -> tuple[tuple[int, int, float], ...]:
        """(first input, end, CPU-time budget) of EvalPlus's base check and its plus check."""
        limits, n = self.time_limits, len(self.times)
        return tuple((first, end, min(EVALPLUS_CHECK_TIMEOUT_S, sum(limits[first:end]))
                      + EVALPLUS_CHECK_GRACE_S)
                     for first, end in ((0, self.n_base), (self.n_base, n)))

    def sandbox_limits(self) -> Limits:
        """The rlimit backstop: the checks' budgets, the recomputed outputs, start-up."""
        cpu = sum(budget for _, _, budget in self.checks()) + START_UP_ALLOWANCE_S + \
            sum(self.time_limits[i] for i in self.recomputed)
        cpu_s = int(cpu) + 1
        return Limits(cpu_s=cpu_s, wall_s=2.0 * cpu_s + 10, memory_mb=EVALPLUS_MEMORY_MB)


_canonical_runs: dict[str, CanonicalRun] = {}
_canonical_locks: dict[str, threading.Lock] = {}
_canonical_guard = threading.Lock()


def _task_key(item: dict) -> str:
    fields = [item["task_id"], item["entry_point"], item["canonical_solution"],
              item["base_input"], item["plus_input"]]
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=repr).encode()).hexdigest()


def _mbpp_inputs(item: dict) -> list:
    # EvalPlus stores tuples, sets and complex numbers as JSON lists; its own harness turns them
    # back (mbpp_deserialize_inputs) before calling the function, and so must this one. Some
    # items have no plus inputs ({} in the file).
    from evalplus.data.mbpp import mbpp_deserialize_inputs

    return mbpp_deserialize_inputs(item["task_id"],
                                   item["base_input"] + list(item["plus_input"] or []))


def run_canonical(item: dict) -> CanonicalRun:
    """Run the item's canonical solution over all its inputs in the sandbox (uncached)."""
    values = _mbpp_inputs(item)
    inputs, n_inputs = pickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL), len(values)
    not_none = item["entry_point"] in _special_oracles()["not_none"]
    source = MBPP_CANONICAL.format(canonical=item["canonical_solution"], entry=item["entry_point"],
                                   not_none=not_none, output_cap=MAX_SHIPPED_OUTPUT_BYTES,
                                   total_cap=MAX_SHIPPED_TOTAL_BYTES)
    outcome = run_program(source, CANONICAL_LIMITS, files={"inputs.pkl": inputs},
                          collect=("expected.pkl", "run.json"))
    if not outcome.passed or set(outcome.files) != {"expected.pkl", "run.json"}:
        raise EvalError(f"MBPP+ {item['task_id']}: its canonical solution failed in the sandbox, "
                        f"so its samples cannot be judged ({outcome.status}): {outcome.detail}")
    run = json.loads(outcome.files["run.json"])  # data, checked: the sandbox wrote it
    times = tuple(float(t) for t in run["times"])
    recomputed = tuple(int(i) for i in run["recomputed"])
    if len(times) != n_inputs or not set(recomputed) <= set(range(n_inputs)):
        raise EvalError(f"MBPP+ {item['task_id']}: the canonical run reported {len(times)} "
                        f"timings for {n_inputs} inputs")
    return CanonicalRun(inputs, outcome.files["expected.pkl"], times, recomputed,
                        len(item["base_input"]))


def _machine() -> str:
    """What the timings depend on besides the task: the interpreter and the processor."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{sys.version} {platform.machine()} {model}"


def _disk_path(cache_dir: Path, item: dict) -> Path:
    key = hashlib.sha256(json.dumps([_task_key(item), MBPP_CANONICAL, MAX_SHIPPED_OUTPUT_BYTES,
                                     MAX_SHIPPED_TOTAL_BYTES, _machine()]).encode()).hexdigest()
    return Path(cache_dir) / "mbpp_plus_canonical" / f"{key}.bin"


def _load_cached(path: Path, item: dict) -> CanonicalRun | None:
    """A canonical run saved by an earlier process on this machine: one JSON line (the times),
    then the expected-outputs file as the sandbox wrote it (never unpickled here)."""
    try:
        header, expected = path.read_bytes().split(b"\n", 1)
        meta = json.loads(header)
        values = _mbpp_inputs(item)
        if meta["task_id"] != item["task_id"] or len(meta["times"]) != len(values):
            return None
        return CanonicalRun(pickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL), expected,
                            tuple(map(float, meta["times"])), tuple(map(int, meta["recomputed"])),
                            int(meta["n_base"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save(path: Path, item: dict, run: CanonicalRun) -> None:
    meta = {"task_id": item["task_id"], "times": run.times, "recomputed": run.recomputed,
            "n_base": run.n_base}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as handle:
        handle.write(json.dumps(meta).encode() + b"\n" + run.expected)
    os.replace(handle.name, path)  # whole or absent, whoever else writes the same key


def canonical_run(item: dict, cache_dir: Path | None = None) -> CanonicalRun:
    """The item's canonical run, made once per process and task however many samples ask; with
    ``cache_dir``, also kept on disk for later processes on the same machine and interpreter."""
    key = _task_key(item)
    with _canonical_guard:
        lock = _canonical_locks.setdefault(key, threading.Lock())
    with lock:
        if key not in _canonical_runs:
            path = _disk_path(cache_dir, item) if cache_dir is not None else None
            run = _load_cached(path, item) if path is not None else None
            if run is None:
                run = run_canonical(item)
                if path is not None:
                    _save(path, item, run)
            _canonical_runs[key] = run
        return _canonical_runs[key]


@functools.lru_cache(maxsize=1)  # read once, not for each of a run's thousands of programs
def _special_oracles() -> dict:
    """EvalPlus's lists of MBPP+ tasks with special oracles, and the source of its two oracle
    functions, for the sandboxed harness (which cannot import evalplus itself)."""
    import inspect

    from evalplus.eval import _special_oracle as oracle

    source = "import math\n" + inspect.getsource(oracle._surface_Area) + \
        inspect.getsource(oracle._digit_distance_nums)
    return {"not_none": tuple(oracle.MBPP_OUTPUT_NOT_NONE_TASKS),
            "set_eq": tuple(oracle.MBPP_OUTPUT_SET_EQ_TASKS), "oracles": source}


def mbpp_program(item: dict, completion: str) -> Program:
    """A sample's program: EvalPlus's checks, which load the task's canonical run (inputs and
    outputs, as files) and then run the completion in a namespace of its own, with limits derived
    from the canonical's times."""
    truth = canonical_run(item)
    oracles = _special_oracles()
    not_none = item["entry_point"] in oracles["not_none"]
    source = MBPP_HARNESS.format(
        completion=completion, canonical=item["canonical_solution"],
        entry=item["entry_point"], not_none=not_none,
        not_none_tasks=oracles["not_none"], set_eq=oracles["set_eq"],
        oracles=oracles["oracles"], limits=truth.time_limits, checks=truth.checks(),
        atol=float(item["atol"] or 0))
    return Program(source, truth.sandbox_limits(),
                   {"inputs.pkl": truth.inputs, "expected.pkl": truth.expected})
