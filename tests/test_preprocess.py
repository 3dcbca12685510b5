import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import config_with_defaults, write_case
from seed_chain import seed_preprocess

from segflow.cases import load_case
from segflow.geometry import RAS_LABELS, from_slices, plan_grid, to_slices
from segflow.io import read_json
from segflow.nifti_reader import read_voxels
from segflow.preprocess import (
    _memory_order,
    _resample_block,
    _resize_area,
    foreground_box,
    label_stack,
    plan_resampling,
    preprocess_case,
)
from segflow.restore import restore_labels
from segflow.sources.synthetic import make_phantom

DEFAULTS = config_with_defaults()["preprocess"]
CFG = {**DEFAULTS, "crop_margin": 1, "size": [32, 32]}


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def kits_layout(image, label, affine):
    """An (x, y, z) L-P-S case stored the KiTS way: (z, y, x), slice 0 inferior, i.e. I-P-L, same world positions."""
    n_z = image.shape[2]
    kits_affine = np.zeros((4, 4))
    kits_affine[:3, 0], kits_affine[:3, 1], kits_affine[:3, 2] = -affine[:3, 2], affine[:3, 1], affine[:3, 0]
    kits_affine[:3, 3] = affine[:3, 3] + affine[:3, 2] * (n_z - 1)
    kits_affine[3, 3] = 1
    flip = lambda a: np.ascontiguousarray(a.transpose(2, 1, 0)[::-1])  # noqa: E731
    return flip(image), flip(label), kits_affine


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """One synthetic abdomen (136 matrix, 2.5 mm in-plane, 4 mm slices) in dcm2niix and KiTS axis order."""
    folder = tmp_path_factory.mktemp("phantom")
    image, label, affine = make_phantom("synth_006", 42, matrix=128, slices=(28, 28))
    kits_image, kits_label, kits_affine = kits_layout(image, label, affine)
    return {
        "lps": write_case(folder / "lps", image=image, seg=label, affine=affine),
        "kits": write_case(folder / "kits", image=kits_image, seg=kits_label, affine=kits_affine),
    }


@pytest.mark.parametrize("fmt", ["npy", "png"])
def test_outputs_and_intensity_chain(tmp_path, fmt):
    image, seg = write_case(tmp_path / "raw")
    meta = preprocess_case(image, seg, tmp_path / "out", {**CFG, "format": fmt})
    stack, labels = load_case(tmp_path / "out")
    assert stack.shape == labels.shape == (8, 32, 32) and stack.dtype == np.float32
    assert 0.0 <= stack.min() and stack.max() <= 1.0
    assert set(np.unique(labels)) == {0, 1, 2}
    # 180 HU kidney: window to [0, 1] then gamma 1.5.
    expected = ((180 + 79) / (304 + 79)) ** 1.5
    assert np.isclose(np.median(stack[labels == 1]), expected, atol=2 / 255 if fmt == "png" else 1e-3)
    assert meta["original_axcodes"] == "LPS" and meta["crop_box"] == [[0, 8], [1, 23], [1, 19]]
    assert read_json(tmp_path / "out" / "meta.json") == meta
    rows = (tmp_path / "out" / "slices.tsv").read_text().splitlines()
    assert rows[0] == "slice\tlabels\tforeground_fraction" and len(rows) == 9
    assert rows[4].split("\t")[1] == "1,2" and rows[1].split("\t")[1:] == ["", "0.000000"]


@pytest.mark.parametrize("layout,slice_axis", [("lps", "axial"), ("kits", "axial"), ("kits", "coronal")])
def test_same_numbers_as_the_seed_chain(tmp_path, phantom, layout, slice_axis):
    # The seed's MONAI dictionary chain over the whole float volume is the reference, in both storage orders.
    cfg = {**DEFAULTS, "size": [96, 80], "slice_axis": slice_axis}
    expected_image, expected_label = seed_preprocess(*phantom[layout], cfg)
    preprocess_case(*phantom[layout], tmp_path / "out", cfg)
    image, label = load_case(tmp_path / "out")
    assert image.shape == expected_image.shape and label.shape == expected_label.shape
    assert np.abs(image - expected_image).max() <= 1e-6  # summation order in the area resize: an ulp or so
    assert np.array_equal(label, expected_label)


@pytest.mark.parametrize("storage", ["scaled_uint16", "float64"])
def test_same_numbers_for_other_stored_types(tmp_path, phantom, storage):
    # Stored values with a NIfTI slope/intercept go through the lookup table, floats through the float path.
    source = nib.load(phantom["lps"][0])
    hu = np.asarray(source.dataobj)
    if storage == "scaled_uint16":
        image = nib.Nifti1Image((hu + 1024).astype(np.uint16), source.affine)
        image.header.set_slope_inter(1.0, -1024.0)
    else:
        image = nib.Nifti1Image(hu.astype(np.float64) + 0.25, source.affine)
    nib.save(image, tmp_path / "image.nii.gz")
    cfg = {**DEFAULTS, "size": [64, 64]}
    expected_image, expected_label = seed_preprocess(tmp_path / "image.nii.gz", phantom["lps"][1], cfg)
    preprocess_case(tmp_path / "image.nii.gz", phantom["lps"][1], tmp_path / "out", cfg)
    image, label = load_case(tmp_path / "out")
    assert np.abs(image - expected_image).max() <= 1e-6 and np.array_equal(label, expected_label)


@pytest.mark.parametrize("layout", ["lps", "kits"])
@pytest.mark.parametrize("size", [128, 256])
def test_round_trip_restores_grid_affine_and_labels(tmp_path, phantom, layout, size):
    image_path, seg_path = phantom[layout]
    meta = preprocess_case(image_path, seg_path, tmp_path / "out", {**DEFAULTS, "size": [size, size]})
    _, labels = load_case(tmp_path / "out")
    restored = restore_labels(np.asarray(labels), meta)
    original = nib.load(seg_path)
    truth = np.asarray(original.dataobj)
    assert restored.shape == truth.shape and restored.dtype == np.uint8
    assert np.array_equal(np.asarray(meta["original_affine"]), original.affine)  # predictions are saved with it
    assert dice(restored == 1, truth == 1) >= 0.98
    assert dice(restored == 2, truth == 2) >= 0.9  # a small, irregular tumour


def test_round_trip_after_resampling_to_a_target_spacing(tmp_path, phantom):
    # KiTS order, 2.5 x 2.5 x 4 mm resampled to 2 mm isotropic, then mapped back.
    image_path, seg_path = phantom["kits"]
    cfg = {**DEFAULTS, "size": [128, 128], "spacing": [2.0, 2.0, 2.0]}
    meta = preprocess_case(image_path, seg_path, tmp_path / "out", cfg)
    image, labels = load_case(tmp_path / "out")
    resampling = meta["resampling"]
    assert resampling["shape"][0] == meta["n_slices"] == image.shape[0] > meta["cropped_shape"][0]
    restored = restore_labels(np.asarray(labels), meta)
    truth = np.asarray(nib.load(seg_path).dataobj)
    assert restored.shape == truth.shape
    assert dice(restored == 1, truth == 1) >= 0.98


def test_in_plane_spacing_keeps_every_slice_and_the_grid_with_size_null(tmp_path, phantom):
    # 0 keeps an axis's own spacing: the in-plane pixels resampled to 2 mm, the 4 mm slices kept one for one, and with
    # size null the slices keep the resampled grid (no resize), so every case has 2 mm pixels.
    image_path, seg_path = phantom["kits"]
    cfg = {**DEFAULTS, "size": None, "spacing": [2.0, 2.0, 0]}
    meta = preprocess_case(image_path, seg_path, tmp_path / "out", cfg)
    image, labels = load_case(tmp_path / "out")
    cropped = meta["cropped_shape"]
    assert meta["n_slices"] == image.shape[0] == cropped[0]
    assert list(image.shape[1:]) == meta["size"] == meta["resampling"]["shape"][1:]
    zooms = [meta["oriented_spacing"][d] for d in meta["plane_dims"]]
    assert zooms[0] != pytest.approx(2.0) and list(image.shape[1:]) == [
        pytest.approx(n * zoom / 2.0, abs=1) for n, zoom in zip(cropped[1:], zooms)
    ]
    assert meta["resampling"]["scale"][0] == pytest.approx(1.0)
    restored = restore_labels(np.asarray(labels), meta)
    truth = np.asarray(nib.load(seg_path).dataobj)
    assert restored.shape == truth.shape
    assert dice(restored == 1, truth == 1) >= 0.98
    assert dice(restored == 2, truth == 2) >= 0.9


def test_resampling_is_monai_spacing(phantom):
    # The separable, chunked resampling samples exactly where MONAI's Spacing (bilinear / nearest) samples.
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    source = nib.load(phantom["kits"][0])
    hu = np.asarray(source.dataobj)[:, 30:60, 40:70]  # keep it small: a block of body
    affine = source.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ [0, 30, 40]
    cfg = {**DEFAULTS, "spacing": [1.7, 2.2, 3.1]}
    grid = plan_grid(affine, hu.shape, cfg)
    plane = to_slices(hu, grid)
    resampling = plan_resampling(grid, tuple(slice(0, n) for n in plane.shape), cfg)

    def monai_spacing(zhw, mode):  # on the oriented volume, channel first, back to (slice, row, column)
        volume = torch.from_numpy(np.moveaxis(zhw, 0, 2).astype(np.float32))[None]
        volume = MetaTensor(volume, affine=grid["oriented_affine"])
        return np.moveaxis(np.asarray(Spacing(pixdim=cfg["spacing"], mode=mode)(volume)[0]), 2, 0)

    ours = _resample_block(plane, 0, resampling["shape"][0], resampling, None)
    theirs = monai_spacing(plane, "bilinear")
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() < 0.05  # HU; grid_sample works in float32
    labels = to_slices((hu > 100).astype(np.uint8), grid)
    ours = label_stack(labels, {**cfg, "size": resampling["shape"][1:]}, resampling)
    assert (ours == monai_spacing(labels, "nearest")).mean() > 0.999  # ties at exactly half a voxel: either way


@pytest.mark.parametrize("axcodes", ["IPL", "LPS", "RAS", "ASL", "PIR"])
def test_orientation_is_monai_orientation_as_views(axcodes):
    from monai.data import MetaTensor
    from monai.transforms import Orientation

    volume = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    affine = np.eye(4)
    affine[:3, :3] = 0
    for axis, (world, direction) in enumerate(nib.orientations.axcodes2ornt(axcodes)):
        affine[int(world), axis] = direction * [0.7, 0.8, 3.0][axis]
    assert "".join(nib.aff2axcodes(affine)) == axcodes
    grid = plan_grid(affine, volume.shape, DEFAULTS)
    monai = Orientation(axcodes="RAS", labels=RAS_LABELS)(MetaTensor(volume[None], affine=affine))
    assert np.allclose(grid["oriented_affine"], np.asarray(monai.affine))
    view = to_slices(volume, grid)
    assert np.shares_memory(view, volume)  # flips and transposes only
    assert np.array_equal(view, np.moveaxis(np.asarray(monai[0]), 2, 0))
    meta = {"axcodes": "RAS", "slice_dim": grid["slice_dim"], "original_affine": affine.tolist()}
    assert np.array_equal(from_slices(view, meta), volume)


@pytest.mark.parametrize("order", [[0, 1, 2], [1, 2, 0], [2, 1, 0], [0, 2, 1]])
def test_area_resize_in_any_memory_layout_is_monai_resize(order):
    # The slice chunk handed to torch in its memory layout (slices outermost, innermost, or planes transposed).
    from monai.transforms import Resize

    rng = np.random.default_rng(0)
    zhw = rng.random((5, 37, 29), dtype=np.float32)
    block = np.ascontiguousarray(zhw.transpose(order))
    ours = _resize_area(block, order, [16, 20])
    theirs = np.asarray(Resize(spatial_size=[16, 20], mode="area")(torch.from_numpy(zhw)))
    tolerance = 0 if order in ([0, 1, 2], [1, 2, 0]) else 1e-6  # transposed planes sum in another order
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() <= tolerance


def test_memory_order_undoes_flips_and_sorts_axes():
    array = np.arange(60.0).reshape(3, 4, 5, order="F")[::-1, :, ::-1].transpose(2, 0, 1)  # as oriented views are
    stored, flips, order = _memory_order(array)
    assert flips == [True, True, False] and order == [0, 2, 1] and stored.flags.c_contiguous
    assert np.array_equal(stored, array[::-1, ::-1].transpose(order))


def test_foreground_box_with_and_without_body():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    assert foreground_box(mask, 1) == (slice(1, 6), slice(2, 10))
    assert foreground_box(np.zeros((4, 4), bool), 1) == (slice(0, 4), slice(0, 4))
    mask[0:3, 10:12] = True  # body touching the image edge: the margin is clipped, never negative
    assert foreground_box(mask, 2) == (slice(0, 7), slice(1, 12))


@pytest.mark.parametrize("dtype", [np.int16, np.float64])
def test_reading_inflates_like_nibabel_and_checks_the_file(tmp_path, dtype):
    image, _ = write_case(tmp_path / "raw")
    hu = np.asarray(nib.load(image).dataobj).astype(dtype)
    nib.save(nib.Nifti1Image(hu + 0.5 if dtype == np.float64 else hu, nib.load(image).affine), image)
    expected = np.asarray(nib.load(image).dataobj)
    payload = gzip.decompress(image.read_bytes())
    # Some tools write concatenated gzip members; they read the same, also when a value straddles the two.
    (tmp_path / "multi.nii.gz").write_bytes(gzip.compress(payload[:1001]) + gzip.compress(payload[1001:]))
    stored, scaling = read_voxels(nib.load(tmp_path / "multi.nii.gz"))
    assert scaling is None and stored.dtype == (np.float32 if dtype == np.float64 else np.int16)  # float64 narrowed
    assert np.array_equal(stored, expected.astype(stored.dtype))
    (tmp_path / "cut.nii.gz").write_bytes(image.read_bytes()[:-200])
    with pytest.raises(EOFError, match="truncated"):
        read_voxels(nib.load(tmp_path / "cut.nii.gz"))
    damaged = bytearray(image.read_bytes())
    damaged[-8] ^= 0xFF  # the member's CRC: the data decompresses, the check fails
    (tmp_path / "crc.nii.gz").write_bytes(bytes(damaged))
    with pytest.raises(zlib.error):
        read_voxels(nib.load(tmp_path / "crc.nii.gz"))


def test_failed_preprocessing_leaves_no_output(tmp_path):
    image, seg = write_case(tmp_path / "raw")
    with pytest.raises(ValueError, match="format"):
        preprocess_case(image, seg, tmp_path / "out", {**CFG, "format": "tiff"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


KILLED_WHILE_WRITING = """
import os, signal, sys
sys.path.insert(0, {scripts!r})
import segflow.preprocess as pre
def killed(folder, *args, **kwargs):
    (folder / "image.npy").write_bytes(b"half")
    os.kill(os.getpid(), signal.SIGKILL)
pre.write_slices = killed
pre.preprocess_case({image!r}, {seg!r}, {out!r}, {cfg!r})
"""


def test_part_folder_left_by_a_kill_is_removed_by_the_next_run(tmp_path):
    import subprocess
    import sys

    image, seg = write_case(tmp_path / "raw")
    out = tmp_path / "pre" / "CASE"
    scripts = str(Path(__file__).resolve().parents[1] / "workflow_scripts")
    code = KILLED_WHILE_WRITING.format(scripts=scripts, image=str(image), seg=str(seg), out=str(out), cfg=CFG)
    process = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert process.returncode == -9
    leftovers = list((tmp_path / "pre").glob(".CASE.*.part"))
    assert len(leftovers) == 1 and not out.exists()  # what kill -9 leaves: a hidden half-written folder

    preprocess_case(image, seg, out, CFG)  # the next run of the job
    assert sorted(p.name for p in (tmp_path / "pre").iterdir()) == ["CASE"]
    assert {"image.npy", "label.npy", "meta.json", "slices.tsv"} <= {p.name for p in out.iterdir()}


def test_leftovers_of_other_outputs_are_kept(tmp_path):
    from segflow.io import atomic_path, remove_leftovers

    (tmp_path / ".other.abc.part").mkdir()
    (tmp_path / ".out.json.x1.part.json").write_text("{")
    (tmp_path / "out.json.part").write_text("a download in progress")  # segflow.download's resumable part file
    with atomic_path(tmp_path / "out.json") as tmp:
        tmp.write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.abc.part", "out.json", "out.json.part"]
    assert remove_leftovers(tmp_path / "other") == [tmp_path / ".other.abc.part"]
