"""FLARE22 labelled training cases, read straight from the challenge zip (or its extracted folder).

The 50 labelled cases come as ``images/FLARE22_Tr_0001_0000.nii.gz`` + ``labels/FLARE22_Tr_0001.nii.gz`` under
whatever top folders the archive has (e.g. ``Training/FLARE22_LabeledCase50/``); ``imagesTr``/``labelsTr`` work
too. Unlabelled cases (an image without labels) are ignored. ``dataset.path`` is the zip or the extracted folder.

FLARE22 labels: 1 liver, 2 right kidney, 3 spleen, 4 pancreas, 5 aorta, 6 inferior vena cava, 7 right adrenal
gland, 8 left adrenal gland, 9 gallbladder, 10 esophagus, 11 stomach, 12 duodenum, 13 left kidney. They are mapped
with ``dataset.label_map`` {FLARE label: project label}; unlisted labels become 0. The default, {2: 1, 13: 1}, makes
both kidneys label 1 (kidney). FLARE22 has no tumour or cyst labels.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np

from segflow.io import atomic_path, save_nifti
from segflow.sources import CaseInputs, SourceError, select_ids
from segflow.sources.common import (
    apply_label_map,
    check_case_ids,
    dataset_path,
    local_case_inputs,
    natural_key,
    parse_label_map,
)

log = logging.getLogger(__name__)

FLARE22_LABELS = {
    1: "liver", 2: "right kidney", 3: "spleen", 4: "pancreas", 5: "aorta", 6: "inferior vena cava",
    7: "right adrenal gland", 8: "left adrenal gland", 9: "gallbladder", 10: "esophagus", 11: "stomach",
    12: "duodenum", 13: "left kidney",
}  # fmt: skip
DEFAULT_LABEL_MAP = {2: 1, 13: 1}
IMAGE_MEMBER = re.compile(r"(?:^|/)images(?:Tr)?/(?P<case>[^/]+)_0000\.nii\.gz$")
LABEL_MEMBER = re.compile(r"(?:^|/)labels(?:Tr)?/(?P<case>[^/]+)\.nii\.gz$")
WHAT = "the FLARE22 labelled training zip (or its extracted folder)"


def list_cases(dataset: dict, seed: int) -> list[str]:
    with open_archive(dataset) as archive:
        cases = index_cases(archive)
    return select_ids(list(cases), dataset.get("cases"))


def case_inputs(dataset: dict, case_ids: list[str]) -> dict:
    """An extracted folder: each case's two files (inputs of its import). A zip: the CRC-32 and size of each case's
    two members, from the zip's directory, so that a replaced zip reimports exactly the cases whose members changed."""
    with open_archive(dataset) as archive:
        cases = index_cases(archive)
        if archive.zip is None:
            return {c: local_case_inputs([archive.path / member for member in cases[c]]) for c in case_ids}
        info = {item.filename: [item.CRC, item.file_size] for item in archive.zip.infolist()}
        return {c: CaseInputs(identity={"members": {m: info[m] for m in cases[c]}}) for c in case_ids}


def import_case(dataset: dict, case_id: str, image_out, seg_out, seed: int) -> None:
    import nibabel as nib

    label_map = parse_label_map(dataset.get("label_map"), default=DEFAULT_LABEL_MAP)
    with open_archive(dataset) as archive:
        cases = index_cases(archive)
        if case_id not in cases:
            raise SourceError(f"case {case_id} is not in {archive.where}")
        image_member, label_member = cases[case_id]
        label_image = _nifti_from_gz_bytes(archive.read(label_member), f"{archive.where}:{label_member}")
        labels = apply_label_map(np.asanyarray(label_image.dataobj), label_map)
        try:
            with archive.open(image_member) as source, atomic_path(image_out) as tmp, open(tmp, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)  # already .nii.gz: no need to decode and re-encode
            image_shape = tuple(nib.load(str(image_out)).shape[:3])
            if image_shape != labels.shape:
                raise SourceError(
                    f"{archive.where}: {image_member} has shape {list(image_shape)} but {label_member} has "
                    f"{list(labels.shape)}"
                )
            save_nifti(seg_out, labels, label_image.affine)
        except BaseException:
            Path(image_out).unlink(missing_ok=True)
            raise
    kept = sorted({int(v) for v in np.unique(labels)} - {0})
    log.info("%s: imported from %s, label map %s, project labels present %s", case_id, archive.where, label_map, kept)


def index_cases(archive: "_Archive") -> dict[str, tuple[str, str]]:
    """{case id: (image member, label member)} for every case that has both, in natural order."""
    images, labels = {}, {}
    for name in archive.names():
        if "__MACOSX/" in name or Path(name).name.startswith("."):
            continue
        for pattern, found in ((IMAGE_MEMBER, images), (LABEL_MEMBER, labels)):
            match = pattern.search(name)
            if match:
                if match["case"] in found:
                    log.warning("%s: %s appears twice; using %s", archive.where, match["case"], found[match["case"]])
                found.setdefault(match["case"], name)
    cases = {c: (images[c], labels[c]) for c in sorted(set(images) & set(labels), key=natural_key)}
    if not cases:
        raise SourceError(
            f"{archive.where}: no labelled cases found (expected images/NAME_0000.nii.gz with labels/NAME.nii.gz)"
        )
    check_case_ids(list(cases), archive.where)
    return cases


def _nifti_from_gz_bytes(data: bytes, where: str):
    import nibabel as nib

    try:
        return nib.Nifti1Image.from_bytes(gzip.decompress(data))
    except Exception as error:  # gzip, zlib and nibabel errors alike mean the member is unusable
        raise SourceError(f"cannot read {where}: {type(error).__name__}: {error}") from None


# --- zip or folder ------------------------------------------------------------------------------------------------


class _Archive:
    """The same three operations on a zip file and on a folder: list member names, open one, read one."""

    def __init__(self, path: Path):
        self.path = path
        self.where = str(path)
        self.zip = zipfile.ZipFile(path) if path.is_file() else None

    def names(self) -> list[str]:
        if self.zip is not None:
            return [info.filename for info in self.zip.infolist() if not info.is_dir()]
        return [p.relative_to(self.path).as_posix() for p in self.path.rglob("*.nii.gz")]

    def open(self, name: str):
        return self.zip.open(name) if self.zip is not None else open(self.path / name, "rb")

    def read(self, name: str) -> bytes:
        with self.open(name) as handle:  # zipfile checks the member's CRC once it is read to the end
            return handle.read()

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


@contextlib.contextmanager
def open_archive(dataset: dict):
    path = dataset_path(dataset, WHAT)
    try:
        archive = _Archive(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise SourceError(f"dataset.path {path} is not a readable zip file ({error}); point it at {WHAT}") from None
    try:
        yield archive
    except zipfile.BadZipFile as error:  # includes a CRC mismatch in a member
        raise SourceError(f"{path}: damaged zip file ({error}); download it again") from None
    finally:
        archive.close()
