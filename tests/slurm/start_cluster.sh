#!/usr/bin/env bash
# Start a real single-node SLURM cluster on localhost (Debian's slurm-wlm, no systemd): munged, slurmctld and
# slurmd, started by hand. Idempotent: daemons already running are left alone. Everything it starts is recorded in
# $STATE so that stop_cluster.sh stops only that.
# No accounting daemon: the Snakemake profiles check job status with squeue (MinJobAge below keeps finished jobs
# visible for an hour), so sacct/slurmdbd are never needed.
# It writes /etc/slurm/slurm.conf (jobs read that path; a custom SLURM_CONF does not reach them) and refuses to
# replace one it did not write, unless SEGFLOW_SLURM_FORCE=1 (the old file is then kept in $STATE).
set -euo pipefail

STATE=${SEGFLOW_SLURM_STATE:-/tmp/segflow-slurm}
MARK="# written by segflow tests/slurm/start_cluster.sh"

if [ "$(id -u)" -ne 0 ]; then
    echo "start_cluster.sh needs root (it installs slurm-wlm and munge and starts their daemons)" >&2
    exit 1
fi
# Ours: the file names the cluster segflow (earlier versions of this script wrote no marker line).
if [ -f /etc/slurm/slurm.conf ] && ! grep -qx "ClusterName=segflow" /etc/slurm/slurm.conf; then
    if [ "${SEGFLOW_SLURM_FORCE:-0}" != 1 ]; then
        echo "/etc/slurm/slurm.conf exists and was not written by this script; not replacing it" \
            "(set SEGFLOW_SLURM_FORCE=1 to replace it, keeping a copy in $STATE)" >&2
        exit 1
    fi
    mkdir -p "$STATE"
    cp -p /etc/slurm/slurm.conf "$STATE/slurm.conf.orig"
fi
mkdir -p "$STATE"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    # The packages' install scripts must not start their daemons (a container without systemd would run munged
    # and a slurmctld without a config): a policy-rc.d that forbids it, only while installing, only if none exists.
    policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy=1
    fi
    # slurm-wlm is slurmctld + slurmd + slurm-client; their Depends hold every plugin slurm.conf below names
    # (select/cons_tres, auth/munge, proctrack/linuxproc); the recommended extra plugins are not needed.
    installed=0
    { apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge; } \
        > "$STATE/apt.log" 2>&1 || installed=$?
    [ -z "$policy" ] || rm -f /usr/sbin/policy-rc.d
    if [ "$installed" -ne 0 ]; then
        tail -20 "$STATE/apt.log" >&2
        echo "installing slurm-wlm and munge failed (log: $STATE/apt.log)" >&2
        exit 1
    fi
    echo "installed slurm-wlm $(dpkg-query -W -f '${Version}' slurmctld) and munge"
fi

# The node's real CPUs and memory, as slurmd sees them (leave 1 GB to the system).
read -r CPUS MEMORY < <(slurmd -C | awk '/NodeName/ {for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } print v["CPUs"], v["RealMemory"] - 1000}')

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd
cat > /etc/slurm/slurm.conf <<CONF
$MARK
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
# munged runs as munge and writes its pid file itself: give it a folder it may write.
install -d -o munge -g munge "$STATE/munge"

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if ! pgrep -x munged >/dev/null; then
    rm -f "$STATE/munge/munged.pid"
    su -s /bin/sh munge -c "munged --pid-file=$STATE/munge/munged.pid" ||
        munged --force --pid-file="$STATE/munge/munged.pid"
    echo munged >> "$STATE/started"
fi
if ! running "$STATE/slurmctld.pid"; then
    slurmctld -c   # -c: a clean state, no jobs left from an earlier cluster
    echo slurmctld >> "$STATE/started"
fi
if ! running "$STATE/slurmd.pid"; then
    slurmd -N localhost
    echo slurmd >> "$STATE/started"
fi

for _ in $(seq 1 60); do
    if sinfo -h -o %t 2>/dev/null | grep -qx idle; then
        echo "SLURM cluster up: $(sinfo -h -o 'partition %P, %D node, %c CPUs, %m MB, %t')"
        exit 0
    fi
    sleep 1
done
echo "SLURM node did not become idle; see $STATE/slurmctld.log and $STATE/slurmd.log" >&2
exit 1
