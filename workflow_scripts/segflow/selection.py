"""Case selection: filter inspected cases on slice count and HU range, then split patients into trainval/test.

The table written here is the contract for everything downstream: one row per case with ``case_id``,
``selected`` (true/false), ``reason`` (why not, empty when selected), ``split`` (trainval, test, or empty) and the
inspected figures.
"""

from __future__ import annotations

import math
import re

import pandas as pd

from segflow.seeding import derive_seed

FIRST_COLUMNS = ["case_id", "selected", "reason", "split", "patient_id"]
FIGURE_COLUMNS = ["n_slices", "hu_min", "hu_max", "shape", "spacing", "label_values"]


class SelectionError(RuntimeError):
    """Raised in strict mode when any case has data problems; the message lists every bad case."""


def patient_of(case_id: str) -> str:
    """Cases of one patient share a split: UW-Madison style ``case12_day20`` belongs to patient ``case12``."""
    match = re.fullmatch(r"(.+?)_day\d+", case_id)
    return match.group(1) if match else case_id


def rejection_reason(report: dict, max_slices: int, hu_min: float, hu_max: float) -> str:
    """Why a case is left out ('' when it is kept); data problems come first, then the filters."""
    if report.get("problems"):
        return "; ".join(report["problems"])
    reasons = []
    if report["n_slices"] > max_slices:
        reasons.append(f"{report['n_slices']} slices > max_slices {max_slices}")
    if report["hu_min"] < hu_min:
        reasons.append(f"HU min {report['hu_min']:g} < hu_min {hu_min:g}")
    if report["hu_max"] > hu_max:
        reasons.append(f"HU max {report['hu_max']:g} > hu_max {hu_max:g}")
    return "; ".join(reasons)


def split_patients(patients: list[str], test_fraction: float, seed: int) -> dict[str, str]:
    """Seeded patient-level split; at least one test and one trainval patient whenever there are two or more.

    Patients are ranked by a hash of (seed, patient) and the first ``test_fraction`` go to test. Unlike a
    permutation of the list, the ranking of existing patients does not change when cases are added, so a new case
    moves at most one patient across the boundary instead of reshuffling the whole test set.
    """
    unique = sorted(set(patients))
    order = sorted(unique, key=lambda patient: derive_seed(seed, "test_split", patient))
    n_test = int(math.floor(test_fraction * len(unique) + 0.5))
    if len(unique) >= 2 and test_fraction > 0:
        n_test = min(max(n_test, 1), len(unique) - 1)
    test = set(order[:n_test])
    return {p: ("test" if p in test else "trainval") for p in unique}


def select_cases(reports: list[dict], selection: dict, seed: int) -> pd.DataFrame:
    """Build the selection table from inspection reports and the ``selection`` config section."""
    if selection.get("strict"):
        bad = [f"{r['case_id']}: {'; '.join(r['problems'])}" for r in reports if r.get("problems")]
        if bad:
            raise SelectionError(f"{len(bad)} case(s) have data problems (selection.strict): " + " | ".join(bad))
    rows = []
    for report in sorted(reports, key=lambda r: r["case_id"]):
        reason = rejection_reason(report, selection["max_slices"], selection["hu_min"], selection["hu_max"])
        row = {"case_id": report["case_id"], "selected": not reason, "reason": reason, "split": ""}
        row["patient_id"] = patient_of(report["case_id"])
        row.update({key: _cell(report.get(key), "," if key == "label_values" else "x") for key in FIGURE_COLUMNS})
        rows.append(row)
    table = pd.DataFrame(rows, columns=FIRST_COLUMNS + FIGURE_COLUMNS)
    kept = table["selected"]
    splits = split_patients(list(table.loc[kept, "patient_id"]), selection["test_fraction"], seed)
    table.loc[kept, "split"] = table.loc[kept, "patient_id"].map(splits)
    return table


def read_selection(path) -> pd.DataFrame:
    table = pd.read_csv(path, sep="\t", dtype={"case_id": str, "reason": str, "split": str}, keep_default_na=False)
    table["selected"] = table["selected"].astype(str).str.lower() == "true"
    return table


def cases_in_split(table: pd.DataFrame, split: str | None = None) -> list[str]:
    """Selected case ids, optionally only those of one split, in table order."""
    chosen = table["selected"] if split is None else table["selected"] & (table["split"] == split)
    return list(table.loc[chosen, "case_id"])


def _cell(value, separator: str):
    """Lists become compact strings in the table: shape 512x512x611, label values 0,1,2."""
    if isinstance(value, (list, tuple)):
        return separator.join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return value


def write_selection(path, table: pd.DataFrame) -> None:
    from segflow.io import write_table

    write_table(path, table.assign(selected=table["selected"].map({True: "true", False: "false"})))
