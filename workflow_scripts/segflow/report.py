"""The HTML report: one self-contained file, readable offline (figures as data URIs, inline CSS and JavaScript,
no external resources).

Sections: run summary (dataset, selection, seed, package versions, git commit, wall time per rule), the rule graph,
case selection, training (curves of every round, the chosen one marked), scores (KiTS regions beside the seed's
published figures, every region and label, a sortable per-case table) and overlays (axial and coronal) of the
best, median and worst test cases. docs/report.md describes each part and the choices behind it.
"""

from __future__ import annotations

import base64
import html
import json
import math
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from segflow import report_figures
from segflow.io import write_text
from segflow.labelsets import colours, headline_column, label_names
from segflow.score import METRIC_ORDER, split_column

# Overlays show the best, median and worst test case by score.headline's Dice (this one for KiTS-labelled runs).
RANKING_COLUMN = "dice_kidney_and_masses"
# Versions shown in the run summary, read in the report job's own environment (python comes from platform).
PACKAGES = ("torch", "monai", "numpy", "nibabel", "snakemake", "pandas", "matplotlib")
METRIC_TITLES = {
    "dice": "Dice",
    "sd": "surface Dice",
    "hd95": "HD95 (mm)",
    "iou": "IoU",
    "precision": "precision",
    "recall": "recall",
    "f1": "F1",
}
KITS_METRICS = ("dice", "sd", "hd95")  # what KiTS23 ranks on (Dice, surface Dice), plus HD95

# The pipeline's rule graph, producer -> consumer, as `snakemake --rulegraph` draws it for a finished run (tests
# check the two agree). Written down rather than asked from Snakemake at run time: a job cannot run snakemake on
# its own workflow without lock and recursion trouble, and graphviz would become a dependency. The edges into
# render_report from inspect_case, preprocess_case and score_case are their benchmark files (wall-time table).
RULE_GRAPH = [
    ("download_case", "inspect_case"),
    ("download_case", "preprocess_case"),
    ("inspect_case", "select_cases"),
    ("select_cases", "train_round"),
    ("preprocess_case", "train_round"),
    ("train_round", "train_round"),
    ("train_round", "select_model"),
    ("train_round", "plot_curves"),
    ("plot_curves", "render_report"),
    ("select_cases", "select_model"),
    ("preprocess_case", "select_model"),
    ("select_model", "predict_case"),
    ("preprocess_case", "predict_case"),
    ("download_case", "predict_case"),
    ("predict_case", "score_case"),
    ("download_case", "score_case"),
    ("score_case", "aggregate_scores"),
    ("aggregate_scores", "render_report"),
    ("select_model", "render_report"),
    ("train_round", "render_report"),
    ("predict_case", "render_report"),
    ("select_cases", "render_report"),
    ("download_case", "render_report"),
    ("inspect_case", "render_report"),
    ("preprocess_case", "render_report"),
    ("score_case", "render_report"),
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
    cases: dict  # test case_id -> {"image": Path, "reference": Path, "prediction": Path}
    config: dict
    benchmarks: list[Path] = field(default_factory=list)
    workflow_dir: Path | None = None


@dataclass
class Run:
    """Everything the sections read, loaded once."""

    inputs: ReportInputs
    selection: pd.DataFrame
    scores: pd.DataFrame
    summary: dict
    best: dict
    timings: pd.DataFrame

    @classmethod
    def load(cls, inputs: ReportInputs) -> Run:
        return cls(
            inputs=inputs,
            selection=pd.read_csv(inputs.selection_tsv, sep="\t", keep_default_na=False, dtype={"case_id": str}),
            scores=pd.read_csv(inputs.scores_tsv, sep="\t", dtype={"case_id": str}),
            summary=json.loads(Path(inputs.summary_json).read_text()),
            best=json.loads(Path(inputs.best_json).read_text()),
            timings=rule_timings(inputs.benchmarks),
        )

    @property
    def config(self) -> dict:
        return self.inputs.config

    @property
    def selected(self) -> pd.Series:
        return self.selection["selected"].astype(str).str.lower() == "true"


def render_report(inputs: ReportInputs, output: Path) -> None:
    run = Run.load(inputs)
    sections = [
        ("summary", "Run summary", summary_section(run)),
        ("workflow", "Workflow", workflow_section(run)),
        ("selection", "Case selection", selection_section(run)),
        ("training", "Training", training_section(run)),
        ("scores", "Scores", scores_section(run)),
        ("overlays", "Overlays", overlays_section(run)),
    ]
    write_text(output, page("segflow report", headline(run), sections))


def headline(run: Run) -> str:
    column = headline_column(run.config["score"], run.summary["metrics"]) or RANKING_COLUMN
    stats = run.summary["metrics"].get(column, {})
    dice = f", mean Dice {column.removeprefix('dice_')} {stats['mean']:.4f}" if stats.get("mean") is not None else ""
    return (
        f"{run.config['dataset']['source']} data, {run.summary['n_cases']} test cases, "
        f"model of round {run.best['round']}{dice}"
    )


# --- run summary ----------------------------------------------------------------------------------------------------


def summary_section(run: Run) -> str:
    facts = [
        ("dataset", dataset_line(run.config["dataset"])),
        ("cases", cases_line(run)),
        ("seed", run.config["seed"]),
        ("model", model_line(run.config["train"])),
        ("chosen model", chosen_line(run.best)),
        ("inference", inference_line(run.best, run.config.get("infer", {}))),
        ("git commit", git_commit(run.inputs.workflow_dir)),
        ("wall time", wall_time_line(run.timings)),
        ("software", ", ".join(f"{name} {version}" for name, version in package_versions().items())),
    ]
    parts = [key_value_table(facts)]
    left_out = run.selection.loc[~run.selected, ["case_id", "reason"]]
    if len(left_out):
        parts += ["<h3>Cases left out</h3>", html_table(left_out)]
    parts += ["<h3>Wall time per rule</h3>", timings_table(run.timings)]
    parts.append(details("Configuration (YAML, defaults filled in)", f"<pre>{esc(config_yaml(run.config))}</pre>"))
    return "\n".join(parts)


def dataset_line(dataset: dict) -> str:
    cases = dataset.get("cases", "all")
    return dataset["source"] + ("" if cases == "all" else f" (cases: {cases})")


def cases_line(run: Run) -> str:
    splits = run.selection.loc[run.selected, "split"].value_counts()
    n_left_out = int((~run.selected).sum())
    return (
        f"{len(run.selection)} found, {int(run.selected.sum())} selected ({splits.get('trainval', 0)} for "
        f"training and validation, {splits.get('test', 0)} for testing), {n_left_out} left out"
        + (" (reasons below)" if n_left_out else "")
    )


def model_line(train: dict) -> str:
    return (
        f"{train['model']}, {train['loss']} loss, {train['rounds']} rounds of up to {train['epochs']} epochs, "
        f"batch {train['batch_size']}, learning rate {train['lr']:g}"
    )


def chosen_line(best: dict) -> str:
    select_by = best.get("select_by", "val_loss")
    reason = "lowest validation loss" if select_by == "val_loss" else "best Dice on the fixed holdout"
    value = best.get(select_by)
    return f"round {best['round']}: {reason}" + (f" ({select_by} {value:.4f})" if value is not None else "")


def inference_line(best: dict, infer: dict) -> str:
    """How the test cases were predicted: ensemble, mirroring, the way back and the post-processing kept."""
    rounds = best.get("ensemble_rounds") or [best["round"]]
    models = f"ensemble of rounds {', '.join(map(str, rounds))} (mean softmax)" if len(rounds) > 1 else "one model"
    mirroring = "flip TTA" if infer.get("tta") else "no TTA"
    way_back = "probabilities resampled" if infer.get("restore") == "probabilities" else "labels resampled"
    steps = best.get("postprocess") or []
    tried = sorted({row["step"] for row in best.get("postprocess_table", [])})
    post = ", ".join(steps) if steps else "none"
    if tried:
        n_cases = len(best.get("postprocess_cases") or [])  # absent in a best.json from before postprocess_on
        if best.get("postprocess_on", "holdout") == "unseen":
            where = f"the {n_cases} cases the model never trained on"
        else:
            where = f"the fixed holdout ({n_cases} cases)" if n_cases else "the fixed holdout"
        pruned = ", redundant steps pruned" if best.get("postprocess_prune") else ""
        post += f" (of {', '.join(tried)} tried on {where}{pruned})"
    thresholds = best.get("region_thresholds") or {}
    decoding = ", ".join(f"{name} at {value:g}" for name, value in thresholds.items())
    tried = len({row["decoding"] for row in best.get("threshold_table") or []})
    if decoding:
        way_back += f"; region thresholds {decoding}" + (f" (of {tried} decodings)" if tried > 1 else "")
    if best.get("mass_seed") is not None:
        seed = best["mass_seed"]
        way_back += f"; masses need a voxel of probability {seed:g}" if seed else "; every mass kept (mass seed 0)"
        way_back += f" (of {tried} decodings)" if tried > 1 and not decoding else ""
    if infer.get("slice_sigma_mm"):  # candidates were tried: say which blur across slices the holdout kept
        sigma = best.get("slice_sigma_mm") or 0
        candidates = ", ".join(f"{float(v):g}" for v in infer["slice_sigma_mm"])
        kept = f"softmax blurred across slices by {sigma:g} mm" if sigma else "no blur across slices"
        way_back += f"; {kept} (of {candidates} mm)"
    return f"{models}; {mirroring}; {way_back}; post-processing: {post}"


def wall_time_line(timings: pd.DataFrame) -> str:
    if timings.empty:
        return "no benchmark files"
    total = timings["total_s"].sum()
    return (
        f"{total:.0f} s ({total / 60:.1f} min) summed over {int(timings['jobs'].sum())} jobs; jobs run in "
        f"parallel take less elapsed time. The report job itself is not included."
    )


def package_versions() -> dict[str, str]:
    """Versions as this (the report job's) environment has them; under --use-conda each rule has its own
    environment (envs/*.yaml), so a package another rule needs may be missing here."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = _module_version(name) or "not in the report's environment"
    return versions


def _module_version(name: str) -> str | None:
    """A module's __version__: Snakemake puts itself on the path of a conda env's script without installing it."""
    try:
        return str(__import__(name).__version__)
    except Exception:  # not importable, or no __version__: the caller says so
        return None


def git_commit(folder: Path | None) -> str:
    """The commit of the workflow in ``folder`` (' +changes' when tracked files differ from it), or 'unknown' when
    ``folder`` is not the top of a git checkout (a copied workflow inside some other repository included), git is
    missing, or git refuses the folder."""
    if folder is None:
        return "unknown"
    try:
        top = _git(folder, "rev-parse", "--show-toplevel")
        if Path(top).resolve() != Path(folder).resolve():
            return "unknown"
        commit = _git(folder, "rev-parse", "HEAD")
        dirty = _git(folder, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + (" +changes" if dirty else "")


def _git(folder: Path, *args: str) -> str:
    command = ["git", "-C", str(folder), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=10, check=True).stdout.strip()


def rule_timings(benchmarks: list[Path]) -> pd.DataFrame:
    """Per rule, from Snakemake benchmark files (benchmarks/<rule>/<job>.tsv, wall seconds in column ``s``, the
    last line for a job that was retried): jobs, total, mean and max seconds, and share of the total."""
    rows = [{"rule": Path(p).parent.name, "s": float(pd.read_csv(p, sep="\t")["s"].iloc[-1])} for p in benchmarks]
    columns = ["rule", "jobs", "total_s", "mean_s", "max_s", "share_%"]
    if not rows:
        return pd.DataFrame(columns=columns)
    grouped = pd.DataFrame(rows).groupby("rule", sort=False)["s"]
    table = pd.DataFrame(
        {"jobs": grouped.size(), "total_s": grouped.sum(), "mean_s": grouped.mean(), "max_s": grouped.max()}
    ).reset_index()
    table["share_%"] = 100 * table["total_s"] / table["total_s"].sum()
    order = {rule: i for i, rule in enumerate(report_figures.layer_order(RULE_GRAPH))}
    return table.sort_values("rule", key=lambda r: r.map(lambda name: order.get(name, len(order)))).reset_index(
        drop=True
    )[columns]


def timings_table(timings: pd.DataFrame) -> str:
    if timings.empty:
        return "<p>No benchmark files.</p>"
    return html_table(timings, formats={c: "{:.1f}" for c in ("total_s", "mean_s", "max_s", "share_%")})


def config_yaml(config: dict) -> str:
    import yaml

    # Through JSON first: Snakemake's config holds its own dict and list types, which safe_dump refuses.
    return yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=False)


# --- workflow and selection -----------------------------------------------------------------------------------------


def workflow_section(run: Run) -> str:
    jobs = dict(zip(run.timings["rule"], zip(run.timings["jobs"], run.timings["total_s"])))
    labels = {rule: f"{n} job{'s' * (n != 1)}, {seconds:.0f} s" for rule, (n, seconds) in jobs.items()}
    svg = report_figures.rule_graph_svg(RULE_GRAPH, labels)
    caption = (
        "The rule graph: each box is a rule with its number of jobs and their summed wall time; an arrow runs from "
        "the rule that writes a file to the rule that reads it. Long arrows run beside the graph. train_round "
        "feeds itself: round r starts from round r-1's best model. render_report also reads the benchmark files "
        "of every rule for the wall-time table. Drawn by segflow from the rule graph that `snakemake --rulegraph` "
        "gives (no graphviz needed)."
    )
    return figure(svg, "the rule graph of the pipeline", caption, mime="image/svg+xml", css_class="graph")


def selection_section(run: Run) -> str:
    selection = run.config["selection"]
    hu = [f"{selection[k]:g}" if selection[k] is not None else "none" for k in ("hu_min", "hu_max")]
    hu_words = "" if hu == ["none", "none"] else f" and their HU range lies within [{hu[0]}, {hu[1]}]"
    intro = (
        f"<p>Cases are kept when their slice count is at most {selection['max_slices']}{hu_words}; "
        f"unreadable or inconsistent cases are left out with the problem found. Left-out rows are shaded.</p>"
    )
    left_out = set(np.flatnonzero(~run.selected.to_numpy()))
    table = html_table(run.selection, row_class=lambda i: "left-out" if i in left_out else "")
    return intro + f"<div class='scroll'>{table}</div>"


# --- training -------------------------------------------------------------------------------------------------------


def training_section(run: Run) -> str:
    chosen = int(run.best["round"])
    rounds = pd.read_csv(run.inputs.rounds_tsv, sep="\t")
    metrics = [pd.read_csv(p) for p in run.inputs.round_metrics]
    best_epoch = _best_epoch(rounds, chosen)
    combined = report_figures.training_curves_png(metrics, chosen, best_epoch)
    parts = [
        figure(
            combined,
            "training curves of every round",
            f"Every round on one axis; round {chosen} (shaded) was chosen, and its model from epoch "
            f"{best_epoch} (star) is the one tested.",
        ),
        "<h3>Rounds</h3>",
        html_table(
            rounds.drop(columns=["checkpoint"], errors="ignore"),
            row_class=lambda i: "chosen" if int(rounds["round"].iloc[i]) == chosen else "",
        ),
        "<h3>Curves per round</h3>",
        "<div class='grid'>"
        + "".join(_round_figure(p, m, chosen) for p, m in zip(run.inputs.round_curves, metrics))
        + "</div>",
    ]
    return "\n".join(parts)


def _best_epoch(rounds: pd.DataFrame, chosen: int) -> int | None:
    row = rounds.loc[rounds["round"] == chosen]
    return int(row["best_epoch"].iloc[0]) if len(row) and "best_epoch" in row else None


def _round_figure(curve_path: Path, metrics: pd.DataFrame, chosen: int) -> str:
    index = int(metrics["round"].iloc[0])
    title = f"round {index}" + (" (chosen)" if index == chosen else "")
    epochs = details(
        "metrics per epoch",
        html_table(metrics, formats={c: "{:.4f}" for c in metrics.columns if metrics[c].dtype.kind == "f"}),
    )
    return figure(
        Path(curve_path).read_bytes(),
        f"training curves of {title}",
        title + epochs,
        css_class="round chosen" if index == chosen else "round",
    )


# --- scores ---------------------------------------------------------------------------------------------------------


def scores_section(run: Run) -> str:
    seed_note = (
        "<p class='note'>The seed's figures are mean test Dice on real KiTS23 CT. This run's are from its own data "
        f"({esc(run.config['dataset']['source'])}); they are different data, shown side by side for orientation "
        "only, not as a comparison of methods.</p>"
        if run.config["score"]["seed_dice"]
        else ""
    )
    parts = [
        "<h3>Regions and labels</h3>",
        kits_table(run),
        seed_note,
        "<h3>Every region and label (mean &plusmn; std over test cases)</h3>",
        all_names_table(run),
        "<h3>Scores per test case</h3>",
        "<p class='note'>Click a column heading to sort (again to reverse). &ndash; marks an undefined HD95 "
        "(exactly one of prediction and reference empty).</p>",
        f"<div class='scroll'>{case_table(run.scores, KITS_METRICS, 'scores-kits')}</div>",
        details(
            "All metrics per test case",
            f"<div class='scroll'>{case_table(run.scores, METRIC_ORDER, 'scores-all')}</div>",
        ),
    ]
    return "\n".join(parts)


def kits_table(run: Run) -> str:
    """Dice, surface Dice and HD95 per scored region and label (per organ), with the reference system's figures
    (score.seed_dice) beside them where it reported one."""
    metrics = run.summary["metrics"]
    score = run.config["score"]
    regions, labels, seed = score["regions"], score["labels"], score["seed_dice"]
    rows = []
    for region in dict.fromkeys([*regions, *labels]):
        dice, sd, hd95 = (metrics.get(f"{m}_{region}") for m in KITS_METRICS)
        if dice is None:
            continue
        values = regions[region] if region in regions else [labels[region]]
        row = {
            "region": region,
            "labels": "+".join(str(v) for v in values),
            "Dice mean (%)": _percent(dice["mean"]),
            "Dice median (%)": _percent(dice["median"]),
            "Dice std (%)": _percent(dice["std"]),
            "Dice min (%)": _percent(dice["min"]),
            "surface Dice mean (%)": _percent(sd["mean"]) if sd else None,
            "HD95 mean (mm)": _hd95_mean(hd95, dice["n"]),
        }
        if seed:
            row["seed (%)"] = f"{seed[region]:.2f}" if region in seed else None
        rows.append(row)
    if not rows:
        return "<p>No region or label was scored (see score.regions and score.labels in the configuration).</p>"
    return html_table(pd.DataFrame(rows), css_class="data kits")


def _percent(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.2f}"


def _hd95_mean(stats: dict | None, n_cases: int) -> str | None:
    if not stats or stats["mean"] is None:
        return None
    left_out = n_cases - stats["n"]
    return f"{stats['mean']:.2f}" + (f" ({left_out} undefined, left out)" if left_out else "")


def all_names_table(run: Run) -> str:
    """One row per region or label: kind, label values, and mean ± std of every metric."""
    regions, labels = run.config["score"]["regions"], run.config["score"]["labels"]
    by_name: dict[str, dict] = {}
    for column, stats in run.summary["metrics"].items():
        metric, name = split_column(column)
        by_name.setdefault(name, {})[metric] = stats
    order = [*regions, *labels]
    rows = []
    for name in sorted(by_name, key=lambda n: order.index(n) if n in order else len(order)):
        stats = by_name[name]
        if name in regions:  # the same words as summary.tsv
            kind, values = ("region and label" if name in labels else "region"), regions[name]
        else:
            kind, values = "label", [labels.get(name, "?")]
        row = {"name": name, "kind": kind, "labels": "+".join(str(v) for v in values)}
        row.update(
            {METRIC_TITLES[m]: _mean_std(stats[m], m, run.summary["n_cases"]) for m in METRIC_ORDER if m in stats}
        )
        rows.append(row)
    return f"<div class='scroll'>{html_table(pd.DataFrame(rows), css_class='data nowrap')}</div>"


def _mean_std(stats: dict, metric: str, n_cases: int) -> str | None:
    if stats["mean"] is None:
        return None
    digits = 2 if metric == "hd95" else 4
    text = f"{stats['mean']:.{digits}f} \u00b1 {stats['std']:.{digits}f}"
    return text + (f" (n={stats['n']})" if stats["n"] != n_cases else "")


def case_table(scores: pd.DataFrame, metrics: tuple[str, ...], table_id: str) -> str:
    """Sortable per-case table with a two-row heading: metric, then region or label."""
    groups = [(m, [c for c in scores.columns if split_column(c)[0] == m]) for m in metrics]
    groups = [(m, columns) for m, columns in groups if columns]
    columns = ["case_id"] + [c for _, cs in groups for c in cs]
    top = "<th rowspan='2' data-column='0' aria-sort='none'>case</th>" + "".join(
        f"<th colspan='{len(cs)}' class='group'>{esc(METRIC_TITLES.get(m, m))}</th>" for m, cs in groups
    )
    bottom = "".join(
        f"<th data-column='{i}' aria-sort='none'>{esc(split_column(c)[1])}</th>" for i, c in enumerate(columns) if i > 0
    )
    formats = {c: "{:.2f}" if c.startswith("hd95_") else "{:.4f}" for c in columns[1:]}
    body = _table_body(scores[columns], formats)
    return f"<table id='{table_id}' class='data sortable'><thead><tr>{top}</tr><tr>{bottom}</tr></thead>{body}</table>"


# --- overlays -------------------------------------------------------------------------------------------------------


def pick_cases(scores: pd.DataFrame, column: str = RANKING_COLUMN) -> dict[str, str]:
    """Best, median and worst test case by ``column`` (ties by case id); a case is shown once, so fewer than
    three cases give fewer pictures."""
    ordered = scores.sort_values([column, "case_id"], ascending=[False, True])["case_id"].tolist()
    if not ordered:
        return {}
    # (n - 1) // 2: with two cases the median is the best one, so they show as best and worst
    picks = {"best": ordered[0], "median": ordered[(len(ordered) - 1) // 2], "worst": ordered[-1]}
    first_label: dict[str, str] = {}
    for label, case in picks.items():
        first_label.setdefault(case, label)
    return {label: case for case, label in first_label.items()}


def overlays_section(run: Run) -> str:
    dice_columns = [c for c in run.scores.columns if c.startswith("dice_")]
    if not dice_columns:
        return "<p>No scores to rank the test cases by.</p>"
    column = headline_column(run.config["score"], run.scores.columns)
    dice = dict(zip(run.scores["case_id"], run.scores[column]))
    names, palette = label_names(run.config["score"]), colours(run.config["score"])
    legend = ", ".join(f"<span style='color:{esc(palette[v])}'>&#9632;</span> {esc(n)}" for v, n in names.items())
    intro = (
        f"<p>The best, median and worst test case by {esc(column)}; axial and coronal planes through the "
        "largest extent of the reference, radiological view (patient right on the left). Each label in its "
        f"colour ({legend}); reference solid and thick, prediction dashed and thin.</p>"
    )
    figures = []
    ct = run.config["modality"] == "ct"
    for label, case_id in pick_cases(run.scores, column).items():
        title = f"{label}: {case_id}, {column} {dice[case_id]:.4f}"
        paths = run.inputs.cases[case_id]
        png = report_figures.overlay_png(paths["image"], paths["reference"], paths["prediction"], palette, ct)
        figures.append(figure(png, f"overlay of {case_id}", title))
    return intro + "<div class='grid'>" + "".join(figures) + "</div>"


# --- HTML -----------------------------------------------------------------------------------------------------------


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def figure(data: bytes, alt: str, caption: str, mime: str = "image/png", css_class: str = "") -> str:
    """An embedded image with a caption; ``caption`` is HTML."""
    source = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return (
        f"<figure class='{css_class}'><img alt='{esc(alt)}' src='{source}'><figcaption>{caption}</figcaption></figure>"
    )


def details(summary: str, body: str) -> str:
    return f"<details><summary>{esc(summary)}</summary>{body}</details>"


def key_value_table(rows: list[tuple[str, object]]) -> str:
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    return f"<table class='kv'>{body}</table>"


def html_table(frame: pd.DataFrame, formats: dict | None = None, row_class=None, css_class: str = "data") -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in frame.columns)
    return f"<table class='{css_class}'><thead><tr>{head}</tr></thead>{_table_body(frame, formats, row_class)}</table>"


def _table_body(frame: pd.DataFrame, formats: dict | None = None, row_class=None) -> str:
    formats = formats or {}
    rows = []
    for i, record in enumerate(frame.itertuples(index=False)):
        css = row_class(i) if row_class else ""
        cells = "".join(_cell(value, formats.get(column)) for column, value in zip(frame.columns, record))
        rows.append(f"<tr class='{css}'>{cells}</tr>" if css else f"<tr>{cells}</tr>")
    return "<tbody>" + "".join(rows) + "</tbody>"


def _cell(value, number_format: str | None) -> str:
    """Missing values as a dash that sorts last; numbers right-aligned, with their full value for sorting."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "<td class='na' data-sort=''>&ndash;</td>"
    if isinstance(value, (bool, np.bool_)):
        return f"<td>{esc(value)}</td>"
    if isinstance(value, (int, float, np.integer, np.floating)):
        text = (number_format or ("{:.4g}" if isinstance(value, (float, np.floating)) else "{}")).format(value)
        return f"<td class='num' data-sort='{float(value)!r}'>{esc(text)}</td>"
    return f"<td>{esc(value)}</td>"


# Sorts tables of class "sortable" by a clicked heading (numbers by their full value in data-sort, missing values
# last in either direction), and on load records in #report-status how many images and tables there are, how many
# images failed to load and which script errors happened: a headless browser test reads that element.
SCRIPT = """
const scriptErrors = [];
window.addEventListener('error', event => scriptErrors.push(String(event.message)));

function sortKey(cell) {
  const raw = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim();
  if (raw === '') return null;
  const number = Number(raw);
  return Number.isNaN(number) ? raw.toLowerCase() : number;
}

function sortTable(table, column) {
  const ascending = !(table.dataset.sortColumn === String(column) && table.dataset.sortOrder === 'ascending');
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = sortKey(a.cells[column]), y = sortKey(b.cells[column]);
    if (x === null || y === null) return (x === null) - (y === null);
    return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
  });
  rows.forEach(row => body.appendChild(row));
  table.dataset.sortColumn = String(column);
  table.dataset.sortOrder = ascending ? 'ascending' : 'descending';
  table.querySelectorAll('th[data-column]').forEach(th =>
    th.setAttribute('aria-sort', th.dataset.column === String(column) ? table.dataset.sortOrder : 'none'));
}

document.querySelectorAll('table.sortable th[data-column]').forEach(th => {
  th.tabIndex = 0;
  const sort = () => sortTable(th.closest('table'), Number(th.dataset.column));
  th.addEventListener('click', sort);
  th.addEventListener('keydown', event => { if (event.key === 'Enter' || event.key === ' ') sort(); });
});

window.addEventListener('load', () => {
  const images = Array.from(document.images);
  const status = document.getElementById('report-status');
  status.dataset.images = images.length;
  status.dataset.broken = images.filter(image => !(image.complete && image.naturalWidth > 0)).length;
  status.dataset.tables = document.querySelectorAll('table').length;
  status.dataset.errors = scriptErrors.join(' | ');
  status.dataset.ready = 'yes';
});
"""

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f; margin: 0; }
main { max-width: 1120px; margin: 0 auto; padding: 1.5em 1.5em 4em; }
header { background: #24364f; color: #fff; padding: 1.2em 1.5em; }
header h1 { margin: 0; font-size: 1.6em; } header p { margin: 0.3em 0 0; color: #cfd8e6; }
nav { background: #eef3fb; padding: 0.5em 1.5em; position: sticky; top: 0; z-index: 1;
      border-bottom: 1px solid #cdd8ea; }
nav a { margin-right: 1.2em; color: #24364f; text-decoration: none; } nav a:hover { text-decoration: underline; }
h2 { border-bottom: 2px solid #24364f; padding-bottom: 0.2em; margin-top: 2em; }
h3 { margin: 1.4em 0 0.4em; font-size: 1.05em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.4em 0 1em; }
th, td { border: 1px solid #d5d9e0; padding: 3px 7px; text-align: left; vertical-align: top; }
thead th { background: #eef3fb; } tbody tr:nth-child(even) { background: #f8f9fb; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } td.na { text-align: center; color: #999; }
table.kv th { background: #f1f3f6; white-space: nowrap; } table.kv td { max-width: 900px; }
table.kits td:last-child, table.kits th:last-child { background: #fff6e0; }
tr.left-out { background: #fdecea !important; color: #7a2a22; }
tr.chosen { background: #e3f3e3 !important; font-weight: 600; }
table.sortable th[data-column] { cursor: pointer; user-select: none; white-space: nowrap; }
table.sortable th[data-column]::after { content: " \\2195"; color: #9aa; }
table.sortable th[aria-sort="ascending"]::after { content: " \\25B2"; color: #24364f; }
table.sortable th[aria-sort="descending"]::after { content: " \\25BC"; color: #24364f; }
th.group { text-align: center; } table.nowrap td { white-space: nowrap; }
.scroll { overflow-x: auto; } .note { font-size: 0.85em; color: #555; max-width: 900px; }
.grid { display: flex; flex-wrap: wrap; gap: 1.2em; align-items: flex-start; }
figure { margin: 0.5em 0; } figure.chosen figcaption { color: #2a7a2a; font-weight: 600; }
figure.graph img { width: 640px; } figure.round img { max-width: 530px; }
figcaption { font-size: 0.85em; color: #444; max-width: 820px; }
img { max-width: 100%; height: auto; }
details { margin: 0.5em 0 1em; } summary { cursor: pointer; color: #24364f; }
pre { background: #f6f7f9; padding: 0.8em; font-size: 0.8em; overflow-x: auto; }
@media print { nav { display: none; } details { display: block; } }
"""


def page(title: str, subtitle: str, sections: list[tuple[str, str, str]]) -> str:
    """The whole document; ``sections`` are (anchor id, heading, HTML body)."""
    links = "".join(f"<a href='#{anchor}'>{esc(heading)}</a>" for anchor, heading, _ in sections)
    body = "\n".join(
        f"<section id='{anchor}'><h2>{esc(heading)}</h2>\n{content}\n</section>"
        for anchor, heading, content in sections
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>
<nav>{links}</nav>
<main>
{body}
</main>
<div id="report-status" hidden></div>
<script>{SCRIPT}</script>
</body>
</html>
"""
