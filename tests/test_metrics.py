"""Tests of segflow.metrics: hand-computed values, the published KiTS/surface-distance conventions, and
cross-checks against an independent re-implementation of surface-distance's algorithm and against MONAI.

Notation in the hand computations: spacing (1, 1, 3) mm; a surfel cell containing one voxel of the mask
(a corner of the object) has area A1 = |(1/8 s1 s2, 1/8 s0 s2, 1/8 s0 s1)| = sqrt(19) / 8 mm^2; a cell containing
two voxels adjacent along axis 0 (an edge of a bar along axis 0) has A2 = |(0, 1/2 s0 s2, 1/2 s0 s1)|
= sqrt(10) / 2 mm^2.
"""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

WORKFLOW_SCRIPTS = str(Path(__file__).resolve().parents[1] / "workflow_scripts")
if WORKFLOW_SCRIPTS not in sys.path:
    sys.path.insert(0, WORKFLOW_SCRIPTS)

from segflow import metrics  # noqa: E402

ANISO = (1.0, 1.0, 3.0)
A1 = math.sqrt(19) / 8
A2 = math.sqrt(10) / 2
KITS_LABELS = {"kidney": 1, "tumor": 2, "cyst": 3}


def box_mask(shape, *slices):
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slices)] = True
    return mask


def random_blob(rng, shape, density=0.06, iterations=2):
    """A few random lumps, some touching the array border (the cropping must cope with that)."""
    seeds = rng.random(shape) < density
    return ndimage.binary_dilation(seeds, iterations=iterations)


# --- overlap -----------------------------------------------------------------------------------------------------


def test_overlap_of_two_lines():
    pred = np.array([1, 1, 1, 0, 0], dtype=bool).reshape(1, 1, 5)
    ref = np.array([0, 1, 1, 1, 1], dtype=bool).reshape(1, 1, 5)
    # TP = 2, FP = 1, FN = 2
    assert metrics.overlap_metrics(pred, ref) == {
        "dice": 4 / 7,
        "iou": 2 / 5,
        "precision": 2 / 3,
        "recall": 2 / 4,
        "f1": 4 / 7,
    }


def test_overlap_of_squares():
    pred = box_mask((4, 4), slice(0, 2), slice(0, 2))  # 4 voxels
    ref = box_mask((4, 4), slice(1, 3), slice(1, 3))  # 4 voxels, 1 shared
    scores = metrics.overlap_metrics(pred, ref)
    assert scores["dice"] == 2 / 8
    assert scores["iou"] == 1 / 7
    assert scores["precision"] == scores["recall"] == 1 / 4


def test_f1_is_dice_to_the_bit():
    rng = np.random.default_rng(0)
    pred, ref = rng.random((30, 30, 30)) < 0.3, rng.random((30, 30, 30)) < 0.4
    scores = metrics.overlap_metrics(pred, ref)
    assert scores["f1"] == scores["dice"]
    tp, n_pred, n_ref = np.sum(pred & ref), pred.sum(), ref.sum()
    assert scores["dice"] == 2 * tp / (n_pred + n_ref)  # the KiTS23 formula


def test_overlap_empty_conventions():
    empty, full = np.zeros((3, 3, 3), bool), box_mask((3, 3, 3), slice(1, 2))
    assert set(metrics.overlap_metrics(empty, empty).values()) == {1.0}
    assert metrics.overlap_metrics(empty, full) == dict.fromkeys(["dice", "iou", "precision", "recall", "f1"], 0.0)
    assert metrics.overlap_metrics(full, empty) == dict.fromkeys(["dice", "iou", "precision", "recall", "f1"], 0.0)
    assert set(metrics.overlap_metrics(full, full).values()) == {1.0}


def test_label_maps_are_refused_as_masks():
    labels = np.array([[0, 1], [2, 2]])
    with pytest.raises(TypeError, match="boolean"):
        metrics.overlap_metrics(labels, labels > 0)
    with pytest.raises(ValueError, match="shape"):
        metrics.overlap_metrics(np.zeros((2, 2), bool), np.zeros((2, 3), bool))


# --- surface areas -----------------------------------------------------------------------------------------------


def test_single_voxel_surface_area():
    voxel = box_mask((3, 3, 3), slice(1, 2), slice(1, 2), slice(1, 2))
    distances = metrics.surface_distances(voxel, voxel, ANISO)
    assert len(distances.areas_ref) == 8  # one corner triangle per cell around the voxel
    np.testing.assert_allclose(distances.areas_ref, A1, rtol=1e-15)
    assert distances.areas_ref.sum() == pytest.approx(math.sqrt(19), rel=1e-15)
    assert not distances.distances_ref_to_pred.any()


def test_square_contour_length_2d():
    square = box_mask((4, 4), slice(1, 3), slice(1, 3))
    distances = metrics.surface_distances(square, square, (1.0, 2.0))
    # 4 corner segments of half a pixel diagonal, 2 edges along axis 0 (1 mm), 2 along axis 1 (2 mm)
    assert distances.areas_ref.sum() == pytest.approx(4 * 0.5 * math.sqrt(5) + 2 * 1 + 2 * 2, rel=1e-15)


def test_surface_of_the_mask_touching_the_array_border():
    # The mask fills the array: the surface lies on cells outside the array and must still be closed.
    block = np.ones((2, 1, 1), bool)
    distances = metrics.surface_distances(block, block, ANISO)
    assert sorted(distances.areas_ref) == pytest.approx(sorted([A1] * 8 + [A2] * 4), rel=1e-15)


# --- surface Dice and HD95: hand-computed ------------------------------------------------------------------------


def test_voxel_shifted_by_one_slice():
    # Surfels of a voxel: the 8 corner cells. Shifting by one slice (3 mm) keeps 4 of them in place and moves
    # the other 4 by 3 mm, in both directions.
    ref = box_mask((3, 3, 4), slice(1, 2), slice(1, 2), slice(1, 2))
    pred = box_mask((3, 3, 4), slice(1, 2), slice(1, 2), slice(2, 3))
    distances = metrics.surface_distances(pred, ref, ANISO)
    np.testing.assert_array_equal(distances.distances_ref_to_pred, [0, 0, 0, 0, 3, 3, 3, 3])
    np.testing.assert_array_equal(distances.distances_pred_to_ref, [0, 0, 0, 0, 3, 3, 3, 3])
    assert metrics.surface_dice(pred, ref, ANISO, 1.0) == pytest.approx(0.5, rel=1e-15)
    assert metrics.surface_dice(pred, ref, ANISO, 2.999) == pytest.approx(0.5, rel=1e-15)
    assert metrics.surface_dice(pred, ref, ANISO, 3.0) == 1.0  # distance <= tolerance counts
    assert metrics.hausdorff95(pred, ref, ANISO) == 3.0


def test_voxel_shifted_by_two_columns():
    ref = box_mask((5, 3, 3), slice(1, 2), slice(1, 2), slice(1, 2))
    pred = box_mask((5, 3, 3), slice(3, 4), slice(1, 2), slice(1, 2))
    distances = metrics.surface_distances(pred, ref, ANISO)
    np.testing.assert_array_equal(distances.distances_ref_to_pred, [1, 1, 1, 1, 2, 2, 2, 2])
    assert metrics.surface_dice(pred, ref, ANISO, 1.0) == pytest.approx(0.5, rel=1e-15)
    assert metrics.hausdorff95(pred, ref, ANISO) == 2.0


def bars(length):
    """ref: a bar of `length` voxels along axis 0; pred: the same bar one voxel shorter."""
    shape = (length + 2, 3, 3)
    ref = box_mask(shape, slice(1, 1 + length), slice(1, 2), slice(1, 2))
    pred = box_mask(shape, slice(1, length), slice(1, 2), slice(1, 2))
    return pred, ref


def test_hd95_is_weighted_by_surfel_area():
    # ref surfels: 4 x (length + 1) cells; those in the last layer (4 A1) are 1 mm from pred, all others 0.
    # length 10: 10/11 = 91 % of the surfels but (A1 + 9 A2) / (2 A1 + 9 A2) = 96.4 % of the area lie at 0 mm,
    # so the area-weighted 95th percentile is 0 where a count-based one would say 1 mm.
    pred, ref = bars(10)
    assert (A1 + 9 * A2) / (2 * A1 + 9 * A2) > 0.95 > 10 / 11
    assert metrics.hausdorff95(pred, ref, ANISO) == 0.0
    # length 5: (A1 + 4 A2) / (2 A1 + 4 A2) = 92.7 % < 95 %
    pred, ref = bars(5)
    assert (A1 + 4 * A2) / (2 * A1 + 4 * A2) < 0.95
    assert metrics.hausdorff95(pred, ref, ANISO) == 1.0


def test_surface_dice_of_shortened_bar():
    pred, ref = bars(10)
    # ref: 8 A1 + 36 A2 in total, of which 4 A1 (last layer) are 1 mm away;
    # pred: 8 A1 + 32 A2, every surfel on a ref surfel.
    expected = (4 * A1 + 36 * A2 + 8 * A1 + 32 * A2) / (8 * A1 + 36 * A2 + 8 * A1 + 32 * A2)
    assert metrics.surface_dice(pred, ref, ANISO, 0.5) == pytest.approx(expected, rel=1e-14)
    assert metrics.surface_dice(pred, ref, ANISO, 1.0) == 1.0


def test_identical_masks():
    rng = np.random.default_rng(1)
    mask = random_blob(rng, (12, 10, 8))
    assert metrics.surface_dice(mask, mask, ANISO, 0.0) == 1.0
    assert metrics.hausdorff95(mask, mask, ANISO) == 0.0


def test_surface_empty_conventions():
    empty, voxel = np.zeros((3, 3, 3), bool), box_mask((3, 3, 3), slice(1, 2), slice(1, 2), slice(1, 2))
    assert metrics.surface_dice(empty, empty, ANISO, 1.0) == 1.0
    assert metrics.surface_dice(empty, voxel, ANISO, 1.0) == 0.0
    assert metrics.surface_dice(voxel, empty, ANISO, 1.0) == 0.0
    assert metrics.hausdorff95(empty, empty, ANISO) == 0.0
    assert math.isnan(metrics.hausdorff95(empty, voxel, ANISO))
    assert math.isnan(metrics.hausdorff95(voxel, empty, ANISO))
    # surface-distance's own convention underneath: distances to an empty surface are inf
    distances = metrics.surface_distances(voxel, empty, ANISO)
    assert np.isinf(distances.distances_pred_to_ref).all() and len(distances.areas_ref) == 0


def test_bad_spacing_and_tolerance_are_refused():
    voxel = box_mask((3, 3, 3), slice(1, 2), slice(1, 2), slice(1, 2))
    with pytest.raises(ValueError, match="spacing"):
        metrics.surface_dice(voxel, voxel, (1.0, 1.0), 1.0)
    with pytest.raises(ValueError, match="spacing"):
        metrics.hausdorff95(voxel, voxel, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="tolerance"):
        metrics.surface_dice(voxel, voxel, ANISO, -1.0)


# --- cross-checks ------------------------------------------------------------------------------------------------
#
# The reference below is written independently of segflow.metrics, after surface-distance's published algorithm:
# the area table from the triangle normals that surface-distance ships (taken from MONAI's copy, in float64),
# neighbour codes by ndimage.correlate with the encoding kernel on the bounding box padded by one voxel, distances
# by a Euclidean distance transform of the whole box, and the (distance, area) pairs sorted as Python tuples.
# segflow.metrics derives its table and finds nearest surfels differently, so agreement to ~1e-15 is the claim.


@pytest.fixture(scope="module")
def published_normals():
    utils = pytest.importorskip("monai.metrics.utils")
    if not hasattr(utils, "_get_neighbour_code_to_normals_table"):
        pytest.skip("this MONAI version does not carry surface-distance's normals table")
    return utils._get_neighbour_code_to_normals_table().numpy().astype(np.float64)


def published_area_table(normals, spacing):
    s0, s1, s2 = spacing
    table = np.zeros(256)
    for code in range(256):
        for n in normals[code]:
            table[code] += np.linalg.norm([n[0] * s1 * s2, n[1] * s0 * s2, n[2] * s0 * s1])
    return table


def published_length_table(spacing):
    from monai.metrics.utils import create_table_neighbour_code_to_contour_length

    return np.asarray(create_table_neighbour_code_to_contour_length(spacing)[0], dtype=np.float64)


def reference_surface_distances(ref, pred, spacing, table):
    kernel = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]]) if ref.ndim == 3 else np.array([[8, 4], [2, 1]])
    full = len(table) - 1
    lo = np.min(np.argwhere(ref | pred), axis=0)
    hi = np.max(np.argwhere(ref | pred), axis=0)
    window = tuple(slice(a, b + 1) for a, b in zip(lo, hi))
    results = []
    crops = []
    for mask in (ref, pred):
        crop = np.zeros(tuple(hi - lo + 2), np.uint8)
        crop[tuple(slice(0, -1) for _ in lo)] = mask[window]
        codes = ndimage.correlate(crop, kernel, mode="constant", cval=0)
        crops.append((codes, (codes != 0) & (codes != full)))
    (codes_ref, border_ref), (codes_pred, border_pred) = crops
    dist_to_ref = ndimage.distance_transform_edt(~border_ref, sampling=spacing)
    dist_to_pred = ndimage.distance_transform_edt(~border_pred, sampling=spacing)
    for distances, areas in (
        (dist_to_pred[border_ref], table[codes_ref[border_ref]]),
        (dist_to_ref[border_pred], table[codes_pred[border_pred]]),
    ):
        pairs = np.array(sorted(zip(distances, areas)))
        results.append((pairs[:, 0], pairs[:, 1]))
    return results  # [(ref->pred distances, ref areas), (pred->ref distances, pred areas)]


def reference_surface_dice(results, tolerance):
    (d_ref, a_ref), (d_pred, a_pred) = results
    return (a_ref[d_ref <= tolerance].sum() + a_pred[d_pred <= tolerance].sum()) / (a_ref.sum() + a_pred.sum())


def reference_hd95(results):
    worst = 0.0
    for distances, areas in results:  # first distance at which 95 % of the surface area is reached
        cumulative = np.cumsum(areas) / np.sum(areas)
        worst = max(worst, distances[min(np.searchsorted(cumulative, 0.95), len(distances) - 1)])
    return worst


def test_area_table_matches_surface_distance(published_normals):
    rng = np.random.default_rng(2)
    spacings = [(1.0, 1.0, 1.0), ANISO, (0.78125, 0.78125, 5.0)] + [tuple(rng.uniform(0.3, 6, 3)) for _ in range(5)]
    for spacing in spacings:
        ours = metrics._surfel_measure_table(tuple(float(s) for s in spacing))
        np.testing.assert_allclose(ours, published_area_table(published_normals, spacing), rtol=1e-15, atol=0)
    for spacing in [(1.0, 1.0), (0.7, 2.5)]:
        np.testing.assert_allclose(metrics._surfel_measure_table(spacing), published_length_table(spacing), rtol=1e-15)


def test_matches_surface_distance_on_random_shapes_3d(published_normals):
    rng = np.random.default_rng(3)
    for case in range(6):
        shape = tuple(rng.integers(8, 18, 3))
        spacing = (0.78125, 0.78125, 3.0) if case == 0 else tuple(float(s) for s in rng.uniform(0.4, 4, 3))
        ref, pred = random_blob(rng, shape), random_blob(rng, shape)
        expected = reference_surface_distances(ref, pred, spacing, published_area_table(published_normals, spacing))
        ours = metrics.surface_distances(pred, ref, spacing)
        (d_ref, a_ref), (d_pred, a_pred) = expected
        np.testing.assert_allclose(ours.distances_ref_to_pred, d_ref, rtol=1e-15)
        np.testing.assert_allclose(ours.areas_ref, a_ref, rtol=1e-15)
        np.testing.assert_allclose(ours.distances_pred_to_ref, d_pred, rtol=1e-15)
        np.testing.assert_allclose(ours.areas_pred, a_pred, rtol=1e-15)
        for tolerance in metrics.KITS_TOLERANCES_MM.values():
            assert metrics.surface_dice(pred, ref, spacing, tolerance) == pytest.approx(
                reference_surface_dice(expected, tolerance), rel=1e-13
            )
        assert metrics.hausdorff95(pred, ref, spacing) == pytest.approx(reference_hd95(expected), rel=1e-15)


def test_matches_surface_distance_on_random_shapes_2d():
    pytest.importorskip("monai")
    rng = np.random.default_rng(4)
    for _ in range(3):
        shape, spacing = tuple(rng.integers(10, 25, 2)), tuple(float(s) for s in rng.uniform(0.4, 3, 2))
        ref, pred = random_blob(rng, shape, 0.03), random_blob(rng, shape, 0.03)
        expected = reference_surface_distances(ref, pred, spacing, published_length_table(spacing))
        assert metrics.surface_dice(pred, ref, spacing, 1.5) == pytest.approx(
            reference_surface_dice(expected, 1.5), rel=1e-13
        )
        assert metrics.hausdorff95(pred, ref, spacing) == pytest.approx(reference_hd95(expected), rel=1e-15)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecated argument, used internally
def test_surface_dice_matches_monai_subvoxels():
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    rng = np.random.default_rng(5)

    def one_hot(mask):
        return torch.tensor(np.stack([~mask, mask])[None].astype(np.float32))

    for _ in range(3):
        shape, spacing = tuple(rng.integers(10, 18, 3)), tuple(float(s) for s in rng.uniform(0.5, 3, 3))
        ref, pred = random_blob(rng, shape), random_blob(rng, shape)
        theirs = monai_metrics.compute_surface_dice(
            one_hot(pred), one_hot(ref), [1.5], include_background=False, spacing=spacing, use_subvoxels=True
        ).item()
        # MONAI accumulates in float32
        assert metrics.surface_dice(pred, ref, spacing, 1.5) == pytest.approx(theirs, abs=1e-6)


# --- regions and cases -------------------------------------------------------------------------------------------


def kits_like_case(rng, shape=(24, 20, 16)):
    """Label maps with kidney (1), tumour (2) and cyst (3); the prediction is a perturbed copy."""
    ref = np.zeros(shape, np.uint8)
    ref[4:20, 4:16, 3:13] = 1
    ref[5:11, 5:11, 4:9] = 2
    ref[15:18, 12:15, 9:12] = 3
    pred = np.roll(ref, 1, axis=2)
    noise = ndimage.binary_dilation(ref > 0) & (rng.random(shape) < 0.2)
    pred[noise & (pred == 0)] = 1
    pred[6:12, 5:10, 5:9] = 2
    return pred, ref


def test_region_metrics_unites_labels():
    rng = np.random.default_rng(6)
    pred, ref = kits_like_case(rng)
    masses = metrics.region_metrics(pred, ref, (2, 3), ANISO, 1.1)
    pred_mask, ref_mask = np.isin(pred, (2, 3)), np.isin(ref, (2, 3))
    assert {k: masses[k] for k in ("dice", "iou", "precision", "recall", "f1")} == metrics.overlap_metrics(
        pred_mask, ref_mask
    )
    assert masses["sd"] == metrics.surface_dice(pred_mask, ref_mask, ANISO, 1.1)
    assert masses["hd95"] == metrics.hausdorff95(pred_mask, ref_mask, ANISO)


def test_region_metrics_with_empty_region():
    pred = np.zeros((4, 4, 4), np.uint8)
    ref = pred.copy()
    ref[1, 1, 1] = 3
    both_empty = metrics.region_metrics(pred, ref, (2,), ANISO, 1.0)
    assert both_empty == {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "sd": 1.0, "hd95": 0.0}
    one_empty = metrics.region_metrics(pred, ref, (3,), ANISO, 1.0)
    assert math.isnan(one_empty.pop("hd95"))
    assert set(one_empty.values()) == {0.0}


def test_score_case_keys_and_values():
    rng = np.random.default_rng(7)
    pred, ref = kits_like_case(rng)
    scores = metrics.score_case(pred, ref, ANISO, metrics.KITS_REGIONS, KITS_LABELS, metrics.KITS_TOLERANCES_MM)
    names = ["kidney_and_masses", "masses", "tumor", "kidney", "cyst"]  # label "tumor" is region "tumor"
    assert list(scores) == [f"{metric}_{name}" for name in names for metric in metrics.METRIC_NAMES]
    assert all(type(v) is float for v in scores.values())
    tolerance = metrics.KITS_TOLERANCES_MM["kidney_and_masses"]
    assert scores["sd_kidney_and_masses"] == metrics.region_metrics(pred, ref, (1, 2, 3), ANISO, tolerance)["sd"]
    assert scores["dice_kidney"] == metrics.overlap_metrics(pred == 1, ref == 1)["dice"]
    # labels without a tolerance of their own are scored at 1 mm
    assert scores["sd_cyst"] == metrics.surface_dice(pred == 3, ref == 3, ANISO, 1.0)


def test_score_case_label_tolerance_from_the_table():
    # The cyst moves one column (1 mm): inside a 1 mm tolerance, half outside a 0.5 mm one.
    ref = np.zeros((6, 4, 4), np.uint8)
    ref[2, 1:3, 1:3] = 3
    pred = np.roll(ref, 1, axis=0)
    default = metrics.score_case(pred, ref, ANISO, {}, {"cyst": 3}, {})
    tight = metrics.score_case(pred, ref, ANISO, {}, {"cyst": 3}, {"cyst": 0.5})
    assert default["sd_cyst"] == 1.0
    assert tight["sd_cyst"] < 1.0


def test_score_case_refuses_ambiguous_names_and_missing_tolerances():
    pred = ref = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="clashes"):
        metrics.score_case(pred, ref, ANISO, {"tumor": (2, 3)}, {"tumor": 2}, {"tumor": 1.0})
    with pytest.raises(ValueError, match="tolerance for region 'masses'"):
        metrics.score_case(pred, ref, ANISO, {"masses": (2, 3)}, {}, {})
    with pytest.raises(ValueError, match="shape"):
        metrics.score_case(pred, ref[:3], ANISO, {}, {"kidney": 1}, {})


def test_score_case_is_unchanged_by_padding_and_cropping():
    rng = np.random.default_rng(8)
    pred, ref = kits_like_case(rng)
    args = (metrics.KITS_REGIONS, KITS_LABELS, metrics.KITS_TOLERANCES_MM)
    small = metrics.score_case(pred, ref, ANISO, *args)
    pad = ((7, 30), (0, 11), (25, 2))
    large = metrics.score_case(np.pad(pred, pad), np.pad(ref, pad), ANISO, *args)
    assert large == small


def test_score_case_does_not_depend_on_axis_order():
    # SimpleITK arrays are (z, y, x), nibabel's (x, y, z): the same case must score the same either way.
    rng = np.random.default_rng(9)
    pred, ref = kits_like_case(rng)
    spacing = (0.8, 0.7, 2.5)
    args = (metrics.KITS_REGIONS, KITS_LABELS, metrics.KITS_TOLERANCES_MM)
    xyz = metrics.score_case(pred, ref, spacing, *args)
    zyx = metrics.score_case(pred.transpose(2, 1, 0), ref.transpose(2, 1, 0), spacing[::-1], *args)
    assert zyx == pytest.approx(xyz, rel=1e-12)


def test_score_case_of_two_empty_volumes():
    empty = np.zeros((5, 5, 5), np.uint8)
    scores = metrics.score_case(empty, empty, ANISO, metrics.KITS_REGIONS, KITS_LABELS, metrics.KITS_TOLERANCES_MM)
    assert all(v == (0.0 if key.startswith("hd95_") else 1.0) for key, v in scores.items())


def test_score_case_with_background_in_a_region_does_not_crop():
    pred = np.zeros((6, 6, 6), np.uint8)
    ref = pred.copy()
    ref[2:4, 2:4, 2:4] = 1
    scores = metrics.score_case(pred, ref, ANISO, {}, {"background": 0}, {})
    assert scores["dice_background"] == metrics.overlap_metrics(pred == 0, ref == 0)["dice"]


# --- grid check and constants ------------------------------------------------------------------------------------


def test_check_same_grid():
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    metrics.check_same_grid((10, 10, 5), affine, (10, 10, 5), affine + 5e-5, "pred.nii.gz", "ref.nii.gz")
    with pytest.raises(ValueError, match=r"pred\.nii\.gz.*ref\.nii\.gz.*shape: \(10, 10, 5\) vs \(10, 10, 6\)"):
        metrics.check_same_grid((10, 10, 5), affine, (10, 10, 6), affine, "pred.nii.gz", "ref.nii.gz")
    shifted = affine.copy()
    shifted[0, 3] = 0.5
    with pytest.raises(ValueError, match=r"pred\.nii\.gz.*ref\.nii\.gz.*affine.*0\.5") as error:
        metrics.check_same_grid((10, 10, 5), affine, (10, 10, 5), shifted, "pred.nii.gz", "ref.nii.gz")
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="affine"):
        metrics.check_same_grid((10, 10, 5), affine, (10, 10, 5), affine * np.nan, "p", "r")


def test_kits_constants():
    assert metrics.KITS_REGIONS == {"kidney_and_masses": (1, 2, 3), "masses": (2, 3), "tumor": (2,)}
    rounded = {name: round(value, 4) for name, value in metrics.KITS_TOLERANCES_MM.items()}
    assert rounded == {"kidney_and_masses": 1.0331, "masses": 1.1329, "tumor": 1.1498}
