import nibabel as nib
import numpy as np
import pytest

from helpers import write_case
from segflow.io import read_json
from segflow.preprocess import foreground_box, load_case, preprocess_case, restore_labels

CFG = {
    "format": "npy",
    "orientation": "RAS",
    "spacing": None,
    "crop_foreground": True,
    "body_threshold": -500,
    "crop_margin": 1,
    "window": [-79, 304],
    "gamma": 1.5,
    "size": [32, 32],
}


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("fmt", ["npy", "png"])
def test_outputs_and_intensity_chain(tmp_path, fmt):
    image, seg = write_case(tmp_path / "raw")
    meta = preprocess_case(image, seg, tmp_path / "out", {**CFG, "format": fmt})
    stack, labels = load_case(tmp_path / "out")
    assert stack.shape == labels.shape == (8, 32, 32)
    assert 0.0 <= stack.min() and stack.max() <= 1.0
    assert set(np.unique(labels)) == {0, 1, 2}
    # 180 HU kidney: window to [0, 1] then gamma 1.5.
    expected = ((180 + 79) / (304 + 79)) ** 1.5
    assert np.isclose(np.median(stack[labels == 1]), expected, atol=2 / 255 if fmt == "png" else 1e-3)
    assert meta["original_axcodes"] == "LPS" and meta["crop_box"] == [[1, 23], [1, 19]]
    assert read_json(tmp_path / "out" / "meta.json") == meta
    assert (tmp_path / "out" / "slices.tsv").read_text().splitlines()[4].split("\t")[1] == "1,2"


def test_round_trip_restores_grid_and_labels(tmp_path):
    # A kidney-sized object (tens of voxels across) resized up by a non-integer factor and back.
    shape = (70, 64, 10)
    image = np.full(shape, -1000, np.int16)
    image[2:-2, 2:-2] = 40
    label = np.zeros(shape, np.uint8)
    label[10:42, 12:40, 2:8] = 1
    label[30:38, 20:30, 3:6] = 2
    image, seg = write_case(tmp_path / "raw", image=image, seg=label)
    meta = preprocess_case(image, seg, tmp_path / "out", {**CFG, "size": [96, 96]})
    _, labels = load_case(tmp_path / "out")
    restored = restore_labels(np.asarray(labels), meta)
    original = np.asarray(nib.load(seg).dataobj)
    assert restored.shape == original.shape
    assert dice(restored == 1, original == 1) > 0.98


def test_round_trip_with_kits_axis_order(tmp_path):
    # KiTS volumes are stored (z, y, x) with an I-P-L style affine: the first axis is the slice axis.
    shape = (10, 36, 40)
    affine = np.array([[0, 0, -0.8, 0], [0, -0.8, 0, 0], [-3.0, 0, 0, 0], [0, 0, 0, 1.0]])
    image = np.full(shape, -1000, np.int16)
    image[:, 2:-2, 2:-2] = 40
    seg = np.zeros(shape, np.uint8)
    seg[2:7, 10:20, 5:25] = 1
    image[seg == 1] = 180
    write_case(tmp_path / "raw", image=image, seg=seg, affine=affine)
    meta = preprocess_case(tmp_path / "raw/imaging.nii.gz", tmp_path / "raw/segmentation.nii.gz", tmp_path / "out", CFG)
    assert meta["original_axcodes"] == "IPL" and meta["n_slices"] == 10
    _, labels = load_case(tmp_path / "out")
    restored = restore_labels(np.asarray(labels), meta)
    assert restored.shape == shape
    assert dice(restored == 1, seg == 1) > 0.95


def test_foreground_box_with_and_without_body():
    volume = np.full((10, 12, 3), -1000.0)
    volume[2:5, 3:9, 1] = 0
    assert foreground_box(volume, -500, 1) == (slice(1, 6), slice(2, 10))
    assert foreground_box(np.full((4, 4, 2), -1000.0), -500, 1) == (slice(0, 4), slice(0, 4))
    volume[0:3, 10:12, 0] = 0  # body touching the image edge: the margin is clipped, never negative
    assert foreground_box(volume, -500, 2) == (slice(0, 7), slice(1, 12))


def test_failed_preprocessing_leaves_no_output(tmp_path):
    image, seg = write_case(tmp_path / "raw")
    with pytest.raises(ValueError, match="format"):
        preprocess_case(image, seg, tmp_path / "out", {**CFG, "format": "tiff"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]
