#!/usr/bin/env bash
# The tiny pipeline through a real single-node SLURM scheduler, compared with a local run of the same config.
# Usage: bash tests/slurm/run_slurm_test.sh   (make test-slurm). Needs root (it installs and starts SLURM).
# SEGFLOW_KEEP=1 keeps the temporary work folder after a passing run (a failing run always keeps it).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
SNAKEMAKE=$(dirname "$PYTHON")/snakemake
WORK=$(mktemp -d /tmp/segflow-slurm-test.XXXXXX)
started=$(date +%s)
elapsed() { echo "$(( $(date +%s) - started )) s"; }

local_pid=
cleanup() {
    if [ -n "$local_pid" ] && kill -0 "$local_pid" 2>/dev/null; then kill "$local_pid"; wait "$local_pid" || true; fi
    bash "$REPO/tests/slurm/stop_cluster.sh"
}
trap cleanup EXIT   # also when start_cluster.sh fails half-way
bash "$REPO/tests/slurm/start_cluster.sh"
echo "cluster ready after $(elapsed)"

copy() { "$PYTHON" -c "import sys; sys.path.insert(0, '$REPO/tests'); from workflow import copy_workflow; from pathlib import Path; copy_workflow(Path('$1'))"; }
copy "$WORK/slurm"
copy "$WORK/local"
cp -r "$REPO/tests/slurm/profile" "$WORK/slurm/slurm_test_profile"

# The production profile itself (GPUs, 8-16 GB per job) cannot run on a 2-core node without GPUs; its dry runs
# (here and after the SLURM run) parse it and evaluate every rule's resources (check_slurm_run.py compares them).
(cd "$WORK/slurm" && "$SNAKEMAKE" -n --profile profiles/slurm --configfile config/tiny.yaml > dry_run.log 2>&1) || {
    tail -30 "$WORK/slurm/dry_run.log"; echo "profiles/slurm does not load: $WORK/slurm/dry_run.log" >&2; exit 1; }

# The same config twice: through the scheduler, and locally with profiles/local. The local reference runs
# alongside: the SLURM run spends most of its time waiting on submissions and status polls.
(cd "$WORK/local" && exec "$SNAKEMAKE" --profile profiles/local --cores 2 --configfile config/tiny.yaml > run.log 2>&1) &
local_pid=$!
(cd "$WORK/slurm" && "$SNAKEMAKE" --profile slurm_test_profile --configfile config/tiny.yaml > run.log 2>&1) || {
    tail -50 "$WORK/slurm/run.log"; echo "the SLURM run failed; its log: $WORK/slurm/run.log" >&2; exit 1; }
echo "SLURM run done after $(elapsed)"
# Jobs after the checkpoint only show in a dry run once it has run: the production profile's resources for them.
(cd "$WORK/slurm" && "$SNAKEMAKE" -n --forcerun preprocess_case --profile profiles/slurm --configfile config/tiny.yaml \
    > dry_run_after.log 2>&1) || {
    tail -30 "$WORK/slurm/dry_run_after.log"; echo "profiles/slurm does not load: $WORK/slurm/dry_run_after.log" >&2; exit 1; }
# A failed job in a group job: the group's finished jobs are kept and the rerun redoes only the rest.
(cd "$WORK/slurm" && "$PYTHON" "$REPO/tests/slurm/group_retry.py" "$WORK/slurm" "$SNAKEMAKE") || {
    echo "the group retry check failed; its logs: $WORK/slurm/retry_*.log" >&2; exit 1; }
echo "group retry checked after $(elapsed)"
wait "$local_pid" || {
    tail -50 "$WORK/local/run.log"; echo "the local run failed; its log: $WORK/local/run.log" >&2; exit 1; }
echo "local run done after $(elapsed)"

"$PYTHON" "$REPO/tests/slurm/check_slurm_run.py" "$WORK/slurm" "$WORK/local"
echo "SLURM end-to-end test passed in $(elapsed)"
if [ "${SEGFLOW_KEEP:-0}" = 1 ]; then echo "work folder: $WORK"; else rm -rf "$WORK"; fi
