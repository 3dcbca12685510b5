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


def probability_labels(probabilities_zchw: np.ndarray, tree: list | None = None) -> np.ndarray:
    """Labels (Z, H, W) uint8 of a (Z, C, H, W) probability stack: the argmax over the class axis (first maximum on
    ties), or with a region ``tree`` the top-down decoding of decode_labels."""
    if tree is None:
        return np.argmax(probabilities_zchw, axis=1).astype(np.uint8)
    out = np.empty((probabilities_zchw.shape[0], *probabilities_zchw.shape[2:]), dtype=np.uint8)
    for start in range(0, len(out), 16):  # float32 copies of 16 slices at a time
        chunk = torch.from_numpy(np.asarray(probabilities_zchw[start : start + 16], dtype=np.float32))
        out[start : start + 16] = decode_labels(chunk, tree).numpy()
    return out


def decode_labels(probability: torch.Tensor, tree: list | None = None) -> torch.Tensor:
    """Labels (N, H, W) from class probabilities (N, C, H, W).

    Without a ``tree``, the argmax (first maximum on ties). With the region tree of ``score.regions``
    (segflow.labelsets.region_tree; ``infer.decode: regions``) the decision goes top down, one branch per node,
    each branch's probability the sum of its classes': for KiTS background against kidney+masses first, then
    kidney against masses, then tumour against cyst. Each decision is the one its scored region asks: a voxel whose
    softmax is spread over tumour and cyst can still be a mass, where the argmax calls it kidney or background.
    A region with a threshold (``infer.region_thresholds``) is chosen where its share of its node's probability
    reaches the threshold: masses at 0.4 are called where P(masses) / P(kidney+masses) >= 0.4.
    """
    if tree is None:
        return probability.max(dim=1).indices  # first maximum on ties, like argmax (10x faster than argmax(1))
    labels = torch.zeros((probability.shape[0], *probability.shape[2:]), dtype=torch.long, device=probability.device)
    _descend(probability, tree, torch.ones_like(labels, dtype=torch.bool), labels)
    return labels


def _descend(probability: torch.Tensor, node: list, inside: torch.Tensor, labels: torch.Tensor) -> None:
    """Send each voxel of ``inside`` down the branch of ``node`` with the highest summed probability, or, where a
    branch has a threshold, down that branch exactly where its share of the node's probability reaches it."""
    scores = torch.stack([probability[:, list(members)].sum(dim=1) for members, _, _ in node], dim=1)
    if any(threshold is not None for _, _, threshold in node):
        scores = _thresholded_shares(scores, [threshold for _, _, threshold in node])
    choice = scores.max(dim=1).indices  # ties go to the first branch: the lowest label, as with argmax
    for index, (members, children, _) in enumerate(node):
        chosen = inside & (choice == index)
        if children is None:
            labels[chosen] = members[0]
        else:
            _descend(probability, children, chosen, labels)


def _thresholded_shares(scores: torch.Tensor, thresholds: list) -> torch.Tensor:
    """Each branch's share of the node's probability (N, B, H, W), lifted by 2 where a thresholded branch reaches
    its threshold and lowered by 2 where it does not: such a branch then wins exactly where it reaches it (against
    one other branch, the region's share at least ``threshold`` instead of more than half), and unthresholded
    branches compete by their share as before."""
    shares = scores / scores.sum(dim=1, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)
    adjusted = shares.clone()
    for index, threshold in enumerate(thresholds):
        if threshold is not None:
            reached = shares[:, index] >= threshold
            adjusted[:, index] = torch.where(reached, shares[:, index] + 2, shares[:, index] - 2)
    return adjusted


def slice_spacing(meta: dict) -> float:
    """The distance (mm) between a preprocessed case's slices, from its meta.json: the oriented grid's slice
    spacing, times the resampling's step along the slices where preprocess.spacing resampled the case."""
    spacing = float(meta["oriented_spacing"][meta["slice_dim"]])
    resampling = meta.get("resampling")
    return spacing * abs(float(resampling["scale"][0])) if resampling else spacing


def smooth_across_slices(probabilities_zchw: np.ndarray, sigma_mm: float, spacing_mm: float) -> np.ndarray:
    """The (Z, C, H, W) probabilities blurred along Z by a Gaussian of ``sigma_mm`` (``infer.slice_sigma_mm``;
    the end slices repeat past the edges); the input itself when ``sigma_mm`` is 0.

    A 2D network decides each slice alone: a false mass in one slice or a gap in a lesion's run of slices is
    what the neighbouring slices can outvote. The blur is linear with weights summing to one, so every voxel's
    probabilities still sum to one."""
    if not sigma_mm:
        return probabilities_zchw
    if spacing_mm <= 0:
        raise ValueError(f"slice spacing {spacing_mm} mm: cannot blur across slices by {sigma_mm} mm")
    from scipy.ndimage import gaussian_filter1d

    out = np.empty_like(probabilities_zchw)
    for c in range(probabilities_zchw.shape[1]):  # one float32 class map at a time bounds the memory
        channel = np.asarray(probabilities_zchw[:, c], dtype=np.float32)
        out[:, c] = gaussian_filter1d(channel, sigma_mm / spacing_mm, axis=0, mode="nearest", truncate=3.0)
    return out


def blur_case(probabilities_zchw: np.ndarray, sigma_mm: float, meta: dict) -> np.ndarray:
    """smooth_across_slices over one case's slice spacing (its meta.json), read only when there is a blur."""
    return smooth_across_slices(probabilities_zchw, sigma_mm, slice_spacing(meta)) if sigma_mm else probabilities_zchw


def case_probabilities(models, image, checkpoint: dict, infer: dict, device: torch.device) -> np.ndarray:
    """Mean softmax (Z, C, H, W) over a preprocessed image: slice by slice (2D), or by sliding window over the
    volume for 3D checkpoints (segflow.volumes, ``infer.overlap``)."""
    if checkpoint.get("dims", 2) == 3:
        from segflow.volumes import sliding_window_probabilities

        return sliding_window_probabilities(
            models, image, checkpoint["patch_size"], infer["overlap"], infer["batch_size"], device, infer["tta"]
        )
    return predict_probabilities(models, image, checkpoint["context_slices"], infer["batch_size"], device, infer["tta"])
