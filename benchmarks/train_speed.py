"""Training throughput of a segflow model: images per second and seconds per default epoch.

Run by hand (not a test):  .venv/bin/python benchmarks/train_speed.py [--device auto|cpu|cuda] [--size 128]
It trains on random slices with the configured model and loss, through the same autocast/channels-last path as
segflow.train, after a few warm-up steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow_scripts"))

from segflow.losses import build_loss  # noqa: E402
from segflow.models import build_model  # noqa: E402
from segflow.train import autocast_for, pick_device  # noqa: E402


def train_defaults() -> dict:
    """The schema's defaults for the train section (read directly: no jsonschema needed on a bare GPU box)."""
    import yaml

    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    properties = schema["properties"]["train"]["properties"]
    return {key: spec["default"] for key, spec in properties.items() if "default" in spec}


def measure(model_name: str, size: int, batch: int, device: torch.device, amp: bool, steps: int, channels) -> dict:
    cfg = {**train_defaults(), "model": model_name, **({"channels": channels} if channels else {})}
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
        with autocast_for(device, amp):
            loss = loss_fn(model(images).float(), labels)
        loss.backward()
        optimiser.step()

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    return {
        "model": model_name, "device": str(device), "amp": amp and device.type == "cuda", "size": size, "batch": batch,
        "seconds_per_step": round(seconds, 4), "images_per_second": round(batch / seconds, 1),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", default="unet")
    parser.add_argument("--sizes", default="128,256")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--channels", default="16,32,64,128", help="the default config's widths; '' for the schema's")
    args = parser.parse_args()
    device = pick_device(args.device)
    channels = [int(c) for c in args.channels.split(",")] if args.channels else None
    for model_name in args.models.split(","):
        for size in map(int, args.sizes.split(",")):
            for amp in ([False, True] if device.type == "cuda" else [False]):
                print(json.dumps(measure(model_name, size, args.batch, device, amp, args.steps, channels)), flush=True)


if __name__ == "__main__":
    main()
