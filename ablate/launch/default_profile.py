"""Which cluster profile ``--submit`` uses when ``--cluster`` is not given, in the order cluster
tools look for their settings:

1. ``$ABLATE_CLUSTER``: the path of a profile file;
2. the user's default, ``$XDG_CONFIG_HOME/ablate/cluster.yaml`` (``~/.config/ablate/cluster.yaml``);
3. one derived from ``sinfo``: the default partition, its nodes' GPUs (GRES), CPUs, memory and
   time limit; training takes a whole node, an evaluation one GPU and its share of the node.

The CLI prints which one it took (and a derived profile in full) before anything is submitted.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from ablate.launch.profile import ClusterProfile, LoadedProfile, Resources, load_profile
from ablate.spec.load import SpecError

ENV_VAR = "ABLATE_CLUSTER"
SINFO_FORMAT = "%P|%G|%c|%m|%l"  # partition (* = default), GRES, CPUs and MiB per node, time limit
SINFO_SOURCE = Path("(derived from sinfo)")


@dataclass(frozen=True)
class ResolvedProfile:
    profile: LoadedProfile
    source: str  # where it came from, for the line printed before submitting


def user_profile_path(environ: Mapping[str, str]) -> Path:
    home = Path(environ.get("HOME") or Path.home())
    base = environ.get("XDG_CONFIG_HOME") or str(home / ".config")
    return Path(base) / "ablate" / "cluster.yaml"


def resolve_profile(cluster: Path | str | None, environ: Mapping[str, str] | None = None,
                    sinfo: Callable[[], str] | None = None) -> ResolvedProfile:
    environ = os.environ if environ is None else environ
    if cluster is not None:
        return ResolvedProfile(load_profile(cluster), "--cluster")
    if environ.get(ENV_VAR):
        path = Path(environ[ENV_VAR])
        if not path.is_file():
            raise SpecError(f"${ENV_VAR}={path}: no such cluster profile (unset it, or point it "
                            "at a profile file such as slurm/local.yaml)")
        return ResolvedProfile(load_profile(path), f"${ENV_VAR}")
    user = user_profile_path(environ)
    if user.is_file():
        return ResolvedProfile(load_profile(user), "the user's default")
    if sinfo is None and shutil.which("sinfo") is None:
        raise SpecError(f"--submit needs a cluster profile: none given (--cluster FILE), "
                        f"${ENV_VAR} is not set, there is no {user}, and there is no `sinfo` to "
                        "derive one from (see slurm/README.md)")
    text = (sinfo or _sinfo)()
    return ResolvedProfile(LoadedProfile(SINFO_SOURCE, profile_from_sinfo(text)),
                           f"no --cluster, no ${ENV_VAR}, no {user}")


def _sinfo() -> str:
    out = subprocess.run(["sinfo", "--noheader", f"--format={SINFO_FORMAT}"],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise SpecError(f"sinfo failed, so no cluster profile could be derived from it: "
                        f"{(out.stderr or out.stdout).strip()}; pass --cluster FILE")
    return out.stdout


def gpus_in_gres(gres: str) -> int:
    """GPUs in a GRES string from sinfo (``gpu:a100:8(S:0-1),shard:8`` -> 8; ``(null)`` -> 0)."""
    return sum(int(m.group(1)) for m in re.finditer(r"\bgpu(?::[^:,()]+)?:(\d+)", gres))


def minutes_of_limit(limit: str) -> int | None:
    """sinfo's time limit in minutes (``1-12:00:00``, ``2:00:00``, ``30``); None for
    ``infinite``."""
    if limit.strip().lower() in ("infinite", "unlimited", "n/a", ""):
        return None
    days, _, rest = limit.strip().rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:  # D-HH[:MM[:SS]]
        hours, minutes = parts[0], (parts[1] if len(parts) > 1 else 0)
    elif len(parts) == 3:  # HH:MM:SS
        hours, minutes = parts[0], parts[1]
    else:  # MM or MM:SS
        hours, minutes = 0, parts[0]
    return (int(days or 0) * 24 + hours) * 60 + minutes


def profile_from_sinfo(text: str) -> ClusterProfile:
    """A profile for the default partition (else the first listed) of sinfo's ``SINFO_FORMAT``
    lines, sized to its smallest node."""
    rows = []
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 5:
            continue
        partition, gres, cpus, mem, limit = fields
        rows.append((partition, gres, int(re.sub(r"\D", "", cpus) or 1),
                     int(re.sub(r"\D", "", mem) or 1024), limit))
    if not rows:
        raise SpecError(f"sinfo listed no partitions ({text.strip()!r}); pass --cluster FILE")
    default = next((r[0] for r in rows if r[0].endswith("*")), rows[0][0])
    mine = [r for r in rows if r[0] == default]
    gpus = min(gpus_in_gres(r[1]) for r in mine)
    cpus = min(r[2] for r in mine)
    mem_gb = min(r[3] for r in mine) * 0.9 / 1024  # leave the node's system some memory
    limit = minutes_of_limit(mine[0][4])
    share = max(1, gpus)  # an evaluation takes one GPU and that share of the node

    def capped(minutes: int) -> int:
        return minutes if limit is None else min(minutes, limit)

    one_job = Resources(gpus_per_node=min(1, gpus), cpus_per_task=max(1, cpus // share),
                        mem_gb=round(mem_gb / share, 1), time_min=capped(4 * 60))
    return ClusterProfile(
        partition=default.rstrip("*"), node_gpus=gpus,
        train=Resources(gpus_per_node=gpus, cpus_per_task=cpus, mem_gb=round(mem_gb, 1),
                        time_min=capped(24 * 60)),
        eval=one_job, judge=one_job)
