"""Preprocessing of one case into 2D training slices with MONAI, and the exact way back for predictions.

The chain is the seed's (``seed_transforms`` keeps it as a MONAI dictionary Compose, the reference the tests and
``benchmarks/preprocess.py`` compare against): load -> channel first -> orientation (RAS) -> optional resampling
to a target spacing -> in-plane foreground crop on a body threshold -> intensity window to [0, 1] -> gamma ->
in-plane resize (area); labels follow with nearest neighbour. Slices run along ``slice_axis`` (axial: the last
axis after orientation to RAS).

``preprocess_case`` produces the same numbers without ever holding the volume as float: it reads the stored
integers once, does the orientation as axis flips/transposes of that array (views), crops before any conversion,
turns the cropped integers into windowed, gamma-corrected float32 through a lookup table built by MONAI's own
ScaleIntensityRange and power, and resizes slice chunks with MONAI's Resize. Labels are resized by gathering the
source pixels MONAI's nearest-exact Resize would pick. See docs/preprocessing.md for the figures.

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
CHUNK_BYTES = 64 * 2**20  # float32 working set per slice chunk: bounds memory, large enough to keep torch busy


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


def foreground_box(projection: np.ndarray, margin: int) -> tuple[slice, slice]:
    """Bounding box of the True pixels of a 2D mask plus ``margin``, clipped to the image; all of it if empty."""
    from monai.transforms.utils import generate_spatial_bounding_box

    start, end = generate_spatial_bounding_box(projection[None], margin=margin, allow_smaller=True)
    if any(e <= s for s, e in zip(start, end)):  # nothing above threshold: keep the whole plane
        start, end = [0, 0], list(projection.shape)
    # The margin must never reach past the image: a negative start would silently wrap around in slicing.
    start = [max(0, int(s)) for s in start]
    end = [min(n, int(e)) for n, e in zip(projection.shape, end)]
    return slice(start[0], end[0]), slice(start[1], end[1])


def plan_resampling(grid: dict, box: tuple[slice, slice], cfg: dict) -> dict | None:
    """Per-axis map from the resampled grid to the cropped oriented grid for ``preprocess.spacing``, or None.

    The output grid is the one MONAI's Spacing (default settings) would build for the cropped block: its shape
    and origin come from MONAI's own ``zoom_affine`` and ``compute_shape_offset``. After orientation the mapping
    between the two grids is a scale and an offset per axis, which lets the resampling run separably, in chunks.
    """
    if not cfg.get("spacing"):
        return None
    from monai.data.utils import compute_shape_offset, zoom_affine

    start, shape = [0, 0, 0], list(grid["oriented_shape"])
    for dim, cut in zip(grid["plane_dims"], box):
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
    """Neighbours and weight for linear interpolation at ``coords`` (voxel units), clamped at the border.

    The same taps as torch's grid_sample (border padding) and bilinear interpolate (align_corners=False).
    """
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
    """The stored voxel values, read and inflated once, and the NIfTI scaling (slope, inter) if not identity."""
    proxy = nii.dataobj
    if not hasattr(proxy, "get_unscaled"):  # an in-memory image
        return np.asanyarray(proxy), None
    slope, inter = float(proxy.slope), float(proxy.inter)
    return proxy.get_unscaled(), None if (slope, inter) == (1.0, 0.0) else (slope, inter)


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

    low, high = cfg["window"]
    gamma = float(cfg["gamma"])
    scale = ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)

    def apply(hu: np.ndarray) -> np.ndarray:
        # An exact power law on [0, 1]; MONAI's AdjustContrast would rescale by each volume's own min/max.
        out = torch.as_tensor(scale(torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))))
        return (out**gamma).numpy()

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
    import torch
    from monai.transforms import Resize

    size = [int(n) for n in cfg["size"]]
    transform = intensity_transform(cfg)
    lut = None if resampling else intensity_lut(plane.dtype, scaling, transform)
    resize = Resize(spatial_size=size, mode="area")  # the slice chunk is the channel axis: a 2D resize per slice
    n_out = resampling["shape"][0] if resampling else plane.shape[0]
    out = np.empty((n_out, *size), dtype=np.float32)
    for z0, z1 in _chunks(n_out, plane.shape[1] * plane.shape[2]):
        if resampling:
            block = transform(_resample_block(plane, z0, z1, resampling, scaling))
        elif lut is not None:
            block = lut[_unsigned(plane[z0:z1])]
        else:
            block = transform(to_hu(plane[z0:z1], scaling))
        out[z0:z1] = torch.as_tensor(resize(torch.from_numpy(block))).numpy()
    return out


def _resample_block(plane, z0: int, z1: int, resampling: dict, scaling) -> np.ndarray:
    """Output slices z0:z1 of the HU volume resampled linearly (MONAI Spacing's bilinear) onto the new grid."""
    taps = [
        _linear_taps(np.arange(n) * scale + offset, n_in)
        for n, scale, offset, n_in in zip(resampling["shape"], resampling["scale"], resampling["offset"], plane.shape)
    ]
    low, high, weight = (t[z0:z1] for t in taps[0])
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
    plain "nearest" shifts labels by half a pixel), composed with nearest-neighbour resampling if configured.
    """
    size = [int(n) for n in cfg["size"]]
    if resampling:
        (n_z, n_h, n_w), scale, offset = resampling["shape"], resampling["scale"], resampling["offset"]
        z_index = _nearest(np.arange(n_z) * scale[0] + offset[0], plane.shape[0])
        rows = _nearest(_resize_index(n_h, size[0]) * scale[1] + offset[1], plane.shape[1])
        cols = _nearest(_resize_index(n_w, size[1]) * scale[2] + offset[2], plane.shape[2])
    else:
        z_index = np.arange(plane.shape[0])
        rows, cols = _resize_index(plane.shape[1], size[0]), _resize_index(plane.shape[2], size[1])
    out = np.empty((len(z_index), *size), dtype=np.uint8)
    for z0, z1 in _chunks(len(z_index), size[0] * size[1]):
        block = plane[np.ix_(z_index[z0:z1], rows, cols)]
        out[z0:z1] = np.rint(block) if block.dtype.kind == "f" else block
    return out


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
    image_zhw = image_stack(hu_zhw[:, box[0], box[1]], scaling, cfg, resampling)
    cropped_shape = [hu_zhw.shape[0], box[0].stop - box[0].start, box[1].stop - box[1].start]
    del stored, hu_zhw  # free the image before the labels are read: the peak is one volume, not two

    label_nii = nib.load(str(label_path))
    if tuple(label_nii.shape) != tuple(image_nii.shape):
        raise ValueError(f"{label_path}: shape {list(label_nii.shape)} != image {list(image_nii.shape)}")
    label_zhw = label_stack(to_slices(np.asanyarray(label_nii.dataobj), grid)[:, box[0], box[1]], cfg, resampling)

    oriented_zooms = np.sqrt((grid["oriented_affine"][:3, :3] ** 2).sum(axis=0))
    meta = {
        "original_shape": [int(n) for n in image_nii.shape],
        "original_affine": np.asarray(image_nii.affine).tolist(),
        "original_axcodes": "".join(nib.aff2axcodes(image_nii.affine)),
        "original_dtype": str(image_nii.get_data_dtype()),
        "axcodes": cfg["orientation"],
        "oriented_shape": grid["oriented_shape"],
        "oriented_affine": grid["oriented_affine"].tolist(),
        "oriented_spacing": [round(float(z), 6) for z in oriented_zooms],
        "slice_axis": cfg["slice_axis"],
        "slice_dim": grid["slice_dim"],
        "plane_dims": grid["plane_dims"],
        "crop_box": [[box[0].start, box[0].stop], [box[1].start, box[1].stop]],
        "cropped_shape": cropped_shape,  # (slices, rows, columns) on the oriented grid
        "resampling": resampling,
        "size": [int(n) for n in cfg["size"]],
        "n_slices": int(image_zhw.shape[0]),
        "format": cfg["format"],
        "window": list(cfg["window"]),
        "gamma": float(cfg["gamma"]),
    }
    with atomic_dir(out_dir) as tmp:
        _write_slices(tmp, image_zhw, label_zhw, cfg["format"], int(cfg["png_compress_level"]))
        _write_slice_index(tmp / "slices.tsv", label_zhw)
        write_json(tmp / "meta.json", meta)
    return meta


def _crop_box(hu_zhw: np.ndarray, scaling, cfg: dict) -> tuple[slice, slice]:
    if not cfg["crop_foreground"]:
        return slice(0, hu_zhw.shape[1]), slice(0, hu_zhw.shape[2])
    # A voxel above the threshold anywhere in the stack <=> the brightest voxel through the stack is above it;
    # one reduction over the stored integers, no float or boolean volume. fmax/fmin skip NaN.
    reduce = np.fmin if scaling is not None and scaling[0] < 0 else np.fmax
    brightest = to_hu(reduce.reduce(hu_zhw, axis=0), scaling)
    return foreground_box(brightest > cfg["body_threshold"], int(cfg["crop_margin"]))


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
    values = [v for v in np.flatnonzero(np.bincount(label_zhw.ravel(), minlength=256)) if v != 0]
    present = np.stack([(flat == v).any(axis=1) for v in values], axis=1) if values else np.zeros((len(flat), 0), bool)
    fraction = np.count_nonzero(flat, axis=1) / max(1, flat.shape[1])
    lines = ["slice\tlabels\tforeground_fraction"]
    for index, (row, share) in enumerate(zip(present, fraction)):
        labels = ",".join(str(v) for v, here in zip(values, row) if here)
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
    n_slices, n_rows, n_cols = meta["cropped_shape"]
    resampling = meta.get("resampling")
    if resampling:
        grid_shape, scale, offset = resampling["shape"], resampling["scale"], resampling["offset"]
    else:
        grid_shape, scale, offset = meta["cropped_shape"], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]
    # Cropped voxel i sits at (i - offset) / scale on the resampled grid, and resampled pixel y sits at
    # (y + 0.5) * size / n - 0.5 in the resized slice (pixel centres, as area and nearest-exact resize map them).
    at = [(np.arange(n) - o) / s for n, s, o in zip((n_slices, n_rows, n_cols), scale, offset)]
    z_index = _nearest(at[0], pred.shape[0])
    rows = _linear_taps((at[1] + 0.5) * pred.shape[1] / grid_shape[1] - 0.5, pred.shape[1])
    cols = _linear_taps((at[2] + 0.5) * pred.shape[2] / grid_shape[2] - 0.5, pred.shape[2])
    cropped = _interpolate_labels(pred, z_index, rows, cols, max(int(meta.get("n_classes", 0)), int(pred.max()) + 1))

    oriented = meta["oriented_shape"]
    zhw = np.zeros([oriented[meta["slice_dim"]], *(oriented[d] for d in meta["plane_dims"])], dtype=np.uint8)
    (r0, r1), (c0, c1) = meta["crop_box"]
    zhw[:, r0:r1, c0:c1] = cropped
    restored = from_slices(zhw, meta)
    if list(restored.shape) != list(meta["original_shape"]):
        raise RuntimeError(f"restored shape {list(restored.shape)} != original {meta['original_shape']}")
    return np.ascontiguousarray(restored)


def _interpolate_labels(pred, z_index, rows, cols, n_classes: int) -> np.ndarray:
    """Per-class linear interpolation at the given taps and argmax, in chunks of output slices."""
    import torch
    import torch.nn.functional as F

    out = np.empty((len(z_index), len(rows[0]), len(cols[0])), dtype=np.uint8)
    (r_low, r_high, r_w), (c_low, c_high, c_w) = [[torch.from_numpy(t) for t in taps] for taps in (rows, cols)]
    per_slice = n_classes * len(rows[0]) * max(pred.shape[2], len(cols[0]))
    for z0, z1 in _chunks(len(z_index), per_slice):
        block = torch.from_numpy(np.asarray(pred[z_index[z0:z1]], dtype=np.int64))
        onehot = F.one_hot(block, n_classes).permute(0, 3, 1, 2).float()  # (z, class, row, column)
        onehot = torch.lerp(onehot[:, :, r_low], onehot[:, :, r_high], r_w[:, None])
        onehot = torch.lerp(onehot[..., c_low], onehot[..., c_high], c_w)
        out[z0:z1] = onehot.argmax(1).numpy()
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
