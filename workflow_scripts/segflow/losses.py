"""Loss functions by name, from MONAI; all take logits (N, C, H, W) and integer targets (N, 1, H, W).

``dice_focal`` with ``loss_weights.dice`` 0.4, ``loss_weights.focal`` 0.6, ``focal_alpha`` 0.25 and
``focal_gamma`` 2 is the combination one of the seeds used.

``train.dice_targets: regions`` takes the Dice part over the scored regions (``score.regions``, e.g. KiTS's
kidney+masses, masses, tumour) instead of over each class: a region's probability is the sum of its classes'
softmax. The network and everything after it stay the same (softmax over classes); only what the Dice rewards
changes, towards what is scored. nnU-Net trains KiTS on the same regions (with sigmoids).

``train.dice_smooth`` is the constant on both sides of the Dice fraction. Per slice or crop (``batch_dice:
false``), a region the crop does not show scores smooth / (predicted volume + smooth): about 0 at nnU-Net's 1e-5
once more than a trace is predicted, so more false positives change nothing in the Dice and only the
cross-entropy sees them; at 1 they cost Dice.

``train.batch_dice: both`` takes the mean of the two Dice losses, per crop and pooled over the batch. The Dice per
crop weighs a small lesion as much as a large one; the pooled Dice adds a crop's false positives to the batch's
denominator, so they cost even on a crop without the region, where the Dice per crop cannot see them.

``train.ce_top_fraction`` below 1 averages the cross-entropy over only that share of a batch's pixels, the ones it
is highest on (nnU-Net's TopK loss; 0.1 is its TopK10). A confident false positive is one of those pixels, while
with the plain mean it is diluted by the thousands of easy background pixels of its crop.
"""

from __future__ import annotations

import torch

LOSSES = ("ce", "dice", "dice_ce", "dice_focal")
REGION_LOSSES = ("dice", "dice_ce")  # the losses whose Dice part train.dice_targets: regions can replace
CE_LOSSES = ("ce", "dice_ce")  # the losses whose cross-entropy train.ce_top_fraction can narrow


class CrossEntropy(torch.nn.Module):
    """Cross-entropy with the (N, 1, H, W) integer targets the other MONAI losses take, averaged over the
    ``top_fraction`` of the batch's pixels where it is highest (1: every pixel, the plain mean)."""

    def __init__(self, top_fraction: float = 1.0):
        super().__init__()
        if not 0 < top_fraction <= 1:
            raise ValueError(f"train.ce_top_fraction is {top_fraction}; it must be in (0, 1]")
        self.top_fraction = float(top_fraction)

    def forward(self, logits, target):
        target = target[:, 0].long()
        if self.top_fraction == 1.0:
            return torch.nn.functional.cross_entropy(logits, target)
        per_pixel = torch.nn.functional.cross_entropy(logits, target, reduction="none")
        # The whole batch's pixels compete, as in nnU-Net: a crop full of easy background gives up its share.
        k = max(1, int(per_pixel.numel() * self.top_fraction))
        return per_pixel.flatten().topk(k, sorted=False).values.mean()


class RegionDiceLoss(torch.nn.Module):
    """1 - mean soft Dice over regions, each region's probability the sum of its member classes' softmax.

    ``regions``: {name: [label values]}. With ``batch`` true the intersections and volumes are pooled over the
    batch (nnU-Net's batch Dice), with false each sample scores alone and the mean is taken over samples and
    regions, and with ``"both"`` the loss is the mean of the two. ``smooth`` is added to each Dice's numerator
    and denominator (``train.dice_smooth``).
    """

    def __init__(self, regions: dict, n_classes: int, batch: bool | str = True, smooth: float = 1e-5):
        super().__init__()
        membership = torch.zeros(len(regions), n_classes)
        for row, (name, members) in enumerate(regions.items()):
            for value in members:
                if not 0 < int(value) < n_classes:
                    raise ValueError(f"score.regions.{name} holds label {value}, outside 1..{n_classes - 1}")
                membership[row, int(value)] = 1.0
        self.register_buffer("membership", membership)
        self.batch, self.smooth = batch, smooth

    def forward(self, logits, target):
        probability = torch.softmax(logits.float(), dim=1)
        onehot = torch.nn.functional.one_hot(target[:, 0].long(), logits.shape[1]).movedim(-1, 1).float()
        predicted = torch.einsum("nc...,rc->nr...", probability, self.membership)
        reference = torch.einsum("nc...,rc->nr...", onehot, self.membership)
        # Sums per sample and region first: the pooled Dice is their sum over the batch.
        spatial = tuple(range(2, logits.dim()))
        intersection, volume = (predicted * reference).sum(spatial), (predicted + reference).sum(spatial)
        per_sample = self._dice_loss(intersection, volume)
        pooled = self._dice_loss(intersection.sum(0), volume.sum(0))
        if self.batch == "both":
            return 0.5 * (per_sample + pooled)
        return pooled if self.batch else per_sample

    def _dice_loss(self, intersection: torch.Tensor, volume: torch.Tensor) -> torch.Tensor:
        return 1.0 - ((2.0 * intersection + self.smooth) / (volume + self.smooth)).mean()


class WeightedSum(torch.nn.Module):
    """``sum(weight * loss(logits, target))`` over (weight, loss) pairs."""

    def __init__(self, parts):
        super().__init__()
        self.weights = [float(w) for w, _ in parts]
        self.parts = torch.nn.ModuleList(loss for _, loss in parts)

    def forward(self, logits, target):
        return sum(w * loss(logits, target) for w, loss in zip(self.weights, self.parts))


class DeepSupervisionLoss(torch.nn.Module):
    """``loss`` over a network's deep-supervision heads: logits (N, 1 + heads, C, ...) as MONAI's DynUNet returns
    them in training (every head upsampled to the target's size), weighted 1, 1/2, 1/4, ... and normalised to sum
    1, as nnU-Net weighs its resolutions. Plain logits (N, C, ...), as in eval mode, get ``loss`` alone, so
    validation scores the same loss on the output that prediction uses."""

    def __init__(self, loss: torch.nn.Module, heads: int):
        super().__init__()
        self.loss = loss
        weights = [0.5**i for i in range(heads + 1)]
        self.weights = [w / sum(weights) for w in weights]

    def forward(self, logits, target):
        if not _has_heads(logits, target):
            return self.loss(logits, target)
        if logits.shape[1] != len(self.weights):
            raise ValueError(f"{logits.shape[1]} outputs for {len(self.weights)} deep-supervision weights")
        return sum(w * self.loss(logits[:, i], target) for i, w in enumerate(self.weights))


def main_output(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The full-resolution logits (N, C, ...) of a network's output, with or without deep-supervision heads."""
    return logits[:, 0] if _has_heads(logits, target) else logits


def _has_heads(logits: torch.Tensor, target: torch.Tensor) -> bool:
    """(N, 1 + heads, C, ...) against a (N, 1, ...) target: one dimension more than plain logits have."""
    return logits.dim() == target.dim() + 1


def build_loss(cfg: dict, regions: dict | None = None, n_classes: int | None = None) -> torch.nn.Module:
    """The loss ``cfg`` (``train``) names. ``regions`` ({name: [label values]}, ``score.regions``) and
    ``n_classes`` are needed with ``dice_targets: regions``. With ``deep_supervision`` heads it is taken over
    every head (:class:`DeepSupervisionLoss`)."""
    loss = _loss(cfg, regions, n_classes)
    heads = int(cfg.get("deep_supervision", 0))
    return DeepSupervisionLoss(loss, heads) if heads else loss


def _loss(cfg: dict, regions: dict | None, n_classes: int | None) -> torch.nn.Module:
    from monai import losses

    name = cfg["loss"]
    weights = cfg["loss_weights"]
    dice_weight, other_weight = float(weights.get("dice", 1.0)), float(weights.get("ce", weights.get("focal", 1.0)))
    batch, smooth = _batch_dice(cfg["batch_dice"]), float(cfg["dice_smooth"])
    top = float(cfg.get("ce_top_fraction", 1.0))
    if top < 1.0 and name not in CE_LOSSES:
        raise ValueError(f"train.ce_top_fraction is {top:g} but train.loss {name!r} has no cross-entropy part; "
                         f"choose one of {', '.join(CE_LOSSES)} or set train.ce_top_fraction to 1")  # fmt: skip
    if cfg.get("dice_targets", "classes") == "regions":
        return _region_loss(name, regions, n_classes, batch, smooth, dice_weight, other_weight, top)
    common = {
        "to_onehot_y": True,
        "softmax": True,
        "include_background": False,
        "smooth_nr": smooth,
        "smooth_dr": smooth,
    }
    if name == "ce":
        return CrossEntropy(top)
    if batch == "both":
        if name not in ("dice", "dice_ce"):
            raise ValueError(f"train.batch_dice both needs train.loss dice or dice_ce (the Dice losses it averages), "
                             f"not {name!r}")  # fmt: skip
        both = WeightedSum(
            [(0.5, losses.DiceLoss(**common, batch=False)), (0.5, losses.DiceLoss(**common, batch=True))]
        )
        return both if name == "dice" else WeightedSum([(dice_weight, both), (other_weight, CrossEntropy(top))])
    # Batch Dice (nnU-Net's choice for 2D) pools each class over the whole batch: a slice without that class then
    # adds its false positives to the pool instead of scoring a Dice of 0 or 1 on its own, which makes the loss,
    # and the validation loss that picks the best epoch, far less noisy on mostly empty slices.
    common["batch"] = batch
    if name == "dice":
        return losses.DiceLoss(**common)
    if name == "dice_ce" and top < 1.0:
        return WeightedSum([(dice_weight, losses.DiceLoss(**common)), (other_weight, CrossEntropy(top))])
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


def _batch_dice(value) -> bool | str:
    """``train.batch_dice``: true (pooled), false (per sample) or ``"both"`` (their mean)."""
    if value == "both" or isinstance(value, bool):
        return value
    raise ValueError(f"train.batch_dice is {value!r}; it must be true, false or both")


def _region_loss(
    name: str, regions, n_classes, batch: bool | str, smooth: float, dice_weight: float, ce_weight: float, top: float
):
    if name not in REGION_LOSSES:
        raise ValueError(f"train.dice_targets regions replaces a Dice part; train.loss {name!r} has none or another "
                         f"(choose one of {', '.join(REGION_LOSSES)})")  # fmt: skip
    if not regions or not n_classes:
        raise ValueError("train.dice_targets regions needs score.regions (region name -> label values)")
    dice = RegionDiceLoss(regions, n_classes, batch, smooth)
    # Cross-entropy stays over classes: the argmax that makes the label map needs the classes apart.
    return dice if name == "dice" else WeightedSum([(dice_weight, dice), (ce_weight, CrossEntropy(top))])
