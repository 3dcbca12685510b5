"""The benchmark's error analysis (benchmarks/quality.py errors) on hand-made label maps."""

import importlib.util
from pathlib import Path

import numpy as np

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
