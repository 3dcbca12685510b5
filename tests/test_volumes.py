"""The 3D path (train.dims 3): volumes kept on their resampled grid with an exact way back, label-balanced patch
training with the 3D models, sliding-window prediction on the original grid, and resume after SIGKILL."""

import json
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import config_with_defaults

from segflow.cases import load_case
from segflow.config_checks import check_config
from segflow.io import save_nifti
from segflow.models import build_model
from segflow.predict import predict_case
from segflow.preflight import ConfigError
from segflow.preprocess import preprocess_case
from segflow.restore import restore_labels
from segflow.sources.organs import make_organ_phantom
from segflow.train import RoundOutputs, train_round

ORGANS = ("liver", "right_kidney", "spleen", "left_kidney")
CONFIG = config_with_defaults({
    "preprocess": {"size": None, "spacing": [8.0, 8.0, 8.0], "crop_margin": 1},
    "train": {
        "dims": 3, "model": "vnet", "channels": [4, 8], "patch_size": [16, 16, 16], "epochs": 2, "batch_size": 2,
        "samples_per_epoch": 4, "lr": 0.003, "val_fraction": 0.5, "holdout_fraction": 0.0, "device": "cpu",
    },
    "infer": {"device": "cpu", "batch_size": 2, "overlap": 0.25},
})  # fmt: skip
DRIVER = Path(__file__).with_name("train_driver.py")


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def write_organ_case(folder: Path, case_id: str, matrix=48, slices=(12, 16), organs=ORGANS):
    image, label, affine = make_organ_phantom(case_id, 3, matrix, slices, organs, "ct")
    save_nifti(folder / "imaging.nii.gz", image, affine)
    save_nifti(folder / "segmentation.nii.gz", label, affine)
    return folder / "imaging.nii.gz", folder / "segmentation.nii.gz"


@pytest.mark.parametrize("spacing", [None, [2.0, 2.0, 2.0]])
def test_volume_way_back_is_exact(tmp_path, spacing):
    image_path, seg_path = write_organ_case(tmp_path / "raw", "synth_001", matrix=64, slices=(24, 32))
    cfg = {**CONFIG["preprocess"], "spacing": spacing}
    meta = preprocess_case(image_path, seg_path, tmp_path / "out", cfg)
    image, labels = load_case(tmp_path / "out")
    assert image.shape == labels.shape == (meta["n_slices"], *meta["size"])  # a whole volume, not resized slices
    if spacing is None:
        assert meta["size"] == meta["cropped_shape"][1:]
    else:
        assert meta["resampling"]["shape"] == [meta["n_slices"], *meta["size"]]
    restored = restore_labels(np.asarray(labels), meta)
    original = nib.load(seg_path)
    truth = np.asarray(original.dataobj)
    assert restored.shape == truth.shape
    assert np.array_equal(np.asarray(meta["original_affine"]), original.affine)
    for value, organ in enumerate(ORGANS, start=1):
        assert (truth == value).any(), organ
        score = dice(restored == value, truth == value)
        assert score == 1.0 if spacing is None else score >= 0.99, (organ, score)


def make_volume_cases(tmp_path, n=4, organs=("liver", "spleen", "kidney")):
    dirs = {}
    for i in range(n):
        image, seg = write_organ_case(tmp_path / "raw" / f"v{i}", f"synth_{i:03d}", organs=organs)
        dirs[f"v{i}"] = tmp_path / "pre" / f"v{i}"
        preprocess_case(image, seg, dirs[f"v{i}"], CONFIG["preprocess"])
    return dirs


def outputs_in(folder):
    return RoundOutputs(*(folder / n for n in ["model_best.pt", "model_last.pt", "metrics.csv", "split.json"]))


@pytest.mark.parametrize("model", ["vnet", "unet", "dynunet", "segresnet"])
def test_every_3d_model_takes_a_step_on_patches(model):
    net = build_model({**CONFIG["train"], "model": model, "channels": [4, 8, 16]}, n_classes=5)
    x = torch.rand(2, 1, 16, 32, 32)
    out = net(x)
    assert out.shape == (2, 5, 16, 32, 32)
    out.mean().backward()


def test_patches_from_counted_class_voxels_are_monais_own():
    # segflow.volumes lists only the class each patch centre is drawn from (ClassPixelsd); the patches, two a
    # volume, must be those of MONAI listing every class's voxels of the whole volume itself.
    import copy

    from monai.transforms import Compose

    from segflow.data import untracked_meta
    from segflow.volumes import crop_transform

    rng = np.random.default_rng(1)
    label = np.zeros((1, 20, 40, 36), np.int64)
    label[0, 4:16, 8:30, 6:28], label[0, 8:11, 12:16, 10:13], label[0, 14:16, 20:22, 20:22] = 1, 2, 3
    ours = crop_transform((8, 16, 16), 0.67, 4, num_samples=2)
    monais = copy.deepcopy(ours)
    monais = Compose([t for t in monais.transforms if type(t).__name__ != "ClassPixelsd"])
    monais.transforms[-1].indices_key = None
    ours.set_random_state(seed=2)
    monais.set_random_state(seed=2)
    with untracked_meta():
        for volume_label in [label, np.where(label == 3, 0, label)] * 10:
            sample = {"image": torch.from_numpy(rng.random(label.shape, dtype=np.float32)), "label": volume_label}
            for a, b in zip(ours(dict(sample)), monais(dict(sample)), strict=True):
                assert torch.equal(torch.as_tensor(a["image"]), torch.as_tensor(b["image"]))
                assert torch.equal(torch.as_tensor(a["label"]), torch.as_tensor(b["label"]))


@pytest.mark.parametrize("width", [4, 16])  # ScaledVNet, and MONAI's own VNet at its published width
def test_vnet_follows_train_norm_and_train_dropout(width):
    cfg = {**CONFIG["train"], "channels": [width, 2 * width], "dropout": 0.0}
    batch, instance = (build_model({**cfg, "norm": norm}, n_classes=5) for norm in ("batch", "instance"))
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in batch.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in instance.modules())
    norms = [m for m in instance.modules() if isinstance(m, torch.nn.InstanceNorm3d)]
    assert len(norms) == sum(isinstance(m, torch.nn.BatchNorm3d) for m in batch.modules()) and norms[0].affine
    # No running statistics and no dropout left (MONAI's VNet hard-codes 0.5 on two skips): eval equals training.
    x = torch.rand(1, 1, 16, 32, 32)
    with torch.no_grad():
        evaluated = instance.eval()(x)
        assert torch.allclose(instance.train()(x), evaluated, atol=1e-5)
    dropouts = {
        m.p for m in build_model({**cfg, "dropout": 0.2}, n_classes=5).modules() if isinstance(m, torch.nn.Dropout3d)
    }
    assert dropouts == {0.2}


def test_3d_round_trains_and_predicts_on_the_original_grid(tmp_path):
    dirs = make_volume_cases(tmp_path)
    out = outputs_in(tmp_path / "round")
    metrics = train_round(dirs, {c: c for c in dirs}, 0, CONFIG["train"], 5, out, n_classes=4,
                          class_names={1: "liver", 2: "spleen", 3: "kidney"})  # fmt: skip
    assert {"val_dice_liver", "val_dice_spleen", "val_dice_kidney"} <= set(metrics.columns)
    assert torch.load(out.model_best, weights_only=False)["model_cfg"]["dims"] == 3
    case = tmp_path / "raw" / "v0"
    prediction = tmp_path / "v0.nii.gz"
    predict_case(out.model_best, dirs["v0"], case / "imaging.nii.gz", prediction, CONFIG["infer"])
    saved, raw = nib.load(prediction), nib.load(case / "imaging.nii.gz")
    assert saved.shape == raw.shape and np.array_equal(saved.affine, raw.affine)
    assert set(np.unique(np.asarray(saved.dataobj))) <= {0, 1, 2, 3}


def test_3d_round_killed_with_sigkill_resumes_to_the_same_weights(tmp_path):
    dirs = make_volume_cases(tmp_path, n=3)
    cfg = {**CONFIG["train"], "epochs": 5, "samples_per_epoch": 2}
    interrupted = tmp_path / "interrupted"
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"out": str(interrupted), "cases": {k: str(v) for k, v in dirs.items()}, "train": cfg,
                                "seed": 5}))  # fmt: skip
    process = subprocess.Popen([sys.executable, str(DRIVER), str(args)], stderr=subprocess.PIPE, text=True)
    state = outputs_in(interrupted).resume_state
    deadline = time.time() + 300
    while not state.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.005)
    process.kill()
    process.communicate()
    assert state.exists() and not (interrupted / "model_last.pt").exists(), "the round finished before the kill"
    saved_epoch = torch.load(state, weights_only=False)["epoch"]
    assert saved_epoch < cfg["epochs"] - 1
    train_round(dirs, {c: c for c in dirs}, 0, cfg, 5, outputs_in(interrupted))
    uninterrupted = tmp_path / "uninterrupted"
    train_round(dirs, {c: c for c in dirs}, 0, cfg, 5, outputs_in(uninterrupted))
    for name in ("model_last.pt", "model_best.pt"):
        resumed = torch.load(interrupted / name, weights_only=False)["model"]
        reference = torch.load(uninterrupted / name, weights_only=False)["model"]
        assert all(torch.equal(resumed[k], reference[k]) for k in reference), name


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"train": {"dims": 3, "model": "unetpp"}}, "train.model 'unetpp' is a 2D model but train.dims is 3"),
        ({"train": {"model": "vnet"}}, "train.model 'vnet' is a 3D model but train.dims is 2"),
        ({"train": {"dims": 3, "model": "vnet", "patch_size": [32, 32, 32]}}, "preprocess.size"),
        ({"train": {"dims": 3, "model": "vnet"}, "preprocess": {"size": None}}, "train.patch_size needs 3 values"),
        ({"modality": "mri", "selection": {"hu_max": None}}, "selection.hu_min is -1024 HU, but modality is mri"),
        (
            {"score": {"labels": {"kidney": 1, "liver": 7}}, "selection": {"labels": [0, 1, 2, 3]}},
            "score.labels has values [7]",
        ),
    ],
)  # fmt: skip
def test_impossible_combinations_fail_in_one_line_naming_the_key(overrides, words):
    with pytest.raises(ConfigError) as error:
        check_config(config_with_defaults(overrides))
    assert words in str(error.value) and "\n" not in str(error.value)


def test_label_outside_the_configured_set_names_the_key(tmp_path):
    from segflow.inspection import inspect_case

    image_path, seg_path = write_organ_case(tmp_path / "raw", "synth_001", organs=ORGANS + ("aorta",))
    report = inspect_case("synth_001", image_path, seg_path, [0, 1, 2, 3, 4])
    assert any("label values [5] outside selection.labels [0, 1, 2, 3, 4]" in p for p in report["problems"])
