"""`--submit` without `--cluster`: the profile named by $ABLATE_CLUSTER, else the user's default
file, else one derived from sinfo; and what a profile's cluster environment puts in the jobs'
scripts."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ablate.cli import app
from ablate.launch.default_profile import (
    SINFO_SOURCE, minutes_of_limit, profile_from_sinfo, resolve_profile, user_profile_path,
)
from ablate.spec import SpecError

from test_slurm import LOCAL_PROFILE, write_grid


def no_sinfo():
    raise AssertionError("sinfo must not be asked when a profile file is found")


def test_the_environment_variable_wins_over_the_user_default(tmp_path):
    user = tmp_path / "config" / "ablate" / "cluster.yaml"
    user.parent.mkdir(parents=True)
    user.write_text("partition: from-user\n")
    named = tmp_path / "named.yaml"
    named.write_text("partition: from-env\n")
    environ = {"ABLATE_CLUSTER": str(named), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    found = resolve_profile(None, environ, sinfo=no_sinfo)
    assert found.profile.config.partition == "from-env" and found.source == "$ABLATE_CLUSTER"
    # and --cluster wins over both
    assert resolve_profile(LOCAL_PROFILE, environ, sinfo=no_sinfo).profile.path == LOCAL_PROFILE


def test_a_missing_profile_named_by_the_variable_is_an_error_naming_it(tmp_path):
    with pytest.raises(SpecError, match=r"\$ABLATE_CLUSTER=.*nope.yaml: no such cluster profile"):
        resolve_profile(None, {"ABLATE_CLUSTER": str(tmp_path / "nope.yaml")}, sinfo=no_sinfo)


def test_the_user_default_honours_xdg_config_home_else_home(tmp_path):
    assert user_profile_path({"XDG_CONFIG_HOME": "/x"}).as_posix() == "/x/ablate/cluster.yaml"
    assert user_profile_path({"HOME": "/home/u"}).as_posix() == \
        "/home/u/.config/ablate/cluster.yaml"
    home = tmp_path / "home"
    (home / ".config" / "ablate").mkdir(parents=True)
    (home / ".config" / "ablate" / "cluster.yaml").write_text("partition: mine\n")
    found = resolve_profile(None, {"HOME": str(home)}, sinfo=no_sinfo)
    assert found.profile.config.partition == "mine" and found.source == "the user's default"


SINFO = """\
cpu|(null)|64|256000|1-00:00:00
gpu*|gpu:a100:8(S:0-1)|96|1000000|2-00:00:00
gpu*|gpu:a100:4|48|500000|2-00:00:00
"""


def test_a_profile_derived_from_sinfo_fits_the_default_partitions_smallest_node(tmp_path):
    found = resolve_profile(None, {"HOME": str(tmp_path)}, sinfo=lambda: SINFO)
    assert found.profile.path == SINFO_SOURCE and found.source.startswith("no --cluster")
    cfg = found.profile.config
    assert cfg.partition == "gpu" and cfg.node_gpus == 4
    assert (cfg.train.gpus_per_node, cfg.train.cpus_per_task, cfg.train.time_min) == (4, 48, 1440)
    assert cfg.train.mem_gb == pytest.approx(500000 * 0.9 / 1024, abs=0.1)
    # an evaluation: one GPU and a quarter of the node
    assert (cfg.eval.gpus_per_node, cfg.eval.cpus_per_task) == (1, 12)
    assert cfg.eval.mem_gb == pytest.approx(500000 * 0.9 / 1024 / 4, abs=0.1)


def test_sinfo_time_limits():
    assert minutes_of_limit("infinite") is None
    assert minutes_of_limit("1-12:00:00") == 36 * 60
    assert minutes_of_limit("2:30:00") == 150
    assert minutes_of_limit("30") == 30
    assert minutes_of_limit("4-00") == 4 * 24 * 60
    assert profile_from_sinfo("debug*|(null)|2|3000|1:00:00\n").train.time_min == 60


def test_no_profile_anywhere_and_no_sinfo_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SpecError) as error:
        resolve_profile(None, {"HOME": str(tmp_path)})
    text = str(error.value)
    assert "--cluster" in text and "$ABLATE_CLUSTER" in text and "cluster.yaml" in text
    assert "sinfo" in text


def test_submit_without_cluster_prints_the_profile_it_took(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # a dry run needs no SLURM client
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("ABLATE_CLUSTER", str(LOCAL_PROFILE))
    grid = write_grid(tmp_path, "defaultgrid")
    out = CliRunner().invoke(app, ["grid", str(grid), "--submit", "--dry-run",
                                   "--store", str(tmp_path / "store")])
    assert out.exit_code == 0, out.output
    assert f"cluster profile: {LOCAL_PROFILE} ($ABLATE_CLUSTER)" in " ".join(out.output.split())
    assert out.output.index("cluster profile:") < out.output.index("#SBATCH")


@pytest.mark.slurm
def test_submit_without_cluster_derives_the_local_clusters_profile(slurm_cluster, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("ABLATE_CLUSTER", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    found = resolve_profile(None)
    cfg = found.profile.config
    assert cfg.partition == "debug" and cfg.node_gpus == 0
    assert cfg.train.cpus_per_task == 4 and cfg.train.gpus_per_node == 0  # n1, n2: 4 CPUs each
    grid = write_grid(tmp_path, "derivedgrid")
    out = CliRunner().invoke(app, ["grid", str(grid), "--submit", "--dry-run",
                                   "--store", str(tmp_path / "store")])
    assert out.exit_code == 0, out.output
    text = out.output
    assert "cluster profile: (derived from sinfo) (no --cluster, no $ABLATE_CLUSTER" in text
    assert "partition: debug" in text
    assert "#SBATCH --partition=debug" in text


def test_the_cluster_environment_is_in_every_jobs_script(tmp_path, monkeypatch):
    """Interface, NCCL/gloo variables and the cache on shared storage are exported before srun,
    srun binds CPUs, and a multi-node training job shows each node's torchrun line."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("COLUMNS", "200")
    profile = tmp_path / "env.yaml"
    profile.write_text(
        "partition: gpu\nnode_gpus: 8\n"
        "environment: {interface: ib0, cpu_bind: cores, cache_dir: $SCRATCH/ablate-cache,\n"
        "              env: {NCCL_IB_HCA: mlx5, NCCL_DEBUG: WARN}}\n"
        "train: {nodes: 2, gpus_per_node: 8, cpus_per_task: 64}\n"
        "eval: {gpus_per_node: 1}\njudge: {gpus_per_node: 1}\n")
    grid = write_grid(tmp_path, "envgrid")
    out = CliRunner().invoke(app, ["grid", str(grid), "--submit", "--dry-run", "--cluster",
                                   str(profile), "--store", str(tmp_path / "store")])
    assert out.exit_code == 0, out.output
    scripts = out.output.split("# job ")[1:]
    assert len(scripts) == 3  # the training job and two evaluation arrays
    for script in scripts:
        for line in ('export NCCL_SOCKET_IFNAME="ib0"', 'export GLOO_SOCKET_IFNAME="ib0"',
                     'export ABLATE_CACHE="$SCRATCH/ablate-cache"',
                     'export HF_HOME="$SCRATCH/ablate-cache/huggingface"',
                     'export NCCL_IB_HCA="mlx5"', 'export NCCL_DEBUG="WARN"'):
            assert line in script, script
        srun = next(line for line in script.splitlines() if line.startswith("srun "))
        assert "--cpu-bind=cores" in srun
        assert script.index("export NCCL_SOCKET_IFNAME") < script.index("srun ")
    train = scripts[0]
    assert "OMP_NUM_THREADS=8" in train  # 64 CPUs for 8 processes
    for node in (0, 1):
        assert f"--nnodes=2 --node_rank={node} --nproc_per_node=8" in train, train
    assert "--node_rank" not in scripts[1]


def test_a_bad_variable_name_is_refused_naming_the_field(tmp_path):
    from ablate.launch.profile import load_profile

    bad = tmp_path / "bad.yaml"
    bad.write_text("environment: {env: {'NCCL DEBUG': WARN}}\n")
    with pytest.raises(SpecError, match="environment.env: 'NCCL DEBUG' cannot be"):
        load_profile(bad)
