"""Helpers shared by the file-based sources: paths, case ids, label maps, volume reading, linking, slice stacks."""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from segflow.io import atomic_path, save_nifti
from segflow.sources import CaseInputs, SourceError, identity_digest

log = logging.getLogger(__name__)

# The same rule as the Snakefile's wildcard constraint on {case}: ids become file names and wildcards.
CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES


def dataset_path(dataset: dict, what: str) -> Path:
    """``dataset.path`` as an existing Path; ``what`` says what it should point at, for the error message."""
    raw = dataset.get("path")
    if not raw:
        raise SourceError(f"dataset.path is not set; for source {dataset.get('source')!r} point it at {what}")
    path = Path(str(raw)).expanduser()
    if not path.exists():
        raise SourceError(f"dataset.path {path} does not exist; point it at {what}")
    return path


def check_case_ids(ids: list[str], where: str | Path) -> list[str]:
    """Fail on ids that cannot be Snakemake wildcards or file names, and on duplicates."""
    bad = [i for i in ids if not CASE_ID.fullmatch(i)]
    if bad:
        raise SourceError(
            f"{where}: case ids must match {CASE_ID.pattern} (letters, digits, _ . -); rename: {', '.join(bad[:5])}"
        )
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise SourceError(f"{where}: case ids occur more than once: {', '.join(duplicates[:5])}")
    return ids


def natural_key(text: str):
    """Sort key that puts case2 before case10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def strip_volume_suffix(name: str) -> str | None:
    """``name`` without a known volume extension, or None if it has none."""
    lower = name.lower()
    for suffix in VOLUME_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


# --- label maps ---------------------------------------------------------------------------------------------------


def parse_label_map(raw, *, default=None, key: str = "dataset.label_map", numeric_keys: bool = True) -> dict | None:
    """``{source_label: project_label}`` from the config (YAML keys may come as strings), or ``default``."""
    if raw is None:
        return default
    if not isinstance(raw, dict) or not raw:
        raise SourceError(f"{key} must be a non-empty mapping {{source label: project label}}, got {raw!r}")
    mapping = {}
    for source, target in raw.items():
        try:
            source_key = int(source) if numeric_keys else str(source)
            target_value = int(target)
        except (TypeError, ValueError):
            raise SourceError(f"{key}: {source!r}: {target!r} is not a label number") from None
        if not 0 <= target_value <= 255:
            raise SourceError(f"{key}: project label {target_value} is outside 0..255")
        mapping[source_key] = target_value
    return mapping


def apply_label_map(labels: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """Map source label values to project labels; values the map does not name become 0 (background)."""
    labels = integer_labels(labels, "segmentation")
    out = np.zeros(labels.shape, dtype=np.uint8)
    for source, target in mapping.items():
        if target:
            out[labels == source] = target
    return out


def integer_labels(labels: np.ndarray, where: str) -> np.ndarray:
    """Labels as an integer array; float labels must hold whole numbers (some converters write float64)."""
    labels = np.asanyarray(labels)
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or not np.array_equal(labels, np.round(labels)):
            raise SourceError(f"{where}: label volume has non-integer values")
        labels = labels.astype(np.int64)
    elif labels.dtype.kind not in "iub":
        raise SourceError(f"{where}: label volume has data type {labels.dtype}, expected integers")
    return labels


def to_uint8_labels(labels: np.ndarray, where: str) -> np.ndarray:
    labels = integer_labels(labels, where)
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise SourceError(f"{where}: label values {labels.min()}..{labels.max()} do not fit 0..255")
    return labels.astype(np.uint8)


# --- volumes ------------------------------------------------------------------------------------------------------


def read_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(array indexed x, y, z, RAS affine) from NIfTI (nibabel) or MHA/MHD/NRRD (SimpleITK)."""
    path = Path(path)
    try:
        if path.name.lower().endswith(NIFTI_SUFFIXES):
            import nibabel as nib

            image = nib.load(str(path))
            array, affine = np.asanyarray(image.dataobj), image.affine
        else:
            array, affine = _read_itk(path)
    except Exception as error:  # readers raise many types for a damaged or foreign file
        raise SourceError(f"cannot read {path}: {type(error).__name__}: {error}") from None
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise SourceError(f"{path}: expected a 3D volume, found shape {list(array.shape)}")
    return array, np.asarray(affine, dtype=np.float64)


def _read_itk(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)  # (z, y, x)
    array = np.ascontiguousarray(np.transpose(array, tuple(reversed(range(array.ndim)))))
    dimension = image.GetDimension()
    direction = np.asarray(image.GetDirection()).reshape(dimension, dimension)[:3, :3]
    spacing = np.asarray(image.GetSpacing())[:3]
    origin = np.asarray(image.GetOrigin())[:3]
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])  # ITK world coordinates are LPS, NIfTI's are RAS
    affine = np.eye(4)
    affine[:3, :3] = lps_to_ras @ direction @ np.diag(spacing)
    affine[:3, 3] = lps_to_ras @ origin
    return array, affine


def companion_files(path: str | Path) -> list[Path]:
    """The detached data file of an MHD or NHDR header (``ElementDataFile = x.raw``, ``data file: x.raw``), which
    the header's reader also reads; empty for every other format, or when the data sit in the header file."""
    path = Path(path)
    lower = path.name.lower()
    if not lower.endswith((".mhd", ".nhdr")):
        return []
    key = "elementdatafile" if lower.endswith(".mhd") else "data file"
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        name, sep, value = line.partition("=" if key == "elementdatafile" else ":")
        value = value.strip()
        detached = value and value.upper() not in ("LOCAL", "LIST") and " " not in value  # not a pattern list
        if sep and name.strip().lower() == key and detached:
            return [path.parent / value]
    return []


def file_identity(paths) -> str:
    """A digest of each file's path, inode and size. Replacing a file (mv, rsync, cp to a temporary name and
    rename) gives it a new inode even when the new file's modification time is older than the imported copy, which
    Snakemake's own mtime check would miss; touching a file changes neither. In-place writes keep the inode and
    are caught by the mtime check on the same files as inputs."""
    entries = []
    for path in paths:
        try:
            stat = os.stat(path)
            entries.append([str(path), stat.st_ino, stat.st_size])
        except OSError:
            entries.append([str(path), None, None])  # missing: Snakemake reports it as a missing input
    return identity_digest(entries)


def local_case_inputs(files) -> CaseInputs:
    """Files on disk as the inputs of a case's import, with their identity (``file_identity``) as its params."""
    files = [str(f) for f in files]
    return CaseInputs(files=tuple(files), identity={"files": file_identity(files)})


def is_plain_label_nifti(path: str | Path) -> bool:
    """True for a .nii.gz whose voxels are stored as unscaled uint8: such a file can be used as it is."""
    import nibabel as nib

    if not str(path).endswith(".nii.gz"):
        return False
    header = nib.load(str(path)).header
    slope, inter = header.get_slope_inter()
    unscaled = slope in (None, 1.0) and inter in (None, 0.0)
    return header.get_data_dtype() == np.uint8 and unscaled


def copy_atomically(source: str | Path, dest: str | Path) -> str:
    """Copy ``source`` to ``dest`` through a temporary name, so ``dest`` is whole or absent. Returns ``"copied"``."""
    with atomic_path(dest) as tmp:
        shutil.copyfile(source, tmp)
    return "copied"


def write_labels(path: str | Path, labels: np.ndarray, affine: np.ndarray, where: str) -> None:
    save_nifti(path, to_uint8_labels(labels, where), affine)


def slice_stack_affine(spacing) -> np.ndarray:
    """Affine for volumes stacked from 2D slices: columns run to the patient's left, rows to posterior (the
    radiological display convention of axial images), slices to superior; origin at the first voxel."""
    sx, sy, sz = (float(s) for s in spacing)
    return np.diag([-sx, -sy, sz, 1.0])


def parse_spacing(raw, key: str = "dataset.spacing", default=(1.0, 1.0, 1.0)) -> tuple[float, float, float]:
    if raw is None:
        return tuple(default)
    try:
        values = tuple(float(v) for v in raw)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or min(values) <= 0:
        raise SourceError(f"{key} must be three positive numbers [x, y, z] in mm, got {raw!r}")
    return values


def stack_slices(slices: list[np.ndarray], names: list[str], where: str) -> np.ndarray:
    """Stack 2D (rows, columns) arrays into an (x, y, z) volume; every slice must have the same size."""
    shapes = {s.shape for s in slices}
    if len(shapes) != 1:
        sizes = ", ".join(f"{n} {list(s.shape)}" for n, s in list(zip(names, slices))[:4])
        raise SourceError(f"{where}: slices differ in size ({sizes} ...)")
    return np.stack([s.T for s in slices], axis=-1)


def read_gray(path: Path) -> np.ndarray:
    """A PNG as a 2D (rows, columns) array: 8/16-bit gray as stored, palette as indices, colour converted to gray."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.mode in ("RGB", "RGBA", "LA"):
                array = np.asarray(image)
                channels = array[..., :3] if image.mode != "LA" else array[..., :1]
                if np.all(channels == channels[..., :1]):
                    return channels[..., 0].copy()  # gray stored as colour: exact
                return np.asarray(image.convert("L"))
            return np.asarray(image).copy()
    except OSError as error:
        raise SourceError(f"cannot read {path}: {error}") from None
