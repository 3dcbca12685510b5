"""Small fabricated volumes for unit tests."""

from pathlib import Path

import numpy as np

from segflow.io import save_nifti


def write_case(
    folder: Path, shape=(24, 20, 8), spacing=(2.0, 2.0, 5.0), labels=True, image=None, seg=None, affine=None
):
    """Write imaging.nii.gz/segmentation.nii.gz: a body block of soft tissue with a kidney and a tumour box."""
    folder.mkdir(parents=True, exist_ok=True)
    if affine is None:
        affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    if image is None:
        image = np.full(shape, -1000, dtype=np.int16)
        image[2:-2, 2:-2, :] = 40
    if seg is None:
        seg = np.zeros(shape, dtype=np.uint8)
        if labels:
            seg[6:14, 6:12, 2:6] = 1
            seg[8:11, 7:10, 3:5] = 2
            image[seg == 1] = 180
            image[seg == 2] = 120
    save_nifti(folder / "imaging.nii.gz", image, affine)
    save_nifti(folder / "segmentation.nii.gz", seg, affine)
    return folder / "imaging.nii.gz", folder / "segmentation.nii.gz"


def config_with_defaults(overrides: dict | None = None) -> dict:
    """A full config: ``overrides`` with every other key filled from config/schema.yaml, as the Snakefile does."""
    import copy

    from snakemake.utils import validate

    config = copy.deepcopy(overrides or {})
    validate(config, str(Path(__file__).resolve().parents[1] / "config" / "schema.yaml"))
    return config
