"""Score the ways of decoding one trained model side by side, from a single prediction pass.

``infer.decode`` (argmax or regions) and ``infer.region_thresholds`` change nothing before the network's class
probabilities, so ablation rows that differ only there retrain nothing but still predict every test case again.
This script predicts each test case of a finished results folder once (with the folder's own model, TTA and way
back), decodes the same probabilities every way (the argmax, the regions, and the regions with each combination of
the config's ``infer.region_thresholds``), applies the post-processing select_model kept (train/best.json) to each,
and scores them against the references with the pipeline's scoring: a paired comparison at a fraction of the
prediction time. The ``pipeline`` column marks the decoding the pipeline itself used (best.json's thresholds).

    python benchmarks/decodings.py --results /work/bench/ablation48/pre_64aff79f/results \\
        --configfile config/config.yaml config/kits23.yaml config/kits23-cpu.yaml \\
            benchmarks/ablation/cpu_base.yaml benchmarks/ablation/c49_decode_regions.yaml --out decodings.tsv

The post-processing steps (and the mass seed, ``infer.mass_seed``, and the blur across slices,
``infer.slice_sigma_mm``) are the ones the folder's select_model kept with its own decoding, applied to every
decoding; deciding them again for each would predict the holdout again. Runs by hand, on the CPU or a GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow_scripts"))


def load_config(files: list[str]) -> dict:
    """The config files merged as Snakemake merges --configfile (later files win, nested keys merged), with the
    schema's defaults filled in."""
    from snakemake.utils import validate

    def merge(base: dict, update: dict) -> dict:
        for key, value in update.items():
            base[key] = (
                merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
            )
        return base

    config: dict = {}
    for path in files:
        merge(config, yaml.safe_load(Path(path).read_text()) or {})
    validate(config, str(REPO / "config" / "schema.yaml"))
    return config


def decodings(infer: dict, chosen: dict) -> list[tuple[str, str, dict, bool]]:
    """(name, infer.decode, thresholds, whether the pipeline decoded so) for every way of decoding to score:
    the argmax, the regions without thresholds, and the regions with each combination of
    ``infer.region_thresholds``' candidates (``chosen``: best.json's ``region_thresholds``)."""
    from segflow.labelsets import threshold_choices, threshold_name

    ways = [("argmax", "argmax", {}), ("regions", "regions", {})]
    ways += [(f"regions {threshold_name(c)}", "regions", c) for c in threshold_choices(infer) if c]
    return [(name, decode, c, decode == infer["decode"] and c == chosen) for name, decode, c in ways]


def score_case(
    case: str,
    results: Path,
    models,
    checkpoint,
    config: dict,
    steps: list[str],
    ways,
    device,
    mass_seed=None,
    slice_sigma_mm: float = 0.0,
) -> list[dict]:
    """One test case blurred across slices (``slice_sigma_mm``, best.json's), decoded every way of ``ways``
    (decodings()), seeded (``mass_seed``, best.json's), post-processed and scored."""
    import nibabel as nib

    from segflow.cases import load_case
    from segflow.inference import blur_case, case_probabilities, probability_labels
    from segflow.io import read_json
    from segflow.labelsets import label_tree
    from segflow.postprocess import apply, mass_classes, seeded_masses
    from segflow.restore import restore_labels, restore_probabilities, restore_region_probability
    from segflow.score import score_arrays

    case_dir = results / "preprocessed" / case
    if not (case_dir / "meta.json").exists():  # a folder run until select_model has not preprocessed its test cases
        from segflow.preprocess import preprocess_case

        raw = results / "raw" / case
        cfg = {**config["preprocess"], "modality": config["modality"]}
        preprocess_case(raw / "imaging.nii.gz", raw / "segmentation.nii.gz", case_dir, cfg)
    image, _ = load_case(case_dir)
    meta = read_json(case_dir / "meta.json")
    infer, regions = config["infer"], config["score"]["regions"]
    probabilities = blur_case(case_probabilities(models, image, checkpoint, infer, device), slice_sigma_mm, meta)
    meta["n_classes"] = probabilities.shape[1]
    reference = nib.load(str(results / "raw" / case / "segmentation.nii.gz"))
    spacing = tuple(float(z) for z in reference.header.get_zooms()[:3])
    truth = np.asarray(reference.dataobj)
    masses = None
    if mass_seed is not None:
        masses = restore_region_probability(probabilities, meta, mass_classes(probabilities.shape[1]))
    rows = []
    for name, decode, thresholds, pipeline in ways:
        tree = label_tree({**infer, "decode": decode}, regions, probabilities.shape[1], thresholds)
        if infer["restore"] == "probabilities":
            labels = restore_probabilities(probabilities, meta, tree)
        else:
            labels = restore_labels(probability_labels(probabilities, tree), meta)
        labels = labels if masses is None else seeded_masses(labels, masses, mass_seed)
        labels = apply(labels, steps) if steps else labels
        scores = score_arrays(labels, truth, spacing, config["score"])
        rows.append({"case_id": case, "decode": name, "pipeline": pipeline, **scores})
    return rows


def load_folder(results: Path, configfile: list[str], threads: int) -> dict:
    """What a paired benchmark needs of a finished results folder: its merged ``config``, the ``device``, the
    selected ``models`` and their ``checkpoint`` dictionary, select_model's ``best`` (best.json) and its ``test``
    case ids (selected, split test)."""
    import torch

    from segflow.checkpoints import load_models
    from segflow.device import pick_device
    from segflow.io import read_json

    torch.set_num_threads(threads)
    config = load_config(configfile)
    device = pick_device(config["infer"]["device"], "infer.device")
    models, checkpoint = load_models(results / "train" / "best.pt", device)
    cases = pd.read_csv(results / "selection" / "cases.tsv", sep="\t")
    return {
        "config": config,
        "device": device,
        "models": models,
        "checkpoint": checkpoint,
        "best": read_json(results / "train" / "best.json"),
        "test": cases[(cases["split"] == "test") & cases["selected"]]["case_id"].tolist(),
    }


def folder_arguments(parser: argparse.ArgumentParser, rows: str) -> None:
    """The options of a paired benchmark over a finished results folder (load_folder); ``rows``: one row per what."""
    parser.add_argument("--results", required=True, help="a finished results folder (train/best.pt, selection)")
    parser.add_argument("--configfile", nargs="+", required=True, help="the config files the folder was run with")
    parser.add_argument("--out", required=True, help=f"per-case scores, one row per case and {rows} (TSV)")
    parser.add_argument("--threads", type=int, default=2)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    folder_arguments(parser, "decoding")
    args = parser.parse_args(argv)

    results = Path(args.results)
    folder = load_folder(results, args.configfile, args.threads)
    config, device, models, checkpoint = (folder[k] for k in ("config", "device", "models", "checkpoint"))
    best, test = folder["best"], folder["test"]
    steps, chosen = list(best.get("postprocess") or []), best.get("region_thresholds") or {}
    seed, sigma = best.get("mass_seed"), best.get("slice_sigma_mm") or 0.0
    print(
        f"{len(test)} test cases, post-processing {steps}, thresholds {chosen}, mass seed {seed}, "
        f"blur across slices {sigma:g} mm, tta {config['infer']['tta']}"
    )
    ways = decodings(config["infer"], chosen)
    rows = []
    for case in test:
        start = time.time()
        rows += score_case(case, results, models, checkpoint, config, steps, ways, device, seed, sigma)
        dice = {r["decode"]: round(r["dice_tumor"], 3) for r in rows[-len(ways) :]}
        print(f"{case}: tumour Dice {dice} ({time.time() - start:.0f} s)", flush=True)
        table = pd.DataFrame(rows)
        table.to_csv(args.out, sep="\t", index=False)  # after every case: a stopped run keeps what it scored
    columns = [c for c in table.columns if c.startswith(("dice_", "sd_"))]
    print(table.groupby("decode", sort=False)[columns].mean().round(3).T.to_string())


if __name__ == "__main__":
    main()
