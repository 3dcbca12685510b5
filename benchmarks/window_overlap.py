"""What the sliding windows' overlap buys: test cases of a finished results folder predicted at several overlaps.

``train.window_overlap`` (0.5: nnU-Net's step of half a window) sets how far apart the crop-sized windows of
validation and prediction sit; it changes nothing in training, so its rows need no new model. This script predicts
the named test cases (default: all) with the folder's model at each ``--overlaps`` value, everything else as the
pipeline did (TTA, way back, decoding, and best.json's thresholds, mass seed, blur and post-processing steps, not
decided again), and scores each with the pipeline's scoring: a paired comparison, with the network's seconds per
slice beside it.

    python benchmarks/window_overlap.py --results /work/bench/ablation48/pre_a77d58c0/results \\
        --configfile config/config.yaml config/kits23.yaml config/kits23-cpu.yaml \\
            benchmarks/ablation/cpu_base.yaml benchmarks/ablation/c83_no_paste.yaml \\
        --overlaps 0.5 0.75 --cases case_00006 case_00007 --out overlaps.tsv

Runs by hand, on the CPU or a GPU; never in tests or CI.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow_scripts"))
sys.path.insert(0, str(REPO / "benchmarks"))


def main(argv=None) -> None:
    from decodings import folder_arguments, load_folder

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    folder_arguments(parser, "overlap")
    parser.add_argument("--overlaps", nargs="+", type=float, required=True, help="window overlaps in [0, 1)")
    parser.add_argument("--cases", nargs="*", help="test cases to predict (default: every test case)")
    args = parser.parse_args(argv)

    import nibabel as nib

    from segflow.io import read_json
    from segflow.postprocess import apply
    from segflow.predict import predict_volume
    from segflow.score import score_arrays

    results = Path(args.results)
    folder = load_folder(results, args.configfile, args.threads)
    config, device, models, checkpoint = (folder[k] for k in ("config", "device", "models", "checkpoint"))
    infer, regions, best = config["infer"], config["score"]["regions"], folder["best"]
    if not all(hasattr(model, "overlap") for model in models):
        raise SystemExit(f"{results}/train/best.pt predicts whole slices, not in windows: no overlap to change")
    steps = list(best.get("postprocess") or [])
    chosen = (best.get("region_thresholds") or {}, best.get("mass_seed"), best.get("slice_sigma_mm") or 0.0)
    test = args.cases or folder["test"]
    print(f"{len(test)} test cases, overlaps {args.overlaps}, post-processing {steps}, decoding {chosen}")
    rows = []
    for case in test:
        reference = nib.load(str(results / "raw" / case / "segmentation.nii.gz"))
        spacing = tuple(float(z) for z in reference.header.get_zooms()[:3])
        truth = np.asarray(reference.dataobj)
        n_slices = read_json(results / "preprocessed" / case / "meta.json")["n_slices"]
        for overlap in args.overlaps:
            for model in models:
                model.overlap = overlap
            start = time.time()
            labels, _ = predict_volume(
                models, results / "preprocessed" / case, infer, device, checkpoint, regions, *chosen
            )
            seconds = time.time() - start
            scores = score_arrays(apply(labels, steps) if steps else labels, truth, spacing, config["score"])
            rows.append({"case_id": case, "overlap": overlap, "s_per_slice": seconds / n_slices, **scores})
            print(f"{case} overlap {overlap:g}: tumour Dice {scores['dice_tumor']:.3f}, {seconds:.0f} s", flush=True)
        table = pd.DataFrame(rows)
        table.to_csv(args.out, sep="\t", index=False)  # after every case: a stopped run keeps what it scored
    columns = ["s_per_slice"] + [c for c in table.columns if c.startswith("dice_")]
    print(table.groupby("overlap")[columns].mean().round(3).to_string())


if __name__ == "__main__":
    main()
