"""The lever ablation of docs/quality.md: one pipeline run per row, one lever changed per row.

Run by hand, never in tests or CI. Rows are config files in benchmarks/ablation/ (each with a leading comment
saying which lever it changes against which row). Rows that share the preprocessing config run in one results
folder, one after the other, so only training and what follows reruns between them (Snakemake decides), and each
row's figures are copied to <workdir>/rows/<row>/ when it finishes:

  python benchmarks/ablation.py run --data /work/bench/kits48/data --workdir /work/bench/ablation \\
      --cases 24 r0_seed s1_stable ...
  python benchmarks/ablation.py table --workdir /work/bench/ablation

Layering (later files win, key by key): config/config.yaml (the Snakefile loads it), then the --base files
(default benchmarks/ablation/budget.yaml, the shared CPU budget of the s rows), the row's file, then the data and
results folder. The c rows measure levers on top of the CPU preset itself:

  python benchmarks/ablation.py run --data /work/bench/kits48/data --workdir /work/bench/ablation --cases 24 \
      --base config/kits23.yaml config/kits23-cpu.yaml benchmarks/ablation/cpu_base.yaml -- c1_crops ...
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ROWS = REPO / "benchmarks" / "ablation"
REGIONS = ("kidney_and_masses", "masses", "tumor")
KEPT = ["train/best.json", "train/rounds.tsv", "scores/scores.tsv", "scores/summary.tsv", "selection/cases.tsv"]


def layered(row: str, base: list[str] | None = None) -> list[Path]:
    base_files = [Path(b).resolve() for b in base] if base else [ROWS / "budget.yaml"]
    return [REPO / "config/config.yaml", *base_files, ROWS / f"{row}.yaml"]


def preprocess_key(files: list[Path]) -> str:
    """Rows with the same preprocessing (and data) share a results folder."""
    merged: dict = {}
    for f in files:
        merged.update((yaml.safe_load(f.read_text()) or {}).get("preprocess", {}))
    return hashlib.sha256(json.dumps(merged, sort_keys=True).encode()).hexdigest()[:8]


def run_row(row: str, args) -> None:
    files = layered(row, args.base)
    work = Path(args.workdir).resolve() / f"pre_{preprocess_key(files)}"
    work.mkdir(parents=True, exist_ok=True)
    dataset = {"source": "local", "path": str(Path(args.data).resolve()), "cases": args.cases}
    (work / "run.yaml").write_text(yaml.safe_dump({"results_dir": str(work / "results"), "dataset": dataset}))
    command = [
        str(Path(sys.executable).with_name("snakemake")),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--cores",
        str(args.cores),
        "--configfile",
        *map(str, files),
        str(work / "run.yaml"),
        # A row stopped part-way (a killed training) picks up where it stopped: train_round resumes from its last
        # saved epoch, so the incomplete outputs Snakemake would otherwise refuse to touch are simply redone.
        "--rerun-incomplete",
    ]
    if args.rerun_triggers:
        command += ["--rerun-triggers", *args.rerun_triggers]
    started = time.time()
    with open(work / f"{row}.log", "w") as log:
        code = subprocess.run(command, cwd=work, stdout=log, stderr=subprocess.STDOUT).returncode
    if code:
        raise SystemExit(f"row {row} failed ({code}); see {work / f'{row}.log'}")
    out = Path(args.workdir).resolve() / "rows" / row
    shutil.rmtree(out, ignore_errors=True)
    results = work / "results"
    for name in KEPT:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(results / name, out / name)
    # Only this row's rounds: a shared results folder keeps the round folders of an earlier row with more rounds.
    rounds = [f"round_{r}" for r in _rounds(results / "train/rounds.tsv")]
    for name in rounds:
        (out / "curves").mkdir(parents=True, exist_ok=True)
        shutil.copy2(results / "train" / name / "metrics.csv", out / "curves" / f"{name}.csv")
    train_s = sum(_benchmark_seconds(results / "benchmarks/train_round" / f"{name}.tsv") for name in rounds)
    predict_s = sum(_benchmark_seconds(t) for t in (results / "benchmarks/predict_case").glob("*.tsv"))
    record = {
        "row": row,
        "wall_s": round(time.time() - started, 1),
        "train_s": round(train_s, 1),
        "predict_s": round(predict_s, 1),
        "files": [str(f) for f in files],
        "commit": _commit(),
    }
    (out / "run.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record), flush=True)


def _rounds(rounds_tsv: Path) -> list[int]:
    """The round numbers select_model compared (the first column of train/rounds.tsv)."""
    return [int(line.split("\t")[0]) for line in rounds_tsv.read_text().splitlines()[1:] if line.strip()]


def _benchmark_seconds(tsv: Path) -> float:
    lines = tsv.read_text().splitlines()
    return float(lines[1].split("\t")[0]) if len(lines) > 1 else 0.0


def _commit() -> str:
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return head.stdout.strip()


def table(workdir: Path) -> str:
    import pandas as pd

    header = [
        "row",
        "lever",
        "n test",
        *(f"Dice {r}" for r in REGIONS),
        *(f"SD {r}" for r in REGIONS),
        "val Dice jump",
        "train min",
        "predict min",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for record_file in sorted((workdir / "rows").glob("*/run.json")):
        record = json.loads(record_file.read_text())
        scores = pd.read_csv(record_file.parent / "scores/scores.tsv", sep="\t")
        means = [scores[f"{m}_{r}"].mean() for m in ("dice", "sd") for r in REGIONS]
        lever = (ROWS / f"{record['row']}.yaml").read_text().splitlines()[0].lstrip("# ")
        cells = [
            record["row"],
            lever,
            str(len(scores)),
            *(f"{v:.3f}" for v in means),
            f"{_jump(record_file.parent):.3f}",
            f"{record['train_s'] / 60:.1f}",
            f"{record['predict_s'] / 60:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _jump(row_dir: Path) -> float:
    """Mean absolute change of the validation Dice from one epoch to the next, over all rounds (0 = smooth)."""
    import pandas as pd

    steps = []
    for curve in sorted((row_dir / "curves").glob("*.csv")):
        steps += list(pd.read_csv(curve)["val_dice"].dropna().diff().abs().dropna())  # validated epochs only
    return sum(steps) / max(len(steps), 1)


def plot_curves(workdir: Path, rows: list[str], output: Path) -> None:
    """Validation Dice per epoch of every round, one panel per row: the before/after of docs/quality.md."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.2), sharey=True, squeeze=False)
    for ax, row in zip(axes[0], rows):
        for curve in sorted((workdir / "rows" / row / "curves").glob("*.csv")):
            metrics = pd.read_csv(curve)
            epochs = metrics["epoch"] + 1
            ax.plot(epochs, metrics["val_dice"], marker="o", label=f"{curve.stem}: foreground")
            if "val_dice_tumor" in metrics:
                ax.plot(epochs, metrics["val_dice_tumor"], linestyle="--", label=f"{curve.stem}: tumour")
        ax.set(title=row, xlabel="epoch", ylim=(0, 1))
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("validation Dice")
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=80)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--data", required=True)
    run.add_argument("--workdir", required=True)
    run.add_argument("--cases", type=int, default=48, help="the first N cases of the benchmark")
    run.add_argument("--cores", type=int, default=2)
    run.add_argument("--base", nargs="+", help="config files under the row (default: ablation/budget.yaml)")
    run.add_argument(
        "--rerun-triggers",
        nargs="+",
        help="passed to snakemake; e.g. 'params input', so that a rule's code or software-env change alone does not "
        "redo the shared downloads and preprocessing. Inputs newer than outputs rerun a job whatever the triggers "
        "(Snakemake 9): for a checkout copied elsewhere, set its file times back (touch -d) before its first run",
    )
    run.add_argument("rows", nargs="+")
    show = sub.add_parser("table")
    show.add_argument("--workdir", required=True)
    curves = sub.add_parser("curves", help="plot the validation curves of some rows side by side")
    curves.add_argument("--workdir", required=True)
    curves.add_argument("--output", required=True)
    curves.add_argument("rows", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "run":
        for row in args.rows:
            run_row(row, args)
    elif args.command == "curves":
        plot_curves(Path(args.workdir), args.rows, Path(args.output))
    else:
        print(table(Path(args.workdir)))


if __name__ == "__main__":
    main()
