"""Procedural abdominal CT phantoms: the offline default source, so that anyone can run the whole pipeline.

Each case is a contrast-enhanced abdomen in Hounsfield units: body outline with subcutaneous fat, muscle wall,
spine, aorta, liver, spleen, bowel gas, two kidneys with a bright cortex around a darker medulla, renal tumours
with heterogeneous texture and cysts near water density, plus noise. The phantom is deterministic per
(seed, case id). Slice count, spacing and matrix size vary between cases, and a few cases are deliberately built to
fail the default selection filters (too many slices; -2048 padding outside a circular field of view) so that
selection visibly drops them.

Tumours overlap the kidney in intensity (their texture spans medulla to cortex HU), so no single threshold
separates them: the model has to use shape and context.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segflow.io import save_nifti

# HU of each tissue (contrast-enhanced, late arterial / corticomedullary phase).
HU = {
    "air": -1000,
    "fat": -100,
    "muscle": 50,
    "bone": 700,
    "aorta": 220,
    "liver": 70,
    "spleen": 110,
    "gas": -850,
    "cortex": 190,
    "medulla": 95,
    "cyst": 10,
}
FOV_PADDING_HU = -2048  # value scanners write outside the reconstructed circle


@dataclass(frozen=True)
class CaseGeometry:
    shape: tuple[int, int, int]  # (x, y, z) voxels
    spacing: tuple[float, float, float]  # mm
    circular_fov: bool  # pad outside the reconstruction circle with FOV_PADDING_HU


def case_ids(n_cases: int) -> list[str]:
    return [f"synth_{i:03d}" for i in range(n_cases)]


def list_cases(dataset: dict, seed: int) -> list[str]:
    from segflow.sources import select_ids

    return select_ids(case_ids(int(dataset.get("n_cases", 16))), dataset.get("cases"))


def import_case(dataset: dict, case_id: str, image_out: Path, seg_out: Path, seed: int) -> None:
    synthetic = dataset.get("synthetic", {})  # multi-organ and MRI-like phantoms: segflow.sources.organs
    image, label, affine = make_phantom(
        case_id,
        seed,
        matrix=int(synthetic.get("matrix", 160)),
        slices=tuple(synthetic.get("slices", (48, 96))),
    )
    save_nifti(image_out, image, affine)
    save_nifti(seg_out, label, affine)


def case_rng(seed: int, case_id: str) -> np.random.Generator:
    """A generator that depends only on (seed, case id), never on the order cases are made in."""
    digest = hashlib.sha256(f"{seed}:{case_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def case_geometry(case_id: str, rng: np.random.Generator, matrix: int, slices: tuple[int, int]) -> CaseGeometry:
    """Vary matrix, spacing and slice count; every 7th case has too many slices, every 7th+3 a padded FOV."""
    index = int(case_id.rsplit("_", 1)[-1]) if case_id.rsplit("_", 1)[-1].isdigit() else 0
    n_xy = int(matrix + rng.integers(-2, 3) * 8)
    in_plane = 360.0 / n_xy * rng.uniform(0.95, 1.1)  # ~36-40 cm field of view
    n_z = int(rng.integers(slices[0], slices[1] + 1))
    if index % 7 == 5:
        n_z = int(slices[1] * 1.4)  # a thin-slice series: beyond the default max_slices filter
    z_spacing = float(rng.choice([2.5, 3.0, 4.0, 5.0])) if index % 7 != 5 else 2.0
    return CaseGeometry((n_xy, n_xy, n_z), (in_plane, in_plane, z_spacing), circular_fov=index % 7 == 3)


def make_phantom(
    case_id: str, seed: int, matrix: int = 160, slices: tuple[int, int] = (48, 96)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (image int16 HU, label uint8, affine) with arrays indexed (x, y, z).

    The affine is that of a typical DICOM-to-NIfTI conversion (x toward patient left, y toward posterior, z toward
    superior, i.e. an L-P-S voxel order in RAS world coordinates), so orientation handling is exercised.
    """
    rng = case_rng(seed, case_id)
    geom = case_geometry(case_id, rng, matrix, slices)
    grid = _mm_grid(geom)
    image = np.full(geom.shape, HU["air"], dtype=np.float32)
    label = np.zeros(geom.shape, dtype=np.uint8)

    _paint_body(image, grid, rng)
    _paint_organs(image, grid, rng)
    _paint_kidneys(image, label, grid, rng)
    _add_noise(image, rng, geom)
    np.clip(image, -1024, 3071, out=image)  # the range scanners reconstruct to
    if geom.circular_fov:
        x, y, _ = grid
        outside = (x**2 + y**2) > (0.5 * geom.shape[0] * geom.spacing[0]) ** 2
        image[np.broadcast_to(outside, image.shape)] = FOV_PADDING_HU

    return np.clip(np.rint(image), -32768, 32767).astype(np.int16), label, phantom_affine(geom)


def phantom_affine(geom: CaseGeometry) -> np.ndarray:
    """L-P-S voxel order in RAS world coordinates, centred in x and y."""
    sx, sy, sz = geom.spacing
    origin = [0.5 * geom.shape[0] * sx, 0.5 * geom.shape[1] * sy, -0.5 * geom.shape[2] * sz]
    return np.array(
        [[-sx, 0, 0, origin[0]], [0, -sy, 0, origin[1]], [0, 0, sz, origin[2]], [0, 0, 0, 1]], dtype=np.float64
    )


def record(masks: dict | None, name: str, mask: np.ndarray) -> None:
    """Keep an organ's mask for multi-organ labels (segflow.sources.organs); what is painted later wins."""
    if masks is None:
        return
    for other in masks:
        masks[other] &= ~mask
    masks[name] = masks.get(name, np.zeros(mask.shape, bool)) | mask


def _mm_grid(geom: CaseGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable coordinates in mm from the volume centre: x to the patient's left, y posterior, z superior."""
    axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(geom.shape, geom.spacing)]
    return axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]


def _ellipsoid(grid, centre, radii) -> np.ndarray:
    x, y, z = grid
    return ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((z - centre[2]) / radii[2]) ** 2


def _paint_body(image, grid, rng) -> None:
    x, y, z = grid
    a, b = rng.uniform(150, 170), rng.uniform(110, 125)
    taper = 1.0 + 0.0008 * z  # slightly wider toward the chest
    outer = (x / (a * taper)) ** 2 + (y / (b * taper)) ** 2
    body = np.broadcast_to(outer <= 1.0, image.shape)
    fat_depth = rng.uniform(12, 25)
    inner = (x / (a * taper - fat_depth)) ** 2 + (y / (b * taper - fat_depth)) ** 2
    image[body] = HU["fat"]
    muscle_wall = np.broadcast_to(inner <= 1.0, image.shape)
    image[muscle_wall] = HU["muscle"]
    abdomen = (x / (a * taper - fat_depth - 10)) ** 2 + (y / (b * taper - fat_depth - 10)) ** 2
    image[np.broadcast_to(abdomen <= 1.0, image.shape)] = HU["fat"] + 40  # visceral fat, a little denser


def _paint_organs(image, grid, rng, masks: dict | None = None) -> None:
    x, y, z = grid
    # Spine: a vertebral body with a cortical rim, and paraspinal muscles either side.
    spine_y = rng.uniform(55, 70)
    for side in (-1, 1):
        image[_ellipsoid(grid, (side * 35, spine_y + 20, 0), (22, 25, 1e4)) <= 1.0] = HU["muscle"]
    vertebra = (x**2 + (y - spine_y) ** 2) / 18.0**2
    image[np.broadcast_to(vertebra <= 1.0, image.shape)] = HU["bone"] + 300
    image[np.broadcast_to(vertebra <= 0.7, image.shape)] = HU["bone"] - 350  # cancellous core
    # Aorta just anterior-left of the spine.
    aorta = ((x - 12) ** 2 + (y - spine_y + 32) ** 2) / rng.uniform(9, 12) ** 2
    image[np.broadcast_to(aorta <= 1.0, image.shape)] = HU["aorta"]
    record(masks, "aorta", np.broadcast_to(aorta <= 1.0, image.shape))
    # Liver (patient right = negative x), spleen (left), both in the upper abdomen.
    top = rng.uniform(40, 80)
    liver = _ellipsoid(grid, (-70, -5, top), (80, 75, 110)) <= 1.0
    image[liver] = HU["liver"] + rng.normal(0, 8)
    record(masks, "liver", liver)
    spleen = _ellipsoid(grid, (85, 35, top + 20), (30, 40, 60)) <= 1.0
    image[spleen] = HU["spleen"]
    record(masks, "spleen", spleen)
    # Bowel: loops of soft tissue with gas pockets, anterior.
    for _ in range(int(rng.integers(5, 10))):
        centre = (rng.uniform(-80, 80), rng.uniform(-90, -30), rng.uniform(-150, 20))
        radius = rng.uniform(12, 22)
        loop = _ellipsoid(grid, centre, (radius, radius, radius * 1.5))
        image[loop <= 1.0] = HU["muscle"] - 10
        image[loop <= 0.35] = HU["gas"]
        record(masks, "small_bowel", loop <= 1.0)


def _paint_kidneys(image, label, grid, rng, masks: dict | None = None) -> None:
    """Two kidneys beside the spine: cortex (bright), medulla (darker pyramids), then tumours and cysts."""
    centre_z = rng.uniform(-30, 20)
    for side in (-1, 1):
        centre = (side * rng.uniform(62, 75), rng.uniform(40, 55), centre_z + side * rng.uniform(0, 15))
        radii = (rng.uniform(25, 32), rng.uniform(22, 28), rng.uniform(48, 60))
        kidney = _ellipsoid(grid, centre, radii)
        inside = kidney <= 1.0
        image[inside] = HU["cortex"]
        label[inside] = 1
        # Medulla: pyramids as small ellipsoids inside the inner half, darker than cortex.
        for _ in range(6):
            offset = rng.uniform(-0.45, 0.45, size=3) * np.array(radii)
            pyramid = _ellipsoid(grid, np.add(centre, offset), np.array(radii) * rng.uniform(0.18, 0.28))
            image[(pyramid <= 1.0) & inside] = HU["medulla"]
        # Renal sinus fat at the hilum, facing the spine.
        hilum = _ellipsoid(grid, (centre[0] - side * radii[0] * 0.55, centre[1], centre[2]), (8, 9, 18))
        image[(hilum <= 1.0) & inside] = HU["fat"]
        label[(hilum <= 1.0) & inside] = 0
        if rng.random() < 0.8:
            _paint_tumour(image, label, grid, rng, centre, radii)
        if rng.random() < 0.5:
            _paint_cyst(image, label, grid, rng, centre, radii)
    if masks is not None:  # x runs to the patient's left: the right kidney lies at negative x
        x = np.broadcast_to(grid[0], label.shape)
        record(masks, "right_kidney", (label > 0) & (x < 0))
        record(masks, "left_kidney", (label > 0) & (x > 0))


def _surface_point(rng, centre, radii, depth) -> np.ndarray:
    """A point at ``depth`` (fraction of the radius) on a random ray from the kidney centre, lateral side."""
    direction = rng.normal(size=3)
    direction[0] = abs(direction[0]) * np.sign(centre[0])  # exophytic masses grow away from the spine
    direction /= np.linalg.norm(direction)
    return np.asarray(centre) + direction * np.asarray(radii) * depth


def _paint_tumour(image, label, grid, rng, centre, radii) -> None:
    r = rng.uniform(10, 22)
    where = _surface_point(rng, centre, radii, rng.uniform(0.6, 0.95))
    lumps = [_ellipsoid(grid, where + rng.normal(0, r * 0.3, 3), np.full(3, r) * rng.uniform(0.6, 1.0, 3))]
    tumour = np.logical_or.reduce([lump <= 1.0 for lump in lumps + [_ellipsoid(grid, where, (r, r, r))]])
    # Heterogeneous enhancement spanning medulla-to-cortex HU, plus a necrotic core: not threshold-separable.
    texture = rng.normal(0, 1, size=image.shape).astype(np.float32)
    texture = _smooth(texture, passes=2)
    texture = texture / max(float(texture.std()), 1e-6)
    base = rng.uniform(110, 150)
    image[tumour] = base + 45 * texture[tumour]
    core = _ellipsoid(grid, where, np.full(3, r * 0.4)) <= 1.0
    image[core & tumour] = rng.uniform(35, 60)
    label[tumour] = 2


def _paint_cyst(image, label, grid, rng, centre, radii) -> None:
    r = rng.uniform(6, 12)
    where = _surface_point(rng, centre, radii, rng.uniform(0.4, 0.9))
    cyst = _ellipsoid(grid, where, (r, r, r)) <= 1.0
    image[cyst] = HU["cyst"] + rng.normal(0, 3)
    label[cyst] = 3


def _smooth(volume: np.ndarray, passes: int) -> np.ndarray:
    """Cheap box blur (shifted averages), enough to turn white noise into blotchy texture."""
    for _ in range(passes):
        for axis in range(volume.ndim):
            volume = (np.roll(volume, 1, axis) + volume + np.roll(volume, -1, axis)) / 3.0
    return volume


def _add_noise(image, rng, geom: CaseGeometry) -> None:
    sigma = rng.uniform(12, 22) * (3.0 / geom.spacing[2]) ** 0.5  # thinner slices are noisier
    image += rng.normal(0, sigma, size=image.shape).astype(np.float32)
