"""The FLARE22 (3D VNet, four organs) and UW-Madison (MRI, 2D, three GI organs) presets through the real Snakemake
DAG, on offline stand-ins in the datasets' own layouts (tests/preset_fixtures.py), from import to the report."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from preset_fixtures import flare22_zip, uwmgi_folder
from workflow import copy_workflow, planned_jobs, snakemake

# Tiny sizes on top of each preset, and 4 cases: each DAG in under a minute on 2 cores (about 50 s when idle).
FLARE_TINY = {
    "preprocess": {"size": None, "spacing": [6.0, 6.0, 6.0]},
    "train": {"channels": [4, 8], "patch_size": [16, 32, 32], "batch_size": 2, "rounds": 2, "epochs": 1,
              "samples_per_epoch": 4, "patience": 2},
    "infer": {"batch_size": 2},
}  # fmt: skip
UW_TINY = {"train": {"model": "deeplabv3plus", "context_slices": 1}}


def preset_args(workdir, preset: str, overrides: dict) -> list[str]:
    (workdir / "config" / "local.yaml").write_text(yaml.safe_dump(overrides))
    return ["--configfile", f"config/{preset}.yaml", "config/tiny.yaml", "config/local.yaml"]


@pytest.fixture(scope="module")
def flare_run(tmp_path_factory):
    zip_path = flare22_zip(tmp_path_factory.mktemp("flare_data"), n_cases=4)  # 1 test, 3 to train and validate
    workdir = copy_workflow(tmp_path_factory.mktemp("flare_run"))
    overrides = {**FLARE_TINY, "dataset": {"source": "flare22", "path": str(zip_path)}}
    args = preset_args(workdir, "flare22", overrides)
    dry = snakemake(workdir, "-n", *args)
    assert planned_jobs(dry.stdout)["download_case"] == 4
    snakemake(workdir, *args)
    return workdir, args


def test_flare22_preset_runs_the_3d_path_to_the_report(flare_run):
    workdir, _ = flare_run
    results = workdir / "results"
    table = pd.read_csv(results / "selection/cases.tsv", sep="\t", keep_default_na=False)
    assert table.loc[table["selected"], "label_values"].str.fullmatch(r"0,1,2,3,4").all()  # 13 mapped to 4
    meta = json.loads(next((results / "preprocessed").glob("*/meta.json")).read_text())
    image = np.load(next((results / "preprocessed").glob("*/image.npy")))
    assert meta["resampling"]["spacing"] == [6.0, 6.0, 6.0] and list(image.shape) == [meta["n_slices"], *meta["size"]]
    checkpoint_cfg = __import__("torch").load(results / "train/best.pt", weights_only=False)["model_cfg"]
    assert checkpoint_cfg["dims"] == 3 and checkpoint_cfg["model"] == "vnet"
    scores = pd.read_csv(results / "scores/scores.tsv", sep="\t")
    assert {"dice_liver", "dice_right_kidney", "dice_spleen", "dice_left_kidney", "dice_organs"} <= set(scores)
    for case in scores["case_id"]:
        prediction = nib.load(results / f"predictions/{case}.nii.gz")
        reference = nib.load(results / f"raw/{case}/segmentation.nii.gz")
        assert prediction.shape == reference.shape and np.allclose(prediction.affine, reference.affine)
    html = (results / "report/report.html").read_text()
    assert "liver" in html and "left_kidney" in html and "#d2691e" in html  # names and colours from the preset
    assert "kidney_and_masses" not in html


def test_flare22_nothing_to_do_afterwards(flare_run):
    workdir, args = flare_run
    process = snakemake(workdir, "-n", *args)
    assert "Nothing to be done" in process.stdout + process.stderr


def test_uwmgi_preset_runs_mri_with_deeplabv3plus_to_the_report(tmp_path):
    root = uwmgi_folder(tmp_path / "uw_data")
    workdir = copy_workflow(tmp_path / "uw_run")
    args = preset_args(workdir, "uwmgi", {**UW_TINY, "dataset": {"source": "uwmgi", "path": str(root)}})
    snakemake(workdir, *args)
    results = workdir / "results"
    table = pd.read_csv(results / "selection/cases.tsv", sep="\t", keep_default_na=False)
    assert set(table.loc[table["patient_id"] == "case1", "split"]) in ({"trainval"}, {"test"})  # days share a split
    meta = json.loads(next((results / "preprocessed").glob("*/meta.json")).read_text())
    assert meta["modality"] == "mri" and meta["zscore"]["percentiles"] == [0.5, 99.5]
    image = np.load(next((results / "preprocessed").glob("*/image.npy")))
    assert image.min() < -0.5 and image.max() > 1.5  # z-scores, not a [0, 1] window
    scores = pd.read_csv(results / "scores/scores.tsv", sep="\t")
    assert {"dice_large_bowel", "dice_small_bowel", "dice_stomach", "dice_gi_tract"} <= set(scores)
    checkpoint_cfg = __import__("torch").load(results / "train/best.pt", weights_only=False)["model_cfg"]
    assert checkpoint_cfg["model"] == "deeplabv3plus" and checkpoint_cfg["dims"] == 2
    html = (results / "report/report.html").read_text()
    assert "small_bowel" in html and "#00e676" in html


def test_mri_preset_pointed_at_ct_fails_in_one_line_naming_the_key(tmp_path):
    """The uwmgi preset on CT phantoms (air at -1000 HU): every case is left out, and select_cases says why."""
    workdir = copy_workflow(tmp_path / "uw_ct_run")
    args = preset_args(workdir, "uwmgi", {"dataset": {"source": "synthetic"}})
    process = snakemake(workdir, *args, "--until", "select_cases", check=False)
    assert process.returncode != 0
    lines = process.stderr.splitlines()
    line = next(x for x in lines if x.startswith("segflow: select_cases:") and "trainval" in x)
    assert "modality is mri" in line
