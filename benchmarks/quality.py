"""The segmentation-quality benchmark (issue 11): phantom CT around real KiTS23 label maps, runs, and a table.

Run by hand, never in tests or CI (a run trains for tens of minutes). Subcommands:

  make-data  write N phantom cases in KiTS local layout (<out>/case_XXXXX/imaging.nii.gz + segmentation.nii.gz),
             made by segflow.sources.phantom around the real label maps of a kits23 clone or bare git mirror
  run        run the pipeline (this repository's Snakefile) on that data with the given config files, and record
             the training wall time (sum of results/benchmarks/train_round/*.tsv) and the whole run's
  preview    write PNGs of a few axial slices per case (soft-tissue and wide windows, label contours)
  table      print a markdown table with one row per run: HEC Dice and surface Dice (mean over test cases) for
             kidney_and_masses / masses / tumor, training and total minutes
  errors     where each true label's voxels went in a finished results folder's test predictions (a confusion
             table over all test cases), and per case each tumour's share found as tumour, kidney or background
             and the predicted tumour components that touch no true mass (false positives)
  postprocess  the test predictions of a finished results folder with post-processing steps applied on top, scored
             as the pipeline scores them: a step's effect on one training's test cases without predicting again
  unprocessed  predict test cases of a finished results folder again with its model, TTA and decoding but no
             post-processing (to --out), given the config files the run was made with
  masses     each predicted mass (tumour/cyst) component of each case, in one or more prediction folders: its
             voxels, how many of them it calls tumour and cyst, and what the reference calls them

  python benchmarks/quality.py make-data --git-dir /work/.mirror/neheller+kits23/repo \\
      --labels /work/bench/kits23_labels --cases 48 --out /work/bench/kits48/data
  nice -n 5 python benchmarks/quality.py run --data /work/bench/kits48/data --name baseline-kits23 \\
      --configfile budget.yaml --workdir /work/bench/kits48/runs
  python benchmarks/quality.py table --workdir /work/bench/kits48/runs
  python benchmarks/quality.py errors --results /work/bench/ablation/pre_97a6269b/results
  python benchmarks/quality.py postprocess --results /work/bench/ablation48/pre_64aff79f/results \\
      --variant largest_mass_per_kidney largest_mass
  python benchmarks/quality.py unprocessed --results /work/bench/ablation48/pre_a77d58c0/results \\
      --configfile config/kits23.yaml config/kits23-cpu.yaml benchmarks/ablation/cpu_base.yaml \\
      benchmarks/ablation/c71_weight_decay_repeat1.yaml --cases case_00006 case_00007 --out /tmp/unprocessed
  python benchmarks/quality.py masses --results /work/bench/ablation48/pre_a77d58c0/results \\
      --predictions /tmp/unprocessed /work/bench/ablation48/pre_a77d58c0/results/predictions

Config layering of `run` (later files win, key by key): config/kits23.yaml (the preset under test), then
benchmarks/quality.yaml (selection that keeps every case, seed), then the --configfile files given (the
configuration being measured), then a generated run.yaml (dataset: local on --data; results_dir).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow_scripts"))

DEFAULT_CASES = 48  # case_00000 .. case_00047
REGIONS = ("kidney_and_masses", "masses", "tumor")


# --- make-data ----------------------------------------------------------------------------------------------------


def extract_labels(git_dir: Path, dest: Path, case_ids: list[str]) -> None:
    """Copy dataset/<case>/segmentation.nii.gz out of a (bare) kits23 git repository into dest/<case>/."""
    for case in case_ids:
        target = dest / case / "segmentation.nii.gz"
        if target.is_file() and target.stat().st_size > 0:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        blob = subprocess.run(
            ["git", f"--git-dir={git_dir}", "show", f"HEAD:dataset/{case}/segmentation.nii.gz"],
            capture_output=True,
            check=False,
        )
        if blob.returncode != 0:
            raise SystemExit(f"{git_dir}: no dataset/{case}/segmentation.nii.gz ({blob.stderr.decode().strip()})")
        tmp = target.with_name(".segmentation.nii.gz.part")
        tmp.write_bytes(blob.stdout)
        os.replace(tmp, target)


def _make_one(job) -> dict:
    label, out, seed, case = job
    from segflow.sources.phantom import make_case

    started = time.perf_counter()
    params = make_case(label, out / case / "imaging.nii.gz", out / case / "segmentation.nii.gz", seed, case)
    return {"case_id": case, "seconds": round(time.perf_counter() - started, 2), **params}


def describe_case(case_dir: Path) -> dict:
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    seg = nib.load(str(case_dir / "segmentation.nii.gz"))
    labels = np.asanyarray(seg.dataobj)
    zooms = [float(z) for z in seg.header.get_zooms()[:3]]
    from segflow.inspection import slice_axis

    axis = slice_axis(seg.affine)
    in_plane = [zooms[a] for a in range(3) if a != axis]
    counts = {}
    for value, name in ((2, "tumours"), (3, "cysts")):
        counts[name] = int(ndimage.label(labels == value)[1]) if (labels == value).any() else 0
    return {
        "case_id": case_dir.name,
        "shape": list(labels.shape),
        "matrix": "x".join(str(labels.shape[a]) for a in range(3) if a != axis),
        "slices": int(labels.shape[axis]),
        "slice_mm": zooms[axis],
        "in_plane_mm": float(np.mean(in_plane)),
        **counts,
    }


def cmd_make_data(args) -> None:
    import nibabel as nib

    from segflow.sources.phantom import case_parameters, find_labels

    out = Path(args.out)
    labels_dir = Path(args.labels)
    ids = [f"case_{i:05d}" for i in range(args.cases)] if not args.case_ids else args.case_ids
    if args.git_dir:
        extract_labels(Path(args.git_dir), labels_dir, ids)
    found = find_labels({"source": "phantom", "phantom": {"label_dir": str(labels_dir)}})
    missing = [c for c in ids if c not in found]
    if missing:
        raise SystemExit(f"{labels_dir}: no label map for {', '.join(missing[:5])}; give --git-dir to extract them")
    todo = [c for c in ids if args.force or not (out / c / "imaging.nii.gz").is_file()]
    jobs = [(found[c], out, args.seed, c) for c in todo]
    made = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for record in pool.map(_make_one, jobs):
            made.append(record)
            print(f"{record['case_id']}: {record['seconds']:.1f} s ({record['tumour_kind']} tumour)", flush=True)
    seconds = {r["case_id"]: r["seconds"] for r in made}
    params = {}
    for case in ids:  # the drawn per-case values (cheap to redraw for cases made by an earlier call)
        affine = nib.load(str(found[case])).affine
        params[case] = {**case_parameters(affine, args.seed, case), "seconds": seconds.get(case)}
    (out / "phantom_params.json").write_text(json.dumps(params, indent=1, sort_keys=True, default=_json_default) + "\n")
    geometry = [describe_case(out / c) for c in ids]
    (out / "geometry.json").write_text(json.dumps(geometry, indent=1) + "\n")
    print(geometry_table(geometry))


def geometry_table(rows: list[dict]) -> str:
    import numpy as np

    def rng_of(key):
        values = [r[key] for r in rows]
        return f"{min(values):g}–{max(values):g}"

    matrices = sorted({r["matrix"] for r in rows})
    slice_mm = sorted({r["slice_mm"] for r in rows})
    lines = [
        "| property | value |",
        "|---|---|",
        f"| cases | {len(rows)} |",
        f"| in-plane matrix | {', '.join(matrices)} |",
        f"| in-plane spacing (mm) | {rng_of('in_plane_mm')} |",
        f"| slice spacing (mm) | {', '.join(f'{v:g}' for v in slice_mm)} |",
        f"| slices | {rng_of('slices')} (median {int(np.median([r['slices'] for r in rows]))}) |",
        f"| tumours (components) | {sum(r['tumours'] for r in rows)} in {sum(r['tumours'] > 0 for r in rows)} cases |",
        f"| cysts (components) | {sum(r['cysts'] for r in rows)} in {sum(r['cysts'] > 0 for r in rows)} cases |",
    ]
    return "\n".join(lines)


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value).__name__)


# --- preview ------------------------------------------------------------------------------------------------------


def cmd_preview(args) -> None:
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cases = args.case_ids or sorted(p.name for p in data.iterdir() if (p / "segmentation.nii.gz").is_file())
    for case in cases:
        preview_case(data / case, out / f"{case}.png")
        print(out / f"{case}.png")


def preview_case(case_dir: Path, png: Path) -> None:
    """Axial slices at 20 %, the tumour's middle and 80 % of the kidneys' extent and 40 slices above, in
    radiological display (patient right on the left, anterior up); below, the kidney region enlarged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib
    import numpy as np
    from nibabel import orientations

    image, seg = nib.load(str(case_dir / "imaging.nii.gz")), nib.load(str(case_dir / "segmentation.nii.gz"))
    ornt = orientations.io_orientation(image.affine)
    hu = orientations.apply_orientation(np.asanyarray(image.dataobj), ornt)
    lab = orientations.apply_orientation(np.asanyarray(seg.dataobj), ornt)
    zs = np.nonzero((lab > 0).any(axis=(0, 1)))[0]
    tumour = np.nonzero((lab == 2).any(axis=(0, 1)))[0]
    middle = tumour[len(tumour) // 2] if len(tumour) else zs[len(zs) // 2]
    picks = [zs[len(zs) // 5], middle, zs[4 * len(zs) // 5], min(hu.shape[2] - 1, zs[-1] + 40)]
    idx = np.nonzero(lab > 0)
    x0, x1 = max(idx[0].min() - 30, 0), idx[0].max() + 30
    y0, y1 = max(idx[1].min() - 30, 0), idx[1].max() + 30
    fig, axes = plt.subplots(3, 4, figsize=(20, 15))
    for i, z in enumerate(picks):
        view = hu[:, :, z].T[::-1, ::-1]
        labels = lab[:, :, z].T[::-1, ::-1]
        axes[0, i].imshow(view, cmap="gray", vmin=-160, vmax=240)
        axes[0, i].set_title(f"slice {z} of {hu.shape[2]}, W400 L40")
        axes[1, i].imshow(view, cmap="gray", vmin=-1000, vmax=1000)
        axes[1, i].contour(labels, levels=[0.5, 1.5, 2.5], colors=["lime", "red", "cyan"], linewidths=0.6)
        axes[1, i].set_title("W2000 L0, labels: kidney green, tumour red, cyst cyan")
        crop = hu[x0:x1, y0:y1, z].T[::-1, ::-1]
        axes[2, i].imshow(crop, cmap="gray", vmin=-160, vmax=240)
        axes[2, i].contour(
            lab[x0:x1, y0:y1, z].T[::-1, ::-1], levels=[0.5, 1.5, 2.5], colors=["lime", "red", "cyan"], linewidths=0.5
        )
    for ax in axes.ravel():
        ax.axis("off")
    zooms = "x".join(f"{v:g}" for v in image.header.get_zooms()[:3])
    fig.suptitle(f"{case_dir.name}: {'x'.join(map(str, image.shape))} voxels, {zooms} mm")
    fig.tight_layout()
    fig.savefig(png, dpi=55)
    plt.close(fig)


# --- run ----------------------------------------------------------------------------------------------------------


def cmd_run(args) -> None:
    import yaml

    run_dir = Path(args.workdir).resolve() / args.name
    run_dir.mkdir(parents=True, exist_ok=True)
    results = run_dir / "results"
    run_yaml = run_dir / "run.yaml"
    run_yaml.write_text(
        yaml.safe_dump(
            {
                "results_dir": str(results),
                "dataset": {"source": "local", "path": str(Path(args.data).resolve()), "cases": "all"},
            },
            sort_keys=False,
        )
    )
    configfiles = [REPO / "config" / "kits23.yaml", REPO / "benchmarks" / "quality.yaml"]
    configfiles += [Path(c).resolve() for c in args.configfile] + [run_yaml]
    snakemake = Path(sys.executable).with_name("snakemake")
    command = [
        str(snakemake if snakemake.exists() else "snakemake"),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--cores",
        str(args.cores),
        "--configfile",
        *map(str, configfiles),
        *args.extra,
    ]
    print(" ".join(command), flush=True)
    started = time.time()
    with open(run_dir / "snakemake.log", "w") as log:
        code = subprocess.run(command, cwd=run_dir, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.time() - started
    record = {
        "name": args.name,
        "configfiles": [str(c) for c in configfiles],
        "command": command,
        "returncode": code,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "total_s": round(wall, 1),
        "train_s": round(train_seconds(results), 1),
        "commit": _git_commit(),
    }
    (run_dir / "run.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
    if code != 0:
        raise SystemExit(f"snakemake failed ({code}); see {run_dir / 'snakemake.log'}")


def train_seconds(results: Path) -> float:
    import pandas as pd

    total = 0.0
    for tsv in sorted((results / "benchmarks" / "train_round").glob("*.tsv")):
        total += float(pd.read_csv(tsv, sep="\t")["s"].sum())
    return total


def _git_commit() -> str:
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    ).stdout.strip()
    return done.stdout.strip() + ("+dirty" if dirty else "")


# --- table --------------------------------------------------------------------------------------------------------


def cmd_table(args) -> None:
    print(results_table(Path(args.workdir)))


def results_table(workdir: Path) -> str:
    import pandas as pd

    header = [
        "run",
        "test cases",
        *(f"Dice {r}" for r in REGIONS),
        *(f"SD {r}" for r in REGIONS),
        "train min",
        "total min",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for record_file in sorted(workdir.glob("*/run.json"), key=lambda p: p.stat().st_mtime):
        record = json.loads(record_file.read_text())
        scores = record_file.parent / "results" / "scores" / "scores.tsv"
        if scores.is_file():
            table = pd.read_csv(scores, sep="\t")
            means = [table[f"{m}_{r}"].mean() for m in ("dice", "sd") for r in REGIONS]
            cells = [str(len(table)), *(f"{v:.3f}" for v in means)]
        else:
            cells = ["failed" if record.get("returncode") else "-", *["-"] * 6]
        cells += [f"{record['train_s'] / 60:.1f}", f"{record['total_s'] / 60:.1f}"]
        lines.append("| " + " | ".join([record["name"], *cells]) + " |")
    return "\n".join(lines)


# --- errors -------------------------------------------------------------------------------------------------------

LABEL_NAMES = ("background", "kidney", "tumour", "cyst")


def confusion(truth, prediction, n_labels: int = 4):
    """Voxel counts: row = true label, column = predicted label."""
    import numpy as np

    pairs = truth.astype(np.int64) * n_labels + prediction.astype(np.int64)
    return np.bincount(pairs.ravel(), minlength=n_labels * n_labels).reshape(n_labels, n_labels)


def tumour_findings(truth, prediction) -> dict:
    """Each true tumour component (6-connectivity, as the KiTS scoring labels them): its voxels and the share of
    them predicted as tumour, kidney or background; and how many predicted tumour components touch no true mass.
    Counted with one bincount per labelling, as segflow.postprocess does: no pass over the volume per component."""
    import numpy as np
    from scipy import ndimage

    components, n = ndimage.label(truth == 2)
    counts = confusion(components, prediction, n_labels=max(n + 1, 4))[1 : n + 1, :4]
    tumours = [
        {
            "voxels": int(row.sum()),
            **{name: round(float(row[label] / row.sum()), 3) for label, name in enumerate(LABEL_NAMES[:3])},
        }
        for row in counts
    ]
    found, n_found = ndimage.label(prediction == 2)
    touching = np.count_nonzero(np.unique(found[truth >= 2]))
    return {"tumours": tumours, "predicted_components": n_found, "false_components": n_found - touching}


def cmd_errors(args) -> None:
    import nibabel as nib
    import numpy as np

    results = Path(args.results)
    total = np.zeros((4, 4), dtype=np.int64)
    for path in sorted((results / "predictions").glob("*.nii.gz")):
        case = path.name[: -len(".nii.gz")]
        prediction = np.asarray(nib.load(path).dataobj, dtype=np.uint8)
        truth = np.asarray(nib.load(results / "raw" / case / "segmentation.nii.gz").dataobj, dtype=np.uint8)
        total += confusion(truth, prediction)
        findings = tumour_findings(truth, prediction)
        tumours = ", ".join(
            f"{t['voxels']} vox: {t['tumour']:.2f} tumour / {t['kidney']:.2f} kidney / {t['background']:.2f} bg"
            for t in findings["tumours"]
        )
        print(
            f"{case}: {tumours}; predicted tumour components {findings['predicted_components']}, "
            f"{findings['false_components']} touching no true mass"
        )
    shares = total / np.maximum(total.sum(axis=1, keepdims=True), 1)
    print("\n| true \\ predicted | " + " | ".join(LABEL_NAMES) + " |\n|" + "---|" * 5)
    for label, row in zip(LABEL_NAMES, shares):
        print(f"| {label} | " + " | ".join(f"{v:.3f}" for v in row) + " |")


def cmd_postprocess(args) -> None:
    """Each variant's post-processing applied on top of the stored test predictions, scored as score_case scores:
    a step's effect on the test cases of one training, without predicting again."""
    import nibabel as nib
    import numpy as np
    from snakemake.utils import validate

    from segflow.postprocess import apply
    from segflow.score import score_arrays

    results = Path(args.results)
    predictions = Path(args.predictions) if args.predictions else results / "predictions"
    variants = {"as predicted": []} | {"+ " + " + ".join(steps): steps for steps in map(str.split, args.variant)}
    config: dict = {}
    validate(config, str(REPO / "config" / "schema.yaml"))  # the schema's defaults, as score_case gets them
    means: dict[str, list] = {name: [] for name in variants}
    tumour: dict[str, list] = {name: [] for name in variants}
    cases = []
    for path in sorted(predictions.glob("*.nii.gz")):
        case = path.name[: -len(".nii.gz")]
        cases.append(case)
        prediction = np.asarray(nib.load(path).dataobj, dtype=np.uint8)
        reference = nib.load(results / "raw" / case / "segmentation.nii.gz")
        truth = np.asarray(reference.dataobj, dtype=np.uint8)
        spacing = tuple(float(z) for z in reference.header.get_zooms()[:3])
        for name, steps in variants.items():
            scores = score_arrays(apply(prediction, steps), truth, spacing, config["score"])
            means[name].append([scores[f"{m}_{r}"] for m in ("dice", "sd") for r in REGIONS])
            tumour[name].append(scores["dice_tumor"])
    heads = [f"{m} {r}" for m in ("Dice", "SD") for r in REGIONS]
    print("| post-processing | " + " | ".join(heads) + " |\n|" + "---|" * (len(heads) + 1))
    for name in variants:
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in np.nanmean(means[name], axis=0)) + " |")
    print(
        "\n| tumour Dice | " + " | ".join(c.removeprefix("case_") for c in cases) + " |\n|" + "---|" * (len(cases) + 1)
    )
    for name in variants:
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in tumour[name]) + " |")


def cmd_unprocessed(args) -> None:
    """The results folder's kept model over some test cases, as predict_case runs it, minus post-processing."""
    from decodings import load_config  # benchmarks/decodings.py: the config files merged as Snakemake merges them

    from segflow.predict import predict_case

    results = Path(args.results)
    config = load_config(args.configfile)
    summary = json.loads((results / "train" / "best.json").read_text())
    regions = config["score"]["regions"] if config["infer"]["decode"] == "regions" else None
    cases = args.cases or sorted(p.name[: -len(".nii.gz")] for p in (results / "predictions").glob("*.nii.gz"))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for case in cases:
        predict_case(
            results / "train" / "best.pt",
            results / "preprocessed" / case,
            results / "raw" / case / "imaging.nii.gz",
            Path(args.out) / f"{case}.nii.gz",
            config["infer"],
            [],
            args.threads,
            regions,
            summary.get("region_thresholds") or {},
            summary.get("mass_seed"),
        )
        print(f"{case}: {Path(args.out) / f'{case}.nii.gz'}", flush=True)


def mass_components(truth, prediction) -> list[dict]:
    """Each 26-connected predicted mass (labels 2 and 3, as segflow.postprocess groups them), largest first: its
    voxels, how many it calls tumour and cyst, and the reference's labels under it (background, kidney, tumour,
    cyst)."""
    import numpy as np
    from scipy import ndimage

    components, n = ndimage.label(prediction >= 2, structure=np.ones((3, 3, 3)))
    under = confusion(components, truth, n_labels=max(n + 1, 4))[1 : n + 1, :4]
    called = confusion(components, prediction, n_labels=max(n + 1, 4))[1 : n + 1, :4]
    rows = [
        {"voxels": int(u.sum()), "tumour": int(c[2]), "cyst": int(c[3]), "truth": [int(v) for v in u]}
        for u, c in zip(under, called)
    ]
    return sorted(rows, key=lambda row: -row["voxels"])


def cmd_masses(args) -> None:
    import nibabel as nib
    import numpy as np

    results = Path(args.results)
    for folder in map(Path, args.predictions):
        print(f"# {folder}")
        for path in sorted(folder.glob("*.nii.gz")):
            case = path.name[: -len(".nii.gz")]
            prediction = np.asarray(nib.load(path).dataobj, dtype=np.uint8)
            truth = np.asarray(nib.load(results / "raw" / case / "segmentation.nii.gz").dataobj, dtype=np.uint8)
            masses = mass_components(truth, prediction)
            print(
                f"{case}: {len(masses)} predicted masses (voxels: tumour + cyst; reference bg / kidney / tumour / cyst)"
            )
            for mass in masses[: args.top]:
                print(f"  {mass['voxels']}: {mass['tumour']} + {mass['cyst']}; " + " / ".join(map(str, mass["truth"])))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make-data", help="write phantom cases around real KiTS23 label maps")
    make.add_argument("--labels", required=True, help="folder of <case>/segmentation.nii.gz (a kits23 clone works)")
    make.add_argument("--git-dir", help="a kits23 git repository (bare works) to extract the label maps from")
    make.add_argument("--cases", type=int, default=DEFAULT_CASES, help="case_00000 .. case_{N-1} (default 48)")
    make.add_argument("--case-ids", nargs="+", help="explicit case ids instead of --cases")
    make.add_argument("--out", required=True)
    make.add_argument("--seed", type=int, default=42)
    make.add_argument("--jobs", type=int, default=1)
    make.add_argument("--force", action="store_true", help="remake cases whose image exists")
    make.set_defaults(func=cmd_make_data)
    run = sub.add_parser("run", help="run the pipeline on the benchmark data")
    run.add_argument("--data", required=True)
    run.add_argument("--name", required=True)
    run.add_argument("--configfile", nargs="*", default=[])
    run.add_argument("--workdir", required=True)
    run.add_argument("--cores", type=int, default=2)
    run.add_argument("extra", nargs="*", help="further snakemake arguments, after --")
    run.set_defaults(func=cmd_run)
    preview = sub.add_parser("preview", help="PNGs of a few axial slices per case")
    preview.add_argument("--data", required=True)
    preview.add_argument("--out", required=True)
    preview.add_argument("--case-ids", nargs="+")
    preview.set_defaults(func=cmd_preview)
    errors = sub.add_parser("errors", help="where the true labels' voxels went in a results folder's predictions")
    errors.add_argument("--results", required=True, help="a finished results folder (predictions/ and raw/)")
    errors.set_defaults(func=cmd_errors)
    post = sub.add_parser("postprocess", help="post-processing steps on top of a results folder's test predictions")
    post.add_argument("--results", required=True, help="a finished results folder (predictions/ and raw/)")
    post.add_argument("--predictions", help="another folder of the same test predictions (e.g. a saved copy)")
    post.add_argument("--variant", nargs="+", default=[], help="a quoted, space-separated list of steps per variant")
    post.set_defaults(func=cmd_postprocess)
    unprocessed = sub.add_parser("unprocessed", help="predict test cases again without post-processing")
    unprocessed.add_argument("--results", required=True, help="a finished results folder (train/best.pt, ...)")
    unprocessed.add_argument("--configfile", nargs="+", required=True, help="the config files of that run, in order")
    unprocessed.add_argument("--cases", nargs="*", help="case ids (default: every case in predictions/)")
    unprocessed.add_argument("--out", required=True)
    unprocessed.add_argument("--threads", type=int, default=2)
    unprocessed.set_defaults(func=cmd_unprocessed)
    masses = sub.add_parser("masses", help="each predicted mass component and what the reference calls it")
    masses.add_argument("--results", required=True, help="the results folder whose raw/ holds the references")
    masses.add_argument("--predictions", nargs="+", required=True, help="folders of <case>.nii.gz label maps")
    masses.add_argument("--top", type=int, default=8, help="at most this many components per case, largest first")
    masses.set_defaults(func=cmd_masses)
    table = sub.add_parser("table", help="markdown table of every run under --workdir")
    table.add_argument("--workdir", required=True)
    table.set_defaults(func=cmd_table)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
