"""Cases already on disk, in KiTS layout or nnU-Net v2 / Medical Segmentation Decathlon raw layout.

``dataset.path`` is one of (``dataset.layout``: ``auto`` (default), ``kits`` or ``nnunet``):

* KiTS: ``<path>/<case>/imaging.nii.gz`` + ``segmentation.nii.gz`` (also found under ``<path>/dataset`` or
  ``<path>/data``, i.e. a kits23 or kits19 clone); the case id is the folder name;
* nnU-Net v2 / MSD: ``<path>/imagesTr/<NAME>_0000.nii.gz`` (MSD: ``<NAME>.nii.gz``) + ``<path>/labelsTr/<NAME>.nii.gz``;
  the case id is NAME. Only channel 0000 is used (CT has one channel).

Other volume formats (.nii, .mha, .mhd, .nrrd) are read and rewritten as NIfTI. A .nii.gz image is copied, and so
is a .nii.gz segmentation stored as unscaled uint8 when no ``dataset.label_map`` is given; otherwise the labels are
rewritten (mapped; unlisted labels become 0). Copies, not hard links: Snakemake touches a job's outputs when it
ends, and through a hard link that touched the user's own file, so every other results folder importing it saw an
updated input and redid its preprocessing and training. A manifest
(``dataset.manifest``, or manifest.tsv/.json or SHA256SUMS in ``dataset.path``) is checked for the files it lists,
by path relative to ``dataset.path``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from segflow.download import load_manifest, normalise_name, verify_file
from segflow.io import save_nifti
from segflow.sources import SourceError, select_ids
from segflow.sources.common import (
    VOLUME_SUFFIXES,
    apply_label_map,
    check_case_ids,
    companion_files,
    copy_atomically,
    dataset_path,
    is_plain_label_nifti,
    local_case_inputs,
    natural_key,
    parse_label_map,
    read_volume,
    strip_volume_suffix,
    to_uint8_labels,
)

log = logging.getLogger(__name__)

LAYOUTS = ("auto", "kits", "nnunet")
WHAT = "a folder of <case>/imaging.nii.gz + segmentation.nii.gz, or an nnU-Net/MSD folder with imagesTr/ and labelsTr/"


@dataclass(frozen=True)
class LocalCase:
    case_id: str
    image: Path
    label: Path


def list_cases(dataset: dict, seed: int) -> list[str]:
    _, cases = find_cases(dataset)
    return select_ids(list(cases), dataset.get("cases"))


def case_inputs(dataset: dict, case_ids: list[str]) -> dict:
    """Each case's image and label files (and an MHD/NHDR header's data file): inputs of its import."""
    _, cases = find_cases(dataset)
    found = {}
    for case_id in case_ids:
        case = cases[case_id]
        files = [case.image, *companion_files(case.image), case.label, *companion_files(case.label)]
        found[case_id] = local_case_inputs(files)
    return found


def import_case(dataset: dict, case_id: str, image_out, seg_out, seed: int) -> None:
    root, cases = find_cases(dataset)
    if case_id not in cases:
        raise SourceError(f"case {case_id} not found under dataset.path {root}")
    case = cases[case_id]
    base = dataset_path(dataset, WHAT)
    manifest = load_manifest(dataset, base)
    for file in (case.image, case.label):
        verify_file(file, manifest.get(_relative_name(file, base)), str(file))
    label_map = parse_label_map(dataset.get("label_map"))
    try:
        image_how = import_image(case.image, image_out)
        label_how = import_labels(case.label, seg_out, label_map)
    except BaseException:
        Path(image_out).unlink(missing_ok=True)
        Path(seg_out).unlink(missing_ok=True)
        raise
    log.info("%s: image %s from %s, labels %s from %s", case_id, image_how, case.image, label_how, case.label)


def import_image(source: Path, dest) -> str:
    if source.name.endswith(".nii.gz"):
        return copy_atomically(source, dest)
    array, affine = read_volume(source)
    save_nifti(dest, array, affine)
    return "converted"


def import_labels(source: Path, dest, label_map: dict | None) -> str:
    if label_map is None and is_plain_label_nifti(source):
        return copy_atomically(source, dest)  # copied, never linked: see the module's docstring
    array, affine = read_volume(source)
    labels = apply_label_map(array, label_map) if label_map else to_uint8_labels(array, str(source))
    save_nifti(dest, labels, affine)
    return "mapped" if label_map else "converted"


# --- finding cases ------------------------------------------------------------------------------------------------


def find_cases(dataset: dict) -> tuple[Path, dict[str, LocalCase]]:
    """(data root, {case id: LocalCase}) in natural order; only cases with both an image and labels."""
    path = dataset_path(dataset, WHAT)
    layout = str(dataset.get("layout", "auto"))
    if layout not in LAYOUTS:
        raise SourceError(f"dataset.layout must be one of {list(LAYOUTS)}, got {layout!r}")
    root, layout = detect_layout(path, layout)
    found, incomplete = _nnunet_cases(root) if layout == "nnunet" else _kits_cases(root)
    if incomplete:
        log.warning(
            "%s: %d cases lack an image or labels and are left out (e.g. %s)", root, len(incomplete), incomplete[0]
        )
    if not found:
        raise SourceError(f"dataset.path {root}: no case has both an image and labels ({layout} layout)")
    ids = check_case_ids(sorted(found, key=natural_key), root)
    return root, {i: found[i] for i in ids}


def detect_layout(path: Path, layout: str = "auto") -> tuple[Path, str]:
    """The folder that holds the cases, and its layout; a kits23/kits19 clone is recognised by its subfolder."""
    for candidate in (path, path / "dataset", path / "data"):
        if not candidate.is_dir():
            continue
        if layout in ("auto", "nnunet") and (candidate / "imagesTr").is_dir() and (candidate / "labelsTr").is_dir():
            return candidate, "nnunet"
        if layout in ("auto", "kits") and any(_visible(p) for p in candidate.glob("*/segmentation.*")):
            return candidate, "kits"
    wanted = WHAT if layout == "auto" else f"the {layout} layout"
    raise SourceError(f"dataset.path {path} holds neither; expected {wanted} (or set dataset.layout)")


def _kits_cases(root: Path) -> tuple[dict[str, LocalCase], list[str]]:
    found, incomplete = {}, []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and _visible(p)):
        image, label = _with_suffix(folder, "imaging"), _with_suffix(folder, "segmentation")
        if image and label:
            found[folder.name] = LocalCase(folder.name, image, label)
        elif image or label:
            incomplete.append(f"{folder.name}: no {'segmentation' if image else 'imaging'} file")
    return found, incomplete


def _nnunet_cases(root: Path) -> tuple[dict[str, LocalCase], list[str]]:
    found, incomplete = {}, []
    images = root / "imagesTr"
    for label in sorted((root / "labelsTr").iterdir()):
        name = strip_volume_suffix(label.name)
        if name is None or not _visible(label):
            continue
        suffix = label.name[len(name) :]
        image = next((p for p in (images / f"{name}_0000{suffix}", images / f"{name}{suffix}") if p.is_file()), None)
        if image is None:
            incomplete.append(f"{name}: no imagesTr/{name}_0000{suffix}")
            continue
        found[name] = LocalCase(name, image, label)
    return found, incomplete


def _with_suffix(folder: Path, stem: str) -> Path | None:
    return next((folder / f"{stem}{s}" for s in VOLUME_SUFFIXES if (folder / f"{stem}{s}").is_file()), None)


def _visible(path: Path) -> bool:
    """Skips hidden files, including the ._NAME resource forks that macOS leaves in MSD archives."""
    return not path.name.startswith(".")


def _relative_name(file: Path, base: Path) -> str:
    try:
        return normalise_name(file.relative_to(base).as_posix())
    except ValueError:
        return file.name
