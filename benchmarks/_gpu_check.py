"""Temporary: exercise segflow.train's CUDA path (bf16 and fp16+GradScaler, channels-last, resume) on a GPU box."""
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, "workflow_scripts")
import segflow.train as T  # noqa: E402
from segflow.io import write_json  # noqa: E402

logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
root = Path("/tmp/gpucheck")
schema = yaml.safe_load(Path("config/schema.yaml").read_text())["properties"]["train"]["properties"]
cfg = {k: v["default"] for k, v in schema.items() if "default" in v}
cfg["augment"] = {k: v["default"] for k, v in schema["augment"]["properties"].items()}
cfg.update(channels=[16, 32, 64, 128], epochs=3, samples_per_epoch=64, batch_size=16, device="cuda", holdout_fraction=0.2)


def case(i):
    d = root / "cases" / f"c{i}"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[:64, :64]
    img = (rng.random((12, 64, 64)) * 0.2).astype(np.float32)
    lab = np.zeros((12, 64, 64), np.uint8)
    for k in range(3, 9):
        kidney, tumour = (yy - 30 - i) ** 2 + (xx - 28) ** 2 < 100, (yy - 30 - i) ** 2 + (xx - 28) ** 2 < 16
        lab[k][kidney], img[k][kidney] = 1, 0.7
        lab[k][tumour], img[k][tumour] = 2, 0.45
    np.save(d / "image.npy", img), np.save(d / "label.npy", lab), write_json(d / "meta.json", {"format": "npy"})
    return d


def outs(name):
    f = root / name
    return T.RoundOutputs(*(f / n for n in ["model_best.pt", "model_last.pt", "metrics.csv", "split.json", "curves.png"]))


dirs = {f"c{i}": case(i) for i in range(6)}
patients = {c: c for c in dirs}
print("GPU", torch.cuda.get_device_name(), "bf16", torch.cuda.is_bf16_supported(), "torch", torch.__version__)
t = time.time()
m0 = T.train_round(dirs, patients, 0, cfg, 1, outs("r0"), threads=4)
print(m0.to_string(), f"\nbf16 round: {time.time() - t:.1f} s")

# fp16 + GradScaler, starting from r0 with hard-slice oversampling; crash in epoch 2, then resume.
cfg16 = {**cfg, "amp_dtype": "float16", "hard_slice_boost": 1.0}
run_epoch = T._run_epoch
T._run_epoch = lambda s, e: (_ for _ in ()).throw(RuntimeError("crash")) if e == 2 else run_epoch(s, e)
try:
    T.train_round(dirs, patients, 1, cfg16, 1, outs("r1"), init_checkpoint=outs("r0").model_best, threads=4)
except RuntimeError as error:
    print("interrupted:", error, "state on disk:", outs("r1").resume_state.exists())
T._run_epoch = run_epoch
m1 = T.train_round(dirs, patients, 1, cfg16, 1, outs("r1"), init_checkpoint=outs("r0").model_best, threads=4)
last = torch.load(outs("r1").model_last, weights_only=False)
print(m1.to_string(), "\nfp16 scaler state:", last["scaler"])
holdout = T.evaluate_on_holdout([outs("r0").model_best, outs("r1").model_best], [dirs["c1"]], cfg)
choice = T.select_best_round([outs("r0").metrics, outs("r1").metrics], [outs("r0").model_best, outs("r1").model_best], holdout)
print(choice["table"].to_string())
again = T.train_round(dirs, patients, 0, cfg, 1, outs("again"), threads=4)
cols = [c for c in m0.columns if c != "seconds"]
print("GPU run-to-run identical metrics:", again[cols].equals(m0[cols]))
