"""Post-processing of predicted KiTS label maps, and its decision on a fixed holdout (nnU-Net style).

Labels: 0 background, 1 kidney, 2 tumour, 3 cyst. Eight steps, each a function from a label map to a new label map
of the same shape and dtype (the input is never modified):

* ``largest_foreground`` (:func:`keep_largest_foreground`): connected components of the foreground (labels > 0,
  the KiTS region kidney_and_masses), full connectivity (26 in 3D). The ``n_components`` largest are kept (two, for
  two kidneys), and any further component at least ``min_fraction`` of the largest one (a kidney that the model
  split in two); the rest become background. A horseshoe kidney is one component and stays whole.
* ``largest_kidneys`` (:func:`keep_largest_kidneys`): the same, with the components ranked by their kidney voxels
  (label 1) instead of their size, and a component without kidney removed: "keep the components connected to the
  largest kidney components". A large blob the model called tumour away from the kidneys has few kidney voxels
  and goes, where ``largest_foreground`` would keep it for its size.
* ``masses_in_kidneys`` (:func:`drop_masses_outside_kidneys`): a mass (tumour or cyst) is kept only if it touches
  kidney. Precisely: a 26-connected component of labels {2, 3} is removed (set to 0) when none of its voxels is
  26-adjacent to a voxel of label 1. Computed as "foreground components that contain no kidney voxel are removed":
  the two are the same, because a path inside a foreground component that leaves a mass component must step onto
  a kidney voxel (any mass voxel adjacent to it would belong to the same mass component).
* ``largest_mass_per_kidney`` (:func:`keep_largest_mass_per_kidney`): inside each foreground component (a kidney
  with its masses), only the largest 26-connected component of labels {2, 3} stays a mass; the voxels of the
  others become kidney (label 1). The region kidney_and_masses is unchanged: the step only moves voxels from
  masses to kidney, against the specks of tumour a 2D model scatters through a kidney (nnU-Net's per-region
  "largest component" step, with kidney instead of background, since KiTS masses lie inside the kidney region).
* ``largest_mass`` (:func:`keep_largest_mass`): the same over the whole volume: one mass component stays, the
  other mass voxels become kidney. It loses a second tumour, in the other kidney or the same one, so it is tried
  after the per-kidney step and kept only where the holdout says so.
* ``large_masses`` (:func:`keep_large_masses`): mass components smaller than ``min_fraction`` of the volume's
  largest mass become kidney; the others stay, however many and wherever they are. A real second tumour of a
  size like the first survives, where ``largest_mass`` drops it; a small false mass in the other kidney goes,
  where ``largest_mass_per_kidney`` keeps it as that kidney's largest. Small real cysts beside a large tumour go
  too, so the holdout decides.
* ``one_label_per_mass`` (:func:`one_label_per_mass`): every voxel of a mass component takes the component's
  majority label, tumour or cyst (tumour on a tie). A 2D network decides each slice on its own, and one trained
  with the Dice over the regions (where tumour and cyst share the masses region) scatters cyst voxels through a
  tumour and back; a lesion is one thing. Only labels 2 and 3 trade places: kidney and the masses region are
  unchanged. A cyst that touches a tumour becomes part of it, so the holdout decides.
* ``one_tumour`` (:func:`one_tumour`): only the volume's largest mass component may be tumour; every other mass
  becomes cyst. In the KiTS23 label maps of the benchmark's 36 trainval cases the largest mass is always a tumour,
  and 26 of the 28 masses of 0.1 ml or more beside it are cysts (2 cases have a second tumour); a 2D network
  finds such cysts but calls much of them tumour. Kidney and the masses region are unchanged (a false
  second mass stays a mass); only the tumour region loses the smaller masses. A real second tumour becomes cyst,
  so the holdout decides.

:func:`decide` chooses which steps to use from predictions and references of a holdout set, as nnU-Net's
``determine_postprocessing`` does on its cross-validation: start with no post-processing, try each candidate in
order on top of the steps already kept, and keep it when

    the mean over regions of the mean Dice rises by more than ``tolerance``, and
    no region's mean Dice falls by more than ``tolerance``

(nnU-Net's rule for its foreground step, with a tolerance of 1e-6 so that rounding noise neither adds nor blocks
a step; a step that changes nothing is not kept). Dice per region follows KiTS: both masks empty gives 1.
With ``prune`` (``train.postprocess_prune``) a second pass goes over the kept steps in order and drops each one
that the others make redundant: no region's mean Dice falls by more than ``tolerance`` without it. The greedy pass
depends on the order of the candidates: ``largest_mass_per_kidney`` kept first and ``large_masses`` on top can
score on the holdout exactly as ``large_masses`` alone, and then the holdout has no evidence for the step that
turns every second lesion of a kidney (a cyst beside its tumour) into kidney. Pruned, the decision keeps the least
post-processing that scores as well.
:func:`decide_with_decodings` makes the same choice between decodings of the holdout (``infer.region_thresholds``),
each scored after the steps :func:`decide` keeps for it.

The module is standalone on purpose (numpy and scipy.ndimage, no other segflow module), so that training,
prediction and selection code can all import it. Its region table repeats ``segflow.metrics.KITS_REGIONS``.
Speed: each step labels only the bounding box of the foreground, once, with ``scipy.ndimage.label``, and reads
component sizes with ``np.bincount``; there is no Python loop over voxels or components.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Union

import numpy as np
from scipy import ndimage

KIDNEY = 1
MASSES = (2, 3)  # tumour, cyst

# KiTS hierarchical evaluation regions: name -> label values (same as segflow.metrics.KITS_REGIONS).
KITS_REGIONS: dict[str, tuple[int, ...]] = {
    "kidney_and_masses": (1, 2, 3),
    "masses": (2, 3),
    "tumor": (2,),
}

# Defaults of keep_largest_foreground: two kidneys; a third piece is kept if it is at least a tenth of the
# largest (a real kidney fragment is large, a false-positive blob on the spleen or liver usually is not).
DEFAULT_N_COMPONENTS = 2
DEFAULT_MIN_FRACTION = 0.1

# Default of keep_large_masses: in the real KiTS23 label maps of the benchmark's 36 trainval cases, the second
# tumours are half the largest mass; below a quarter of it lie only cysts and tumour fragments of 0.1 ml or less.
DEFAULT_MASS_FRACTION = 0.25

# Smallest change of a mean Dice that counts as a change in decide().
DEFAULT_TOLERANCE = 1e-6

ScoreFn = Callable[[np.ndarray, np.ndarray], float]
# A case of decide(): an array, or a callable that loads it (so a holdout of full-size volumes need not sit in
# memory all at once).
ArrayOrLoader = Union[np.ndarray, Callable[[], np.ndarray]]


# --- connected components ----------------------------------------------------------------------------------------


def _foreground_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of a boolean mask (None if empty); labelling only this box keeps a 512x512x600 volume cheap."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=other))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Full-connectivity components (26 in 3D, 8 in 2D): ids 1..n in raster order of first voxel, 0 outside."""
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    ids, n = ndimage.label(mask, structure=structure)
    return ids, int(n)


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"expected a 2D or 3D label map, got shape {labels.shape}")
    return labels


# --- steps -------------------------------------------------------------------------------------------------------


def _foreground_components(labels: np.ndarray):
    """(a copy of labels, the foreground's box, component ids inside it, their count); count 0 when empty.

    Every step labels the foreground (kidney_and_masses) once, inside its bounding box, and edits the copy there.
    """
    return _boxed_components(labels, labels > 0)


def _boxed_components(labels: np.ndarray, mask: np.ndarray):
    """(a copy of labels, the mask's box, the mask's component ids inside it, their count); count 0 when empty."""
    out = labels.copy()
    box = _foreground_box(mask)
    if box is None:
        return out, None, None, 0
    ids, n = _components(mask[box])
    return out, box, ids, n


def keep_largest_foreground(
    labels: np.ndarray,
    n_components: int = DEFAULT_N_COMPONENTS,
    min_fraction: float = DEFAULT_MIN_FRACTION,
) -> np.ndarray:
    """Keep the ``n_components`` largest foreground components, and any other at least ``min_fraction`` of the
    largest; set the rest to 0. Foreground is labels > 0 (all of kidney, tumour and cyst), so a tumour that sticks
    to its kidney goes with it.

    Sizes are voxel counts: on one regular grid they rank components exactly as volumes in mm^3 do, and the
    fraction is the same, so no spacing is needed. Equal sizes are broken by component id (raster order), which
    makes the result deterministic. ``min_fraction`` > 1 disables the fraction rule (then exactly the
    ``n_components`` largest stay).
    """
    return _keep_ranked_components(labels, n_components, min_fraction, by_kidney=False)


def keep_largest_kidneys(
    labels: np.ndarray,
    n_components: int = DEFAULT_N_COMPONENTS,
    min_fraction: float = DEFAULT_MIN_FRACTION,
) -> np.ndarray:
    """As :func:`keep_largest_foreground`, but the foreground components are ranked by their kidney (label 1)
    voxels, not by all their voxels: the components holding the ``n_components`` largest kidneys stay with their
    masses, and any other whose kidney is at least ``min_fraction`` of the largest kidney. A component without
    kidney never stays.

    A tumour grows out of a kidney, so a large blob the model called tumour (on bowel, on a cyst of the liver) ranks
    by the few kidney voxels at its rim, not by its size.
    """
    return _keep_ranked_components(labels, n_components, min_fraction, by_kidney=True)


def _keep_ranked_components(labels: np.ndarray, n_components: int, min_fraction: float, by_kidney: bool):
    """Keep the foreground components with the ``n_components`` largest measures (ties in id order) and any other
    measuring at least ``min_fraction`` of the largest, except those measuring 0. The measure is a component's
    voxel count, or with ``by_kidney`` its count of kidney voxels."""
    labels = _check_labels(labels)
    if n_components < 1 or min_fraction < 0:
        raise ValueError(f"need n_components >= 1 and min_fraction >= 0, got {n_components}, {min_fraction}")
    out, box, ids, n = _foreground_components(labels)
    if n == 0:
        return out
    counted = ids[out[box] == KIDNEY] if by_kidney else ids.ravel()
    measure = np.bincount(counted, minlength=n + 1)
    measure[0] = 0  # background is not a component
    order = np.argsort(-measure[1:], kind="stable") + 1  # the stable sort leaves ties in id order
    keep = np.zeros(n + 1, dtype=bool)
    keep[order[:n_components]] = True
    keep |= measure >= min_fraction * measure.max()
    keep &= measure > 0
    keep[0] = True  # never touch background
    region = out[box]  # a view: writing it writes out
    region[~keep[ids]] = 0
    return out


def drop_masses_outside_kidneys(labels: np.ndarray) -> np.ndarray:
    """Remove (set to 0) every 26-connected tumour/cyst component that touches no kidney (label 1) voxel.

    A mass component touches kidney exactly when the foreground component around it contains a kidney voxel (see
    the module docstring), so one labelling of the foreground decides it. Kidney voxels are never changed.
    """
    out, box, ids, n = _foreground_components(_check_labels(labels))
    if n == 0:
        return out
    region = out[box]
    # Components holding at least one kidney voxel; the others consist of masses only and go.
    with_kidney = np.zeros(n + 1, dtype=bool)
    with_kidney[np.unique(ids[region == KIDNEY])] = True
    with_kidney[0] = True
    region[~with_kidney[ids]] = 0
    return out


def keep_largest_mass_per_kidney(labels: np.ndarray) -> np.ndarray:
    """In each foreground component, keep its largest mass component; other mass voxels become kidney (label 1).

    Mass components are 26-connected components of labels {2, 3} (a tumour touching a cyst is one mass); each lies
    in exactly one foreground component. Equal sizes are broken by component id (raster order).
    """
    return _keep_largest_masses(_check_labels(labels), per_kidney=True)


def keep_largest_mass(labels: np.ndarray) -> np.ndarray:
    """Keep the largest mass component of the whole volume; every other mass voxel becomes kidney (label 1)."""
    return _keep_largest_masses(_check_labels(labels), per_kidney=False)


def _masses_in_foreground(labels: np.ndarray):
    """(a copy of labels, and None or: the foreground's box, and inside it a view of the copy, the foreground
    component ids and their count, the mass mask, the mass component ids and their count). The mass steps that need
    to know which kidney a mass lies in label both."""
    out, box, foreground_ids, n = _foreground_components(labels)
    if n == 0:
        return out, None
    region = out[box]  # a view: writing it writes out
    is_mass = np.isin(region, MASSES)
    return out, (box, region, foreground_ids, n, is_mass, *_components(is_mass))


def _keep_largest_masses(labels: np.ndarray, per_kidney: bool) -> np.ndarray:
    out, parts = _masses_in_foreground(labels)
    if parts is None or parts[-1] <= 1:
        return out
    _, region, foreground_ids, _, is_mass, mass_ids, n_masses = parts
    sizes = np.bincount(mass_ids.ravel(), minlength=n_masses + 1)[1:]
    # The foreground component each mass lies in (all its voxels share one); a single group without per_kidney.
    owner = np.zeros(n_masses + 1, dtype=np.int64)
    if per_kidney:
        owner[mass_ids[is_mass]] = foreground_ids[is_mass]
    owner = owner[1:]
    # Sorted by owner, then size descending, then id: the first mass of each owner's run is the one it keeps.
    order = np.lexsort((np.arange(n_masses), -sizes, owner))
    first = np.ones(n_masses, dtype=bool)
    first[1:] = owner[order][1:] != owner[order][:-1]
    keep = np.zeros(n_masses + 1, dtype=bool)
    keep[order[first] + 1] = True
    region[is_mass & ~keep[mass_ids]] = KIDNEY
    return out


def keep_large_masses(labels: np.ndarray, min_fraction: float = DEFAULT_MASS_FRACTION) -> np.ndarray:
    """Keep every mass component with at least ``min_fraction`` of the largest one's voxels; the voxels of the
    smaller ones become kidney (label 1), wherever they lie.

    Between ``largest_mass_per_kidney``, which keeps a speck in the other kidney as that kidney's largest mass, and
    ``largest_mass``, which also drops a real second tumour of any size.
    """
    if not 0 <= min_fraction <= 1:
        raise ValueError(f"large_masses: min_fraction must be in [0, 1], got {min_fraction}")
    labels = _check_labels(labels)
    out, box, mass_ids, n_masses = _boxed_components(labels, np.isin(labels, MASSES))
    if n_masses == 0:
        return out
    region, is_mass = out[box], mass_ids > 0  # region is a view: writing it writes out
    sizes = np.bincount(mass_ids.ravel(), minlength=n_masses + 1)
    sizes[0] = 0
    small = sizes < min_fraction * sizes.max()
    region[is_mass & small[mass_ids]] = KIDNEY
    return out


def one_label_per_mass(labels: np.ndarray) -> np.ndarray:
    """Give every 26-connected tumour/cyst component its majority label (tumour on a tie); nothing else changes."""
    labels = _check_labels(labels)
    out, box, mass_ids, n_masses = _boxed_components(labels, np.isin(labels, MASSES))
    if n_masses == 0:
        return out
    region, is_mass = out[box], mass_ids > 0  # region is a view: writing it writes out
    tumour_voxels = np.bincount(mass_ids[region == MASSES[0]], minlength=n_masses + 1)
    cyst_voxels = np.bincount(mass_ids[region == MASSES[1]], minlength=n_masses + 1)
    majority = np.where(tumour_voxels >= cyst_voxels, MASSES[0], MASSES[1]).astype(out.dtype)
    region[is_mass] = majority[mass_ids[is_mass]]
    return out


def one_tumour(labels: np.ndarray) -> np.ndarray:
    """Turn every tumour voxel outside the largest 26-connected tumour/cyst component into cyst (label 3).

    Equal sizes are broken by component id (raster order); nothing else changes.
    """
    labels = _check_labels(labels)
    out, box, mass_ids, n_masses = _boxed_components(labels, np.isin(labels, MASSES))
    if n_masses <= 1:
        return out
    region = out[box]  # a view: writing it writes out
    sizes = np.bincount(mass_ids.ravel(), minlength=n_masses + 1)
    sizes[0] = 0
    region[(region == MASSES[0]) & (mass_ids != int(np.argmax(sizes)))] = MASSES[1]
    return out


def mass_classes(n_classes: int) -> list[int]:
    """The mass classes a network of ``n_classes`` outputs has: tumour and cyst (KiTS19 has no cyst)."""
    return [c for c in MASSES if c < n_classes]


def seeded_masses(labels: np.ndarray, masses_probability: np.ndarray, min_peak: float) -> np.ndarray:
    """Keep a mass (26-connected tumour/cyst component) only where the network was sure somewhere inside it: its
    highest masses probability reaches ``min_peak``. An unsure mass becomes what surrounds it: kidney (label 1)
    where its foreground component holds kidney, background where it stands alone (made kidney, a far false blob
    would outrank a kidney in ``largest_kidneys``). Hysteresis thresholding: the decoding grows masses where the
    probability passes one half, a seed of ``min_peak`` makes one real.

    ``masses_probability`` is the probability of the masses region on the same grid as ``labels``, in [0, 1] or,
    as uint8, in 255ths (segflow.restore.restore_region_probability). Not one of ``STEPS``: it reads probabilities,
    so it runs where they are (the decoding, segflow.predict and select_model), before the steps.
    """
    labels = _check_labels(labels)
    probability = np.asarray(masses_probability)
    if probability.shape != labels.shape:
        raise ValueError(f"masses probability shape {probability.shape} != labels shape {labels.shape}")
    if not 0 <= min_peak <= 1:
        raise ValueError(f"min_peak must be in [0, 1], got {min_peak}")
    if probability.dtype == np.uint8:  # 255ths: compare in integers, as the probability was rounded to them
        min_peak = int(np.ceil(min_peak * 255 - 1e-9))
    out, parts = _masses_in_foreground(labels)
    if parts is None:
        return out
    box, region, foreground_ids, n, is_mass, mass_ids, n_masses = parts
    seeded = np.zeros(n_masses + 1, dtype=bool)
    seeded[np.unique(mass_ids[is_mass & (probability[box] >= min_peak)])] = True
    seeded[0] = False
    unsure = is_mass & ~seeded[mass_ids]
    with_kidney = np.zeros(n + 1, dtype=bool)
    with_kidney[np.unique(foreground_ids[region == KIDNEY])] = True
    region[unsure] = np.where(with_kidney[foreground_ids[unsure]], KIDNEY, 0)
    return out


STEPS: dict[str, Callable[..., np.ndarray]] = {
    "largest_foreground": keep_largest_foreground,
    "largest_kidneys": keep_largest_kidneys,
    "masses_in_kidneys": drop_masses_outside_kidneys,
    "largest_mass_per_kidney": keep_largest_mass_per_kidney,
    "largest_mass": keep_largest_mass,
    "large_masses": keep_large_masses,
    "one_label_per_mass": one_label_per_mass,
    "one_tumour": one_tumour,
}

# The KiTS label values each step reads or writes, by score.labels name: the configuration check refuses a step
# whose labels the run's label set lacks. largest_foreground sees only the foreground, so it fits any label set.
KITS_LABELS = {"kidney": KIDNEY, "tumor": MASSES[0]}
LABELS_OF_STEP: dict[str, dict[str, int]] = {
    **{name: KITS_LABELS for name in STEPS},
    "largest_foreground": {},
    "one_tumour": {**KITS_LABELS, "cyst": MASSES[1]},  # writes cysts
}


def apply(
    labels: np.ndarray,
    steps: Iterable[str],
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> np.ndarray:
    """Apply the named steps (keys of ``STEPS``) in order; returns a new array of the input's shape and dtype.

    ``options`` maps a step name to keyword arguments of its function, e.g.
    ``{"largest_foreground": {"n_components": 2, "min_fraction": 0.1}}``. No steps: a copy of the input.
    """
    options = options or {}
    steps = list(steps)
    _check_steps(steps, options)
    out = _check_labels(labels)
    if not steps:
        return out.copy()
    for name in steps:  # each step returns a new array, so the input stays untouched
        out = STEPS[name](out, **options.get(name, {}))
    return out


def _check_steps(steps: Sequence[str], options: Mapping[str, Any]) -> None:
    # Fail before any work: a typo in a config must not cost a pass over the holdout.
    unknown = [s for s in list(steps) + list(options) if s not in STEPS]
    if unknown:
        raise ValueError(f"unknown post-processing step(s) {unknown}; known: {sorted(STEPS)}")


# --- decision on a holdout ---------------------------------------------------------------------------------------


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks, KiTS convention: 1 if both are empty (then 0 if only one is)."""
    n_pred = int(np.count_nonzero(pred))
    n_ref = int(np.count_nonzero(ref))
    if n_pred + n_ref == 0:
        return 1.0
    return 2 * int(np.count_nonzero(pred & ref)) / (n_pred + n_ref)


def region_scores(
    pred: np.ndarray,
    ref: np.ndarray,
    region_sets: Mapping[str, Iterable[int]] = KITS_REGIONS,
    score_fn: ScoreFn = dice,
) -> dict[str, float]:
    """Score of each region (a union of labels) of one case: ``score_fn(pred in region, ref in region)``.

    The masks are cropped to the bounding box of both maps' foreground first (a full-size volume is mostly
    background), so ``score_fn`` must not depend on voxels outside every mask: Dice and surface Dice do not; a
    score counting true negatives would. Regions must not contain label 0. Both maps empty: the masks are 1x..x1.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    if any(0 in tuple(values) for values in region_sets.values()):
        raise ValueError("a region must not contain the background label 0")
    box = _foreground_box((pred > 0) | (ref > 0))
    if box is None:
        box = tuple(slice(0, 1) for _ in pred.shape)  # all background: one voxel scores the same as all
    pred, ref = pred[box], ref[box]
    return {
        name: float(score_fn(np.isin(pred, list(values)), np.isin(ref, list(values))))
        for name, values in region_sets.items()
    }


def _load(item: ArrayOrLoader) -> np.ndarray:
    return item() if callable(item) else np.asarray(item)


def _case_scores(
    predictions: Sequence[ArrayOrLoader],
    references: Sequence[ArrayOrLoader],
    steps: Sequence[str],
    region_sets: Mapping[str, Iterable[int]],
    score_fn: ScoreFn,
    options: Mapping[str, Mapping[str, Any]],
) -> dict[str, list[float]]:
    """Each region's score for every case in order, after applying ``steps`` to every prediction."""
    scores: dict[str, list[float]] = {name: [] for name in region_sets}
    for pred, ref in zip(predictions, references):
        case = region_scores(apply(_load(pred), steps, options), _load(ref), region_sets, score_fn)
        for name, value in case.items():
            scores[name].append(value)
    return scores


def _means(scores: Mapping[str, list[float]]) -> dict[str, float]:
    """Mean over the cases of each region's score (summed in case order, as the decision always has been)."""
    return {name: sum(values) / len(values) for name, values in scores.items()}


def _improves(without: Mapping[str, float], with_: Mapping[str, float], tolerance: float) -> bool:
    """nnU-Net's rule for its foreground step: the mean over regions rises, and no region falls."""
    gain = np.mean([with_[r] for r in without]) - np.mean([without[r] for r in without])
    no_loss = all(with_[r] >= without[r] - tolerance for r in without)
    return bool(gain > tolerance and no_loss)


def decide(
    predictions: Sequence[ArrayOrLoader],
    references: Sequence[ArrayOrLoader],
    candidates: Sequence[str] = tuple(STEPS),
    region_sets: Mapping[str, Iterable[int]] = KITS_REGIONS,
    score_fn: ScoreFn = dice,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    prune: bool = False,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Choose post-processing steps on a holdout set: greedy, in the order of ``candidates``.

    Each candidate is scored on top of the steps kept so far, and kept when the mean over regions of the mean
    (over cases) score rises by more than ``tolerance`` and no region's mean score falls by more than
    ``tolerance`` (see the module docstring). ``predictions`` and ``references`` are label maps of the same cases
    in the same order, arrays or zero-argument callables that load them. ``score_fn(pred_mask, ref_mask)`` scores
    one region of one case (default :func:`dice`; any higher-is-better score works).

    With ``prune``, the kept steps are then tried without, in order, and each one dropped when no region's mean
    score falls by more than ``tolerance`` without it (see the module docstring).

    Returns ``(steps, table)``: the kept step names in order, and one row per candidate and region, with keys
    ``step``, ``pass`` ("add"; "prune" for the rows of the second pass), ``applied_before`` (the steps kept before
    it, "+"-joined, "" for none; in the prune pass, the other steps still kept), ``region``, ``n_cases``,
    ``without``, ``with`` (the scores without and with the step), ``delta``, ``kept`` (plain str/int/float/bool,
    ready for JSON or a TSV) and ``case_deltas``: the change of each case's score, in the order of
    ``predictions`` (which cases a step helps and which it costs).
    """
    chosen, table, _ = _decide(
        predictions, references, candidates, region_sets, score_fn, options or {}, tolerance, prune
    )
    return chosen, table


def _decide(predictions, references, candidates, region_sets, score_fn, options, tolerance, prune=False):
    """decide(), plus each region's per-case scores after the kept steps (what decide_with_decodings compares)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("decide() needs at least one case")
    if not region_sets:
        raise ValueError("decide() needs at least one region")
    _check_steps(candidates, options)
    chosen: list[str] = []
    current = _case_scores(predictions, references, chosen, region_sets, score_fn, options)
    table: list[dict[str, Any]] = []
    for step in candidates:
        trial = _case_scores(predictions, references, chosen + [step], region_sets, score_fn, options)
        kept = _improves(_means(current), _means(trial), tolerance)
        table += _table_rows(step, chosen, current, trial, kept, "add")
        if kept:
            chosen.append(step)
            current = trial
    if prune:
        chosen, current, rows = _prune(
            predictions, references, chosen, current, region_sets, score_fn, options, tolerance
        )
        table += rows
    return chosen, table, current


def _prune(predictions, references, chosen, current, region_sets, score_fn, options, tolerance):
    """The second pass of decide(prune=True): each kept step, in order, is dropped when the steps left score as
    well without it (no region's mean falls by more than ``tolerance``). Returns (steps, scores, table rows)."""
    table: list[dict[str, Any]] = []
    index = 0
    while index < len(chosen):  # by position: a step listed twice among the candidates is tried once per place
        others = chosen[:index] + chosen[index + 1 :]
        trial = _case_scores(predictions, references, others, region_sets, score_fn, options)
        with_step, without = _means(current), _means(trial)
        needed = any(without[r] < with_step[r] - tolerance for r in with_step)
        table += _table_rows(chosen[index], others, trial, current, needed, "prune")
        if needed:
            index += 1
        else:
            chosen, current = others, trial
    return chosen, current, table


def decide_with_decodings(
    decodings: Sequence[tuple[Any, Sequence[ArrayOrLoader]]],
    references: Sequence[ArrayOrLoader],
    candidates: Sequence[str] = tuple(STEPS),
    region_sets: Mapping[str, Iterable[int]] = KITS_REGIONS,
    tolerance: float = DEFAULT_TOLERANCE,
    prune: bool = False,
) -> tuple[int, list[str], list[dict[str, Any]], list[dict[str, Any]]]:
    """Choose one of several decodings of the same holdout cases, each with the post-processing :func:`decide`
    keeps for it (``infer.region_thresholds``).

    ``decodings`` are ``(name, predictions)`` pairs, the first the default. Each decoding is scored after its own
    kept steps (pruned with ``prune``), and a later one replaces the one chosen so far by :func:`decide`'s rule:
    the mean over regions rises by more than ``tolerance`` and no region falls by more. Returns ``(index, steps,
    table, decodings table)``: the chosen decoding, its steps and decide()'s table for it, and one row per decoding
    and region (``decoding``, ``steps``, ``region``, ``dice``, ``chosen``).
    """
    if not decodings:
        raise ValueError("decide_with_decodings() needs at least one decoding")
    results = []
    for _, predictions in decodings:
        steps, table, scores = _decide(predictions, references, candidates, region_sets, dice, {}, tolerance, prune)
        results.append((steps, table, _means(scores)))
    chosen = 0
    for index in range(1, len(results)):
        if _improves(results[chosen][2], results[index][2], tolerance):
            chosen = index
    rows = [
        {"decoding": name, "steps": "+".join(steps), "region": region, "dice": float(value), "chosen": i == chosen}
        for i, ((name, _), (steps, _, means)) in enumerate(zip(decodings, results))
        for region, value in means.items()
    ]
    return chosen, results[chosen][0], results[chosen][1], rows


def _table_rows(
    step: str,
    before: Sequence[str],
    without: Mapping[str, list[float]],
    with_: Mapping[str, list[float]],
    kept: bool,
    pass_: str,
) -> list[dict[str, Any]]:
    mean_without, mean_with = _means(without), _means(with_)
    return [
        {
            "step": step,
            "pass": pass_,
            "applied_before": "+".join(before),
            "region": region,
            "n_cases": len(without[region]),
            "without": float(mean_without[region]),
            "with": float(mean_with[region]),
            "delta": float(mean_with[region] - mean_without[region]),
            "kept": kept,
            "case_deltas": [float(b - a) for a, b in zip(without[region], with_[region])],
        }
        for region in without
    ]
