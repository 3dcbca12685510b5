"""Scoring of predictions against references: per case (KiTS regions and labels) and aggregated."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from segflow import metrics
from segflow.io import write_json, write_table

log = logging.getLogger(__name__)


def score_files(pred_path, ref_path, score_cfg: dict) -> dict:
    """Scores of one case; the grids must match exactly (a clear error naming both files otherwise)."""
    import nibabel as nib

    pred, ref = nib.load(str(pred_path)), nib.load(str(ref_path))
    metrics.check_same_grid(pred.shape, pred.affine, ref.shape, ref.affine, str(pred_path), str(ref_path))
    spacing = tuple(float(z) for z in ref.header.get_zooms()[:3])
    regions = {name: tuple(labels) for name, labels in score_cfg["regions"].items()}
    tolerances = dict(metrics.KITS_TOLERANCES_MM)
    tolerances.update(score_cfg.get("tolerances_mm", {}))
    return metrics.score_case(
        np.asarray(pred.dataobj), np.asarray(ref.dataobj), spacing, regions, dict(score_cfg["labels"]), tolerances
    )


def aggregate(score_paths: list[Path], case_ids: list[str], scores_tsv, summary_json, summary_tsv=None) -> pd.DataFrame:
    """One row per case in ``scores_tsv``; mean, median, std, min per column in ``summary_json``, and the same as
    a long table with one row per region or label and metric in ``summary_tsv``."""
    import json

    rows = []
    for case_id, path in zip(case_ids, score_paths):
        with open(path) as handle:
            rows.append({"case_id": case_id, **json.load(handle)["scores"]})
    table = pd.DataFrame(rows)
    first = ["case_id"] + [c for c in table.columns if c.startswith("dice_")]
    table = table[first + [c for c in table.columns if c not in first]]
    numeric = table.drop(columns="case_id").astype(float)  # null (undefined HD95) becomes NaN
    summary = {column: _statistics(numeric[column]) for column in numeric.columns}
    # Full precision: these are the numbers users publish (the KiTS evaluation writes 8 decimals).
    write_table(scores_tsv, table, float_format="%.8f")
    write_json(summary_json, {"n_cases": len(table), "metrics": summary})
    if summary_tsv is not None:
        write_table(summary_tsv, summary_long(summary), float_format="%.8f")
    return table


def _statistics(column: pd.Series) -> dict:
    return {
        "mean": _finite(column.mean()),
        "median": _finite(column.median()),
        "std": _finite(column.std(ddof=0)),
        "min": _finite(column.min()),
        "n": int(column.notna().sum()),
    }


def summary_long(summary: dict) -> pd.DataFrame:
    """``{"dice_kidney": stats, ...}`` as rows of (name, metric, mean, median, std, min, n)."""
    rows = []
    for column, stats in summary.items():
        metric, name = column.split("_", 1)
        rows.append({"name": name, "metric": metric, **stats})
    return pd.DataFrame(rows).sort_values(["name", "metric"], kind="stable")


def _finite(value) -> float | None:
    """NaN (e.g. HD95 where one mask is empty) is skipped by pandas; an all-NaN column becomes null in JSON."""
    value = float(value)
    return None if np.isnan(value) else value
