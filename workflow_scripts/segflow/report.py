"""The HTML report: one self-contained file (images embedded as data URIs) that reads offline."""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from segflow.io import write_text

log = logging.getLogger(__name__)

CONTOUR_COLOURS = {"reference": "#00d000", "prediction": "#ff3030"}


@dataclass
class ReportInputs:
    selection_tsv: Path
    round_metrics: list[Path]
    round_curves: list[Path]
    best_json: Path
    scores_tsv: Path
    summary_json: Path
    cases: dict  # case_id -> {"image": Path, "reference": Path, "prediction": Path}
    config: dict


def render_report(inputs: ReportInputs, output: Path) -> None:
    selection = pd.read_csv(inputs.selection_tsv, sep="\t", keep_default_na=False)
    scores = pd.read_csv(inputs.scores_tsv, sep="\t")
    best = json.loads(Path(inputs.best_json).read_text())
    summary = json.loads(Path(inputs.summary_json).read_text())
    sections = [
        _summary_section(inputs.config, selection, best, summary),
        _section("Case selection", _table(selection)),
        _training_section(inputs.round_metrics, inputs.round_curves, best),
        _section("Scores per test case", _table(scores.round(4))),
        _section("Overlays (green: reference, red: prediction)", _overlays(inputs.cases, scores)),
    ]
    write_text(output, _page("segflow report", "\n".join(sections)))


def _summary_section(config: dict, selection: pd.DataFrame, best: dict, summary: dict) -> str:
    selected = selection["selected"].astype(str).str.lower() == "true"
    means = {k: v["mean"] for k, v in summary["metrics"].items() if k.startswith("dice_")}
    rows = [
        ("dataset", config["dataset"]["source"]),
        ("seed", config["seed"]),
        ("cases", f"{len(selection)} inspected, {int(selected.sum())} selected, {int((~selected).sum())} left out"),
        ("split", f"{int((selection['split'] == 'trainval').sum())} trainval, {int((selection['split'] == 'test').sum())} test"),
        ("model", f"{config['train']['model']} ({config['train']['loss']} loss), {config['train']['rounds']} rounds"),
        ("chosen round", f"round {best['round']} (val loss {best['val_loss']:.4f})"),
    ] + [(f"mean {name}", "n/a" if value is None else f"{value:.4f}") for name, value in means.items()]
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return _section("Run summary", f"<table class='kv'>{body}</table>")


def _training_section(metrics_paths: list[Path], curve_paths: list[Path], best: dict) -> str:
    parts = []
    for metrics_path, curve_path in zip(metrics_paths, curve_paths):
        metrics = pd.read_csv(metrics_path)
        round_index = int(metrics["round"].iloc[0])
        mark = " (chosen)" if round_index == best["round"] else ""
        parts.append(f"<h3>Round {round_index}{mark}</h3>")
        parts.append(_img(Path(curve_path).read_bytes(), f"training curves of round {round_index}"))
        parts.append(_table(metrics.round(4)))
    return _section("Training", "\n".join(parts))


def _overlays(cases: dict, scores: pd.DataFrame) -> str:
    dice = dict(zip(scores["case_id"], scores.get("dice_kidney_and_masses", pd.Series(dtype=float))))
    figures = []
    for case_id, paths in sorted(cases.items()):
        png = overlay_png(paths["image"], paths["reference"], paths["prediction"], case_id, dice.get(case_id))
        figures.append(f"<figure>{_img(png, f'overlay {case_id}')}<figcaption>{html.escape(case_id)}</figcaption></figure>")
    return "<div class='grid'>" + "".join(figures) + "</div>"


def overlay_png(image_path, reference_path, prediction_path, title: str, dice: float | None = None) -> bytes:
    """Axial CT slice with the most reference foreground, reference and prediction contours, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib

    image, reference, prediction = (nib.as_closest_canonical(nib.load(str(p))) for p in (image_path, reference_path, prediction_path))
    ref = np.asarray(reference.dataobj)
    z = int(np.argmax((ref > 0).sum(axis=(0, 1)))) if ref.any() else ref.shape[2] // 2
    fig, ax = plt.subplots(figsize=(3.6, 3.6))
    ax.imshow(_radiological(np.asarray(image.dataobj)[:, :, z]), cmap="gray", vmin=-160, vmax=240)
    for name, volume in (("reference", ref), ("prediction", np.asarray(prediction.dataobj))):
        mask = _radiological(volume[:, :, z] > 0).astype(float)
        if mask.any():
            ax.contour(mask, levels=[0.5], colors=CONTOUR_COLOURS[name], linewidths=1.0)
    ax.set_title(f"{title}, slice {z}" + (f", Dice {dice:.3f}" if dice is not None else ""), fontsize=8)
    ax.axis("off")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _radiological(plane_xy: np.ndarray) -> np.ndarray:
    """RAS (x, y) plane to the radiological view: anterior up, patient right on the viewer's left."""
    return plane_xy.T[::-1, ::-1]


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, classes="data", border=0, na_rep="", escape=True)


def _section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>\n{body}\n</section>"


def _page(title: str, body: str) -> str:
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table.data, table.kv {{ border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }}
table.data th, table.data td, table.kv th, table.kv td {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }}
table.kv th {{ text-align: left; background: #f4f4f4; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure {{ margin: 0; }} figcaption {{ text-align: center; font-size: 0.8em; }}
</style></head>
<body><h1>{html.escape(title)}</h1>
{body}
</body></html>
"""
