"""The benchmark's error analysis (benchmarks/quality.py errors) on hand-made label maps, and the augmentation
timer (benchmarks/augment_speed.py) on a preprocessed case."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from helpers import config_with_defaults, write_case

from segflow.preprocess import preprocess_case

QUALITY = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"


def load_quality():
    spec = importlib.util.spec_from_file_location("quality_benchmark", QUALITY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_confusion_counts_true_rows_against_predicted_columns():
    quality = load_quality()
    truth = np.array([0, 0, 1, 1, 2, 2, 2, 3])
    prediction = np.array([0, 1, 1, 1, 2, 1, 0, 1])
    table = quality.confusion(truth, prediction)
    assert table.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 1, 1, 0], [0, 1, 0, 0]]
    assert table.sum() == truth.size


def test_tumour_findings_split_each_tumour_and_count_false_components():
    quality = load_quality()
    truth = np.zeros((1, 8, 8), dtype=np.uint8)
    truth[0, 1:3, 1:3] = 2  # tumour A, 4 voxels
    truth[0, 5:7, 5:7] = 2  # tumour B, 4 voxels
    truth[0, 0, 6] = 3  # a cyst: a tumour prediction on it is not a false component
    prediction = np.zeros_like(truth)
    prediction[0, 1:3, 1] = 2  # half of A as tumour
    prediction[0, 1:3, 2] = 1  # the other half as kidney
    prediction[0, 0, 6] = 2  # on the cyst
    prediction[0, 4, 0] = 2  # touches no mass
    findings = quality.tumour_findings(truth, prediction)
    assert findings["tumours"] == [
        {"voxels": 4, "background": 0.0, "kidney": 0.5, "tumour": 0.5},
        {"voxels": 4, "background": 1.0, "kidney": 0.0, "tumour": 0.0},
    ]
    assert findings["predicted_components"] == 3
    assert findings["false_components"] == 1


def test_mass_components_group_tumour_and_cyst_and_show_the_reference_under_them():
    quality = load_quality()
    truth = np.zeros((3, 8, 8), dtype=np.uint8)
    truth[:, 1:7, 1:7] = 1
    truth[1, 2:4, 2:4] = 2  # a true tumour of 4 voxels
    prediction = truth.copy()
    prediction[1, 2:4, 4] = 3  # its neighbour called cyst: one mass with the tumour
    prediction[2, 5, 5] = 2  # a false mass on kidney, diagonal to nothing else
    masses = quality.mass_components(truth, prediction)
    assert masses == [
        {"voxels": 6, "tumour": 4, "cyst": 2, "truth": [0, 2, 4, 0]},
        {"voxels": 1, "tumour": 1, "cyst": 0, "truth": [0, 1, 0, 0]},
    ]


def test_augment_speed_times_the_training_chain_and_saves_its_samples(tmp_path):
    image, seg = write_case(tmp_path / "raw", shape=(32, 32, 8))
    preprocess_case(image, seg, tmp_path / "preprocessed" / "case_a", config_with_defaults()["preprocess"])
    config = tmp_path / "crops.yaml"
    config.write_text(yaml.safe_dump({"train": {"patch_size": [16, 16]}}))
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "augment_speed.py"
    arguments = ["--cases", str(tmp_path / "preprocessed"), "--configfile", str(config), "--samples", "12"]
    runs = []
    for name in ("first", "second"):  # one seed, the same samples
        saved = tmp_path / f"{name}.npz"
        done = subprocess.run(
            [sys.executable, str(script), *arguments, "--save", str(saved)], capture_output=True, text=True, check=True
        )
        runs.append((json.loads(done.stdout.strip().splitlines()[-1]), np.load(saved)))
    (figures, samples), (_, again) = runs
    assert figures["cases"] == 1 and figures["slices"] == 8 and figures["samples"] == 12
    assert figures["ms_per_sample"] > 0 and figures["epoch_s"] > 0
    assert samples["image"].shape == (12, 1, 16, 16) and samples["label"].shape == (12, 1, 16, 16)
    assert np.array_equal(samples["image"], again["image"]) and np.array_equal(samples["label"], again["label"])
