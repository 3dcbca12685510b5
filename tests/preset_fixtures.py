"""Offline stand-ins for the FLARE22 zip and the UW-Madison csv+png folder, built from the synthetic multi-organ
phantoms (segflow.sources.organs) in the datasets' own layouts, so that the presets' DAGs run through the real
importers without a download."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from segflow.io import save_nifti
from segflow.sources.organs import make_organ_phantom

FLARE_ORGANS = ("liver", "right_kidney", "spleen", "left_kidney")
FLARE_CODES = (1, 2, 3, 13)  # FLARE22's labels of those organs
GI_ORGANS = ("large_bowel", "small_bowel", "stomach")


def flare22_zip(folder: Path, n_cases: int = 6, matrix: int = 64, slices=(20, 32), seed: int = 3) -> Path:
    """FLARE22_LabeledCase50.zip with FLARE22_Tr_000N cases: CT phantoms with FLARE22's label codes."""
    stage = folder / "stage"
    path = folder / "FLARE22_LabeledCase50.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for index in range(n_cases):
            image, label, affine = make_organ_phantom(f"synth_{index:03d}", seed, matrix, slices, FLARE_ORGANS, "ct")
            coded = np.zeros_like(label)
            for value, code in enumerate(FLARE_CODES, start=1):
                coded[label == value] = code
            case = f"FLARE22_Tr_{index + 1:04d}"
            save_nifti(stage / f"{case}_0000.nii.gz", image, affine)
            save_nifti(stage / f"{case}.nii.gz", coded, affine)
            archive.write(stage / f"{case}_0000.nii.gz", f"Training/FLARE22_LabeledCase50/images/{case}_0000.nii.gz")
            archive.write(stage / f"{case}.nii.gz", f"Training/FLARE22_LabeledCase50/labels/{case}.nii.gz")
    return path


def rle_encode(mask: np.ndarray) -> str:
    """Kaggle's encoding: runs over the row-major flattened mask, 1-based starts."""
    flat = np.concatenate([[0], mask.flatten(order="C").astype(np.int8), [0]])
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    return " ".join(f"{s} {e - s}" for s, e in zip(edges[0::2], edges[1::2]))


UW_CASE_DAYS = ("case1_day0", "case1_day2", "case2_day0", "case3_day0")  # case1: two days of one patient


def uwmgi_folder(folder: Path, matrix: int = 64, slices=(20, 32), seed: int = 3, modality: str = "mri") -> Path:
    """train.csv + train/caseN/caseN_dayM/scans/slice_*.png from MRI-like GI phantoms (16-bit PNG, RLE masks)."""
    root = folder / "uw-madison-gi-tract-image-segmentation"
    rows = []
    for index, case_day in enumerate(UW_CASE_DAYS):
        image, label, affine = make_organ_phantom(f"synth_{index:03d}", seed, matrix, slices, GI_ORGANS, modality)
        spacing = [abs(float(affine[i, i])) for i in range(2)]
        scans = root / "train" / case_day.split("_")[0] / case_day / "scans"
        scans.mkdir(parents=True)
        stored = image.astype(np.int32) - (int(image.min()) if modality == "ct" else 0)  # PNGs hold no negatives
        for z in range(image.shape[2]):
            plane = stored[:, :, z].T  # (rows, columns), as segflow.sources.common.stack_slices stacks them back
            height, width = plane.shape
            name = f"slice_{z + 1:04d}_{width}_{height}_{spacing[0]:.2f}_{spacing[1]:.2f}.png"
            Image.fromarray(plane.astype(np.uint16)).save(scans / name)
            uid = f"{case_day}_slice_{z + 1:04d}"
            for value, organ in enumerate(GI_ORGANS, start=1):
                mask = label[:, :, z].T == value
                rows.append((uid, organ, rle_encode(mask) if mask.any() else ""))
    with open(root / "train.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "class", "segmentation"])
        writer.writerows(rows)
    return root
