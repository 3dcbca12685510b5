#!/usr/bin/env bash
# The tiny pipeline through a real single-node SLURM scheduler, compared with a local run of the same config.
# Usage: bash tests/slurm/run_slurm_test.sh   (make test-slurm). Needs root (it installs and starts SLURM).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
SNAKEMAKE=$(dirname "$PYTHON")/snakemake
WORK=$(mktemp -d /tmp/segflow-slurm-test.XXXXXX)
started=$(date +%s)

bash "$REPO/tests/slurm/start_cluster.sh"
trap 'bash "$REPO/tests/slurm/stop_cluster.sh"' EXIT

copy() { "$PYTHON" -c "import sys; sys.path.insert(0, '$REPO/tests'); from workflow import copy_workflow; from pathlib import Path; copy_workflow(Path('$1'))"; }
copy "$WORK/slurm"
copy "$WORK/local"
cp -r "$REPO/tests/slurm/profile" "$WORK/slurm/slurm_test_profile"

# The same config twice: through the scheduler, and locally.
(cd "$WORK/slurm" && "$SNAKEMAKE" --profile slurm_test_profile --configfile config/tiny.yaml > run.log 2>&1) || {
    tail -50 "$WORK/slurm/run.log"; echo "the SLURM run failed; its log: $WORK/slurm/run.log" >&2; exit 1; }
(cd "$WORK/local" && "$SNAKEMAKE" --cores 2 --configfile config/tiny.yaml > run.log 2>&1)

"$PYTHON" "$REPO/tests/slurm/check_slurm_run.py" "$WORK/slurm" "$WORK/local"
echo "SLURM end-to-end test passed in $(( $(date +%s) - started )) s (work dir $WORK)"
