"""Small fabricated inputs for the report, so report tests run in seconds without the pipeline.

Three test cases with known boxes (one prediction misses the tumour, so its tumour HD95 is undefined), a case left
out by selection, two training rounds, benchmark files, and scores computed by the real scoring code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from helpers import config_with_defaults

from segflow.io import save_nifti
from segflow.report import ReportInputs, render_report
from segflow.score import aggregate, json_scores, score_files

SHAPE = (40, 36, 12)
AFFINE = np.diag([-2.0, -2.0, 4.0, 1.0])
CONFIG = {"dataset": {"source": "synthetic", "n_cases": 5}, "train": {"rounds": 2, "epochs": 3}}
# case -> (shift of the predicted kidney in voxels along x, whether the tumour is predicted)
TEST_CASES = {"case_b": (0, True), "case_a": (2, True), "case_c": (4, False)}
BENCHMARKS = {"download_case": [3.0, 2.0], "train_round": [40.0, 35.5], "score_case": [1.25]}
# The same volumes as two organs of a FLARE22-like label set: names, regions, colours and headline from the config.
ORGAN_CONFIG = {
    **CONFIG,
    "score": {
        "regions": {"organs": [1, 2]}, "labels": {"liver": 1, "spleen": 2}, "headline": "organs",
        "colours": {"liver": "#d2691e", "spleen": "#aa00ff"}, "seed_dice": {}, "tolerances_mm": {"organs": 1.0},
    },
}  # fmt: skip


def fabricate_report(folder: Path, config: dict | None = None) -> Path:
    """Write the inputs under ``folder`` and render ``folder/report.html``; return its path."""
    inputs = fabricate_inputs(folder, config)
    output = folder / "report.html"
    render_report(inputs, output)
    return output


def fabricate_inputs(folder: Path, config: dict | None = None) -> ReportInputs:
    config = config_with_defaults(config or CONFIG)
    cases = {case: _write_case(folder / "cases" / case, *spec) for case, spec in TEST_CASES.items()}
    score_paths = []
    for case, paths in cases.items():
        score_paths.append(folder / "scores" / f"{case}.json")
        scores = json_scores(score_files(paths["prediction"], paths["reference"], config["score"]))
        score_paths[-1].parent.mkdir(parents=True, exist_ok=True)
        score_paths[-1].write_text(json.dumps({"case_id": case, "scores": scores}))
    aggregate(
        score_paths,
        list(cases),
        folder / "scores.tsv",
        folder / "summary.json",
        folder / "summary.tsv",
        config["score"],
    )
    metrics, curves = _write_rounds(folder)
    return ReportInputs(
        selection_tsv=_write_selection(folder),
        round_metrics=metrics,
        round_curves=curves,
        best_json=_write_json(folder / "best.json", {"round": 1, "select_by": "val_loss", "val_loss": 0.41}),
        rounds_tsv=_write_rounds_table(folder),
        scores_tsv=folder / "scores.tsv",
        summary_json=folder / "summary.json",
        cases=cases,
        config=config,
        benchmarks=_write_benchmarks(folder / "benchmarks"),
        workflow_dir=folder,  # not a git checkout: the commit reads "unknown"
    )


def _write_case(folder: Path, shift: int, tumour_found: bool) -> dict[str, Path]:
    image = np.full(SHAPE, -1000, np.int16)
    image[4:-4, 4:-4, :] = 40
    reference = np.zeros(SHAPE, np.uint8)
    reference[10:26, 10:22, 3:9] = 1
    reference[8:28, 10:22, 5] = 1  # the largest slice, which the overlays show, goes through the tumour
    reference[14:19, 13:18, 4:7] = 2
    image[reference == 1], image[reference == 2] = 180, 110
    prediction = np.roll(reference, shift, axis=0)
    if not tumour_found:
        prediction[prediction == 2] = 1
    paths = {
        "image": folder / "imaging.nii.gz",
        "reference": folder / "segmentation.nii.gz",
        "prediction": folder / "prediction.nii.gz",
    }
    for key, array in (("image", image), ("reference", reference), ("prediction", prediction)):
        save_nifti(paths[key], array, AFFINE)
    return paths


def _write_selection(folder: Path) -> Path:
    rows = [(case, True, "", "test") for case in sorted(TEST_CASES)]
    rows += [("case_t1", True, "", "trainval"), ("case_x", False, "120 slices > max_slices 110", "")]
    table = pd.DataFrame(rows, columns=["case_id", "selected", "reason", "split"])
    table["n_slices"] = [12, 12, 12, 12, 120]
    path = folder / "cases.tsv"
    table.to_csv(path, sep="\t", index=False)
    return path


def _write_rounds(folder: Path) -> tuple[list[Path], list[Path]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics, curves = [], []
    for round_index in (0, 1):
        epochs = np.arange(3)
        frame = pd.DataFrame(
            {
                "round": round_index,
                "epoch": epochs,
                "train_loss": 1.0 / (epochs + 1 + round_index),
                "val_loss": 1.1 / (epochs + 1 + round_index),
                "val_dice": 0.5 + 0.1 * epochs + 0.05 * round_index,
            }
        )
        metrics.append(folder / f"round_{round_index}" / "metrics.csv")
        metrics[-1].parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(metrics[-1], index=False)
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.plot(frame["epoch"], frame["val_loss"])
        curves.append(metrics[-1].with_name("curves.png"))
        fig.savefig(curves[-1])
        plt.close(fig)
    return metrics, curves


def _write_rounds_table(folder: Path) -> Path:
    table = pd.DataFrame(
        {
            "round": [0, 1],
            "best_epoch": [2, 1],
            "val_loss": [0.55, 0.41],
            "val_dice": [0.7, 0.8],
            "checkpoint": ["round_0/model_best.pt", "round_1/model_best.pt"],
        }
    )
    path = folder / "rounds.tsv"
    table.to_csv(path, sep="\t", index=False)
    return path


def _write_benchmarks(folder: Path) -> list[Path]:
    paths = []
    for rule, seconds in BENCHMARKS.items():
        for i, value in enumerate(seconds):
            paths.append(folder / rule / f"job_{i}.tsv")
            paths[-1].parent.mkdir(parents=True, exist_ok=True)
            paths[-1].write_text(f"s\th:m:s\tmax_rss\n{value}\t0:00:{int(value):02d}\t100.0\n")
    return paths


def _write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


_SHARED: dict[str, Path] = {}


def shared_report(tmp_path_factory) -> Path:
    """One fabricated report per test session, for every test module that reads it."""
    if "report" not in _SHARED:
        _SHARED["report"] = fabricate_report(tmp_path_factory.mktemp("fabricated_report"))
    return _SHARED["report"]
