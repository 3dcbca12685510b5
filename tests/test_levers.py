"""The quality levers at unit level: 2.5D input, probability restoration, mirroring, ensembles, training crops."""

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import config_with_defaults, write_case
from scipy import ndimage

from segflow.cases import load_case
from segflow.checkpoints import load_models, save_checkpoint, save_ensemble
from segflow.config_checks import check_config
from segflow.data import (
    LesionPaste,
    SliceDataset,
    build_augmentation,
    class_balanced_weights,
    context_indices,
    context_stack,
    epoch_indices,
    lesion_bank,
    lesion_cuts,
    paste_cut,
    per_case_cut_weights,
    same_shape_batches,
    slice_shape,
)
from segflow.inference import (
    TTA_FLIPS,
    decode_labels,
    predict_probabilities,
    probability_labels,
    slice_spacing,
    smooth_across_slices,
)
from segflow.labelsets import region_tree, seed_choices, sigma_choices, threshold_choices
from segflow.losses import CrossEntropy, RegionDiceLoss, build_loss
from segflow.models import SlidingWindow, build_model, for_whole_slices
from segflow.postprocess import STEPS
from segflow.preflight import ConfigError
from segflow.preprocess import preprocess_case
from segflow.restore import restore_labels, restore_probabilities, restore_region_probability
from segflow.train import build_scheduler, evaluate, validation_subset

DEFAULTS = config_with_defaults()["preprocess"]
TRAIN = config_with_defaults(
    {"train": {"channels": [4, 8], "num_res_units": 0, "device": "cpu", "norm": "instance", "context_slices": 3}}
)["train"]


def test_context_repeats_the_edge_slices():
    assert context_indices(0, 5, 3).tolist() == [0, 0, 1]
    assert context_indices(4, 5, 5).tolist() == [2, 3, 4, 4, 4]
    assert context_indices(2, 5, 1).tolist() == [2]
    volume = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 2, 2), np.float32)
    stack = context_stack(volume, 0, 4, 3)
    assert stack.shape == (4, 3, 2, 2)
    assert stack[:, :, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]
    assert np.array_equal(context_stack(volume, 2, 3, 3), stack[2:3])  # a slab read alone is the same


def test_slice_dataset_gives_the_neighbours_as_channels(tmp_path):
    image, seg = write_case(tmp_path / "raw")
    preprocess_case(image, seg, tmp_path / "a", {**DEFAULTS, "crop_margin": 1, "size": [32, 32]})
    volume, _ = load_case(tmp_path / "a")
    dataset = SliceDataset([tmp_path / "a"], context=3)
    first, middle = dataset[0]["image"], dataset[3]["image"]
    assert first.shape == (3, 32, 32) and dataset[0]["label"].shape == (1, 32, 32)
    assert torch.equal(first[0], first[1])  # the slice before the first is the first
    assert np.array_equal(middle.numpy(), np.asarray(volume[2:5]))
    with pytest.raises(ValueError, match="odd"):
        SliceDataset([tmp_path / "a"], context=2)


def test_training_crops_keep_full_resolution_pixels(tmp_path):
    image, seg = write_case(tmp_path / "raw")
    preprocess_case(image, seg, tmp_path / "a", {**DEFAULTS, "crop_margin": 1, "size": [32, 32]})
    transform = build_augmentation({"enabled": False}, patch_size=[16, 16])
    dataset = SliceDataset([tmp_path / "a"], transform=transform, context=3)
    transform.set_random_state(seed=0)
    sample = dataset[3]  # a slice with labels: the crop is centred on one
    assert sample["image"].shape == (3, 16, 16) and sample["label"].shape == (1, 16, 16)
    assert sample["label"].max() > 0
    assert dataset[0]["image"].shape == (3, 16, 16)  # no labels: a random crop, no error


def test_crop_centres_from_counted_class_pixels_are_monais_own():
    # ClassPixelsd lists only the class a centre is drawn from; the crops must be those of MONAI listing every
    # class's pixels itself, draw for draw: slices with all classes, with one missing, without labels, and with a
    # value above the classes (listed by none), on a slice larger than the crop and one smaller (padded).
    from monai.transforms import Compose, RandCropByLabelClassesd, SpatialPadd

    from segflow.data import ClassPixelsd

    rng = np.random.default_rng(0)
    label = np.zeros((1, 48, 40), np.int64)
    label[0, 5:30, 8:33], label[0, 12:15, 20:22], label[0, 25:28, 10:12] = 1, 2, 3
    no_cyst, empty, stray = np.where(label == 3, 1, label), np.zeros_like(label), np.where(label == 3, 7, label)
    small = label[:, :12, :12]

    def chain(listed_by_segflow: bool):
        crop = {"indices_key": ClassPixelsd.key} if listed_by_segflow else {}
        steps = [SpatialPadd(keys=["image", "label"], spatial_size=[16, 16])]
        steps += [ClassPixelsd(4)] if listed_by_segflow else []
        steps.append(
            RandCropByLabelClassesd(
                keys=["image", "label"],
                label_key="label",
                spatial_size=[16, 16],
                ratios=[1e-6, 1, 1, 1],
                num_classes=4,
                num_samples=1,
                allow_smaller=True,
                warn=False,
                **crop,
            )
        )
        transform = Compose(steps)
        transform.set_random_state(seed=3)
        return transform

    ours, monais = chain(True), chain(False)
    for slice_label in [label, no_cyst, empty, stray, small] * 40:
        sample = {"image": rng.random(slice_label.shape, dtype=np.float32), "label": slice_label}
        a, b = ours(dict(sample))[0], monais(dict(sample))[0]
        assert ClassPixelsd.key not in a
        assert np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
        assert np.array_equal(np.asarray(a["label"]), np.asarray(b["label"]))
    assert "ClassPixelsd" in [type(t).__name__ for t in build_augmentation({"enabled": False}, [16, 16]).transforms]


def test_crops_of_labelled_slices_are_centred_on_a_label_each_label_equally():
    # A 64x64 slice: a large kidney and a small tumour. The crop centre is pixel (8, 8) of the 16x16 crop.
    label = np.zeros((1, 64, 64), np.int64)
    label[0, 10:50, 10:50] = 1
    label[0, 30:34, 30:34] = 2
    transform = build_augmentation({"enabled": False}, patch_size=[16, 16])
    transform.set_random_state(seed=0)
    sample = {"image": label.astype(np.float32), "label": label}
    centres = [int(transform(sample)[0]["label"][0, 8, 8]) for _ in range(400)]  # one crop per call, in a list
    counts = np.bincount(centres, minlength=3)
    # No background centre on a slice with labels (the slice draw decides the background share, once), and the
    # 16-pixel tumour is centred as often as the 1600-pixel kidney.
    assert counts[0] == 0 and abs(counts[1] - counts[2]) < 80
    empty = np.zeros((1, 64, 64), np.int64)
    assert transform({"image": empty.astype(np.float32), "label": empty})[0]["label"].shape == (1, 16, 16)


def test_scanner_augmentations_change_the_image_only_and_stay_off_by_default():
    from monai.transforms import RandAdjustContrastd, RandGaussianNoised, RandGaussianSmoothd

    augment = config_with_defaults()["train"]["augment"]
    plain = build_augmentation(augment)
    assert not any(
        isinstance(t, (RandGaussianNoised, RandGaussianSmoothd, RandAdjustContrastd)) for t in plain.transforms
    )
    spatial_off = {"flip_prob": 0.0, "affine_prob": 0.0, "intensity_prob": 0.0}
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(0.5, 0.2, (3, 32, 32)), 0, 1).astype(np.float32)  # 2.5D: three channels
    label = (rng.random((1, 32, 32)) > 0.7).astype(np.int64)
    for key, kind in (("noise_prob", RandGaussianNoised), ("blur_prob", RandGaussianSmoothd),
                      ("gamma_prob", RandAdjustContrastd)):  # fmt: skip
        transform = build_augmentation({**augment, **spatial_off, key: 1.0})
        assert [type(t) for t in transform.transforms].count(kind) == 1
        transform.set_random_state(seed=1)
        out = transform({"image": image.copy(), "label": label.copy()})
        assert out["image"].shape == image.shape and not np.allclose(np.asarray(out["image"]), image), key
        assert np.array_equal(np.asarray(out["label"]), label), key
        transform.set_random_state(seed=1)  # seeded: the same draw again
        again = transform({"image": image.copy(), "label": label.copy()})
        assert np.allclose(np.asarray(again["image"]), np.asarray(out["image"])), key
    # The 3D path takes them too.
    from segflow.volumes import build_augmentation_3d

    train3d = {"patch_size": [8, 16, 16], "foreground_fraction": 0.7, "augment": {**augment, "blur_prob": 1.0}}
    volume = {"image": torch.rand(1, 8, 16, 16), "label": torch.zeros(1, 8, 16, 16, dtype=torch.long)}
    names = [type(t).__name__ for t in build_augmentation_3d(train3d, 4).transforms]
    assert "RandGaussianSmoothd" in names and build_augmentation_3d(train3d, 4)(volume)[0]["image"].shape == (
        1,
        8,
        16,
        16,
    )
    # Blur smooths: neighbouring pixels grow alike.
    blurred = build_augmentation({**augment, **spatial_off, "blur_prob": 1.0})({"image": image, "label": label})
    assert np.abs(np.diff(np.asarray(blurred["image"]), axis=-1)).mean() < np.abs(np.diff(image, axis=-1)).mean()


def preprocessed_one_hot(tmp_path, dtype=np.float16):
    """A small written and preprocessed case: its segmentation path, meta.json (with n_classes), its preprocessed
    labels and their one-hot probabilities (Z, 4, H, W)."""
    image, seg = write_case(tmp_path / "raw", shape=(40, 36, 10))
    meta = preprocess_case(image, seg, tmp_path / "a", {**DEFAULTS, "crop_margin": 1, "size": [24, 24]})
    labels = np.asarray(load_case(tmp_path / "a")[1])
    meta["n_classes"] = 4
    return seg, meta, labels, (labels[:, None] == np.arange(4)[None, :, None, None]).astype(dtype)


def test_probability_restore_matches_the_label_path_on_one_hot_input(tmp_path):
    seg, meta, labels, one_hot = preprocessed_one_hot(tmp_path)
    from_labels = restore_labels(labels, meta)
    from_probabilities = restore_probabilities(one_hot, meta)
    assert np.array_equal(from_labels, from_probabilities)  # hard probabilities are the label path exactly
    truth = np.asarray(nib.load(seg).dataobj)
    assert from_probabilities.shape == truth.shape


def test_probability_restore_places_boundaries_between_pixels():
    # One slice, 1 x 2 prediction pixels resized up to 1 x 4 original voxels; soft probabilities (0.9 kidney,
    # then 0.4 kidney) cross 0.5 a quarter of the way into the second pixel, which labels cannot express.
    meta = {
        "cropped_shape": [1, 1, 4],
        "oriented_shape": [1, 1, 4],
        "slice_dim": 0,
        "plane_dims": [1, 2],
        "crop_box": [[0, 1], [0, 1], [0, 4]],
        "original_shape": [1, 1, 4],
        "axcodes": "RAS",
        "original_affine": np.eye(4).tolist(),
        "n_classes": 2,
    }
    kidney = np.array([0.9, 0.4], dtype=np.float32)
    probabilities = np.stack([1 - kidney, kidney])[None, :, None, :]  # (Z=1, C=2, H=1, W=2)
    soft = restore_probabilities(probabilities, meta)[0, 0]
    hard = restore_labels(probability_labels(probabilities), meta)[0, 0]
    assert hard.tolist() == [1, 1, 0, 0]
    # voxel 2 sits at 0.75 between the pixel centres: 0.9 * 0.25 + 0.4 * 0.75 = 0.525 > 0.5 -> kidney
    assert soft.tolist() == [1, 1, 1, 0]
    # The kidney's probability itself, in 255ths, interpolated the same way: 0.9, 0.775, 0.525, 0.4.
    assert restore_region_probability(probabilities, meta, [1])[0, 0].tolist() == [230, 198, 134, 102]


def test_region_probability_is_zero_outside_the_crop_and_sums_its_classes(tmp_path):
    _, meta, labels, one_hot = preprocessed_one_hot(tmp_path, np.float32)
    restored = restore_labels(labels, meta)
    masses = restore_region_probability(one_hot, meta, [2, 3])
    assert masses.dtype == np.uint8 and masses.shape == restored.shape
    is_mass = np.isin(restored, [2, 3])
    assert is_mass.any() and masses[is_mass].min() > 0 and masses.max() == 255
    # Interpolation blurs a mass by at most one voxel: nothing further out (nor outside the crop) has any.
    near_mass = ndimage.binary_dilation(is_mass, iterations=2)
    assert not masses[~near_mass].any()
    # A region's probability is the sum of its classes': foreground and background share 255 up to rounding.
    foreground = restore_region_probability(one_hot, meta, [1, 2, 3]).astype(int)
    background = restore_region_probability(one_hot, meta, [0]).astype(int)
    everything = restore_region_probability(one_hot, meta, [0, 1, 2, 3])
    assert set(np.unique(everything)) == {0, 255}  # 255 inside the crop, 0 in the padding around it
    inside = everything == 255
    assert np.abs(foreground + background - 255)[inside].max() <= 1


KITS_REGIONS = {"kidney_and_masses": [1, 2, 3], "masses": [2, 3], "tumor": [2]}


def test_region_tree_nests_the_scored_regions_and_refuses_overlaps():
    assert region_tree(KITS_REGIONS, 4) == [
        ((0,), None, None),
        ((1, 2, 3), [((1,), None, None), ((2, 3), [((2,), None, None), ((3,), None, None)], None)], None),
    ]
    assert region_tree({}, 3) == [((0,), None, None), ((1,), None, None), ((2,), None, None)]  # every label alone
    # Disjoint regions are siblings; labels in no region sit beside them, every node in label order.
    assert region_tree({"b": [3], "a": [1, 2]}, 5) == [
        ((0,), None, None),
        ((1, 2), [((1,), None, None), ((2,), None, None)], None),
        ((3,), None, None),
        ((4,), None, None),
    ]
    with pytest.raises(ValueError, match="score.regions.b and score.regions.a overlap"):
        region_tree({"a": [1, 2], "b": [2, 3]}, 4)
    with pytest.raises(ValueError, match=r"score.regions.a holds \[4\], outside the labels 1..3"):
        region_tree({"a": [1, 4]}, 4)


def test_region_thresholds_sit_on_their_regions_branches():
    tree = region_tree(KITS_REGIONS, 4, {"masses": 0.3, "tumor": 0.6})
    foreground = tree[1]
    masses = foreground[1][1]
    assert foreground[2] is None and masses[0] == (2, 3) and masses[2] == 0.3
    assert masses[1] == [((2,), None, 0.6), ((3,), None, None)]
    with pytest.raises(ValueError, match=r"infer.region_thresholds names \['lesion'\], which are not in score.regions"):
        region_tree(KITS_REGIONS, 4, {"lesion": 0.4})
    assert threshold_choices({"region_thresholds": {}}) == [{}]
    assert seed_choices({"mass_seed": []}) == [None] and seed_choices({"mass_seed": [0, 0.9]}) == [0.0, 0.9]
    assert threshold_choices({"region_thresholds": {"masses": [0.5, 0.3], "tumor": [0.5, 0.4]}}) == [
        {"masses": 0.5, "tumor": 0.5},
        {"masses": 0.5, "tumor": 0.4},
        {"masses": 0.3, "tumor": 0.5},
        {"masses": 0.3, "tumor": 0.4},
    ]


def test_a_region_threshold_moves_the_decision_between_kidney_and_masses():
    # Columns: background, kidney, tumour, cyst. All four voxels are foreground; their masses' share of the
    # foreground is 0.25, 0.40, 0.55 and 0.70 (masses all tumour).
    voxels = [[0.0, 0.75, 0.25, 0.0], [0.0, 0.60, 0.40, 0.0], [0.0, 0.45, 0.55, 0.0], [0.0, 0.30, 0.70, 0.0]]
    probability = torch.tensor(voxels).T.reshape(1, 4, 1, 4)
    decode = lambda thresholds: decode_labels(probability, region_tree(KITS_REGIONS, 4, thresholds)).tolist()  # noqa: E731
    assert decode({}) == [[[1, 1, 2, 2]]]
    assert decode({"masses": 0.5}) == decode({})  # 0.5 between two branches is the argmax
    assert decode({"masses": 0.4}) == [[[1, 2, 2, 2]]]  # a share of exactly the threshold reaches it
    assert decode({"masses": 0.6}) == [[[1, 1, 1, 2]]]  # above 0.5 it asks for more than the argmax does
    # A threshold on the foreground leaves the decision below it alone.
    assert decode({"kidney_and_masses": 0.2}) == decode({})
    # Tumour against cyst: the voxel that is 0.4 tumour, 0.6 cyst of its masses turns tumour at 0.4.
    split = torch.tensor([[0.0, 0.2, 0.32, 0.48]]).T.reshape(1, 4, 1, 1)
    assert decode_labels(split, region_tree(KITS_REGIONS, 4)).item() == 3
    assert decode_labels(split, region_tree(KITS_REGIONS, 4, {"tumor": 0.4})).item() == 2


def test_region_decoding_follows_the_regions_where_the_argmax_splits_them():
    # Columns: background, kidney, tumour, cyst. The first two voxels are masses the argmax misses: the first
    # is foreground (0.6) and its foreground is mostly tumour; the second is kidney by the argmax but its masses
    # (0.5) outweigh its kidney (0.4). Tumour against cyst then decides the label. The last voxel is plain.
    voxels = [[0.40, 0.25, 0.35, 0.00], [0.10, 0.40, 0.30, 0.20], [0.10, 0.40, 0.15, 0.35], [0.60, 0.10, 0.20, 0.10]]
    probability = torch.tensor(voxels).T.reshape(1, 4, 1, 4)
    tree = region_tree(KITS_REGIONS, 4)
    assert decode_labels(probability).tolist() == [[[0, 1, 1, 0]]]
    assert decode_labels(probability, tree).tolist() == [[[2, 2, 3, 0]]]
    assert probability_labels(probability.numpy().astype(np.float16), tree).tolist() == [[[2, 2, 3, 0]]]
    # Without regions the tree is flat and the decoding is the argmax, ties to the lowest label included.
    generator = torch.Generator().manual_seed(0)
    random = torch.softmax(torch.randn(3, 4, 8, 8, generator=generator), dim=1)
    random[0, :, 0, 0] = torch.tensor([0.3, 0.3, 0.2, 0.2])
    random[0, :, 0, 1] = torch.tensor([0.5, 0.25, 0.125, 0.125])  # background against kidney+masses: a tie
    assert torch.equal(decode_labels(random, region_tree({}, 4)), random.argmax(dim=1))
    assert decode_labels(random, region_tree({}, 4))[0, 0, 0] == 0
    assert decode_labels(random, tree)[0, 0, 1] == 0  # a tie goes to the lowest label, as with argmax


def test_region_decoding_on_the_way_back_keeps_hard_labels(tmp_path):
    _, meta, labels, one_hot = preprocessed_one_hot(tmp_path)
    tree = region_tree(KITS_REGIONS, 4)
    assert np.array_equal(restore_probabilities(one_hot, meta, tree), restore_labels(labels, meta))
    assert np.array_equal(probability_labels(one_hot, tree), labels)


def test_kits_post_processing_steps_need_kits_labels():
    flare = {
        "labels": {"liver": 1, "right_kidney": 2, "spleen": 3, "left_kidney": 4},
        "regions": {"organs": [1, 2, 3, 4]},
    }
    with pytest.raises(ConfigError, match="train.postprocess step largest_mass_per_kidney works on KiTS labels"):
        check_config(config_with_defaults({"score": flare, "train": {"postprocess": ["largest_mass_per_kidney"]}}))
    check_config(config_with_defaults({"score": flare, "train": {"postprocess": ["largest_foreground"]}}))
    no_cyst = {"labels": {"kidney": 1, "tumor": 2}, "regions": {"masses": [2]}}
    check_config(config_with_defaults({"score": no_cyst, "train": {"postprocess": ["large_masses"]}}))
    with pytest.raises(ConfigError, match=r"step one_tumour works on KiTS labels \(kidney: 1, tumor: 2, cyst: 3\)"):
        check_config(config_with_defaults({"score": no_cyst, "train": {"postprocess": ["one_tumour"]}}))
    check_config(config_with_defaults({"train": {"postprocess": list(STEPS)}}))  # the KiTS defaults take them all
    with pytest.raises(ConfigError, match=r"infer.mass_seed works on KiTS labels \(kidney: 1, tumor: 2"):
        check_config(config_with_defaults({"score": flare, "infer": {"mass_seed": [0, 0.9]}}))
    check_config(config_with_defaults({"score": no_cyst, "infer": {"mass_seed": [0.9]}}))  # KiTS19: no cyst
    check_config(config_with_defaults({"score": flare, "infer": {"mass_seed": []}}))


def test_region_decoding_is_checked_at_start_up():
    with pytest.raises(ConfigError, match="score.regions.b and score.regions.a overlap"):
        check_config(
            config_with_defaults({"infer": {"decode": "regions"}, "score": {"regions": {"a": [1, 2], "b": [2, 3]}}})
        )
    with pytest.raises(ConfigError, match="infer.decode is regions but score.regions is empty"):
        check_config(config_with_defaults({"infer": {"decode": "regions"}, "score": {"regions": {}}}))
    check_config(config_with_defaults({"infer": {"decode": "regions"}}))
    check_config(config_with_defaults({"score": {"regions": {"a": [1, 2], "b": [2, 3]}}}))  # argmax needs no tree
    check_config(config_with_defaults({"infer": {"decode": "regions", "region_thresholds": {"masses": [0.5, 0.3]}}}))
    with pytest.raises(ConfigError, match="infer.region_thresholds needs infer.decode: regions"):
        check_config(config_with_defaults({"infer": {"region_thresholds": {"masses": [0.4]}}}))
    with pytest.raises(ConfigError, match=r"infer.region_thresholds names \['mass'\]"):
        check_config(config_with_defaults({"infer": {"decode": "regions", "region_thresholds": {"mass": [0.4]}}}))


class Asymmetric(torch.nn.Module):
    """Logits that depend on the position, so a flipped input gives a flipped output only if it is undone."""

    def forward(self, x):
        ramp = torch.linspace(0, 1, x.shape[-1])[None, None, None, :].expand(x.shape[0], 1, x.shape[2], -1)
        return torch.cat([x[:, :1] * 0, x[:, :1] * 4 + ramp], dim=1)


def test_blur_across_slices_fades_a_one_slice_mass_keeps_sums_and_is_in_mm():
    probabilities = np.zeros((21, 2, 3, 3), dtype=np.float16)
    probabilities[:, 0] = 1
    probabilities[10, :, 1, 1] = (0.2, 0.8)  # one slice alone calls pixel (1, 1) class 1
    assert smooth_across_slices(probabilities, 0, 3.0) is probabilities  # 0 mm: as it is, no copy
    blurred = smooth_across_slices(probabilities, 3.0, 3.0)
    assert blurred.dtype == np.float16 and blurred.shape == probabilities.shape
    assert blurred[10, 1, 1, 1] < 0.5 < probabilities[10, 1, 1, 1]  # its neighbours outvote it
    assert 0 < blurred[9, 1, 1, 1] == blurred[11, 1, 1, 1] and blurred[5, 1, 1, 1] == 0  # 3 sigma: no further
    np.testing.assert_allclose(blurred.astype(np.float32).sum(axis=1), 1, atol=1e-3)
    np.testing.assert_allclose(blurred[:, :, 0, 0], probabilities[:, :, 0, 0], atol=1e-3)  # steady: unchanged
    # The width is in mm: 3 mm over 3 mm slices blurs as 1 mm over 1 mm slices, and more than 3 mm over 6 mm.
    np.testing.assert_array_equal(blurred, smooth_across_slices(probabilities, 1.0, 1.0))
    assert smooth_across_slices(probabilities, 3.0, 6.0)[10, 1, 1, 1] > blurred[10, 1, 1, 1]
    with pytest.raises(ValueError, match="slice spacing 0 mm"):
        smooth_across_slices(probabilities, 1.0, 0)
    assert sigma_choices({"slice_sigma_mm": []}) == [0.0] and sigma_choices({"slice_sigma_mm": [0, 3]}) == [0, 3.0]
    assert config_with_defaults()["infer"]["slice_sigma_mm"] == []  # the schema's default: no blur


@pytest.mark.parametrize("value", [-1, "3 mm", 2])
def test_blur_widths_are_a_list_of_non_negative_mm_for_the_schema(value):
    from snakemake.exceptions import WorkflowError

    with pytest.raises(WorkflowError, match="slice_sigma_mm"):
        config_with_defaults({"infer": {"slice_sigma_mm": value if value == 2 else [value]}})


def test_slice_spacing_is_the_preprocessed_grids(tmp_path):
    image, seg = write_case(tmp_path / "raw", spacing=(2.0, 2.0, 5.0))
    native = preprocess_case(image, seg, tmp_path / "a", {**DEFAULTS, "size": [16, 16]})
    assert slice_spacing(native) == pytest.approx(5.0)
    resampled = preprocess_case(image, seg, tmp_path / "b", {**DEFAULTS, "size": [16, 16], "spacing": [2, 2, 2.5]})
    assert resampled["n_slices"] > native["n_slices"] and slice_spacing(resampled) == pytest.approx(2.5)


def test_mirroring_is_undone_before_averaging():
    image = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    model = Asymmetric()
    plain = predict_probabilities([model], image, 1, 2, torch.device("cpu"), tta=False)
    mirrored = predict_probabilities([model], image, 1, 2, torch.device("cpu"), tta=True)
    assert plain.shape == mirrored.shape == (3, 2, 8, 8) and plain.dtype == np.float16
    # By hand: the mean over the four flips of softmax(model(flip(x))) flipped back.
    x = torch.from_numpy(image)[:, None]
    expected = sum(
        torch.flip(torch.softmax(model(torch.flip(x, d) if d else x), 1), d) if d else torch.softmax(model(x), 1)
        for d in TTA_FLIPS
    ) / len(TTA_FLIPS)
    assert np.allclose(mirrored, expected.numpy(), atol=2e-3)
    # A network that does not care about position gives the same answer with or without mirroring.
    identity = predict_probabilities([lambda b: torch.cat([b * 0, b], 1)], image, 1, 2, torch.device("cpu"), True)
    assert np.allclose(
        identity,
        predict_probabilities([lambda b: torch.cat([b * 0, b], 1)], image, 1, 2, torch.device("cpu"), False),
        atol=1e-3,
    )


def test_ensemble_of_two_checkpoints_averages_their_softmax(tmp_path):
    torch.manual_seed(0)
    paths = []
    for i in range(2):
        model = build_model(TRAIN, 4)
        paths.append(tmp_path / f"round_{i}.pt")
        save_checkpoint(paths[-1], model.state_dict(), TRAIN, 4, round=i)
    save_ensemble(tmp_path / "best.pt", paths)
    members, meta = load_models(tmp_path / "best.pt", torch.device("cpu"))
    assert len(members) == 2 and meta["members"] == 2 and meta["context_slices"] == 3
    image = np.random.default_rng(1).random((4, 16, 16)).astype(np.float32)
    singles = [
        predict_probabilities([load_models(p, torch.device("cpu"))[0][0]], image, 3, 4, torch.device("cpu"))
        for p in paths
    ]
    both = predict_probabilities(members, image, 3, 4, torch.device("cpu"))
    assert np.allclose(both, (singles[0].astype(np.float32) + singles[1]) / 2, atol=2e-3)
    assert np.allclose(both.sum(1), 1, atol=5e-3)


def test_poly_schedule_decays_to_near_zero():
    cfg = {**TRAIN, "lr_schedule": "poly", "epochs": 10, "lr": 0.01}
    optimiser = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg["lr"])
    scheduler = build_scheduler(optimiser, cfg)
    rates = []
    for _ in range(10):
        rates.append(optimiser.param_groups[0]["lr"])
        optimiser.step()
        scheduler.step()
    assert rates[0] == pytest.approx(0.01) and all(a > b for a, b in zip(rates, rates[1:]))
    assert rates[-1] == pytest.approx(0.01 * 0.1**0.9)


def test_validation_subset_is_fixed_and_keeps_labelled_slices(tmp_path):
    image, seg = write_case(tmp_path / "raw")
    preprocess_case(image, seg, tmp_path / "a", {**DEFAULTS, "crop_margin": 1, "size": [16, 16]})
    dataset = SliceDataset([tmp_path / "a"])
    subset = validation_subset(dataset, {**TRAIN, "val_max_slices": 4}, round_seed=5)
    again = validation_subset(dataset, {**TRAIN, "val_max_slices": 4}, round_seed=5)
    assert len(subset) == 4 and subset.indices == again.indices
    assert sum(dataset.foreground_mask()[subset.indices]) == 2  # half with labels
    assert validation_subset(dataset, {**TRAIN, "val_max_slices": None}, 5) is dataset


@pytest.mark.parametrize("model", ["unet", "unetpp", "efficientnet_unet", "segresnet"])
def test_instance_norm_and_context_build_for_every_model(model):
    cfg = {**TRAIN, "model": model, "channels": [8, 16, 32, 64]}
    net = build_model(cfg, 4).eval()
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 4, 32, 32)
    if model == "unet":
        assert any(isinstance(m, torch.nn.InstanceNorm2d) for m in net.modules())
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


def test_class_balanced_weights_give_every_label_an_equal_share():
    # 6 slices: 4 show kidney only, 1 kidney + tumour, 1 nothing
    presence = np.array([[1, 0], [1, 0], [1, 0], [1, 0], [1, 1], [0, 0]], dtype=bool)
    weights = class_balanced_weights(presence)
    kidney_mass = weights[presence[:, 0]].sum()
    tumour_mass = weights[presence[:, 1]].sum()
    assert weights[-1] == 1.0
    # each label contributes a mass of 1 in all; the shared slice carries 1/5 of the kidney's and all the tumour's
    assert tumour_mass == pytest.approx(1.2) and kidney_mass == pytest.approx(2.0)
    assert weights[4] > 5 * weights[0]  # the one tumour slice is drawn far more often than a kidney-only one
    rng = np.random.default_rng(0)
    picks = epoch_indices(presence.any(1), 4000, 1.0, rng, weights=weights)
    assert 0.55 < np.mean(picks == 4) < 0.65  # 1.2 / 2.0 of the draws show the tumour, against 1 in 5 unweighted


def test_slice_dataset_reports_which_labels_each_slice_shows(tmp_path):
    image, seg = write_case(tmp_path / "raw")
    preprocess_case(image, seg, tmp_path / "a", {**DEFAULTS, "crop_margin": 1, "size": [16, 16]})
    dataset = SliceDataset([tmp_path / "a"])
    presence = dataset.class_presence()
    _, label = load_case(tmp_path / "a")
    assert presence.shape == (len(dataset), int(np.max(label)))
    for z in range(len(dataset)):
        assert presence[z].tolist() == [bool((np.asarray(label[z]) == c).any()) for c in (1, 2)]
    assert dataset.foreground_mask().tolist() == presence.any(1).tolist()


def test_sliding_windows_equal_the_whole_slice_for_a_pointwise_network():
    # A 1x1 convolution sees no neighbours: every window gives each pixel the same logits, so the Gaussian-weighted
    # mean over overlapping windows must equal the network on the whole slice.
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 3, kernel_size=1)
    windowed = for_whole_slices(net, {"patch_size": [8, 8], "window_overlap": 0.5}).eval()
    assert isinstance(windowed, SlidingWindow)
    image = torch.randn(2, 1, 20, 28)
    with torch.no_grad():
        assert torch.allclose(windowed(image), net(image), atol=1e-5)


def test_sliding_windows_only_for_crop_trained_networks_at_inference():
    net = torch.nn.Conv2d(1, 2, kernel_size=3, padding=1)
    assert for_whole_slices(net, {"patch_size": None, "window_overlap": 0.5}) is net
    assert for_whole_slices(net, {"patch_size": [8, 8], "window_overlap": None}) is net
    assert for_whole_slices(net, {"context_slices": 1}) is net  # checkpoints from before the keys existed
    windowed = for_whole_slices(net, {"patch_size": [8, 8], "window_overlap": 0.25})
    calls = []
    net.register_forward_hook(lambda module, inputs, output: calls.append(tuple(inputs[0].shape)))
    image = torch.randn(1, 1, 16, 16)
    windowed.train()  # training steps take the crops as they are
    windowed(image)
    assert calls == [(1, 1, 16, 16)]
    calls.clear()
    windowed.eval()
    with torch.no_grad():
        out = windowed(image)
    assert out.shape == (1, 2, 16, 16) and calls and all(shape[2:] == (8, 8) for shape in calls)


def test_a_crop_trained_checkpoint_predicts_in_windows(tmp_path):
    cfg = dict(TRAIN, context_slices=1, patch_size=[8, 8], window_overlap=0.5)
    model = build_model(cfg, 4)
    save_checkpoint(tmp_path / "m.pt", model.state_dict(), cfg, 4)
    models, checkpoint = load_models(tmp_path / "m.pt", torch.device("cpu"))
    assert isinstance(models[0], SlidingWindow) and checkpoint["model_cfg"]["patch_size"] == [8, 8]
    probabilities = predict_probabilities(
        models, np.random.rand(3, 24, 24).astype(np.float32), 1, 2, torch.device("cpu")
    )
    assert probabilities.shape == (3, 4, 24, 24)
    assert np.allclose(probabilities.astype(np.float32).sum(axis=1), 1, atol=1e-2)


KITS_REGIONS = {"kidney_and_masses": [1, 2, 3], "masses": [2, 3], "tumor": [2]}


def confident_logits(labels: torch.Tensor, n_classes: int = 4) -> torch.Tensor:
    """(N, C, H, W) logits whose softmax is (almost) the one-hot of ``labels`` (N, H, W)."""
    return torch.nn.functional.one_hot(labels, n_classes).movedim(-1, 1).float() * 20.0


@pytest.mark.parametrize("batch", [True, False])
def test_region_dice_with_one_class_per_region_is_monai_class_dice(batch):
    from monai.losses import DiceLoss

    logits, target = torch.randn(3, 4, 16, 16), torch.randint(0, 4, (3, 1, 16, 16))
    regions = RegionDiceLoss({"a": [1], "b": [2], "c": [3]}, 4, batch=batch)(logits, target)
    classes = DiceLoss(to_onehot_y=True, softmax=True, include_background=False, batch=batch)(logits, target)
    assert torch.isclose(regions, classes, atol=1e-4)


def test_region_dice_forgives_confusion_inside_a_region_and_counts_the_rest():
    # A kidney (1) around a tumour (2); the prediction calls the tumour a cyst (3). Over KiTS's regions only the
    # tumour region is wrong (loss 1/3); over classes, tumour and cyst both are (2/3).
    target = torch.zeros(1, 32, 32, dtype=torch.long)
    target[0, 8:24, 8:24] = 1
    target[0, 12:20, 12:20] = 2
    predicted = torch.where(target == 2, 3, target)
    regions = RegionDiceLoss(KITS_REGIONS, 4)(confident_logits(predicted), target[:, None])
    assert regions.item() == pytest.approx(1 / 3, abs=1e-3)
    classes = RegionDiceLoss({"kidney": [1], "tumor": [2], "cyst": [3]}, 4)(
        confident_logits(predicted), target[:, None]
    )
    assert classes.item() == pytest.approx(2 / 3, abs=1e-3)
    # A perfect prediction scores 0, one that misses everything 1.
    assert RegionDiceLoss(KITS_REGIONS, 4)(confident_logits(target), target[:, None]).item() == pytest.approx(
        0, abs=1e-3
    )
    empty = torch.zeros_like(target)
    assert RegionDiceLoss(KITS_REGIONS, 4)(confident_logits(empty), target[:, None]).item() == pytest.approx(
        1, abs=1e-3
    )


def test_region_loss_trains_and_refuses_what_cannot_work():
    cfg = {**TRAIN, "context_slices": 1, "loss": "dice_ce", "dice_targets": "regions", "batch_dice": True}
    model = build_model(cfg, n_classes=4)
    loss = build_loss(cfg, KITS_REGIONS, 4)(model(torch.rand(2, 1, 32, 32)), torch.randint(0, 4, (2, 1, 32, 32)))
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="train.loss 'dice_focal'"):
        build_loss({**cfg, "loss": "dice_focal"}, KITS_REGIONS, 4)
    with pytest.raises(ValueError, match="score.regions.tumor holds label 5"):
        build_loss(cfg, {"tumor": [5]}, 4)
    # At start-up, one line naming the keys.
    with pytest.raises(ConfigError, match="train.dice_targets is regions but train.loss is ce"):
        check_config(config_with_defaults({"train": {"dice_targets": "regions", "loss": "ce"}}))
    check_config(config_with_defaults({"train": {"dice_targets": "regions"}}))


def _two_class_logits(margins) -> torch.Tensor:
    """(1, 2, 1, n) logits whose cross-entropy against class 0 at pixel i is softplus(margins[i])."""
    margins = torch.tensor(margins, dtype=torch.float32)
    return torch.stack([torch.zeros_like(margins), margins])[None, :, None, :]


def test_top_fraction_averages_the_cross_entropy_over_the_hardest_pixels():
    # Eight easy pixels (margin -6: CE 0.0025) and two confident errors (margins 4 and 2: CE 4.018 and 2.127).
    margins = [-6.0] * 8 + [4.0, 2.0]
    logits, target = _two_class_logits(margins), torch.zeros(1, 1, 1, 10, dtype=torch.long)
    per_pixel = torch.nn.functional.softplus(torch.tensor(margins))
    assert CrossEntropy()(logits, target).item() == pytest.approx(per_pixel.mean().item(), rel=1e-6)
    # The plain mean dilutes the two errors five times over; the top 20 % is exactly those two.
    assert CrossEntropy(0.2)(logits, target).item() == pytest.approx((4.018150 + 2.126928) / 2, rel=1e-5)
    assert CrossEntropy(0.1)(logits, target).item() == pytest.approx(4.018150, rel=1e-5)
    # The whole batch competes: a second sample of easy pixels only gives up its share.
    batch = torch.cat([logits, _two_class_logits([-6.0] * 10)])
    assert CrossEntropy(0.1)(batch, torch.zeros(2, 1, 1, 10, dtype=torch.long)).item() == pytest.approx(
        (4.018150 + 2.126928) / 2, rel=1e-5
    )
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="ce_top_fraction"):
            CrossEntropy(bad)


@pytest.mark.parametrize("dice_targets", ["classes", "regions"])
def test_top_fraction_trains_beside_either_dice(dice_targets):
    cfg = {**TRAIN, "context_slices": 1, "loss": "dice_ce", "dice_targets": dice_targets, "ce_top_fraction": 0.1}
    loss_fn = build_loss(cfg, KITS_REGIONS, 4)
    model = build_model(cfg, n_classes=4)
    images, target = torch.rand(2, 1, 32, 32), torch.randint(0, 4, (2, 1, 32, 32))
    loss = loss_fn(model(images), target)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # The Dice part is the same as without it; only the cross-entropy part grows (the hardest pixels' mean).
    with torch.no_grad():
        logits = model(images)
        plain = build_loss({**cfg, "ce_top_fraction": 1.0}, KITS_REGIONS, 4)(logits, target)
        dice_only = build_loss({**cfg, "loss": "dice", "ce_top_fraction": 1.0}, KITS_REGIONS, 4)(logits, target)
        top = loss_fn(logits, target)
    assert top - dice_only == pytest.approx(CrossEntropy(0.1)(logits, target).item(), rel=1e-4)
    assert top > plain


def test_top_fraction_needs_a_cross_entropy_part():
    with pytest.raises(ValueError, match="train.loss 'dice' has no cross-entropy part"):
        build_loss({**TRAIN, "loss": "dice", "ce_top_fraction": 0.1})
    with pytest.raises(ConfigError, match="train.ce_top_fraction is 0.1 but train.loss is dice_focal"):
        check_config(config_with_defaults({"train": {"loss": "dice_focal", "ce_top_fraction": 0.1}}))
    check_config(config_with_defaults({"train": {"loss": "ce", "ce_top_fraction": 0.1}}))
    assert config_with_defaults({})["train"]["ce_top_fraction"] == 1.0  # the default: the plain mean


@pytest.mark.parametrize("value", [0, -0.1, 1.01])
def test_top_fraction_outside_0_to_1_is_refused_by_the_schema(value):
    from snakemake.exceptions import WorkflowError

    with pytest.raises(WorkflowError, match="ce_top_fraction"):
        config_with_defaults({"train": {"ce_top_fraction": value}})


def _kidney_slice(kidney: float, tumour: float | None, tumour_box=(slice(14, 18), slice(20, 24))):
    """(1, 32, 32) image and (32, 32) labels: a kidney block at ``kidney`` intensity, optionally a tumour in it."""
    image = np.full((1, 32, 32), 0.1, np.float32)
    label = np.zeros((32, 32), np.int64)
    label[8:24, 8:28] = 1
    image[0][label == 1] = kidney
    if tumour is not None:
        label[tumour_box] = 2
        image[0][tumour_box] = tumour
    return image, label


def test_lesion_bank_keeps_each_lesion_relative_to_its_host_organ(tmp_path):
    # Case a: kidney at 0.8 with a tumour 0.3 darker. Case b: kidney only. Case c: a tumour with no kidney beside it.
    cases = {"a": _kidney_slice(0.8, 0.5), "b": _kidney_slice(0.6, None)}
    lone = np.zeros((32, 32), np.int64)
    lone[4:8, 4:8] = 2
    cases["c"] = (np.full((1, 32, 32), 0.4, np.float32), lone)
    for name, (image, label) in cases.items():
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "image.npy", np.repeat(image, 3, axis=0))  # three identical slices
        np.save(tmp_path / name / "label.npy", np.repeat(label[None], 3, axis=0).astype(np.uint8))
        (tmp_path / name / "meta.json").write_text('{"format": "npy"}')
    bank = lesion_bank(SliceDataset([tmp_path / n for n in cases]), host_label=1)
    assert len(bank) == 3  # case a's tumour in each of its 3 slices; case c has no kidney to calibrate against
    cut = bank[0]
    assert cut["mask"].shape == (4, 4) and cut["mask"].all() and (cut["label"] == 2).all()
    assert np.allclose(cut["image"], 0.5 - 0.8)  # stored as the contrast to its kidney
    assert [c["case"] for c in bank] == [0, 0, 0]  # each cut knows its case (for lesion_paste_balance)


def test_pasted_lesion_keeps_its_contrast_to_the_new_host_and_takes_its_labels():
    image, label = _kidney_slice(0.6, None)
    cut = {"image": np.full((1, 4, 6), -0.3, np.float32), "mask": np.ones((4, 6), bool), "label": np.full((4, 6), 2)}
    cut["mask"][0, 0] = False  # a corner outside the lesion keeps the host's label
    pasted, labels = paste_cut(image, label, cut, centre=(16, 16), host_mean=0.6)
    assert labels[14:18, 13:19].tolist() == np.where(cut["mask"], 2, 1).tolist()
    assert labels.sum() - label.sum() == 23  # 23 lesion pixels, each from 1 to 2
    assert np.isclose(pasted[0, 16, 16], 0.3, atol=0.02)  # inside: the new kidney's 0.6 minus its 0.3 contrast
    assert np.array_equal(pasted[:, :, :10], image[:, :, :10])  # away from the cut nothing changes
    assert np.array_equal(image, _kidney_slice(0.6, None)[0])  # the inputs are left alone
    # At an edge the cut is clipped, not wrapped or refused.
    _, edge_labels = paste_cut(image, label, cut, centre=(0, 31), host_mean=0.6)
    assert (edge_labels == 2).sum() == 2 * 4 and edge_labels[0, 31] == 2  # rows 0-1, columns 28-31


def test_pasted_lesion_contrast_scales_its_mean_contrast_and_keeps_its_texture():
    image, label = _kidney_slice(0.6, None)
    texture = np.array([[-0.05, 0.05] * 3] * 4, np.float32)  # around a mean contrast of -0.3
    cut = {"image": (texture - 0.3)[None], "mask": np.ones((4, 6), bool), "label": np.full((4, 6), 2)}
    same, _ = paste_cut(image, label, cut, centre=(16, 16), host_mean=0.6)
    half, half_labels = paste_cut(image, label, cut, centre=(16, 16), host_mean=0.6, contrast=0.5)
    iso, _ = paste_cut(image, label, cut, centre=(16, 16), host_mean=0.6, contrast=0.0)
    inside = (0, slice(15, 17), slice(14, 18))  # away from the soft edge
    assert np.isclose(same[inside].mean(), 0.3, atol=0.01)
    assert np.isclose(half[inside].mean(), 0.45, atol=0.01)  # half as dark against the kidney's 0.6
    assert np.isclose(iso[inside].mean(), 0.6, atol=0.01)  # iso: only the texture tells it
    assert np.allclose(np.diff(half[inside]), np.diff(same[inside]), atol=1e-6)  # the texture is the lesion's
    assert np.array_equal(half_labels, paste_cut(image, label, cut, centre=(16, 16), host_mean=0.6)[1])


def test_lesion_paste_contrast_range_draws_a_factor_per_paste_and_one_one_changes_nothing():
    image, label = _kidney_slice(0.6, None)
    donor_image, donor_label = _kidney_slice(0.8, 0.4)  # a tumour 0.4 darker than its kidney
    bank = lesion_cuts(donor_image, donor_label, host_label=1)
    augment = {**config_with_defaults()["train"]["augment"], "lesion_paste_prob": 1.0}
    augment.update(flip_prob=0.0, affine_prob=0.0, intensity_prob=0.0)
    assert augment["lesion_paste_contrast"] == [1, 1]  # the schema's default: every lesion at its own contrast
    sample = {"image": torch.from_numpy(image), "label": torch.from_numpy(label)[None]}

    def tumour_means(contrast, seeds=range(12)):
        transform = build_augmentation({**augment, "lesion_paste_contrast": contrast}, lesions=bank)
        means = []
        for seed in seeds:
            transform.set_random_state(seed=seed)
            out = transform(sample)
            means.append(float(out["image"][0][np.asarray(out["label"][0]) == 2].mean()))
        return np.array(means)

    assert np.allclose(tumour_means([1, 1]), 0.2, atol=0.03)  # 0.6 - 0.4 whatever the seed
    drawn = tumour_means([0.25, 1.75])
    assert drawn.min() > 0.6 - 1.75 * 0.4 - 0.03 and drawn.max() < 0.6 - 0.25 * 0.4 + 0.03
    assert drawn.std() > 0.05  # a factor per paste, not one for the round
    assert np.allclose(tumour_means([0.5, 0.5]), 0.4, atol=0.03)
    with pytest.raises(ConfigError, match=r"train.augment.lesion_paste_contrast is \[1.5, 0.5\]"):
        check_config(config_with_defaults({"train": {"augment": {"lesion_paste_contrast": [1.5, 0.5]}}}))


def test_lesion_paste_is_seeded_and_only_touches_slices_showing_the_host():
    image, label = _kidney_slice(0.6, None)
    donor_image, donor_label = _kidney_slice(0.8, 0.4)
    bank = lesion_cuts(donor_image, donor_label, host_label=1)
    augment = {**config_with_defaults()["train"]["augment"], "lesion_paste_prob": 1.0}
    augment.update(flip_prob=0.0, affine_prob=0.0, intensity_prob=0.0)
    transform = build_augmentation(augment, lesions=bank)
    sample = {"image": torch.from_numpy(image), "label": torch.from_numpy(label)[None]}
    transform.set_random_state(seed=4)
    out = transform(sample)
    assert (np.asarray(out["label"]) == 2).sum() == 16 and out["label"].shape == (1, 32, 32)
    assert np.isclose(float(out["image"][0][np.asarray(out["label"][0]) == 2].mean()), 0.2, atol=0.03)
    transform.set_random_state(seed=4)
    assert torch.equal(transform(sample)["image"], out["image"])  # the seed decides where
    empty = {"image": torch.zeros(1, 32, 32), "label": torch.zeros(1, 32, 32, dtype=torch.long)}
    assert torch.equal(transform(empty)["image"], empty["image"])  # no kidney: nothing to paste onto
    off = build_augmentation({**augment, "lesion_paste_prob": 0.0}, lesions=bank)
    assert "LesionPaste" not in [type(t).__name__ for t in off.transforms]
    with pytest.raises(ConfigError, match="lesion_paste_prob"):
        check_config(config_with_defaults({"train": {"dims": 3, "model": "vnet", "patch_size": [8, 16, 16],
                                                     "augment": {"lesion_paste_prob": 0.5}},
                                           "preprocess": {"size": None}}))  # fmt: skip


def test_keep_epoch_last_takes_each_rounds_last_epoch_and_exports_it_without_the_training_state(tmp_path):
    import pandas as pd

    from segflow.checkpoints import export_checkpoint, model_cfg
    from segflow.model_selection import select_best_round

    metrics, states = [], []
    for r, losses in enumerate([[0.9, 0.3, 0.7], [0.8, 0.6, 0.4]]):  # round 0's lowest loss is not its last
        metrics.append(tmp_path / f"metrics_{r}.csv")
        pd.DataFrame({"round": r, "epoch": range(3), "val_loss": losses, "val_dice": 0.5}).to_csv(metrics[-1])
        states.append(tmp_path / f"model_last_{r}.pt")
        weights = build_model(TRAIN, 4).state_dict()
        torch.save({"model": weights, "model_cfg": model_cfg(TRAIN), "n_classes": 4, "round": r, "epoch": 2,
                    "optimiser": {"state": {}}, "rng": [1, 2]}, states[-1])  # fmt: skip
    best = select_best_round(metrics, states, keep_epoch="best")
    assert list(best["table"]["best_epoch"]) == [1, 2] and best["round"] == 0  # round 0's epoch 1: 0.3
    last = select_best_round(metrics, states, keep_epoch="last")
    assert list(last["table"]["best_epoch"]) == [2, 2] and list(last["table"]["val_loss"]) == [0.7, 0.4]
    assert last["round"] == 1 and last["keep_epoch"] == "last"  # compared by their last epochs, 0.4 beats 0.7
    export_checkpoint(tmp_path / "best.pt", last["checkpoint"])
    exported = torch.load(tmp_path / "best.pt", weights_only=False)
    assert set(exported) == {"model", "model_cfg", "n_classes", "round", "epoch"}  # no optimiser or random states
    save_ensemble(tmp_path / "ensemble.pt", states)
    assert all("optimiser" not in m for m in torch.load(tmp_path / "ensemble.pt", weights_only=False)["members"])
    assert len(load_models(tmp_path / "ensemble.pt", torch.device("cpu"))[0]) == 2


def test_deep_supervision_weighs_the_heads_as_nnunet_and_leaves_plain_logits_alone():
    plain = build_loss(TRAIN)
    supervised = build_loss({**TRAIN, "deep_supervision": 2})
    logits, target = torch.randn(2, 4, 16, 16), torch.randint(0, 4, (2, 1, 16, 16))
    heads = torch.stack([logits, 2 * logits, torch.zeros_like(logits)], dim=1)  # (N, 1 + heads, C, H, W)
    expected = (4 * plain(logits, target) + 2 * plain(2 * logits, target) + plain(heads[:, 2], target)) / 7
    assert torch.allclose(supervised(heads, target), expected)
    assert torch.equal(supervised(logits, target), plain(logits, target))  # eval mode: the main output only
    with pytest.raises(ValueError, match="2 outputs for 3"):
        supervised(heads[:, :2], target)


def test_dynunet_gives_its_heads_in_training_and_one_output_when_loaded(tmp_path):
    cfg = dict(TRAIN, model="dynunet", channels=[4, 8, 16, 32], context_slices=1, deep_supervision=2)
    model = build_model(cfg, 4)
    image, target = torch.rand(2, 1, 32, 32), torch.randint(0, 4, (2, 1, 32, 32))
    heads = model.train()(image)
    assert heads.shape == (2, 3, 4, 32, 32)  # every head upsampled to the input size
    build_loss(cfg)(heads, target).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)  # the heads learn too
    save_checkpoint(tmp_path / "m.pt", model.state_dict(), cfg, 4)
    models, checkpoint = load_models(tmp_path / "m.pt", torch.device("cpu"))  # strict: the heads' weights load
    assert checkpoint["model_cfg"]["deep_supervision"] == 2
    with torch.no_grad():
        assert models[0](image).shape == (2, 4, 32, 32)
    with pytest.raises(ValueError, match="at least 5 levels"):
        build_model({**cfg, "deep_supervision": 3}, 4)


def test_deep_supervision_is_checked_at_start_up():
    with pytest.raises(ConfigError, match="train.deep_supervision is 2 but train.model is unet"):
        check_config(config_with_defaults({"train": {"deep_supervision": 2}}))
    with pytest.raises(ConfigError, match="lower it to 3"):
        check_config(config_with_defaults({"train": {"model": "dynunet", "deep_supervision": 4}}))
    check_config(config_with_defaults({"train": {"model": "dynunet", "deep_supervision": 3}}))
    volumes = {"model": "dynunet", "dims": 3, "deep_supervision": 1, "patch_size": [8, 16, 16]}
    check_config(config_with_defaults({"train": volumes, "preprocess": {"size": None}}))


def test_val_every_needs_the_poly_schedule():
    with pytest.raises(ConfigError, match="train.val_every is 4, but train.lr_schedule plateau"):
        check_config(config_with_defaults({"train": {"val_every": 4, "lr_schedule": "plateau"}}))
    check_config(config_with_defaults({"train": {"val_every": 4, "lr_schedule": "poly"}}))


def two_grids(tmp_path) -> SliceDataset:
    """Two cases preprocessed with preprocess.size null: each keeps its own in-plane grid (22 x 18 and 30 x 26)."""
    dirs = []
    for name, shape in (("small", (24, 20, 8)), ("large", (32, 28, 6))):
        image, seg = write_case(tmp_path / "raw" / name, shape=shape)
        preprocess_case(image, seg, tmp_path / name, {**DEFAULTS, "crop_margin": 1, "size": None})
        dirs.append(tmp_path / name)
    return SliceDataset(dirs)


def test_batches_never_mix_the_grids_of_cases_kept_on_their_own_grid(tmp_path):
    dataset = two_grids(tmp_path)
    shapes = {slice_shape(dataset, i) for i in range(len(dataset))}
    assert len(shapes) == 2 and len(dataset) == 14
    batches = same_shape_batches(dataset, 3)
    assert [len(b) for b in batches] == [3, 3, 2, 3, 3]  # 8 slices of one case, then 6 of the other
    assert sum(batches, []) == list(range(len(dataset)))  # every item once, in order
    assert all(len({slice_shape(dataset, i) for i in b}) == 1 for b in batches)
    subset = torch.utils.data.Subset(dataset, [6, 7, 8, 9])
    assert same_shape_batches(subset, 8) == [[0, 1], [2, 3]]


def test_datasets_of_one_patch_size_batch_in_order():
    # The 3D path validates on fixed patches of one size (no slice grid to read): plain batches, as a DataLoader's.
    patches = torch.utils.data.TensorDataset(torch.zeros(7, 1, 4, 4, 4))
    assert slice_shape(patches, 0) is None
    assert same_shape_batches(patches, 3) == [[0, 1, 2], [3, 4, 5], [6]]


def test_crops_of_slices_smaller_than_the_crop_are_padded_to_it(tmp_path):
    dataset = two_grids(tmp_path)
    dataset.transform = build_augmentation({"enabled": False}, patch_size=[24, 24])
    dataset.transform.set_random_state(seed=0)
    small, large = dataset[3], dataset[10]  # 22 x 18 and 30 x 26 slices with labels
    assert small["image"].shape == large["image"].shape == (1, 24, 24)
    assert small["label"].shape == (1, 24, 24) and small["label"].max() > 0


def test_cases_on_their_own_grid_validate_in_windows(tmp_path):
    # evaluate over two grids, one of them smaller than a window in one axis: windows pad what they must, and the
    # figures are those of each case evaluated alone.
    dataset = two_grids(tmp_path)
    torch.manual_seed(0)
    net = build_model({**TRAIN, "context_slices": 1}, 4)
    windowed = for_whole_slices(net, {"patch_size": [24, 24], "window_overlap": 0.5})
    loss_fn = build_loss({**TRAIN, "loss": "dice_ce"}, None, 4)
    both = evaluate(windowed, dataset, loss_fn, 4, torch.device("cpu"), 4)
    parts = [
        evaluate(windowed, torch.utils.data.Subset(dataset, items), loss_fn, 4, torch.device("cpu"), 4)
        for items in (range(8), range(8, 14))
    ]
    assert both.loss == pytest.approx((8 * parts[0].loss + 6 * parts[1].loss) / 14, rel=1e-5)


def test_size_null_in_2d_needs_crops_and_windows_and_spacing_needs_an_axis():
    with pytest.raises(ConfigError, match="preprocess.size is null .* set train.patch_size and train.window_overlap"):
        check_config(config_with_defaults({"preprocess": {"size": None}}))
    with pytest.raises(ConfigError, match="set train.patch_size and train.window_overlap"):
        check_config(
            config_with_defaults(
                {"preprocess": {"size": None}, "train": {"patch_size": [32, 32], "window_overlap": None}}
            )
        )
    check_config(
        config_with_defaults(
            {"preprocess": {"size": None, "spacing": [0.9, 0.9, 0]}, "train": {"patch_size": [32, 32]}}
        )
    )
    with pytest.raises(ConfigError, match=r"preprocess.spacing \[0, 0, 0\] keeps every axis's own spacing"):
        check_config(config_with_defaults({"preprocess": {"spacing": [0, 0, 0]}}))


def test_per_case_class_balance_gives_every_case_of_a_label_an_equal_share():
    # case 0: kidney and a tumour on 4 slices; case 1: kidney and a tumour on 1 slice, 2 kidney-only slices, 1 empty
    presence = np.array([[1, 1]] * 4 + [[1, 1], [1, 0], [1, 0], [0, 0]], dtype=bool)
    cases = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    per_case = class_balanced_weights(presence, cases)
    # kidney: 2 cases, so 1/2 per case over its 4 or 3 slices; tumour: 1/2 per case over its 4 slices or 1
    assert per_case[:4] == pytest.approx([1 / 8 + 1 / 8] * 4)
    assert per_case[4] == pytest.approx(1 / 6 + 1 / 2)
    assert per_case[5:7] == pytest.approx([1 / 6] * 2)
    assert per_case[7] == 1.0  # the only empty slice
    # each label still weighs 1 in all, so the labels stay balanced against each other
    assert per_case.sum() - per_case[7] == pytest.approx(2.0)
    # the one-slice tumour is drawn a third of the time; balanced over slices only, a sixth (its 1/5 of the tumour)
    rng = np.random.default_rng(0)
    picks = epoch_indices(presence.any(1), 6000, 1.0, rng, weights=per_case)
    assert 0.31 < np.mean(picks == 4) < 0.36
    by_slice = class_balanced_weights(presence)
    assert by_slice[4] / by_slice[:7].sum() == pytest.approx((1 / 7 + 1 / 5) / 2)


def test_per_case_class_balance_is_a_config_choice(tmp_path):
    from segflow.train import sampling_weights

    class Slices:  # the two methods sampling_weights reads
        def class_presence(self):
            return np.array([[1, 1], [1, 1], [1, 0], [1, 1]], dtype=bool)

        def item_cases(self):
            return np.array([0, 0, 0, 1])

    assert sampling_weights(Slices(), False) is None
    assert sampling_weights(Slices(), True)[3] == pytest.approx(0.25 + 1 / 3)
    assert sampling_weights(Slices(), "per_case")[3] == pytest.approx(0.5 + 1 / 2)


def test_region_presence_unites_the_labels_of_each_region():
    from segflow.data import region_presence

    # kidney, tumour, cyst per slice: kidney only, kidney + tumour, kidney + cyst, nothing
    presence = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 1], [0, 0, 0]], dtype=bool)
    shown = region_presence(presence, KITS_REGIONS)
    assert shown.tolist() == [[1, 0, 0], [1, 1, 1], [1, 1, 0], [0, 0, 0]]  # kidney+masses, masses, tumour
    # a label in no region keeps its own column; a region's label the slices never show adds nothing
    assert region_presence(presence, {"masses": [2, 3], "other": [7]}).tolist() == [
        [0, 0, 1],
        [1, 0, 1],
        [1, 0, 1],
        [0, 0, 0],
    ]


def test_class_balance_over_regions_draws_a_rare_label_as_its_region():
    from segflow.train import sampling_weights

    class Slices:  # 6 kidney-only slices, 3 with a tumour, 1 with a cyst
        def class_presence(self):
            return np.array([[1, 0, 0]] * 6 + [[1, 1, 0]] * 3 + [[1, 0, 1]], dtype=bool)

    by_label = sampling_weights(Slices(), True)
    by_region = sampling_weights(Slices(), "regions", KITS_REGIONS)
    cyst_share = lambda w: w[9] / w.sum()  # noqa: E731
    tumour_share = lambda w: w[6:9].sum() / w.sum()  # noqa: E731
    # per label the one cyst slice is drawn about a third of the time; as a mass, 1/4 of the masses' third
    assert cyst_share(by_label) == pytest.approx((1 / 10 + 1) / 3)
    assert cyst_share(by_region) == pytest.approx((1 / 10 + 1 / 4) / 3)
    assert tumour_share(by_region) > tumour_share(by_label)  # the tumour region adds its own third
    with pytest.raises(ValueError, match="class_balance is regions but the round was given no score.regions"):
        sampling_weights(Slices(), "regions")


def test_class_balance_over_regions_needs_regions_at_start_up():
    check_config(config_with_defaults({"train": {"class_balance": "regions"}}))
    with pytest.raises(ConfigError, match="train.class_balance is regions but score.regions is empty"):
        check_config(config_with_defaults({"train": {"class_balance": "regions"}, "score": {"regions": {}}}))


@pytest.mark.parametrize("value", [False, True, "per_case", "regions"])
def test_class_balance_accepts_its_four_settings(value):
    from helpers import config_with_defaults

    assert config_with_defaults({"train": {"class_balance": value}})["train"]["class_balance"] == value


def test_class_balance_rejects_other_settings():
    from helpers import config_with_defaults
    from snakemake.exceptions import WorkflowError

    with pytest.raises(WorkflowError, match="class_balance"):
        config_with_defaults({"train": {"class_balance": "per_slice"}})


@pytest.mark.parametrize("candidates", [[0.0], [1.0], [], 0.4])
def test_region_thresholds_must_be_lists_of_shares_strictly_between_0_and_1(candidates):
    from helpers import config_with_defaults
    from snakemake.exceptions import WorkflowError

    with pytest.raises(WorkflowError, match="region_thresholds"):
        config_with_defaults({"infer": {"decode": "regions", "region_thresholds": {"masses": candidates}}})


def test_per_case_lesion_paste_draws_each_cases_lesions_equally_often():
    # case 0 gave 4 cuts (a lesion on 4 slices), case 1 one cut
    bank = [{"case": 0, "id": i} for i in range(4)] + [{"case": 1, "id": 4}]
    assert per_case_cut_weights(bank) == pytest.approx([1 / 8] * 4 + [1 / 2])

    def share_of_case_1(balance: str) -> float:
        paste = LesionPaste(bank, host_label=1, prob=1.0, balance=balance)
        paste.set_random_state(seed=0)
        drawn = []
        for _ in range(4000):
            paste.randomize(n_host_pixels=100)
            drawn.append(paste._cut["case"])
        return float(np.mean(drawn))

    assert 0.17 < share_of_case_1("cut") < 0.23  # 1 cut in 5
    assert 0.47 < share_of_case_1("per_case") < 0.53
    augment = {**config_with_defaults()["train"]["augment"], "lesion_paste_prob": 1.0}
    assert augment["lesion_paste_balance"] == "cut"  # the schema's default, as before the option
    built = build_augmentation({**augment, "lesion_paste_balance": "per_case"}, lesions=bank)
    assert built.transforms[0].cut_weights == pytest.approx(per_case_cut_weights(bank))


def _false_tumour_on_a_kidney_crop():
    """Crop 0 shows only kidney, and the network calls 4 (``few``) or 100 (``many``) of its pixels tumour; crop 1
    shows a found tumour. Returns the (2, 1, 32, 32) target and the two predicted label maps (2, 32, 32)."""
    target = torch.zeros(2, 1, 32, 32, dtype=torch.long)
    target[:, 0, 4:28, 4:28] = 1
    target[1, 0, 8:24, 8:24] = 2
    few, many = target[:, 0].clone(), target[:, 0].clone()
    few[0, 10:12, 10:12] = 2
    many[0, 10:20, 10:20] = 2
    return target, few, many


@pytest.mark.parametrize("dice_targets", ["classes", "regions"])
def test_batch_dice_both_is_the_mean_of_the_pooled_and_the_per_crop_dice(dice_targets):
    target, few, many = _false_tumour_on_a_kidney_crop()
    cfg = {**TRAIN, "loss": "dice", "dice_targets": dice_targets}

    def loss(batch_dice, predicted):
        return build_loss({**cfg, "batch_dice": batch_dice}, KITS_REGIONS, 4)(
            confident_logits(predicted), target
        ).item()

    for predicted in (few, many):
        assert loss("both", predicted) == pytest.approx((loss(True, predicted) + loss(False, predicted)) / 2, abs=1e-6)

    # Per crop, 100 false tumour pixels on the crop without tumour cost the tumour's Dice nothing more than 4 do
    # (over classes the kidney's Dice loses the pixels); pooled, and so with both, they cost.
    def cost(batch_dice):
        return loss(batch_dice, many) - loss(batch_dice, few)

    assert cost("both") > cost(False) + 0.02
    if dice_targets == "regions":  # kidney+masses keeps those pixels
        assert cost(False) == pytest.approx(0, abs=1e-3)
    # With a cross-entropy part, both takes the place of the Dice part alone.
    with_ce = build_loss({**cfg, "loss": "dice_ce", "batch_dice": "both"}, KITS_REGIONS, 4)(
        confident_logits(many), target
    )
    assert with_ce.item() == pytest.approx(
        loss("both", many) + CrossEntropy()(confident_logits(many), target).item(), abs=1e-5
    )


def test_batch_dice_both_needs_a_dice_part():
    with pytest.raises(ValueError, match="train.batch_dice both needs train.loss dice or dice_ce"):
        build_loss({**TRAIN, "loss": "dice_focal", "batch_dice": "both"})
    with pytest.raises(ConfigError, match="train.batch_dice is both but train.loss is ce"):
        check_config(config_with_defaults({"train": {"loss": "ce", "batch_dice": "both"}}))
    check_config(config_with_defaults({"train": {"loss": "dice_ce", "batch_dice": "both"}}))
    with pytest.raises(ValueError, match="train.batch_dice is 'pooled'"):
        build_loss({**TRAIN, "loss": "dice", "batch_dice": "pooled"})


def test_batch_dice_other_strings_are_refused_by_the_schema():
    from snakemake.exceptions import WorkflowError

    with pytest.raises(WorkflowError, match="batch_dice"):
        config_with_defaults({"train": {"batch_dice": "pooled"}})


def test_dice_smooth_makes_false_positives_in_a_crop_without_the_region_cost():
    target, few, many = _false_tumour_on_a_kidney_crop()
    cfg = {**TRAIN, "loss": "dice", "dice_targets": "regions", "batch_dice": False}

    def loss(smooth, predicted, crop):
        return build_loss({**cfg, "dice_smooth": smooth}, KITS_REGIONS, 4)(
            confident_logits(predicted[crop : crop + 1]), target[crop : crop + 1]
        ).item()

    # At nnU-Net's 1e-5 a crop without tumour scores the same with 4 or 100 false tumour pixels: no signal.
    assert loss(1e-5, few, 0) == pytest.approx(loss(1e-5, many, 0), abs=1e-3)
    # At 1 they cost: 100 false pixels more than 4.
    assert loss(1.0, many, 0) > loss(1.0, few, 0) + 0.05
    # A crop that shows the tumour scores almost the same at either constant.
    assert loss(1.0, many, 1) == pytest.approx(loss(1e-5, many, 1), abs=1e-2)
    # The Dice over classes (MONAI's DiceLoss) takes the same constant.
    from monai.losses import DiceLoss

    logits = confident_logits(many)
    classes = build_loss({**cfg, "dice_targets": "classes", "dice_smooth": 1.0})(logits, target)
    monai = DiceLoss(to_onehot_y=True, softmax=True, include_background=False, smooth_nr=1.0, smooth_dr=1.0)
    assert classes.item() == pytest.approx(monai(logits, target).item(), abs=1e-6)
