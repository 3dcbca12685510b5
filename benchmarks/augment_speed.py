"""The data half of a training epoch: milliseconds a training sample spends in segflow's augmentation chain.

Run by hand (not a test), on cases a run has preprocessed:

    .venv/bin/python benchmarks/augment_speed.py --cases results/kits23/preprocessed \\
        --configfile config/kits23.yaml config/kits23-cpu.yaml [--samples 2000]

It builds what train_round builds for the configs' train section (config/config.yaml first, then the given files,
as Snakemake layers them, with the schema's defaults): the slice dataset, the lesion bank, the MONAI chain of
segflow.data.build_augmentation and the epoch's seeded draws (class balance, foreground share), then times the
samples one after the other in this process, as `num_workers: 0` does. The network's half is
benchmarks/train_speed.py. With `--save FILE` the samples are written (npz), so that two versions of the code can
be compared sample for sample.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow_scripts"))

from decodings import load_config  # noqa: E402  (the config files merged as Snakemake merges them)

from segflow.data import SliceDataset, build_augmentation, epoch_indices  # noqa: E402
from segflow.labelsets import n_classes  # noqa: E402
from segflow.train import lesions, sampling_weights  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", required=True, help="a preprocessed folder (results/.../preprocessed)")
    parser.add_argument("--configfile", nargs="*", default=[], help="config files over config/config.yaml")
    parser.add_argument("--max-cases", type=int, default=0, help="the first N cases only (0: all)")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", default="", help="write the samples' images and labels to this .npz")
    args = parser.parse_args()
    torch.set_num_threads(1)

    config = load_config([str(REPO / "config" / "config.yaml"), *args.configfile])
    train = config["train"]
    case_dirs = sorted(p for p in Path(args.cases).iterdir() if p.is_dir())[: args.max_cases or None]
    started = time.perf_counter()
    dataset = SliceDataset(case_dirs, context=train["context_slices"])
    bank = lesions(dataset, train)
    dataset.transform = build_augmentation(train["augment"], train["patch_size"], n_classes(config), bank)
    draws = epoch_indices(
        dataset.foreground_mask(),
        args.samples,
        train["foreground_fraction"],
        np.random.default_rng(args.seed),
        weights=sampling_weights(dataset, train["class_balance"], config["score"]["regions"]),
    )
    setup = time.perf_counter() - started
    if dataset.transform is not None:
        dataset.transform.set_random_state(seed=args.seed)
    started = time.perf_counter()
    samples = [dataset[int(i)] for i in draws]
    seconds = time.perf_counter() - started
    if args.save:
        images = np.stack([s["image"].numpy() for s in samples])
        np.savez_compressed(args.save, image=images, label=np.stack([s["label"].numpy() for s in samples]))
    per_sample = seconds / len(draws)
    print(
        json.dumps(
            {
                "cases": len(case_dirs),
                "slices": len(dataset),
                "lesion_cuts": len(bank),
                "setup_s": round(setup, 1),
                "samples": len(draws),
                "ms_per_sample": round(1000 * per_sample, 2),
                "epoch_s": round(per_sample * (train["samples_per_epoch"] or len(dataset)), 1),
                "samples_per_epoch": train["samples_per_epoch"],
            }
        )
    )


if __name__ == "__main__":
    main()
