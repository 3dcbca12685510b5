"""What profiles/slurm submits for the kits23 preset's 489 cases: local jobs, group jobs and their requests.

No network and no cluster: the case list is static, and tests/slurm/plan_jobs.py asks Snakemake's own DAG what
the SLURM executor would be handed (a plain dry run cannot show groups or local jobs). Jobs after the checkpoint
select_cases are planned from a results tree with empty raw files and a selection table that keeps every case:
the worst case for the number of jobs.
"""

import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml
from workflow import REPO, copy_workflow, rule_resources

from segflow.selection import FIGURE_COLUMNS, FIRST_COLUMNS, split_patients, write_selection
from segflow.sources import list_cases

N_CASES = 489
# The documented ceiling (docs/slurm.md, "489 cases"): sbatch submissions for the whole kits23 preset with
# profiles/slurm, every case selected. About 1,700 without groups; 51 with the profile's group sizes.
SUBMISSION_CEILING = 60
KITS23 = ["--configfile", "config/tiny.yaml", "config/kits23.yaml"]
LOCAL_RULES = {"download_case", "select_cases", "plot_curves", "aggregate_scores", "render_report"}


def plan(workdir: Path, *args: str, profile: str = "profiles/slurm") -> dict:
    command = [sys.executable, str(REPO / "tests/slurm/plan_jobs.py"), "-n", "--profile", profile, *KITS23, *args]
    process = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    lines = [line for line in process.stdout.splitlines() if line.startswith("PLAN ")]
    assert process.returncode == 0 and lines, process.stdout[-3000:] + process.stderr[-3000:]
    return json.loads(lines[0].removeprefix("PLAN "))


def group_sizes(profile_dir: Path) -> dict[str, int]:
    profile = yaml.safe_load((profile_dir / "config.yaml").read_text())
    return {name: int(size) for name, size in (entry.split("=") for entry in profile["group-components"])}


def check_groups(submitted: list[dict], group: str, rules: set[str], cases: int, size: int) -> list[dict]:
    """Every case's jobs of these rules in exactly one group job of the group, none over the group size."""
    units = [unit for unit in submitted if unit["group"] == group]
    counts = [Counter(unit["rules"]) for unit in units]
    assert all(set(c) == rules for c in counts), counts
    for rule in rules:
        assert sum(c[rule] for c in counts) == cases, f"{rule}: {sum(c[rule] for c in counts)} jobs for {cases} cases"
    assert max(c[next(iter(rules))] for c in counts) <= size
    assert len(units) == math.ceil(cases / size), f"{len(units)} {group} group jobs for {cases} cases"
    assert not any(unit["group"] is None and set(unit["rules"]) & rules for unit in submitted)
    return units


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("plan"))


@pytest.fixture(scope="module")
def first_plan(workdir):
    return plan(workdir)


@pytest.fixture(scope="module")
def after_selection_plan(tmp_path_factory):
    """The plan once select_cases has run: raw files, inspections and a selection table of all 489 cases."""
    workdir = copy_workflow(tmp_path_factory.mktemp("plan_after"))
    config = yaml.safe_load((workdir / "config/kits23.yaml").read_text())
    seed = yaml.safe_load((workdir / "config/tiny.yaml").read_text())["seed"]
    results = workdir / config["results_dir"]
    cases = list_cases(config["dataset"], seed)
    later = time.time() + 5  # outputs newer than their inputs, step by step, so nothing before the checkpoint reruns

    def make(path: Path, step: int, text: str = "") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.utime(path, (later + step, later + step))

    for case in cases:
        make(results / "raw" / case / "imaging.nii.gz", 0)
        make(results / "raw" / case / "segmentation.nii.gz", 0)
        make(results / "benchmarks/download_case" / f"{case}.tsv", 0)  # the report reads every job's benchmark
        make(results / "inspect" / f"{case}.json", 1, "{}")
        make(results / "benchmarks/inspect_case" / f"{case}.tsv", 1)
    make(results / "benchmarks/select_cases/select_cases.tsv", 2)
    splits = split_patients(cases, 0.25, seed)
    table = pd.DataFrame({"case_id": cases, "selected": True, "reason": "", "patient_id": cases})
    table["split"] = table["patient_id"].map(splits)
    table = table.reindex(columns=FIRST_COLUMNS + FIGURE_COLUMNS, fill_value="")
    write_selection(results / "selection/cases.tsv", table)
    os.utime(results / "selection/cases.tsv", (later + 2, later + 2))
    return plan(workdir), Counter(splits.values())


def test_downloads_and_light_rules_are_local_jobs(first_plan):
    local = first_plan["local"]
    assert local["download_case"] == N_CASES
    assert set(local) == LOCAL_RULES | {"all"}
    submitted_rules = {rule for unit in first_plan["submitted"] for rule in unit["rules"]}
    assert not submitted_rules & LOCAL_RULES


def test_inspections_run_in_groups_that_ask_for_one_case_at_a_time(first_plan):
    size = group_sizes(REPO / "profiles/slurm")["inspect"]
    units = check_groups(first_plan["submitted"], "inspect", {"inspect_case"}, N_CASES, size)
    # One case at a time (the job step runs a group's jobs in series): one case's memory and CPUs, summed runtime.
    # Every group job is checked: the last one holds the remainder, and the plan's order of group jobs is not fixed.
    own = rule_resources()["inspect_case"]  # the rule's own; profiles/slurm sets no memory or runtime
    for unit in units:
        jobs = Counter(unit["rules"])["inspect_case"]
        assert unit["resources"]["mem_mb"] == own["mem_mb"] and unit["resources"]["_cores"] == 1
        assert unit["resources"]["runtime"] == jobs * own["runtime"], (jobs, unit["resources"])
    assert max(Counter(unit["rules"])["inspect_case"] for unit in units) == size


def test_whole_kits23_plan_stays_under_the_submission_ceiling(first_plan, after_selection_plan):
    later, splits = after_selection_plan
    sizes = group_sizes(REPO / "profiles/slurm")
    assert set(later["local"]) == {"plot_curves", "aggregate_scores", "render_report", "all"}  # none before it
    check_groups(later["submitted"], "preprocess", {"preprocess_case"}, N_CASES, sizes["preprocess"])
    predict = check_groups(
        later["submitted"], "predict", {"predict_case", "score_case"}, splits["test"], sizes["predict"]
    )
    assert all(unit["resources"]["gpu"] == 1 for unit in predict)  # one GPU per group job, cases one after another
    single = Counter(rule for unit in later["submitted"] if unit["group"] is None for rule in unit["rules"])
    assert single == {"train_round": 3, "select_model": 1}

    # Jobs before the checkpoint come from the first plan; the rest (train_round onwards) from the second.
    inspect_jobs = len([unit for unit in first_plan["submitted"] if unit["group"] == "inspect"])
    total = inspect_jobs + len(later["submitted"])
    # Before groups and localrules: one per job (download, inspect, preprocess per case; predict, score per test case;
    # 3 rounds, select_cases, select_model, aggregate_scores, render_report).
    one_per_job = 3 * N_CASES + 2 * splits["test"] + 3 + 4
    print(f"kits23 with profiles/slurm: {total} submissions ({one_per_job} with one per job)")
    assert total <= SUBMISSION_CEILING


def test_compute_nodes_with_internet_switch_submits_downloads_in_the_inspect_groups(workdir, tmp_path):
    profile = tmp_path / "slurm_with_internet"
    profile.mkdir()
    text = (REPO / "profiles/slurm/config.yaml").read_text()
    switched = text.replace("  # download_case: inspect", "  download_case: inspect").replace(
        "    # group_slot: 1           # <- with the download_case group",
        "    group_slot: 1           # with the group",
    )
    assert switched.count("download_case: inspect") == 1 and switched != text
    (profile / "config.yaml").write_text(switched)
    result = plan(workdir, profile=str(profile))
    assert "download_case" not in result["local"]
    size = group_sizes(profile)["inspect"]
    units = check_groups(result["submitted"], "inspect", {"download_case", "inspect_case"}, N_CASES, size)
    assert all(unit["resources"]["_cores"] == 1 for unit in units)
