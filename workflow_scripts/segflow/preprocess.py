"""Preprocessing of one case into 2D training slices with MONAI, and the exact way back for predictions.

Chain (each step configurable under ``preprocess``): load -> channel first -> orientation (RAS) -> optional
resampling -> in-plane foreground crop on a body threshold -> intensity window to [0, 1] -> gamma -> in-plane
resize; labels follow with nearest neighbour. Slices run along the last axis after orientation (superior for RAS).

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


def build_transforms(cfg: dict):
    """The MONAI dictionary chain up to (but not including) the in-plane crop and resize."""
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        Lambdad,
        LoadImaged,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
    )

    low, high = cfg["window"]
    gamma = float(cfg["gamma"])
    steps = [
        LoadImaged(keys=["image", "label"], reader="NibabelReader", image_only=True),
        EnsureChannelFirstd(keys=["image", "label"]),
        # Axis labels given explicitly: nibabel's RAS convention, the one meta.json and restore_labels use.
        Orientationd(keys=["image", "label"], axcodes=cfg["orientation"], labels=(("L", "R"), ("P", "A"), ("I", "S"))),
    ]
    if cfg.get("spacing"):
        steps.append(Spacingd(keys=["image", "label"], pixdim=cfg["spacing"], mode=("bilinear", "nearest")))
    steps += [
        ScaleIntensityRanged(keys="image", a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True),
        # An exact power law on [0, 1]; MONAI's AdjustContrast would rescale by each volume's own min/max.
        Lambdad(keys="image", func=lambda x: x**gamma),
    ]
    return Compose(steps)


def foreground_box(hu_image: np.ndarray, threshold: float, margin: int) -> tuple[slice, slice]:
    """In-plane bounding box of voxels above ``threshold`` HU over all slices (the body), plus ``margin``."""
    from monai.transforms.utils import generate_spatial_bounding_box

    projection = (hu_image > threshold).any(axis=-1)[None]
    start, end = generate_spatial_bounding_box(projection, margin=margin, allow_smaller=True)
    if any(e <= s for s, e in zip(start, end)):  # nothing above threshold: keep the whole plane
        start, end = [0, 0], list(hu_image.shape[:2])
    # The margin must never reach past the image: a negative start would silently wrap around in slicing.
    start = [max(0, int(s)) for s in start]
    end = [min(n, int(e)) for n, e in zip(hu_image.shape[:2], end)]
    return slice(int(start[0]), int(end[0])), slice(int(start[1]), int(end[1]))


def preprocess_case(image_path, label_path, out_dir, cfg: dict) -> dict:
    """Preprocess one case into ``out_dir`` (written atomically); return its ``meta`` dictionary."""
    import nibabel as nib
    import torch
    from monai.transforms import Resize

    raw = nib.load(str(image_path))
    data = build_transforms(cfg)({"image": str(image_path), "label": str(label_path)})
    image, label = data["image"], data["label"]
    oriented_affine = np.asarray(image.affine, dtype=np.float64)
    box = _crop_box(image, cfg)
    image = image[(slice(None), *box)]
    label = label[(slice(None), *box)]
    cropped_shape = list(image.shape[1:])
    size = [int(cfg["size"][0]), int(cfg["size"][1]), cropped_shape[2]]
    image = Resize(spatial_size=size, mode="area")(image.as_tensor() if hasattr(image, "as_tensor") else image)
    # "nearest-exact" samples at pixel centres; torch's plain "nearest" shifts labels by half a pixel.
    label = Resize(spatial_size=size, mode="nearest-exact")(label.as_tensor() if hasattr(label, "as_tensor") else label)
    image_zhw = torch.as_tensor(image)[0].permute(2, 0, 1).numpy().astype(np.float32)
    label_zhw = torch.as_tensor(label)[0].permute(2, 0, 1).numpy().round().astype(np.uint8)

    meta = {
        "original_shape": [int(n) for n in raw.shape[:3]],
        "original_affine": np.asarray(raw.affine).tolist(),
        "original_axcodes": "".join(nib.aff2axcodes(raw.affine)),
        "axcodes": cfg["orientation"],
        "oriented_shape": [int(n) for n in data["image"].shape[1:]],
        "oriented_affine": oriented_affine.tolist(),
        "resampled": bool(cfg.get("spacing")),
        "crop_box": [[box[0].start, box[0].stop], [box[1].start, box[1].stop]],
        "cropped_shape": cropped_shape,
        "size": size[:2],
        "n_slices": int(image_zhw.shape[0]),
        "format": cfg["format"],
        "window": list(cfg["window"]),
        "gamma": float(cfg["gamma"]),
    }
    with atomic_dir(out_dir) as tmp:
        _write_slices(tmp, image_zhw, label_zhw, cfg["format"])
        _write_slice_index(tmp / "slices.tsv", label_zhw)
        write_json(tmp / "meta.json", meta)
    return meta


def _crop_box(image, cfg) -> tuple[slice, slice]:
    if not cfg.get("crop_foreground", True):
        return slice(0, image.shape[1]), slice(0, image.shape[2])
    # The threshold is in HU, so map it through the same window and gamma the image went through.
    low, high = cfg["window"]
    level = np.clip((cfg["body_threshold"] - low) / (high - low), 0.0, 1.0) ** float(cfg["gamma"])
    array = np.asarray(image[0])
    if level <= 0.0:  # the threshold is below the window: everything above the window floor counts
        return foreground_box(array, 0.0, int(cfg["crop_margin"]))
    return foreground_box(array, float(level) - 1e-6, int(cfg["crop_margin"]))


def _write_slices(folder: Path, image_zhw: np.ndarray, label_zhw: np.ndarray, fmt: str) -> None:
    if fmt == "npy":
        np.save(folder / "image.npy", image_zhw)
        np.save(folder / "label.npy", label_zhw)
        return
    if fmt != "png":
        raise ValueError(f"preprocess.format must be npy or png, not {fmt!r}")
    from PIL import Image

    (folder / "images").mkdir()
    (folder / "labels").mkdir()
    for index, (image, label) in enumerate(zip(image_zhw, label_zhw)):
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(folder / "images" / f"slice_{index:04d}.png")
        Image.fromarray(label).save(folder / "labels" / f"slice_{index:04d}.png")


def _write_slice_index(path: Path, label_zhw: np.ndarray) -> None:
    lines = ["slice\tlabels\tforeground_fraction"]
    for index, label in enumerate(label_zhw):
        present = ",".join(str(v) for v in np.unique(label) if v != 0)
        lines.append(f"{index}\t{present}\t{float((label > 0).mean()):.6f}")
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


def restore_labels(pred_zhw: np.ndarray, meta: dict) -> np.ndarray:
    """Map a predicted (Z, H, W) label stack back onto the original voxel grid (the inverse of preprocessing)."""
    import nibabel as nib

    if meta.get("resampled"):
        raise NotImplementedError("restoring predictions after resampling to a target spacing is not supported yet")
    cropped = _resize_labels(np.asarray(pred_zhw), tuple(meta["cropped_shape"][:2]), int(meta.get("n_classes", 0)))
    cropped = cropped.transpose(1, 2, 0)  # back to (H, W, Z) in the oriented frame
    oriented = np.zeros(meta["oriented_shape"], dtype=np.uint8)
    (r0, r1), (c0, c1) = meta["crop_box"]
    oriented[r0:r1, c0:c1, :] = cropped
    # Undo the reorientation: from the target axcodes back to the original file's axcodes.
    current = nib.orientations.axcodes2ornt(meta["axcodes"])
    original = nib.orientations.io_orientation(np.asarray(meta["original_affine"]))
    restored = nib.orientations.apply_orientation(oriented, nib.orientations.ornt_transform(current, original))
    if list(restored.shape) != list(meta["original_shape"]):
        raise RuntimeError(f"restored shape {list(restored.shape)} != original {meta['original_shape']}")
    return np.ascontiguousarray(restored)


def _resize_labels(labels_zhw: np.ndarray, size: tuple[int, int], n_classes: int, chunk: int = 16) -> np.ndarray:
    """Resize a label stack in-plane by interpolating each class indicator bilinearly and taking the argmax.

    Smoother and more faithful than nearest neighbour when going back up to the original matrix (the per-class
    linear resampling nnU-Net uses for segmentations). Works in chunks of slices to bound memory.
    """
    import torch
    import torch.nn.functional as F

    n_classes = max(n_classes, int(labels_zhw.max()) + 1)
    out = np.empty((labels_zhw.shape[0], *size), dtype=np.uint8)
    for start in range(0, labels_zhw.shape[0], chunk):
        block = torch.as_tensor(np.array(labels_zhw[start : start + chunk], dtype=np.int64))
        onehot = F.one_hot(block, n_classes).permute(0, 3, 1, 2).float()
        smooth = F.interpolate(onehot, size=size, mode="bilinear", align_corners=False)
        out[start : start + chunk] = smooth.argmax(1).numpy().astype(np.uint8)
    return out
