"""The HTML report: one self-contained file (images embedded as data URIs, inline CSS and JavaScript).

Sections: run summary (dataset, selection, seed, package versions, git commit, wall time per rule), the DAG,
case selection, training curves per round, scores (KiTS regions beside the seed's published figures, then a
sortable per-case table) and overlays (axial and coronal) of the best, median and worst test cases.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from segflow.io import write_text

log = logging.getLogger(__name__)

CONTOUR_COLOURS = {"reference": "#00d000", "prediction": "#ff3030"}
# Mean Dice the seed reported on real KiTS23 test data: the yardstick users compare against.
SEED_DICE = {"kidney_and_masses": 97.71, "masses": 81.39, "tumor": 73.81}
PACKAGES = ("torch", "monai", "numpy", "nibabel", "SimpleITK", "pandas", "snakemake")
# The pipeline's rule graph (producer -> consumer); tests/test_report.py checks it against `snakemake --rulegraph`.
RULE_GRAPH = [
    ("download_case", "inspect_case"), ("inspect_case", "select_cases"), ("download_case", "preprocess_case"),
    ("select_cases", "train_round"), ("preprocess_case", "train_round"), ("train_round", "train_round"),
    ("train_round", "select_model"), ("select_cases", "select_model"), ("preprocess_case", "select_model"),
    ("select_model", "predict_case"), ("preprocess_case", "predict_case"), ("download_case", "predict_case"),
    ("predict_case", "score_case"), ("download_case", "score_case"), ("score_case", "aggregate_scores"),
    ("aggregate_scores", "render_report"), ("select_model", "render_report"), ("train_round", "render_report"),
    ("predict_case", "render_report"), ("select_cases", "render_report"), ("download_case", "render_report"),
    # The report also reads every job's benchmark file for its wall-time table.
    ("inspect_case", "render_report"), ("preprocess_case", "render_report"), ("score_case", "render_report"),
]


@dataclass
class ReportInputs:
    selection_tsv: Path
    round_metrics: list[Path]
    round_curves: list[Path]
    best_json: Path
    rounds_tsv: Path
    scores_tsv: Path
    summary_json: Path
    cases: dict  # case_id -> {"image": Path, "reference": Path, "prediction": Path}
    config: dict
    benchmarks: list[Path] = field(default_factory=list)
    workflow_dir: Path | None = None


def render_report(inputs: ReportInputs, output: Path) -> None:
    selection = pd.read_csv(inputs.selection_tsv, sep="\t", keep_default_na=False)
    scores = pd.read_csv(inputs.scores_tsv, sep="\t")
    best = json.loads(Path(inputs.best_json).read_text())
    summary = json.loads(Path(inputs.summary_json).read_text())
    timings = rule_timings(inputs.benchmarks)
    sections = [
        _summary_section(inputs, selection, best, timings),
        _section("Workflow", _img(rule_graph_png(timings), "the rule graph of the pipeline")),
        _section("Case selection", _table(selection)),
        _training_section(inputs, best),
        _scores_section(scores, summary),
        _section("Overlays (green: reference, red: prediction)", _overlays(inputs.cases, scores)),
    ]
    write_text(output, _page("segflow report", "\n".join(sections)))


# --- run summary ----------------------------------------------------------------------------------------------------


def _summary_section(inputs: ReportInputs, selection: pd.DataFrame, best: dict, timings: pd.DataFrame) -> str:
    config = inputs.config
    selected = selection["selected"].astype(str).str.lower() == "true"
    reasons = selection.loc[~selected, ["case_id", "reason"]]
    left_out = "; ".join(f"{r.case_id}: {r.reason}" for r in reasons.itertuples()) or "none"
    rows = [
        ("dataset", config["dataset"]["source"]),
        ("seed", config["seed"]),
        ("cases", f"{len(selection)} inspected, {int(selected.sum())} selected"),
        ("left out", left_out),
        ("split", f"{int((selection['split'] == 'trainval').sum())} trainval, {int((selection['split'] == 'test').sum())} test"),
        ("model", f"{config['train']['model']} ({config['train']['loss']} loss), {config['train']['rounds']} rounds"),
        ("chosen round", f"round {best['round']} by {best.get('select_by', 'val_loss')} (val loss {best['val_loss']:.4f})"),
        ("git commit", git_commit(inputs.workflow_dir)),
        ("packages", ", ".join(f"{name} {version}" for name, version in package_versions().items())),
        ("wall time", f"{timings['seconds'].sum():.0f} s over {int(timings['jobs'].sum())} jobs (sum of job times)" if len(timings) else "n/a"),
    ]
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    config_yaml = _yaml(config)
    parts = [
        f"<table class='kv'>{body}</table>",
        "<h3>Wall time per rule</h3>",
        _table(timings.round(2)) if len(timings) else "<p>no benchmark files</p>",
        f"<details><summary>configuration</summary><pre>{html.escape(config_yaml)}</pre></details>",
    ]
    return _section("Run summary", "\n".join(parts))


def package_versions() -> dict[str, str]:
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit(folder: Path | None) -> str:
    """The workflow's commit (with '+changes' when the tree is dirty), or 'unknown' outside a git checkout."""
    if folder is None:
        return "unknown"
    try:
        commit = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + (" +changes" if dirty else "")


def rule_timings(benchmarks: list[Path]) -> pd.DataFrame:
    """Jobs and summed wall seconds per rule from Snakemake benchmark files (benchmarks/<rule>/<job>.tsv)."""
    rows = []
    for path in benchmarks:
        frame = pd.read_csv(path, sep="\t")
        rows.append({"rule": Path(path).parent.name, "seconds": float(frame["s"].iloc[-1])})
    if not rows:
        return pd.DataFrame(columns=["rule", "jobs", "seconds", "max_seconds"])
    frame = pd.DataFrame(rows)
    grouped = frame.groupby("rule", sort=False)["seconds"]
    return pd.DataFrame({"jobs": grouped.size(), "seconds": grouped.sum(), "max_seconds": grouped.max()}).reset_index()


def _yaml(config: dict) -> str:
    import yaml

    return yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=False)


# --- rule graph -----------------------------------------------------------------------------------------------------


def rule_graph_png(timings: pd.DataFrame) -> bytes:
    """Draw RULE_GRAPH in layers (longest path from the sources), with job counts; no graphviz needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = _layers(RULE_GRAPH)
    jobs = dict(zip(timings.get("rule", []), timings.get("jobs", [])))
    positions = {}
    for depth, rules in enumerate(layers):
        for i, rule in enumerate(rules):
            positions[rule] = (i - (len(rules) - 1) / 2, -depth)
    fig, ax = plt.subplots(figsize=(7, 0.75 * len(layers) + 0.5))
    for source, target in RULE_GRAPH:
        if source != target:
            ax.annotate("", xy=positions[target], xytext=positions[source],
                        arrowprops={"arrowstyle": "->", "color": "#999", "shrinkA": 12, "shrinkB": 12})
    for rule, (x, y) in positions.items():
        label = rule + (f"\n{int(jobs[rule])} jobs" if rule in jobs else "")
        if rule == "train_round":
            label += " (round r-1 -> r)"
        ax.text(x, y, label, ha="center", va="center", fontsize=7,
                bbox={"boxstyle": "round", "facecolor": "#eef3fb", "edgecolor": "#4a6fa5"})
    ax.set_xlim(-2.2, 2.2)
    ax.set_ylim(-len(layers) + 0.5, 0.5)
    ax.axis("off")
    return _png(fig)


def _layers(edges) -> list[list[str]]:
    nodes = sorted({n for edge in edges for n in edge})
    depth = {n: 0 for n in nodes}
    for _ in nodes:  # longest-path layering; the graph is small and acyclic apart from the round self-loop
        for source, target in edges:
            if source != target:
                depth[target] = max(depth[target], depth[source] + 1)
    layers: list[list[str]] = [[] for _ in range(max(depth.values()) + 1)]
    for node in nodes:
        layers[depth[node]].append(node)
    return layers


# --- training ------------------------------------------------------------------------------------------------------------


def _training_section(inputs: ReportInputs, best: dict) -> str:
    parts = ["<h3>Rounds</h3>", _table(pd.read_csv(inputs.rounds_tsv, sep="\t").round(4))]
    for metrics_path, curve_path in zip(inputs.round_metrics, inputs.round_curves):
        metrics = pd.read_csv(metrics_path)
        round_index = int(metrics["round"].iloc[0])
        chosen = round_index == best["round"]
        parts.append(f"<h3{' class=chosen' if chosen else ''}>Round {round_index}{' (chosen)' if chosen else ''}</h3>")
        parts.append(_img(Path(curve_path).read_bytes(), f"training curves of round {round_index}"))
        parts.append(f"<details><summary>metrics per epoch</summary>{_table(metrics.round(4))}</details>")
    return _section("Training", "\n".join(parts))


# --- scores --------------------------------------------------------------------------------------------------------------


def _scores_section(scores: pd.DataFrame, summary: dict) -> str:
    rows = []
    for region, seed_value in SEED_DICE.items():
        stats = summary["metrics"].get(f"dice_{region}")
        if stats is None:
            continue
        mean = "n/a" if stats["mean"] is None else f"{100 * stats['mean']:.2f}"
        rows.append({"region": region, "this run (mean Dice, %)": mean, "seed on real KiTS23 (%)": f"{seed_value:.2f}"})
    note = (
        "<p class='note'>The seed's figures are from real KiTS23 CT; this run's are from its own dataset "
        "(synthetic phantoms by default), so the two columns are different data, shown for orientation only.</p>"
    )
    per_case = scores.round(4).to_html(index=False, classes="data sortable", border=0, na_rep="", table_id="scores")
    parts = [_table(pd.DataFrame(rows)), note, "<h3>Per test case (click a column to sort)</h3>"]
    parts.append(f"<div class='scroll'>{per_case}</div>")
    return _section("Scores", "\n".join(parts))


# --- overlays ------------------------------------------------------------------------------------------------------------


def pick_cases(scores: pd.DataFrame, column: str = "dice_kidney_and_masses") -> dict[str, str]:
    """Best, median and worst test case by ``column`` (fewer labels when there are fewer cases)."""
    ordered = scores.sort_values([column, "case_id"], ascending=[False, True])["case_id"].tolist()
    if not ordered:
        return {}
    picks = {"best": ordered[0], "median": ordered[len(ordered) // 2], "worst": ordered[-1]}
    unique: dict[str, str] = {}
    for label, case in picks.items():
        unique.setdefault(case, label)
    return {label: case for case, label in unique.items()}


def _overlays(cases: dict, scores: pd.DataFrame) -> str:
    column = "dice_kidney_and_masses" if "dice_kidney_and_masses" in scores else scores.columns[1]
    dice = dict(zip(scores["case_id"], scores[column]))
    figures = []
    for label, case_id in pick_cases(scores, column).items():
        paths = cases[case_id]
        png = overlay_png(paths["image"], paths["reference"], paths["prediction"], f"{label}: {case_id}", dice.get(case_id))
        figures.append(f"<figure>{_img(png, f'overlay {case_id}')}<figcaption>{label}: {html.escape(case_id)}</figcaption></figure>")
    return "<div class='grid'>" + "".join(figures) + "</div>"


def overlay_png(image_path, reference_path, prediction_path, title: str, dice: float | None = None) -> bytes:
    """Axial and coronal CT planes through the most reference foreground, with both contours, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib

    volumes = [nib.as_closest_canonical(nib.load(str(p))) for p in (image_path, reference_path, prediction_path)]
    image, ref, pred = (np.asarray(v.dataobj) for v in volumes)
    spacing = volumes[0].header.get_zooms()[:3]
    foreground = ref > 0 if ref.any() else np.ones(ref.shape, bool)
    z = int(np.argmax(foreground.sum(axis=(0, 1))))
    y = int(np.argmax(foreground.sum(axis=(0, 2))))
    planes = [
        ("axial", _radiological(image[:, :, z]), [_radiological(v[:, :, z] > 0) for v in (ref, pred)], spacing[1] / spacing[0]),
        ("coronal", _coronal(image[:, y, :]), [_coronal(v[:, y, :] > 0) for v in (ref, pred)], spacing[2] / spacing[0]),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.6))
    for ax, (name, plane, masks, aspect) in zip(axes, planes):
        ax.imshow(plane, cmap="gray", vmin=-160, vmax=240, aspect=aspect)
        for colour, mask in zip(CONTOUR_COLOURS.values(), masks):
            if mask.any():
                ax.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1.0)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.suptitle(title + (f", Dice {dice:.3f}" if dice is not None else ""), fontsize=9)
    return _png(fig)


def _radiological(plane_xy: np.ndarray) -> np.ndarray:
    """RAS (x, y) plane to the radiological view: anterior up, patient right on the viewer's left."""
    return plane_xy.T[::-1, ::-1]


def _coronal(plane_xz: np.ndarray) -> np.ndarray:
    """RAS (x, z) plane: superior up, patient right on the viewer's left."""
    return plane_xz.T[::-1, ::-1]


# --- HTML helpers --------------------------------------------------------------------------------------------------------


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, classes="data", border=0, na_rep="", escape=True)


def _section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>\n{body}\n</section>"


# Sorts tables of class "sortable" by a clicked header (numbers numerically), and records in #report-status how
# many images loaded and which script errors happened, so a headless browser test can check the page rendered.
SCRIPT = """
const errors = [];
window.addEventListener('error', e => errors.push(String(e.message)));
function sortTable(table, column) {
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const ascending = table.dataset.sortColumn == column ? table.dataset.sortOrder != 'asc' : true;
  const key = r => { const t = r.cells[column].textContent.trim(); const n = parseFloat(t); return isNaN(n) ? t : n; };
  rows.sort((a, b) => { const x = key(a), y = key(b); return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1); });
  rows.forEach(r => body.appendChild(r));
  table.dataset.sortColumn = column; table.dataset.sortOrder = ascending ? 'asc' : 'desc';
}
document.querySelectorAll('table.sortable').forEach(table => {
  Array.from(table.tHead.rows[0].cells).forEach((cell, i) => cell.addEventListener('click', () => sortTable(table, i)));
});
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  const status = document.getElementById('report-status');
  status.dataset.images = images.length;
  status.dataset.broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).length;
  status.dataset.tables = document.querySelectorAll('table').length;
  status.dataset.errors = errors.join(' | ');
  status.dataset.ready = 'yes';
});
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table.data, table.kv { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
table.data th, table.data td, table.kv th, table.kv td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
table.kv th { text-align: left; background: #f4f4f4; } table.kv td { text-align: left; }
table.sortable th { cursor: pointer; background: #eef3fb; }
h3.chosen { color: #2a7a2a; } .note { font-size: 0.85em; color: #555; }
.grid { display: flex; flex-wrap: wrap; gap: 1em; } figure { margin: 0; } figcaption { text-align: center; font-size: 0.8em; }
img { max-width: 100%; } div.scroll { overflow-x: auto; } pre { background: #f7f7f7; padding: 0.5em; font-size: 0.8em; }
"""


def _page(title: str, body: str) -> str:
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head>
<body><h1>{html.escape(title)}</h1>
{body}
<div id="report-status" hidden></div>
<script>{SCRIPT}</script>
</body></html>
"""
