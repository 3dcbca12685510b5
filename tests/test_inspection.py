import gzip

import numpy as np
import pytest
from helpers import write_case

from segflow.inspection import inspect_case, slice_axis
from segflow.io import save_nifti

LABELS = [0, 1, 2, 3]


def test_good_case_figures(tmp_path):
    image, seg = write_case(tmp_path / "a")
    report = inspect_case("a", image, seg, LABELS)
    assert report["ok"] and report["problems"] == []
    assert report["shape"] == [24, 20, 8] and report["n_slices"] == 8 and report["slice_axis"] == 2
    assert report["spacing"] == [2.0, 2.0, 5.0]
    assert report["hu_min"] == -1000 and report["hu_max"] == 180
    assert report["label_values"] == [0, 1, 2]


def test_slice_axis_follows_the_affine_not_the_array_order():
    # KiTS stores (z, y, x): the first voxel axis runs head-foot.
    kits_like = np.array([[0, 0, -0.8, 0], [0, -0.8, 0, 0], [-3.0, 0, 0, 0], [0, 0, 0, 1]])
    assert slice_axis(kits_like) == 0


def test_problems_are_reported_not_raised(tmp_path):
    image, seg = write_case(tmp_path / "b")
    save_nifti(seg, np.full((24, 20, 8), 7, dtype=np.uint8), np.diag([-2.0, -2.0, 5.0, 1]))
    report = inspect_case("b", image, seg, LABELS)
    assert not report["ok"]
    assert any("outside" in p for p in report["problems"])


def test_shape_mismatch_nan_empty_and_4d(tmp_path):
    image, seg = write_case(tmp_path / "c", labels=False)
    save_nifti(seg, np.zeros((24, 20, 9), dtype=np.uint8), np.eye(4))
    problems = inspect_case("c", image, seg, LABELS)["problems"]
    assert any("differs from segmentation shape" in p for p in problems)

    nan_image = np.zeros((4, 4, 4), dtype=np.float32)
    nan_image[0, 0, 0] = np.nan
    save_nifti(tmp_path / "nan.nii.gz", nan_image, np.eye(4))
    save_nifti(tmp_path / "empty.nii.gz", np.zeros((4, 4, 4), np.uint8), np.eye(4))
    problems = inspect_case("d", tmp_path / "nan.nii.gz", tmp_path / "empty.nii.gz", LABELS)["problems"]
    assert any("NaN" in p for p in problems) and any("empty" in p for p in problems)

    save_nifti(tmp_path / "4d.nii.gz", np.zeros((4, 4, 4, 2), np.int16), np.eye(4))
    problems = inspect_case("e", tmp_path / "4d.nii.gz", tmp_path / "empty.nii.gz", LABELS)["problems"]
    assert any("4D" in p for p in problems)


def test_affine_mismatch(tmp_path):
    image, seg = write_case(tmp_path / "f")
    write_case(tmp_path / "g", affine=np.diag([-2.0, -2.0, 2.5, 1.0]))
    problems = inspect_case("f", image, tmp_path / "g" / "segmentation.nii.gz", LABELS)["problems"]
    assert any("affines differ" in p for p in problems)


def test_truncated_gzip_is_unreadable(tmp_path):
    image, seg = write_case(tmp_path / "h")
    data = gzip.compress(gzip.decompress(image.read_bytes()))
    image.write_bytes(data[: len(data) // 2])
    report = inspect_case("h", image, seg, LABELS)
    assert any(p.startswith("image unreadable (imaging.nii.gz") for p in report["problems"])


def patch_header(path, srow_z=None, pixdim=None):
    """Write NIfTI header fields that nibabel refuses to write: sform row z (bytes 312..328), pixdim[1..3]."""
    import struct

    raw = bytearray(gzip.decompress(path.read_bytes()))
    if srow_z is not None:
        raw[312:328] = struct.pack("<4f", *srow_z)
    if pixdim is not None:
        raw[80:92] = struct.pack("<3f", *pixdim)
    raw[252:254] = struct.pack("<h", 0)  # qform_code 0: the affine comes from the sform
    path.write_bytes(gzip.compress(bytes(raw)))


def test_singular_affine_is_left_out_with_its_reason(tmp_path):
    from segflow.selection import SelectionError, select_cases

    image, seg = write_case(tmp_path / "s")
    for path in (image, seg):
        patch_header(path, srow_z=[0, 0, 0, 0])  # an all-zero row: no voxel axis runs head-foot
    report = inspect_case("s", image, seg, LABELS)
    assert any(p.startswith("image affine is singular") for p in report["problems"]), report["problems"]
    assert "n_slices" not in report and "slice_axis" not in report  # no slice count read from a zero row
    good = [inspect_case(c, *write_case(tmp_path / c), LABELS) for c in ("a", "b", "c")]
    selection = {"max_slices": 110, "hu_min": -1024, "hu_max": 1679, "test_fraction": 0.25}
    table = select_cases([report] + good, selection, seed=0).set_index("case_id")
    assert not table.loc["s", "selected"] and "affine is singular" in table.loc["s", "reason"]
    with pytest.raises(SelectionError, match="s: image affine is singular"):
        select_cases([report] + good, {**selection, "strict": True}, seed=0)


def test_non_finite_affine_and_zero_spacing_are_problems(tmp_path):
    image, seg = write_case(tmp_path / "n")
    patch_header(image, srow_z=[0, 0, float("nan"), 0])
    problems = inspect_case("n", image, seg, LABELS)["problems"]
    assert any(p.startswith("image affine has NaN or infinite values") for p in problems), problems
    assert any("affines differ" in p for p in problems)

    image, seg = write_case(tmp_path / "z")
    patch_header(image, pixdim=[2, 2, 0])  # nibabel reports a zero pixdim as 1 when it loads the file
    problems = inspect_case("z", image, seg, LABELS)["problems"]
    assert any(p.startswith("image spacing has zero or invalid voxel sizes [2.0, 2.0, 0.0]") for p in problems), (
        problems
    )
