"""2D PNG image/mask pairs, stacked into volumes.

``dataset.path`` holds ``images/`` and ``masks/`` with the same file names. ``dataset.group_pattern`` is a regular
expression with named groups ``case`` and ``slice`` that must match a whole file name without ``.png``; files with
the same ``case`` form one volume, ordered by ``slice`` (numerically where it is a number). Without a pattern every
file is a one-slice case named after the file. Files the pattern does not match are skipped (with a warning).

Images: grayscale (8 or 16 bit; colour is converted to gray). Voxel value = ``offset + scale * pixel``, rounded to
int16, with ``dataset.png_intensity: {scale, offset}``. The default maps 0..255 linearly onto -160..240 HU
(scale 400/255, offset -160): a soft-tissue window, which is how most exported CT PNGs were made. Pixels that were
clipped by the export window stay at the window ends; the true HU cannot be recovered.

Masks: values {0, 255} (a binary mask) become label 1; other values are kept as labels (indexed or palette PNGs),
or mapped with ``dataset.label_map`` {mask value: project label} (unlisted values become 0).

Geometry: ``dataset.spacing`` [x, y, z] in mm (default [1, 1, 1]); columns run to the patient's left, rows to
posterior, slices upward (the radiological display of axial slices).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from segflow.io import save_nifti
from segflow.sources import SourceError, select_ids
from segflow.sources.common import (
    apply_label_map,
    check_case_ids,
    dataset_path,
    local_case_inputs,
    natural_key,
    parse_label_map,
    parse_spacing,
    read_gray,
    slice_stack_affine,
    stack_slices,
    to_uint8_labels,
)

log = logging.getLogger(__name__)

DEFAULT_INTENSITY = {"scale": 400.0 / 255.0, "offset": -160.0}  # 0..255 -> -160..240 HU
WHAT = "a folder with images/ and masks/ holding PNG files of the same names"


def list_cases(dataset: dict, seed: int) -> list[str]:
    return select_ids(list(group_files(dataset)[1]), dataset.get("cases"))


def case_inputs(dataset: dict, case_ids: list[str]) -> dict:
    """Each case's image and mask PNGs: inputs of its import."""
    root, groups = group_files(dataset)
    return {
        case: local_case_inputs([root / sub / name for sub in ("images", "masks") for name in groups[case]])
        for case in case_ids
    }


def import_case(dataset: dict, case_id: str, image_out, seg_out, seed: int) -> None:
    root, groups = group_files(dataset)
    if case_id not in groups:
        raise SourceError(f"case {case_id} not found in {root / 'images'} (check dataset.group_pattern)")
    names = groups[case_id]
    scale, offset = intensity_map(dataset)
    label_map = parse_label_map(dataset.get("label_map"))
    images, masks = [], []
    for name in names:
        image, mask = read_gray(root / "images" / name), read_gray(root / "masks" / name)
        if image.shape != mask.shape:
            mask_size, image_size = "x".join(map(str, mask.shape[::-1])), "x".join(map(str, image.shape[::-1]))
            raise SourceError(f"{root / 'masks' / name}: mask is {mask_size} pixels but its image is {image_size}")
        images.append(image)
        masks.append(mask)
    where = f"{root / 'images'} case {case_id}"
    volume = stack_slices(images, names, where)
    hu = np.clip(np.rint(offset + scale * volume.astype(np.float64)), -32768, 32767).astype(np.int16)
    labels = mask_labels(stack_slices(masks, names, where), label_map, where)
    affine = slice_stack_affine(parse_spacing(dataset.get("spacing")))
    save_nifti(image_out, hu, affine)
    save_nifti(seg_out, labels, affine)
    log.info("%s: %d slices of %dx%d from %s", case_id, len(names), volume.shape[0], volume.shape[1], root)


def group_files(dataset: dict) -> tuple[Path, dict[str, list[str]]]:
    """(root, {case id: [file names in slice order]}) for the images that have a mask."""
    root = dataset_path(dataset, WHAT)
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            raise SourceError(f"dataset.path {root} has no {sub}/ folder; point it at {WHAT}")
    pattern = _compile(dataset.get("group_pattern"))
    masks = {p.name for p in (root / "masks").iterdir() if p.suffix.lower() == ".png"}
    groups: dict[str, list[tuple[str, str]]] = {}
    unmatched, unmasked = [], []
    for path in sorted((root / "images").iterdir()):
        if path.suffix.lower() != ".png" or path.name.startswith("."):
            continue
        if path.name not in masks:
            unmasked.append(path.name)
            continue
        match = pattern.fullmatch(path.stem) if pattern else None
        if pattern and not match:
            unmatched.append(path.name)
            continue
        case, slice_key = (match["case"], match["slice"]) if match else (path.stem, "0")
        groups.setdefault(case, []).append((slice_key, path.name))
    if unmatched:
        log.warning("%s: %d files do not match dataset.group_pattern (e.g. %s)", root, len(unmatched), unmatched[0])
    if unmasked:
        log.warning("%s: %d images have no mask of the same name, skipped (e.g. %s)", root, len(unmasked), unmasked[0])
    if not groups:
        raise SourceError(f"{root / 'images'}: no PNG image with a matching mask (and group_pattern, if set)")
    _check_unique_slices(groups, root)
    ids = check_case_ids(sorted(groups, key=natural_key), root / "images")
    return root, {c: [name for _, name in sorted(groups[c], key=lambda s: natural_key(s[0]))] for c in ids}


def _compile(raw) -> re.Pattern | None:
    if not raw:
        return None
    try:
        pattern = re.compile(str(raw))
    except re.error as error:
        raise SourceError(f"dataset.group_pattern {raw!r} is not a valid regular expression: {error}") from None
    if not {"case", "slice"} <= set(pattern.groupindex):
        raise SourceError(f"dataset.group_pattern {raw!r} needs named groups (?P<case>...) and (?P<slice>...)")
    return pattern


def _check_unique_slices(groups: dict, root: Path) -> None:
    for case, slices in groups.items():
        keys = [natural_key(k) for k, _ in slices]
        if len(keys) != len({str(k) for k in keys}):
            raise SourceError(f"{root / 'images'}: case {case} has two files with the same slice number")


def intensity_map(dataset: dict) -> tuple[float, float]:
    raw = {**DEFAULT_INTENSITY, **(dataset.get("png_intensity") or {})}
    try:
        return float(raw["scale"]), float(raw["offset"])
    except (TypeError, ValueError, KeyError):
        raise SourceError(f"dataset.png_intensity must be {{scale: number, offset: number}}, got {raw!r}") from None


def mask_labels(masks: np.ndarray, label_map: dict | None, where: str) -> np.ndarray:
    if masks.dtype == bool:
        masks = masks.astype(np.uint8)
    if label_map:
        return apply_label_map(masks, label_map)
    values = set(np.unique(masks).tolist())
    if values <= {0, 255}:
        return (masks == 255).astype(np.uint8)  # a binary mask: foreground is label 1 (kidney)
    return to_uint8_labels(masks, where)
