"""Inference: run the selected model over a preprocessed case and write a label map on the original grid."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from segflow.io import read_json, save_nifti
from segflow.models import build_model, class_labels, load_weights
from segflow.preprocess import load_case, restore_labels

log = logging.getLogger(__name__)


def load_model(checkpoint_path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    model = build_model(checkpoint["model_cfg"], checkpoint["n_classes"])
    load_weights(model, checkpoint_path)
    return model.to(device).eval(), checkpoint


@torch.no_grad()
def predict_slices(model: torch.nn.Module, image_zhw: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """Argmax labels (Z, H, W) uint8 for a preprocessed image stack, in batches of slices."""
    out = np.empty(image_zhw.shape, dtype=np.uint8)
    for start in range(0, image_zhw.shape[0], batch_size):
        batch = torch.from_numpy(np.array(image_zhw[start : start + batch_size], dtype=np.float32))[:, None]
        out[start : start + batch_size] = class_labels(model(batch.to(device))).cpu().numpy().astype(np.uint8)
    return out


def predict_case(checkpoint_path, case_dir, raw_image_path, output_path, batch_size: int, device: str, threads: int = 1):
    """Predict one case and save the label map with the raw image's shape and affine."""
    import nibabel as nib

    from segflow.train import pick_device  # here, not at the top: segflow.train brings pandas and the training code

    torch.set_num_threads(max(1, threads))
    dev = pick_device(device)
    model, checkpoint = load_model(checkpoint_path, dev)
    image, _ = load_case(case_dir)
    meta = read_json(Path(case_dir) / "meta.json")
    meta["n_classes"] = checkpoint["n_classes"]
    labels = restore_labels(predict_slices(model, image, batch_size, dev), meta)
    raw = nib.load(str(raw_image_path))
    if list(raw.shape[:3]) != list(labels.shape):
        raise RuntimeError(f"{raw_image_path}: prediction shape {list(labels.shape)} != image {list(raw.shape)}")
    save_nifti(output_path, labels, raw.affine)
    log.info("%s: labels %s", Path(output_path).name, dict(zip(*map(list, np.unique(labels, return_counts=True)))))
