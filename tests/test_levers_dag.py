"""Integration: the tiny DAG with every quality lever switched on, from nothing to the report."""

import importlib.util
import json
import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from workflow import REPO, copy_workflow, planned_jobs, snakemake

from segflow.postprocess import STEPS as POSTPROCESSING_STEPS

LEVERS = {
    # Every case on its own grid of 6 mm pixels (the tiny cases have 5.3-6.4 mm), its slices kept as they are.
    "preprocess": {"size": None, "spacing": [6.0, 6.0, 0]},
    "train": {
        "norm": "instance",
        "context_slices": 3,
        "patch_size": [48, 48],
        "class_balance": "per_case",
        "lr_schedule": "poly",
        "batch_dice": True,
        "dice_smooth": 1.0,
        "dice_targets": "regions",
        "val_max_slices": 40,
        "val_every": 2,
        "ensemble": 2,
        "keep_epoch": "last",
        "postprocess": list(POSTPROCESSING_STEPS),  # every candidate step
        "postprocess_on": "unseen",
        "postprocess_prune": True,
        "augment": {"lesion_paste_prob": 0.5, "lesion_paste_balance": "per_case"},
    },
    "infer": {
        "tta": True,
        "restore": "probabilities",
        "decode": "regions",
        "region_thresholds": {"masses": [0.5, 0.3]},
        "mass_seed": [0, 0.9],
        "slice_sigma_mm": [0, 8],
    },
}


def test_every_lever_runs_through_the_real_dag(tmp_path):
    workdir = copy_workflow(tmp_path / "levers")
    (workdir / "config" / "levers.yaml").write_text(yaml.safe_dump(LEVERS))
    snakemake(workdir, "--configfile", "config/tiny.yaml", "config/levers.yaml")
    results = workdir / "results"

    grids = {tuple(json.loads(meta.read_text())["size"]) for meta in (results / "preprocessed").glob("*/meta.json")}
    assert len(grids) > 1  # the batches of validation and prediction meet several slice sizes
    summary = json.loads((results / "train/best.json").read_text())
    assert len(summary["ensemble"]) == 2 and set(summary["ensemble_rounds"]) == {0, 1}
    assert summary["keep_epoch"] == "last" and all(p.endswith("model_last.pt") for p in summary["ensemble"])
    round_1_log = (results / "logs/train_round/round_1.log").read_text()
    assert "round 1 starts from" in round_1_log and "round_0/model_last.pt" in round_1_log
    assert set(summary["postprocess"]) <= set(LEVERS["train"]["postprocess"])
    assert {row["step"] for row in summary["postprocess_table"]} == set(LEVERS["train"]["postprocess"])
    # Pruned: every kept step was tried without, after the greedy pass
    assert summary["postprocess_prune"] is True
    pruned = {row["step"] for row in summary["postprocess_table"] if row["pass"] == "prune"}
    assert set(summary["postprocess"]) <= pruned
    # Round 1 started from round 0, which trained on round 1's validation patients: only the holdout is unseen.
    split_1 = json.loads((results / "train/round_1/split.json").read_text())
    assert summary["postprocess_cases"] == split_1["holdout"] and split_1["holdout"]
    # Both masses thresholds were tried on those cases with both mass seeds and both blurs across slices, each
    # with its own post-processing.
    assert summary["region_thresholds"]["masses"] in (0.5, 0.3) and summary["mass_seed"] in (0, 0.9)
    assert summary["slice_sigma_mm"] in (0, 8)
    tried = {row["decoding"] for row in summary["threshold_table"]}
    blurs = ("", ", slices blurred 8 mm")
    assert tried == {f"masses {t}, mass seed {s}{b}" for t in (0.5, 0.3) for s in (0, 0.9) for b in blurs}
    assert sum(row["chosen"] for row in summary["threshold_table"]) == len(summary["threshold_table"]) // 8
    for round_index in (0, 1):
        log = (results / "logs/train_round" / f"round_{round_index}.log").read_text()
        assert "dice_ce loss, Dice over the regions kidney_and_masses, masses, tumor" in log
        cuts = re.search(r"lesion copy-paste: (\d+) lesion cuts from \d+ training cases", log)
        assert cuts and int(cuts.group(1)) > 0
        metrics = pd.read_csv(results / "train" / f"round_{round_index}" / "metrics.csv")
        assert metrics["val_loss"].isna().to_list() == [True, False]  # 2 epochs: val_every 2 validates the last
    best = torch.load(results / "train/best.pt", weights_only=False)
    assert len(best["members"]) == 2 and best["members"][0]["model_cfg"]["context_slices"] == 3

    for prediction in (results / "predictions").glob("*.nii.gz"):
        case = prediction.name.removesuffix(".nii.gz")
        raw = nib.load(results / "raw" / case / "imaging.nii.gz")
        saved = nib.load(prediction)
        assert saved.shape == raw.shape and np.array_equal(saved.affine, raw.affine)
        log = (results / "logs/predict_case" / f"{case}.log").read_text()
        assert "2 model(s), tta True, restore probabilities, decode regions (thresholds {'masses'" in log
        blurred = f", slices blurred {summary['slice_sigma_mm']:g} mm" if summary["slice_sigma_mm"] else ""
        assert f", mass seed {summary['mass_seed']:g}{blurred}, post-processing" in log
    kept = "softmax blurred across slices by 8 mm" if summary["slice_sigma_mm"] else "no blur across slices"
    assert f"{kept} (of 0, 8 mm)" in (results / "report/report.html").read_text()
    check_paired_decodings(workdir, tmp_path / "decodings.tsv")
    # Changing only the way back reruns prediction and what follows it, never training.
    (workdir / "config" / "labels.yaml").write_text(yaml.safe_dump({"infer": {"tta": True, "restore": "labels"}}))
    rerun = snakemake(workdir, "-n", "--configfile", "config/tiny.yaml", "config/levers.yaml", "config/labels.yaml")
    plan = planned_jobs(rerun.stdout)
    assert "train_round" not in plan and plan.get("predict_case", 0) >= 1


def check_paired_decodings(workdir, out):
    """benchmarks/decodings.py on the finished folder: its pipeline row is the pipeline's own score of each test
    case (decode regions, the masses threshold select_model chose), and the argmax, the plain regions and every
    masses threshold, from the same probabilities, are there beside it."""
    spec = importlib.util.spec_from_file_location("decodings", REPO / "benchmarks" / "decodings.py")
    decodings = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(decodings)
    configs = [workdir / "config" / name for name in ("config.yaml", "tiny.yaml", "levers.yaml")]
    results = workdir / "results"
    decodings.main(["--results", str(results), "--configfile", *map(str, configs), "--out", str(out), "--threads", "1"])
    table = pd.read_csv(out, sep="\t")
    assert list(table["decode"].unique()) == ["argmax", "regions", "regions masses 0.5", "regions masses 0.3"]
    for case, rows in table.groupby("case_id"):
        pipeline = json.loads((results / "scores/cases" / f"{case}.json").read_text())["scores"]
        assert rows["pipeline"].sum() == 1  # the thresholds select_model chose
        ours = rows[rows["pipeline"]].iloc[0]
        for name in ("dice_kidney_and_masses", "dice_masses", "dice_tumor"):
            expected = float("nan") if pipeline[name] is None else pipeline[name]  # JSON writes NaN as null
            assert ours[name] == pytest.approx(expected, abs=1e-9, nan_ok=True)
