"""Intensity normalisation for non-CT images (``modality: mri``): percentile clipping plus a z-score per volume.

CT keeps the seed's HU window and gamma (segflow.preprocess). MRI intensities have no physical unit and drift
between scanners and sessions, so nnU-Net normalises every non-CT image by its own statistics; segflow clips to
``preprocess.percentiles`` first, so that a few bright vessels or a hot coil corner do not set the scale. The
statistics are computed once per case on the cropped volume and recorded in meta.json (``zscore``); the transform
itself is a pure function of the voxel value, so the preprocessing's lookup-table and chunked paths use it as they
use the CT window.
"""

from __future__ import annotations

import numpy as np


def to_hu(values: np.ndarray, scaling) -> np.ndarray:
    """Stored values to float32 HU the way MONAI's loader gets them (nibabel's read scaling, then float32)."""
    from nibabel.volumeutils import apply_read_scaling

    if scaling is not None:
        values = apply_read_scaling(values, np.asarray(scaling[0]), np.asarray(scaling[1]))
    return np.asarray(values, dtype=np.float32)


# Percentiles of larger volumes are taken on every k-th voxel: the figures move by far less than the noise.
MAX_SAMPLE = 1 << 24


def volume_statistics(stored: np.ndarray, scaling, percentiles) -> dict:
    """Clip bounds (the percentiles) and the mean and standard deviation after clipping, of one volume."""
    step = max(1, int(np.ceil(stored.size / MAX_SAMPLE)))
    values = to_hu(np.asarray(stored).reshape(-1)[::step], scaling).astype(np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("the image has no finite voxels to normalise")
    low, high = (float(v) for v in np.percentile(values, list(percentiles)))
    clipped = np.clip(values, low, high)
    mean, std = float(clipped.mean()), float(clipped.std())
    return {
        "percentiles": [float(p) for p in percentiles],
        "low": low,
        "high": high,
        "mean": mean,
        "std": std if std > 1e-6 else 1.0,
    }


def zscore_transform(stats: dict):
    """float32 intensities -> clipped to (low, high), minus the mean, over the standard deviation (float32)."""
    low, high = np.float32(stats["low"]), np.float32(stats["high"])
    mean, std = np.float32(stats["mean"]), np.float32(stats["std"])

    def apply(values: np.ndarray) -> np.ndarray:
        out = np.clip(np.asarray(values, dtype=np.float32), low, high)
        out -= mean
        out /= std
        return out

    return apply
