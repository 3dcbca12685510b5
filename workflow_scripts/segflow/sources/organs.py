"""Multi-organ and MRI-like variants of the synthetic phantoms (``dataset.synthetic.organs`` / ``modality``).

The CT phantoms of segflow.sources.synthetic already draw liver, spleen, kidneys, aorta and bowel as tissue; here
their masks become labels, in the order of ``organs`` (1, 2, ...), with a stomach and a colon added for the GI tract.
``modality: mri`` turns the noise-free HU image into a T2-like contrast (fat and fluid bright, muscle and flowing
blood dark, no negative values), multiplies it by a smooth bias field (coil sensitivity) and adds Rician noise:
no HU window can normalise it, percentile clipping plus z-score can (segflow.normalise).

With the same seed and case id, geometry, organs and kidney masses are the CT phantom's: both draw from one stream.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segflow.io import save_nifti
from segflow.sources.synthetic import (
    FOV_PADDING_HU,
    HU,
    _add_noise,
    _ellipsoid,
    _mm_grid,
    _paint_body,
    _paint_kidneys,
    _paint_organs,
    case_geometry,
    case_rng,
    phantom_affine,
    record,
)
from segflow.sources.synthetic import (
    list_cases as synthetic_cases,
)

ORGANS = ("liver", "spleen", "right_kidney", "left_kidney", "kidney", "aorta", "large_bowel", "small_bowel", "stomach")
# HU -> T2-weighted-like signal (arbitrary units): fat and fluid bright, muscle and liver dark, flow void in the
# aorta, cortical bone dark, air and gas black. np.interp between the anchors (HU ascending).
MRI_ANCHORS_HU = (-1000, -850, -120, -100, -60, 0, 10, 40, 50, 60, 70, 95, 110, 150, 190, 220, 400, 1000, 3071)
MRI_SIGNAL = (0, 10, 760, 850, 700, 950, 1000, 300, 250, 280, 330, 650, 550, 500, 450, 120, 200, 150, 150)


def list_cases(dataset: dict, seed: int) -> list[str]:
    return synthetic_cases(dataset, seed)  # the same case ids as the plain phantoms


def import_case(dataset: dict, case_id: str, image_out: Path, seg_out: Path, seed: int) -> None:
    """The synthetic source's case with organ labels or MRI-like contrast (segflow.sources chooses this module)."""
    import_organ_case(dataset.get("synthetic", {}), case_id, image_out, seg_out, seed)


def import_organ_case(synthetic: dict, case_id: str, image_out: Path, seg_out: Path, seed: int) -> None:
    image, label, affine = make_organ_phantom(
        case_id,
        seed,
        matrix=int(synthetic["matrix"]),
        slices=tuple(synthetic["slices"]),
        organs=tuple(synthetic.get("organs", ("liver", "spleen", "kidney"))),
        modality=synthetic.get("modality", "ct"),
    )  # organs and modality have no schema default on purpose (see config/schema.yaml); these are the fallbacks
    save_nifti(image_out, image, affine)
    save_nifti(seg_out, label, affine)


def make_organ_phantom(
    case_id: str, seed: int, matrix: int = 128, slices=(48, 96), organs=("liver", "spleen", "kidney"), modality="ct"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image int16, labels uint8 with ``organs[i]`` = i + 1, affine), arrays indexed (x, y, z)."""
    unknown = [o for o in organs if o not in ORGANS]
    if unknown:
        raise ValueError(f"dataset.synthetic.organs: unknown organs {unknown}; choose from {', '.join(ORGANS)}")
    rng = case_rng(seed, case_id)
    geom = case_geometry(case_id, rng, matrix, tuple(slices))
    grid = _mm_grid(geom)
    image = np.full(geom.shape, HU["air"], dtype=np.float32)
    kits = np.zeros(geom.shape, dtype=np.uint8)
    masks: dict[str, np.ndarray] = {}
    _paint_body(image, grid, rng)
    _paint_organs(image, grid, rng, masks)
    _paint_kidneys(image, kits, grid, rng, masks)
    if {"stomach", "large_bowel"} & set(organs):
        _paint_gi_tract(image, grid, rng, masks)
    masks["kidney"] = masks["right_kidney"] | masks["left_kidney"]
    label = np.zeros(geom.shape, dtype=np.uint8)
    for value, organ in enumerate(organs, start=1):
        label[masks[organ]] = value

    x, y, _ = grid
    outside = np.broadcast_to((x**2 + y**2) > (0.5 * geom.shape[0] * geom.spacing[0]) ** 2, image.shape)
    if modality == "mri":
        image = mri_contrast(image, grid, rng)
        if geom.circular_fov:
            image[outside] = 0
        return np.clip(np.rint(image), 0, 32767).astype(np.int16), label, phantom_affine(geom)
    _add_noise(image, rng, geom)
    np.clip(image, -1024, 3071, out=image)
    if geom.circular_fov:
        image[outside] = FOV_PADDING_HU
    return np.clip(np.rint(image), -32768, 32767).astype(np.int16), label, phantom_affine(geom)


def _paint_gi_tract(image, grid, rng, masks) -> None:
    """A stomach in the left upper quadrant (fluid with a gas cap) and a colon framing the abdomen (gas inside)."""
    x, y, z = grid
    top = float(rng.uniform(0, 40))
    centre = (rng.uniform(40, 60), rng.uniform(-45, -25), top)
    radii = (rng.uniform(35, 45), rng.uniform(25, 32), rng.uniform(40, 55))
    stomach = _ellipsoid(grid, centre, radii)
    image[stomach <= 1.0] = HU["muscle"]
    image[stomach <= 0.7] = 15  # fluid content
    image[(stomach <= 0.7) & np.broadcast_to(y < centre[1] - 0.5 * radii[1], image.shape)] = HU["gas"]
    record(masks, "stomach", stomach <= 1.0)
    radius = rng.uniform(14, 19)
    low, bend = -150.0, top - rng.uniform(50, 70)
    colon = np.zeros(image.shape, dtype=bool)
    for side in (-1, 1):  # ascending (patient right) and descending colon
        tube = ((x - side * 95) ** 2 + (y + 20) ** 2) / radius**2
        colon |= np.broadcast_to((tube <= 1.0) & (z >= low) & (z <= bend), image.shape)
    transverse = ((y + 70) ** 2 + (z - bend) ** 2) / radius**2
    colon |= np.broadcast_to((transverse <= 1.0) & (np.abs(x) <= 95), image.shape)
    core = np.zeros(image.shape, dtype=bool)
    for side in (-1, 1):
        core |= np.broadcast_to(((x - side * 95) ** 2 + (y + 20) ** 2) / radius**2 <= 0.3, image.shape) & colon
    core |= np.broadcast_to(((y + 70) ** 2 + (z - bend) ** 2) / radius**2 <= 0.3, image.shape) & colon
    image[colon] = HU["muscle"] - 10
    image[core] = HU["gas"]
    record(masks, "large_bowel", colon)


def mri_contrast(hu: np.ndarray, grid, rng) -> np.ndarray:
    """T2-like signal from the noise-free HU phantom, times a smooth bias field, with Rician noise."""
    signal = np.interp(hu, MRI_ANCHORS_HU, MRI_SIGNAL).astype(np.float32)
    x, y, z = (axis / 200.0 for axis in grid)
    c = rng.normal(0, 0.25, size=6)
    field = np.exp(c[0] * x + c[1] * y + c[2] * z + c[3] * x * x + c[4] * y * y + c[5] * x * y).astype(np.float32)
    signal *= field
    sigma = float(rng.uniform(15, 30))
    real = signal + rng.normal(0, sigma, size=signal.shape).astype(np.float32)
    imaginary = rng.normal(0, sigma, size=signal.shape).astype(np.float32)
    return np.sqrt(real * real + imaginary * imaginary)
