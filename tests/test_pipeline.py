"""Integration: the real Snakemake DAG on the tiny synthetic config, from nothing to the report."""

import json
import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from workflow import snakemake

RULES = [
    "download_case",
    "inspect_case",
    "select_cases",
    "preprocess_case",
    "train_round",
    "select_model",
    "predict_case",
    "score_case",
    "aggregate_scores",
    "render_report",
]


@pytest.fixture
def finished_run(tiny_run):
    return tiny_run


def test_selection_table_drops_cases_outside_the_filters(finished_run):
    table = pd.read_csv(finished_run / "results/selection/cases.tsv", sep="\t", keep_default_na=False)
    assert list(table.columns[:4]) == ["case_id", "selected", "reason", "split"]
    assert len(table) == 6
    dropped = table[table["selected"] == False]  # noqa: E712 (pandas reads true/false as booleans)
    assert set(dropped["case_id"]) == {"synth_003", "synth_005"}
    assert set(table.loc[table["selected"] == True, "split"]) == {"trainval", "test"}  # noqa: E712


def test_every_stage_produced_its_outputs_logs_and_benchmarks(finished_run):
    results = finished_run / "results"
    for round_index in (0, 1):
        assert (results / f"train/round_{round_index}/model_best.pt").exists()
        assert len(pd.read_csv(results / f"train/round_{round_index}/metrics.csv")) == 2
    log_round_1 = (results / "logs/train_round/round_1.log").read_text()
    assert re.search(r"round 1 starts from \S*round_0/model_best\.pt", log_round_1)
    for rule in RULES:
        assert list((results / "logs" / rule).glob("*.log")), rule
        assert list((results / "benchmarks" / rule).glob("*.tsv")), rule
    assert not list(results.rglob("*.part*")), "temporary files left behind"


def test_rounds_are_compared_and_the_lowest_val_loss_kept(finished_run):
    train = finished_run / "results/train"
    metrics = pd.read_csv(train / "round_1/metrics.csv")
    assert {"epoch", "train_loss", "train_dice", "val_loss", "val_dice", "val_iou", "lr", "seconds"} <= set(metrics)
    rounds = pd.read_csv(train / "rounds.tsv", sep="\t")
    assert list(rounds["round"]) == [0, 1]
    assert rounds[["val_loss", "fixed_val_loss", "fixed_val_dice"]].notna().all().all()  # tiny.yaml keeps a holdout
    best = json.loads((train / "best.json").read_text())
    assert best["select_by"] == "val_loss"
    assert best["round"] == int(rounds.loc[rounds["val_loss"].idxmin(), "round"])
    assert not list(train.glob("round_*/resume")), "a completed round keeps no resume state"
    # The logs say which epoch became the model: training names both checkpoints, select_model the one it took.
    epoch = int(rounds.set_index("round").loc[best["round"], "best_epoch"]) + 1
    selected = (finished_run / "results/logs/select_model/select_model.log").read_text()
    assert f"selected round {best['round']} by val_loss: its epoch {epoch} (train.keep_epoch best)" in selected
    trained = (finished_run / f"results/logs/train_round/round_{best['round']}.log").read_text()
    assert f"at epoch {epoch} (model_best.pt); last epoch " in trained


def test_summary_table_per_region_and_label(finished_run):
    summary = pd.read_csv(finished_run / "results/scores/summary.tsv", sep="\t")
    assert list(summary.columns[:4]) == ["name", "kind", "labels", "metric"]
    dice = summary[summary["metric"] == "dice"].set_index("name")
    assert dice.loc["kidney_and_masses", "labels"] == "1+2+3"
    assert dice.loc["kidney", "kind"] == "label"
    scores = pd.read_csv(finished_run / "results/scores/scores.tsv", sep="\t")
    assert dice.loc["kidney_and_masses", "mean"] == pytest.approx(scores["dice_kidney_and_masses"].mean())


def test_predictions_are_on_the_original_grid_and_scored(finished_run):
    results = finished_run / "results"
    table = pd.read_csv(results / "selection/cases.tsv", sep="\t", keep_default_na=False)
    test_cases = sorted(table.loc[table["split"] == "test", "case_id"])
    scores = pd.read_csv(results / "scores/scores.tsv", sep="\t")
    assert sorted(scores["case_id"]) == test_cases
    assert {"dice_kidney_and_masses", "dice_masses", "dice_tumor"} <= set(scores.columns)
    assert scores["dice_kidney_and_masses"].between(0, 1).all()
    for case in test_cases:
        prediction = nib.load(results / f"predictions/{case}.nii.gz")
        reference = nib.load(results / f"raw/{case}/segmentation.nii.gz")
        assert prediction.shape == reference.shape
        assert np.allclose(prediction.affine, reference.affine)
    summary = json.loads((results / "scores/summary.json").read_text())
    assert summary["n_cases"] == len(test_cases)


def test_report_is_self_contained(finished_run):
    html = (finished_run / "results/report/report.html").read_text()
    for heading in ["Case selection", "Training", "Scores per test case", "Overlays"]:
        assert heading in html
    assert html.count("data:image/png;base64,") >= 2 + 1  # two rounds of curves, at least one overlay
    assert not re.search(r"""src=['"](?!data:)""", html), "external resource in the report"


def test_snakemakes_own_report_holds_the_marked_outputs(finished_run, tmp_path):
    target = tmp_path / "snakemake_report.html"
    snakemake(finished_run, "--report", str(target))
    html = target.read_text()
    for name in ["report.html", "cases.tsv", "curves.png", "rounds.tsv", "scores.tsv", "summary.tsv"]:
        assert name in html, name
    for caption in ["segflow: kidney and tumour", "One row per case", "Best epoch of each training round"]:
        assert caption in html, caption  # the workflow description and the captions under report/


def test_nothing_to_do_after_a_complete_run(finished_run):
    process = snakemake(finished_run, "-n")
    assert "Nothing to be done" in process.stdout + process.stderr
