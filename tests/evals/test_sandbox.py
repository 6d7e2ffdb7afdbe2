"""Hostile generated code fails, and leaves the harness and the machine intact."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest

from ablate.evals.sandbox import Limits, run_program

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
    before = len(os.listdir("/proc"))
    result = run_program("import os\nwhile True:\n    os.fork()\n", FAST)
    assert not result.passed
    also = run_program("import subprocess\nsubprocess.Popen(['sleep', '100'])\n", FAST)
    assert not also.passed
    time.sleep(0.5)
    assert len(os.listdir("/proc")) <= before + 5


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


def test_scratch_folders_are_removed():
    before = set(Path(tempfile.gettempdir()).glob("ablate-sandbox-*"))
    run_program("open('a.txt', 'w').write('x')\n", FAST)
    assert set(Path(tempfile.gettempdir()).glob("ablate-sandbox-*")) <= before


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
