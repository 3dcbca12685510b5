#!/usr/bin/env bash
# Stop the daemons start_cluster.sh started (and only those).
set -uo pipefail
STATE=${SEGFLOW_SLURM_STATE:-/tmp/segflow-slurm}
[ -f "$STATE/started" ] || exit 0
for daemon in slurmd slurmctld munged; do
    if grep -qx "$daemon" "$STATE/started" && [ -s "$STATE/$daemon.pid" ]; then
        kill "$(cat "$STATE/$daemon.pid")" 2>/dev/null || true
    fi
done
rm -f "$STATE/started"
