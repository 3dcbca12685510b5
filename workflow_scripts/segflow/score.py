"""Scoring of predictions against references: per case (KiTS regions and labels) and aggregated over cases.

Per case, ``score_files`` gives ``{f"{metric}_{name}": value}`` for every region and label of the ``score`` config
(metrics and conventions: ``segflow.metrics``). ``aggregate`` turns the per-case files into

* ``scores.tsv``: one row per case, columns ``case_id`` then metric by metric (KiTS's dice, sd, hd95 first),
  each over the regions and labels in config order; undefined values (HD95 with one empty mask) are empty cells;
* ``summary.json``: ``{"n_cases": N, "metrics": {column: {mean, median, std, min, n}}}``; statistics skip
  undefined values, ``n`` says how many cases entered, and a column without any value has null statistics;
* ``summary.tsv``: the same statistics as a long table, one row per region or label and metric.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pandas is imported where tables are built: score_case does not need it (a lighter start-up)
    import pandas as pd

from segflow.io import write_json, write_table

# KiTS23 reports Dice and surface Dice; HD95 is the other figure users compare. The rest follow.
METRIC_ORDER = ("dice", "sd", "hd95", "iou", "precision", "recall", "f1")
STATISTICS = ("mean", "median", "std", "min")
# pandas writes floats with repr() when no format is given: the shortest text that reads back to the same float.
# Scores are what users publish and compare, so no rounding here (KiTS's own evaluation keeps 8 decimals).
FULL_PRECISION = None


def score_files(pred_path, ref_path, score_cfg: dict) -> dict[str, float]:
    """Scores of one case, with the reference's voxel spacing in mm. Prediction and reference must share shape
    and affine: anything else is a ValueError naming both files (scoring two grids voxel by voxel would give
    meaningless numbers without any warning)."""
    import nibabel as nib

    from segflow import metrics  # here, not at the top: the report imports this module in an env without scipy

    pred, ref = nib.load(str(pred_path)), nib.load(str(ref_path))
    metrics.check_same_grid(pred.shape, pred.affine, ref.shape, ref.affine, str(pred_path), str(ref_path))
    spacing = tuple(float(z) for z in ref.header.get_zooms()[:3])
    return score_arrays(np.asarray(pred.dataobj), np.asarray(ref.dataobj), spacing, score_cfg)


def score_arrays(pred: np.ndarray, ref: np.ndarray, spacing, score_cfg: dict) -> dict[str, float]:
    """Scores of one case's label maps on one grid (``spacing`` in mm), by the ``score`` config."""
    from segflow import metrics

    tolerances = {**metrics.KITS_TOLERANCES_MM, **score_cfg.get("tolerances_mm", {})}
    return metrics.score_case(
        pred,
        ref,
        spacing,
        {name: tuple(values) for name, values in score_cfg["regions"].items()},
        dict(score_cfg["labels"]),
        tolerances,
    )


def json_scores(scores: dict[str, float]) -> dict[str, float | None]:
    """NaN (HD95 when exactly one mask is empty) as None: strict JSON has no NaN."""
    return {name: (None if math.isnan(value) else value) for name, value in scores.items()}


def aggregate(
    score_paths: list[Path],
    case_ids: list[str],
    scores_tsv,
    summary_json,
    summary_tsv=None,
    score_cfg: dict | None = None,
) -> pd.DataFrame:
    """Write scores.tsv, summary.json and (if given) summary.tsv from per-case score files; return the table.
    ``score_cfg`` orders the columns and names each row of summary.tsv a region or a label."""
    table = read_case_scores(score_paths, case_ids)
    table = table[["case_id", *ordered_columns(table.columns.drop("case_id"), score_cfg)]]
    summary = summarise(table)
    write_table(scores_tsv, table, float_format=FULL_PRECISION)
    write_json(summary_json, {"n_cases": len(table), "metrics": summary})
    if summary_tsv is not None:
        write_table(summary_tsv, summary_long(summary, score_cfg), float_format=FULL_PRECISION)
    return table


def read_case_scores(score_paths: list[Path], case_ids: list[str]) -> pd.DataFrame:
    import pandas as pd

    rows = []
    for case_id, path in zip(case_ids, score_paths, strict=True):
        with open(path) as handle:
            rows.append({"case_id": case_id, **json.load(handle)["scores"]})
    table = pd.DataFrame(rows)
    scores = table.drop(columns="case_id").astype(float)  # null (undefined HD95) becomes NaN
    return pd.concat([table[["case_id"]], scores], axis=1)


def ordered_columns(columns, score_cfg: dict | None = None) -> list[str]:
    """Metric by metric in METRIC_ORDER; within a metric, regions then labels in config order (without a config,
    in the order they come); columns of unknown metrics last."""
    names = list(dict.fromkeys(split_column(c)[1] for c in columns))
    if score_cfg:
        # dict.fromkeys: a label named like a region (tumor) is one set of columns
        configured = list(dict.fromkeys([*score_cfg["regions"], *score_cfg["labels"]]))
        names = [n for n in configured if n in names] + [n for n in names if n not in configured]
    known = [f"{metric}_{name}" for metric in METRIC_ORDER for name in names if f"{metric}_{name}" in columns]
    return known + [c for c in columns if c not in known]


def split_column(column: str) -> tuple[str, str]:
    """'hd95_kidney_and_masses' -> ('hd95', 'kidney_and_masses'): metric names have no underscore."""
    metric, _, name = column.partition("_")
    return metric, name


def summarise(table: pd.DataFrame) -> dict[str, dict]:
    return {column: statistics(table[column]) for column in table.columns if column != "case_id"}


def statistics(column: pd.Series) -> dict:
    """mean, median, std (population, ddof=0: defined for a single case too), min, and n, the number of cases
    with a value. pandas skips NaN; a statistic of no values at all is None (null in JSON)."""
    values = column.astype(float)
    stats = {
        "mean": values.mean(),
        "median": values.median(),
        "std": values.std(ddof=0),
        "min": values.min(),
    }
    return {**{key: _finite_or_none(value) for key, value in stats.items()}, "n": int(values.notna().sum())}


def summary_long(summary: dict[str, dict], score_cfg: dict | None = None) -> pd.DataFrame:
    """One row per region or label and metric: name, kind (region | label), label values, metric, statistics.
    A label named like a region (KiTS: tumor = label 2) is scored once, as the region (segflow.metrics)."""
    import pandas as pd

    regions = (score_cfg or {}).get("regions", {})
    labels = (score_cfg or {}).get("labels", {})
    rows = []
    for column in ordered_columns(list(summary), score_cfg):
        metric, name = split_column(column)
        if name in regions:
            kind, values = ("region and label" if name in labels else "region"), regions[name]
        elif name in labels:
            kind, values = "label", [labels[name]]
        else:
            kind, values = "", []
        label_values = "+".join(str(v) for v in values)
        rows.append({"name": name, "kind": kind, "labels": label_values, "metric": metric, **summary[column]})
    frame = pd.DataFrame(rows, columns=["name", "kind", "labels", "metric", *STATISTICS, "n"])
    # Group the rows by region or label (in first-seen order), metrics in METRIC_ORDER within each.
    order = {name: i for i, name in enumerate(dict.fromkeys(frame["name"]))}
    return frame.sort_values("name", key=lambda names: names.map(order), kind="stable").reset_index(drop=True)


def _finite_or_none(value) -> float | None:
    value = float(value)
    return None if np.isnan(value) else value
