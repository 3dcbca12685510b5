"""Per-job start-up against work, rule by rule, on one KiTS-size case run through the real Snakemake jobs.

Run by hand (not a test):
    .venv/bin/python benchmarks/job_overhead.py [--workflow DIR] [--repeats 2] [--slices 200] [--matrix 512]

It copies the workflow (--workflow, default this repository; e.g. an older checkout for a before/after table) to
--workdir (default /tmp/segflow-job-overhead, never the repository) and runs one synthetic case of --matrix x
--matrix x --slices voxels (KiTS size: 512 x 512 x a few hundred) through the per-case rules, one `snakemake`
command per job (`--allowed-rules RULE --forcerun RULE TARGET`): download_case (here: generating the phantom),
inspect_case, preprocess_case, predict_case (with an untrained model of the configured architecture, written
first as train/best.pt, since only the time matters) and score_case. For each job it reads

    job         the job's benchmark file (s): the rule script's process, from start to exit
    work        the rule log's last line ("work done in X s", segflow.logs.run_logged): the script's main()
    start-up    job - work: starting Python, unpickling Snakemake's job object, the script's top-level imports
    snakemake   the `snakemake` command's wall time - job: starting Snakemake, parsing the workflow, the DAG.
                On SLURM every sbatch job pays this twice (the batch script's Snakemake and the job step's);
                a group job pays it once for all its cases, while start-up is paid per case.

Imports a rule does inside its work (preprocess_case and predict_case need torch and MONAI) count as work; the
last line reports what `import torch, monai` alone costs in a fresh interpreter. A workflow older than the
"work done" line gets this repository's segflow/logs.py copied in (only that file). Times are medians over
--repeats (the machine may be shared); run both trees back to back for a fair comparison.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = ["Snakefile", "rules", "workflow_scripts", "config", "envs", "report", "profiles"]
RULES = ["download_case", "inspect_case", "preprocess_case", "predict_case", "score_case"]
WORK_DONE = re.compile(r"work done in ([0-9.]+) s")


def copy_workflow(source: Path, destination: Path) -> None:
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    for part in PARTS:
        path = source / part
        if path.is_dir():
            shutil.copytree(path, destination / part, ignore=shutil.ignore_patterns("__pycache__"))
        elif path.exists():
            shutil.copy2(path, destination / part)
    logs = destination / "workflow_scripts/segflow/logs.py"
    if "work done in" not in logs.read_text():
        shutil.copy2(REPO / "workflow_scripts/segflow/logs.py", logs)


def write_config(workdir: Path, matrix: int, slices: int) -> Path:
    config = {
        "seed": 7,
        "results_dir": "results",
        "dataset": {"source": "synthetic", "n_cases": 1, "synthetic": {"matrix": matrix, "slices": [slices, slices]}},
        "preprocess": {"size": [256, 256]},  # the kits23 preset's size
    }
    path = workdir / "config/job_overhead.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def write_untrained_model(workdir: Path, config_path: Path) -> None:
    """train/best.pt in the training checkpoint's layout, with the configured architecture's initial weights."""
    code = f"""
import sys, yaml, torch
sys.path.insert(0, "workflow_scripts")
from segflow.models import build_model
cfg = yaml.safe_load(open("config/config.yaml"))["train"]
cfg.update(yaml.safe_load(open("{config_path}")).get("train", {{}}))
n_classes = 4
model = build_model(cfg, n_classes)
torch.save({{"model": model.state_dict(), "model_cfg": cfg, "n_classes": n_classes}}, "results/train/best.pt")
"""
    (workdir / "results/train").mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", code], cwd=workdir, check=True)


def run_job(workdir: Path, config_path: Path, rule: str, target: str, case: str) -> dict:
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    command = [
        snakemake,
        "--cores",
        "2",
        "--configfile",
        str(config_path),
        "--allowed-rules",
        rule,
        "--forcerun",
        rule,
        "--",
        target,
    ]
    start = time.perf_counter()
    process = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"{rule} failed:\n{process.stdout[-3000:]}\n{process.stderr[-3000:]}")
    benchmark = (workdir / "results/benchmarks" / rule / f"{case}.tsv").read_text().splitlines()
    job = float(dict(zip(benchmark[0].split("\t"), benchmark[1].split("\t")))["s"])
    work = float(WORK_DONE.findall((workdir / "results/logs" / rule / f"{case}.log").read_text())[-1])
    return {"job": job, "work": work, "start-up": job - work, "snakemake": wall - job}


def import_seconds(modules: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {modules}"], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", type=Path, default=REPO)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/segflow-job-overhead"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the medians here")
    parser.add_argument("--rules", nargs="+", default=RULES, choices=RULES, help="the rules to time (in order)")
    parser.add_argument(
        "--raw-from",
        type=Path,
        help="a results folder of an earlier run whose raw case to reuse "
        "(generating a 512^3-class phantom takes minutes), for runs without download_case",
    )
    args = parser.parse_args()

    workdir = args.workdir.resolve()
    copy_workflow(args.workflow.resolve(), workdir)
    config_path = write_config(workdir, args.matrix, args.slices)
    sys.path.insert(0, str(REPO / "workflow_scripts"))
    from segflow.sources import list_cases

    case = list_cases({"source": "synthetic", "n_cases": 1}, 7)[0]
    targets = {
        "download_case": f"results/raw/{case}/imaging.nii.gz",
        "inspect_case": f"results/inspect/{case}.json",
        "preprocess_case": f"results/preprocessed/{case}",
        "predict_case": f"results/predictions/{case}.nii.gz",
        "score_case": f"results/scores/cases/{case}.json",
    }
    if args.raw_from:
        shutil.copytree(args.raw_from / "raw", workdir / "results/raw", dirs_exist_ok=True)
    runs: dict[str, list[dict]] = {rule: [] for rule in args.rules}
    for repeat in range(args.repeats):
        for rule in args.rules:
            if rule == "predict_case" and repeat == 0:
                write_untrained_model(workdir, config_path)
            runs[rule].append(run_job(workdir, config_path, rule, targets[rule], case))
            print(f"repeat {repeat + 1}, {rule}: {runs[rule][-1]}", file=sys.stderr, flush=True)

    columns = ["job", "start-up", "work", "snakemake"]
    medians = {rule: {c: statistics.median(r[c] for r in runs[rule]) for c in columns} for rule in args.rules}
    print(f"workflow {args.workflow}, one case {args.matrix}x{args.matrix}x{args.slices}, median of {args.repeats}")
    print("| rule | job (s) | start-up (s) | work (s) | Snakemake per job (s) |")
    print("|---|---:|---:|---:|---:|")
    for rule, m in medians.items():
        print(f"| {rule} | {m['job']:.1f} | {m['start-up']:.1f} | {m['work']:.1f} | {m['snakemake']:.1f} |")
    heavy = statistics.median(import_seconds("torch, monai") for _ in range(args.repeats))
    print(f"import torch, monai in a fresh interpreter: {heavy:.1f} s")
    if args.json:
        args.json.write_text(json.dumps({"medians": medians, "import_torch_monai": heavy}, indent=1))


if __name__ == "__main__":
    main()
