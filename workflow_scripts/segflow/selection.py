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


def rejection_reason(report: dict, max_slices: int, hu_min: float | None, hu_max: float | None) -> str:
    """Why a case is left out ('' when it is kept); data problems come first, then the filters."""
    if report.get("problems"):
        return "; ".join(report["problems"])
    reasons = []
    if report["n_slices"] > max_slices:
        reasons.append(f"{report['n_slices']} slices > max_slices {max_slices}")
    if hu_min is not None and report["hu_min"] < hu_min:  # null switches a filter off (MRI has no HU)
        reasons.append(f"HU min {report['hu_min']:g} < hu_min {hu_min:g}")
    if hu_max is not None and report["hu_max"] > hu_max:
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


# --- what the selection leaves, in one line -------------------------------------------------------------------------

FILTERS = (  # (pattern of a reason part written by rejection_reason, config key, figure, how to say it)
    (re.compile(r"\d+ slices > max_slices"), "max_slices", "n_slices",
     "{n} {have} more than selection.max_slices ({value:g}) slices (theirs {spread})"),
    (re.compile(r"HU min \S+ < hu_min"), "hu_min", "hu_min",
     "{n} {have} HU min below selection.hu_min ({value:g}; their minima {spread})"),
    (re.compile(r"HU max \S+ > hu_max"), "hu_max", "hu_max",
     "{n} {have} HU max above selection.hu_max ({value:g}; their maxima {spread})"),
)  # fmt: skip
MIN_TRAINVAL_PATIENTS = 2  # a training round splits its patients into train and val


def _parts(reason: str) -> list[str]:
    return reason.split("; ") if reason else []


def reason_counts(table: pd.DataFrame, selection: dict) -> list[tuple[str, str]]:
    """(config key or "data", words) per reason cases were left out, with counts (a case may count twice)."""
    left_out = table[~table["selected"]]
    counts = []
    for pattern, key, figure, words in FILTERS:
        hit = left_out[left_out["reason"].map(lambda r: any(pattern.match(p) for p in _parts(r)))]
        if len(hit):
            values = pd.to_numeric(hit[figure], errors="coerce")
            spread = f"{values.min():g}" if values.min() == values.max() else f"{values.min():g}..{values.max():g}"
            have = "has" if len(hit) == 1 else "have"
            counts.append((key, words.format(n=len(hit), have=have, value=selection[key], spread=spread)))
    by_filter = lambda part: any(pattern.match(part) for pattern, *_ in FILTERS)  # noqa: E731
    problems = left_out[left_out["reason"].map(lambda r: not all(by_filter(p) for p in _parts(r)))]
    if len(problems):
        first = problems.iloc[0]
        have = "has" if len(problems) == 1 else "have"
        counts.append(("data", f"{len(problems)} {have} data problems (e.g. {first['case_id']}: {first['reason']})"))
    return counts


def summary_line(table: pd.DataFrame, selection: dict, details: str = "selection/cases.tsv") -> str:
    """One line for the terminal: how many cases were kept, in which split, and why the others were left out."""
    kept = table[table["selected"]]
    splits = kept["split"].value_counts()
    counts = f"{splits.get('trainval', 0)} trainval, {splits.get('test', 0)} test"
    line = f"{len(kept)} of {len(table)} cases selected ({counts})"
    if len(kept) < len(table):
        reasons = ", ".join(words for _, words in reason_counts(table, selection))
        line += f"; {len(table) - len(kept)} left out: {reasons}; reasons per case in {details}"
    return line


def check_trainable(table: pd.DataFrame, selection: dict, details: str = "the select_cases log") -> None:
    """Raise SelectionError (one line: counts per reason, the config keys behind them, what to change) unless the
    selection leaves at least two trainval patients (a round's train and val) and one test case."""
    if table.empty:
        raise SelectionError(
            "no cases to select from: dataset.cases (or dataset.n_cases) chooses none of the source's cases; "
            "widen that range or list"
        )
    kept = table[table["selected"].astype(bool)]
    trainval_patients = kept.loc[kept["split"] == "trainval", "patient_id"].nunique()
    n_test = int((kept["split"] == "test").sum())
    if trainval_patients >= MIN_TRAINVAL_PATIENTS and n_test >= 1:
        return
    counts = reason_counts(table, selection)
    causes = [words for _, words in counts]
    fixes = [f"relax selection.{key}" for key, _ in counts if key != "data"]
    if any(key == "data" for key, _ in counts):
        fixes.append("fix or replace the cases with data problems")
    patients = kept["patient_id"].nunique()
    if patients:
        test_patients = kept.loc[kept["split"] == "test", "patient_id"].nunique()
        causes.append(
            f"selection.test_fraction ({selection['test_fraction']:g}) puts {test_patients} of the {patients} "
            f"selected patients in test"
        )
        fixes.append("change selection.test_fraction")
    if table["patient_id"].nunique() < MIN_TRAINVAL_PATIENTS + 1:
        fixes.append("add cases (dataset.cases, dataset.n_cases)")
    raise SelectionError(
        f"{trainval_patients} trainval patients and {n_test} test cases left of {len(table)} cases (training needs "
        f"{MIN_TRAINVAL_PATIENTS} trainval patients, scoring 1 test case): {', '.join(causes)}; "
        f"{', '.join(fixes)}, or see the reason per case in {details}"
    )
