"""The grid both ways share: orientation to the configured axis codes, the slicing axis, and chunking.

Preprocessing (segflow.preprocess) goes from the file's voxel grid to (slice, row, column) stacks on the oriented
grid; the way back (segflow.restore) returns from them. What both directions must agree on lives here, so that an
edit to either direction alone reruns only the rules that use it.
"""

from __future__ import annotations

import numpy as np

# nibabel's (and meta.json's) world convention; MONAI's Orientation gets the same labels explicitly.
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
SLICE_AXES = {"sagittal": "LR", "coronal": "PA", "axial": "IS"}
# float32 working set per chunk of slices: bounds memory; larger chunks were no faster (benchmarks/preprocess.py)
CHUNK_BYTES = 64 * 2**20


def slice_dim(cfg: dict) -> int:
    """Index of the slicing axis among the oriented axes (the axis whose code is one of SLICE_AXES' letters)."""
    letters = SLICE_AXES[cfg["slice_axis"]]
    return next(i for i, code in enumerate(cfg["orientation"]) if code in letters)


def plan_grid(affine: np.ndarray, shape, cfg: dict) -> dict:
    """The orientation step as a nibabel orientation transform (what MONAI's Orientation applies) and its result."""
    import nibabel as nib

    ornt = nib.orientations
    transform = ornt.ornt_transform(ornt.io_orientation(affine), ornt.axcodes2ornt(cfg["orientation"], RAS_LABELS))
    oriented_shape = [0, 0, 0]
    for axis, (new_axis, _) in enumerate(transform):
        oriented_shape[int(new_axis)] = int(shape[axis])
    oriented_affine = np.asarray(affine, dtype=np.float64) @ ornt.inv_ornt_aff(transform, shape)
    k = slice_dim(cfg)
    return {
        "transform": transform,
        "oriented_shape": oriented_shape,
        "oriented_affine": oriented_affine,
        "slice_dim": k,
        "plane_dims": [d for d in range(3) if d != k],
    }


def to_slices(array: np.ndarray, grid: dict) -> np.ndarray:
    """View of a volume on the oriented grid as (slice, row, column): flips and transposes only, no copy."""
    import nibabel as nib

    return np.moveaxis(nib.orientations.apply_orientation(array, grid["transform"]), grid["slice_dim"], 0)


def from_slices(zhw: np.ndarray, meta: dict) -> np.ndarray:
    """Inverse of ``to_slices``: a (slice, row, column) stack on the oriented grid back to the file's axis order."""
    import nibabel as nib

    ornt = nib.orientations
    oriented = np.moveaxis(zhw, 0, meta["slice_dim"])
    back = ornt.ornt_transform(
        ornt.axcodes2ornt(meta["axcodes"], RAS_LABELS), ornt.io_orientation(np.asarray(meta["original_affine"]))
    )
    return ornt.apply_orientation(oriented, back)


def _nearest(coords: np.ndarray, n: int) -> np.ndarray:
    return np.clip(np.rint(coords), 0, n - 1).astype(np.int64)  # grid_sample's nearest rounds half to even too


def _chunks(n: int, slice_pixels: int):
    step = max(1, CHUNK_BYTES // (4 * max(1, slice_pixels)))
    for start in range(0, n, step):
        yield start, min(n, start + step)
