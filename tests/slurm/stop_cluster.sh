#!/usr/bin/env bash
# Stop the daemons start_cluster.sh started (and only those, by the pids they recorded), and wait until they exit
# so that an immediate start_cluster.sh starts fresh ones.
set -uo pipefail
STATE=${SEGFLOW_SLURM_STATE:-/tmp/segflow-slurm}
[ -f "$STATE/started" ] || exit 0

pid_file() { if [ "$1" = munged ]; then echo "$STATE/munge/munged.pid"; else echo "$STATE/$1.pid"; fi; }

for daemon in slurmd slurmctld munged; do
    grep -qx "$daemon" "$STATE/started" || continue
    file=$(pid_file "$daemon")
    [ -s "$file" ] || continue
    pid=$(cat "$file")
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "$daemon (pid $pid) did not exit after SIGTERM; sending SIGKILL" >&2
        kill -9 "$pid" 2>/dev/null
    fi
    rm -f "$file"
done
rm -f "$STATE/started"
