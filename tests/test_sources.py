"""Every non-synthetic source, from tiny fabricated fixtures into the canonical raw layout."""

import csv
import os
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from http_server import FaultServer

from segflow.download import file_sha256
from segflow.io import save_nifti
from segflow.sources import SourceError, import_case, list_cases, select_ids

SHAPE = (16, 16, 4)
SPACING = (0.8, 0.8, 2.5)
AFFINE = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
FAST_DOWNLOAD = {"retries": 1, "timeout": 2.0, "backoff": 0.01}


def fabricate(labels=(1, 2, 3), seed=0):
    """A 16x16x4 CT-like image (int16 HU) and a label volume with one box per label."""
    rng = np.random.default_rng(seed)
    image = rng.integers(-1000, 400, size=SHAPE).astype(np.int16)
    seg = np.zeros(SHAPE, dtype=np.uint8)
    for i, value in enumerate(labels):
        seg[2 + 4 * i : 5 + 4 * i, 3:9, 1:3] = value
    return image, seg


def write_pair(image_path, seg_path, image, seg, affine=AFFINE):
    save_nifti(image_path, image, affine)
    save_nifti(seg_path, seg, affine)


def load(path):
    volume = nib.load(str(path))
    return np.asanyarray(volume.dataobj), volume.affine


def outputs(tmp_path, case):
    folder = tmp_path / "results" / "raw" / case
    return folder / "imaging.nii.gz", folder / "segmentation.nii.gz"


# --- case lists ---------------------------------------------------------------------------------------------------


def test_kits23_case_list_is_489_ids_without_network():
    ids = list_cases({"source": "kits23"}, 0)
    assert len(ids) == 489 and ids[0] == "case_00000" and ids[-1] == "case_00588"
    assert "case_00299" in ids and "case_00300" not in ids and "case_00399" not in ids and "case_00400" in ids
    assert len(list_cases({"source": "kits19"}, 0)) == 210


def test_case_selection_forms():
    dataset = {"source": "kits23"}
    assert list_cases({**dataset, "cases": 3}, 0) == ["case_00000", "case_00001", "case_00002"]
    assert list_cases({**dataset, "cases": "all"}, 0) == list_cases(dataset, 0)
    assert list_cases({**dataset, "cases": {"start": 299, "stop": 301}}, 0) == ["case_00299", "case_00400"]
    assert list_cases({**dataset, "cases": ["case_00410", "case_00002"]}, 0) == ["case_00410", "case_00002"]
    with pytest.raises(SourceError, match="case_00350"):
        list_cases({**dataset, "cases": ["case_00350"]}, 0)
    assert select_ids(["a", "b", "c"], {"start": 1}) == ["b", "c"]


# --- kits23 / kits19 over HTTP ------------------------------------------------------------------------------------


@pytest.fixture
def kits_server(tmp_path):
    root = tmp_path / "www"
    image, seg = fabricate()
    write_pair(root / "hf/images/case_00001.nii.gz", root / "gh23/dataset/case_00001/segmentation.nii.gz", image, seg)
    image19, seg19 = fabricate(labels=(1, 2), seed=1)
    write_pair(root / "hf/images/case_00002.nii.gz", root / "gh19/data/case_00002/segmentation.nii.gz", image19, seg19)
    with FaultServer(root) as server:
        yield server, root


def kits_dataset(server, source="kits23", **extra):
    seg_base = server.url("gh23" if source == "kits23" else "gh19")
    return {
        "source": source,
        "imaging_base_url": server.url("hf"),
        "segmentation_base_url": seg_base,
        "download": FAST_DOWNLOAD,
        **extra,
    }


def test_kits23_download_into_canonical_layout(kits_server, tmp_path):
    server, root = kits_server
    image_out, seg_out = outputs(tmp_path, "case_00001")
    import_case(kits_dataset(server), "case_00001", image_out, seg_out, 0)
    image, affine = load(image_out)
    seg, seg_affine = load(seg_out)
    expected_image, expected_seg = fabricate()
    assert np.array_equal(image, expected_image) and np.array_equal(seg, expected_seg)
    assert seg.dtype == np.uint8 and sorted(np.unique(seg)) == [0, 1, 2, 3]
    assert np.allclose(affine, AFFINE) and np.allclose(seg_affine, AFFINE)
    # The real URL scheme: {imaging base}/images/<case>.nii.gz and {kits23 base}/dataset/<case>/segmentation.nii.gz
    assert server.requests_for("hf/images/case_00001.nii.gz") and server.requests_for(
        "gh23/dataset/case_00001/segmentation.nii.gz"
    )
    assert sorted(p.name for p in image_out.parent.iterdir()) == ["imaging.nii.gz", "segmentation.nii.gz"]


def test_kits19_uses_its_own_repository_layout(kits_server, tmp_path):
    server, _ = kits_server
    image_out, seg_out = outputs(tmp_path, "case_00002")
    import_case(kits_dataset(server, "kits19"), "case_00002", image_out, seg_out, 0)
    seg, _ = load(seg_out)
    assert sorted(np.unique(seg)) == [0, 1, 2]
    assert server.requests_for("gh19/data/case_00002/segmentation.nii.gz")


def test_kits_missing_segmentation_names_the_config_key_and_leaves_nothing(kits_server, tmp_path):
    server, _ = kits_server
    image_out, seg_out = outputs(tmp_path, "case_00003")
    with pytest.raises(SourceError, match="404.*dataset.segmentation_base_url") as error:
        import_case(kits_dataset(server), "case_00003", image_out, seg_out, 0)
    assert "case_00003" in str(error.value)
    assert not image_out.exists() and not seg_out.exists()
    assert not server.requests_for("hf/images/case_00003.nii.gz")  # failed fast, before the large image


def test_kits_dropped_image_download_resumes(kits_server, tmp_path):
    server, _ = kits_server
    server.fail("hf/images/case_00001.nii.gz", "drop", after_bytes=500)
    image_out, seg_out = outputs(tmp_path, "case_00001")
    import_case(kits_dataset(server), "case_00001", image_out, seg_out, 0)
    assert server.requests_for("hf/images/case_00001.nii.gz")[1].headers["Range"] == "bytes=500-"
    assert np.array_equal(load(image_out)[0], fabricate()[0])


def test_kits_manifest_checksum_mismatch_fails_cleanly(kits_server, tmp_path):
    server, root = kits_server
    manifest = tmp_path / "manifest.tsv"
    good = file_sha256(root / "gh23/dataset/case_00001/segmentation.nii.gz")
    manifest.write_text(
        f"path\tsha256\ndataset/case_00001/segmentation.nii.gz\t{good}\nimages/case_00001.nii.gz\t{'0' * 64}\n"
    )
    image_out, seg_out = outputs(tmp_path, "case_00001")
    with pytest.raises(SourceError, match="SHA-256"):
        import_case(kits_dataset(server, manifest=str(manifest)), "case_00001", image_out, seg_out, 0)
    assert list(image_out.parent.iterdir()) == []


def test_kits_labels_converted_to_uint8_and_mapped(kits_server, tmp_path):
    server, root = kits_server
    image, seg = fabricate()
    save_nifti(root / "gh23/dataset/case_00001/segmentation.nii.gz", seg.astype(np.int16), AFFINE)
    image_out, seg_out = outputs(tmp_path, "case_00001")
    import_case(kits_dataset(server, label_map={1: 1, 2: 1}), "case_00001", image_out, seg_out, 0)
    labels, _ = load(seg_out)
    assert labels.dtype == np.uint8
    assert np.array_equal(labels, np.where(np.isin(seg, [1, 2]), 1, 0))  # tumour merged into kidney, cyst dropped


def test_kits_shape_mismatch_is_reported(kits_server, tmp_path):
    server, root = kits_server
    save_nifti(root / "gh23/dataset/case_00001/segmentation.nii.gz", np.zeros((16, 16, 5), np.uint8), AFFINE)
    image_out, seg_out = outputs(tmp_path, "case_00001")
    with pytest.raises(SourceError, match="differs from segmentation shape"):
        import_case(kits_dataset(server), "case_00001", image_out, seg_out, 0)
    assert not image_out.exists() and not seg_out.exists()


def test_kits_rejects_unknown_case_and_bad_download_options(tmp_path):
    image_out, seg_out = outputs(tmp_path, "case_00350")
    with pytest.raises(SourceError, match="not a kits23 training case"):
        import_case({"source": "kits23"}, "case_00350", image_out, seg_out, 0)
    with pytest.raises(SourceError, match="dataset.download has unknown keys"):
        import_case({"source": "kits23", "download": {"tries": 3}}, "case_00001", image_out, seg_out, 0)


# --- local: KiTS layout and nnU-Net / MSD raw layout --------------------------------------------------------------


def test_local_kits_layout_copies_image_and_labels(tmp_path):
    data = tmp_path / "kits23" / "dataset"
    for i, case in enumerate(["case_00010", "case_00002"]):
        write_pair(data / case / "imaging.nii.gz", data / case / "segmentation.nii.gz", *fabricate(seed=i))
    (data / "case_00011").mkdir()
    save_nifti(data / "case_00011" / "segmentation.nii.gz", fabricate()[1], AFFINE)  # imaging never downloaded
    dataset = {"source": "local", "path": str(tmp_path / "kits23")}  # a kits23 clone: cases under dataset/
    assert list_cases(dataset, 0) == ["case_00002", "case_00010"]
    image_out, seg_out = outputs(tmp_path, "case_00010")
    import_case(dataset, "case_00010", image_out, seg_out, 0)
    # Copies, not links: touching an output (Snakemake does, after the job) must not touch the user's file.
    for out, name in ((image_out, "imaging.nii.gz"), (seg_out, "segmentation.nii.gz")):
        assert out.stat().st_ino != (data / "case_00010" / name).stat().st_ino
        assert out.read_bytes() == (data / "case_00010" / name).read_bytes()
    assert np.array_equal(load(seg_out)[0], fabricate(seed=1)[1])


def test_local_label_map_rewrites_instead_of_linking(tmp_path):
    data = tmp_path / "data"
    write_pair(data / "a" / "imaging.nii.gz", data / "a" / "segmentation.nii.gz", *fabricate())
    image_out, seg_out = outputs(tmp_path, "a")
    import_case({"source": "local", "path": str(data), "label_map": {"1": 1, "3": 2}}, "a", image_out, seg_out, 0)
    labels, affine = load(seg_out)
    seg = fabricate()[1]
    assert seg_out.stat().st_ino != (data / "a" / "segmentation.nii.gz").stat().st_ino
    assert np.array_equal(labels, np.select([seg == 1, seg == 3], [1, 2], 0)) and np.allclose(affine, AFFINE)


def test_local_nnunet_layout(tmp_path):
    data = tmp_path / "Dataset064_KiTS"
    image, seg = fabricate()
    write_pair(data / "imagesTr" / "kid_007_0000.nii.gz", data / "labelsTr" / "kid_007.nii.gz", image, seg)
    write_pair(data / "imagesTr" / "kid_001_0000.nii.gz", data / "labelsTr" / "kid_001.nii.gz", image, seg)
    save_nifti(data / "imagesTr" / "kid_009_0000.nii.gz", image, AFFINE)  # unlabelled: left out
    (data / "labelsTr" / "._kid_007.nii.gz").write_bytes(b"\0")  # macOS junk, as in the MSD tarballs
    (data / "dataset.json").write_text("{}")
    dataset = {"source": "local", "path": str(data)}
    assert list_cases(dataset, 0) == ["kid_001", "kid_007"]
    image_out, seg_out = outputs(tmp_path, "kid_007")
    import_case(dataset, "kid_007", image_out, seg_out, 0)
    assert np.array_equal(load(image_out)[0], image) and np.array_equal(load(seg_out)[0], seg)


def test_local_msd_layout_and_other_formats_are_converted(tmp_path):
    import SimpleITK as sitk

    data = tmp_path / "Task03_Liver"
    image, seg = fabricate()
    save_nifti(data / "imagesTr" / "liver_3.nii.gz", image, AFFINE)  # MSD: no _0000 channel suffix
    save_nifti(data / "labelsTr" / "liver_3.nii.gz", seg.astype(np.float64), AFFINE)  # float labels, as some tools do
    mha = sitk.GetImageFromArray(np.transpose(image, (2, 1, 0)))
    mha.SetSpacing((0.5, 0.6, 3.0))
    sitk.WriteImage(mha, str(data / "imagesTr" / "liver_4.mha"))
    mha_seg = sitk.GetImageFromArray(np.transpose(seg, (2, 1, 0)))
    mha_seg.CopyInformation(mha)
    sitk.WriteImage(mha_seg, str(data / "labelsTr" / "liver_4.mha"))
    dataset = {"source": "local", "path": str(data)}
    assert list_cases(dataset, 0) == ["liver_3", "liver_4"]

    image_out, seg_out = outputs(tmp_path, "liver_3")
    import_case(dataset, "liver_3", image_out, seg_out, 0)
    labels, _ = load(seg_out)
    assert labels.dtype == np.uint8 and np.array_equal(labels, seg)

    image_out, seg_out = outputs(tmp_path, "liver_4")
    import_case(dataset, "liver_4", image_out, seg_out, 0)
    converted, affine = load(image_out)
    assert np.array_equal(converted, image) and np.array_equal(load(seg_out)[0], seg)
    assert np.allclose(np.abs(np.diag(affine)[:3]), [0.5, 0.6, 3.0])
    assert nib.aff2axcodes(affine) == ("L", "P", "S")  # ITK's identity direction is LPS


def test_local_manifest_next_to_data_is_checked(tmp_path):
    data = tmp_path / "data"
    write_pair(data / "a" / "imaging.nii.gz", data / "a" / "segmentation.nii.gz", *fabricate())
    (data / "manifest.tsv").write_text("path\tsize\na/imaging.nii.gz\t12\n")
    image_out, seg_out = outputs(tmp_path, "a")
    with pytest.raises(SourceError, match="a/imaging.nii.gz: size is .* expected 12"):
        import_case({"source": "local", "path": str(data)}, "a", image_out, seg_out, 0)
    assert not image_out.exists() and not seg_out.exists()


def test_local_errors_name_the_path(tmp_path):
    with pytest.raises(SourceError, match="dataset.path is not set"):
        list_cases({"source": "local"}, 0)
    with pytest.raises(SourceError, match="does not exist"):
        list_cases({"source": "local", "path": str(tmp_path / "nope")}, 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="holds neither"):
        list_cases({"source": "local", "path": str(tmp_path / "empty")}, 0)
    bad = tmp_path / "bad"
    write_pair(bad / "case 1" / "imaging.nii.gz", bad / "case 1" / "segmentation.nii.gz", *fabricate())
    with pytest.raises(SourceError, match="case ids must match"):
        list_cases({"source": "local", "path": str(bad)}, 0)


# --- FLARE22 zip --------------------------------------------------------------------------------------------------


def flare_zip(tmp_path, top="FLARE22Train/"):
    image, _ = fabricate()
    organs = np.zeros(SHAPE, dtype=np.uint8)
    organs[1:4, 1:4, :] = 1  # liver
    organs[5:8, 5:8, :] = 2  # right kidney
    organs[9:12, 9:12, :] = 13  # left kidney
    organs[13:15, 1:3, :] = 5  # aorta
    stage = tmp_path / "stage"
    save_nifti(stage / "img.nii.gz", image, AFFINE)
    save_nifti(stage / "lab.nii.gz", organs, AFFINE)
    path = tmp_path / "FLARE22_LabeledCase50.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for case in ("FLARE22_Tr_0010", "FLARE22_Tr_0002"):
            archive.write(stage / "img.nii.gz", f"{top}images/{case}_0000.nii.gz")
            archive.write(stage / "lab.nii.gz", f"{top}labels/{case}.nii.gz")
        archive.write(stage / "img.nii.gz", f"{top}images/FLARE22_Tr_0099_0000.nii.gz")  # no labels
        archive.writestr(f"__MACOSX/{top}labels/._FLARE22_Tr_0002.nii.gz", b"junk")
    return path, image, organs


def test_flare22_zip_default_map_keeps_kidneys(tmp_path):
    path, image, organs = flare_zip(tmp_path)
    dataset = {"source": "flare22", "path": str(path)}
    assert list_cases(dataset, 0) == ["FLARE22_Tr_0002", "FLARE22_Tr_0010"]
    image_out, seg_out = outputs(tmp_path, "FLARE22_Tr_0002")
    import_case(dataset, "FLARE22_Tr_0002", image_out, seg_out, 0)
    labels, affine = load(seg_out)
    assert labels.dtype == np.uint8 and np.array_equal(labels, np.isin(organs, [2, 13]).astype(np.uint8))
    assert np.array_equal(load(image_out)[0], image) and np.allclose(affine, AFFINE)


def test_flare22_custom_map_and_no_top_folder(tmp_path):
    path, _, organs = flare_zip(tmp_path, top="")
    dataset = {"source": "flare22", "path": str(path), "label_map": {2: 1, 13: 1, 1: 3}}
    image_out, seg_out = outputs(tmp_path, "FLARE22_Tr_0010")
    import_case(dataset, "FLARE22_Tr_0010", image_out, seg_out, 0)
    labels, _ = load(seg_out)
    assert sorted(np.unique(labels)) == [0, 1, 3] and not labels[organs == 5].any()


def test_flare22_bad_zip_is_one_clear_error(tmp_path):
    path = tmp_path / "broken.zip"
    path.write_bytes(b"not a zip")
    with pytest.raises(SourceError, match="not a readable zip"):
        list_cases({"source": "flare22", "path": str(path)}, 0)


# --- PNG pairs ----------------------------------------------------------------------------------------------------


def write_png(path, array):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_png_pairs_grouped_into_volumes(tmp_path):
    root = tmp_path / "pngs"
    rng = np.random.default_rng(0)
    slices = {}
    for number in (10, 2, 1):  # numeric slice order must win over name order
        image = rng.integers(0, 256, size=(12, 16)).astype(np.uint8)  # 12 rows, 16 columns
        mask = np.zeros((12, 16), np.uint8)
        mask[3:6, 2:9] = 255
        write_png(root / "images" / f"pat7_slice{number}.png", image)
        write_png(root / "masks" / f"pat7_slice{number}.png", mask)
        slices[number] = (image, mask)
    write_png(root / "images" / "pat8_slice1.png", np.zeros((12, 16), np.uint8))
    write_png(root / "masks" / "pat8_slice1.png", np.zeros((12, 16), np.uint8))
    write_png(root / "images" / "notes.png", np.zeros((4, 4), np.uint8))  # no mask: skipped
    dataset = {
        "source": "png_pairs",
        "path": str(root),
        "group_pattern": r"(?P<case>pat\d+)_slice(?P<slice>\d+)",
        "spacing": [0.7, 0.7, 3.0],
    }
    assert list_cases(dataset, 0) == ["pat7", "pat8"]
    image_out, seg_out = outputs(tmp_path, "pat7")
    import_case(dataset, "pat7", image_out, seg_out, 0)
    hu, affine = load(image_out)
    labels, _ = load(seg_out)
    assert hu.shape == (16, 12, 3) and hu.dtype == np.int16  # (x = columns, y = rows, z = slices)
    assert np.allclose(affine, np.diag([-0.7, -0.7, 3.0, 1.0]))
    for z, number in enumerate((1, 2, 10)):
        image, mask = slices[number]
        assert np.array_equal(hu[:, :, z], np.rint(-160 + image.T.astype(float) * 400 / 255).astype(np.int16))
        assert np.array_equal(labels[:, :, z], (mask.T == 255).astype(np.uint8))
    assert hu.min() >= -160 and hu.max() <= 240


def test_png_pairs_single_slices_indexed_masks_and_intensity(tmp_path):
    root = tmp_path / "pngs"
    image = np.arange(64, dtype=np.uint8).reshape(8, 8)
    mask = np.zeros((8, 8), np.uint8)
    mask[1:3, 1:3], mask[4:6, 4:6] = 1, 2
    write_png(root / "images" / "scan-a.png", image)
    write_png(root / "masks" / "scan-a.png", mask)
    dataset = {"source": "png_pairs", "path": str(root), "png_intensity": {"scale": 2, "offset": -1000}}
    assert list_cases(dataset, 0) == ["scan-a"]
    image_out, seg_out = outputs(tmp_path, "scan-a")
    import_case(dataset, "scan-a", image_out, seg_out, 0)
    hu, affine = load(image_out)
    assert hu.shape == (8, 8, 1) and np.array_equal(hu[..., 0], (-1000 + 2 * image.astype(int)).T)
    assert np.array_equal(load(seg_out)[0][..., 0], mask.T) and np.allclose(affine, np.diag([-1, -1, 1, 1]))
    import_case({**dataset, "label_map": {2: 2}}, "scan-a", image_out, seg_out, 0)
    assert sorted(np.unique(load(seg_out)[0])) == [0, 2]


def test_png_pairs_bad_pattern(tmp_path):
    root = tmp_path / "pngs"
    write_png(root / "images" / "a.png", np.zeros((4, 4), np.uint8))
    write_png(root / "masks" / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(SourceError, match="named groups"):
        list_cases({"source": "png_pairs", "path": str(root), "group_pattern": r"(?P<case>\w+)"}, 0)


# --- UW-Madison GI tract --------------------------------------------------------------------------------------------


def rle_encode(mask):
    """Kaggle's encoding: runs over the row-major flattened mask, 1-based starts."""
    flat = np.concatenate([[0], mask.flatten(order="C").astype(np.int8), [0]])
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts, ends = edges[0::2], edges[1::2]
    return " ".join(f"{s} {e - s}" for s, e in zip(starts, ends))


def test_uwmgi_case_day_volumes(tmp_path):
    root = tmp_path / "uw-madison-gi-tract-image-segmentation"
    rows, cols = 12, 16  # non-square, so a transposed decode would fail
    scans = root / "train" / "case10" / "case10_day3" / "scans"
    rng = np.random.default_rng(0)
    records, expected = [], []
    for number in (1, 2, 3):
        image = rng.integers(0, 3000, size=(rows, cols)).astype(np.uint16)
        write_png(scans / f"slice_{number:04d}_{cols}_{rows}_1.50_1.60.png", image)
        stomach = np.zeros((rows, cols), bool)
        small = np.zeros((rows, cols), bool)
        if number == 2:
            stomach[2:5, 1:12] = True  # runs cross row ends: checks the row-major order
            small[4:8, 10:14] = True  # overlaps the stomach on row 4: the higher label (stomach 3) wins
        uid = f"case10_day3_slice_{number:04d}"
        records += [
            (uid, "large_bowel", ""),
            (uid, "small_bowel", rle_encode(small) if small.any() else ""),
            (uid, "stomach", rle_encode(stomach) if stomach.any() else ""),
        ]
        expected.append((image, np.where(stomach, 3, np.where(small, 2, 0))))
    write_png(root / "train" / "case2" / "case2_day1" / "scans" / f"slice_0001_{cols}_{rows}_1.50_1.60.png",
              np.zeros((rows, cols), np.uint16))  # fmt: skip
    records.append(("case2_day1_slice_0001", "stomach", ""))
    with open(root / "train.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "class", "segmentation"])
        writer.writerows(records)

    dataset = {"source": "uwmgi", "path": str(root)}
    assert list_cases(dataset, 0) == ["case2_day1", "case10_day3"]
    image_out, seg_out = outputs(tmp_path, "case10_day3")
    import_case(dataset, "case10_day3", image_out, seg_out, 0)
    volume, affine = load(image_out)
    labels, _ = load(seg_out)
    assert volume.shape == (cols, rows, 3) and volume.dtype == np.int16 and labels.dtype == np.uint8
    assert np.allclose(affine, np.diag([-1.5, -1.6, 3.0, 1.0]))
    for z, (image, label) in enumerate(expected):
        assert np.array_equal(volume[:, :, z], image.T)
        assert np.array_equal(labels[:, :, z], label.T)

    import_case({**dataset, "label_map": {"stomach": 1}}, "case10_day3", image_out, seg_out, 0)
    labels, _ = load(seg_out)
    assert np.array_equal(labels[:, :, 1], (expected[1][1] == 3).T)  # only the stomach, as label 1
    assert not labels[:, :, [0, 2]].any()


def test_uwmgi_bad_rle_is_reported(tmp_path):
    root = tmp_path / "uw"
    write_png(root / "train/case1/case1_day0/scans/slice_0001_4_4_1.50_1.50.png", np.zeros((4, 4), np.uint16))
    (root / "train.csv").write_text("id,class,segmentation\ncase1_day0_slice_0001,stomach,15 5\n")
    with pytest.raises(SourceError, match="case1_day0_slice_0001 stomach: run-length encoding runs outside"):
        import_case({"source": "uwmgi", "path": str(root)}, "case1_day0", *outputs(tmp_path, "case1_day0"), 0)


# --- what an import reads: inputs and identities (docs/data_sources.md, "Reimports") ------------------------------


def replace_by_mv(path, data: bytes):
    """Replace a file as mv or rsync do (a new inode), with a modification time older than anything imported."""
    staged = path.with_name(path.name + ".new")
    staged.write_bytes(data)
    os.utime(staged, (1_000_000_000, 1_000_000_000))  # 2001: older than the imported copy
    os.replace(staged, path)


def test_local_inputs_are_the_case_files_and_a_replacement_changes_only_its_case(tmp_path):
    from segflow.sources import case_inputs

    for case in ("case_a", "case_b"):
        write_pair(
            tmp_path / "data" / case / "imaging.nii.gz", tmp_path / "data" / case / "segmentation.nii.gz", *fabricate()
        )
    dataset = {"source": "local", "path": str(tmp_path / "data")}
    before = case_inputs(dataset, ["case_a", "case_b"])
    assert before["case_a"].files == (
        str(tmp_path / "data/case_a/imaging.nii.gz"),
        str(tmp_path / "data/case_a/segmentation.nii.gz"),
    )
    seg = tmp_path / "data/case_b/segmentation.nii.gz"
    os.utime(seg)  # a touch (Snakemake touches the hard-linked copy in raw/) is no change
    assert case_inputs(dataset, ["case_a", "case_b"]) == before
    replace_by_mv(seg, seg.read_bytes())
    after = case_inputs(dataset, ["case_a", "case_b"])
    assert after["case_a"] == before["case_a"] and after["case_b"].identity != before["case_b"].identity


def test_mhd_inputs_include_the_detached_data_file(tmp_path):
    from segflow.sources.common import companion_files

    header = tmp_path / "imaging.mhd"
    header.write_text("ObjectType = Image\nNDims = 3\nElementDataFile = imaging.raw\n")
    assert companion_files(header) == [tmp_path / "imaging.raw"]
    header.write_text("NDims = 3\nElementDataFile = LOCAL\n")
    assert companion_files(header) == [] and companion_files(tmp_path / "x.nii.gz") == []
    (tmp_path / "labels.nhdr").write_text("NRRD0004\ntype: uint8\ndata file: labels.raw.gz\n")
    assert companion_files(tmp_path / "labels.nhdr") == [tmp_path / "labels.raw.gz"]


def test_flare22_zip_identity_is_per_case_member_crc(tmp_path):
    from segflow.sources import case_inputs

    path, image, organs = flare_zip(tmp_path)
    dataset = {"source": "flare22", "path": str(path)}
    cases = ["FLARE22_Tr_0002", "FLARE22_Tr_0010"]
    before = case_inputs(dataset, cases)
    assert all(not inputs.files for inputs in before.values())  # the zip is no input: all cases share it
    with zipfile.ZipFile(path) as old:
        members = {info.filename: old.read(info) for info in old.infolist()}
    changed = organs.copy()
    changed[0, 0, 0] = 3
    save_nifti(tmp_path / "new.nii.gz", changed, AFFINE)
    with zipfile.ZipFile(tmp_path / "new.zip", "w") as new:
        for name, data in members.items():
            replaced = name.endswith("labels/FLARE22_Tr_0010.nii.gz")
            new.writestr(name, (tmp_path / "new.nii.gz").read_bytes() if replaced else data)
    os.replace(tmp_path / "new.zip", path)
    after = case_inputs(dataset, cases)
    assert after["FLARE22_Tr_0002"] == before["FLARE22_Tr_0002"]
    assert after["FLARE22_Tr_0010"] != before["FLARE22_Tr_0010"]


def test_png_pairs_and_uwmgi_inputs(tmp_path):
    from segflow.sources import case_inputs

    root = tmp_path / "pngs"
    for name in ("p1_s1", "p1_s2", "p2_s1"):
        write_png(root / "images" / f"{name}.png", np.full((4, 4), 9, np.uint8))
        write_png(root / "masks" / f"{name}.png", np.zeros((4, 4), np.uint8))
    dataset = {"source": "png_pairs", "path": str(root), "group_pattern": r"(?P<case>p\d)_s(?P<slice>\d)"}
    inputs = case_inputs(dataset, ["p1", "p2"])
    assert sorted(Path(f).relative_to(root).as_posix() for f in inputs["p1"].files) == [
        "images/p1_s1.png",
        "images/p1_s2.png",
        "masks/p1_s1.png",
        "masks/p1_s2.png",
    ]

    uw = tmp_path / "uw"
    for case in ("case1_day1", "case2_day1"):
        write_png(
            uw / "train" / case.split("_")[0] / case / "scans" / "slice_0001_4_4_1.50_1.50.png",
            np.ones((4, 4), np.uint16),
        )
    table = "id,class,segmentation\ncase1_day1_slice_0001,stomach,1 2\ncase2_day1_slice_0001,stomach,3 2\n"
    (uw / "train.csv").write_text(table)
    dataset = {"source": "uwmgi", "path": str(uw)}
    before = case_inputs(dataset, ["case1_day1", "case2_day1"])
    assert [Path(f).name for f in before["case1_day1"].files] == ["slice_0001_4_4_1.50_1.50.png"]
    (uw / "train.csv").write_text(table.replace("3 2", "3 4"))  # a corrected train.csv: only case2's masks differ
    after = case_inputs(dataset, ["case1_day1", "case2_day1"])
    assert after["case1_day1"] == before["case1_day1"] and after["case2_day1"] != before["case2_day1"]


def test_kits_manifest_checksums_stand_in_for_the_base_urls():
    from segflow.sources import case_inputs, case_params

    manifest = {"images/case_00001.nii.gz": "a" * 64, "dataset/case_00001/segmentation.nii.gz": "b" * 64,
                "images/case_00002.nii.gz": "c" * 64}  # fmt: skip
    import json
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump({name: {"sha256": sha} for name, sha in manifest.items()}, handle)
    base = {"source": "kits23", "manifest": handle.name, "cases": ["case_00001", "case_00002"],
            "download": {"retries": 1}, "label_map": {1: 1}}  # fmt: skip
    params = {}
    for host in ("https://one.example", "https://mirror.example"):
        dataset = {**base, "imaging_base_url": f"{host}/hf", "segmentation_base_url": f"{host}/gh"}
        inputs = case_inputs(dataset, base["cases"])
        params[host] = {case: case_params(dataset, inputs[case]) for case in base["cases"]}
    one, mirror = params["https://one.example"], params["https://mirror.example"]
    assert one["case_00001"] == mirror["case_00001"]  # both checksums known: the host is not part of the identity
    assert one["case_00001"] == {
        "source": "kits23",
        "label_map": {1: 1},
        "identity": {
            "sha256": {"images/case_00001.nii.gz": "a" * 64, "dataset/case_00001/segmentation.nii.gz": "b" * 64}
        },
    }
    assert one["case_00002"] != mirror["case_00002"]  # its segmentation has no checksum: the URLs still count
    os.unlink(handle.name)
