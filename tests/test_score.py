"""Scoring files and aggregating scores: segflow.score (the metric math itself is tested in test_metrics.py)."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from segflow.io import save_nifti
from segflow.score import aggregate, json_scores, ordered_columns, score_files, statistics

SCORE = {
    "regions": {"kidney_and_masses": [1, 2, 3], "masses": [2, 3], "tumor": [2]},
    "labels": {"kidney": 1, "tumor": 2, "cyst": 3},
    "tolerances_mm": {},
}


def volume(boxes, shape=(12, 12, 6)):
    labels = np.zeros(shape, np.uint8)
    for value, box in boxes:
        labels[box] = value
    return labels


def write_pair(folder, prediction, reference, pred_affine, ref_affine=None):
    save_nifti(folder / "ref.nii.gz", reference, pred_affine if ref_affine is None else ref_affine)
    save_nifti(folder / "pred.nii.gz", prediction, pred_affine)
    return folder / "pred.nii.gz", folder / "ref.nii.gz"


def test_score_files_on_a_known_case(tmp_path):
    reference = volume([(1, np.s_[2:8, 2:8, 1:5]), (2, np.s_[3:5, 3:5, 2:4])])
    prediction = volume([(1, np.s_[2:8, 2:8, 1:5])])  # kidney and masses right, tumour called kidney
    scores = score_files(*write_pair(tmp_path, prediction, reference, np.diag([1.0, 1.0, 3.0, 1.0])), SCORE)
    assert scores["dice_kidney_and_masses"] == 1.0 and scores["hd95_kidney_and_masses"] == 0.0
    assert scores["dice_tumor"] == 0.0 and scores["sd_tumor"] == 0.0
    assert math.isnan(scores["hd95_tumor"])  # exactly one mask empty: undefined
    assert scores["dice_cyst"] == 1.0 and scores["hd95_cyst"] == 0.0  # both empty: perfect (KiTS convention)
    n_kidney, n_tumour = 6 * 6 * 4 - 8, 8  # reference kidney voxels; the prediction adds the tumour's 8
    assert scores["dice_kidney"] == pytest.approx(2 * n_kidney / (2 * n_kidney + n_tumour))
    assert scores["precision_kidney"] == pytest.approx(n_kidney / (n_kidney + n_tumour))
    assert scores["recall_kidney"] == 1.0
    # A label named like a region (tumor = 2) is one set of columns, 7 metrics x 5 names in all.
    assert len(scores) == 7 * 5


def test_distances_use_the_reference_voxel_spacing(tmp_path):
    """The same voxels twice as large in every direction: HD95 doubles, overlap does not change."""
    reference = volume([(1, np.s_[2:8, 2:8, 1:5])])
    prediction = volume([(1, np.s_[3:9, 2:8, 1:5])])  # one voxel off along x
    small = score_files(*write_pair(tmp_path, prediction, reference, np.eye(4)), SCORE)
    large = score_files(*write_pair(tmp_path, prediction, reference, np.diag([2.0, 2.0, 2.0, 1.0])), SCORE)
    assert small["hd95_kidney"] == 1.0 and large["hd95_kidney"] == 2.0
    assert small["dice_kidney"] == large["dice_kidney"] == pytest.approx(2 * 5 / 12)


def test_grid_mismatch_is_an_error_naming_both_files(tmp_path):
    empty = volume([])
    pred, ref = write_pair(tmp_path, empty, empty, np.diag([1.0, 1.0, 2.0, 1.0]), ref_affine=np.eye(4))
    with pytest.raises(ValueError, match="affine") as affine_error:
        score_files(pred, ref, SCORE)
    save_nifti(pred, volume([], shape=(12, 12, 5)), np.eye(4))
    with pytest.raises(ValueError, match="shape") as shape_error:
        score_files(pred, ref, SCORE)
    for error in (affine_error, shape_error):
        assert str(pred) in str(error.value) and str(ref) in str(error.value)


def test_json_scores_turn_undefined_values_into_null():
    assert json_scores({"dice_tumor": 0.0, "hd95_tumor": float("nan")}) == {"dice_tumor": 0.0, "hd95_tumor": None}


def test_statistics_by_hand_and_with_undefined_values():
    stats = statistics(pd.Series([1.0, 2.0, 4.0, np.nan]))
    assert stats["mean"] == pytest.approx(7 / 3) and stats["median"] == 2.0 and stats["min"] == 1.0
    assert stats["std"] == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 3))
    assert stats["n"] == 3  # the NaN is skipped, not counted
    assert statistics(pd.Series([np.nan, np.nan])) == {"mean": None, "median": None, "std": None, "min": None, "n": 0}
    assert statistics(pd.Series([0.5]))["std"] == 0.0  # population std: defined for one case


def write_case_scores(folder, cases: dict[str, dict]) -> list:
    paths = []
    for case, scores in cases.items():
        paths.append(folder / f"{case}.json")
        paths[-1].write_text(json.dumps({"case_id": case, "scores": json_scores(scores)}))
    return paths


def test_aggregate_writes_table_summary_and_per_region_summary(tmp_path):
    cases = {
        "a": {"hd95_tumor": 2.0, "dice_kidney": 0.9, "dice_tumor": 0.1234567890123456, "sd_tumor": 0.25},
        "b": {"hd95_tumor": float("nan"), "dice_kidney": 0.7, "dice_tumor": 0.0, "sd_tumor": 0.0},
    }
    outputs = [tmp_path / name for name in ("scores.tsv", "summary.json", "summary.tsv")]
    aggregate(write_case_scores(tmp_path, cases), list(cases), *outputs, score_cfg=SCORE)

    table = pd.read_csv(outputs[0], sep="\t")
    # KiTS's figures first (Dice, surface Dice, HD95), regions before labels.
    assert list(table.columns) == ["case_id", "dice_tumor", "dice_kidney", "sd_tumor", "hd95_tumor"]
    assert table["dice_tumor"][0] == 0.1234567890123456  # full precision: reads back to the same float
    assert math.isnan(table["hd95_tumor"][1])  # undefined: an empty cell

    summary = json.loads(outputs[1].read_text())
    assert summary["n_cases"] == 2
    assert summary["metrics"]["hd95_tumor"] == {"mean": 2.0, "median": 2.0, "std": 0.0, "min": 2.0, "n": 1}
    assert summary["metrics"]["dice_kidney"]["mean"] == pytest.approx(0.8)
    assert summary["metrics"]["dice_kidney"]["std"] == pytest.approx(0.1)

    long = pd.read_csv(outputs[2], sep="\t", keep_default_na=False, dtype={"labels": str})
    assert list(long.columns) == ["name", "kind", "labels", "metric", "mean", "median", "std", "min", "n"]
    rows = [tuple(r) for r in long[["name", "kind", "labels", "metric", "n"]].itertuples(index=False)]
    assert rows == [
        ("tumor", "region and label", "2", "dice", 2),
        ("tumor", "region and label", "2", "sd", 2),
        ("tumor", "region and label", "2", "hd95", 1),
        ("kidney", "label", "1", "dice", 2),
    ]


def test_aggregate_with_every_hd95_undefined_writes_null(tmp_path):
    cases = {"a": {"hd95_masses": float("nan")}, "b": {"hd95_masses": float("nan")}}
    aggregate(write_case_scores(tmp_path, cases), list(cases), tmp_path / "s.tsv", tmp_path / "s.json")
    stats = json.loads((tmp_path / "s.json").read_text())["metrics"]["hd95_masses"]
    assert stats == {"mean": None, "median": None, "std": None, "min": None, "n": 0}


def test_column_order_without_a_config_keeps_names_as_they_come():
    columns = ["hd95_b", "dice_b", "dice_a", "other"]
    assert ordered_columns(columns) == ["dice_b", "dice_a", "hd95_b", "other"]
