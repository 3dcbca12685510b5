import nibabel as nib
import numpy as np

from segflow.sources import synthetic


def test_phantom_is_deterministic_per_seed_and_case():
    a = synthetic.make_phantom("synth_001", 3, matrix=64, slices=(16, 24))
    b = synthetic.make_phantom("synth_001", 3, matrix=64, slices=(16, 24))
    c = synthetic.make_phantom("synth_001", 4, matrix=64, slices=(16, 24))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert a[0].shape != c[0].shape or not np.array_equal(a[0], c[0])


def test_phantom_content_is_a_plausible_abdomen():
    image, label, affine = synthetic.make_phantom("synth_001", 42, matrix=96, slices=(40, 48))
    assert image.dtype == np.int16 and label.dtype == np.uint8
    assert set(np.unique(label)) <= {0, 1, 2, 3} and {1, 2} <= set(np.unique(label))
    assert image.min() >= -1024 and image.max() <= 1679  # a normal case passes the default HU filter
    # Kidney cortex is brighter than medulla; the tumour spans kidney HU (no single threshold separates them).
    kidney, tumour = image[label == 1], image[label == 2]
    assert np.percentile(kidney, 90) > 170
    assert np.percentile(tumour, 10) < np.percentile(kidney, 10) < np.percentile(tumour, 90)
    # Affine: L-P-S voxel axes with the case's spacing.
    assert np.allclose(np.sign(np.diag(affine)[:3]), [-1, -1, 1])
    assert "".join(nib.aff2axcodes(affine)) == "LPS"


def test_some_cases_are_built_to_fail_the_default_filters():
    thin = synthetic.make_phantom("synth_005", 42, matrix=64, slices=(48, 96))[0]
    padded = synthetic.make_phantom("synth_003", 42, matrix=64, slices=(48, 96))[0]
    assert thin.shape[2] > 110
    assert padded.min() == -2048


def test_import_case_writes_matching_nifti_pair(tmp_path):
    dataset = {"source": "synthetic", "n_cases": 2, "synthetic": {"matrix": 64, "slices": [16, 20]}}
    synthetic.import_case(dataset, "synth_000", tmp_path / "im.nii.gz", tmp_path / "seg.nii.gz", 1)
    image, seg = nib.load(tmp_path / "im.nii.gz"), nib.load(tmp_path / "seg.nii.gz")
    assert image.shape == seg.shape
    assert np.allclose(image.affine, seg.affine)
    assert image.get_data_dtype() == np.int16 and seg.get_data_dtype() == np.uint8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["im.nii.gz", "seg.nii.gz"]  # no temp files left


def test_list_cases_honours_dataset_cases():
    assert synthetic.list_cases({"n_cases": 4}, 0) == ["synth_000", "synth_001", "synth_002", "synth_003"]
    assert synthetic.list_cases({"n_cases": 4, "cases": 2}, 0) == ["synth_000", "synth_001"]
    assert synthetic.list_cases({"n_cases": 4, "cases": ["synth_003"]}, 0) == ["synth_003"]
