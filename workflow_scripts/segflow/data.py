"""2D slice datasets over preprocessed cases (NPY or PNG), with MONAI augmentations and a seeded sampler."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np
import torch
from monai.data import get_track_meta, set_track_meta
from monai.transforms import Randomizable

from segflow.cases import load_case


def context_indices(z: int, n_slices: int, context: int) -> np.ndarray:
    """Slice indices of the 2.5D input for slice ``z``: ``context`` (odd) slices centred on it, the edge slice
    repeated beyond the ends of the volume (nnU-Net and the KiTS 2.5D systems replicate the border too)."""
    half = context // 2
    return np.clip(np.arange(z - half, z + half + 1), 0, n_slices - 1)


def context_stack(image_zhw: np.ndarray, start: int, stop: int, context: int) -> np.ndarray:
    """(stop - start, context, H, W) float32 network inputs for slices start..stop-1 of a volume."""
    n = image_zhw.shape[0]
    half = context // 2
    # One contiguous read of the slab with its border, then views: cheap on memory-mapped volumes.
    lo, hi = max(0, start - half), min(n, stop + half)
    slab = np.asarray(image_zhw[lo:hi], dtype=np.float32)
    index = np.stack([context_indices(z, n, context) for z in range(start, stop)]) - lo
    return slab[index]


class SliceDataset(torch.utils.data.Dataset):
    """Every slice of the given cases as ``{"image": (k, H, W) float32, "label": (1, H, W) int64, ...}``, with
    k = ``context`` slices centred on the labelled one (2.5D; k = 1 is plain 2D).

    NPY cases are memory-mapped, so a dataset over hundreds of full-size cases costs little memory.
    """

    def __init__(self, case_dirs: list[str | Path], transform=None, context: int = 1):
        if context < 1 or context % 2 == 0:
            raise ValueError(f"train.context_slices must be an odd number >= 1, got {context}")
        self.cases = [load_case(d) for d in case_dirs]
        self.case_ids = [Path(d).name for d in case_dirs]
        self.index = [(c, z) for c, (image, _) in enumerate(self.cases) for z in range(image.shape[0])]
        self.transform = transform
        self.context = context
        self._foreground = None

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict:
        case, z = self.index[item]
        image, label = self.cases[case]
        sample = {
            "image": torch.from_numpy(context_stack(image, z, z + 1, self.context)[0]),
            "label": torch.from_numpy(np.array(label[z], dtype=np.int64))[None],
        }
        if self.transform is not None:
            with untracked_meta():
                sample = self.transform(sample)
            if isinstance(sample, list):  # a crop-by-label transform returns a list of num_samples=1 crops
                sample = sample[0]
            sample["image"] = _plain(sample["image"]).float()
            sample["label"] = _plain(sample["label"]).round().long()
        sample["case"] = case
        sample["slice"] = z
        return sample

    def untransformed(self, item: int) -> dict:
        """The slice without augmentation (for scoring slices, e.g. hard-slice oversampling)."""
        transform, self.transform = self.transform, None
        try:
            return self[item]
        finally:
            self.transform = transform

    def foreground_mask(self) -> np.ndarray:
        """Per item: does the slice contain any foreground label (computed once: it reads every label volume)."""
        return self.class_presence().any(axis=1)

    def item_cases(self) -> np.ndarray:
        """The case (its index in ``cases``) of every item."""
        return np.array([case for case, _ in self.index], dtype=int)

    def class_presence(self) -> np.ndarray:
        """(items, labels 1..max) bool: which foreground labels each slice shows (one read of every label volume)."""
        if self._foreground is None:
            per_case = [_labels_per_slice(np.asarray(label)) for _, label in self.cases]
            width = max([p.shape[1] for p in per_case], default=0)
            padded = [np.pad(p, ((0, 0), (0, width - p.shape[1]))) for p in per_case]
            self._foreground = np.concatenate(padded) if padded else np.zeros((0, 0), dtype=bool)
        return self._foreground


def slice_shape(dataset, item: int) -> tuple[int, ...] | None:
    """(H, W) of item ``item`` of a SliceDataset or a Subset of one, without reading the slice.

    None for any other dataset: the 3D path's validation patches all have the patch size.
    """
    if isinstance(dataset, torch.utils.data.Subset):
        return slice_shape(dataset.dataset, dataset.indices[item])
    if not isinstance(dataset, SliceDataset):
        return None
    case, _ = dataset.index[item]
    return tuple(dataset.cases[case][0].shape[1:])


def same_shape_batches(dataset, batch_size: int) -> list[list[int]]:
    """The items in order, in batches of at most ``batch_size`` that never mix slice shapes.

    With ``preprocess.size: null`` every case keeps its own grid, and a batch must be one tensor. With one size
    for all slices these are the batches of an unshuffled DataLoader.
    """
    batches, shape = [], None
    for item in range(len(dataset)):
        item_shape = slice_shape(dataset, item)
        if not batches or item_shape != shape or len(batches[-1]) == batch_size:
            batches.append([])
        batches[-1].append(item)
        shape = item_shape
    return batches


def _labels_per_slice(label_zhw: np.ndarray) -> np.ndarray:
    """(Z, max label) bool: label c + 1 occurs in slice z."""
    top = int(label_zhw.max()) if label_zhw.size else 0
    flat = label_zhw.reshape(label_zhw.shape[0], -1)
    return (
        np.stack([(flat == c).any(axis=1) for c in range(1, top + 1)], axis=1)
        if top
        else np.zeros((len(flat), 0), bool)
    )


def class_balanced_weights(presence: np.ndarray, cases: np.ndarray | None = None) -> np.ndarray:
    """Sampling weight per slice so that every foreground label is drawn about equally often.

    A slice weighs the sum, over the labels it shows, of 1 / (number of slices showing that label). Tumours and
    cysts fill far fewer slices than kidneys; unweighted, a network sees a tumour slice a few times per epoch and
    learns to call everything kidney. nnU-Net's patch sampler balances classes the same way. Slices without
    labels weigh 1 (they are drawn uniformly within their own group).

    With ``cases`` (the case of each slice), a label's share is split equally among the cases that show it, and
    each case's part equally among its slices: 1 / (cases showing the label x that case's slices showing it). Per
    slice, a tumour that fills 60 slices would otherwise be drawn 30 times as often as one that fills 2, and the
    small lesions, the ones a network misses, would be the ones it rarely sees; nnU-Net's sampler picks the case
    first. Slices without labels are then drawn equally often from every case, too.
    """
    cases = np.zeros(len(presence), dtype=int) if cases is None else np.asarray(cases)
    weights = np.zeros(len(presence))
    for shown in presence.T:
        weights[shown] += 1.0 / _case_shares(cases[shown])
    unlabelled = ~presence.any(axis=1)
    weights[unlabelled] = unlabelled.sum() / _case_shares(cases[unlabelled])  # 1 each when there is one case
    return weights


def region_presence(presence: np.ndarray, regions: dict) -> np.ndarray:
    """(items, columns) bool: which of ``regions`` ({name: label values}, score.regions) each slice shows, a
    region where any of its labels is, for ``class_balanced_weights`` over regions instead of labels
    (``train.class_balance: regions``). A label in no region keeps a column of its own after the regions', so that
    its slices still count as labelled.

    Over the KiTS regions (kidney+masses, masses, tumour) a tumour slice counts for all three and a cyst slice
    for two: the tumour is drawn as often as with labels, and the cysts, a few slices that labels give a third of
    the draws, as masses.
    """
    width = presence.shape[1]
    covered, columns = set(), []
    for labels in regions.values():
        indices = sorted({int(v) - 1 for v in labels if 1 <= int(v) <= width})
        covered.update(indices)
        columns.append(presence[:, indices].any(axis=1))
    columns += [presence[:, c] for c in range(width) if c not in covered]
    return np.stack(columns, axis=1) if columns else np.zeros((len(presence), 0), dtype=bool)


def _case_shares(cases: np.ndarray) -> np.ndarray:
    """Per slice, (number of distinct cases) x (slices of the same case): its inverse gives each case 1 / cases."""
    _, inverse, counts = np.unique(cases, return_inverse=True, return_counts=True)
    return len(counts) * counts[inverse]


# A lesion is pasted only where the slice shows enough of its host organ to calibrate the intensity against.
MIN_HOST_PIXELS = 20
# Lesion cuts smaller than this (pixels) are partial-volume slivers at a lesion's top or bottom, not worth pasting.
MIN_LESION_PIXELS = 9
# At most this many lesion slices per case go into the bank, evenly spaced: neighbouring slices repeat each other,
# and 24 keep the bank of hundreds of full-resolution cases to a few hundred MB.
BANK_SLICES_PER_CASE = 24


def lesion_bank(dataset: SliceDataset, host_label: int) -> list[dict]:
    """Every 2D lesion cut of the dataset's cases, for ``LesionPaste``: the (k, h, w) image box around each
    connected lesion component of a slice, its mask and labels. A lesion is any label other than background and
    ``host_label``; its image is stored relative to the mean of the host organ in the same slice, so that pasted
    into another patient it keeps its contrast to the organ (a lesion as dark as its kidney stays as dark as the
    new kidney, whatever either patient's enhancement). Each cut records its ``case`` (index in ``cases``)."""

    presence = dataset.class_presence()
    lesion_columns = [c for c in range(presence.shape[1]) if c + 1 != host_label]
    bank = []
    start = 0
    for case, (image, label) in enumerate(dataset.cases):
        n_slices = image.shape[0]
        rows = np.flatnonzero(presence[start : start + n_slices, lesion_columns].any(axis=1)) if lesion_columns else []
        start += n_slices
        if len(rows) > BANK_SLICES_PER_CASE:
            rows = rows[np.linspace(0, len(rows) - 1, BANK_SLICES_PER_CASE).round().astype(int)]
        for z in rows:
            cuts = lesion_cuts(context_stack(image, z, z + 1, dataset.context)[0], np.asarray(label[z]), host_label)
            bank += [{**cut, "case": case} for cut in cuts]
    return bank


def lesion_cuts(image_khw: np.ndarray, label_hw: np.ndarray, host_label: int) -> list[dict]:
    """One slice's cuts for ``lesion_bank``: its connected lesion components of at least MIN_LESION_PIXELS, none
    when the slice shows too little of the host organ to measure its intensity."""
    from scipy import ndimage

    host = label_hw == host_label
    if host.sum() < MIN_HOST_PIXELS:
        return []
    offset = host_mean(image_khw, host)
    components, _ = ndimage.label((label_hw > 0) & ~host)
    cuts = []
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        mask = components[box] == index
        if mask.sum() < MIN_LESION_PIXELS:
            continue
        cuts.append(
            {
                "image": image_khw[(slice(None), *box)] - offset,
                "mask": mask,
                "label": np.where(mask, label_hw[box], 0).astype(np.int64),
            }
        )
    return cuts


def host_mean(image_khw: np.ndarray, host_hw: np.ndarray) -> float:
    """The host organ's mean intensity on the centre channel (the slice itself, not a 2.5D neighbour): the level
    lesions are cut relative to and pasted back at."""
    return float(image_khw[image_khw.shape[0] // 2][host_hw].mean())


def per_case_cut_weights(bank: list[dict]) -> np.ndarray:
    """Draw probabilities of the bank's cuts that give every case's cuts together the same share."""
    return 1.0 / _case_shares(np.array([cut["case"] for cut in bank]))


class LesionPaste(Randomizable):
    """Copy-paste of lesions between patients (TumorCP, Yang et al., MICCAI 2021, on KiTS19): with probability
    ``prob``, a lesion cut from the bank is pasted onto a slice that shows the host organ, centred on a random host
    pixel, randomly mirrored, at the contrast to the host organ it had in its own patient, with soft edges; its
    pixels take the lesion's labels. A few training patients show a few lesions each; pasting shows every kidney
    with every lesion's shape and contrast. A MONAI Randomizable: ``Compose.set_random_state`` seeds it.

    ``balance``: ``cut`` draws every cut of the bank equally often, so a lesion on many slices is pasted more often
    than a small one; ``per_case`` draws each case's cuts together as often as any other case's.

    ``contrast`` (low, high): each paste scales the lesion's mean contrast to the host by a factor drawn uniformly
    from that range, its texture kept, so that a few patients' lesions also show the network fainter and stronger
    versions of themselves. (1, 1) pastes every lesion at its own contrast and draws no extra random number, so
    the augmentation stream is the one without the option."""

    def __init__(self, bank: list[dict], host_label: int, prob: float, balance: str = "cut", contrast=(1.0, 1.0)):
        self.bank, self.host_label, self.prob = bank, host_label, prob
        self.cut_weights = per_case_cut_weights(bank) if balance == "per_case" and bank else None
        self.contrast = tuple(float(c) for c in contrast)
        self.set_random_state()

    def randomize(self, n_host_pixels: int) -> None:
        self._do = bool(self.bank) and self.R.random_sample() < self.prob and n_host_pixels >= MIN_HOST_PIXELS
        if self._do:
            if self.cut_weights is None:
                self._cut = self.bank[self.R.randint(len(self.bank))]
            else:
                self._cut = self.bank[self.R.choice(len(self.bank), p=self.cut_weights)]
            self._flips = [axis for axis in (1, 2) if self.R.random_sample() < 0.5]
            self._centre = self.R.randint(n_host_pixels)
            low, high = self.contrast
            self._scale = self.R.uniform(low, high) if low != high else low

    def __call__(self, sample: dict) -> dict:
        label = _plain(sample["label"])[0].numpy()
        host = label == self.host_label
        # Counted first and listed only for a paste (three slices in ten): listing them is most of the test.
        self.randomize(int(np.count_nonzero(host)))
        if not self._do:
            return sample
        image = _plain(sample["image"]).numpy().astype(np.float32)  # a copy: the cached slice stays as it was
        ys, xs = np.nonzero(host)
        centre = (ys[self._centre], xs[self._centre])
        pasted_image, pasted_label = paste_cut(
            image, label, self._cut, centre, host_mean(image, host), self._flips, self._scale
        )
        return {**sample, "image": torch.from_numpy(pasted_image), "label": torch.from_numpy(pasted_label)[None]}


class ClassPixels:
    """The flat indices of one class's pixels in a label map, as MONAI's ``map_classes_to_indices`` lists them,
    but counted up front and listed only when a crop centre is drawn from them (see ``ClassPixelsd``)."""

    def __init__(self, flat_labels: np.ndarray, value: int, count: int):
        self.flat_labels, self.value, self.count = flat_labels, value, count
        self._indices = None

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, k):
        if self._indices is None:
            self._indices = np.flatnonzero(self.flat_labels == self.value)
        return self._indices[k]


class ClassPixelsd:
    """Each class's pixels of a sample's label, for ``RandCropByLabelClassesd(indices_key=ClassPixelsd.key)``.

    MONAI lists every class's pixels before it draws a crop centre: on a 512 x 512 slice that is four passes and a
    quarter of a million background indices, a third of a training sample's augmentation time, for one centre
    drawn from one class (3D: every voxel of the volume, for each patch). MONAI needs each class's count to weigh
    the classes, and the indices of the class it drew from only; this counts all classes in one pass and lists a
    class only when a centre is drawn from it (``ClassPixels``), so the random draws, the centres and the crops are
    MONAI's own (tests/test_levers.py, tests/test_volumes.py)."""

    key = "label_class_pixels"

    def __init__(self, n_classes: int):
        self.n_classes = n_classes

    def __call__(self, sample: dict) -> dict:
        flat = np.asarray(_plain(sample["label"])).reshape(-1)
        # Labels are class numbers (>= 0); one above the classes is listed by no class, as MONAI lists it.
        counts = np.bincount(flat.astype(np.intp, copy=False), minlength=self.n_classes)
        pixels = [ClassPixels(flat, value, int(counts[value])) for value in range(self.n_classes)]
        return {**sample, self.key: pixels}


def paste_cut(
    image, label, cut: dict, centre, host_mean: float, flips=(), contrast: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """``cut`` pasted into copies of a (k, H, W) image and its (H, W) labels, its box centred on ``centre``
    (clipped at the slice's edges); its intensity offset by ``host_mean``. The image blends in over a soft mask
    (sigma 0.7 pixel, as a partial-volume edge) so that a hard edge cannot become the cue for the lesion label.
    ``contrast`` scales the lesion's mean contrast to the host (its mean over the mask on the centre channel),
    leaving the texture around that mean as it is: 0.5 pastes it half as dark (or bright), 0 iso to the host."""
    from scipy import ndimage

    cut_image, mask, cut_label = cut["image"], cut["mask"], cut["label"]
    if contrast != 1.0:
        mean_contrast = float(cut_image[cut_image.shape[0] // 2][mask].mean())
        cut_image = cut_image + (contrast - 1.0) * mean_contrast
    for axis in flips:  # axis 1 or 2 of the (k, h, w) image: rows or columns
        cut_image, mask, cut_label = np.flip(cut_image, axis), np.flip(mask, axis - 1), np.flip(cut_label, axis - 1)
    h, w = mask.shape
    top, left = int(centre[0]) - h // 2, int(centre[1]) - w // 2
    dst = (slice(max(top, 0), min(top + h, label.shape[0])), slice(max(left, 0), min(left + w, label.shape[1])))
    src = (slice(dst[0].start - top, dst[0].stop - top), slice(dst[1].start - left, dst[1].stop - left))
    alpha = ndimage.gaussian_filter(mask.astype(np.float32), 0.7)[src]
    image, label = image.copy(), label.copy()
    region = image[(slice(None), *dst)]
    image[(slice(None), *dst)] = region + alpha * (cut_image[(slice(None), *src)] + host_mean - region)
    label[dst] = np.where(mask[src], cut_label[src], label[dst])
    return image, label


@contextlib.contextmanager
def untracked_meta():
    """Run MONAI transforms on plain tensors, without MetaTensor metadata or the inverse-transform stack.

    Training never inverts its augmentations, and the bookkeeping costs about half of each sample's transform time
    (5.4 against 2.8 ms a 256 x 256 slice): some 10 s of the KiTS CPU preset's 82 s epoch on two cores. The random
    draws and the pixels are the same either way. Set per call, so that it holds in DataLoader workers however
    they start, and restored after, so that other MONAI users in the process keep their metadata."""
    tracked = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(tracked)


def _plain(tensor) -> torch.Tensor:
    """A plain tensor from a transform's output (a MetaTensor, where metadata is tracked), for the collate."""
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else torch.as_tensor(tensor)


def build_augmentation(cfg: dict, patch_size=None, n_classes: int = 4, lesions: list[dict] | None = None):
    """MONAI dictionary transforms for training slices: lesion copy-paste from the ``lesions`` bank (when
    ``cfg["lesion_paste_prob"]`` is above 0), an optional crop to ``patch_size``, then the augmentations of ``cfg``
    (``train.augment``). ``None`` when there is nothing to do.

    On a slice with labels the crop is centred on a labelled pixel, each label the slice shows equally likely
    (a tumour as often as the kidney around it); on a slice without labels, anywhere. The share of background is
    decided once, by the slices drawn (``epoch_indices``' ``foreground_fraction``): applying it again here made
    about two crops in three background-centred, where the config promised three in ten.
    """
    from monai.transforms import (
        Compose,
        RandAffined,
        RandCropByLabelClassesd,
        RandFlipd,
        RandScaleIntensityd,
        RandShiftIntensityd,
        SpatialPadd,
    )

    steps = []
    if cfg["enabled"] and cfg.get("lesion_paste_prob", 0) > 0 and lesions:
        # Before the crop, so that the crop can centre on a pasted lesion as on a real one.
        balance = cfg.get("lesion_paste_balance", "cut")
        contrast = tuple(cfg.get("lesion_paste_contrast", (1.0, 1.0)))
        steps.append(LesionPaste(lesions, cfg["lesion_host_label"], cfg["lesion_paste_prob"], balance, contrast))
    if patch_size:
        # Slices of cases on their own grid (preprocess.size: null) may be smaller than a crop; padding them with
        # 0 (below the window) and background first keeps every crop, and so every batch, one size.
        steps.append(SpatialPadd(keys=["image", "label"], spatial_size=list(patch_size)))
        steps.append(ClassPixelsd(n_classes))
        # A class missing from a slice has its ratio set to 0 for that slice, the right fallback; MONAI warns
        # about it on every such slice.
        warnings.filterwarnings("ignore", message=".*unable to generate class balanced samples", category=UserWarning)
        warnings.filterwarnings("ignore", message="no available indices of class", category=UserWarning)
        # Full-resolution slices are cropped rather than shrunk, so small tumours keep their pixels.
        # Background keeps a token ratio: on a slice without labels it is the only class left, and MONAI
        # renormalises the ratios of the classes a slice shows.
        ratios = [1e-6] + [1.0] * (n_classes - 1)
        steps.append(
            RandCropByLabelClassesd(
                keys=["image", "label"],
                label_key="label",
                spatial_size=list(patch_size),
                ratios=ratios,
                num_classes=n_classes,
                num_samples=1,
                allow_smaller=True,
                warn=False,
                indices_key=ClassPixelsd.key,
            )
        )
    if not cfg["enabled"]:
        return Compose(steps) if steps else None
    return Compose(
        steps
        + [
            RandFlipd(keys=["image", "label"], prob=cfg["flip_prob"], spatial_axis=0),
            RandAffined(
                keys=["image", "label"],
                prob=cfg["affine_prob"],
                rotate_range=np.deg2rad(cfg["rotate_degrees"]),
                scale_range=cfg["scale_range"],
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            RandScaleIntensityd(keys="image", factors=cfg["contrast_range"], prob=cfg["intensity_prob"]),
            RandShiftIntensityd(keys="image", offsets=cfg["brightness_range"], prob=cfg["intensity_prob"]),
        ]
        + scanner_augmentation(cfg)
    )


def scanner_augmentation(cfg: dict) -> list:
    """nnU-Net's intensity augmentations beyond scale and shift, each on with a probability above 0: noise of a
    random standard deviation up to ``noise_std``, Gaussian blur (sigma in ``blur_sigma`` pixels) and a gamma curve
    (exponent in ``gamma_range``, between the image's own minimum and maximum, its mean and spread kept).
    Scanners differ in noise, kernel sharpness and contrast; a few training patients show only a few of them.
    Slices (2D) and volumes (3D, the blur then along z too) alike."""
    from monai.transforms import RandAdjustContrastd, RandGaussianNoised, RandGaussianSmoothd

    steps = []
    if cfg.get("noise_prob", 0) > 0:
        steps.append(
            RandGaussianNoised(keys="image", prob=cfg["noise_prob"], mean=0.0, std=cfg["noise_std"], sample_std=True)
        )
    if cfg.get("blur_prob", 0) > 0:
        sigma = tuple(cfg["blur_sigma"])
        steps.append(
            RandGaussianSmoothd(keys="image", prob=cfg["blur_prob"], sigma_x=sigma, sigma_y=sigma, sigma_z=sigma)
        )
    if cfg.get("gamma_prob", 0) > 0:
        gamma = tuple(cfg["gamma_range"])
        steps.append(RandAdjustContrastd(keys="image", prob=cfg["gamma_prob"], gamma=gamma, retain_stats=True))
    return steps


def epoch_indices(
    foreground: np.ndarray, n_samples: int, foreground_fraction: float, rng, weights=None, unique: bool = False
) -> np.ndarray:
    """Draw ``n_samples`` slice indices, a ``foreground_fraction`` share from slices that contain labels.

    Most CT slices show no kidney; without this the network mostly learns to predict background. ``weights``
    (one per slice) make some slices likelier within their group, e.g. those the previous round got wrong.
    """
    fg = np.flatnonzero(foreground)
    bg = np.flatnonzero(~foreground)
    n_fg = int(round(n_samples * foreground_fraction)) if len(fg) else 0
    n_bg = n_samples - n_fg if len(bg) else 0
    n_fg = n_samples - n_bg if len(fg) else n_fg
    if unique:  # no slice twice: move what one group lacks to the other
        n_fg = min(n_fg, len(fg))
        n_bg = min(n_samples - n_fg, len(bg))
        n_fg = min(n_samples - n_bg, len(fg))
    order = np.concatenate([_draw(fg, n_fg, rng, weights), _draw(bg, n_bg, rng, weights)])
    rng.shuffle(order)
    return order


def _draw(candidates: np.ndarray, n: int, rng, weights) -> np.ndarray:
    if n == 0:
        return np.zeros(0, dtype=int)
    p = None
    if weights is not None:
        p = np.asarray(weights, dtype=float)[candidates]
        p = p / p.sum()
    return rng.choice(candidates, n, replace=n > len(candidates) or p is not None, p=p)
