"""Networks beyond segflow.models' 2D MONAI zoo: DeepLabV3+ (2D) and the 3D models of ``train.dims: 3``.

``deeplabv3plus``: DeepLabV3+ (Chen et al. 2018) from MONAI's building blocks: a residual encoder (MONAI
ResidualUnit, one stride-2 stage per ``train.channels`` entry), MONAI's SimpleASPP (atrous spatial pyramid pooling,
dilations 1, 2, 4, 6) on the deepest features, and the V3+ decoder: ASPP output upsampled to the stride-4 features,
concatenated with their 1x1 projection, two 3x3 convolutions and a bilinear upsampling to the input size.
segmentation-models-pytorch has the reference DeepLabV3+, but it needs timm and torchvision, and pip resolves
them to another torch with CUDA wheels (docs/training.md says more).

3D: ``vnet`` is MONAI's VNet (Milletari et al. 2016; the seed's) when ``channels[0]`` is 16, its published width;
other widths build the same topology from MONAI's own VNet blocks with every width scaled (CPU-sized runs).
``unet`` (MONAI UNet), ``dynunet`` (MONAI DynUNet, nnU-Net's architecture, 2D or 3D) and ``segresnet`` take
``channels`` as in 2D.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MODELS_3D = ("vnet", "unet", "dynunet", "segresnet")
# train.norm -> MONAI's norm argument (segflow.models builds the 2D networks with the same table).
NORMS = {"batch": ("batch", {}), "instance": ("instance", {"affine": True})}


def build_network(cfg: dict, n_classes: int) -> nn.Module:
    """``cfg['model']`` for ``cfg['dims']`` (2: deeplabv3plus; 3: vnet, unet, dynunet, segresnet)."""
    from monai.networks import nets

    name, dims = cfg["model"], int(cfg.get("dims", 2))
    channels = tuple(int(c) for c in cfg["channels"])
    dropout = float(cfg.get("dropout", 0.0))
    in_channels = int(cfg.get("context_slices", 1))
    norm = NORMS[cfg.get("norm", "batch")]
    if dims == 2 and name == "deeplabv3plus":
        return DeepLabV3Plus(in_channels, n_classes, channels, norm, dropout)
    if dims != 3:
        raise ValueError(f"train.model {name!r} with train.dims {dims}: not a network of segflow.networks")
    if name == "vnet":
        if channels[0] == 16:
            vnet = nets.VNet(
                spatial_dims=3,
                in_channels=in_channels,
                out_channels=n_classes,
                dropout_prob_down=dropout,
                dropout_prob_up=(dropout, dropout),
            )
        else:
            vnet = ScaledVNet(in_channels, n_classes, channels[0], dropout)
        # MONAI builds its two upper up-transitions with a fixed 0.5 channel dropout on the skip connection,
        # whatever the arguments: train.dropout is the one dropout rate of every layer.
        for layer in vnet.modules():
            if isinstance(layer, nn.Dropout3d):
                layer.p = dropout
        return with_instance_norm(vnet) if cfg.get("norm", "batch") == "instance" else vnet
    if name == "unet":
        return nets.UNet(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=n_classes,
            channels=channels,
            strides=(2,) * (len(channels) - 1),
            num_res_units=int(cfg.get("num_res_units", 2)),
            norm=norm,
            dropout=dropout,
        )
    if name == "dynunet":
        return dynunet(3, channels, in_channels, n_classes, norm, dropout, int(cfg.get("deep_supervision", 0)))
    if name == "segresnet":
        return segresnet(3, channels, in_channels, n_classes, dropout)
    raise ValueError(
        f"train.model {name!r} is not a 3D model; with train.dims 3 choose vnet, unet, dynunet or segresnet"
    )


def dynunet(spatial_dims: int, channels, in_channels: int, n_classes: int, norm, dropout: float, heads: int = 0):
    """MONAI's DynUNet (nnU-Net's U-Net: 3x3 convolutions, leaky ReLU, strided downsampling, residual blocks as in
    nnU-Net's residual-encoder plans), 2D or 3D, one level per ``channels`` entry.

    ``heads`` > 0 adds that many deep-supervision outputs below full resolution (``train.deep_supervision``).
    In training mode the network then returns (N, 1 + heads, C, ...) with every head upsampled to the input size
    (segflow.losses.DeepSupervisionLoss weighs them); in eval mode it returns the full-resolution output only, so
    validation and inference are unchanged."""
    from monai.networks import nets

    levels = len(channels)
    if heads > levels - 2:
        raise ValueError(f"train.deep_supervision {heads} needs at least {heads + 2} levels in train.channels")
    return nets.DynUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=n_classes,
        kernel_size=[3] * levels,
        strides=[1] + [2] * (levels - 1),
        upsample_kernel_size=[2] * (levels - 1),
        filters=list(channels),
        dropout=dropout or None,
        norm_name=norm,
        res_block=True,
        deep_supervision=heads > 0,
        deep_supr_num=max(heads, 1),
    )


def with_instance_norm(network: nn.Module) -> nn.Module:
    """``network`` with every BatchNorm3d replaced by an affine InstanceNorm3d of the same width (``train.norm:
    instance`` for MONAI's VNet, which hard-codes batch norm). With the batch of 2 patches that fits a 3D step,
    batch statistics come from a handful of patches; instance norm keeps none. On the synthetic organ phantoms
    batch norm still won (docs/training.md), so the flare22 preset keeps it."""
    for name, child in network.named_children():
        if isinstance(child, nn.BatchNorm3d):
            setattr(network, name, nn.InstanceNorm3d(child.num_features, eps=child.eps, affine=True))
        else:
            with_instance_norm(child)
    return network


class ScaledVNet(nn.Module):
    """MONAI's VNet topology (5x5x5 convolutions, residual stages of 1, 2, 3, 2 convolutions, PReLU/ELU) at base width
    ``width`` instead of 16, built from MONAI's own VNet blocks."""

    def __init__(self, in_channels: int, out_channels: int, width: int, dropout: float = 0.0):
        super().__init__()
        from monai.networks.nets.vnet import DownTransition, InputTransition, OutputTransition, UpTransition

        w = width
        act = ("elu", {"inplace": True})
        self.in_tr = InputTransition(3, in_channels, w, act)
        self.down_tr32 = DownTransition(3, w, 1, act)
        self.down_tr64 = DownTransition(3, 2 * w, 2, act)
        self.down_tr128 = DownTransition(3, 4 * w, 3, act, dropout_prob=dropout)
        self.down_tr256 = DownTransition(3, 8 * w, 2, act, dropout_prob=dropout)
        self.up_tr256 = UpTransition(3, 16 * w, 16 * w, 2, act, dropout_prob=(dropout, dropout))
        self.up_tr128 = UpTransition(3, 16 * w, 8 * w, 2, act, dropout_prob=(dropout, dropout))
        self.up_tr64 = UpTransition(3, 8 * w, 4 * w, 1, act)
        self.up_tr32 = UpTransition(3, 4 * w, 2 * w, 1, act)
        self.out_tr = OutputTransition(3, 2 * w, out_channels, act)

    def forward(self, x):
        out16 = self.in_tr(x)
        out32 = self.down_tr32(out16)
        out64 = self.down_tr64(out32)
        out128 = self.down_tr128(out64)
        out256 = self.down_tr256(out128)
        x = self.up_tr256(out256, out128)
        x = self.up_tr128(x, out64)
        x = self.up_tr64(x, out32)
        x = self.up_tr32(x, out16)
        return self.out_tr(x)


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ in 2D: residual encoder, ASPP on the deepest stage, V3+ decoder on the stride-4 features."""

    def __init__(self, in_channels: int, n_classes: int, channels: tuple[int, ...], norm, dropout: float = 0.0):
        super().__init__()
        from monai.networks.blocks import Convolution, ResidualUnit, SimpleASPP

        if len(channels) < 3:
            raise ValueError("train.channels needs at least 3 levels for deeplabv3plus (stride-4 features and ASPP)")
        stages, previous = [], in_channels
        for width in channels:
            stages.append(ResidualUnit(2, previous, width, strides=2, subunits=2, norm=norm, dropout=dropout or None))
            previous = width
        self.stages = nn.ModuleList(stages)
        decoder = max(2 * channels[1], 32)
        self.aspp = SimpleASPP(2, channels[-1], decoder // 4, norm_type=norm)  # 4 branches, decoder channels out
        self.aspp_project = Convolution(2, decoder, decoder, kernel_size=1, norm=norm, act="relu")
        self.low_project = Convolution(2, channels[1], max(channels[0], 8), kernel_size=1, norm=norm, act="relu")
        self.fuse = nn.Sequential(
            Convolution(2, decoder + max(channels[0], 8), decoder, kernel_size=3, norm=norm, act="relu"),
            Convolution(2, decoder, decoder, kernel_size=3, norm=norm, act="relu"),
        )
        self.head = nn.Conv2d(decoder, n_classes, kernel_size=1)

    def forward(self, x):
        size = x.shape[2:]
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        low = self.low_project(features[1])  # stride 4
        deep = self.aspp_project(self.aspp(features[-1]))
        deep = F.interpolate(deep, size=low.shape[2:], mode="bilinear", align_corners=False)
        out = self.head(self.fuse(torch.cat([deep, low], dim=1)))
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False)


def segresnet(spatial_dims: int, channels, in_channels: int, n_classes: int, dropout: float) -> nn.Module:
    """MONAI's SegResNet with ``len(channels)`` levels from ``channels[0]`` filters, 2D or 3D. It normalises with
    groups (independent of the batch, like instance norm), so train.norm is moot."""
    from monai.networks import nets

    depth = len(channels)
    return nets.SegResNet(
        spatial_dims=spatial_dims,
        init_filters=channels[0],
        in_channels=in_channels,
        out_channels=n_classes,
        blocks_down=(1,) + (2,) * (depth - 2) + (4,),
        blocks_up=(1,) * (depth - 1),
        dropout_prob=dropout or None,
        norm=("GROUP", {"num_groups": min(8, channels[0])}),
    )
