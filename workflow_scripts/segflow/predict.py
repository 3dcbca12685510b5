"""Inference: the selected model (or ensemble of rounds) over a preprocessed case, back on the original grid.

The network's softmax is averaged over the ensemble members and, with ``infer.tta``, over the slice and its
mirror images along both in-plane axes (each prediction flipped back first). The way back then resamples either
the class probabilities (``infer.restore: probabilities``, nnU-Net's export) or the argmax labels, and the
post-processing steps select_model chose on the fixed holdout are applied last.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from segflow.cases import load_case
from segflow.checkpoints import load_models
from segflow.data import context_stack
from segflow.device import pick_device
from segflow.io import read_json, save_nifti
from segflow.models import class_labels
from segflow.restore import restore_labels, restore_probabilities

log = logging.getLogger(__name__)

# Mirror images along rows, columns and both (dims of an (N, C, H, W) batch); the identity comes first.
TTA_FLIPS = ((), (2,), (3,), (2, 3))


@torch.no_grad()
def predict_probabilities(
    models: list[torch.nn.Module],
    image_zhw: np.ndarray,
    context: int,
    batch_size: int,
    device: torch.device,
    tta: bool = False,
) -> np.ndarray:
    """Mean softmax (Z, C, H, W) float16 over the models and, with ``tta``, the four in-plane mirrorings."""
    flips = TTA_FLIPS if tta else TTA_FLIPS[:1]
    out = None
    for start in range(0, image_zhw.shape[0], batch_size):
        stop = min(start + batch_size, image_zhw.shape[0])
        batch = torch.from_numpy(context_stack(image_zhw, start, stop, context)).to(device)
        total = None
        for model in models:
            for dims in flips:
                logits = model(torch.flip(batch, dims) if dims else batch).float()
                probability = torch.softmax(logits, dim=1)
                probability = torch.flip(probability, dims) if dims else probability
                total = probability if total is None else total + probability
        mean = (total / (len(models) * len(flips))).cpu().numpy()
        if out is None:
            out = np.empty((image_zhw.shape[0], *mean.shape[1:]), dtype=np.float16)
        out[start:stop] = mean
    return out


def predict_slices(
    model: torch.nn.Module, image_zhw: np.ndarray, batch_size: int, device: torch.device, context: int = 1
) -> np.ndarray:
    """Argmax labels (Z, H, W) uint8 of one network over a preprocessed image stack, in batches of slices."""
    out = np.empty(image_zhw.shape, dtype=np.uint8)
    with torch.no_grad():
        for start in range(0, image_zhw.shape[0], batch_size):
            stop = min(start + batch_size, image_zhw.shape[0])
            batch = torch.from_numpy(context_stack(image_zhw, start, stop, context)).to(device)
            out[start:stop] = class_labels(model(batch)).cpu().numpy().astype(np.uint8)
    return out


def probability_labels(probabilities_zchw: np.ndarray) -> np.ndarray:
    """Argmax over the class axis of a (Z, C, H, W) probability stack (first maximum on ties), as uint8."""
    return np.argmax(probabilities_zchw, axis=1).astype(np.uint8)


def predict_volume(models, case_dir, infer: dict, device: torch.device, context: int) -> tuple[np.ndarray, dict]:
    """Labels on the original grid of one preprocessed case (before post-processing), and its meta.json."""
    image, _ = load_case(case_dir)
    meta = read_json(Path(case_dir) / "meta.json")
    probabilities = predict_probabilities(models, image, context, infer["batch_size"], device, infer["tta"])
    meta["n_classes"] = probabilities.shape[1]
    if infer["restore"] == "probabilities":
        return restore_probabilities(probabilities, meta), meta
    return restore_labels(probability_labels(probabilities), meta), meta


def predict_case(checkpoint_path, case_dir, raw_image_path, output_path, infer: dict, postprocess=(), threads: int = 1):
    """Predict one case and save the label map with the raw image's shape and affine."""
    import nibabel as nib

    from segflow.postprocess import apply as apply_postprocessing

    torch.set_num_threads(max(1, threads))
    device = pick_device(infer["device"], "infer.device")
    models, checkpoint = load_models(checkpoint_path, device)
    labels, _ = predict_volume(models, case_dir, infer, device, checkpoint["context_slices"])
    raw = nib.load(str(raw_image_path))
    if list(raw.shape[:3]) != list(labels.shape):
        raise RuntimeError(f"{raw_image_path}: prediction shape {list(labels.shape)} != image {list(raw.shape)}")
    if postprocess:
        labels = apply_postprocessing(labels, list(postprocess))
    save_nifti(output_path, labels, raw.affine)
    log.info(
        "%s: %d model(s), tta %s, restore %s, post-processing %s; labels %s",
        Path(output_path).name,
        len(models),
        infer["tta"],
        infer["restore"],
        list(postprocess) or "none",
        dict(zip(*map(list, np.unique(labels, return_counts=True)))),
    )


def decide_postprocessing(
    checkpoint_path, holdout_dirs: list, candidates: list, infer: dict, regions: dict, threads: int = 1
) -> dict:
    """Which post-processing steps help on the fixed holdout (nnU-Net decides on cross-validation the same way).

    The holdout cases are predicted on the preprocessed grid, where their reference labels are, with the same
    ensemble and mirroring as the test cases. Returns ``{"steps": [...], "table": [...]}``.
    """
    from segflow.postprocess import decide

    if not candidates:
        return {"steps": [], "table": []}
    if not holdout_dirs:
        log.warning("train.postprocess needs a fixed holdout (train.holdout_fraction > 0); no post-processing")
        return {"steps": [], "table": []}
    torch.set_num_threads(max(1, threads))
    device = pick_device(infer["device"], "infer.device")
    models, checkpoint = load_models(checkpoint_path, device)
    predictions, references = [], []
    for case_dir in holdout_dirs:
        image, label = load_case(case_dir)
        probabilities = predict_probabilities(
            models, image, checkpoint["context_slices"], infer["batch_size"], device, infer["tta"]
        )
        predictions.append(probability_labels(probabilities))
        references.append(np.asarray(label))
    steps, table = decide(predictions, references, list(candidates), {k: list(v) for k, v in regions.items()})
    log.info("post-processing on %d holdout cases: kept %s of %s", len(holdout_dirs), steps or "none", candidates)
    return {"steps": steps, "table": table}
