import json
import logging
import re

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import config_with_defaults, write_case

import segflow.train
from segflow.curves import plot_curves
from segflow.data import SliceDataset, build_augmentation, epoch_indices
from segflow.inference import predict_slices
from segflow.losses import LOSSES, build_loss
from segflow.model_selection import select_best_round, unseen_cases
from segflow.models import MODELS, build_model
from segflow.preprocess import preprocess_case
from segflow.seeding import derive_seed
from segflow.train import RoundOutputs, round_seeds, round_split, train_round, validation_subset

PRE = config_with_defaults({"preprocess": {"crop_margin": 1, "size": [32, 32]}})["preprocess"]
TRAIN = config_with_defaults(
    {
        "train": {
            "model": "unet",
            "channels": [4, 8],
            "num_res_units": 0,
            "epochs": 2,
            "batch_size": 4,
            "lr": 0.01,
            "weight_decay": 0.0,
            "patience": 5,
            "val_fraction": 0.5,
            "samples_per_epoch": 8,
            "foreground_fraction": 0.5,
            "device": "cpu",
            "holdout_fraction": 0.0,
        }
    }
)["train"]


def test_round_split_rotates_patient_folds():
    cases = [f"c{i}" for i in range(8)]
    patients = ["p0", "p0", "p1", "p2", "p3", "p4", "p5", "p6"]
    seen_val = set()
    for r in range(4):
        train, val = round_split(cases, patients, r, 0.25, seed=1)
        assert set(train) | set(val) == set(cases) and not set(train) & set(val)
        assert ("c0" in val) == ("c1" in val)  # one patient never straddles train and val
        seen_val |= set(val)
    assert seen_val == set(cases)  # over k rounds every patient validates once
    assert round_split(cases, patients, 1, 0.25, 1) == round_split(cases, patients, 1, 0.25, 1)
    assert round_split(cases, patients, 0, 0.25, 1) != round_split(cases, patients, 1, 0.25, 1)
    with pytest.raises(ValueError, match="at least 2"):
        round_split(["a"], ["a"], 0, 0.25, 1)


def test_holdout_is_fixed_and_leaves_a_train_and_val_patient():
    from segflow.train import holdout_patients

    patients = [f"p{i}" for i in range(30)]
    sizes = {n: len(holdout_patients(patients[:n], 0.1, seed=1)) for n in (2, 3, 12, 30)}
    assert sizes == {2: 0, 3: 1, 12: 1, 30: 3}
    assert holdout_patients(patients, 0.0, 1) == set()
    assert holdout_patients(patients, 0.1, 1) == holdout_patients(list(reversed(patients)), 0.1, 1)


def test_epoch_indices_oversample_foreground():
    foreground = np.array([True] + [False] * 9)
    picks = epoch_indices(foreground, 20, 0.5, np.random.default_rng(0))
    assert len(picks) == 20 and (picks == 0).sum() == 10
    only_background = epoch_indices(np.zeros(5, bool), 4, 0.5, np.random.default_rng(0))
    assert len(only_background) == 4


def test_slice_dataset_and_augmentation(tmp_path):
    image, seg = write_case(tmp_path / "raw")
    preprocess_case(image, seg, tmp_path / "a", PRE)
    dataset = SliceDataset([tmp_path / "a"], transform=build_augmentation(TRAIN["augment"]))
    sample = dataset[3]
    assert sample["image"].shape == (1, 32, 32) and sample["label"].dtype == torch.int64
    assert dataset.foreground_mask().tolist() == [False, False, True, True, True, True, False, False]


@pytest.mark.parametrize("name", MODELS)
def test_every_model_takes_a_training_step(name):
    model = build_model({**TRAIN, "model": name, "channels": [8, 16, 32, 64]}, n_classes=4)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    loss = build_loss(TRAIN)(model(torch.rand(2, 1, 64, 64)), torch.randint(0, 4, (2, 1, 64, 64)))
    loss.backward()
    optimiser.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_efficientnet_b5_builds_offline(monkeypatch):
    # The seed's backbone; pretrained weights would need the internet, so any download attempt fails the test.
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download weights"))
    model = build_model({**TRAIN, "model": "efficientnet_unet", "backbone": "b5", "channels": [8, 16, 32, 64]}, 4)
    assert model.eval()(torch.rand(1, 1, 32, 32)).shape == (1, 4, 32, 32)


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_takes_a_training_step(name):
    cfg = {**TRAIN, "loss": name, "loss_weights": {"dice": 0.4, "focal": 0.6}, "focal_alpha": 0.25}
    model = build_model(TRAIN, n_classes=4)
    loss = build_loss(cfg)(model(torch.rand(2, 1, 32, 32)), torch.randint(0, 4, (2, 1, 32, 32)))
    loss.backward()
    assert torch.isfinite(loss) and loss > 0


def make_cases(tmp_path, n=4):
    dirs = {}
    for i in range(n):
        image, seg = write_case(tmp_path / "raw" / f"c{i}")
        dirs[f"c{i}"] = tmp_path / "pre" / f"c{i}"
        preprocess_case(image, seg, dirs[f"c{i}"], PRE)
    return dirs


def outputs_in(folder):
    return RoundOutputs(*(folder / n for n in ["model_best.pt", "model_last.pt", "metrics.csv", "split.json"]))


def test_rounds_chain_and_are_reproducible(tmp_path):
    dirs = make_cases(tmp_path)
    patients = {c: c for c in dirs}
    first = outputs_in(tmp_path / "r0")
    train_round(dirs, patients, 0, TRAIN, 3, first)
    second = outputs_in(tmp_path / "r1")
    train_round(dirs, patients, 1, TRAIN, 3, second, init_checkpoint=first.model_best)
    again = outputs_in(tmp_path / "again")
    train_round(dirs, patients, 0, TRAIN, 3, again)

    metrics = pd.read_csv(first.metrics)
    assert list(metrics.columns[:6]) == ["round", "epoch", "train_loss", "train_dice", "val_loss", "val_dice"]
    assert {"val_iou", "val_precision", "val_recall", "val_f1", "val_dice_kidney", "lr", "seconds"} <= set(metrics)
    assert len(metrics) == 2 and not (tmp_path / "r0" / "curves.png").exists()  # the plot_curves rule draws them
    plot_curves(tmp_path / "curves.png", metrics)
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")
    timing_free = [c for c in metrics.columns if c != "seconds"]
    assert pd.read_csv(again.metrics)[timing_free].equals(metrics[timing_free])
    choice = select_best_round([first.metrics, second.metrics], [first.model_best, second.model_best])
    assert choice["val_loss"] == min(choice["table"]["val_loss"])
    assert list(choice["table"]["round"]) == [0, 1]

    model = build_model(TRAIN, 4)
    model.load_state_dict(torch.load(first.model_best, weights_only=False)["model"])
    labels = predict_slices(model.eval(), np.random.rand(5, 32, 32).astype(np.float32), 2, torch.device("cpu"))
    assert labels.shape == (5, 32, 32) and labels.dtype == np.uint8


def test_a_repeat_trains_other_weights_on_the_same_split_and_validation_slices(tmp_path, monkeypatch):
    assert round_seeds(3, 1, 0) == (derive_seed(3, "train_round", 1),) * 2  # repeat 0: every row so far
    split_seed, first = round_seeds(3, 1, 1)
    assert split_seed == derive_seed(3, "train_round", 1) and first != split_seed != round_seeds(3, 1, 2)[1]
    validation_seeds = []

    def recording_subset(val_set, cfg, seed):
        validation_seeds.append(seed)
        return validation_subset(val_set, cfg, seed)

    monkeypatch.setattr(segflow.train, "validation_subset", recording_subset)
    dirs = make_cases(tmp_path)
    runs = {repeat: outputs_in(tmp_path / f"repeat{repeat}") for repeat in (0, 1)}
    for repeat, out in runs.items():
        train_round(dirs, {c: c for c in dirs}, 0, {**TRAIN, "epochs": 1, "repeat": repeat}, 3, out)
    assert runs[0].split.read_text() == runs[1].split.read_text()
    assert validation_seeds == [derive_seed(3, "train_round", 0)] * 2  # the same validation slices
    weights = [torch.load(out.model_last, weights_only=False)["model"] for out in runs.values()]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_no_validation_patients_trains_on_all_but_the_holdout_and_draws_the_curve_there(tmp_path, caplog):
    from segflow.config_checks import check_config
    from segflow.preflight import ConfigError
    from segflow.train import holdout_patients

    assert round_split(["a", "b", "c"], ["p", "p", "q"], 2, 0.0, seed=1) == (["a", "b", "c"], [])
    dirs = make_cases(tmp_path, n=5)
    patients = {c: c for c in dirs}
    cfg = {**TRAIN, "val_fraction": 0.0, "holdout_fraction": 0.2, "keep_epoch": "last", "lr_schedule": "poly"}
    out = outputs_in(tmp_path / "r0")
    with caplog.at_level(logging.INFO, logger="segflow.train"):
        train_round(dirs, patients, 0, cfg, 3, out)
    # The log names both checkpoints; which one is the round's model is select_model's choice (train.keep_epoch).
    assert re.search(r"round 0: lowest validation loss \S+ at epoch \d+ \(model_best.pt\); last epoch 2 ", caplog.text)
    split = json.loads(out.split.read_text())
    (held_out,) = holdout_patients(list(patients.values()), 0.2, 3)
    assert split["val"] == [] and split["holdout"] == [held_out]
    assert sorted(split["train"]) == sorted(c for c in dirs if c != held_out)
    metrics = pd.read_csv(out.metrics)
    assert metrics["val_loss"].notna().all()  # the curve, drawn on the holdout
    assert unseen_cases(sorted(dirs), [split], [0]) == [held_out]  # post-processing is still decided on unseen data
    two = {c: dirs[c] for c in ("c0", "c1")}  # too few patients for a holdout: nothing left to validate on
    with pytest.raises(ValueError, match="train.val_fraction is 0 and the fixed holdout is empty"):
        train_round(two, {c: c for c in two}, 0, cfg, 3, outputs_in(tmp_path / "two"))

    base = {"train": {"val_fraction": 0, "keep_epoch": "last", "lr_schedule": "poly", "patience": 9, "epochs": 9}}
    check_config(config_with_defaults(base))
    with pytest.raises(ConfigError, match="train.keep_epoch best, train.patience 5 would"):
        check_config(config_with_defaults({"train": {**base["train"], "keep_epoch": "best", "patience": 5}}))
    with pytest.raises(ConfigError, match="so is train.holdout_fraction"):
        check_config(config_with_defaults({"train": {**base["train"], "holdout_fraction": 0}}))


def test_dataloader_workers_are_deterministic(tmp_path):
    dirs = make_cases(tmp_path, n=3)
    cfg = {**TRAIN, "num_workers": 2, "epochs": 1}
    runs = [outputs_in(tmp_path / name) for name in ("a", "b")]
    for out in runs:
        train_round(dirs, {c: c for c in dirs}, 0, cfg, 3, out)
    first, second = (pd.read_csv(out.metrics).drop(columns="seconds") for out in runs)
    assert first.equals(second)


def test_three_rounds_with_holdout_and_hard_slices(tmp_path, caplog):
    import logging

    from segflow.model_selection import evaluate_on_holdout
    from segflow.train import holdout_patients

    dirs = make_cases(tmp_path, n=6)
    patients = {c: c for c in dirs}
    cfg = {**TRAIN, "holdout_fraction": 0.2, "hard_slice_boost": 2.0, "epochs": 1}
    held_out = holdout_patients(list(patients.values()), cfg["holdout_fraction"], 3)
    assert len(held_out) == 1
    outputs = []
    with caplog.at_level(logging.INFO, logger="segflow.train"):
        for r in range(3):
            outputs.append(outputs_in(tmp_path / f"round_{r}"))
            init = outputs[r - 1].model_best if r else None
            train_round(dirs, patients, r, cfg, 3, outputs[r], init_checkpoint=init)
    assert f"round 2 starts from {outputs[1].model_best}" in caplog.text
    assert "hard-slice oversampling" in caplog.text
    for out in outputs:  # the holdout patient is never trained or validated on
        split = pd.read_json(out.split, typ="series")
        assert not held_out & set(split["train"] + split["val"]) and split["holdout"] == sorted(held_out)
    models = [o.model_best for o in outputs]
    holdout = evaluate_on_holdout(models, [dirs[c] for c in sorted(held_out)], cfg)
    choice = select_best_round([o.metrics for o in outputs], models, holdout, "fixed_dice")
    table = choice["table"]
    assert list(table["round"]) == [0, 1, 2] and table["fixed_val_dice"].between(0, 1).all()
    assert {"best_epoch", "val_loss", "fixed_val_loss", "fixed_val_dice"} <= set(table)
    for out, (_, row) in zip(outputs, table.iterrows()):  # each round's row is its best epoch
        assert row["val_loss"] == pd.read_csv(out.metrics)["val_loss"].min()
    assert choice["round"] == int(table.loc[table["fixed_val_dice"].idxmax(), "round"])
    # train.postprocess_on unseen: round 0's model never saw its validation patients; a later round's model has
    # trained on the earlier rounds' patients, so what it never saw is smaller (here, with folds, the holdout alone)
    splits = [pd.read_json(o.split, typ="series").to_dict() for o in outputs]
    first = splits[0]
    assert unseen_cases(sorted(dirs), splits, [0]) == sorted(first["val"] + first["holdout"])
    assert unseen_cases(sorted(dirs), splits, [2]) == sorted(held_out)
    assert unseen_cases(sorted(dirs), splits, [0, 2]) == unseen_cases(sorted(dirs), splits, [2])


def test_unseen_cases_follow_the_chain_of_rounds():
    splits = [
        {"round": 0, "train": ["a", "b"], "val": ["c", "d"], "holdout": ["h"]},
        {"round": 1, "train": ["c", "d"], "val": ["a", "e"], "holdout": ["h"]},
    ]
    cases = ["a", "b", "c", "d", "e", "h"]
    assert unseen_cases(cases, splits, [0]) == ["c", "d", "e", "h"]
    # round 1 started from round 0's model: a and b count as seen although round 1 validates on a
    assert unseen_cases(cases, splits[::-1], [1]) == ["e", "h"]
    with pytest.raises(ValueError, match=r"no split.json for round\(s\) \[0\]"):
        unseen_cases(cases, splits[1:], [1])


def _augmented_samples(dataset, seed: int, n: int) -> list[dict]:
    dataset.transform.set_random_state(seed=seed)
    return [dataset[i % len(dataset)] for i in range(n)]


def test_transforms_without_meta_tracking_give_the_same_samples_and_leave_tracking_on(tmp_path, monkeypatch):
    import contextlib

    from monai.data import get_track_meta

    import segflow.data

    image, seg = write_case(tmp_path / "raw")
    preprocess_case(image, seg, tmp_path / "a", PRE)
    augment = {**TRAIN["augment"], "enabled": True, "affine_prob": 1.0, "intensity_prob": 1.0, "noise_prob": 0.5}
    dataset = SliceDataset([tmp_path / "a"], transform=build_augmentation(augment, patch_size=[16, 16]))
    fast = _augmented_samples(dataset, seed=3, n=12)
    assert get_track_meta()  # restored after each sample: other MONAI users in the process keep their metadata
    monkeypatch.setattr(segflow.data, "untracked_meta", contextlib.nullcontext)  # MetaTensors, as before
    tracked = _augmented_samples(dataset, seed=3, n=12)
    for a, b in zip(fast, tracked, strict=True):
        assert type(a["image"]) is torch.Tensor and a["label"].dtype == torch.int64
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


def test_bfloat16_on_cpu_only_for_training_with_amp_cpu_on_a_cpu_that_has_it(monkeypatch):
    import segflow.device
    from segflow.device import amp_dtype_for

    cpu = torch.device("cpu")
    monkeypatch.setattr(segflow.device, "cpu_has_bfloat16", lambda: True)
    assert amp_dtype_for(cpu, {**TRAIN, "amp_cpu": True}, training=True) == torch.bfloat16
    assert amp_dtype_for(cpu, {**TRAIN, "amp_cpu": True}) is None  # inference stays in float32
    assert amp_dtype_for(cpu, {**TRAIN, "amp_cpu": False}, training=True) is None
    monkeypatch.setattr(segflow.device, "cpu_has_bfloat16", lambda: False)  # emulated bfloat16 would be slower
    assert amp_dtype_for(cpu, {**TRAIN, "amp_cpu": True}, training=True) is None
    assert TRAIN["amp_cpu"] is False  # the schema's default: a CPU run trains in float32 unless asked


def test_a_bfloat16_cpu_round_trains_and_saves_float32_weights(tmp_path, monkeypatch):
    import segflow.device

    monkeypatch.setattr(segflow.device, "cpu_has_bfloat16", lambda: True)  # autocast runs on any CPU, if slowly
    dirs = make_cases(tmp_path, n=2)
    outputs = outputs_in(tmp_path / "out")
    cfg = {**TRAIN, "epochs": 1, "amp_cpu": True}
    metrics = train_round(dirs, {case: case for case in dirs}, 0, cfg, seed=0, outputs=outputs)
    assert np.isfinite(metrics["val_loss"]).all()
    weights = torch.load(outputs.model_best, weights_only=False)["model"]
    assert all(w.dtype == torch.float32 for w in weights.values() if w.is_floating_point())


def test_a_deep_supervision_round_trains_validates_and_predicts_on_the_main_output(tmp_path):
    dirs = make_cases(tmp_path, n=2)
    outputs = outputs_in(tmp_path / "out")
    cfg = {**TRAIN, "model": "dynunet", "channels": [4, 8, 16], "deep_supervision": 1, "epochs": 1}
    metrics = train_round(dirs, {case: case for case in dirs}, 0, cfg, seed=0, outputs=outputs)
    assert np.isfinite(metrics[["train_loss", "train_dice", "val_loss", "val_dice"]].to_numpy()).all()
    from segflow.checkpoints import load_model

    model, _ = load_model(outputs.model_last, torch.device("cpu"))
    labels = predict_slices(model, np.random.rand(3, 32, 32).astype(np.float32), 2, torch.device("cpu"))
    assert labels.shape == (3, 32, 32)


def test_val_every_validates_every_nth_and_the_last_epoch_and_trains_the_same_weights(tmp_path):
    dirs = make_cases(tmp_path, n=3)
    patients = {case: case for case in dirs}
    cfg = {**TRAIN, "epochs": 5, "patience": 5, "lr_schedule": "poly"}
    every, sparse = outputs_in(tmp_path / "every"), outputs_in(tmp_path / "sparse")
    train_round(dirs, patients, 0, cfg, 3, every)
    metrics = train_round(dirs, patients, 0, {**cfg, "val_every": 2}, 3, sparse)

    # Epochs 2, 4 (1-based) and the last, 5, validate; the others train only and keep the columns, empty.
    validated = metrics["val_loss"].notna().to_list()
    assert validated == [False, True, False, True, True]
    val_columns = [c for c in metrics.columns if c.startswith("val_")]
    assert metrics.loc[[0, 2], val_columns].isna().all().all()
    assert list(pd.read_csv(sparse.metrics).columns) == list(pd.read_csv(every.metrics).columns)
    # Validation draws no random numbers: the same training, epoch for epoch, and the same validated figures.
    full = pd.read_csv(every.metrics)
    assert np.allclose(metrics["train_loss"], full["train_loss"])
    assert np.allclose(metrics.loc[validated, "val_loss"], full.loc[validated, "val_loss"])
    last = [torch.load(out.model_last, weights_only=False)["model"] for out in (every, sparse)]
    assert all(torch.equal(last[0][k], last[1][k]) for k in last[0])
    # The kept "best" epoch is a validated one, and the curves skip the gaps.
    best = torch.load(sparse.model_best, weights_only=False)
    assert validated[best["epoch"]]
    plot_curves(tmp_path / "curves.png", metrics)
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_val_every_validates_where_early_stopping_could_end_the_round():
    from segflow.train import validates

    cfg = {"val_every": 10, "epochs": 30, "patience": 3}
    assert not validates(0, stale=0, cfg=cfg) and validates(9, stale=0, cfg=cfg) and validates(29, stale=0, cfg=cfg)
    # Two epochs without improvement: the next one could stop the round, so it is measured.
    assert validates(4, stale=2, cfg=cfg) and not validates(4, stale=1, cfg=cfg)
