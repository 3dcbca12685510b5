"""The network over a stack of preprocessed slices: mean softmax over ensemble members and mirror images (TTA).

Shared by select_model (the holdout, on the preprocessed grid) and predict_case (then segflow.restore maps the
result back to the original grid).
"""

from __future__ import annotations

import numpy as np
import torch

from segflow.data import context_stack
from segflow.models import class_labels

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


def case_probabilities(models, image, checkpoint: dict, infer: dict, device: torch.device) -> np.ndarray:
    """Mean softmax (Z, C, H, W) over a preprocessed image: slice by slice (2D), or by sliding window over the
    volume for 3D checkpoints (segflow.volumes, ``infer.overlap``)."""
    if checkpoint.get("dims", 2) == 3:
        from segflow.volumes import sliding_window_probabilities

        return sliding_window_probabilities(
            models, image, checkpoint["patch_size"], infer["overlap"], infer["batch_size"], device, infer["tta"]
        )
    return predict_probabilities(models, image, checkpoint["context_slices"], infer["batch_size"], device, infer["tta"])
