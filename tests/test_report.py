"""The HTML report (segflow.report) on small fabricated inputs (tests/report_inputs.py): sections, embedded images,
no external resources, the sortable tables; and its parts: rule timings, git commit, case picks, rule graph."""

import base64
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from report_inputs import BENCHMARKS, shared_report

from segflow.report import RULE_GRAPH, git_commit, inference_line, pick_cases, rule_timings
from segflow.report_figures import layer_depths, rule_graph_svg

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ["Run summary", "Workflow", "Case selection", "Training", "Scores", "Overlays"]
VOID_ELEMENTS = {"meta", "img", "br", "hr", "input", "link", "source", "wbr", "col", "area", "base", "embed"}


@pytest.fixture(scope="module")
def report_path(tmp_path_factory) -> Path:
    return shared_report(tmp_path_factory)


@pytest.fixture(scope="module")
def report(report_path) -> str:
    return report_path.read_text()


class Elements(HTMLParser):
    """Every start tag with its attributes, open tags left unclosed, and text inside <style>."""

    def __init__(self, text: str):
        super().__init__()
        self.tags, self.stack, self.problems, self.style = [], [], [], ""
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID_ELEMENTS:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1] == "style":
            self.style += data

    def all(self, tag):
        return [attrs for name, attrs in self.tags if name == tag]


def test_every_section_is_there_in_order_with_a_link(report):
    headings = re.findall(r"<h2>([^<]+)</h2>", report)
    assert headings == SECTIONS
    for anchor in ["summary", "workflow", "selection", "training", "scores", "overlays"]:
        assert f"href='#{anchor}'" in report and f"id='{anchor}'" in report


def test_html_is_well_formed_with_unique_ids(report):
    elements = Elements(report)
    assert elements.problems == [] and elements.stack == []
    ids = [attrs["id"] for _, attrs in elements.tags if "id" in attrs]
    assert len(ids) == len(set(ids))
    assert all(attrs.get("alt") for attrs in elements.all("img"))


def test_run_summary(report):
    assert "<th>dataset</th><td>synthetic</td>" in report
    assert "<th>seed</th><td>42</td>" in report
    assert "5 found, 4 selected (1 for training and validation, 3 for testing), 1 left out" in report
    assert "<td>case_x</td><td>120 slices &gt; max_slices 110</td>" in report  # why it was not selected
    assert "<th>git commit</th><td>unknown</td>" in report  # the fabricated workflow dir is no git checkout
    assert "round 1: lowest validation loss (val_loss 0.4100)" in report
    for package in ["python", "torch", "monai", "numpy", "nibabel", "snakemake"]:
        assert re.search(rf"\b{package} (\d+\.\d+|not in the report)", report), package
    total = sum(sum(seconds) for seconds in BENCHMARKS.values())
    assert f"{total:.0f} s" in report and "summed over 5 jobs" in report
    assert (
        "<td>train_round</td><td class='num' data-sort='2.0'>2</td><td class='num' data-sort='75.5'>75.5</td>" in report
    )
    config = re.search(r"<details><summary>Configuration[^<]*</summary><pre>(.*?)</pre>", report, flags=re.S)
    assert re.search(r"^seed: 42$", config.group(1), flags=re.M) and "  source: synthetic" in config.group(1)


def test_training_marks_the_chosen_round(report):
    assert "round 1 (shaded) was chosen, and its model from epoch 1 (star)" in report
    assert "<figure class='round chosen'>" in report and "round 1 (chosen)" in report
    assert re.search(r"<tr class='chosen'><td class='num' data-sort='1.0'>1</td>", report)


def test_scores_beside_the_seed_figures(report):
    kits = re.search(r"<table class='data kits'>.*?</table>", report, flags=re.S).group(0)
    rows = re.findall(r"<tr><td>(\w+)</td><td>[\d+]+</td>((?:<td[^>]*>[^<]*</td>)+)</tr>", kits)
    # Every scored region, then every label not already a region (score.regions and score.labels, in order).
    assert [region for region, _ in rows] == ["kidney_and_masses", "masses", "tumor", "kidney", "cyst"]
    assert [re.findall(r">([^<]*)</td>", cells)[-1] for _, cells in rows[:3]] == ["97.71", "81.39", "73.81"]
    # kidney_and_masses: 1200 voxels, 1056 (shifted 2) and 912 (shifted 4) overlapping: Dice 1, 0.88, 0.76.
    assert re.findall(r">([^<]*)</td>", rows[0][1])[0] == "88.00"
    assert "(1 undefined, left out)" in kits  # HD95 of the masses where the tumour was missed
    assert "different data" in report


def test_per_case_tables_sort_by_full_values(report, report_path):
    tables = re.findall(r"<table id='(scores-\w+)' class='data sortable'>(.*?)</table>", report, flags=re.S)
    assert [name for name, _ in tables] == ["scores-kits", "scores-all"]
    for _, table in tables:
        header_columns = [int(i) for i in re.findall(r"data-column='(\d+)'", table)]
        assert header_columns == list(range(len(header_columns)))
        first_row = re.search(r"<tbody><tr>(.*?)</tr>", table).group(1)
        assert first_row.count("<td") == len(header_columns)
    scores = pd.read_csv(report_path.with_name("scores.tsv"), sep="\t").set_index("case_id")
    value = float(scores.loc["case_a", "sd_kidney_and_masses"])
    assert f"data-sort='{value!r}'>{value:.4f}</td>" in report  # the full value behind the 4 decimals shown
    assert "<td class='na' data-sort=''>&ndash;</td>" in report  # undefined HD95
    assert "function sortTable(table, column)" in report and "addEventListener('click', sort)" in report


def test_images_are_embedded_and_nothing_is_external(report):
    elements = Elements(report)
    images = [attrs["src"] for attrs in elements.all("img")]
    # rule graph, training curves of all rounds, curves of rounds 0 and 1, overlays of best, median and worst
    assert len(images) == 7
    for source in images:
        kind, data = re.fullmatch(r"data:image/(png|svg\+xml);base64,([A-Za-z0-9+/=]+)", source).groups()
        decoded = base64.b64decode(data, validate=True)
        assert decoded.startswith(b"\x89PNG") if kind == "png" else b"<svg" in decoded[:500]
    for tag, attrs in elements.tags:
        for name in ("src", "href", "srcset", "action", "poster", "data"):
            assert attrs.get(name) is None or attrs[name].startswith(("data:", "#")), (tag, attrs.get(name)[:80])
    assert not elements.all("link") and not elements.all("iframe") and not elements.all("object")
    assert "url(" not in elements.style and "@import" not in elements.style
    assert not re.search(r"<script[^>]+src", report)


def test_overlays_of_best_median_and_worst(report):
    captions = re.findall(r"<figcaption>((?:best|median|worst): [^<]+)</figcaption>", report)
    assert captions == [
        "best: case_b, dice_kidney_and_masses 1.0000",
        "median: case_a, dice_kidney_and_masses 0.8800",
        "worst: case_c, dice_kidney_and_masses 0.7600",
    ]


def test_pick_cases_best_median_worst():
    scores = pd.DataFrame({"case_id": ["a", "b", "c", "d"], "dice_kidney_and_masses": [0.9, 0.5, 0.7, 0.95]})
    assert pick_cases(scores) == {"best": "d", "median": "a", "worst": "b"}
    assert pick_cases(scores.iloc[:2]) == {"best": "a", "worst": "b"}  # a case is shown once
    assert pick_cases(scores.iloc[:1]) == {"best": "a"}


def test_rule_timings_per_rule_in_pipeline_order(tmp_path):
    jobs = [("train_round", "round_0", 30.0), ("inspect_case", "a", 1.5), ("inspect_case", "b", 2.5)]
    for rule, job, seconds in jobs:
        (tmp_path / rule).mkdir(exist_ok=True)
        # A retried job's benchmark has one line per attempt: the last one counts.
        (tmp_path / rule / f"{job}.tsv").write_text(f"s\th:m:s\n99\t0:01:39\n{seconds}\t0:00:01\n")
    timings = rule_timings(sorted(tmp_path.glob("*/*.tsv")))
    assert list(timings["rule"]) == ["inspect_case", "train_round"]
    inspect = timings.iloc[0]
    assert (inspect["jobs"], inspect["total_s"], inspect["mean_s"], inspect["max_s"]) == (2, 4.0, 2.0, 2.5)
    assert list(timings["share_%"]) == pytest.approx([100 * 4 / 34, 100 * 30 / 34])
    assert rule_timings([]).empty


def test_git_commit_only_for_the_top_of_a_checkout(tmp_path):
    assert git_commit(None) == "unknown" and git_commit(tmp_path) == "unknown"
    assert git_commit(REPO / "rules") == "unknown"  # inside a checkout, but not a workflow of its own
    if (REPO / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}( \+changes)?", git_commit(REPO))


def test_rule_graph_layers_and_a_deterministic_drawing():
    depth = layer_depths(RULE_GRAPH)
    assert depth["download_case"] == 0 and depth["select_cases"] == 2 and depth["render_report"] == 8
    assert all(depth[target] > depth[source] for source, target in RULE_GRAPH if source != target)
    assert rule_graph_svg(RULE_GRAPH, {"train_round": "2 jobs"}) == rule_graph_svg(
        RULE_GRAPH, {"train_round": "2 jobs"}
    )


def test_rule_graph_matches_snakemakes_own(tiny_run):
    """RULE_GRAPH is what `snakemake --rulegraph` gives for a finished run (before the checkpoint has run,
    Snakemake cannot know the rules that follow it, so this needs the tiny run)."""
    command = [str(Path(sys.executable).with_name("snakemake")), "--rulegraph", "--configfile", "config/tiny.yaml"]
    dot = subprocess.run(command, cwd=tiny_run, capture_output=True, text=True, check=True).stdout
    names = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)"', dot, flags=re.M))
    edges = {(names[a], names[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", dot, flags=re.M)}
    assert edges - {("render_report", "all")} == set(RULE_GRAPH)


def test_organ_label_set_drives_headline_tables_and_overlays(tmp_path):
    from report_inputs import ORGAN_CONFIG, fabricate_report

    html = fabricate_report(tmp_path / "organs", ORGAN_CONFIG).read_text()
    assert re.search(r"mean Dice organs 0\.\d{4}", html)  # score.headline
    table = re.search(r"<table class='data kits'>.*?</table>", html, flags=re.S).group(0)
    assert [name for name in re.findall(r"<tr><td>(\w+)</td>", table)] == ["organs", "liver", "spleen"]
    assert "seed" not in table  # score.seed_dice is empty: no reference column, no KiTS23 note
    assert "different data" not in html
    assert "#d2691e'>&#9632;</span> liver" in html and "#aa00ff'>&#9632;</span> spleen" in html
    assert "kidney" not in html.lower().replace("kidney_and_masses", "")


def test_training_curves_join_only_the_validated_epochs_of_a_sparse_round():
    import numpy as np
    from matplotlib.figure import Figure

    from segflow import report_figures

    frame = pd.DataFrame(
        {
            "round": 0,
            "epoch": range(6),
            "train_loss": np.linspace(1.0, 0.5, 6),
            "val_loss": [np.nan, 0.9, np.nan, 0.7, np.nan, 0.6],  # train.val_every: 2
            "val_dice": [np.nan, 0.5, np.nan, 0.7, np.nan, 0.8],
        }
    )
    assert report_figures.training_curves_png([frame], chosen_round=0, best_epoch=5).startswith(b"\x89PNG")
    fig = Figure()
    ax = fig.add_subplot()
    report_figures._plot_round(ax, "loss", frame, np.arange(6), "C0", "round 0")
    validation = [line for line in ax.get_lines() if line.get_label() == "round 0 validation"][0]
    assert list(validation.get_xdata()) == [1, 3, 5] and list(validation.get_ydata()) == [0.9, 0.7, 0.6]


def test_inference_line_says_where_post_processing_was_decided():
    table = [{"step": "largest_foreground"}, {"step": "largest_mass"}]
    best = {"round": 0, "postprocess": ["largest_foreground"], "postprocess_table": table}
    infer = {"tta": True, "restore": "probabilities"}
    assert inference_line(best, infer) == (
        "one model; flip TTA; probabilities resampled; post-processing: largest_foreground "
        "(of largest_foreground, largest_mass tried on the fixed holdout)"
    )
    with_cases = {**best, "postprocess_on": "holdout", "postprocess_cases": ["case_00002", "case_00030"]}
    assert inference_line(with_cases, infer).endswith("tried on the fixed holdout (2 cases))")
    unseen = {**best, "postprocess_on": "unseen", "postprocess_cases": ["case_00001", "case_00002", "case_00004"]}
    assert inference_line(unseen, infer).endswith(
        "(of largest_foreground, largest_mass tried on the 3 cases the model never trained on)"
    )
    pruned = {**with_cases, "postprocess_prune": True}
    assert inference_line(pruned, infer).endswith("tried on the fixed holdout (2 cases), redundant steps pruned)")
    tried = [{"decoding": "masses 0.5", "region": "masses"}, {"decoding": "masses 0.3", "region": "masses"}]
    thresholds = {**best, "region_thresholds": {"masses": 0.3}, "threshold_table": tried}
    assert "probabilities resampled; region thresholds masses at 0.3 (of 2 decodings); post-processing" in (
        inference_line(thresholds, infer)
    )
    seeds = [{"decoding": "no thresholds"}, {"decoding": "no thresholds, mass seed 0.9"}]
    seeded = {**best, "region_thresholds": {}, "mass_seed": 0.9, "threshold_table": seeds}
    assert "probabilities resampled; masses need a voxel of probability 0.9 (of 2 decodings); post-processing" in (
        inference_line(seeded, infer)
    )
    assert "; every mass kept (mass seed 0); post-processing" in inference_line({**best, "mass_seed": 0.0}, infer)
    blur = {**infer, "slice_sigma_mm": [0, 1.5, 3]}
    assert "; softmax blurred across slices by 3 mm (of 0, 1.5, 3 mm); post-processing" in (
        inference_line({**best, "slice_sigma_mm": 3.0}, blur)
    )
    assert "; no blur across slices (of 0, 1.5, 3 mm)" in inference_line({**best, "slice_sigma_mm": 0.0}, blur)
    assert "blur" not in inference_line(best, infer)  # no candidates: nothing to say
