#!/usr/bin/env bash
# Start a two-node SLURM cluster on this machine (Debian's slurm-wlm + munge), for the tests and
# for trying `ablate grid … --submit --cluster slurm/local.yaml` without a real cluster. The two
# nodes, n1 and n2, are two slurmd daemons on this host (distinct ports, spool and pid files), so
# that multi-node jobs take the path they take on a real cluster.
#
#   slurm/start-local-cluster.sh [DIR]     # DIR: scratch folder, default $ABLATE_SLURM_DIR or /tmp/ablate-slurm
#   . DIR/env.sh                           # exports SLURM_CONF for sbatch, squeue, scancel, submitit
#   slurm/stop-local-cluster.sh [DIR]
#
# Ports: slurmctld on $ABLATE_SLURM_PORT (default 6817), the nodes' slurmd on the next two, so
# that two such clusters on one machine (with different DIR and port) do not meet.
#
# Needs root (munged and slurmd run as root here) and `apt-get install -y slurm-wlm munge`.
# No cgroups and no systemd: processes are tracked by linuxproc, daemons started by hand and
# stopped by the pids in their pid files. Accounting is off, so `sacct` is not available.
set -euo pipefail

DIR=$(realpath -m "${1:-${ABLATE_SLURM_DIR:-/tmp/ablate-slurm}}")
for tool in munged slurmctld slurmd sinfo; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found; apt-get install -y slurm-wlm munge" >&2; exit 3; }
done
[ "$(id -u)" = 0 ] || { echo "error: run as root (munged and slurmd need it)" >&2; exit 3; }

if [ -f "$DIR/slurmctld.pid" ] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null; then
  echo "already running: $DIR (stop it with slurm/stop-local-cluster.sh $DIR)"
  exit 0
fi

mkdir -p "$DIR/state" "$DIR/log"
HOST=$(hostname)
PORT=${ABLATE_SLURM_PORT:-6817}
# Each node declares 4 CPUs and half of the available memory (8 to 16 GiB), whatever the
# machine has (SlurmdParameters=config_overrides; nothing enforces memory here without cgroups):
# both nodes share this host, and the tests need room for a 2-process training job per node
# beside other jobs, on a machine whose free memory varies.
CPUS=4
AVAIL_MB=$(awk '/MemAvailable/ {print int($2 / 1024)}' /proc/meminfo)
MEM_MB=$(( AVAIL_MB / 2 < 16384 ? AVAIL_MB / 2 : 16384 ))
MEM_MB=$(( MEM_MB > 8192 ? MEM_MB : 8192 ))

# munge: one key, folders owned by munge; started once for the machine (shared with other users).
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
fi
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  # Started here, so stopped by stop-local-cluster.sh through this pid file; a munged that was
  # already running (the machine's own) is left alone.
  munged --force --pid-file="$DIR/munged.pid"
fi

cat >"$DIR/slurm.conf" <<EOF
ClusterName=ablate-local
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
# Finished jobs leave squeue after 5 minutes (there is no sacct here to ask afterwards).
MinJobAge=300
KillWait=10
SlurmdParameters=config_overrides
SlurmctldPort=$PORT
StateSaveLocation=$DIR/state
# %n: the node's name, one spool folder, pid file and log per slurmd
SlurmdSpoolDir=$DIR/spool-%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
NodeName=n1 NodeHostname=$HOST Port=$((PORT + 1)) CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
NodeName=n2 NodeHostname=$HOST Port=$((PORT + 2)) CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
EOF
printf 'export SLURM_CONF=%q\n' "$DIR/slurm.conf" >"$DIR/env.sh"
export SLURM_CONF="$DIR/slurm.conf"

slurmctld -c   # -c: a clean start (no jobs from an earlier run of this folder)
slurmd -N n1
slurmd -N n2
for _ in $(seq 60); do
  if [ "$(sinfo -h -N -o '%N %t' 2>/dev/null | grep -c ' idle$')" = 2 ]; then
    echo "local SLURM cluster up: nodes n1, n2 on $HOST ($CPUS CPUs, $MEM_MB MiB each), partition debug"
    echo "use it with: . $DIR/env.sh"
    exit 0
  fi
  sleep 1
done
echo "error: the nodes did not become idle within 60 s; see $DIR/log/" >&2
sinfo >&2 || true
exit 1
