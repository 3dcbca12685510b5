"""Preprocessing of one case into 2D training slices with MONAI, and the exact way back for predictions.

The chain is the seed's, each step configurable under ``preprocess``: load -> channel first -> orientation (RAS)
-> foreground crop (the body's bounding box, MONAI's CropForeground) -> optional resampling to a target spacing
-> intensity window to [0, 1] -> gamma -> in-plane resize (area); labels follow with nearest neighbour. Slices
run along ``slice_axis`` (axial: the last axis after orientation to RAS). ``seed_transforms`` keeps the seed's
MONAI dictionary Compose over the whole float volume as the reference that tests and benchmarks compare with.

``preprocess_case`` computes the same numbers (to an ulp; labels identically) at about the cost of reading the
file: it reads the stored integers once, orients them by axis flips and transposes (views), crops before any
conversion, turns the cropped integers into windowed, gamma-corrected float32 through a lookup table built with
MONAI's ScaleIntensityRange and the seed's power, and resizes chunks of slices with MONAI's Resize kernel in the
file's own memory layout. Labels are resized by gathering the source pixels MONAI's nearest-exact Resize picks.
docs/preprocessing.md has the figures.

Outputs in the case folder:
``image.npy`` float32 (Z, H, W) and ``label.npy`` uint8 (Z, H, W) for the NPY format (memory-mappable), or
``images/slice_NNNN.png`` and ``labels/slice_NNNN.png`` for PNG; ``slices.tsv`` (slice index, labels present,
foreground fraction) and ``meta.json`` with everything needed to put a prediction back on the original grid.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from segflow.io import atomic_dir, write_json

log = logging.getLogger(__name__)

# nibabel's (and meta.json's) world convention; MONAI's Orientation gets the same labels explicitly.
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
SLICE_AXES = {"sagittal": "LR", "coronal": "PA", "axial": "IS"}
DEFAULTS = {
    "format": "npy",
    "orientation": "RAS",
    "slice_axis": "axial",
    "spacing": None,
    "crop_foreground": True,
    "body_threshold": -500,
    "crop_margin": 4,
    "window": [-79, 304],
    "gamma": 1.5,
    "size": [256, 256],
    "png_compress_level": 1,
}
# float32 working set per chunk of slices: bounds memory; larger chunks were no faster (benchmarks/preprocess.py)
CHUNK_BYTES = 64 * 2**20


# ---------------------------------------------------------------------------------------------------- geometry


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


def _nearest(coords: np.ndarray, n: int) -> np.ndarray:
    return np.clip(np.rint(coords), 0, n - 1).astype(np.int64)  # grid_sample's nearest rounds half to even too


def _resize_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel of MONAI's nearest-exact Resize along one axis (asked of MONAI itself)."""
    from monai.transforms import Resize

    ramp = np.arange(n_in, dtype=np.float32)[None]  # exact in float32 for any image size
    return np.asarray(Resize(spatial_size=(n_out,), mode="nearest-exact")(ramp))[0].astype(np.int64)


# --------------------------------------------------------------------------------------------------- intensity


def read_voxels(nii) -> tuple[np.ndarray, tuple[float, float] | None]:
    """The stored voxel values, read and inflated once, and the NIfTI scaling (slope, inter) if not identity.

    Unscaled float64 comes back as float32: the chain works in float32 anyway (MONAI's loader casts), and the
    volume then takes half the memory from the moment it is read.
    """
    proxy = nii.dataobj
    if not hasattr(proxy, "get_unscaled"):  # an in-memory image
        return np.asanyarray(proxy), None
    slope, inter = float(proxy.slope), float(proxy.inter)
    scaling = None if (slope, inter) == (1.0, 0.0) else (slope, inter)
    if isinstance(proxy.file_like, (str, Path)) and str(proxy.file_like).endswith(".gz"):
        narrow = scaling is None and np.dtype(proxy.dtype).kind == "f" and np.dtype(proxy.dtype).itemsize > 4
        return _inflate_stored(proxy, narrow), scaling
    return proxy.get_unscaled(), scaling  # uncompressed: nibabel memory-maps it


def _inflate_stored(proxy, narrow: bool) -> np.ndarray:
    """The stored array of a .nii.gz, inflated by zlib straight into its final buffer (float32 if ``narrow``).

    nibabel reads through Python's GzipFile, which (before Python 3.12) has no readinto of its own: the whole
    volume is inflated into one bytes object and then copied, so reading holds it twice and pays a Python call
    per 8 KiB of data. This holds it once and calls zlib per 16 MiB.
    """
    dtype, count = np.dtype(proxy.dtype), int(np.prod(proxy.shape))
    pieces = _inflated(proxy.file_like, int(proxy.offset), count * dtype.itemsize)
    if not narrow:
        buffer = bytearray(count * dtype.itemsize)
        at = 0
        for piece in pieces:
            buffer[at : at + len(piece)] = piece
            at += len(piece)
        return np.ndarray(proxy.shape, dtype=dtype, buffer=buffer, order=proxy.order)
    flat, at, carry = np.empty(count, dtype=np.float32), 0, b""
    for piece in pieces:  # pieces need not end on a value boundary: carry the partial value over
        data = carry + piece
        whole = len(data) // dtype.itemsize
        flat[at : at + whole] = np.frombuffer(data, dtype=dtype, count=whole)
        at, carry = at + whole, data[whole * dtype.itemsize :]
    return flat.reshape(proxy.shape, order=proxy.order)


def _inflated(path, skip: int, size: int, piece: int = 2**24):
    """Yield the decompressed bytes of a gzip file after its first ``skip`` bytes (the header), ``size`` in all.

    Reads on to the end of the gzip member so that zlib checks its CRC; multi-member files are followed.
    """
    import zlib

    left, decompressor = size, zlib.decompressobj(wbits=31)
    with open(path, "rb") as handle:
        while not (decompressor.eof and left == 0):
            if decompressor.eof:  # the next member of a concatenated gzip file
                data, decompressor = decompressor.unused_data, zlib.decompressobj(wbits=31)
                data = data or handle.read(piece // 4)
            else:
                data = decompressor.unconsumed_tail or handle.read(piece // 4)
            if not data:
                raise EOFError(f"{path}: compressed data ends before the image does (truncated file?)")
            chunk = memoryview(decompressor.decompress(data, piece))
            dropped = min(skip, len(chunk))
            taken = min(len(chunk) - dropped, left)
            skip, left = skip - dropped, left - taken
            if taken:
                yield chunk[dropped : dropped + taken]


def to_hu(values: np.ndarray, scaling) -> np.ndarray:
    """Stored values to float32 HU the way MONAI's loader gets them (nibabel's read scaling, then float32)."""
    from nibabel.volumeutils import apply_read_scaling

    if scaling is not None:
        values = apply_read_scaling(values, np.asarray(scaling[0]), np.asarray(scaling[1]))
    return np.asarray(values, dtype=np.float32)


def intensity_transform(cfg: dict):
    """Window to [0, 1] and gamma on float32 HU: MONAI's ScaleIntensityRange and the power the seed applied."""
    import torch
    from monai.transforms import ScaleIntensityRange

    if cfg.get("zscore"):  # modality mri: statistics of this volume (segflow.normalise), set by preprocess_case
        from segflow.normalise import zscore_transform

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


def _chunks(n: int, slice_pixels: int):
    step = max(1, CHUNK_BYTES // (4 * max(1, slice_pixels)))
    for start in range(0, n, step):
        yield start, min(n, start + step)


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

    cfg = {**DEFAULTS, **cfg}
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
    if cfg["size"] is None:  # keep the (resampled) grid: the volumes of the 3D path (train.dims 3)
        cfg["size"] = resampling["shape"][1:] if resampling else [box[1].stop - box[1].start, box[2].stop - box[2].start]
    if cfg.get("modality") == "mri":  # percentile clipping and z-score per volume instead of the HU window
        from segflow.normalise import volume_statistics

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
        _write_slices(tmp, image_zhw, label_zhw, cfg["format"], int(cfg["png_compress_level"]))
        _write_slice_index(tmp / "slices.tsv", label_zhw)
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


def _write_slices(folder: Path, image_zhw: np.ndarray, label_zhw: np.ndarray, fmt: str, level: int = 1) -> None:
    if fmt == "npy":
        np.save(folder / "image.npy", image_zhw)
        np.save(folder / "label.npy", label_zhw)
        return
    write_png_slices(folder, image_zhw, label_zhw, level)


def write_png_slices(folder: Path, image_zhw: np.ndarray, label_zhw: np.ndarray, level: int = 6) -> None:
    """One 8-bit image PNG and one label PNG per slice, as the seed wrote them (PNG is lossless at any level)."""
    from PIL import Image

    (folder / "images").mkdir()
    (folder / "labels").mkdir()
    for index, (image, label) in enumerate(zip(image_zhw, label_zhw)):
        name = f"slice_{index:04d}.png"
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(folder / "images" / name, compress_level=level)
        Image.fromarray(label).save(folder / "labels" / name, compress_level=level)


def _write_slice_index(path: Path, label_zhw: np.ndarray) -> None:
    flat = label_zhw.reshape(len(label_zhw), -1)
    # One pass per label value (a handful), not a np.unique per slice.
    present = {v: (flat == v).any(axis=1) for v in range(1, int(flat.max(initial=0)) + 1)}
    fraction = np.count_nonzero(flat, axis=1) / max(1, flat.shape[1])
    lines = ["slice\tlabels\tforeground_fraction"]
    for index, share in enumerate(fraction):
        labels = ",".join(str(v) for v, rows in present.items() if rows[index])
        lines.append(f"{index}\t{labels}\t{share:.6f}")
    path.write_text("\n".join(lines) + "\n")


def load_case(case_dir: str | Path, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Read a preprocessed case as (image float32 (Z, H, W) in [0, 1], label uint8 (Z, H, W)), either format."""
    from segflow.io import read_json

    case_dir = Path(case_dir)
    fmt = read_json(case_dir / "meta.json")["format"]
    if fmt == "npy":
        mode = "r" if mmap else None
        return np.load(case_dir / "image.npy", mmap_mode=mode), np.load(case_dir / "label.npy", mmap_mode=mode)
    from PIL import Image

    images = sorted((case_dir / "images").glob("slice_*.png"))
    image = np.stack([np.asarray(Image.open(p), dtype=np.float32) / 255.0 for p in images])
    label = np.stack([np.asarray(Image.open(case_dir / "labels" / p.name), dtype=np.uint8) for p in images])
    return image, label


# ------------------------------------------------------------------------------------------------ the way back


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

    return _restore(class_maps, pred.shape, n_classes, meta)


def restore_probabilities(prob_zchw: np.ndarray, meta: dict) -> np.ndarray:
    """Labels on the original grid from a (Z, C, H, W) class-probability stack: the probabilities are resampled
    to every original voxel (bilinear in-plane, nearest across slices) and the argmax taken there, nnU-Net's
    export. Boundaries then fall between the network's pixels rather than on them."""
    prob = np.asarray(prob_zchw)

    def class_maps(z_index):
        import torch

        return torch.from_numpy(np.asarray(prob[z_index], dtype=np.float32))

    return _restore(class_maps, (prob.shape[0], *prob.shape[2:]), prob.shape[1], meta)


def _restore(class_maps, zhw_shape, n_classes: int, meta: dict) -> np.ndarray:
    """The way back shared by labels and probabilities: trace every cropped voxel to the prediction grid, sample
    the class maps there and take the argmax, then pad the crop with background and undo the orientation."""
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
    cropped = _interpolate_classes(class_maps, zhw_shape[1:], z_index, rows, cols, n_classes)

    oriented = meta["oriented_shape"]
    zhw = np.zeros([oriented[meta["slice_dim"]], *(oriented[d] for d in meta["plane_dims"])], dtype=np.uint8)
    zhw[tuple(slice(*cut) for cut in meta["crop_box"])] = cropped
    restored = from_slices(zhw, meta)
    if list(restored.shape) != list(meta["original_shape"]):
        raise RuntimeError(f"restored shape {list(restored.shape)} != original {meta['original_shape']}")
    return np.ascontiguousarray(restored)


def _interpolate_classes(class_maps, plane_shape, z_index, rows, cols, n_classes: int) -> np.ndarray:
    """Slices ``z_index`` of per-class maps (``class_maps(z) -> (n, C, H, W)`` float tensor) sampled bilinearly
    at (rows x cols), argmax per voxel.

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
        out[z0:z1] = probability.max(dim=1).indices.numpy()  # first maximum on ties, like argmax (10x faster)
    return out


# ------------------------------------------------------------------------------------------- the seed's chain


def seed_transforms(cfg: dict):
    """The seed's MONAI dictionary chain over the whole volume, kept as the reference for tests and benchmarks."""
    from monai.transforms import (
        Compose,
        CropForegroundd,
        EnsureChannelFirstd,
        Lambdad,
        LoadImaged,
        Orientationd,
        Resized,
        ScaleIntensityRanged,
    )

    cfg = {**DEFAULTS, **cfg}
    low, high = cfg["window"]
    gamma, threshold = float(cfg["gamma"]), float(cfg["body_threshold"])
    spatial_size = [-1, -1, -1]
    for dim, n in zip([d for d in range(3) if d != slice_dim(cfg)], cfg["size"]):
        spatial_size[dim] = int(n)
    keys = ["image", "label"]
    steps = [
        LoadImaged(keys=keys, reader="NibabelReader", image_only=True),
        EnsureChannelFirstd(keys=keys),
        Orientationd(keys=keys, axcodes=cfg["orientation"], labels=RAS_LABELS),
    ]
    if cfg["crop_foreground"]:
        steps.append(
            CropForegroundd(
                keys=keys,
                source_key="image",
                select_fn=lambda x: x > threshold,
                margin=int(cfg["crop_margin"]),
                allow_smaller=True,
            )
        )
    steps += [
        ScaleIntensityRanged(keys="image", a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True),
        Lambdad(keys="image", func=lambda x: x**gamma),
        Resized(keys=keys, spatial_size=spatial_size, mode=("area", "nearest-exact")),
    ]
    return Compose(steps)


def seed_preprocess(image_path, label_path, cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 (Z, H, W), label uint8 (Z, H, W)) through ``seed_transforms``."""
    cfg = {**DEFAULTS, **cfg}
    data = seed_transforms(cfg)({"image": str(image_path), "label": str(label_path)})
    k = slice_dim(cfg)
    image = np.moveaxis(np.asarray(data["image"][0], dtype=np.float32), k, 0)
    label = np.moveaxis(np.asarray(data["label"][0]), k, 0).round().astype(np.uint8)
    return np.ascontiguousarray(image), np.ascontiguousarray(label)
