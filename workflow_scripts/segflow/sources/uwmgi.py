"""UW-Madison GI Tract Image Segmentation (Kaggle), one volume per case and day.

Layout under ``dataset.path`` (the unpacked competition folder):
``train.csv`` with columns ``id`` (``case123_day20_slice_0001``), ``class`` (large_bowel, small_bowel, stomach) and
``segmentation`` (run-length encoding, empty when the organ is absent), and 16-bit PNG slices at
``train/case123/case123_day20/scans/slice_0001_266_266_1.50_1.50.png``, whose name ends in the slice width and
height in pixels and the pixel spacing in mm.

The run-length encoding is ``start length start length ...`` over the slice flattened in row-major order (along a
row first), with 1-based starts; the mask is decoded with the PNG's own (rows, columns) shape.

Case ids are ``case123_day20``. These are MRI scans of the bowel and stomach, not CT: intensities are the raw PNG
values (not HU, so the HU filters of ``selection`` do not apply), and the labels are organs, not kidney/tumour/cyst.
``dataset.label_map`` maps class names to project labels; default large_bowel 1, small_bowel 2, stomach 3. Where
two classes overlap, the higher project label wins. Slices are 3 mm apart (``dataset.slice_thickness``).
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import numpy as np

from segflow.io import save_nifti
from segflow.sources import CaseInputs, SourceError, identity_digest, select_ids
from segflow.sources.common import (
    check_case_ids,
    dataset_path,
    local_case_inputs,
    natural_key,
    parse_label_map,
    read_gray,
    slice_stack_affine,
    stack_slices,
)

log = logging.getLogger(__name__)

DEFAULT_LABEL_MAP = {"large_bowel": 1, "small_bowel": 2, "stomach": 3}
DEFAULT_SLICE_THICKNESS = 3.0  # mm, from the competition's data description
CASE_DAY = re.compile(r"case\d+_day\d+")
SLICE_FILE = re.compile(r"slice_(?P<slice>\d+)_(?P<width>\d+)_(?P<height>\d+)_(?P<sx>[\d.]+)_(?P<sy>[\d.]+)\.png")
WHAT = "the unpacked UW-Madison GI tract folder (train.csv and train/)"


def list_cases(dataset: dict, seed: int) -> list[str]:
    return select_ids(list(find_case_days(dataset)), dataset.get("cases"))


def case_inputs(dataset: dict, case_ids: list[str]) -> dict:
    """Each case-day's slice PNGs (inputs of its import) and a digest of its own rows of train.csv, which all
    cases share: a corrected train.csv reimports exactly the case-days whose masks changed."""
    case_days = find_case_days(dataset)
    rows = rows_digest(csv_path(dataset))
    found = {}
    for case_id in case_ids:
        slices = local_case_inputs([path for _, _, path in read_slices(case_days[case_id])])
        identity = {**slices.identity, "train_csv": rows.get(case_id, "")}
        found[case_id] = CaseInputs(files=slices.files, identity=identity)
    return found


def rows_digest(path: Path) -> dict[str, str]:
    """{case-day id: digest of its train.csv rows}, in one pass over the file."""
    by_case: dict[str, list] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            match = re.match(r"(case\d+_day\d+)_slice_", row.get("id") or "")
            if match:
                entry = [row["id"], row.get("class") or "", row.get("segmentation") or ""]
                by_case.setdefault(match[1], []).append(entry)
    return {case: identity_digest(sorted(rows)) for case, rows in by_case.items()}


def import_case(dataset: dict, case_id: str, image_out, seg_out, seed: int) -> None:
    case_days = find_case_days(dataset)
    if case_id not in case_days:
        raise SourceError(f"{case_id} not found under {dataset_path(dataset, WHAT) / 'train'} (ids like case123_day20)")
    label_map = parse_label_map(dataset.get("label_map"), default=DEFAULT_LABEL_MAP, numeric_keys=False)
    slices = read_slices(case_days[case_id])
    names = [name for _, name, _ in slices]
    images = [read_gray(path) for _, _, path in slices]
    rles = read_rles(csv_path(dataset), case_id)
    masks = [paint_slice(rles.get(number, {}), image.shape, label_map, f"{case_id}_slice_{number:04d}")
             for (number, _, _), image in zip(slices, images)]  # fmt: skip
    unused = sorted(set(rles) - {number for number, _, _ in slices})
    if unused:
        log.warning("%s: train.csv has masks for slices without a PNG: %s", case_id, unused[:10])
    volume = stack_slices(images, names, case_id)
    labels = stack_slices(masks, names, case_id)
    spacing = (*_pixel_spacing(slices[0][1]), float(dataset.get("slice_thickness", DEFAULT_SLICE_THICKNESS)))
    affine = slice_stack_affine(spacing)
    save_nifti(image_out, _compact(volume), affine)
    save_nifti(seg_out, labels, affine)
    counts = {name: int((labels == value).sum()) for name, value in label_map.items()}
    log.info("%s: %d slices, spacing %s mm, voxels per class %s", case_id, len(slices), spacing, counts)


def find_case_days(dataset: dict) -> dict[str, Path]:
    """{case_day id: its scans/ folder}, in natural order (case2 before case10)."""
    root = dataset_path(dataset, WHAT)
    train = root / "train"
    if not train.is_dir():
        raise SourceError(f"dataset.path {root} has no train/ folder; point it at {WHAT}")
    found = {}
    for scans in train.glob("case*/case*_day*/scans"):
        if CASE_DAY.fullmatch(scans.parent.name) and scans.is_dir():
            found[scans.parent.name] = scans
    if not found:
        raise SourceError(f"{train}: no case folders like train/case123/case123_day20/scans/")
    ids = check_case_ids(sorted(found, key=natural_key), train)
    return {i: found[i] for i in ids}


def csv_path(dataset: dict) -> Path:
    path = dataset_path(dataset, WHAT) / "train.csv"
    if not path.is_file():
        raise SourceError(f"{path} not found; point dataset.path at {WHAT}")
    return path


def read_slices(scans: Path) -> list[tuple[int, str, Path]]:
    """(slice number, file name, path) for every slice PNG, in slice order."""
    slices = []
    for path in scans.iterdir():
        match = SLICE_FILE.fullmatch(path.name)
        if match:
            slices.append((int(match["slice"]), path.name, path))
        elif path.suffix == ".png":
            log.warning("%s: unexpected file name, skipped", path)
    if not slices:
        raise SourceError(f"{scans}: no slice_NNNN_W_H_SX_SY.png files")
    return sorted(slices)


def _pixel_spacing(name: str) -> tuple[float, float]:
    match = SLICE_FILE.fullmatch(name)
    return float(match["sx"]), float(match["sy"])


def read_rles(path: Path, case_id: str) -> dict[int, dict[str, str]]:
    """{slice number: {class: rle}} of one case-day from train.csv (empty encodings left out)."""
    prefix = f"{case_id}_slice_"
    found: dict[int, dict[str, str]] = {}
    with open(path, newline="") as handle:
        rows = csv.DictReader(handle)
        missing = {"id", "class", "segmentation"} - set(rows.fieldnames or [])
        if missing:
            raise SourceError(f"{path}: missing columns {sorted(missing)}")
        for row in rows:
            if row["id"].startswith(prefix) and row["segmentation"].strip():
                found.setdefault(int(row["id"][len(prefix) :]), {})[row["class"]] = row["segmentation"]
    return found


def rle_decode(rle: str, shape: tuple[int, int], where: str) -> np.ndarray:
    """Boolean (rows, columns) mask from ``start length ...`` pairs: 1-based starts, row-major order."""
    try:
        numbers = np.asarray(rle.split(), dtype=np.int64)
    except ValueError:
        raise SourceError(f"{where}: run-length encoding is not a list of numbers: {rle[:40]!r}") from None
    if numbers.size % 2:
        raise SourceError(f"{where}: run-length encoding has an odd count of numbers")
    starts, lengths = numbers[0::2] - 1, numbers[1::2]
    size = shape[0] * shape[1]
    if starts.size and (starts.min() < 0 or lengths.min() < 0 or (starts + lengths).max() > size):
        raise SourceError(f"{where}: run-length encoding runs outside the {shape[1]}x{shape[0]} slice")
    flat = np.zeros(size, dtype=bool)
    for start, length in zip(starts, lengths):
        flat[start : start + length] = True
    return flat.reshape(shape)


def paint_slice(rles: dict[str, str], shape, label_map: dict[str, int], where: str) -> np.ndarray:
    unknown = set(rles) - set(label_map)
    if unknown:
        log.debug("%s: classes %s are not in dataset.label_map and stay background", where, sorted(unknown))
    labels = np.zeros(shape, dtype=np.uint8)
    for name, value in sorted(label_map.items(), key=lambda item: item[1]):  # higher labels painted last win
        if name in rles and value:
            labels[rle_decode(rles[name], shape, f"{where} {name}")] = value
    return labels


def _compact(volume: np.ndarray) -> np.ndarray:
    """16-bit PNG values in a signed type, as CT is stored: int16 when they fit (they usually do), else int32."""
    return volume.astype(np.int16) if volume.max(initial=0) <= np.iinfo(np.int16).max else volume.astype(np.int32)
