"""Segmentation networks by name, all from MONAI, all 2D (slices).

``train.channels`` sets the width per level and its length sets the depth, for every model that has levels
(``efficientnet_unet`` takes its encoder from the backbone and uses ``channels`` for the decoder).
``train.context_slices`` (k, odd) is the number of input channels: the slice and its (k - 1) / 2 neighbours on
each side (2.5D). ``train.norm`` chooses batch or instance normalisation where the network lets us choose.
"""

from __future__ import annotations

import torch

from segflow.networks import NORMS, build_network, dynunet, segresnet

MODELS = (
    "unet",
    "dynunet",
    "attention_unet",
    "unetpp",
    "efficientnet_unet",
    "segresnet",
    "deeplabv3plus",
)  # 2D; 3D: networks
# What a checkpoint records to rebuild its network (segflow.checkpoints.save_checkpoint writes these from the config).
MODEL_KEYS = (
    "model",
    "channels",
    "num_res_units",
    "dropout",
    "backbone",
    "norm",
    "context_slices",
    "dims",
    "patch_size",
    "window_overlap",
    "deep_supervision",
)


class FirstOutput(torch.nn.Module):
    """BasicUNetPlusPlus returns a list of outputs (deep supervision heads); training uses the full-resolution one."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)[0]


class SlidingWindow(torch.nn.Module):
    """Whole-slice logits of a network trained on crops, as the mean of overlapping crop-sized windows weighted by a
    Gaussian (nnU-Net's and MONAI's sliding-window inference).

    A network trained on crops and applied to a whole slice sees a field it never saw in training; with instance
    norm its feature statistics change too (a crop around a kidney holds far less air and fat than the slice). The
    windows give it inputs of the size it was trained on. In training mode, or when the input is one window, the
    network runs as it is; a slice smaller than a window (a case on its own grid) is padded to one.
    """

    # 32 windows a forward pass: 0.184 s a 512 x 512 slice in 128 x 128 windows on two AVX2 cores against 0.198-0.225
    # s with 16, the same logits to the bit (64: 0.186 s; 98: 0.207 s); docs/training.md.
    def __init__(self, net: torch.nn.Module, patch_size, overlap: float, windows_per_batch: int = 32):
        super().__init__()
        self.net = net
        self.patch_size = tuple(int(p) for p in patch_size)
        self.overlap = float(overlap)
        self.windows_per_batch = windows_per_batch

    def forward(self, x):
        if self.training or tuple(x.shape[2:]) == self.patch_size:
            return self.net(x)
        from monai.inferers import sliding_window_inference

        logits = sliding_window_inference(
            x, self.patch_size, self.windows_per_batch, self.net, overlap=self.overlap, mode="gaussian"
        )
        return logits.as_tensor() if hasattr(logits, "as_tensor") else logits


def for_whole_slices(net: torch.nn.Module, model_cfg: dict) -> torch.nn.Module:
    """The network as validation and inference apply it to whole slices: in sliding windows of the training crop
    when it trained on crops and ``window_overlap`` is set (else, and for older checkpoints, as it is)."""
    patch, overlap = model_cfg.get("patch_size"), model_cfg.get("window_overlap")
    if not patch or overlap is None or int(model_cfg.get("dims", 2)) == 3:  # 3D: segflow.volumes has its own windows
        return net
    return SlidingWindow(net, patch, overlap)


def build_model(cfg: dict, n_classes: int) -> torch.nn.Module:
    """Build ``cfg['model']`` with ``n_classes`` output channels (background included)."""
    from monai.networks import nets

    name = cfg["model"]
    if cfg.get("dims", 2) == 3 or name == "deeplabv3plus":  # checkpoints from before train.dims are 2D
        return build_network(cfg, n_classes)
    channels = tuple(int(c) for c in cfg["channels"])
    strides = (2,) * (len(channels) - 1)
    dropout = float(cfg.get("dropout", 0.0))
    # Checkpoints written before these keys existed were 1-channel batch-norm networks.
    in_channels = int(cfg.get("context_slices", 1))
    norm = NORMS[cfg.get("norm", "batch")]
    if name == "unet":
        return nets.UNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=n_classes,
            channels=channels,
            strides=strides,
            num_res_units=int(cfg.get("num_res_units", 2)),
            norm=norm,
            dropout=dropout,
        )
    if name == "dynunet":
        return dynunet(2, channels, in_channels, n_classes, norm, dropout, int(cfg.get("deep_supervision", 0)))
    if name == "attention_unet":
        if norm[0] != "batch":
            raise ValueError("train.model attention_unet has batch normalisation only; set train.norm: batch")
        return nets.AttentionUnet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=n_classes,
            channels=channels,
            strides=strides,
            dropout=dropout,
        )
    if name == "unetpp":
        # BasicUNetPlusPlus has a fixed depth of five levels plus the output width.
        features = _five_levels(channels) + (channels[0],)
        return FirstOutput(
            nets.BasicUNetPlusPlus(
                spatial_dims=2,
                in_channels=in_channels,
                out_channels=n_classes,
                features=features,
                dropout=dropout,
                norm=norm,
            )
        )
    if name == "efficientnet_unet":
        # Weights are never downloaded (pretrained=False): runs offline; use train.init_checkpoint for warm starts.
        decoder = _five_levels(tuple(reversed(channels)))
        return nets.FlexibleUNet(
            in_channels=in_channels,
            out_channels=n_classes,
            backbone=f"efficientnet-{cfg.get('backbone', 'b0')}",
            pretrained=False,
            decoder_channels=decoder,
            spatial_dims=2,
            dropout=dropout,
            norm=norm,
        )
    if name == "segresnet":
        return segresnet(2, channels, in_channels, n_classes, dropout)
    raise ValueError(f"unknown train.model {name!r}; choose one of {', '.join(MODELS)}")


def _five_levels(channels: tuple[int, ...]) -> tuple[int, ...]:
    """Stretch or cut a channel list to the five levels some MONAI networks require."""
    levels = list(channels[:5])
    while len(levels) < 5:
        levels.append(levels[-1] * 2 if levels[-1] >= levels[0] else max(levels[-1] // 2, 4))
    return tuple(levels)


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the model; the one-line message names the config key and the file."""


def load_weights(model: torch.nn.Module, checkpoint_path, key: str | None = None) -> dict:
    """Load a checkpoint written by segflow training into ``model``; return the checkpoint dictionary.

    ``key`` names the config key the path came from, for the one-line error when the file is no segflow checkpoint
    or holds the weights of another architecture (instead of an unpickling error or a page of state_dict keys)."""
    where = f"{key} {checkpoint_path}" if key else str(checkpoint_path)
    try:
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    except Exception as error:  # unpickling, zip and I/O errors alike
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CheckpointError(f"{where} is not a segflow checkpoint ({type(error).__name__}: {first_line})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise CheckpointError(f"{where} is not a segflow checkpoint (it holds no 'model' weights)")
    problem = _state_dict_mismatch(model.state_dict(), checkpoint["model"])
    if problem:
        raise CheckpointError(
            f"{where} holds weights of another architecture ({problem}; checkpoint built with "
            f"{checkpoint.get('model_cfg')}); point {key or 'it'} at a checkpoint of this model or set train.model/"
            "channels to the checkpoint's"
        )
    model.load_state_dict(checkpoint["model"])
    return checkpoint


def _state_dict_mismatch(expected: dict, found: dict) -> str:
    """'' when ``found`` fits ``expected`` (same names and shapes), else counts and the first example, in words."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [k for k in expected if k in found and tuple(expected[k].shape) != tuple(getattr(found[k], "shape", ()))]
    parts = [f"{len(names)} {what}, e.g. {names[0]}" for what, names in
             (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)) if names]  # fmt: skip
    return "; ".join(parts)


def class_labels(logits: torch.Tensor) -> torch.Tensor:
    """argmax over the class axis of (N, C, H, W) logits (first maximum on ties). With the class axis moved last
    it is several times faster on CPU than ``argmax(1)``."""
    return logits.movedim(1, -1).contiguous().argmax(-1)
