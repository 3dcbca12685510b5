"""Storage of a preprocessed case: writing its slices and slice index, and reading them back.

A case folder holds ``image.npy`` float32 (Z, H, W) and ``label.npy`` uint8 (Z, H, W) for the NPY format
(memory-mappable), or ``images/slice_NNNN.png`` and ``labels/slice_NNNN.png`` for PNG; ``slices.tsv`` (slice
index, labels present, foreground fraction) and ``meta.json`` (written by segflow.preprocess).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segflow.io import read_json


def write_slices(folder: Path, image_zhw: np.ndarray, label_zhw: np.ndarray, fmt: str, level: int = 1) -> None:
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


def write_slice_index(path: Path, label_zhw: np.ndarray) -> None:
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
