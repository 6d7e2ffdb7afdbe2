"""Hostile generated code fails, and leaves the harness and the machine intact.

The corpus at the end undoes the in-process guard's module blocking (deleting the ``None`` entries
from ``sys.modules``) and uses ``posix``/``ctypes`` directly, so what stops it is the kernel:
seccomp, the namespaces, the read-only mounts, the unprivileged uid and the rlimits. Each program
passes only if its attack worked. A canary file, a victim process holding a fake API key in its
environment, and a socket listening on 127.0.0.1, all made by the harness's process, show that
nothing got out; it runs as root and as an ordinary user.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ablate.evals import sandbox
from ablate.evals.sandbox import Limits, SandboxUnavailable, isolation_mode, run_program

FAST = Limits(cpu_s=3, wall_s=6.0, memory_mb=1024)


def test_correct_and_wrong_programs():
    assert run_program("def f(x):\n    return x + 1\nassert f(1) == 2\n", FAST).passed
    result = run_program("def f(x):\n    return x\nassert f(1) == 2\n", FAST)
    assert result.status == "failed" and "AssertionError" in result.detail
    assert run_program("import numpy as np\nassert np.allclose([1.0], [1.0])\n", FAST).passed


def test_infinite_loop_is_killed_in_time():
    started = time.time()
    result = run_program("while True:\n    pass\n", FAST)
    assert not result.passed and time.time() - started < FAST.wall_s + 5


def test_sleeping_program_hits_the_wall_clock():
    result = run_program("import time\ntime.sleep(60)\n", Limits(cpu_s=3, wall_s=2.0))
    assert result.status == "timeout"


def test_fork_bomb_fails_and_leaves_no_processes():
    result = run_program("import os\nwhile True:\n    os.fork()\n", FAST)
    assert not result.passed
    also = run_program("import subprocess\nsubprocess.Popen(['sleep', '100'])\n", FAST)
    assert not also.passed
    time.sleep(0.5)
    assert leftover_processes(os.getpid()) == []


def test_writing_outside_its_folder_fails():
    target = Path(tempfile.gettempdir()) / f"ablate-sandbox-escape-{os.getpid()}"
    for code in (f"open({str(target)!r}, 'w').write('x')",
                 f"import os\nos.open({str(target)!r}, os.O_CREAT | os.O_WRONLY)",
                 f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')",
                 "import os\nos.remove('/etc/hostname')"):
        assert not run_program(code, FAST).passed, code
    assert not target.exists()
    assert run_program("open('inside.txt', 'w').write('ok')\n"
                       "assert open('inside.txt').read() == 'ok'\n", FAST).passed


def test_huge_allocation_and_huge_file_fail():
    assert not run_program("x = bytearray(8 * 1024 ** 3)\n", FAST).passed
    assert not run_program("open('big', 'wb').write(b'0' * (64 << 20))\n", FAST).passed


def test_no_network():
    code = ("import socket\ns = socket.create_connection(('127.0.0.1', 22), timeout=2)\n")
    assert not run_program(code, FAST).passed


def test_scratch_folders_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # no other process's folders here
    assert run_program("open('a.txt', 'w').write('x')\n", FAST).passed
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ending", ["exit()", "import sys; sys.exit(0)", "import os; os._exit(0)",
                                    "raise SystemExit"])
def test_a_program_that_exits_before_its_tests_fails(ending):
    # a completion ending in exit() would otherwise skip every assertion after it with status 0
    program = f"def add(a, b):\n    return a - b\n{ending}\nassert add(1, 2) == 3\n"
    result = run_program(program, FAST)
    assert not result.passed and "exited before its end" in result.detail
    assert run_program("print('hi')\nassert 1 + 1 == 2\n", FAST).passed


def test_files_go_in_and_asked_for_files_come_back():
    result = run_program("data = open('given.bin', 'rb').read()\n"
                         "open('answer.txt', 'w').write(str(len(data)))\n"
                         "open('other.txt', 'w').write('not asked for')\n", FAST,
                         files={"given.bin": b"\x00" * 1000}, collect=("answer.txt", "missing"))
    assert result.passed and result.files == {"answer.txt": b"1000"}
    with pytest.raises(ValueError):
        run_program("pass\n", FAST, files={"../escape": b"x"})
    with pytest.raises(ValueError):
        run_program("pass\n", FAST, collect=("program.py",))


def test_returned_files_are_only_regular_files():
    # a link would make the harness read a file of its own choosing; a pipe would block it
    program = ("import os\nos.mkfifo('pipe')\n"
               "try:\n    os.symlink('/etc/hostname', 'link')\nexcept PermissionError:\n    pass\n")
    started = time.time()
    result = run_program(program, FAST, collect=("pipe", "link"))
    assert result.passed and result.files == {} and time.time() - started < FAST.wall_s


def test_a_link_left_in_the_scratch_folder_is_not_followed(tmp_path):
    # the guard refuses os.symlink, but the reader must not rely on it
    from ablate.evals.sandbox import _read_back

    secret = tmp_path / "secret"
    secret.write_text("outside")
    (tmp_path / "link").symlink_to(secret)
    assert _read_back(tmp_path / "link", 1 << 20) is None
    assert _read_back(secret, 3) == b"out"


@pytest.fixture
def fresh_mode_check(monkeypatch):
    """The once-per-process isolation check forgotten before and after the test."""
    sandbox._check.cache_clear()
    yield monkeypatch
    sandbox._check.cache_clear()


def test_the_guard_alone_runs_only_when_asked(fresh_mode_check):
    fresh_mode_check.setenv("ABLATE_SANDBOX", "guard")
    assert isolation_mode() == "guard"
    assert run_program("assert 1 + 1 == 2\n", FAST).passed
    assert not run_program("import posix\nposix.fork()\n", FAST).passed  # seccomp, here too
    fresh_mode_check.setenv("ABLATE_SANDBOX", "none")
    with pytest.raises(SandboxUnavailable, match="'bwrap'.*'guard'"):
        run_program("pass\n", FAST)


def test_without_bwrap_it_refuses_and_says_how_to_get_it(fresh_mode_check):
    fresh_mode_check.delenv("ABLATE_SANDBOX", raising=False)
    real_which = sandbox.shutil.which
    fresh_mode_check.setattr(sandbox.shutil, "which",
                             lambda name, path=None: None if name == "bwrap" else
                             real_which(name, path=path))
    with pytest.raises(SandboxUnavailable,
                       match="apt-get install bubblewrap.*ABLATE_SANDBOX=guard"):
        run_program("pass\n", FAST)


def test_when_bwrap_cannot_make_namespaces_it_refuses(fresh_mode_check):
    fresh_mode_check.delenv("ABLATE_SANDBOX", raising=False)
    real = sandbox._bwrap_command
    # an option naming a user namespace that does not exist: bwrap fails as it would where
    # namespaces are not allowed
    fresh_mode_check.setattr(sandbox, "_bwrap_command",
                             lambda *args: real(*args)[:1] + ["--userns", "999"] + real(*args)[1:])
    with pytest.raises(SandboxUnavailable, match="bwrap could not isolate.*unprivileged_userns"):
        run_program("pass\n", FAST)


# --- the hostile corpus -----------------------------------------------------------------------

QUICK = Limits(cpu_s=2, wall_s=5.0, memory_mb=1024)
FAKE_KEY = "sk-ablate-fake-key-for-the-sandbox-test"

UNGUARD = ("import sys\n"
           "for _name in [n for n, m in list(sys.modules.items()) if m is None]:\n"
           "    del sys.modules[_name]\n"
           "import ctypes, posix\n"
           "libc = ctypes.CDLL(None, use_errno=True)\n")

# name -> program (formatted with the harness's paths, pids and port); each passes only if its
# attack succeeded
HOSTILE = {
    "os.fork": "import os\nos.fork()\n",
    "posix.fork": "pid = posix.fork()\nif pid == 0:\n    posix._exit(0)\n",
    "fork bomb": "while True:\n    try:\n        posix.fork()\n    except OSError:\n        pass\n",
    "ctypes fork": "assert libc.fork() >= 0\n",
    "ctypes clone3": "assert libc.syscall(435, 0, 0) >= 0\n",
    "posix.unlink outside": "posix.unlink({canary!r})\n",
    "posix.rename outside": "posix.rename({canary!r}, {canary!r} + '.moved')\n",
    "posix.rmdir outside": "posix.rmdir({empty_dir!r})\n",
    "ctypes unlink": "assert libc.unlink({canary!r}.encode()) == 0\n",
    "ctypes setuid root": "assert libc.setuid(0) == 0 and posix.getuid() == 0\n",
    "ctypes unshare user": "assert libc.unshare(0x10000000) == 0\n",
    "posix.execv": "posix.execv('/bin/sh', ['sh', '-c', 'rm -f {canary}'])\n",
    "subprocess": "import subprocess\nsubprocess.run(['rm', '-f', {canary!r}], check=True)\n",
    "environment key": "assert b'OPENAI_API_KEY' in posix.environ\n",
    "proc of another process": "assert b'{key}' in open('/proc/{victim}/environ', 'rb').read()\n",
    "proc listing": "assert len([p for p in posix.listdir('/proc') if p.isdigit()]) > 3\n",
    "write to home": ("flags = posix.O_CREAT | posix.O_WRONLY\n"
                      "posix.write(posix.open({home!r} + '/escaped', flags), b'x')\n"),
    "write to /tmp": ("flags = posix.O_CREAT | posix.O_WRONLY\n"
                      "posix.write(posix.open('/tmp/ablate-escaped-{tag}', flags), b'x')\n"),
    "signal the parent": "posix.kill(posix.getppid(), 9)\nposix.kill({harness}, 9)\n",
    "ctypes signal": "assert libc.kill({victim}, 9) == 0\n",
    "flood stdout": "while True:\n    sys.stdout.write('x' * 65536)\n",
    "exhaust file descriptors": "[posix.open('/dev/null', 0) for _ in range(100000)]\n",
    "thread bomb": ("import threading, time\n"
                    "for _ in range(100000):\n"
                    "    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"),
    "socket to 127.0.0.1": ("import socket\n"
                            "socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"),
}


def leftover_processes(harness: int) -> list[str]:
    """Processes running as one of the harness's sandbox uids, or still its children."""
    uids, left = sandbox.own_uids(), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            uid = os.stat(f"/proc/{pid}").st_uid
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # it ended meanwhile
        if uid in uids or ppid == harness:
            left.append(pid)
    return left


def run_corpus() -> dict:
    """Run every hostile program from this process; their verdicts and the machine's state."""
    os.environ["OPENAI_API_KEY"] = FAKE_KEY
    place = Path(tempfile.mkdtemp(prefix="ablate-hostile-"))
    home = place / "home"
    home.mkdir()
    (place / "empty").mkdir()
    canary = place / "canary"
    canary.write_text("intact")
    tag = f"{os.getpid()}-{time.time_ns()}"
    victim = subprocess.Popen(["sleep", "120"], env={"OPENAI_API_KEY": FAKE_KEY})
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    try:
        values = {"canary": str(canary), "empty_dir": str(place / "empty"), "home": str(home),
                  "tag": tag, "victim": victim.pid, "harness": os.getpid(), "key": FAKE_KEY,
                  "port": listener.getsockname()[1]}
        verdicts, seconds = {}, {}
        for name, body in HOSTILE.items():
            started = time.time()
            outcome = run_program(UNGUARD + body.format(**values), QUICK)
            verdicts[name] = [outcome.status, outcome.detail[-300:]]
            seconds[name] = round(time.time() - started, 2)
        try:
            listener.accept()
            connected = True
        except BlockingIOError:
            connected = False
        time.sleep(0.2)  # a killed sandbox's processes are gone within this
        return {"verdicts": verdicts, "seconds": seconds, "mode": sandbox.isolation_mode(),
                "canary": canary.read_text() if canary.exists() else None,
                "moved": (place / "canary.moved").exists(),
                "empty_dir": (place / "empty").is_dir(), "home": os.listdir(home),
                "tmp": os.path.exists(f"/tmp/ablate-escaped-{tag}"),
                "victim_alive": victim.poll() is None, "connected": connected,
                "leftover": [p for p in leftover_processes(os.getpid()) if p != str(victim.pid)],
                "uid": os.getuid()}
    finally:
        victim.kill()
        victim.wait()
        listener.close()
        shutil.rmtree(place, ignore_errors=True)


def check_intact(report: dict) -> None:
    passed = [name for name, (status, _) in report["verdicts"].items() if status == "passed"]
    assert not passed, {name: report["verdicts"][name] for name in passed}
    assert report["mode"] == "bwrap"
    assert report["canary"] == "intact" and not report["moved"] and report["empty_dir"]
    assert report["home"] == [] and not report["tmp"]
    assert report["victim_alive"] and not report["connected"]
    assert report["leftover"] == []
    assert max(report["seconds"].values()) < QUICK.wall_s + 3, report["seconds"]


@pytest.fixture
def isolated():
    try:
        if sandbox.isolation_mode() != "bwrap":
            pytest.skip(f"{sandbox.MODE_VARIABLE} asks for the in-process guard only")
    except sandbox.SandboxUnavailable as exc:
        pytest.skip(str(exc))


def test_hostile_programs_fail_and_leave_the_machine_intact(isolated):
    report = run_corpus()
    check_intact(report)
    flood = report["verdicts"]["flood stdout"]
    assert "File too large" in flood[1], flood  # its stdout file reached the file-size limit


def ordinary_user_command() -> list[str] | None:
    """This test file's corpus run by an unprivileged user (nobody), in a mount namespace of
    root's making where the interpreter is reachable even when it lives under /root."""
    try:
        nobody = pwd.getpwnam("nobody").pw_uid
    except KeyError:
        return None
    driver = [sys.executable, "-c",
              "import json, runpy, sys; corpus = runpy.run_path(sys.argv[1]); "
              "print(json.dumps(corpus['run_corpus']()))", __file__]
    bwrap, setpriv = shutil.which("bwrap"), shutil.which("setpriv")
    if bwrap is None or setpriv is None:
        return None
    command = [bwrap, "--dev-bind", "/", "/"]
    if os.path.isdir("/root"):
        command += ["--tmpfs", "/root"] + sandbox.interpreter_binds(["/root"])
    return command + ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--", setpriv,
                      f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups", "--"] + driver


def test_hostile_programs_fail_for_an_ordinary_user_too(isolated):
    if os.geteuid() != 0:
        report = run_corpus()  # this process is the ordinary user
    else:
        command = ordinary_user_command()
        if command is None:
            pytest.skip("no user 'nobody', or no setpriv, to run the corpus as")
        repo = str(Path(__file__).resolve().parents[2])
        done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": repo},
                              cwd="/")
        if "SandboxUnavailable" in done.stderr:
            pytest.skip("an unprivileged user cannot create namespaces here: "
                        + done.stderr.strip().splitlines()[-1])
        assert done.returncode == 0, done.stderr[-2000:]
        report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["uid"] != 0
    check_intact(report)
