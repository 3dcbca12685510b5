"""Per-case inspection: geometry, intensity range and label content of one raw case, and what is wrong with it.

Inspection never raises on bad data: every problem becomes a line in ``problems`` and the selection stage turns it
into the reason the case is left out (or, with ``selection.strict``, one failure listing every bad case).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

AFFINE_TOLERANCE = 1e-3  # mm; converters round differently, real mismatches are far larger
SINGULAR_TOLERANCE = 1e-6  # |det| of the direction part (columns scaled to unit length) below this: not orientable


def slice_axis(affine: np.ndarray) -> int:
    """The voxel axis that runs closest to the patient's head-foot (world z) direction."""
    directions = np.abs(np.asarray(affine)[:3, :3])
    return int(np.argmax(directions[2] / np.maximum(np.linalg.norm(directions, axis=0), 1e-12)))


def inspect_case(
    case_id: str, image_path: str | Path, seg_path: str | Path, allowed_labels, modality: str = "ct"
) -> dict:
    """Return a JSON-ready summary of one case: figures when readable, and ``problems`` (empty when fine)."""
    report: dict = {"case_id": case_id, "problems": []}
    image = _load(image_path, "image", report)
    seg = _load(seg_path, "segmentation", report)
    if image is not None:
        _describe_image(image, report, image_path)
        if modality == "mri":
            report["problems"] += modality_problems(report.get("hu_min"))
    if seg is not None:
        _describe_labels(seg, allowed_labels, report)
    if image is not None and seg is not None:
        _compare_grids(image, seg, report)
    report["ok"] = not report["problems"]
    return report


# MRI intensities are magnitudes (>= 0); CT in HU has air near -1000. Below this, an "MRI" case is CT.
CT_AIR_BELOW = -200.0


def modality_problems(lowest: float | None) -> list[str]:
    """For modality mri: a case whose intensities reach down to air in HU is CT, not MRI."""
    if lowest is not None and lowest < CT_AIR_BELOW:
        return [
            f"intensities down to {lowest:g} (air in HU: this is CT), but modality is mri; set modality: ct or "
            "point dataset at MRI"
        ]
    return []


def _load(path, what: str, report: dict):
    import nibabel as nib

    try:
        volume = nib.load(str(path))
        data = np.asanyarray(volume.dataobj)  # reads (and inflates) the whole file: catches truncation
    except Exception as error:  # nibabel, gzip and zlib raise many types for a damaged file
        report["problems"].append(f"{what} unreadable ({Path(path).name}: {type(error).__name__}: {error})")
        return None
    return volume, data


def _describe_image(image, report: dict, path=None) -> None:
    volume, data = image
    report["shape"] = [int(n) for n in data.shape]
    zooms = volume.header.get_zooms()
    report["spacing"] = [_finite_or_none(round(float(z), 6)) for z in zooms[:3]]
    report["affine"] = [[_finite_or_none(v) for v in row] for row in np.asarray(volume.affine, float).round(6).tolist()]
    if data.ndim != 3:
        report["problems"].append(f"image is {data.ndim}D with shape {list(data.shape)}, expected 3D")
        return
    geometry = geometry_problems(volume.affine, _stored_spacing(volume, path, zooms))
    if geometry:  # no slice axis can be read from such an affine: record no slice count rather than a wrong one
        report["problems"] += [f"image {problem}" for problem in geometry]
        return
    axis = slice_axis(volume.affine)
    report["slice_axis"] = axis
    report["n_slices"] = int(data.shape[axis])
    finite = np.isfinite(data) if data.dtype.kind == "f" else None
    if finite is not None and not finite.all():
        report["problems"].append(f"image has {int((~finite).sum())} NaN or infinite voxels")
        data = data[finite]
    report["hu_min"] = float(data.min()) if data.size else None
    report["hu_max"] = float(data.max()) if data.size else None


def geometry_problems(affine, spacing) -> list[str]:
    """What makes a voxel-to-world affine unusable for orientation: NaN/inf, a zero voxel size, or voxel axes that
    are not independent (a singular matrix, e.g. an all-zero row). Empty when the geometry is fine."""
    affine = np.asarray(affine, dtype=float)
    if not np.isfinite(affine).all():
        return [f"affine has NaN or infinite values ({_rows(affine)})"]
    lengths = np.linalg.norm(affine[:3, :3], axis=0)
    if not (lengths > 0).all() or abs(float(np.linalg.det(affine[:3, :3]))) / lengths.prod() < SINGULAR_TOLERANCE:
        return [f"affine is singular, its voxel axes do not span 3D space ({_rows(affine)})"]
    spacing = [float(z) for z in spacing]
    if not all(np.isfinite(z) and z > 0 for z in spacing):
        return [f"spacing has zero or invalid voxel sizes {[round(z, 6) for z in spacing]} mm"]
    return []


def _stored_spacing(volume, path, zooms) -> list[float]:
    """The voxel sizes as stored in the file: nibabel silently turns a zero NIfTI pixdim into 1 when it loads."""
    spacing = [float(z) for z in zooms[:3]]
    if path is None or "pixdim" not in getattr(volume.header, "keys", lambda: ())():
        return spacing
    try:
        from nibabel.openers import ImageOpener

        with ImageOpener(str(path)) as handle:
            raw = type(volume.header).from_fileobj(handle, check=False)
        return [float(z) for z in raw["pixdim"][1:4]]
    except Exception:  # the file was read once already; an odd header here only means: trust nibabel's zooms
        return spacing


def _rows(affine: np.ndarray) -> str:
    return "; ".join(" ".join(f"{v:g}" for v in row) for row in affine[:3, :3])


def _finite_or_none(value: float):
    return value if np.isfinite(value) else None


def _describe_labels(seg, allowed_labels, report: dict) -> None:
    _, data = seg
    if data.dtype.kind == "f":
        if not np.isfinite(data).all():
            report["problems"].append("segmentation has NaN or infinite voxels")
            return
        if not np.array_equal(data, np.round(data)):
            report["problems"].append("segmentation has non-integer values")
            return
    values, counts = np.unique(data, return_counts=True)
    report["label_values"] = [int(v) for v in values]
    report["label_voxels"] = {str(int(v)): int(c) for v, c in zip(values, counts)}
    unexpected = sorted(set(report["label_values"]) - set(int(v) for v in allowed_labels))
    if unexpected:
        report["problems"].append(
            f"segmentation has label values {unexpected} outside selection.labels {sorted(allowed_labels)}"
        )
    if all(v == 0 for v in report["label_values"]):
        report["problems"].append("segmentation is empty (only background)")


def _compare_grids(image, seg, report: dict) -> None:
    (image_volume, image_data), (seg_volume, seg_data) = image, seg
    if image_data.shape != seg_data.shape:
        report["problems"].append(
            f"image shape {list(image_data.shape)} differs from segmentation shape {list(seg_data.shape)}"
        )
        return
    difference = float(np.abs(np.asarray(image_volume.affine) - np.asarray(seg_volume.affine)).max())
    if not difference <= AFFINE_TOLERANCE:  # NaN in either affine counts as a difference
        report["problems"].append(f"image and segmentation affines differ (max difference {difference:.4g})")
