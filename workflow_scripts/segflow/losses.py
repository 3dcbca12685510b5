"""Loss functions by name, from MONAI; all take logits (N, C, H, W) and integer targets (N, 1, H, W).

``dice_focal`` with ``loss_weights.dice`` 0.4, ``loss_weights.focal`` 0.6, ``focal_alpha`` 0.25 and
``focal_gamma`` 2 is the combination one of the seeds used.
"""

from __future__ import annotations

import torch

LOSSES = ("ce", "dice", "dice_ce", "dice_focal")


class CrossEntropy(torch.nn.Module):
    """Cross-entropy with the (N, 1, H, W) integer targets the other MONAI losses take."""

    def __init__(self):
        super().__init__()
        self.loss = torch.nn.CrossEntropyLoss()

    def forward(self, logits, target):
        return self.loss(logits, target[:, 0].long())


def build_loss(cfg: dict) -> torch.nn.Module:
    from monai import losses

    name = cfg["loss"]
    weights = cfg["loss_weights"]
    dice_weight, other_weight = float(weights.get("dice", 1.0)), float(weights.get("ce", weights.get("focal", 1.0)))
    common = {"to_onehot_y": True, "softmax": True, "include_background": False, "smooth_nr": 1e-5, "smooth_dr": 1e-5}
    # Batch Dice (nnU-Net's choice for 2D) pools each class over the whole batch: a slice without that class then
    # adds its false positives to the pool instead of scoring a Dice of 0 or 1 on its own, which makes the loss,
    # and the validation loss that picks the best epoch, far less noisy on mostly empty slices.
    common["batch"] = bool(cfg["batch_dice"])
    if name == "ce":
        return CrossEntropy()
    if name == "dice":
        return losses.DiceLoss(**common)
    if name == "dice_ce":
        return losses.DiceCELoss(**common, lambda_dice=dice_weight, lambda_ce=other_weight)
    if name == "dice_focal":
        return losses.DiceFocalLoss(
            **common,
            lambda_dice=dice_weight,
            lambda_focal=other_weight,
            gamma=float(cfg["focal_gamma"]),
            alpha=cfg["focal_alpha"],
        )
    raise ValueError(f"unknown train.loss {name!r}; choose one of {', '.join(LOSSES)}")
