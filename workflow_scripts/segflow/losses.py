"""Loss functions by name, from MONAI; all take logits (N, C, H, W) and integer targets (N, 1, H, W)."""

from __future__ import annotations

import torch


def build_loss(cfg: dict) -> torch.nn.Module:
    name = cfg["loss"]
    if name == "dice_ce":
        from monai.losses import DiceCELoss

        return DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, smooth_nr=1e-5, smooth_dr=1e-5)
    raise ValueError(f"unknown train.loss {name!r}")
