"""The phantom source: synthesised CT around real label maps, on small hand-made KiTS-like label maps."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import ndimage
from workflow import copy_workflow, snakemake

from segflow.io import save_nifti
from segflow.sources import SourceError, import_case, list_cases
from segflow.sources.phantom import block_mean, case_parameters, from_ras, synthesise, to_ras, upsample

IN_PLANE, SLICE = 4.0, 5.0
# KiTS stores (z, y, x) with an I-P-L affine: axis 0 runs to inferior, 1 to posterior, 2 to the patient's left.
KITS_AFFINE = np.array([[0, 0, -IN_PLANE, 0], [0, -IN_PLANE, 0, 0], [-SLICE, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


def kits_labels(shape=(24, 96, 96), tumour=True, cyst=True, shift=0):
    """Two kidneys either side of the middle (axis 2 is left-right), a tumour on one and a cyst on the other."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    labels = np.zeros(shape, dtype=np.uint8)
    cz, cy = shape[0] / 2, shape[1] * 0.6
    for side in (-1, 1):
        cx = shape[2] / 2 + side * shape[2] * 0.2 + shift
        kidney = ((x - cx) / 9.0) ** 2 + ((y - cy) / 8.0) ** 2 + ((z - cz) / 7.0) ** 2 <= 1
        labels[kidney] = 1
    if tumour:
        labels[(((x - shape[2] * 0.3) / 4.0) ** 2 + ((y - cy) / 4.0) ** 2 + ((z - cz - 2) / 2.5) ** 2) <= 1] = 2
    if cyst:
        labels[(((x - shape[2] * 0.7) / 3.5) ** 2 + ((y - cy) / 3.5) ** 2 + ((z - cz) / 2.5) ** 2) <= 1] = 3
    return labels


@pytest.fixture
def label_dir(tmp_path):
    root = tmp_path / "kits23" / "dataset"  # a kits23 clone: the cases sit under dataset/
    for i in range(3):
        save_nifti(root / f"case_{i:05d}" / "segmentation.nii.gz", kits_labels(shift=i), KITS_AFFINE)
    return tmp_path / "kits23"


def dataset(label_dir, **extra):
    return {"source": "phantom", "phantom": {"label_dir": str(label_dir), **extra}}


def make(tmp_path, label_dir, case="case_00000", seed=3, **extra):
    out = tmp_path / f"out_{seed}_{case}"
    image_out, seg_out = out / "imaging.nii.gz", out / "segmentation.nii.gz"
    import_case(dataset(label_dir, **extra), case, image_out, seg_out, seed)
    return nib.load(str(image_out)), nib.load(str(seg_out))


def test_case_list_and_selection(label_dir):
    assert list_cases(dataset(label_dir), 0) == ["case_00000", "case_00001", "case_00002"]
    assert list_cases({**dataset(label_dir), "cases": 2}, 0) == ["case_00000", "case_00001"]
    assert list_cases({**dataset(label_dir), "cases": ["case_00002"]}, 0) == ["case_00002"]
    with pytest.raises(SourceError, match="case_00009"):
        list_cases({**dataset(label_dir), "cases": ["case_00009"]}, 0)


def test_image_has_the_labels_grid_and_the_labels_are_unchanged(tmp_path, label_dir):
    image, seg = make(tmp_path, label_dir)
    source = nib.load(str(label_dir / "dataset/case_00000/segmentation.nii.gz"))
    assert image.shape == seg.shape == source.shape
    assert np.array_equal(image.affine, source.affine) and np.array_equal(seg.affine, source.affine)
    assert image.get_data_dtype() == np.int16 and seg.get_data_dtype() == np.uint8
    assert np.array_equal(np.asanyarray(seg.dataobj), np.asanyarray(source.dataobj))
    assert (label_dir / "dataset/case_00000/segmentation.nii.gz").read_bytes() == (
        tmp_path / "out_3_case_00000/segmentation.nii.gz"
    ).read_bytes()


def test_deterministic_per_seed_and_case(tmp_path, label_dir):
    first = np.asanyarray(make(tmp_path / "a", label_dir)[0].dataobj)
    again = np.asanyarray(make(tmp_path / "b", label_dir)[0].dataobj)
    other_seed = np.asanyarray(make(tmp_path / "c", label_dir, seed=4)[0].dataobj)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other_seed)


def test_intensities_look_like_contrast_ct(tmp_path, label_dir):
    image, seg = make(tmp_path, label_dir, noise=[8.0, 8.0], fov_padding_fraction=0.0, offset_fraction=0.0)
    hu = np.asanyarray(image.dataobj).astype(float)
    labels = np.asanyarray(seg.dataobj)
    depth = ndimage.distance_transform_edt(labels == 1, sampling=image.header.get_zooms()[:3])
    cortex = hu[(labels == 1) & (depth > 4.5) & (depth <= 8.5)]  # second layer: clear of partial volume
    medulla = hu[(labels == 1) & (depth >= 14)]
    assert cortex.mean() > medulla.mean() + 20, (cortex.mean(), medulla.mean())
    cyst = hu[ndimage.binary_erosion(labels == 3)]
    assert cyst.size and -15 < cyst.mean() < 40
    assert 100 < cortex.mean() < 300
    corners = hu[:, [0, 0, -1, -1], [0, -1, 0, -1]]  # far outside the body
    assert corners.max() < -850


def test_fov_padding_outside_the_circle(tmp_path, label_dir):
    image, _ = make(tmp_path, label_dir, fov_padding_fraction=1.0)
    hu = np.asanyarray(image.dataobj)
    assert set(np.unique(hu[:, [0, -1], [0, -1]])) <= {-2048, -1024}


def test_missing_label_file_is_a_one_line_source_error(tmp_path, label_dir):
    (label_dir / "dataset/case_00001/segmentation.nii.gz").unlink()
    with pytest.raises(SourceError) as error:
        import_case(dataset(label_dir), "case_00001", tmp_path / "i.nii.gz", tmp_path / "s.nii.gz", 0)
    message = str(error.value)
    assert "\n" not in message and "case_00001" in message and "segmentation.nii.gz" in message
    assert not (tmp_path / "i.nii.gz").exists()
    with pytest.raises(SourceError, match="label_dir is not set"):
        list_cases({"source": "phantom"}, 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no <case>/segmentation"):
        list_cases(dataset(tmp_path / "empty"), 0)


def test_damaged_label_file_is_a_one_line_source_error(tmp_path, label_dir):
    (label_dir / "dataset/case_00002/segmentation.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(SourceError) as error:
        import_case(dataset(label_dir), "case_00002", tmp_path / "i.nii.gz", tmp_path / "s.nii.gz", 0)
    assert "\n" not in str(error.value) and "case_00002/segmentation.nii.gz" in str(error.value)


def test_one_kidney_and_other_orientations(tmp_path):
    """A single kidney (nephrectomy) in RAS voxel order: still an image on the label's grid."""
    labels = kits_labels(tumour=False, cyst=False)
    labels[:, :, 48:] = 0
    ras = np.transpose(labels, (2, 1, 0))[::-1, ::-1, ::-1].copy()
    affine = np.diag([IN_PLANE, IN_PLANE, SLICE, 1.0])
    image, params = synthesise(ras, affine, 1, "x", None)
    assert image.shape == ras.shape and image.dtype == np.int16
    assert len(params["anatomy"]["sides"]) == 1


def test_lesions_one_slice_thick_and_parameters_without_the_image():
    labels = kits_labels(tumour=False, cyst=False)
    labels[12, 55:58, 26:29] = 2  # a tumour in a single slice (thick-slice scans have them)
    labels[12, 57, 67] = 3
    image, params = synthesise(labels, KITS_AFFINE, 5, "thin", None)
    assert image.shape == labels.shape
    assert {k: v for k, v in params.items() if k != "anatomy"} == case_parameters(KITS_AFFINE, 5, "thin")


def test_orientation_round_trip_and_resampling_helpers():
    labels = kits_labels()
    ras, spacing, back = to_ras(labels, KITS_AFFINE)
    assert np.allclose(spacing, [IN_PLANE, IN_PLANE, SLICE]) and ras.shape == (96, 96, 24)
    assert np.array_equal(from_ras(ras, back), labels)
    coarse = block_mean(np.ones((10, 9, 5), dtype=bool), (3, 2, 2))
    assert coarse.shape == (4, 5, 3) and np.allclose(coarse, 1)
    ramp = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
    fine = upsample(ramp, (8, 2, 2), (2, 1, 1))
    assert np.allclose(fine[:, 0, 0], [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3])


def test_tiny_dag_on_the_phantom_source(tmp_path):
    labels_root = tmp_path / "labels"
    for i in range(6):
        save_nifti(
            labels_root / f"case_{i:05d}" / "segmentation.nii.gz",
            kits_labels((20, 64, 64), shift=i % 3),
            np.array([[0, 0, -6.0, 0], [0, -6.0, 0, 0], [-5.0, 0, 0, 0], [0, 0, 0, 1]]),
        )
    workdir = copy_workflow(tmp_path / "run")
    overrides = {
        "dataset": {"source": "phantom", "phantom": {"label_dir": str(labels_root)}},
        "selection": {"hu_min": -2048, "hu_max": 4000},
        "train": {"rounds": 1, "epochs": 1, "samples_per_epoch": 16},  # the DAG is under test, not the model
    }
    (workdir / "config" / "phantom.yaml").write_text(yaml.safe_dump(overrides))
    snakemake(workdir, "--configfile", "config/tiny.yaml", "config/phantom.yaml")
    results = workdir / "results"
    table = pd.read_csv(results / "selection/cases.tsv", sep="\t", keep_default_na=False)
    assert list(table["case_id"]) == [f"case_{i:05d}" for i in range(6)] and table["selected"].all()
    scores = pd.read_csv(results / "scores/scores.tsv", sep="\t")
    for case in scores["case_id"]:
        prediction = nib.load(results / f"predictions/{case}.nii.gz")
        reference = nib.load(labels_root / case / "segmentation.nii.gz")
        assert prediction.shape == reference.shape and np.allclose(prediction.affine, reference.affine)
    assert (results / "report/report.html").exists()
