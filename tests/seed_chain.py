"""The seed's preprocessing: MONAI's dictionary Compose over the whole float volume.

Not part of the pipeline: the reference that tests (tests/test_preprocess.py) and benchmarks
(benchmarks/preprocess.py) compare segflow.preprocess with. ``cfg`` is a full ``preprocess`` config
(segflow.config.schema_defaults fills one in).
"""

from __future__ import annotations

import numpy as np

from segflow.geometry import RAS_LABELS, slice_dim


def seed_transforms(cfg: dict):
    """The seed's MONAI dictionary chain over the whole volume, kept as the reference for tests and benchmarks."""
    from monai.transforms import (
        Compose,
        CropForegroundd,
        EnsureChannelFirstd,
        Lambdad,
        LoadImaged,
        Orientationd,
        Resized,
        ScaleIntensityRanged,
    )

    low, high = cfg["window"]
    gamma, threshold = float(cfg["gamma"]), float(cfg["body_threshold"])
    spatial_size = [-1, -1, -1]
    for dim, n in zip([d for d in range(3) if d != slice_dim(cfg)], cfg["size"]):
        spatial_size[dim] = int(n)
    keys = ["image", "label"]
    steps = [
        LoadImaged(keys=keys, reader="NibabelReader", image_only=True),
        EnsureChannelFirstd(keys=keys),
        Orientationd(keys=keys, axcodes=cfg["orientation"], labels=RAS_LABELS),
    ]
    if cfg["crop_foreground"]:
        steps.append(
            CropForegroundd(
                keys=keys,
                source_key="image",
                select_fn=lambda x: x > threshold,
                margin=int(cfg["crop_margin"]),
                allow_smaller=True,
            )
        )
    steps += [
        ScaleIntensityRanged(keys="image", a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True),
        Lambdad(keys="image", func=lambda x: x**gamma),
        Resized(keys=keys, spatial_size=spatial_size, mode=("area", "nearest-exact")),
    ]
    return Compose(steps)


def seed_preprocess(image_path, label_path, cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 (Z, H, W), label uint8 (Z, H, W)) through ``seed_transforms``."""
    data = seed_transforms(cfg)({"image": str(image_path), "label": str(label_path)})
    k = slice_dim(cfg)
    image = np.moveaxis(np.asarray(data["image"][0], dtype=np.float32), k, 0)
    label = np.moveaxis(np.asarray(data["label"][0]), k, 0).round().astype(np.uint8)
    return np.ascontiguousarray(image), np.ascontiguousarray(label)
