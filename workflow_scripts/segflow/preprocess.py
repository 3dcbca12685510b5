"""The forward chain of preprocess_case: one raw case into 2D training slices with MONAI.

The chain is the seed's, each step configurable under ``preprocess``: load -> channel first -> orientation (RAS)
-> foreground crop (the body's bounding box, MONAI's CropForeground) -> optional resampling to a target spacing
-> intensity window to [0, 1] -> gamma -> in-plane resize (area); labels follow with nearest neighbour. Slices
run along ``slice_axis`` (axial: the last axis after orientation to RAS). The seed's own MONAI dictionary Compose
over the whole float volume, the reference this is compared with, lives in tests/seed_chain.py.

``preprocess_case`` computes the same numbers (to an ulp; labels identically) at about the cost of reading the
file: it reads the stored integers once, orients them by axis flips and transposes (views), crops before any
conversion, turns the cropped integers into windowed, gamma-corrected float32 through a lookup table built with
MONAI's ScaleIntensityRange and the seed's power, and resizes chunks of slices with MONAI's Resize kernel in the
file's own memory layout. Labels are resized by gathering the source pixels MONAI's nearest-exact Resize picks.
docs/preprocessing.md has the figures.

The case folder's layout is segflow.cases'; ``meta.json`` holds everything segflow.restore needs to put a
prediction back on the original grid. Shared geometry: segflow.geometry; the fast NIfTI reader: segflow.nifti_reader.
"""

from __future__ import annotations

import logging

import numpy as np

from segflow.cases import write_slice_index, write_slices
from segflow.geometry import _chunks, _nearest, plan_grid, to_slices
from segflow.io import atomic_dir, write_json
from segflow.nifti_reader import read_voxels
from segflow.normalise import to_hu, volume_statistics, zscore_transform

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------- geometry


def foreground_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Bounding box of the True voxels of a mask plus ``margin`` (MONAI's), clipped to the array; all if empty."""
    from monai.transforms.utils import generate_spatial_bounding_box

    start, end = generate_spatial_bounding_box(mask[None], margin=margin, allow_smaller=True)
    if any(e <= s for s, e in zip(start, end)):  # nothing above threshold: keep everything
        start, end = [0] * mask.ndim, list(mask.shape)
    # The margin must never reach past the image: a negative start would silently wrap around in slicing.
    return tuple(slice(max(0, int(s)), min(n, int(e))) for s, e, n in zip(start, end, mask.shape))


def plan_resampling(grid: dict, box: tuple[slice, ...], cfg: dict) -> dict | None:
    """Per-axis map from the resampled grid to the cropped oriented grid for ``preprocess.spacing``, or None.

    The output grid is the one MONAI's Spacing (default settings) would build for the cropped block: its shape
    and origin come from MONAI's own ``zoom_affine`` and ``compute_shape_offset``. After orientation the mapping
    between the two grids is a scale and an offset per axis, which lets the resampling run separably, in chunks.
    """
    if not cfg.get("spacing"):
        return None
    from monai.data.utils import compute_shape_offset, zoom_affine

    start, shape = [0, 0, 0], list(grid["oriented_shape"])
    for dim, cut in zip([grid["slice_dim"], *grid["plane_dims"]], box):
        start[dim], shape[dim] = cut.start, cut.stop - cut.start
    affine = grid["oriented_affine"].copy()
    affine[:3, 3] += affine[:3, :3] @ start
    new_affine = zoom_affine(affine, cfg["spacing"], diagonal=False)
    out_shape, offset = compute_shape_offset(shape, affine, new_affine)
    new_affine[:3, 3] = offset
    xform = np.linalg.solve(affine, new_affine)  # resampled voxel -> cropped voxel
    if not np.allclose(xform[:3, :3], np.diag(np.diag(xform[:3, :3])), atol=1e-6):
        raise ValueError("resampling after orientation must be axis-aligned; this affine is not")
    order = [grid["slice_dim"], *grid["plane_dims"]]
    return {
        "spacing": [float(s) for s in cfg["spacing"]],
        "shape": [int(out_shape[d]) for d in order],  # (slices, rows, columns)
        "scale": [float(xform[d, d]) for d in order],
        "offset": [float(xform[d, 3]) for d in order],
        "affine": new_affine.tolist(),  # of the cropped, resampled block, oriented axis order
    }


def _linear_taps(coords: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neighbours and weight for linear interpolation at ``coords`` (voxel units), clamped at the border: the
    taps of torch's grid_sample with border padding, which MONAI's Spacing uses."""
    x = np.clip(coords, 0, n - 1)
    low = np.floor(x).astype(np.int64)
    return low, np.minimum(low + 1, n - 1), (x - low).astype(np.float32)


def _resize_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel of MONAI's nearest-exact Resize along one axis (asked of MONAI itself)."""
    from monai.transforms import Resize

    ramp = np.arange(n_in, dtype=np.float32)[None]  # exact in float32 for any image size
    return np.asarray(Resize(spatial_size=(n_out,), mode="nearest-exact")(ramp))[0].astype(np.int64)


# --------------------------------------------------------------------------------------------------- intensity


def intensity_transform(cfg: dict):
    """Window to [0, 1] and gamma on float32 HU: MONAI's ScaleIntensityRange and the power the seed applied."""
    import torch
    from monai.transforms import ScaleIntensityRange

    if cfg.get("zscore"):  # modality mri: statistics of this volume (segflow.normalise), set by preprocess_case
        return zscore_transform(cfg["zscore"])
    low, high = cfg["window"]
    gamma = float(cfg["gamma"])
    scale = ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)

    def apply(hu: np.ndarray) -> np.ndarray:
        # An exact power law on [0, 1]; MONAI's AdjustContrast would rescale by each volume's own min/max.
        out = torch.as_tensor(scale(torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))))
        return out.pow_(gamma).numpy()  # in place on scale's fresh output: one chunk-sized copy less

    return apply


def intensity_lut(dtype: np.dtype, scaling, transform) -> np.ndarray | None:
    """For 8- and 16-bit stored integers: ``transform`` of every possible value, indexed by its bit pattern.

    Looking a value up gives bit for bit what the chain computes on the float32 volume, at the cost of one
    gather, and never materialises the float volume.
    """
    if dtype.kind not in "iu" or dtype.itemsize > 2:
        return None
    codes = np.arange(2 ** (8 * dtype.itemsize), dtype=f"u{dtype.itemsize}").view(f"{dtype.kind}{dtype.itemsize}")
    return transform(to_hu(codes, scaling))


def _unsigned(array: np.ndarray) -> np.ndarray:
    """The same bytes as unsigned integers (a view), to index a lookup table by bit pattern."""
    return array.view(array.dtype.str.replace("i", "u"))


# -------------------------------------------------------------------------------------------------- the stacks


def image_stack(plane: np.ndarray, scaling, cfg: dict, resampling: dict | None = None) -> np.ndarray:
    """Cropped stored values (Z, h, w), any layout -> windowed, gamma-corrected, resized float32 (Z', H, W)."""
    size = [int(n) for n in cfg["size"]]
    transform = intensity_transform(cfg)
    if resampling:
        return _resampled_image_stack(plane, scaling, transform, size, resampling)
    lut = intensity_lut(plane.dtype, scaling, transform)
    # Walk the stored array in its own memory order (KiTS files keep the slice axis innermost, most others
    # outermost): reading it across the grain costs more than everything else together.
    stored, flips, order = _memory_order(plane)
    z_at, n = order.index(0), plane.shape[0]
    out = np.empty((n, *size), dtype=np.float32)
    copies = 1 if lut is not None else 2  # the float path holds the chunk as HU and as windowed values
    for c0, c1 in _chunks(n, copies * plane.shape[1] * plane.shape[2]):
        chunk = stored[(slice(None),) * z_at + (slice(c0, c1),)]
        block = lut[_unsigned(chunk)] if lut is not None else transform(to_hu(chunk, scaling))
        resized = _resize_area(block, order, size)
        # Area resizing commutes with flips, so the flips the memory order undid are redone on the small result.
        out[slice(n - c1, n - c0) if flips[0] else slice(c0, c1)] = resized[_reverse(flips)]
    return out


def _memory_order(view: np.ndarray) -> tuple[np.ndarray, list[bool], list[int]]:
    """The same voxels with every axis running forward in memory, axes ordered outermost first; and how."""
    flips = [stride < 0 for stride in view.strides]
    view = view[_reverse(flips)]
    order = sorted(range(view.ndim), key=lambda axis: -view.strides[axis])
    return view.transpose(order), flips, order


def _reverse(flags) -> tuple[slice, ...]:
    return tuple(slice(None, None, -1) if flag else slice(None) for flag in flags)


def _resize_area(block: np.ndarray, order: list[int], size: list[int]) -> np.ndarray:
    """MONAI's Resize(mode="area") of each slice of a C-contiguous block whose axes are (slice, row, column)[order].

    MONAI's Resize is ``F.interpolate(img.unsqueeze(0), mode="area")``. Called here directly instead, with the
    block in its memory layout and an explicit batch stride: unsqueeze would give a slice-innermost block an
    ambiguous batch stride, and torch would then copy it to NCHW first instead of using its channels-last
    kernel (several times slower). The result is the same to the bit (tests/test_preprocess.py).
    """
    import torch
    import torch.nn.functional as F

    plane_axes = [axis for axis in order if axis != 0]  # rows and columns, in the order they lie in memory
    tensor = torch.from_numpy(block).permute(order.index(0), *(order.index(axis) for axis in plane_axes))
    batch = tensor.as_strided((1, *tensor.shape), (tensor.numel(), *tensor.stride()))
    resized = F.interpolate(batch, size=[size[axis - 1] for axis in plane_axes], mode="area")[0].numpy()
    return resized if plane_axes == [1, 2] else resized.transpose(0, 2, 1)


def _resampled_image_stack(plane, scaling, transform, size, resampling: dict) -> np.ndarray:
    """The optional path: resample HU linearly chunk by chunk, then window, gamma and MONAI's Resize."""
    import torch
    from monai.transforms import Resize

    resize = Resize(spatial_size=size, mode="area")  # the slice chunk is the channel axis: a 2D resize per slice
    n_out, rows, cols = resampling["shape"]
    out = np.empty((n_out, *size), dtype=np.float32)
    for z0, z1 in _chunks(n_out, rows * cols):
        block = transform(_resample_block(plane, z0, z1, resampling, scaling))
        out[z0:z1] = torch.as_tensor(resize(torch.from_numpy(block))).numpy()
    return out


def _resample_block(plane, z0: int, z1: int, resampling: dict, scaling) -> np.ndarray:
    """Output slices z0:z1 of the HU volume resampled (MONAI Spacing's trilinear, done separably)."""
    taps = [
        _linear_taps(np.arange(start, stop) * scale + offset, n_in)
        for (start, stop), scale, offset, n_in in zip(
            [(z0, z1), (0, resampling["shape"][1]), (0, resampling["shape"][2])],
            resampling["scale"],
            resampling["offset"],
            plane.shape,
        )
    ]
    low, high, weight = taps[0]
    below, above = to_hu(plane[low], scaling), to_hu(plane[high], scaling)
    block = below + (above - below) * weight[:, None, None]
    for axis, (low, high, weight) in ((1, taps[1]), (2, taps[2])):
        shape = [1, 1, 1]
        shape[axis] = -1
        below, above = np.take(block, low, axis=axis), np.take(block, high, axis=axis)
        block = below + (above - below) * weight.reshape(shape)
    return block


def label_stack(plane: np.ndarray, cfg: dict, resampling: dict | None = None) -> np.ndarray:
    """Cropped labels (Z, h, w) -> resized uint8 (Z', H, W): nearest neighbour is a pure gather of source pixels.

    The source pixel of each output pixel is the one MONAI's nearest-exact Resize picks (pixel centres; torch's
    plain "nearest" shifts labels by half a pixel). With resampling, each output pixel centre is traced through
    resize and resampling and rounded once: rounding twice (Spacing's nearest, then Resize's) jitters edges by
    up to a source voxel, which costs several points of Dice on a kidney.
    """
    size = [int(n) for n in cfg["size"]]
    if resampling:
        shape, scale, offset = resampling["shape"], resampling["scale"], resampling["offset"]
        centres = [np.arange(shape[0], dtype=np.float64)]
        centres += [(np.arange(n_out) + 0.5) * n / n_out - 0.5 for n, n_out in zip(shape[1:], size)]
        index = [_nearest(c * s + o, n) for c, s, o, n in zip(centres, scale, offset, plane.shape)]
    else:
        index = [None, _resize_index(plane.shape[1], size[0]), _resize_index(plane.shape[2], size[1])]
    # Gather axis by axis in memory order, outermost first: whole rows and planes move, never single voxels.
    block, flips, order = _memory_order(plane)
    for position, axis in enumerate(order):
        if index[axis] is not None:
            taken = plane.shape[axis] - 1 - index[axis] if flips[axis] else index[axis]
            block = np.take(block, taken, axis=position)
    block = block.transpose(np.argsort(order))
    if flips[0] and index[0] is None:
        block = block[::-1]
    return np.ascontiguousarray(np.rint(block) if block.dtype.kind == "f" else block, dtype=np.uint8)


# ----------------------------------------------------------------------------------------------------- the case


def preprocess_case(image_path, label_path, out_dir, cfg: dict) -> dict:
    """Preprocess one case into ``out_dir`` (written atomically); return its ``meta`` dictionary."""
    import nibabel as nib

    if cfg["format"] not in ("npy", "png"):
        raise ValueError(f"preprocess.format must be npy or png, not {cfg['format']!r}")
    image_nii = nib.load(str(image_path))
    if len(image_nii.shape) != 3:
        raise ValueError(f"{image_path}: expected a 3D image, got shape {list(image_nii.shape)}")
    grid = plan_grid(image_nii.affine, image_nii.shape, cfg)

    stored, scaling = read_voxels(image_nii)
    hu_zhw = to_slices(stored, grid)
    box = _crop_box(hu_zhw, scaling, cfg)
    resampling = plan_resampling(grid, box, cfg)
    cfg = dict(cfg)  # the per-case choices below (size, zscore) must not leak into the caller's config
    if cfg["size"] is None:  # keep the (resampled) grid: the volumes of the 3D path (train.dims 3)
        cfg["size"] = (
            resampling["shape"][1:] if resampling else [box[1].stop - box[1].start, box[2].stop - box[2].start]
        )
    if cfg.get("modality") == "mri":  # percentile clipping and z-score per volume instead of the HU window
        cfg["zscore"] = volume_statistics(hu_zhw[box], scaling, cfg["percentiles"])
    image_zhw = image_stack(hu_zhw[box], scaling, cfg, resampling)
    del stored, hu_zhw  # free the image before the labels are read: the peak is one volume, not two

    label_nii = nib.load(str(label_path))
    if tuple(label_nii.shape) != tuple(image_nii.shape):
        raise ValueError(f"{label_path}: shape {list(label_nii.shape)} != image {list(image_nii.shape)}")
    labels, label_scaling = read_voxels(label_nii)
    if label_scaling is not None:  # rare for labels, but the stored values are then not the label values
        labels = to_hu(labels, label_scaling)
    label_zhw = label_stack(to_slices(labels, grid)[box], cfg, resampling)

    oriented_zooms = np.sqrt((grid["oriented_affine"][:3, :3] ** 2).sum(axis=0))
    meta = {
        "original_shape": [int(n) for n in image_nii.shape],
        "original_affine": np.asarray(image_nii.affine).tolist(),
        "original_axcodes": "".join(nib.aff2axcodes(image_nii.affine)),
        "original_spacing": [round(float(z), 6) for z in image_nii.header.get_zooms()[:3]],
        "original_dtype": str(image_nii.get_data_dtype()),
        "axcodes": cfg["orientation"],
        "oriented_shape": grid["oriented_shape"],
        "oriented_affine": grid["oriented_affine"].tolist(),
        "oriented_spacing": [round(float(z), 6) for z in oriented_zooms],
        "slice_axis": cfg["slice_axis"],
        "slice_dim": grid["slice_dim"],
        "plane_dims": grid["plane_dims"],
        "crop_box": [[cut.start, cut.stop] for cut in box],  # (slices, rows, columns) on the oriented grid
        "cropped_shape": [cut.stop - cut.start for cut in box],
        "resampling": resampling,
        "size": [int(n) for n in cfg["size"]],
        "n_slices": int(image_zhw.shape[0]),
        "format": cfg["format"],
        "window": list(cfg["window"]),
        "gamma": float(cfg["gamma"]),
    }
    if cfg.get("zscore"):  # only for MRI: CT cases' meta.json stays as it was
        meta.update(modality="mri", zscore=cfg["zscore"])
    with atomic_dir(out_dir) as tmp:
        write_slices(tmp, image_zhw, label_zhw, cfg["format"], int(cfg["png_compress_level"]))
        write_slice_index(tmp / "slices.tsv", label_zhw)
        write_json(tmp / "meta.json", meta)
    return meta


def _crop_box(hu_zhw: np.ndarray, scaling, cfg: dict) -> tuple[slice, slice, slice]:
    """The seed's CropForeground box (voxels above ``body_threshold`` HU, plus the margin) in (slice, row, col)."""
    if not cfg["crop_foreground"]:
        return tuple(slice(0, n) for n in hu_zhw.shape)
    # Any voxel above the threshold in a line <=> the line's brightest voxel is; so the box comes from the
    # brightest voxel through the slices and in each slice: reductions of the stored values, no float or
    # boolean volume. fmax/fmin skip NaN.
    reduce = np.fmin if scaling is not None and scaling[0] < 0 else np.fmax
    threshold, margin = cfg["body_threshold"], int(cfg["crop_margin"])
    rows, cols = foreground_box(to_hu(reduce.reduce(hu_zhw, axis=0), scaling) > threshold, margin)
    (slices,) = foreground_box(to_hu(reduce.reduce(hu_zhw[:, rows, cols], axis=(1, 2)), scaling) > threshold, margin)
    return slices, rows, cols
