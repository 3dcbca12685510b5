"""Tests of segflow.postprocess on hand-made label maps: the steps, apply() and the holdout decision.

Label maps are (z, y, x) blocks of a few thousand voxels: kidneys are boxes, masses small boxes on or off them.
"""

import json

import numpy as np
import pytest
from scipy import ndimage

from segflow import postprocess as pp

SHAPE = (24, 40, 60)


def box(labels, value, z, y, x):
    """Paint the box [z0, z1) x [y0, y1) x [x0, x1) with value; returns labels for chaining."""
    labels[z[0] : z[1], y[0] : y[1], x[0] : x[1]] = value
    return labels


def random_labels(rng, density: float) -> np.ndarray:
    """Blobs of random labels 1-3 (kidney, tumour, cyst) scattered over SHAPE, for checks against plain loops."""
    seeds = ndimage.binary_dilation(rng.random(SHAPE) < density, iterations=2)
    return (seeds * rng.integers(1, 4, SHAPE)).astype(np.uint8)


def two_kidneys(dtype=np.uint8):
    labels = np.zeros(SHAPE, dtype=dtype)
    box(labels, 1, (4, 20), (10, 30), (5, 20))  # left kidney, 16*20*15 = 4800 voxels
    box(labels, 1, (4, 20), (10, 30), (40, 54))  # right kidney, 16*20*14 = 4480 voxels
    return labels


# --- keep_largest_foreground -------------------------------------------------------------------------------------


def test_two_kidneys_and_a_spurious_blob():
    expected = two_kidneys()
    labels = box(expected.copy(), 1, (1, 3), (1, 3), (28, 30))  # 8 voxels, far from both kidneys
    out = pp.keep_largest_foreground(labels)
    np.testing.assert_array_equal(out, expected)


def test_masses_go_with_their_kidney_and_spurious_masses_go():
    expected = two_kidneys()
    box(expected, 2, (8, 12), (14, 18), (18, 22))  # tumour bulging out of the left kidney
    box(expected, 3, (10, 12), (20, 22), (38, 41))  # cyst on the right kidney's edge
    labels = box(expected.copy(), 2, (20, 23), (34, 38), (28, 31))  # isolated tumour-labelled blob
    out = pp.keep_largest_foreground(labels)
    np.testing.assert_array_equal(out, expected)


def test_single_kidney():
    kidney = box(np.zeros(SHAPE, np.uint8), 1, (4, 20), (10, 30), (5, 20))
    np.testing.assert_array_equal(pp.keep_largest_foreground(kidney), kidney)
    with_blob = box(kidney.copy(), 1, (1, 3), (1, 3), (40, 42))
    # With one kidney the blob is the second-largest component: n_components=2 keeps it, 1 drops it.
    np.testing.assert_array_equal(pp.keep_largest_foreground(with_blob), with_blob)
    np.testing.assert_array_equal(pp.keep_largest_foreground(with_blob, n_components=1), kidney)


def test_horseshoe_kidney_is_one_component_and_stays_whole():
    horseshoe = two_kidneys()
    box(horseshoe, 1, (16, 20), (24, 30), (20, 40))  # isthmus joining the lower poles
    labels = box(horseshoe.copy(), 1, (1, 3), (1, 3), (28, 30))
    np.testing.assert_array_equal(pp.keep_largest_foreground(labels, n_components=1), horseshoe)


def test_min_fraction_keeps_a_large_third_fragment():
    labels = two_kidneys()
    box(labels, 1, (21, 24), (31, 40), (2, 22))  # a third piece split off the left kidney: 540 voxels
    box(labels, 1, (1, 3), (1, 3), (28, 30))  # 8 voxels
    out = pp.keep_largest_foreground(labels, min_fraction=0.1)  # 540 >= 0.1 * 4800, 8 is not
    expected = labels.copy()
    expected[1:3, 1:3, 28:30] = 0
    np.testing.assert_array_equal(out, expected)
    # Without the fraction rule the fragment is the third component and goes.
    out = pp.keep_largest_foreground(labels, min_fraction=2.0)
    expected[21:24, 31:40, 2:22] = 0
    np.testing.assert_array_equal(out, expected)


def test_diagonal_contact_is_connection():
    labels = two_kidneys()
    labels[3, 9, 4] = 1  # touches the left kidney's corner (4, 10, 5) only diagonally
    out = pp.keep_largest_foreground(labels, min_fraction=2.0)
    np.testing.assert_array_equal(out, labels)


def test_equal_sizes_break_ties_in_raster_order():
    labels = np.zeros(SHAPE, np.uint8)
    for x in (5, 25, 45):
        box(labels, 1, (5, 10), (5, 10), (x, x + 5))
    out = pp.keep_largest_foreground(labels, min_fraction=2.0)
    assert out[5:10, 5:10, 5:10].all() and out[5:10, 5:10, 25:30].all()
    assert not out[5:10, 5:10, 45:50].any()


# --- keep_largest_kidneys ---------------------------------------------------------------------------------------


def test_largest_kidneys_drops_a_large_tumour_blob_that_largest_foreground_keeps():
    expected = two_kidneys()
    box(expected, 2, (8, 16), (14, 26), (8, 18))  # a tumour filling most of the left kidney's middle
    labels = box(expected.copy(), 2, (1, 7), (32, 40), (26, 40))  # a tumour-labelled blob of 672, far away ...
    labels[1, 32, 26] = 1  # ... with one kidney voxel at its rim
    np.testing.assert_array_equal(pp.keep_largest_foreground(labels), labels)  # 672 >= 0.1 * 4800: kept
    np.testing.assert_array_equal(pp.keep_largest_kidneys(labels), expected)


def test_largest_kidneys_never_keeps_a_component_without_kidney_and_keeps_a_large_fragment():
    kidney = box(np.zeros(SHAPE, np.uint8), 1, (4, 20), (10, 30), (5, 20))
    with_mass_blob = box(kidney.copy(), 3, (1, 3), (1, 3), (40, 42))
    np.testing.assert_array_equal(pp.keep_largest_foreground(with_mass_blob), with_mass_blob)
    np.testing.assert_array_equal(pp.keep_largest_kidneys(with_mass_blob), kidney)
    labels = two_kidneys()
    box(labels, 1, (21, 24), (31, 40), (2, 22))  # a third kidney piece of 540 voxels: >= 0.1 * 4800 kidney voxels
    np.testing.assert_array_equal(pp.keep_largest_kidneys(labels), labels)
    np.testing.assert_array_equal(pp.keep_largest_kidneys(np.zeros(SHAPE, np.uint8)), np.zeros(SHAPE, np.uint8))
    with pytest.raises(ValueError, match="n_components"):
        pp.keep_largest_kidneys(labels, n_components=0)


@pytest.mark.parametrize(
    "step, measure",
    [
        (pp.keep_largest_foreground, lambda component, labels: component.sum()),
        (pp.keep_largest_kidneys, lambda component, labels: (component & (labels == 1)).sum()),
    ],
    ids=["by size", "by kidney voxels"],
)
def test_ranked_steps_agree_with_a_loop_over_components(step, measure):
    rng = np.random.default_rng(0)
    for trial in range(5):
        labels = random_labels(rng, 0.002)
        ids, n = ndimage.label(labels > 0, structure=np.ones((3, 3, 3)))
        measures = [(int(measure(ids == i, labels)), i) for i in range(1, n + 1)]
        largest = max(m for m, _ in measures)
        ranked = sorted(measures, key=lambda t: (-t[0], t[1]))
        keep = {i for m, i in ranked[:2] if m > 0} | {i for m, i in measures if m > 0 and m >= 0.3 * largest}
        expected = np.where(np.isin(ids, list(keep)), labels, 0)
        np.testing.assert_array_equal(step(labels, 2, 0.3), expected, err_msg=str(trial))


# --- drop_masses_outside_kidneys ---------------------------------------------------------------------------------


def test_mass_touching_kidney_kept_isolated_mass_removed():
    expected = two_kidneys()
    box(expected, 2, (8, 12), (14, 18), (18, 23))  # tumour overlapping the left kidney's edge
    box(expected, 2, (8, 12), (14, 18), (20, 24))  # grows out of it
    labels = box(expected.copy(), 2, (8, 12), (14, 18), (28, 32))  # tumour in the gap, touching nothing
    out = pp.drop_masses_outside_kidneys(labels)
    np.testing.assert_array_equal(out, expected)


def test_cysts():
    expected = two_kidneys()
    box(expected, 3, (6, 9), (30, 33), (44, 48))  # cyst on the right kidney's surface (face contact at y=30)
    labels = box(expected.copy(), 3, (1, 3), (34, 38), (2, 5))  # cyst alone
    np.testing.assert_array_equal(pp.drop_masses_outside_kidneys(labels), expected)


def test_mass_chain_and_diagonal_contact():
    expected = two_kidneys()
    # tumour touching the left kidney's corner (4, 10, 5) diagonally, and a cyst touching only that tumour
    box(expected, 2, (1, 4), (7, 10), (2, 5))
    box(expected, 3, (1, 4), (4, 7), (2, 5))
    # a tumour and a cyst touching each other but no kidney
    labels = box(expected.copy(), 2, (1, 4), (34, 38), (28, 31))
    box(labels, 3, (1, 4), (34, 38), (31, 34))
    np.testing.assert_array_equal(pp.drop_masses_outside_kidneys(labels), expected)


def test_kidney_alone_and_masses_alone():
    kidneys = two_kidneys()
    np.testing.assert_array_equal(pp.drop_masses_outside_kidneys(kidneys), kidneys)
    masses_only = np.where(kidneys > 0, 2, 0).astype(np.uint8)
    assert not pp.drop_masses_outside_kidneys(masses_only).any()


def test_drop_masses_agrees_with_dilated_kidney_definition():
    """The one-labelling implementation equals the definition: a mass component survives iff it overlaps the
    kidney dilated by one voxel in 26-connectivity."""
    rng = np.random.default_rng(1)
    full = np.ones((3, 3, 3), bool)
    for trial in range(5):
        labels = random_labels(rng, 0.003)
        near_kidney = ndimage.binary_dilation(labels == 1, structure=full)
        ids, n = ndimage.label(np.isin(labels, (2, 3)), structure=full)
        touching = np.unique(ids[near_kidney & (ids > 0)])
        expected = np.where((ids > 0) & ~np.isin(ids, touching), 0, labels)
        np.testing.assert_array_equal(pp.drop_masses_outside_kidneys(labels), expected, err_msg=str(trial))


# --- keep_largest_mass_per_kidney and keep_largest_mass -----------------------------------------------------------


def kidneys_with_specks():
    """Left kidney: a tumour of 36 voxels and a speck of 1; right kidney: a cyst of 8 touching a tumour of 4 (one
    mass of 12) and a speck of 2."""
    labels = two_kidneys()
    box(labels, 2, (8, 12), (14, 17), (8, 11))  # 36
    box(labels, 2, (16, 17), (25, 26), (15, 16))  # 1
    box(labels, 3, (8, 10), (14, 16), (44, 46))  # 8
    box(labels, 2, (8, 9), (14, 16), (46, 48))  # 4, face contact with the cyst
    box(labels, 2, (16, 17), (25, 26), (50, 52))  # 2
    return labels


def test_largest_mass_per_kidney_keeps_one_mass_in_each_kidney():
    labels = kidneys_with_specks()
    out = pp.keep_largest_mass_per_kidney(labels)
    assert out[16, 25, 15] == 1 and (out[16, 25, 50:52] == 1).all()  # the specks became kidney
    assert (
        (out[8:12, 14:17, 8:11] == 2).all()
        and (out[8:10, 14:16, 44:46] == 3).all()
        and (out[8, 14:16, 46:48] == 2).all()
    )
    np.testing.assert_array_equal(out > 0, labels > 0)  # kidney_and_masses untouched


def test_largest_mass_keeps_one_mass_in_the_volume():
    labels = kidneys_with_specks()
    out = pp.keep_largest_mass(labels)
    assert (out[8:12, 14:17, 8:11] == 2).all()
    assert not np.isin(out[:, :, 30:], (2, 3)).any()  # the right kidney's masses became kidney
    assert np.count_nonzero(np.isin(out, (2, 3))) == 36
    np.testing.assert_array_equal(out > 0, labels > 0)


def test_largest_mass_steps_leave_one_mass_alone_and_break_ties_by_raster_order():
    one = box(two_kidneys(), 2, (8, 12), (14, 17), (8, 11))
    for step in (pp.keep_largest_mass_per_kidney, pp.keep_largest_mass):
        np.testing.assert_array_equal(step(one), one)
        np.testing.assert_array_equal(step(two_kidneys()), two_kidneys())
    tied = box(one.copy(), 2, (8, 12), (20, 23), (8, 11))  # a second tumour of 36 in the same kidney, later in y
    out = pp.keep_largest_mass_per_kidney(tied)
    assert (out[8:12, 14:17, 8:11] == 2).all() and (out[8:12, 20:23, 8:11] == 1).all()


def test_largest_mass_steps_agree_with_a_loop_over_components():
    rng = np.random.default_rng(3)
    full = np.ones((3, 3, 3), bool)
    for trial in range(5):
        labels = random_labels(rng, 0.003)
        foreground, _ = ndimage.label(labels > 0, structure=full)
        masses, n = ndimage.label(np.isin(labels, (2, 3)), structure=full)
        comps = [(int((masses == i).sum()), i, int(foreground[masses == i][0])) for i in range(1, n + 1)]
        for per_kidney, step in ((True, pp.keep_largest_mass_per_kidney), (False, pp.keep_largest_mass)):
            groups = {}
            for size, i, owner in comps:
                groups.setdefault(owner if per_kidney else 0, []).append((-size, i))
            keep = [min(group)[1] for group in groups.values()]
            expected = np.where((masses > 0) & ~np.isin(masses, keep), 1, labels)
            np.testing.assert_array_equal(step(labels), expected, err_msg=f"{trial} {per_kidney}")


# --- keep_large_masses -------------------------------------------------------------------------------------------


def test_large_masses_keeps_a_second_tumour_of_like_size_and_drops_a_small_one_in_the_other_kidney():
    labels = box(two_kidneys(), 2, (8, 12), (14, 17), (8, 11))  # left tumour: 36 voxels
    box(labels, 2, (8, 11), (14, 17), (44, 47))  # right tumour: 27, three quarters of the largest
    box(labels, 2, (16, 17), (25, 27), (15, 16))  # left speck: 2
    out = pp.keep_large_masses(labels, min_fraction=0.5)
    assert (out[8:12, 14:17, 8:11] == 2).all() and (out[8:11, 14:17, 44:47] == 2).all()
    assert (out[16, 25:27, 15] == 1).all()  # the speck became kidney
    np.testing.assert_array_equal(out > 0, labels > 0)  # kidney_and_masses untouched
    # largest_mass_per_kidney keeps the right tumour too, largest_mass drops it; at 0.8 it is too small
    assert (pp.keep_largest_mass(labels)[8:11, 14:17, 44:47] == 1).all()
    assert (pp.keep_large_masses(labels, min_fraction=0.8)[8:11, 14:17, 44:47] == 1).all()


def test_large_masses_counts_a_tumour_and_its_cyst_as_one_mass_and_leaves_masses_outside_kidneys_as_kidney():
    labels = kidneys_with_specks()  # masses of 36, 1, 12 (cyst 8 + tumour 4) and 2
    out = pp.keep_large_masses(labels, min_fraction=0.3)  # keeps 36 and 12 (a third), not 1 and 2
    assert (out[8:10, 14:16, 44:46] == 3).all() and (out[8, 14:16, 46:48] == 2).all()
    assert out[16, 25, 15] == 1 and (out[16, 25, 50:52] == 1).all()
    alone = box(np.zeros(SHAPE, np.uint8), 2, (1, 3), (1, 3), (1, 3))  # a mass with no kidney is still the largest
    np.testing.assert_array_equal(pp.keep_large_masses(alone), alone)
    np.testing.assert_array_equal(pp.keep_large_masses(two_kidneys()), two_kidneys())  # no mass: unchanged
    np.testing.assert_array_equal(pp.keep_large_masses(labels, min_fraction=0), labels)
    with pytest.raises(ValueError, match="min_fraction"):
        pp.keep_large_masses(labels, min_fraction=1.5)


def test_large_masses_agrees_with_a_loop_over_components():
    rng = np.random.default_rng(4)
    for trial in range(5):
        labels = random_labels(rng, 0.003)
        masses, n = ndimage.label(np.isin(labels, (2, 3)), structure=np.ones((3, 3, 3)))
        sizes = {i: int((masses == i).sum()) for i in range(1, n + 1)}
        small = [i for i, size in sizes.items() if size < 0.25 * max(sizes.values())]
        expected = np.where(np.isin(masses, small), 1, labels)
        np.testing.assert_array_equal(pp.keep_large_masses(labels, 0.25), expected, err_msg=str(trial))


# --- one_label_per_mass ------------------------------------------------------------------------------------------


def test_one_label_per_mass_gives_each_lesion_its_majority_label():
    labels = two_kidneys()
    box(labels, 2, (8, 12), (14, 17), (8, 11))  # a tumour of 36 ...
    box(labels, 3, (9, 10), (15, 16), (9, 11))  # ... with 2 cyst voxels inside it
    box(labels, 3, (8, 10), (14, 16), (44, 46))  # right kidney: a cyst of 8 ...
    box(labels, 2, (8, 9), (14, 16), (46, 48))  # ... touching a tumour of 4: one mass, mostly cyst
    box(labels, 3, (16, 17), (25, 26), (15, 16))  # a lone cyst voxel, its own mass
    out = pp.one_label_per_mass(labels)
    assert (out[8:12, 14:17, 8:11] == 2).all()
    assert (out[8:10, 14:16, 44:46] == 3).all() and (out[8, 14:16, 46:48] == 3).all()
    assert out[16, 25, 15] == 3
    np.testing.assert_array_equal(out == 1, labels == 1)  # kidney untouched
    np.testing.assert_array_equal(np.isin(out, (2, 3)), np.isin(labels, (2, 3)))  # masses region untouched


def test_one_label_per_mass_calls_a_tie_tumour_and_leaves_labels_without_masses_alone():
    labels = box(box(two_kidneys(), 2, (8, 9), (14, 16), (8, 10)), 3, (9, 10), (14, 16), (8, 10))  # 4 + 4
    assert (pp.one_label_per_mass(labels)[8:10, 14:16, 8:10] == 2).all()
    np.testing.assert_array_equal(pp.one_label_per_mass(two_kidneys()), two_kidneys())
    labels_2d = np.array([[0, 1, 2, 3], [0, 1, 3, 3]], np.uint8)
    np.testing.assert_array_equal(pp.one_label_per_mass(labels_2d), [[0, 1, 3, 3], [0, 1, 3, 3]])


# --- one_tumour --------------------------------------------------------------------------------------------------


def test_one_tumour_keeps_the_largest_mass_and_calls_the_others_cysts():
    labels = two_kidneys()
    box(labels, 2, (8, 12), (14, 17), (8, 11))  # left kidney: a tumour of 36 with ...
    box(labels, 3, (9, 10), (15, 16), (9, 11))  # ... 2 cyst voxels inside, which it keeps
    box(labels, 2, (8, 10), (14, 16), (44, 46))  # right kidney: a tumour of 8 touching ...
    box(labels, 3, (8, 9), (14, 16), (46, 48))  # ... a cyst of 4: one smaller mass
    box(labels, 2, (16, 17), (25, 26), (15, 16))  # a lone tumour voxel in the left kidney
    out = pp.one_tumour(labels)
    np.testing.assert_array_equal(out[8:12, 14:17, 8:11], labels[8:12, 14:17, 8:11])
    assert (out[8:10, 14:16, 44:46] == 3).all() and (out[8, 14:16, 46:48] == 3).all() and out[16, 25, 15] == 3
    np.testing.assert_array_equal(out == 1, labels == 1)  # kidney untouched
    np.testing.assert_array_equal(np.isin(out, (2, 3)), np.isin(labels, (2, 3)))  # masses region untouched
    assert out.dtype == labels.dtype and labels[16, 25, 15] == 2  # a new array; the input is unchanged


def test_one_tumour_matches_a_loop_over_components_and_leaves_one_mass_alone():
    rng = np.random.default_rng(7)
    for trial in range(5):
        labels = random_labels(rng, 0.002)
        masses, n = ndimage.label(np.isin(labels, (2, 3)), structure=np.ones((3, 3, 3)))
        sizes = np.bincount(masses.ravel(), minlength=n + 1)[1:]
        largest = 1 + int(np.argmax(sizes))  # the first of equal sizes, in raster order, as the step breaks ties
        expected = np.where((labels == 2) & (masses != largest), 3, labels)
        np.testing.assert_array_equal(pp.one_tumour(labels), expected, err_msg=str(trial))
    single = box(two_kidneys(), 2, (8, 12), (14, 17), (8, 11))
    np.testing.assert_array_equal(pp.one_tumour(single), single)
    np.testing.assert_array_equal(pp.one_tumour(two_kidneys()), two_kidneys())


# --- seeded_masses -----------------------------------------------------------------------------------------------


def test_seeded_masses_keeps_a_small_sure_lesion_and_drops_a_large_unsure_one():
    labels = two_kidneys()
    box(labels, 2, (8, 10), (14, 16), (8, 10))  # a small tumour of 8 voxels the network is sure of ...
    box(labels, 3, (8, 9), (14, 16), (10, 11))  # ... with 2 cyst voxels touching it: one mass
    box(labels, 2, (10, 16), (20, 26), (10, 16))  # a large tumour of 216 in the same kidney, never sure
    box(labels, 3, (10, 12), (14, 16), (44, 46))  # a cyst in the other kidney, sure at one voxel only
    box(labels, 2, (1, 3), (1, 4), (28, 31))  # an unsure tumour blob away from both kidneys
    probability = np.where(np.isin(labels, (2, 3)), 0.6, 0.1).astype(np.float32)
    probability[9, 15, 9] = 0.95
    probability[11, 15, 45] = 0.9
    out = pp.seeded_masses(labels, probability, min_peak=0.9)
    expected = labels.copy()
    expected[10:16, 20:26, 10:16] = 1  # the unsure mass inside a kidney becomes kidney ...
    expected[1:3, 1:4, 28:31] = 0  # ... and the one standing alone background
    np.testing.assert_array_equal(out, expected)
    # The same on 255ths (restore_region_probability's uint8): 0.9 is 229.5, so 230 passes and 229 does not.
    in_255ths = np.round(probability * 255).astype(np.uint8)
    np.testing.assert_array_equal(pp.seeded_masses(labels, in_255ths, 0.9), expected)
    in_255ths[11, 15, 45] = 229
    assert (pp.seeded_masses(labels, in_255ths, 0.9)[10:12, 14:16, 44:46] == 1).all()
    # At 0 every mass stays; labels is never modified.
    np.testing.assert_array_equal(pp.seeded_masses(labels, probability, 0.0), labels)
    assert labels[12, 22, 12] == 2


def test_seeded_masses_refuses_a_probability_of_another_shape_or_a_peak_outside_0_1():
    labels = two_kidneys()
    with pytest.raises(ValueError, match="shape"):
        pp.seeded_masses(labels, np.zeros((2, 2, 2), np.float32), 0.5)
    with pytest.raises(ValueError, match="min_peak"):
        pp.seeded_masses(labels, np.zeros(labels.shape, np.float32), 1.5)


# --- apply -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [[], ["largest_foreground"], ["masses_in_kidneys"], list(pp.STEPS)])
def test_empty_input_stays_empty(steps):
    labels = np.zeros(SHAPE, np.uint8)
    out = pp.apply(labels, steps)
    assert out.dtype == np.uint8 and out.shape == SHAPE and not out.any()


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.int64, np.float32, np.float64])
def test_dtype_preserved_and_input_untouched(dtype):
    labels = box(two_kidneys(dtype), 2, (1, 3), (1, 3), (28, 30))
    before = labels.copy()
    out = pp.apply(labels, ["largest_foreground", "masses_in_kidneys"])
    assert out.dtype == dtype and out is not labels
    np.testing.assert_array_equal(labels, before)
    np.testing.assert_array_equal(out, two_kidneys(dtype))


def test_apply_order_options_and_2d():
    labels = two_kidneys()
    box(labels, 2, (1, 3), (1, 4), (28, 31))  # isolated mass, 18 voxels
    box(labels, 1, (20, 23), (34, 38), (28, 30))  # kidney blob, 24 voxels
    # masses first removes the mass; largest_foreground (k=2) then removes the blob
    np.testing.assert_array_equal(pp.apply(labels, ["masses_in_kidneys", "largest_foreground"]), two_kidneys())
    # k=3 keeps the blob as third component
    out = pp.apply(labels, ["masses_in_kidneys", "largest_foreground"], {"largest_foreground": {"n_components": 3}})
    assert out[21, 35, 29] == 1 and out[2, 2, 29] == 0
    flat = labels[10]
    np.testing.assert_array_equal(pp.apply(flat, ["largest_foreground"]), two_kidneys()[10])


def test_unknown_step_and_bad_arguments():
    with pytest.raises(ValueError, match="unknown post-processing step"):
        pp.apply(two_kidneys(), ["largest_kidney"])
    with pytest.raises(ValueError, match="unknown post-processing step"):
        pp.apply(two_kidneys(), [], {"typo": {}})
    with pytest.raises(ValueError):
        pp.keep_largest_foreground(two_kidneys(), n_components=0)
    with pytest.raises(ValueError):
        pp.apply(np.zeros(5, np.uint8), [])


def test_deterministic():
    rng = np.random.default_rng(2)
    labels = random_labels(rng, 0.003)
    first = pp.apply(labels, list(pp.STEPS))
    for _ in range(3):
        np.testing.assert_array_equal(pp.apply(labels.copy(), list(pp.STEPS)), first)


# --- dice and decide ---------------------------------------------------------------------------------------------


def test_dice_kits_convention():
    empty = np.zeros((3, 3), bool)
    one = empty.copy()
    one[1, 1] = True
    assert pp.dice(empty, empty) == 1.0
    assert pp.dice(one, empty) == 0.0 and pp.dice(empty, one) == 0.0
    two = one.copy()
    two[1, 2] = True
    assert pp.dice(one, two) == 2 * 1 / 3


def test_region_scores_crop_does_not_change_dice():
    ref = two_kidneys()
    box(ref, 2, (8, 12), (14, 18), (18, 22))
    pred = ref.copy()
    pred[8:10] = 0
    got = pp.region_scores(pred, ref)
    for name, values in pp.KITS_REGIONS.items():
        assert got[name] == pp.dice(np.isin(pred, values), np.isin(ref, values))
    assert pp.region_scores(np.zeros(SHAPE), np.zeros(SHAPE)) == dict.fromkeys(pp.KITS_REGIONS, 1.0)


def holdout():
    """Three cases. Predictions carry a spurious kidney blob (largest_foreground helps kidney_and_masses) and a
    real exophytic tumour predicted without its kidney contact (masses_in_kidneys would drop it and hurt)."""
    predictions, references = [], []
    for shift in range(3):
        ref = two_kidneys()
        box(ref, 2, (8, 12), (14, 18), (20 + shift, 24 + shift))  # tumour on the left kidney
        pred = ref.copy()
        pred[8:12, 14:18, 20:22] = 0  # the contact voxels predicted as background: tumour now isolated
        box(pred, 1, (1, 3), (1, 3), (28, 30))  # spurious blob
        predictions.append(pred)
        references.append(ref)
    return predictions, references


def test_decide_keeps_a_step_that_helps_and_rejects_one_that_hurts():
    predictions, references = holdout()
    # The isolated tumour (32 to 64 voxels) is the third-largest component; min_fraction 0.005 (24 voxels) keeps
    # it, so that only the 8-voxel blob goes.
    options = {"largest_foreground": {"min_fraction": 0.005}}
    steps, table = pp.decide(predictions, references, ["largest_foreground", "masses_in_kidneys"], options=options)
    assert steps == ["largest_foreground"]
    rows = {(r["step"], r["region"]): r for r in table}
    assert len(table) == 2 * len(pp.KITS_REGIONS)
    assert rows["largest_foreground", "kidney_and_masses"]["delta"] > 0
    assert rows["largest_foreground", "masses"]["delta"] == 0 and rows["largest_foreground", "tumor"]["delta"] == 0
    assert rows["masses_in_kidneys", "masses"]["delta"] < 0 and not rows["masses_in_kidneys", "masses"]["kept"]
    assert rows["masses_in_kidneys", "masses"]["applied_before"] == "largest_foreground"
    assert rows["largest_foreground", "tumor"]["applied_before"] == ""
    # the "without" of the second step is the "with" of the first: it is scored on top of the kept step
    for region in pp.KITS_REGIONS:
        assert rows["masses_in_kidneys", region]["without"] == rows["largest_foreground", region]["with"]
    json.dumps(table)  # plain types
    assert {type(v) for r in table for k, v in r.items() if k != "case_deltas"} <= {str, int, float, bool}
    # Per case: the mean delta is the mean of the cases' deltas, one per case in the order given
    for row in table:
        assert len(row["case_deltas"]) == row["n_cases"] == len(predictions)
        assert row["delta"] == pytest.approx(sum(row["case_deltas"]) / row["n_cases"], abs=1e-12)
    assert all(d < 0 for d in rows["masses_in_kidneys", "masses"]["case_deltas"])


def test_decide_keeps_masses_step_when_it_helps():
    predictions, references = [], []
    for _ in range(2):
        ref = two_kidneys()
        pred = box(ref.copy(), 3, (1, 3), (34, 38), (28, 31))  # spurious isolated cyst
        predictions.append(pred)
        references.append(ref)
    steps, table = pp.decide(predictions, references, ["masses_in_kidneys"])
    assert steps == ["masses_in_kidneys"]
    rows = {r["region"]: r for r in table}
    assert rows["masses"]["without"] == 0.0 and rows["masses"]["with"] == 1.0  # both empty after removal: 1


def test_decide_keeps_the_per_kidney_mass_step_and_not_the_global_one_with_a_tumour_in_each_kidney():
    """Specks of tumour in a kidney go with the per-kidney step; the global step would then also turn the second
    kidney's real tumour into kidney, so it is rejected."""
    ref = box(two_kidneys(), 2, (8, 12), (14, 17), (8, 11))
    box(ref, 2, (8, 11), (14, 17), (44, 47))
    pred = box(ref.copy(), 2, (16, 17), (25, 26), (15, 16))  # a speck in the left kidney
    steps, _ = pp.decide([pred], [ref], ["largest_mass_per_kidney", "largest_mass"])
    assert steps == ["largest_mass_per_kidney"]


def test_decide_rejects_a_step_that_changes_nothing_and_one_that_trades_regions():
    references = [two_kidneys()]
    steps, table = pp.decide([two_kidneys()], references)
    assert steps == [] and all(r["delta"] == 0 and not r["kept"] for r in table)
    # Removing a true isolated mass together with a spurious one lowers masses and tumor: rejected.
    ref = two_kidneys()
    box(ref, 2, (1, 3), (34, 38), (28, 31))  # a real isolated mass in the reference
    pred = ref.copy()
    box(pred, 2, (20, 24), (0, 8), (25, 35))  # plus a spurious large isolated mass
    # masses_in_kidneys removes both: masses/tumor fall from 2*24/(344+24) to 0 (the reference still has one)
    steps, _ = pp.decide([pred], [ref], ["masses_in_kidneys"])
    assert steps == []


def test_decide_with_decodings_keeps_the_decoding_that_finds_the_lesion_with_its_own_post_processing():
    """Two decodings of one holdout case: the default misses half the tumour and leaves a far speck; the second
    (a lower masses threshold, say) finds the whole tumour but adds a speck of its own. Each is scored after the
    steps decide() keeps for it, and the second wins."""
    ref = box(two_kidneys(), 2, (8, 14), (14, 20), (8, 14))
    default = box(ref.copy(), 1, (8, 11), (14, 20), (8, 14))  # half the tumour called kidney
    lower = box(ref.copy(), 2, (18, 19), (26, 27), (44, 45))  # the whole tumour, and a speck in the other kidney
    decodings = [("masses 0.5", [default]), ("masses 0.3", [lower])]
    index, steps, table, rows = pp.decide_with_decodings(decodings, [ref], ["largest_mass"])
    assert index == 1 and steps == ["largest_mass"]  # the speck goes with the largest-mass step
    assert {r["step"] for r in table} == {"largest_mass"}
    scores = {(r["decoding"], r["region"]): r for r in rows}
    assert scores["masses 0.3", "tumor"]["dice"] == 1.0 and scores["masses 0.3", "tumor"]["chosen"]
    assert scores["masses 0.5", "tumor"]["dice"] == pytest.approx(2 * 108 / (108 + 216))
    assert scores["masses 0.5", "masses"]["steps"] == ""  # nothing to remove in the default decoding
    json.dumps(rows)
    # A decoding that trades one region for another does not replace the default, nor does an equal one.
    worse_kidneys = box(lower.copy(), 0, (4, 20), (10, 30), (40, 54))  # finds the tumour, loses the right kidney
    index, _, _, _ = pp.decide_with_decodings([("a", [default]), ("b", [worse_kidneys])], [ref], [])
    assert index == 0
    assert pp.decide_with_decodings([("a", [default]), ("b", [default.copy()])], [ref], [])[0] == 0


def test_decide_strict_no_loss_rule():
    """A step whose mean over regions rises is still rejected when one region falls (nnU-Net's rule)."""
    without = {"a": 0.5, "b": 0.5, "c": 0.5}
    assert pp._improves(without, {"a": 0.9, "b": 0.5, "c": 0.5}, 1e-6)
    assert not pp._improves(without, {"a": 0.9, "b": 0.49, "c": 0.5}, 1e-6)
    assert not pp._improves(without, {"a": 0.5 + 1e-7, "b": 0.5, "c": 0.5}, 1e-6)  # within tolerance: a tie
    assert pp._improves(without, {"a": 0.9, "b": 0.5 - 1e-7, "c": 0.5}, 1e-6)  # rounding noise is no loss


def test_decide_with_loaders_score_fn_and_determinism():
    predictions, references = holdout()
    calls = []

    def loader(array):
        def load():
            calls.append(1)
            return array

        return load

    def fp_free(pred, ref):  # 1 when the prediction has no voxel outside the reference
        return float(not (pred & ~ref).any())

    options = {"largest_foreground": {"min_fraction": 0.005}}
    lazy = pp.decide([loader(p) for p in predictions], [loader(r) for r in references], options=options)
    eager = pp.decide(predictions, references, options=options)
    assert lazy == eager and calls
    steps, table = pp.decide(predictions, references, ["largest_foreground"], score_fn=fp_free, options=options)
    assert steps == ["largest_foreground"]
    assert {r["region"]: r["with"] for r in table}["kidney_and_masses"] == 1.0


def test_decide_argument_checks():
    with pytest.raises(ValueError):
        pp.decide([two_kidneys()], [], ["largest_foreground"])
    with pytest.raises(ValueError):
        pp.decide([], [], ["largest_foreground"])
    with pytest.raises(ValueError, match="unknown"):
        pp.decide([two_kidneys()], [two_kidneys()], ["nope"])
    with pytest.raises(ValueError):
        pp.decide([two_kidneys()], [two_kidneys()[:5]], ["largest_foreground"])


def specks_holdout():
    """One case: a tumour in the left kidney, a one-voxel speck of tumour beside it in the same kidney, and a small
    false mass (8 voxels) in the right kidney. largest_mass_per_kidney removes the speck, large_masses both."""
    ref = box(two_kidneys(), 2, (8, 12), (14, 18), (8, 12))  # 64 voxels
    pred = box(ref.copy(), 2, (16, 17), (25, 26), (16, 17))
    box(pred, 2, (8, 10), (14, 16), (44, 46))
    return [pred], [ref]


def test_decide_prune_drops_a_step_that_a_later_one_makes_redundant():
    predictions, references = specks_holdout()
    candidates = ["largest_mass_per_kidney", "large_masses"]
    greedy, _ = pp.decide(predictions, references, candidates)
    assert greedy == candidates  # each helps where it is tried
    steps, table = pp.decide(predictions, references, candidates, prune=True)
    assert steps == ["large_masses"]
    pruned = {(r["step"], r["region"]): r for r in table if r["pass"] == "prune"}
    assert {r["pass"] for r in table} == {"add", "prune"}
    row = pruned["largest_mass_per_kidney", "masses"]
    assert not row["kept"] and row["delta"] == 0 and row["applied_before"] == "large_masses"
    row = pruned["large_masses", "masses"]  # tried without once the other step was dropped: needed
    assert row["kept"] and row["delta"] > 0 and row["applied_before"] == ""
    # Where it matters: a cyst beside its tumour in one kidney survives the pruned steps only
    case = box(box(two_kidneys(), 2, (8, 12), (14, 18), (8, 12)), 3, (14, 17), (20, 23), (14, 17))  # 27 voxels
    assert (pp.apply(case, greedy) == 3).sum() == 0
    assert np.array_equal(pp.apply(case, steps), case)


def test_decide_prune_keeps_what_each_step_adds_and_changes_nothing_without_redundancy():
    predictions, references = holdout()
    options = {"largest_foreground": {"min_fraction": 0.005}}
    plain = pp.decide(predictions, references, options=options)
    pruned = pp.decide(predictions, references, options=options, prune=True)
    assert pruned[0] == plain[0] == ["largest_foreground"]
    assert pruned[1][: len(plain[1])] == plain[1]  # the greedy pass is unchanged; the prune rows follow it
    assert [r["kept"] for r in pruned[1][len(plain[1]) :]] == [True] * len(pp.KITS_REGIONS)


def test_decide_with_decodings_prunes_each_decoding():
    predictions, references = specks_holdout()
    candidates = ["largest_mass_per_kidney", "large_masses"]
    _, steps, _, rows = pp.decide_with_decodings([("a", predictions)], references, candidates, prune=True)
    assert steps == ["large_masses"] and {r["steps"] for r in rows} == {"large_masses"}
    _, steps, _, _ = pp.decide_with_decodings([("a", predictions)], references, candidates)
    assert steps == candidates
