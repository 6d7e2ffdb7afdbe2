"""The local two-node SLURM cluster (slurm/start-local-cluster.sh), started once per test
session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _cluster_up(conf: Path) -> bool:
    """Both nodes of the local cluster answer (a one-node cluster of an older script does not
    do: the multi-node tests need two)."""
    out = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%N %t"], capture_output=True,
                         text=True, env={**os.environ, "SLURM_CONF": str(conf)}, timeout=30)
    states = dict(line.split() for line in out.stdout.splitlines() if line.strip())
    return out.returncode == 0 and set(states) >= {"n1", "n2"} and all(
        state.rstrip("*") in ("idle", "mix", "alloc") for state in states.values())


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive TCP ports that nothing listens on."""
    for first in range(7817, 30000, count):
        sockets = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("", port))
            return first
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no free ports for the local SLURM cluster")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Path:
    """A running two-node SLURM cluster (n1, n2 on this machine); ``SLURM_CONF`` is set for this
    process and the jobs it submits. Reuses one started by hand in $ABLATE_SLURM_DIR (and leaves it running); otherwise
    starts one in a temp folder and stops it by its pid files at the end."""
    missing = [t for t in ("munged", "slurmctld", "slurmd", "sbatch") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs a local SLURM ({', '.join(missing)} missing): "
                    "apt-get install -y slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster runs its daemons as root")
    existing = Path(os.environ.get("ABLATE_SLURM_DIR", "/tmp/ablate-slurm"))
    started = None
    if (existing / "slurm.conf").is_file() and _cluster_up(existing / "slurm.conf"):
        folder = existing
    else:
        folder = tmp_path_factory.mktemp("slurm")
        # free ports: another cluster on this machine (6817 by default) must not meet this one
        env = {**os.environ, "ABLATE_SLURM_PORT": str(free_ports(3))}
        out = subprocess.run(["bash", str(REPO / "slurm" / "start-local-cluster.sh"), str(folder)],
                             capture_output=True, text=True, timeout=120, env=env)
        if out.returncode != 0:
            pytest.fail(f"could not start the local SLURM cluster:\n{out.stdout}\n{out.stderr}")
        started = folder
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(folder / "slurm.conf")
    try:
        yield folder
    finally:
        if started is not None:
            subprocess.run(["bash", str(REPO / "slurm" / "stop-local-cluster.sh"), str(started)],
                           capture_output=True, timeout=120)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous


@pytest.fixture
def job_env(monkeypatch):
    """What the jobs inherit: the test runners importable, and chosen for evaluations."""
    # this checkout first: a job must run the code under test, not an installed copy
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), str(REPO)]))
    monkeypatch.setenv("ABLATE_RUNNERS", "eval=slurm_runners:weights_eval")
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
