#!/usr/bin/env bash
# Stop the cluster that start-local-cluster.sh started in DIR, by the pids in its pid files
# (never by process name: other SLURM or munge daemons on the machine are left alone).
#   slurm/stop-local-cluster.sh [DIR]     # default $ABLATE_SLURM_DIR or /tmp/ablate-slurm
set -uo pipefail
DIR=$(realpath -m "${1:-${ABLATE_SLURM_DIR:-/tmp/ablate-slurm}}")
[ -d "$DIR" ] || { echo "nothing to stop: no $DIR"; exit 0; }

stop() {  # stop NAME PIDFILE: TERM, wait up to 15 s, then KILL
  local name=$1 pidfile=$2 pid
  [ -s "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    echo "stopped $name ($pid)"
  fi
  rm -f "$pidfile"
}

# Jobs still running would outlive slurmd (linuxproc tracking): cancel them while slurmctld is up.
if [ -f "$DIR/slurm.conf" ] && [ -s "$DIR/slurmctld.pid" ]; then
  SLURM_CONF="$DIR/slurm.conf" timeout 20 scancel --full --quiet --user "$(id -un)" 2>/dev/null || true
  sleep 1
fi
for pidfile in "$DIR"/slurmd*.pid; do stop slurmd "$pidfile"; done
stop slurmctld "$DIR/slurmctld.pid"
# munged serves every SLURM on the machine: another cluster's daemons may still need it
if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
  [ -s "$DIR/munged.pid" ] && echo "munged ($(cat "$DIR/munged.pid")) left running: other SLURM daemons on this machine use it"
else
  stop munged "$DIR/munged.pid"
fi
