#!/usr/bin/env bash
# GPU rows (by default g1_gpu, the CPU preset's recipe and budget, and g4_gpu_budget, 4x the crops) on the 48-case
# KiTS-like benchmark, side by side on one GPU machine, run by hand (docs/quality.md): it makes the benchmark's CT from the
# kits23 label maps, imports, inspects, selects and preprocesses once, then trains, predicts and scores both rows at
# once (one GPU, half the cores each), and packs each row's figures into $OUT/<row>.tar.gz.
#
#   OUT=/tmp/gpu_rows LABELS=/path/to/kits23_labels bash benchmarks/gpu_rows.sh
#
# Env: LABELS (a folder of <case>/segmentation.nii.gz, e.g. a kits23 clone's dataset/), OUT, PY (a python with
# segflow's requirements; default python3), WHEELS (a folder of wheels to install first into /tmp/site, for a
# machine without an index), CASES (48), JOBS (16), W (work folder), BUDGET (seconds for everything, 560),
# EXTRA (a config file layered last, e.g. a tiny budget for a dry run on a CPU), ROWS (folder:row file pairs,
# "g1:g1_gpu g4:g4_gpu_budget"; each row gets JOBS / number of rows cores).
set -uo pipefail
START=$(date +%s)
LABELS=$(realpath "${LABELS:?LABELS: a folder of <case>/segmentation.nii.gz}")
OUT=$(realpath -m "${OUT:?OUT: a folder for the results}")
mkdir -p "$OUT"
WHEELS=${WHEELS:+$(realpath "$WHEELS")}
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
PY=${PY:-python3}
CASES=${CASES:-48}
JOBS=${JOBS:-16}
EXTRA=${EXTRA:-}
W=${W:-/tmp/gw}
export PYTHONUNBUFFERED=1
el() { echo "[$(( $(date +%s) - START )) s] $*"; }
if [ -n "${WHEELS:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch, monai, snakemake; print(torch.__version__, monai.__version__, snakemake.__version__, torch.cuda.is_available())"
el "make-data"
$PY benchmarks/quality.py make-data --labels "$LABELS" --cases "$CASES" --out "$W/data" --jobs "$JOBS" > "$OUT/make_data.log" 2>&1 || { tail -20 "$OUT/make_data.log"; exit 1; }
el "data made"
CF="$REPO/config/config.yaml $REPO/config/kits23.yaml $REPO/config/kits23-cpu.yaml $REPO/benchmarks/ablation/cpu_base.yaml"
ROWS=${ROWS:-"g1:g1_gpu g4:g4_gpu_budget"}
FIRST=${ROWS%% *}; FIRST=${FIRST#*:}  # the row file whose config prepares the data (the rows share preprocessing)
mkdir -p "$W/prep"
printf 'results_dir: results\ndataset: {source: local, path: %s, cases: %s}\n' "$W/data" "$CASES" > "$W/prep/run.yaml"
smk() {  # row dir, row file, cores, targets... (before the options: --configfile takes every word after it)
  local dir=$1 row=$2 cores=$3; shift 3
  (cd "$dir" && $PY -m snakemake "$@" --snakefile "$REPO/Snakefile" --cores "$cores" --configfile $CF \
     "$REPO/benchmarks/ablation/$row.yaml" $EXTRA run.yaml)
}
export -f smk
export CF REPO PY EXTRA  # for smk under timeout
smk "$W/prep" "$FIRST" "$JOBS" results/selection/cases.tsv > "$OUT/prep.log" 2>&1 || { tail -30 "$OUT/prep.log"; exit 1; }
el "selected"
TARGETS=$(awk -F'\t' 'NR>1 && $2=="true"{printf "results/preprocessed/%s ", $1}' "$W/prep/results/selection/cases.tsv")
smk "$W/prep" "$FIRST" "$JOBS" $TARGETS >> "$OUT/prep.log" 2>&1 || { tail -30 "$OUT/prep.log"; exit 1; }
el "preprocessed"
for pair in $ROWS; do  # hard links: each row folder starts from the prepared results
  row=${pair%%:*}
  mkdir -p "$W/$row" && cp -al "$W/prep/results" "$W/$row/results" && cp -a "$W/prep/.snakemake" "$W/prep/run.yaml" "$W/$row/"
done
LEFT=$(( ${BUDGET:-560} - ($(date +%s) - START) ))
el "rows, $LEFT s left"
N_ROWS=$(wc -w <<< "$ROWS")
for pair in $ROWS; do
  timeout "$LEFT" bash -c 'smk "$@"' _ "$W/${pair%%:*}" "${pair#*:}" $(( JOBS / N_ROWS )) > "$OUT/${pair%%:*}.log" 2>&1 &
done
wait
el "rows done"
for pair in $ROWS; do
  row=${pair%%:*}
  (cd "$W/$row/results" && tar czf "$OUT/$row.tar.gz" --ignore-failed-read train/rounds.tsv train/best.json \
     train/round_0/metrics.csv scores/summary.tsv scores/scores.tsv benchmarks/train_round benchmarks/predict_case \
     logs/train_round logs/select_model 2>/dev/null)
  tail -3 "$OUT/$row.log"; cat "$W/$row/results/scores/summary.tsv" 2>/dev/null | head -20
  tail -4 "$W/$row/results/logs/train_round/round_0.log" 2>/dev/null
done
el "end"
