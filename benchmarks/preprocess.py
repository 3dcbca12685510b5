"""Preprocessing time and peak memory on full-size CT: segflow, the seed's MONAI chain, and just reading the file.

Run by hand (not a test):
    .venv/bin/python benchmarks/preprocess.py [--cases kits:150 kits:600 lps:300] [--repeats 3] [--size 256]

It first writes realistic full-size cases under --workdir (default /tmp/segflow-bench, never the repository):
512x512xN int16 HU volumes upsampled from a synthetic phantom with fresh CT-like noise, so they compress like
real scans, plus their labels. ``kits`` cases are stored the way KiTS stores them, (z, y, x) with an I-P-L
affine (slices innermost in the file); ``lps`` cases the way dcm2niix writes DICOM series (slices outermost);
``kits-f64`` is ``kits`` stored as float64 instead of int16.
Then, for each case, it times in a fresh subprocess per measurement (so each peak RSS is that method's own):

    read         nibabel load + np.asarray of the image and the segmentation (the unavoidable cost: inflating)
    segflow-npy  segflow.preprocess.preprocess_case, NPY output (the default)
    segflow-png  the same with PNG output
    seed-png     the seed's way: the MONAI dictionary Compose over the whole volume (LoadImaged,
                 EnsureChannelFirstd, Orientationd, CropForegroundd, ScaleIntensityRanged, gamma, Resized), then
                 one PNG per slice with PIL (tests/seed_chain.py seed_preprocess + segflow.cases.write_png_slices)

Times (wall clock and CPU: the machine may be shared) are the minimum over --repeats runs, the methods
interleaved; peak memory is the peak resident size after the work minus that after the imports (VmHWM), in MiB,
also as a multiple of the volume's float32 size. torch runs on --threads threads (the rule's default: 1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "workflow_scripts"), str(REPO / "tests")]

METHODS = ["read", "segflow-npy", "segflow-png", "seed-png"]


def write_case(folder: Path, layout: str, n_slices: int, matrix: int = 512, seed: int = 42) -> None:
    """A full-size case from a 128-matrix phantom, upsampled, with new noise; KiTS or dcm2niix axis order."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from segflow.io import save_nifti
    from segflow.sources.synthetic import make_phantom

    image, label, affine = make_phantom("synth_001", seed, matrix=128, slices=(150, 150))  # (x, y, z), L-P-S
    spacing = [abs(affine[0, 0]) * image.shape[0] / matrix, abs(affine[1, 1]) * image.shape[1] / matrix]
    spacing.append(affine[2, 2] * image.shape[2] / n_slices)
    size = (matrix, matrix, n_slices)
    hu = F.interpolate(torch.from_numpy(image.astype(np.float32))[None, None], size=size, mode="trilinear")[0, 0]
    labels = F.interpolate(torch.from_numpy(label)[None, None].float(), size=size, mode="nearest-exact")[0, 0]
    rng = np.random.default_rng(seed)
    hu = hu.numpy()
    for z in range(n_slices):  # in place, a slice at a time: the phantom's own noise was smoothed away
        hu[..., z] += rng.normal(0, 15, (matrix, matrix)).astype(np.float32)
    hu = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    labels = labels.numpy().astype(np.uint8)
    lps = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    lps[:3, 3] = [0.5 * matrix * spacing[0], 0.5 * matrix * spacing[1], -0.5 * n_slices * spacing[2]]
    if layout.startswith("kits"):  # (z, y, x), index 0 toward inferior: I-P-L
        hu, labels = hu.transpose(2, 1, 0)[::-1], labels.transpose(2, 1, 0)[::-1]
        affine = np.zeros((4, 4))
        affine[:3, 0], affine[:3, 1], affine[:3, 2] = -lps[:3, 2], lps[:3, 1], lps[:3, 0]
        affine[:3, 3] = lps[:3, 3] + lps[:3, 2] * (n_slices - 1)
        affine[3, 3] = 1.0
    else:
        affine = lps
    if layout.endswith("-f64"):  # some conversions store CT as float64: 4x the bytes to inflate
        hu = hu.astype(np.float64)
    folder.mkdir(parents=True, exist_ok=True)
    save_nifti(folder / "imaging.nii.gz", np.ascontiguousarray(hu), affine)
    save_nifti(folder / "segmentation.nii.gz", np.ascontiguousarray(labels), affine)


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM). Not ru_maxrss: Linux carries that over from the parent
    across fork and exec, so a worker started by a big parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(method: str, case: Path, size: int, threads: int) -> dict:
    """Run one method once in this (fresh) process: seconds and peak RSS growth over the imports."""
    import monai.data.utils  # noqa: F401  (imported up front: import time is not processing time)
    import monai.transforms  # noqa: F401
    import nibabel as nib
    import numpy as np
    import PIL.Image  # noqa: F401
    import torch
    from helpers import config_with_defaults  # tests/: the schema's defaults and the seed's reference chain
    from seed_chain import seed_preprocess

    from segflow.cases import write_png_slices
    from segflow.preprocess import preprocess_case

    torch.set_num_threads(threads)
    cfg = {**config_with_defaults()["preprocess"], "size": [size, size]}
    image, label = case / "imaging.nii.gz", case / "segmentation.nii.gz"
    out = Path(tempfile.mkdtemp(prefix="segflow-bench-out-"))
    base = peak_rss_mib()
    start, cpu_start = time.perf_counter(), time.process_time()
    if method == "read":
        held = [np.asarray(nib.load(str(path)).dataobj) for path in (image, label)]  # noqa: F841 (counted)
    elif method.startswith("segflow-"):
        preprocess_case(image, label, out / "case", {**cfg, "format": method.split("-")[1]})
    elif method == "seed-png":
        stack, labels = seed_preprocess(image, label, cfg)
        write_png_slices(out, stack, labels)
    else:
        raise ValueError(method)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = peak_rss_mib()
    shutil.rmtree(out)
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_mib": peak - base, "base_mib": base}


def machine() -> dict:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), platform.processor())
    import monai
    import torch

    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=["kits:150", "kits:600", "lps:300"], help="layout:slices")
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=256, help="in-plane output size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "segflow-bench")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--measure", nargs=2, metavar=("METHOD", "CASE_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], Path(args.measure[1]), args.size, args.threads)))
        return

    rows = []
    print(json.dumps(machine()))
    for spec in args.cases:
        layout, n_slices = spec.split(":")
        case = args.workdir / f"{layout}_{n_slices}"
        if not (case / "segmentation.nii.gz").exists():
            print(f"writing {case} ...", file=sys.stderr)
            write_case(case, layout, int(n_slices))
        # Methods interleaved within each repeat, so that load from other processes hits them alike.
        runs = {method: [] for method in args.methods}
        for _ in range(args.repeats):
            for method in args.methods:
                runs[method].append(_run_worker(method, case, args))
                print(method, json.dumps(runs[method][-1]), file=sys.stderr)
        for method, results in runs.items():
            rows.append(
                {
                    "case": case.name,
                    "slices": int(n_slices),
                    "method": method,
                    **{key: min(r[key] for r in results) for key in ("seconds", "cpu_seconds")},
                    "peak_mib": max(r["peak_mib"] for r in results),
                }
            )
    print(_table(rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "command": sys.argv, "rows": rows}, indent=2))


def _run_worker(method: str, case: Path, args) -> dict:
    command = [
        sys.executable,
        __file__,
        "--measure",
        method,
        str(case),
        "--size",
        str(args.size),
        "--threads",
        str(args.threads),
    ]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _table(rows: list[dict]) -> str:
    """Markdown: time as a multiple of reading the files, speed-up over the seed's chain, peak memory."""
    by = {(r["case"], r["method"]): r for r in rows}
    lines = [
        "| case | method | wall s | CPU s | CPU x read | seed CPU / this | peak MiB | peak / float32 volume |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        read, seed = by.get((r["case"], "read")), by.get((r["case"], "seed-png"))
        vs_read = f"{r['cpu_seconds'] / read['cpu_seconds']:.2f}" if read else "-"
        vs_seed = f"{seed['cpu_seconds'] / r['cpu_seconds']:.1f}" if seed else "-"
        float32_mib = 512 * 512 * r["slices"] * 4 / 2**20
        lines.append(
            f"| {r['case']} | {r['method']} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {vs_read} | {vs_seed} "
            f"| {r['peak_mib']:.0f} "
            f"| {r['peak_mib'] / float32_mib:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
