"""Device and precision choice for training and inference: which device, which autocast dtype."""

from __future__ import annotations

import contextlib
import os

import torch


class DeviceError(ValueError):
    """A configured device this machine does not have; the one-line message names the key and the machine."""


def pick_device(name: str, key: str = "train.device") -> torch.device:
    """``auto`` takes the GPU when there is one (under SLURM: the GPUs the job was given, via CUDA_VISIBLE_DEVICES).

    A device this machine lacks fails here, at the job's start, with one line naming ``key`` (the job's machine is
    the first place where this can be known: under SLURM the submitting host may have no GPU at all)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(f"{key} {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        import platform

        host = platform.node() or "this machine"
        if not torch.backends.cuda.is_built():
            raise DeviceError(
                f"{key} is {name!r}, but the torch on {host} ({torch.__version__}) was built without CUDA; set {key} "
                "to auto or cpu, or install a CUDA build of torch"
            )
        count = torch.cuda.device_count()
        if count == 0 or (device.index or 0) >= count:
            raise DeviceError(
                f"{key} is {name!r}, but {host} has {count} visible CUDA GPU(s) (CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); set {key} to auto or cpu, or run where a GPU is"
            )
    return device


def amp_dtype_for(device: torch.device, cfg: dict, training: bool = False) -> torch.dtype | None:
    """The autocast dtype, None for full precision.

    On CUDA with ``amp`` on: ``amp_dtype``, except that a GPU without bfloat16 (before Ampere) falls back to
    float16, which then needs loss scaling. On CPU: bfloat16 for ``training`` with ``amp_cpu`` on, where the CPU
    computes bfloat16 natively (``cpu_has_bfloat16``); otherwise, and for inference, full precision."""
    if device.type == "cpu":
        return torch.bfloat16 if training and cfg.get("amp_cpu") and cpu_has_bfloat16() else None
    if device.type != "cuda" or not cfg["amp"]:
        return None
    if cfg["amp_dtype"] == "bfloat16" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def cpu_has_bfloat16() -> bool:
    """AVX512-BF16 or AMX: where a bfloat16 training step beat float32 (benchmarks/train_speed.py; docs/training.md);
    a CPU without them emulates bfloat16 and runs slower than float32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def autocast_for(device: torch.device, dtype: torch.dtype | None):
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)
