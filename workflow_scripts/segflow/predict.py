"""Inference: the selected model (or ensemble of rounds) over a preprocessed case, back on the original grid.

The network's softmax is averaged over the ensemble members and, with ``infer.tta``, over the slice and its
mirror images along both in-plane axes (each prediction flipped back first), and blurred across slices where
select_model chose a width from ``infer.slice_sigma_mm``. The way back then resamples either
the class probabilities (``infer.restore: probabilities``, nnU-Net's export) or the labels, decoded by the argmax
or top down through the scored regions (``infer.decode``), and the post-processing steps select_model chose on
the fixed holdout are applied last.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from segflow.cases import load_case
from segflow.checkpoints import load_models
from segflow.device import pick_device
from segflow.inference import blur_case, case_probabilities, probability_labels
from segflow.io import read_json, save_nifti
from segflow.labelsets import label_tree
from segflow.postprocess import apply as apply_postprocessing
from segflow.postprocess import mass_classes, seeded_masses
from segflow.restore import restore_labels, restore_probabilities, restore_region_probability

log = logging.getLogger(__name__)


def predict_volume(
    models,
    case_dir,
    infer: dict,
    device: torch.device,
    context,
    regions: dict | None = None,
    thresholds=None,
    mass_seed: float | None = None,
    slice_sigma_mm: float = 0.0,
) -> tuple[np.ndarray, dict]:
    """Labels on the original grid of one preprocessed case (before post-processing), and its meta.json.

    ``context`` is the checkpoint dictionary of segflow.checkpoints.load_models (or, 2D only, its context_slices);
    ``regions`` (``score.regions``) are needed with ``infer.decode: regions``; ``thresholds``, ``mass_seed`` and
    ``slice_sigma_mm`` are what select_model chose from ``infer.region_thresholds``, ``infer.mass_seed`` and
    ``infer.slice_sigma_mm`` (best.json's ``region_thresholds``, ``mass_seed`` and ``slice_sigma_mm``; None: no
    seeding, 0: no blur)."""
    image, _ = load_case(case_dir)
    meta = read_json(Path(case_dir) / "meta.json")
    checkpoint = context if isinstance(context, dict) else {"context_slices": context}
    probabilities = blur_case(case_probabilities(models, image, checkpoint, infer, device), slice_sigma_mm, meta)
    meta["n_classes"] = probabilities.shape[1]
    tree = label_tree(infer, regions, probabilities.shape[1], thresholds)
    if infer["restore"] == "probabilities":
        labels = restore_probabilities(probabilities, meta, tree)
    else:
        labels = restore_labels(probability_labels(probabilities, tree), meta)
    if mass_seed is not None:  # the masses' probability on the same grid, resampled as the probabilities are
        masses = restore_region_probability(probabilities, meta, mass_classes(probabilities.shape[1]))
        labels = seeded_masses(labels, masses, mass_seed)
    return labels, meta


def predict_case(
    checkpoint_path,
    case_dir,
    raw_image_path,
    output_path,
    infer: dict,
    postprocess=(),
    threads: int = 1,
    regions=None,
    thresholds=None,
    mass_seed: float | None = None,
    slice_sigma_mm: float = 0.0,
):
    """Predict one case and save the label map with the raw image's shape and affine (``regions``, ``thresholds``,
    ``mass_seed``, ``slice_sigma_mm``: see predict_volume)."""
    import nibabel as nib

    torch.set_num_threads(max(1, threads))
    device = pick_device(infer["device"], "infer.device")
    models, checkpoint = load_models(checkpoint_path, device)
    labels, _ = predict_volume(
        models, case_dir, infer, device, checkpoint, regions, thresholds, mass_seed, slice_sigma_mm
    )
    raw = nib.load(str(raw_image_path))
    if list(raw.shape[:3]) != list(labels.shape):
        raise RuntimeError(f"{raw_image_path}: prediction shape {list(labels.shape)} != image {list(raw.shape)}")
    if postprocess:
        labels = apply_postprocessing(labels, list(postprocess))
    save_nifti(output_path, labels, raw.affine)
    log.info(
        "%s: %d model(s), tta %s, restore %s, decode %s%s%s%s, post-processing %s; labels %s",
        Path(output_path).name,
        len(models),
        infer["tta"],
        infer["restore"],
        infer["decode"],
        f" (thresholds {thresholds})" if thresholds else "",
        "" if mass_seed is None else f", mass seed {mass_seed:g}",
        f", slices blurred {slice_sigma_mm:g} mm" if slice_sigma_mm else "",
        list(postprocess) or "none",
        dict(zip(*map(list, np.unique(labels, return_counts=True)))),
    )
