#!/usr/bin/env bash
# Start a real single-node SLURM cluster on localhost (Debian's slurm-wlm, no systemd): munged, slurmctld and
# slurmd, started by hand. Idempotent. Everything it starts is recorded in $STATE so stop_cluster.sh stops only that.
# No accounting daemon: the Snakemake profile checks job status with squeue (MinJobAge below keeps finished jobs
# visible long enough), so sacct is never needed.
set -euo pipefail

STATE=${SEGFLOW_SLURM_STATE:-/tmp/segflow-slurm}
mkdir -p "$STATE"

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

# The node's real CPUs and memory, as slurmd sees them (leave 1 GB to the system).
read -r CPUS MEMORY < <(slurmd -C | awk '/NodeName/ {for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } print v["CPUs"], v["RealMemory"] - 1000}')

# Jobs read /etc/slurm/slurm.conf: a custom SLURM_CONF does not reach them.
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=segflow
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SchedulerType=sched/backfill
MinJobAge=3600
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=localhost CPUs=$CPUS RealMemory=$MEMORY State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF

if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge && chown munge:munge /run/munge

running() { [ -s "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

if ! pgrep -x munged >/dev/null; then
    su -s /bin/sh munge -c "munged --pid-file=$STATE/munged.pid" 2>/dev/null || munged --force --pid-file="$STATE/munged.pid"
    echo munged >> "$STATE/started"
fi
if ! running slurmctld; then
    slurmctld -c   # -c: a clean state, no jobs left from an earlier cluster
    echo slurmctld >> "$STATE/started"
fi
if ! running slurmd; then
    slurmd -N localhost
    echo slurmd >> "$STATE/started"
fi

for _ in $(seq 1 60); do
    if sinfo -h -o %t 2>/dev/null | grep -qx idle; then
        echo "SLURM cluster up: $(sinfo -h -o '%P %D %c %m %t')"
        exit 0
    fi
    sleep 1
done
echo "SLURM node did not become idle; see $STATE/slurmctld.log and $STATE/slurmd.log" >&2
exit 1
