"""The way back: a prediction on the preprocessed slices mapped onto the case's original voxel grid.

``meta.json`` (written by segflow.preprocess) records the orientation, crop, resampling and size; every voxel of
the original grid is traced back into the prediction from them. docs/preprocessing.md has the measurements.
"""

from __future__ import annotations

import numpy as np

from segflow.geometry import _chunks, _nearest, from_slices


def restore_labels(pred_zhw: np.ndarray, meta: dict) -> np.ndarray:
    """Map a predicted (Z, H, W) label stack back onto the original voxel grid (the inverse of preprocessing).

    Each voxel of the cropped oriented grid is traced back through resampling (if any) and the resize to a
    continuous position in the prediction; labels are interpolated there per class (linear in-plane, nearest
    across slices) and the argmax kept, the per-class resampling nnU-Net uses for segmentations. Then the crop is
    padded with background and the orientation undone, so the result has the original shape and axis order.
    """
    pred = np.asarray(pred_zhw)
    n_classes = max(int(meta.get("n_classes", 0)), int(pred.max()) + 1)
    classes = None

    def class_maps(z_index):
        nonlocal classes
        import torch

        if classes is None:
            classes = torch.arange(n_classes, dtype=torch.uint8)[None, :, None, None]
        return (torch.from_numpy(np.asarray(pred[z_index], dtype=np.uint8))[:, None] == classes).float()

    return _restore(class_maps, pred.shape, n_classes, meta, _label_decoder(None))


def restore_probabilities(prob_zchw: np.ndarray, meta: dict, tree: list | None = None) -> np.ndarray:
    """Labels on the original grid from a (Z, C, H, W) class-probability stack: the probabilities are resampled
    to every original voxel (bilinear in-plane, nearest across slices) and the argmax taken there, nnU-Net's
    export (or, with a region ``tree``, the top-down decoding of segflow.inference.decode_labels). Boundaries then
    fall between the network's pixels rather than on them."""
    prob = np.asarray(prob_zchw)
    return _restore(
        _probability_maps(prob), (prob.shape[0], *prob.shape[2:]), prob.shape[1], meta, _label_decoder(tree)
    )


def restore_region_probability(prob_zchw: np.ndarray, meta: dict, classes) -> np.ndarray:
    """The probability of a region (the sum over its ``classes``) on the original grid, as uint8 in 255ths (0
    outside the crop): resampled like restore_probabilities' class maps, so it sits voxel for voxel under its
    labels. infer.mass_seed reads it to keep only the masses the network was sure of somewhere
    (segflow.postprocess.seeded_masses)."""
    import torch

    prob = np.asarray(prob_zchw)
    index = torch.as_tensor(list(classes), dtype=torch.long)

    def in_255ths(probability):
        share = probability.index_select(1, index).sum(dim=1).clamp(0, 1)
        return (share * 255).round().to(torch.uint8)

    return _restore(_probability_maps(prob), (prob.shape[0], *prob.shape[2:]), prob.shape[1], meta, in_255ths)


def _probability_maps(prob: np.ndarray):
    def class_maps(z_index):
        import torch

        return torch.from_numpy(np.asarray(prob[z_index], dtype=np.float32))

    return class_maps


def _label_decoder(tree: list | None):
    """Probabilities (n, C, H, W) -> labels (n, H, W): segflow.inference.decode_labels (the argmax without a tree)."""
    from segflow.inference import decode_labels

    return lambda probability: decode_labels(probability, tree)


def _restore(class_maps, zhw_shape, n_classes: int, meta: dict, decode) -> np.ndarray:
    """The way back shared by labels and probabilities: trace every cropped voxel to the prediction grid, sample
    the class maps there and ``decode`` them to uint8 (labels, or a region's probability), then pad the crop with
    zeros (background) and undo the orientation."""
    cropped_shape = meta["cropped_shape"]
    resampling = meta.get("resampling")
    if resampling:
        grid_shape, scale, offset = resampling["shape"], resampling["scale"], resampling["offset"]
    else:
        grid_shape, scale, offset = cropped_shape, [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]
    # Cropped voxel i sits at (i - offset) / scale on the resampled grid, and resampled pixel y sits at
    # (y + 0.5) * size / n - 0.5 in the resized slice (pixel centres, as area and nearest-exact resize map them).
    at = [(np.arange(n) - o) / s for n, s, o in zip(cropped_shape, scale, offset)]
    z_index = _nearest(at[0], zhw_shape[0])
    rows, cols = [(at[axis] + 0.5) * zhw_shape[axis] / grid_shape[axis] - 0.5 for axis in (1, 2)]
    cropped = _interpolate_classes(class_maps, zhw_shape[1:], z_index, rows, cols, n_classes, decode)

    oriented = meta["oriented_shape"]
    zhw = np.zeros([oriented[meta["slice_dim"]], *(oriented[d] for d in meta["plane_dims"])], dtype=np.uint8)
    zhw[tuple(slice(*cut) for cut in meta["crop_box"])] = cropped
    restored = from_slices(zhw, meta)
    if list(restored.shape) != list(meta["original_shape"]):
        raise RuntimeError(f"restored shape {list(restored.shape)} != original {meta['original_shape']}")
    return np.ascontiguousarray(restored)


def _interpolate_classes(class_maps, plane_shape, z_index, rows, cols, n_classes: int, decode) -> np.ndarray:
    """Slices ``z_index`` of per-class maps (``class_maps(z) -> (n, C, H, W)`` float tensor) sampled bilinearly
    at (rows x cols), then ``decode``d per voxel to uint8 (n, H, W).

    grid_sample with border padding samples exactly like the forward resize's pixel-centre geometry, at any
    positions; chunks of slices bound the memory (one float per class per output voxel of the chunk).
    """
    import torch
    import torch.nn.functional as F

    # Normalised coordinates (align_corners=False): pixel p of n sits at (2p + 1) / n - 1; grid order is (x, y).
    y, x = [torch.from_numpy((2 * c + 1) / n - 1).float() for c, n in ((rows, plane_shape[0]), (cols, plane_shape[1]))]
    grid = torch.stack(torch.meshgrid(y, x, indexing="ij")[::-1], dim=-1)
    out = np.empty((len(z_index), len(rows), len(cols)), dtype=np.uint8)
    per_slice = n_classes * (len(rows) * len(cols) + plane_shape[0] * plane_shape[1])
    for z0, z1 in _chunks(len(z_index), per_slice):
        maps = class_maps(z_index[z0:z1])
        grid_z = grid.expand(z1 - z0, *grid.shape)
        probability = F.grid_sample(maps, grid_z, mode="bilinear", padding_mode="border", align_corners=False)
        out[z0:z1] = decode(probability).numpy()
    return out
