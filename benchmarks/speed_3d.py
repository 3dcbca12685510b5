"""3D throughput of a preset's network: training patches per second and sliding-window seconds per volume.

Run by hand (not a test):
    .venv/bin/python benchmarks/speed_3d.py [--preset config/flare22.yaml] [--device auto|cpu|cuda]
        [--models vnet,dynunet] [--estimate-windows N]

The network, widths, patch size, batch sizes, loss and ``infer.overlap`` are the preset's (config/flare22.yaml by
default: MONAI's VNet at its published widths, patches 64 x 128 x 128, Dice+CE, overlap 0.5), read over the schema's
defaults. Training: ``--steps`` optimiser steps on random patches after ``--warmup`` steps (the median step gives
patches/s, the fastest one approximates an idle machine). Inference: segflow.volumes.sliding_window_probabilities
(MONAI sliding_window_inference, Gaussian blending, the preset's overlap and window batch; softmax and the float16
copy back included) over one random volume shaped as a ``--source-shape`` scan of ``--source-spacing`` mm would be
after resampling to the preset's ``preprocess.spacing`` (512 x 512 x 200 at 0.8 x 0.8 x 2.5 mm -> 200 x 205 x 205 at
2 x 2 x 2.5 mm; the body crop, which usually makes it smaller, is left out). ``--estimate-windows N`` times only N
windows batches and scales to the volume's window count (for a CPU, where a whole volume takes many minutes); the
output then says ``"sliding_window": "estimated"``. On CUDA each setting is measured in float32 and bfloat16.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow_scripts"))

from segflow.device import autocast_for, pick_device  # noqa: E402
from segflow.losses import build_loss  # noqa: E402
from segflow.networks import build_network  # noqa: E402
from segflow.volumes import sliding_window_probabilities  # noqa: E402


def preset_sections(preset: Path) -> tuple[dict, dict, dict, int]:
    """(train, infer, preprocess, classes) of the preset over the schema defaults and config/config.yaml (read
    directly: no jsonschema needed on a bare GPU box)."""
    import yaml

    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())["properties"]
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    over = yaml.safe_load(preset.read_text())
    sections = []
    for name in ("train", "infer", "preprocess"):
        defaults = {k: s["default"] for k, s in schema[name].get("properties", {}).items() if "default" in s}
        sections.append({**defaults, **(base.get(name) or {}), **(over.get(name) or {})})
    labels = (over.get("score") or {}).get("labels") or {}
    return (*sections, 1 + len(labels) if labels else 4)


def resampled_shape(source_shape, source_spacing, target_spacing) -> tuple[int, int, int]:
    """(Z, H, W) of an (x, y, z) scan after resampling from ``source_spacing`` to ``target_spacing`` (mm, x y z)."""
    x, y, z = (round(n * s / t) for n, s, t in zip(source_shape, source_spacing, target_spacing))
    return z, y, x


def window_count(shape, roi, overlap: float) -> int:
    """Windows MONAI's sliding_window_inference visits (its scan interval: int(roi * (1 - overlap)), at least 1)."""
    total = 1
    for size, r in zip(shape, roi):
        size = max(size, r)
        interval = max(int(r * (1 - overlap)), 1)
        total *= 1 if size == r else math.ceil((size - r) / interval) + 1
    return total


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_training(cfg, n_classes, device, dtype, warmup: int, steps: int) -> dict:
    model = build_network(cfg, n_classes).to(device).train()
    loss_fn = build_loss(cfg)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch, patch = int(cfg["batch_size"]), [int(p) for p in cfg["patch_size"]]
    images = torch.rand(batch, 1, *patch, device=device)
    labels = torch.randint(0, n_classes, (batch, 1, *patch), device=device)

    def step():
        optimiser.zero_grad(set_to_none=True)
        with autocast_for(device, dtype):
            loss = loss_fn(model(images).float(), labels)
        loss.backward()
        optimiser.step()

    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - started)
    seconds, best = statistics.median(times), min(times)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "median_seconds_per_step": round(seconds, 3),
        "patches_per_second": round(batch / seconds, 3),
        "best_patches_per_second": round(batch / best, 3),
        "train_seconds_per_epoch": round((cfg["samples_per_epoch"] or 0) * seconds / batch, 1),
    }, model


def measure_inference(model, shape, cfg, infer, device, dtype, estimate_windows: int) -> dict:
    model.eval()
    patch = [int(p) for p in cfg["patch_size"]]
    overlap, batch = float(infer["overlap"]), int(infer["batch_size"])
    windows = window_count(shape, patch, overlap)
    result = {"volume_zhw": list(shape), "overlap": overlap, "window_batch": batch, "windows": windows}
    with torch.no_grad(), autocast_for(device, dtype):
        predictor = lambda x: model(x).float()  # noqa: E731
        if estimate_windows:
            patches = torch.rand(batch, 1, *patch, device=device)
            predictor(patches)  # warm-up
            _sync(device)
            started = time.perf_counter()
            for _ in range(estimate_windows):
                predictor(patches)
            _sync(device)
            per_window = (time.perf_counter() - started) / (estimate_windows * batch)
            return {**result, "sliding_window": "estimated", "seconds_per_window": round(per_window, 3),
                    "seconds_per_volume": round(per_window * windows, 1)}  # fmt: skip
        volume = torch.rand(*shape).numpy()
        sliding_window_probabilities([predictor], volume[:16], patch, overlap, batch, device)  # warm-up
        _sync(device)
        started = time.perf_counter()
        sliding_window_probabilities([predictor], volume, patch, overlap, batch, device)
        _sync(device)
        seconds = time.perf_counter() - started
    return {**result, "sliding_window": "measured", "seconds_per_window": round(seconds / windows, 3),
            "seconds_per_volume": round(seconds, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", type=Path, default=REPO / "config" / "flare22.yaml")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", default="vnet", help="comma-separated 3D models (vnet, unet, dynunet, segresnet)")
    parser.add_argument("--channels", default="", help="comma-separated widths (default: the preset's)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--source-shape", default="512,512,200", help="x,y,z voxels of the scan before resampling")
    parser.add_argument("--source-spacing", default="0.8,0.8,2.5", help="x,y,z mm (a typical FLARE22 case)")
    parser.add_argument("--estimate-windows", type=int, default=0, help="time only N window batches (0: all)")
    parser.add_argument("--no-inference", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    train, infer, preprocess, n_classes = preset_sections(args.preset)
    shape = resampled_shape(
        [int(v) for v in args.source_shape.split(",")],
        [float(v) for v in args.source_spacing.split(",")],
        [float(v) for v in preprocess["spacing"]],
    )
    for model_name in args.models.split(","):
        cfg = {**train, "model": model_name, "dims": 3}
        if args.channels:
            cfg["channels"] = [int(c) for c in args.channels.split(",")]
        for dtype in [None, torch.bfloat16] if device.type == "cuda" else [None]:
            row = {
                "preset": args.preset.name,
                "model": model_name,
                "channels": list(cfg["channels"]),
                "device": str(device),
                "precision": str(dtype or torch.float32).removeprefix("torch."),
                "patch": list(cfg["patch_size"]),
                "batch": int(cfg["batch_size"]),
                "threads": torch.get_num_threads(),
            }
            training, model = measure_training(cfg, n_classes, device, dtype, args.warmup, args.steps)
            row.update(training)
            if not args.no_inference:
                row.update(measure_inference(model, shape, cfg, infer, device, dtype, args.estimate_windows))
            line = json.dumps(row)
            print(line, flush=True)
            if args.out:
                with args.out.open("a") as handle:
                    handle.write(line + "\n")
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
