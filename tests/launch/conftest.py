"""The local SLURM cluster (slurm/start-local-cluster.sh), started once per test session."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _cluster_up(conf: Path) -> bool:
    out = subprocess.run(["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True,
                         env={**os.environ, "SLURM_CONF": str(conf)}, timeout=30)
    return out.returncode == 0 and out.stdout.strip() in ("idle", "mix", "alloc")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Path:
    """A running one-node SLURM cluster; ``SLURM_CONF`` is set for this process and the jobs it
    submits. Reuses one started by hand in $ABLATE_SLURM_DIR (and leaves it running); otherwise
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
        out = subprocess.run(["bash", str(REPO / "slurm" / "start-local-cluster.sh"), str(folder)],
                             capture_output=True, text=True, timeout=120)
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
