"""KiTS23 and KiTS19, downloaded case by case: imaging from the Hugging Face dataset, segmentations from GitHub.

Where the files are (the official download scripts, kits23/download.py and kits19/starter_code/get_imaging_v2.py,
fetch the same imaging files):

* imaging: ``{dataset.imaging_base_url}/images/case_XXXXX.nii.gz`` (CT in HU, both challenges),
  default base ``https://huggingface.co/datasets/neheller/KiTS-Challenge-Imaging/resolve/main``;
* kits23 segmentation: ``{dataset.segmentation_base_url}/dataset/case_XXXXX/segmentation.nii.gz``, default base
  ``https://raw.githubusercontent.com/neheller/kits23/main``; labels 0 background, 1 kidney, 2 tumour, 3 cyst;
* kits19 segmentation: ``{dataset.segmentation_base_url}/data/case_XXXXX/segmentation.nii.gz``, default base
  ``https://raw.githubusercontent.com/neheller/kits19/master``; labels 0, 1 kidney, 2 tumour.

Both already use the project's label set; ``dataset.label_map`` can still remap (unlisted labels become 0). Pin a
release by putting a commit or tag in place of ``main``/``master`` in the base URLs. A manifest
(``dataset.manifest``) lists files by their path relative to the base URL (``images/case_00000.nii.gz``,
``dataset/case_00000/segmentation.nii.gz``) with size and/or SHA-256.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segflow.download import fetch, load_manifest, manifest_checks
from segflow.io import save_nifti
from segflow.sources import CaseInputs, SourceError, select_ids
from segflow.sources.common import apply_label_map, is_plain_label_nifti, parse_label_map, to_uint8_labels

log = logging.getLogger(__name__)

IMAGING_BASE_URL = "https://huggingface.co/datasets/neheller/KiTS-Challenge-Imaging/resolve/main"
IMAGING_PATH = "images/{case}.nii.gz"
DOWNLOAD_DEFAULTS = {"retries": 5, "timeout": 60.0, "backoff": 2.0}


@dataclass(frozen=True)
class Release:
    name: str
    case_numbers: tuple[int, ...]
    segmentation_base_url: str
    segmentation_path: str  # relative to the segmentation base URL


RELEASES = {
    # 489 training cases; 300-399 do not exist (KiTS21's test cases, never released).
    "kits23": Release(
        "kits23",
        tuple(range(0, 300)) + tuple(range(400, 589)),
        "https://raw.githubusercontent.com/neheller/kits23/main",
        "dataset/{case}/segmentation.nii.gz",
    ),
    "kits19": Release(
        "kits19",
        tuple(range(0, 210)),
        "https://raw.githubusercontent.com/neheller/kits19/master",
        "data/{case}/segmentation.nii.gz",
    ),
}


def release_of(dataset: dict) -> Release:
    source = dataset.get("source")
    try:
        return RELEASES[source]
    except KeyError:
        raise SourceError(f"segflow.sources.kits serves {sorted(RELEASES)}, not dataset.source {source!r}") from None


def case_ids(release: Release) -> list[str]:
    return [f"case_{n:05d}" for n in release.case_numbers]


def list_cases(dataset: dict, seed: int) -> list[str]:
    """The configured cases; computed, never fetched, so a dry run over every case is instant."""
    return select_ids(case_ids(release_of(dataset)), dataset.get("cases"))


def case_inputs(dataset: dict, case_ids: list[str]) -> dict:
    """Remote files are no Snakemake inputs. When the manifest gives the SHA-256 of both files of a case, those
    checksums are the case's identity in place of the base URLs: a mirror with the same bytes (a host-only change)
    reimports nothing, while a different file version (a new checksum) reimports its case. Without checksums the
    URLs stay the identity, since a URL (a commit in place of main) may be all that names a dataset version."""
    release, manifest = release_of(dataset), load_manifest(dataset)
    found = {}
    for case_id in case_ids:
        paths = (IMAGING_PATH.format(case=case_id), release.segmentation_path.format(case=case_id))
        sums = {path: manifest_checks(manifest, path).get("sha256") for path in paths}
        if all(sums.values()):
            found[case_id] = CaseInputs(
                identity={"sha256": sums}, replaces=("imaging_base_url", "segmentation_base_url")
            )
    return found


def import_case(dataset: dict, case_id: str, image_out, seg_out, seed: int) -> None:
    release = release_of(dataset)
    if case_id not in set(case_ids(release)):
        raise SourceError(f"{case_id} is not a {release.name} training case (ids like case_00000; see dataset.cases)")
    image_base = _base_url(dataset, "imaging_base_url", IMAGING_BASE_URL)
    seg_base = _base_url(dataset, "segmentation_base_url", release.segmentation_base_url)
    image_path = IMAGING_PATH.format(case=case_id)
    seg_path = release.segmentation_path.format(case=case_id)
    manifest = load_manifest(dataset)
    options = download_options(dataset)
    try:
        # The small segmentation first: a wrong base URL or case id fails in a second, not after 200 MB.
        fetch(
            f"{seg_base}/{seg_path}",
            seg_out,
            **manifest_checks(manifest, seg_path),
            **options,
            hint=f"check dataset.segmentation_base_url ({seg_base}) and that {case_id} is a {release.name} case",
        )
        fetch(
            f"{image_base}/{image_path}",
            image_out,
            **manifest_checks(manifest, image_path),
            **options,
            hint=f"check dataset.imaging_base_url ({image_base}) and that {case_id} is a {release.name} case",
        )
        finish_labels(image_out, seg_out, dataset, case_id)
    except BaseException:
        # Never leave one half of a case, or labels that were not converted, looking finished.
        Path(seg_out).unlink(missing_ok=True)
        Path(image_out).unlink(missing_ok=True)
        raise


def download_options(dataset: dict) -> dict:
    """``dataset.download.{retries, timeout, backoff}`` over the defaults, checked."""
    raw = dataset.get("download") or {}
    unknown = set(raw) - set(DOWNLOAD_DEFAULTS)
    if unknown:
        raise SourceError(f"dataset.download has unknown keys {sorted(unknown)}; known: {sorted(DOWNLOAD_DEFAULTS)}")
    options = {**DOWNLOAD_DEFAULTS, **raw}
    try:
        retries, timeout, backoff = int(options["retries"]), float(options["timeout"]), float(options["backoff"])
    except (TypeError, ValueError):
        raise SourceError(f"dataset.download values must be numbers, got {raw!r}") from None
    if retries < 0 or timeout <= 0 or backoff < 0:
        raise SourceError(f"dataset.download needs retries >= 0, timeout > 0 and backoff >= 0, got {options}")
    return {"retries": retries, "timeout": timeout, "backoff": backoff}


def _base_url(dataset: dict, key: str, default: str) -> str:
    url = str(dataset.get(key) or default).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise SourceError(f"dataset.{key} must be an http(s) URL, got {url!r}")
    return url


def finish_labels(image_path, seg_path, dataset: dict, case_id: str) -> None:
    """Check that image and labels share a grid; store labels as uint8 (remapped if configured)."""
    import nibabel as nib

    image, seg = nib.load(str(image_path)), nib.load(str(seg_path))
    if tuple(image.shape[:3]) != tuple(seg.shape[:3]):
        raise SourceError(
            f"{case_id}: imaging shape {list(image.shape)} differs from segmentation shape {list(seg.shape)}; "
            "the imaging and segmentation base URLs may point at different dataset versions"
        )
    label_map = parse_label_map(dataset.get("label_map"))
    if label_map is None and is_plain_label_nifti(seg_path):
        return
    data = np.asanyarray(seg.dataobj)
    labels = apply_label_map(data, label_map) if label_map else to_uint8_labels(data, str(seg_path))
    save_nifti(seg_path, labels, seg.affine)
    log.info("%s: segmentation rewritten as uint8%s", case_id, " with dataset.label_map" if label_map else "")
