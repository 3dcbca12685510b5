"""Training throughput of a segflow model: images per second and seconds per default epoch.

Run by hand (not a test):  .venv/bin/python benchmarks/train_speed.py [--device auto|cpu|cuda] [--sizes 128]
It trains on random slices with the default config's model and loss, through the same autocast / GradScaler /
channels-last path as segflow.train (devices from segflow.device), after a few warm-up steps. On CUDA each
setting is measured in float32 and in mixed precision; on a CPU with native bfloat16, in float32 and in bfloat16
(``train.amp_cpu``). The CPU preset's network: --channels 16,32,64,128,256 --norm instance --res-units 1.
``train_seconds_per_epoch`` is the training part of one default epoch (``samples_per_epoch`` slices); validation
adds about a fifth on the default config.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow_scripts"))

from segflow.device import amp_dtype_for, autocast_for, cpu_has_bfloat16, pick_device  # noqa: E402
from segflow.losses import build_loss  # noqa: E402
from segflow.models import build_model  # noqa: E402


def train_defaults() -> dict:
    """The train section as the default run sees it: schema defaults under config/config.yaml's values (read
    directly: no jsonschema needed on a bare GPU box)."""
    import yaml

    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    properties = schema["properties"]["train"]["properties"]
    defaults = {key: spec["default"] for key, spec in properties.items() if "default" in spec}
    return {**defaults, **yaml.safe_load((REPO / "config" / "config.yaml").read_text())["train"]}


def measure(model_name: str, size: int, batch: int, device: torch.device, amp: str, steps: int, overrides) -> dict:
    """``amp``: "off", "bfloat16" or "float16" (the last with loss scaling, as on GPUs without bfloat16); on CPU
    "bfloat16" is ``train.amp_cpu``. ``overrides``: train keys over the defaults (widths, norm, residual units)."""
    cfg = {**train_defaults(), "model": model_name, **overrides}
    dtype = amp_dtype_for(device, {"amp": amp != "off", "amp_cpu": amp != "off", "amp_dtype": amp}, training=True)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    model = build_model(cfg, 4).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(cfg)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.rand(batch, 1, size, size, device=device)
    labels = torch.randint(0, 4, (batch, 1, size, size), device=device)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)

    def step():
        optimiser.zero_grad(set_to_none=True)
        with autocast_for(device, dtype):
            loss = loss_fn(model(images).float(), labels)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()

    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    # The median is the typical step; the fastest approximates an idle machine (other jobs slow a shared one).
    seconds, best = statistics.median(times), min(times)
    return {
        "model": model_name,
        "device": str(device),
        "precision": str(dtype or torch.float32).removeprefix("torch."),
        "size": size,
        "batch": batch,
        "median_seconds_per_step": round(seconds, 4),
        "images_per_second": round(batch / seconds, 1),
        "best_images_per_second": round(batch / best, 1),
        "train_seconds_per_epoch": round((cfg["samples_per_epoch"] or 0) * seconds / batch, 1),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", default="unet")
    parser.add_argument("--sizes", default="128,256")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--channels", default="", help="comma-separated widths (default: config/config.yaml's)")
    parser.add_argument("--norm", default="", help="batch or instance (default: config/config.yaml's)")
    parser.add_argument("--res-units", type=int, default=None, help="residual units (default: config/config.yaml's)")
    parser.add_argument(
        "--amp",
        default="bfloat16,float16",
        help="mixed-precision variants measured on CUDA; on a CPU with native bfloat16 (train.amp_cpu), bfloat16",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    overrides = {
        **({"channels": [int(c) for c in args.channels.split(",")]} if args.channels else {}),
        **({"norm": args.norm} if args.norm else {}),
        **({"num_res_units": args.res_units} if args.res_units is not None else {}),
    }
    if device.type == "cuda":
        variants = ["off", *args.amp.split(",")]
    else:
        variants = ["off", *(["bfloat16"] if "bfloat16" in args.amp and cpu_has_bfloat16() else [])]
    for model_name in args.models.split(","):
        for size in map(int, args.sizes.split(",")):
            for amp in variants:
                print(json.dumps(measure(model_name, size, args.batch, device, amp, args.steps, overrides)), flush=True)


if __name__ == "__main__":
    main()
