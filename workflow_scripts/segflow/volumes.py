"""The 3D path (``train.dims: 3``): patch datasets over preprocessed volumes and sliding-window inference.

Preprocessing is the 2D chain with ``preprocess.size: null``: the (resampled) grid is kept, so ``image.npy`` and
``label.npy`` are whole volumes (Z, H, W) and meta.json's way back is the same exact one (segflow.preprocess).
Training draws one patch of ``train.patch_size`` per sample with MONAI's RandCropByLabelClassesd: background with
probability 1 - ``foreground_fraction``, each foreground label equally often otherwise (a label missing from a
volume gives its share to the others), then flips along every axis and intensity jitter. Validation uses a fixed
seeded set of such patches, drawn once per round, so epochs stay comparable. Inference runs MONAI's
sliding_window_inference over the whole volume with Gaussian blending and ``infer.overlap``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from segflow.cases import load_case
from segflow.data import ClassPixelsd, scanner_augmentation, untracked_meta

# Patches per validation volume: one centred on each label and one on background when the volume has them.
VALIDATION_PATCHES_PER_CLASS = 1


def crop_transform(patch_size, foreground_fraction: float, n_classes: int, num_samples: int = 1):
    """Pad to at least the patch, then a patch centred on background or on a label, balanced between labels."""
    from monai.transforms import Compose, RandCropByLabelClassesd, SpatialPadd

    warnings.filterwarnings("ignore", message=".*unable to generate class balanced samples", category=UserWarning)
    warnings.filterwarnings("ignore", message="no available indices of class", category=UserWarning)
    share = foreground_fraction / max(n_classes - 1, 1)
    ratios = [max(1.0 - foreground_fraction, 1e-3)] + [max(share, 1e-3)] * (n_classes - 1)
    keys = ["image", "label"]
    return Compose([
        SpatialPadd(keys=keys, spatial_size=list(patch_size), mode="constant"),
        ClassPixelsd(n_classes),  # MONAI would list every class's voxels of the whole volume for each patch
        RandCropByLabelClassesd(
            keys=keys, label_key="label", spatial_size=list(patch_size), ratios=ratios, num_classes=n_classes,
            num_samples=num_samples, warn=False, indices_key=ClassPixelsd.key,
        ),
    ])  # fmt: skip


def build_augmentation_3d(cfg: dict, n_classes: int):
    """The crop, then (``train.augment``) flips along each axis, intensity scaling and shifting, and the scanner
    augmentations (noise, blur, gamma) that are switched on."""
    from monai.transforms import Compose, RandFlipd, RandScaleIntensityd, RandShiftIntensityd

    steps = [crop_transform(cfg["patch_size"], cfg["foreground_fraction"], n_classes)]
    augment = cfg["augment"]
    if augment["enabled"]:
        keys = ["image", "label"]
        steps += [RandFlipd(keys=keys, prob=augment["flip_prob"], spatial_axis=axis) for axis in range(3)]
        steps += [
            RandScaleIntensityd(keys="image", factors=augment["contrast_range"], prob=augment["intensity_prob"]),
            RandShiftIntensityd(keys="image", offsets=augment["brightness_range"], prob=augment["intensity_prob"]),
        ]
        steps += scanner_augmentation(augment)
    return Compose(steps)


def _plain(tensor) -> torch.Tensor:
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else torch.as_tensor(tensor)


def _volume_sample(case) -> dict:
    image, label = case
    return {
        "image": torch.from_numpy(np.array(image, dtype=np.float32))[None],
        "label": torch.from_numpy(np.array(label, dtype=np.int64))[None],
    }


def _finish(sample) -> dict:
    if isinstance(sample, list):
        sample = sample[0]
    return {"image": _plain(sample["image"]).float(), "label": _plain(sample["label"]).round().long()}


class PatchDataset(torch.utils.data.Dataset):
    """One item per volume; each access draws a fresh patch through ``transform`` (seeded per epoch by the
    training loop, as the 2D augmentations are). The sampler's foreground share is the crop's business here, so
    every volume counts as foreground for segflow.data.epoch_indices."""

    def __init__(self, case_dirs: list[str | Path], transform):
        self.cases = [load_case(d) for d in case_dirs]
        self.case_ids = [Path(d).name for d in case_dirs]
        self.transform = transform
        self._presence = None

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, item: int) -> dict:
        with untracked_meta():
            sample = _finish(self.transform(_volume_sample(self.cases[item])))
        sample["case"] = item
        return sample

    def foreground_mask(self) -> np.ndarray:
        return np.ones(len(self.cases), dtype=bool)

    def class_presence(self) -> np.ndarray:
        """(volumes, labels 1..max) bool: which labels each volume holds."""
        if self._presence is None:
            present = [np.unique(np.asarray(label)) for _, label in self.cases]
            top = max([int(p.max()) for p in present], default=0)
            self._presence = np.array([[c in p for c in range(1, top + 1)] for p in present], dtype=bool)
        return self._presence


class FixedPatches(torch.utils.data.Dataset):
    """A fixed, seeded set of validation patches: per volume one centred on each label it holds and one on
    background, drawn once (the same every epoch)."""

    def __init__(self, case_dirs: list[str | Path], patch_size, n_classes: int, seed: int):
        crop = crop_transform(
            patch_size, 1.0 - 1.0 / n_classes, n_classes, num_samples=n_classes * VALIDATION_PATCHES_PER_CLASS
        )
        crop.set_random_state(seed=seed % 2**32)
        self.samples = []
        for case_dir in case_dirs:
            for sample in crop(_volume_sample(load_case(case_dir))):
                self.samples.append(_finish(sample))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int) -> dict:
        return self.samples[item]


def patch_datasets(train_dirs, val_dirs, cfg: dict, n_classes: int, round_seed: int):
    """(training patches with augmentation, fixed validation patches) of one round."""
    from segflow.seeding import derive_seed

    train_set = PatchDataset(train_dirs, build_augmentation_3d(cfg, n_classes))
    val_set = FixedPatches(val_dirs, cfg["patch_size"], n_classes, derive_seed(round_seed, "validation_patches"))
    return train_set, val_set


@torch.no_grad()
def sliding_window_probabilities(
    models: list[torch.nn.Module],
    image_zhw: np.ndarray,
    patch_size,
    overlap: float,
    batch_size: int,
    device: torch.device,
    tta: bool = False,
) -> np.ndarray:
    """Mean softmax (Z, C, H, W) float16 of the models over one volume: MONAI's sliding_window_inference with
    Gaussian blending; with ``tta`` also over the mirror images along the three axes."""
    from monai.inferers import sliding_window_inference

    volume = torch.from_numpy(np.array(image_zhw, dtype=np.float32))[None, None].to(device)
    flips = ((), (2,), (3,), (4,)) if tta else ((),)
    total = None
    for model in models:
        for dims in flips:
            source = torch.flip(volume, dims) if dims else volume
            logits = sliding_window_inference(
                source,
                roi_size=list(patch_size),
                sw_batch_size=batch_size,
                predictor=model,
                overlap=overlap,
                mode="gaussian",
                padding_mode="constant",
            )
            probability = torch.softmax(_plain(logits).float(), dim=1)
            probability = torch.flip(probability, dims) if dims else probability
            total = probability if total is None else total + probability
    mean = (total / (len(models) * len(flips)))[0]  # (C, Z, H, W)
    return mean.permute(1, 0, 2, 3).cpu().numpy().astype(np.float16)
