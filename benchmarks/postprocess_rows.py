"""Post-processing candidates compared on one trained model, from a single prediction pass.

A post-processing step changes nothing before the label maps, so an ablation row that differs from another only in
``train.postprocess`` (or a step's option) would retrain nothing but still predict the holdout and every test case
again: an hour a row at 512 x 512 on a CPU. This script predicts once and decides many times.

``labels`` predicts the holdout cases that the folder's select_model decided on (train/best.json's
``postprocess_cases``, on the preprocessed grid, where select_model decides) and the test cases (restored to the
raw grid, as predict_case writes them), with the folder's model, TTA and way back, and saves each decoding of each
case as a .npy label map under ``--out``: the regions (the presets' decoding) and the regions with each masses
threshold of ``--masses-thresholds`` and the regions of the softmax blurred across slices by each width of
``--z-sigmas`` (mm, infer.slice_sigma_mm). ``--window-overlap`` predicts with other sliding windows than the
checkpoint's train.window_overlap (an inference-only lever), and ``--keep-probabilities`` also saves the float16
softmax on the preprocessed grid. Cases already saved are skipped, so a stopped run resumes.

``rows`` reads a YAML file of rows (``name: {candidates: [...], options: {step: {arg: value}}, decoding: ...,
prune: bool}``), decides each row's steps on the saved holdout maps with segflow.postprocess.decide (select_model's
rule; ``prune``: train.postprocess_prune), applies them to the saved test maps and scores them with the pipeline's
scoring: one table row per ablation row and test case. A row with ``decodings: [regions, masses0.4, ...]`` lets
the holdout choose the decoding too (decide_with_decodings, select_model's rule for infer.region_thresholds), and
one with ``seeds: [null, 0.9, ...]`` lets it choose the peak probability a mass needs
(segflow.postprocess.seeded_masses on the saved masses probability; null: none), before the steps.

``labels`` also saves the probability of the masses and of the tumour region on the maps' grid (``p_masses``,
``p_tumor``, uint8 in 255ths), and ``masses`` lists every predicted mass of the saved maps with its size, its
mean and peak probability and how much of it the reference calls a mass: what could tell a false mass from a
lesion.

    python benchmarks/postprocess_rows.py labels --results /work/bench/ablation48/pre_a77d58c0/results \\
        --configfile config/config.yaml config/kits23.yaml config/kits23-cpu.yaml \\
            benchmarks/ablation/cpu_base.yaml benchmarks/ablation/c62_sample_dice_repeat1.yaml --out labels_c62
    python benchmarks/postprocess_rows.py rows --labels labels_c62 --rows benchmarks/postprocess_rows.yaml \\
        --configfile config/config.yaml config/kits23.yaml config/kits23-cpu.yaml --out rows_c62.tsv
    python benchmarks/postprocess_rows.py masses --labels labels_c62 --out masses_c62.tsv

Runs by hand, on the CPU or a GPU; never in tests or CI.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow_scripts"))
sys.path.insert(0, str(REPO / "benchmarks"))

REFERENCE = "reference"  # the folder of the saved reference label maps, beside one folder per decoding
# Folders of the saved region probabilities (uint8, 255ths; classes summed), under the maps they belong to.
PROBABILITIES = {"p_masses": (2, 3), "p_tumor": (2,)}


def decoding_names(masses_thresholds: list[float], z_sigmas: list[float] = ()) -> list[tuple[str, dict, float]]:
    """(folder name, infer.region_thresholds choice, z sigma in mm) of every decoding to save: the regions, then
    each masses threshold, then the regions of the probabilities blurred across slices by each Gaussian sigma
    (segflow.inference.smooth_across_slices, infer.slice_sigma_mm)."""
    return (
        [("regions", {}, 0.0)]
        + [(f"masses{t:g}", {"masses": float(t)}, 0.0) for t in masses_thresholds]
        + [(f"z{s:g}mm", {}, float(s)) for s in z_sigmas]
    )


def save_labels(args) -> None:
    import nibabel as nib
    import torch
    from decodings import load_config

    from segflow.cases import load_case
    from segflow.checkpoints import load_models
    from segflow.device import pick_device
    from segflow.inference import blur_case, case_probabilities, probability_labels
    from segflow.io import read_json
    from segflow.labelsets import label_tree
    from segflow.restore import restore_probabilities, restore_region_probability

    torch.set_num_threads(args.threads)
    results, out = Path(args.results), Path(args.out)
    config = load_config(args.configfile)
    infer, regions = config["infer"], config["score"]["regions"]
    if infer["decode"] != "regions" or infer["restore"] != "probabilities":
        raise SystemExit("postprocess_rows.py decodes through the regions and restores probabilities, as the presets")
    device = pick_device(infer["device"], "infer.device")
    models, checkpoint = load_models(results / "train" / "best.pt", device)
    if args.window_overlap is not None:  # an inference-only lever: the same weights, other windows
        for model in models:
            model.overlap = float(args.window_overlap)
    holdout = list(read_json(results / "train" / "best.json").get("postprocess_cases") or [])
    cases = pd.read_csv(results / "selection" / "cases.tsv", sep="\t")
    test = cases[(cases["split"] == "test") & cases["selected"]]["case_id"].tolist()
    ways = decoding_names(args.masses_thresholds, args.z_sigmas)
    folders = [REFERENCE, *PROBABILITIES, *(w for w, _, _ in ways)]
    for name in folders:
        (out / name).mkdir(parents=True, exist_ok=True)
    print(f"{len(holdout)} holdout cases {holdout}, {len(test)} test cases, decodings {[w for w, _, _ in ways]}")
    for case in holdout + test:
        if all((out / name / f"{case}.npy").exists() for name in folders):
            continue
        start = time.time()
        image, label = load_case(results / "preprocessed" / case)
        probabilities = case_probabilities(models, image, checkpoint, infer, device)
        network_s = time.time() - start
        if args.keep_probabilities:  # float16 on the preprocessed grid: later decodings without the network
            (out / "probabilities").mkdir(exist_ok=True)
            np.save(out / "probabilities" / f"{case}.npy", probabilities)
        meta = read_json(results / "preprocessed" / case / "meta.json")
        meta["n_classes"] = probabilities.shape[1]
        if case in holdout:  # select_model decides on the preprocessed grid, against its labels
            reference = np.asarray(label)
        else:
            reference = np.asarray(nib.load(str(results / "raw" / case / "segmentation.nii.gz")).dataobj)
        for name, thresholds, sigma in ways:
            tree = label_tree(infer, regions, probabilities.shape[1], thresholds)
            source = blur_case(probabilities, sigma, meta)
            if case in holdout:
                labels = probability_labels(source, tree)
            else:
                labels = restore_probabilities(source, meta, tree)
            np.save(out / name / f"{case}.npy", labels.astype(np.uint8))
        for name, classes in PROBABILITIES.items():
            if case in holdout:
                share = np.asarray(probabilities[:, list(classes)], dtype=np.float32).sum(axis=1)
                region = np.round(np.clip(share, 0, 1) * 255).astype(np.uint8)
            else:
                region = restore_region_probability(probabilities, meta, classes)
            np.save(out / name / f"{case}.npy", region)
        np.save(out / REFERENCE / f"{case}.npy", reference.astype(np.uint8))
        print(f"{case}: {len(image)} slices, network {network_s:.0f} s, all {time.time() - start:.0f} s", flush=True)
    listing = {"holdout": holdout, "test": test, "spacing": {}}
    for case in test:  # headers only: cases saved by an earlier, stopped run count too
        zooms = nib.load(str(results / "raw" / case / "segmentation.nii.gz")).header.get_zooms()[:3]
        listing["spacing"][case] = [float(z) for z in zooms]
    (out / "cases.yaml").write_text(yaml.safe_dump(listing))


def score_rows(args) -> None:
    from decodings import load_config

    from segflow.postprocess import KITS_REGIONS, apply, decide, decide_with_decodings, seeded_masses
    from segflow.score import score_arrays

    labels = Path(args.labels)
    cases = yaml.safe_load((labels / "cases.yaml").read_text())
    rows = yaml.safe_load(Path(args.rows).read_text())
    score_cfg = load_config(args.configfile)["score"]

    def load(way: str, case: str):  # a loader, as segflow.postprocess.decide accepts: one holdout map in memory
        return functools.partial(np.load, labels / way / f"{case}.npy")

    def seeded(way: str, case: str, min_peak):  # a loader of the map with seeded_masses applied (None: as saved)
        if min_peak is None:
            return load(way, case)
        return lambda: seeded_masses(load(way, case)(), load("p_masses", case)(), float(min_peak))

    references = [load(REFERENCE, c) for c in cases["holdout"]]
    table = []
    for name, row in rows.items():
        options, prune = row.get("options") or {}, bool(row.get("prune", False))
        # Each (decoding, seed) pair is one decoding of the holdout; with more than one the holdout chooses, as
        # select_model chooses between infer.region_thresholds' and infer.mass_seed's candidates.
        ways = row.get("decodings", [row.get("decoding", "regions")])
        seeds = row.get("seeds", [None])
        pairs = [(w, t) for w in ways for t in seeds]
        if len(pairs) > 1:
            if options:
                raise SystemExit(f"row {name}: options with several decodings or seeds are not supported")
            decodings = [(f"{w}/{t}", [seeded(w, c, t) for c in cases["holdout"]]) for w, t in pairs]
            index, steps, _, _ = decide_with_decodings(
                decodings, references, row["candidates"], KITS_REGIONS, prune=prune
            )
        else:
            index = 0
            predictions = [seeded(pairs[0][0], c, pairs[0][1]) for c in cases["holdout"]]
            steps, _ = decide(predictions, references, row["candidates"], KITS_REGIONS, options=options, prune=prune)
        way, seed = pairs[index]
        for case in cases["test"]:
            predicted, truth = apply(seeded(way, case, seed)(), steps, options), load(REFERENCE, case)()
            scores = score_arrays(predicted, truth, tuple(cases["spacing"][case]), score_cfg)
            decoding = way if seed is None else f"{way}, seed {seed}"
            table.append({"row": name, "decoding": decoding, "steps": "+".join(steps), "case_id": case, **scores})
        mean = pd.DataFrame([r for r in table if r["row"] == name]).filter(like="dice_").mean()
        print(
            f"{name}: {way}, seed {seed}: {'+'.join(steps) or 'none'}: "
            + ", ".join(f"{k[5:]} {v:.3f}" for k, v in mean.items())
        )
        pd.DataFrame(table).to_csv(args.out, sep="\t", index=False)
    frame = pd.DataFrame(table)
    columns = [c for c in frame.columns if c.startswith(("dice_", "sd_"))]
    print(frame.groupby(["row", "decoding", "steps"], sort=False)[columns].mean().round(3).to_string())


def mass_table(labels_dir: Path, way: str = "regions") -> pd.DataFrame:
    """Every 26-connected predicted mass of the saved maps (holdout and test cases), with what could rank it: its
    voxels, its rank by size inside its kidney (foreground component), its mean and peak masses probability, its
    mean tumour probability, and how much of it the reference calls a mass (``hit``: its share of mass voxels)."""
    from scipy import ndimage

    cases = yaml.safe_load((labels_dir / "cases.yaml").read_text())
    rows = []
    for split in ("holdout", "test"):
        for case in cases[split]:
            labels = np.load(labels_dir / way / f"{case}.npy")
            truth = np.load(labels_dir / REFERENCE / f"{case}.npy")
            p_masses = np.load(labels_dir / "p_masses" / f"{case}.npy").astype(np.float32) / 255
            p_tumor = np.load(labels_dir / "p_tumor" / f"{case}.npy").astype(np.float32) / 255
            full = np.ones((3,) * labels.ndim)
            masses, n = ndimage.label(labels >= 2, structure=full)
            kidneys, _ = ndimage.label(labels > 0, structure=full)
            if n == 0:
                continue
            index = np.arange(1, n + 1)
            voxels = ndimage.sum_labels(np.ones_like(p_masses), masses, index)
            kidney_of = ndimage.maximum(kidneys, masses, index)
            frame = pd.DataFrame(
                {
                    "split": split,
                    "case_id": case,
                    "voxels": voxels.astype(int),
                    "kidney": kidney_of.astype(int),
                    "mean_p": ndimage.mean(p_masses, masses, index),
                    "max_p": ndimage.maximum(p_masses, masses, index),
                    "mean_p_tumor": ndimage.mean(p_tumor, masses, index),
                    "hit": ndimage.mean((truth >= 2).astype(np.float32), masses, index),
                    "tumor_hit": ndimage.mean((truth == 2).astype(np.float32), masses, index),
                }
            )
            frame["rank_in_kidney"] = frame.groupby("kidney")["voxels"].rank(ascending=False, method="first")
            rows.append(frame)
    return pd.concat(rows, ignore_index=True)


def list_masses(args) -> None:
    table = mass_table(Path(args.labels))
    table.to_csv(args.out, sep="\t", index=False, float_format="%.3f")
    big = table[table["voxels"] >= args.min_voxels]
    print(big.sort_values(["split", "case_id", "voxels"], ascending=[True, True, False]).round(3).to_string())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    labels = commands.add_parser("labels", help="predict the holdout and test cases once, save the decoded maps")
    labels.add_argument("--results", required=True, help="a finished results folder (train/best.pt, best.json)")
    labels.add_argument("--configfile", nargs="+", required=True, help="the config files the folder was run with")
    labels.add_argument("--out", required=True, help="folder of the saved label maps")
    labels.add_argument("--masses-thresholds", nargs="*", type=float, default=[0.4, 0.3])
    labels.add_argument("--z-sigmas", nargs="*", type=float, default=[], help="mm: decodings smoothed across slices")
    labels.add_argument("--window-overlap", type=float, help="instead of the checkpoint's train.window_overlap")
    labels.add_argument("--keep-probabilities", action="store_true", help="save the float16 probabilities too")
    labels.add_argument("--threads", type=int, default=2)
    rows = commands.add_parser("rows", help="decide each row's steps on the holdout maps and score the test maps")
    rows.add_argument("--labels", required=True, help="the folder of `labels`")
    rows.add_argument("--rows", required=True, help="YAML: row name -> candidates, options, decoding")
    rows.add_argument("--configfile", nargs="+", default=["config/config.yaml", "config/kits23.yaml"])
    rows.add_argument("--out", required=True, help="per-case scores of every row (TSV)")
    masses = commands.add_parser("masses", help="every predicted mass with its size and probabilities (TSV)")
    masses.add_argument("--labels", required=True, help="the folder of `labels`")
    masses.add_argument("--out", required=True)
    masses.add_argument("--min-voxels", type=int, default=200, help="smallest mass printed (all are written)")
    args = parser.parse_args(argv)
    {"labels": save_labels, "rows": score_rows, "masses": list_masses}[args.command](args)


if __name__ == "__main__":
    main()
