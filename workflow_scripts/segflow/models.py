"""Segmentation networks by name, all from MONAI, all 2D (slices) with one input channel."""

from __future__ import annotations

import torch


def build_model(cfg: dict, n_classes: int) -> torch.nn.Module:
    """Build ``cfg['model']`` with ``n_classes`` output channels (background included)."""
    name = cfg["model"]
    channels = tuple(int(c) for c in cfg["channels"])
    if name == "unet":
        from monai.networks.nets import UNet

        return UNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=n_classes,
            channels=channels,
            strides=(2,) * (len(channels) - 1),
            num_res_units=int(cfg.get("num_res_units", 2)),
            norm="batch",
            dropout=float(cfg.get("dropout", 0.0)),
        )
    raise ValueError(f"unknown train.model {name!r}")


def load_weights(model: torch.nn.Module, checkpoint_path) -> dict:
    """Load a checkpoint written by :func:`segflow.train.save_checkpoint` into ``model``; return the checkpoint."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    model.load_state_dict(checkpoint["model"])
    return checkpoint
