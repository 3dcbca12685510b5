import json

import numpy as np
import pandas as pd
import pytest

from segflow.io import save_nifti
from segflow.score import aggregate, score_files

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


def test_score_files_on_a_known_case(tmp_path):
    reference = volume([(1, np.s_[2:8, 2:8, 1:5]), (2, np.s_[3:5, 3:5, 2:4])])
    prediction = volume([(1, np.s_[2:8, 2:8, 1:5])])  # kidney right, tumour missed
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    save_nifti(tmp_path / "ref.nii.gz", reference, affine)
    save_nifti(tmp_path / "pred.nii.gz", prediction, affine)
    scores = score_files(tmp_path / "pred.nii.gz", tmp_path / "ref.nii.gz", SCORE)
    assert scores["dice_kidney_and_masses"] == 1.0
    assert scores["dice_tumor"] == 0.0 and np.isnan(scores["hd95_tumor"])  # one empty: 0, HD95 undefined
    assert scores["dice_cyst"] == 1.0 and scores["hd95_cyst"] == 0.0  # both empty: 1 (KiTS convention)
    n_kidney, n_tumour = 6 * 6 * 4 - 8, 8
    assert scores["dice_kidney"] == pytest.approx(2 * n_kidney / (2 * n_kidney + n_tumour))


def test_grid_mismatch_names_both_files(tmp_path):
    save_nifti(tmp_path / "ref.nii.gz", volume([]), np.eye(4))
    save_nifti(tmp_path / "pred.nii.gz", volume([]), np.diag([1.0, 1.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match=r"pred\.nii\.gz.*ref\.nii\.gz|ref\.nii\.gz.*pred\.nii\.gz"):
        score_files(tmp_path / "pred.nii.gz", tmp_path / "ref.nii.gz", SCORE)
    save_nifti(tmp_path / "pred.nii.gz", volume([], shape=(12, 12, 5)), np.eye(4))
    with pytest.raises(ValueError, match="shape"):
        score_files(tmp_path / "pred.nii.gz", tmp_path / "ref.nii.gz", SCORE)


def test_aggregate_skips_undefined_hd95_and_keeps_full_precision(tmp_path):
    paths = []
    for case, (dice, hd95) in {"a": (0.123456789, 2.0), "b": (0.5, None)}.items():
        paths.append(tmp_path / f"{case}.json")
        paths[-1].write_text(json.dumps({"case_id": case, "scores": {"dice_tumor": dice, "hd95_tumor": hd95}}))
    aggregate(paths, ["a", "b"], tmp_path / "scores.tsv", tmp_path / "summary.json", tmp_path / "summary.tsv")
    assert "0.12345679" in (tmp_path / "scores.tsv").read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())["metrics"]
    assert summary["hd95_tumor"] == {"mean": 2.0, "median": 2.0, "std": 0.0, "min": 2.0, "n": 1}
    assert summary["dice_tumor"]["mean"] == pytest.approx((0.123456789 + 0.5) / 2)
    long = pd.read_csv(tmp_path / "summary.tsv", sep="\t")
    assert list(long.columns) == ["name", "metric", "mean", "median", "std", "min", "n"]
    assert set(zip(long["name"], long["metric"])) == {("tumor", "dice"), ("tumor", "hd95")}
