"""2D slice datasets over preprocessed cases (NPY or PNG), with MONAI augmentations and a seeded sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from segflow.preprocess import load_case


class SliceDataset(torch.utils.data.Dataset):
    """Every slice of the given cases as ``{"image": (1, H, W) float32, "label": (1, H, W) int64, ...}``.

    NPY cases are memory-mapped, so a dataset over hundreds of full-size cases costs little memory.
    """

    def __init__(self, case_dirs: list[str | Path], transform=None):
        self.cases = [load_case(d) for d in case_dirs]
        self.case_ids = [Path(d).name for d in case_dirs]
        self.index = [(c, z) for c, (image, _) in enumerate(self.cases) for z in range(image.shape[0])]
        self.transform = transform
        self._foreground = None

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict:
        case, z = self.index[item]
        image, label = self.cases[case]
        sample = {
            "image": torch.from_numpy(np.array(image[z], dtype=np.float32))[None],
            "label": torch.from_numpy(np.array(label[z], dtype=np.int64))[None],
        }
        if self.transform is not None:
            # Spatial augmentations return float MetaTensors; hand plain tensors with integer labels onwards.
            sample = self.transform(sample)
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
        if self._foreground is None:
            flags = [np.asarray(label).reshape(label.shape[0], -1).max(axis=1) > 0 for _, label in self.cases]
            self._foreground = np.concatenate(flags) if flags else np.zeros(0, dtype=bool)
        return self._foreground


def _plain(tensor) -> torch.Tensor:
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else torch.as_tensor(tensor)


def build_augmentation(cfg: dict):
    """MONAI dictionary augmentations for training slices; ``None`` when ``augment.enabled`` is false."""
    if not cfg.get("enabled", True):
        return None
    from monai.transforms import Compose, RandAffined, RandFlipd, RandScaleIntensityd, RandShiftIntensityd

    return Compose(
        [
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
    )


def epoch_indices(foreground: np.ndarray, n_samples: int, foreground_fraction: float, rng, weights=None) -> np.ndarray:
    """Draw ``n_samples`` slice indices, a ``foreground_fraction`` share from slices that contain labels.

    Most CT slices show no kidney; without this the network mostly learns to predict background. ``weights``
    (one per slice) make some slices likelier within their group, e.g. those the previous round got wrong.
    """
    fg = np.flatnonzero(foreground)
    bg = np.flatnonzero(~foreground)
    n_fg = int(round(n_samples * foreground_fraction)) if len(fg) else 0
    n_bg = n_samples - n_fg if len(bg) else 0
    n_fg = n_samples - n_bg if len(fg) else n_fg
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
