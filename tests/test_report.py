import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

from segflow.report import RULE_GRAPH, git_commit, pick_cases, rule_timings

REPO = Path(__file__).resolve().parents[1]


def test_rule_graph_matches_snakemakes_own():
    snakemake = Path(sys.executable).with_name("snakemake")
    dot = subprocess.run([str(snakemake), "--rulegraph"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    names = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)"', dot, flags=re.M))
    edges = {(names[a], names[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", dot, flags=re.M)}
    assert edges - {(source, "all") for source, _ in edges} == set(RULE_GRAPH)


def test_pick_cases_best_median_worst():
    scores = pd.DataFrame({"case_id": ["a", "b", "c", "d"], "dice_kidney_and_masses": [0.9, 0.5, 0.7, 0.95]})
    assert pick_cases(scores) == {"best": "d", "median": "c", "worst": "b"}
    assert pick_cases(scores.iloc[:1]) == {"best": "a"}


def test_rule_timings_and_git_commit_outside_git(tmp_path):
    for rule, job, seconds in [("inspect_case", "a", 1.5), ("inspect_case", "b", 2.5), ("train_round", "round_0", 30)]:
        (tmp_path / rule).mkdir(exist_ok=True)
        (tmp_path / rule / f"{job}.tsv").write_text(f"s\th:m:s\tmax_rss\n{seconds}\t0:00:01\t100\n")
    timings = rule_timings(sorted(tmp_path.glob("*/*.tsv"))).set_index("rule")
    assert timings.loc["inspect_case", "jobs"] == 2 and timings.loc["inspect_case", "seconds"] == 4.0
    assert git_commit(tmp_path) == "unknown" and git_commit(None) == "unknown"
    assert re.fullmatch(r"[0-9a-f]{40}( \+changes)?", git_commit(REPO))


def test_report_of_the_tiny_run_has_every_section(tiny_run):
    html = (tiny_run / "results/report/report.html").read_text()
    for heading in ["Run summary", "Workflow", "Case selection", "Training", "Scores", "Overlays"]:
        assert f"<h2>{heading}" in html
    assert "97.71" in html and "different data" in html
    assert "Wall time per rule" in html and "train_round" in html
    assert 'class="dataframe data sortable"' in html and "sortTable" in html
    assert re.search(r"torch \d", html) and "git commit" in html
    assert not re.search(r"""(src|href)=['"](?!data:)""", html), "external resource in the report"
