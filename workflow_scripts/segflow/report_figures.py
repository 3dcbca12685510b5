"""The report's figures, drawn with matplotlib and returned as bytes for embedding: the rule graph (SVG), the
training curves of every round (PNG) and axial/coronal overlays of one case (PNG).

Output is deterministic for the same inputs (no dates in the files, fixed SVG ids), so an unchanged run renders
an unchanged report.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes; must come before pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

plt.rcParams.update({"svg.hashsalt": "segflow", "svg.fonttype": "path", "font.size": 8})

# Overlay contours: colour tells reference from prediction, and so does the line style (for colour-blind readers
# and greyscale prints). Thick lines outline all foreground, thin ones the masses (labels 2 and 3).
REFERENCE_STYLE = {"colors": "#00c853", "linestyles": "solid"}
PREDICTION_STYLE = {"colors": "#ff1744", "linestyles": "dashed"}
MASS_LABELS = (2, 3)
CT_WINDOW_HU = (-160, 240)  # soft-tissue window (level 40, width 400)
ROUND_COLOURS = plt.get_cmap("tab10").colors
NODE_STYLE = {"boxstyle": "round,pad=0.45", "facecolor": "#eef3fb", "edgecolor": "#4a6fa5"}
EDGE_COLOUR = "#6b6b6b"
# Where long edges meet a rule's side, in layers: lanes arrive above the middle and buses leave below it, so an
# arrow into a rule and a line out of it on the same side never share a line.
PORT_OFFSET = 0.07


# --- rule graph ----------------------------------------------------------------------------------------------------
#
# Rules are laid out in layers (longest path from the sources), top to bottom. Edges between neighbouring layers
# are straight arrows; longer edges would cut through the rules in between, so they run in vertical lanes beside
# the graph: one lane per source rule, nested so that longer lanes lie outside shorter ones, and one "bus" per side
# that collects every long edge into the last rule (render_report reads from almost every stage).


def rule_graph_svg(edges: Sequence[tuple[str, str]], labels: dict[str, str]) -> bytes:
    """The rule graph ``edges`` (producer, consumer) as SVG; ``labels`` adds a second line per rule (job counts)."""
    depth = layer_depths(edges)
    positions = _node_positions(depth)
    fig, ax = plt.subplots(figsize=(7.5, 0.62 * (max(depth.values()) + 1) + 0.3))
    ax.set_xlim(-3.3, 3.3)
    ax.set_ylim(-max(depth.values()) - 0.5, 0.5)
    ax.axis("off")
    boxes = _draw_nodes(ax, positions, labels)
    sink = max(depth, key=depth.get)
    long_edges = [(s, t) for s, t in edges if s != t and depth[t] - depth[s] > 1]
    for source, target in edges:
        if source == target:
            _self_loop(ax, boxes[source], positions[source][1])
        elif depth[target] - depth[source] == 1:
            _arrow(ax, (positions[source][0], boxes[source][2]), (positions[target][0], boxes[target][3]))
    outermost = _draw_lanes(ax, [(s, t) for s, t in long_edges if t != sink], positions, boxes)
    _draw_buses(ax, [s for s, t in long_edges if t == sink], sink, positions, boxes, outermost)
    return _save(fig, "svg")


def layer_depths(edges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """Longest-path depth of every rule; self-loops (train_round feeding its next round) are ignored."""
    depth = {node: 0 for edge in edges for node in edge}
    for _ in depth:  # |V| relaxations settle every longest path of an acyclic graph
        for source, target in edges:
            if source != target:
                depth[target] = max(depth[target], depth[source] + 1)
    return depth


def layer_order(edges: Sequence[tuple[str, str]]) -> list[str]:
    """Rules from the sources down, layer by layer (the order of the graph, for tables)."""
    depth = layer_depths(edges)
    return sorted(depth, key=depth.get)  # stable: first-seen order within a layer


def _node_positions(depth: dict[str, int]) -> dict[str, tuple[float, float]]:
    positions = {}
    for layer in range(max(depth.values()) + 1):
        nodes = [n for n in depth if depth[n] == layer]  # first-seen order: edges list producers first
        for i, node in enumerate(nodes):
            positions[node] = (2.1 * (i - (len(nodes) - 1) / 2), -float(layer))
    return positions


def _draw_nodes(ax, positions, labels) -> dict[str, tuple[float, float, float, float]]:
    """Draw each rule as a box; return its extent (left, right, bottom, top) in data coordinates."""
    texts = {
        node: ax.text(
            x,
            y,
            node + (f"\n{labels[node]}" if labels.get(node) else ""),
            ha="center",
            va="center",
            fontsize=7.5,
            bbox=NODE_STYLE,
            zorder=3,
        )
        for node, (x, y) in positions.items()
    }
    ax.figure.canvas.draw()  # the boxes get their size only when drawn
    renderer = ax.figure.canvas.get_renderer()
    to_data = ax.transData.inverted()
    boxes = {}
    for node, text in texts.items():
        (left, bottom), (right, top) = to_data.transform(text.get_bbox_patch().get_window_extent(renderer).get_points())
        boxes[node] = (left, right, bottom, top)
    return boxes


def _arrow(ax, start, end) -> None:
    ax.annotate(
        "",
        xy=end,
        xytext=start,
        zorder=2,
        arrowprops={"arrowstyle": "-|>", "color": EDGE_COLOUR, "lw": 0.8, "shrinkA": 0, "shrinkB": 1},
    )


def _self_loop(ax, box, y) -> None:
    """A rule feeding its own next job (train_round: round r starts from round r-1's best model)."""
    ax.text(box[0] - 0.06, y, "\u21bb r-1 \u2192 r", ha="right", va="center", fontsize=7, color=EDGE_COLOUR)


def _line(ax, xs, ys) -> None:
    ax.plot(xs, ys, color=EDGE_COLOUR, lw=0.8, zorder=1, solid_joinstyle="round")


def _side(x: float) -> int:
    return 1 if x > 0 else -1


def _draw_lanes(ax, long_edges, positions, boxes) -> dict[int, float]:
    """Each source's long edges: out of its side, down its own lane, into the side of each target. Returns the
    distance from the centre of the next free lane on each side (-1 left, 1 right)."""
    by_source: dict[str, list[str]] = {}
    for source, target in long_edges:
        by_source.setdefault(source, []).append(target)
    inner = max(abs(x) for box in boxes.values() for x in box[:2]) + 0.15
    offsets = {-1: inner, 1: inner}
    span = {s: positions[s][1] - min(positions[t][1] for t in ts) for s, ts in by_source.items()}
    for source in sorted(by_source, key=span.get):  # shorter lanes inside: fewer crossings
        side = _side(positions[source][0])
        lane = side * offsets[side]
        offsets[side] += 0.22
        y0 = positions[source][1]
        lowest = min(positions[t][1] for t in by_source[source])
        _line(ax, [boxes[source][1 if side > 0 else 0], lane, lane], [y0, y0, lowest + PORT_OFFSET])
        for target in by_source[source]:
            y = positions[target][1] + PORT_OFFSET
            _arrow(ax, (lane, y), (boxes[target][1 if side > 0 else 0], y))
    return offsets


def _draw_buses(ax, sources, sink, positions, boxes, offsets: dict[int, float]) -> None:
    """Long edges into the sink join a bus outside the lanes on their side (the right one for centred rules)."""
    y_sink = positions[sink][1]
    for side in (-1, 1):
        members = [s for s in sources if (1 if positions[s][0] >= 0 else -1) == side]
        if not members:
            continue
        bus = side * (offsets[side] + 0.1)
        top = max(positions[s][1] for s in members) - PORT_OFFSET
        for source in members:
            y = positions[source][1] - PORT_OFFSET
            _line(ax, [boxes[source][1 if side > 0 else 0], bus], [y, y])
            ax.plot([bus], [y], "o", color=EDGE_COLOUR, ms=2.5, zorder=1)
        _line(ax, [bus, bus], [top, y_sink])
        _arrow(ax, (bus, y_sink), (boxes[sink][1 if side > 0 else 0], y_sink))


# --- training curves ------------------------------------------------------------------------------------------------


def training_curves_png(rounds: Sequence[pd.DataFrame], chosen_round: int, best_epoch: int | None) -> bytes:
    """Loss (train dashed, validation solid) and validation Dice of every round on one epoch axis, rounds one
    after the other; the chosen round is shaded and its kept epoch starred."""
    panels = ["loss"] + (["dice"] if all("val_dice" in r for r in rounds) else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.0), squeeze=False)
    start = 0
    for frame in rounds:
        round_index = int(frame["round"].iloc[0])
        colour = ROUND_COLOURS[round_index % len(ROUND_COLOURS)]
        x = start + np.arange(len(frame))
        for ax, panel in zip(axes[0], panels):
            _plot_round(ax, panel, frame, x, colour, f"round {round_index}")
            if round_index == chosen_round:
                ax.axvspan(x[0] - 0.5, x[-1] + 0.5, color="#2a7a2a", alpha=0.08, lw=0)
                kept = np.flatnonzero(frame["epoch"].to_numpy() == best_epoch)
                if len(kept):
                    column = "val_loss" if panel == "loss" else "val_dice"
                    ax.plot(
                        x[kept[0]],
                        frame[column].iloc[kept[0]],
                        "*",
                        color="#2a7a2a",
                        ms=11,
                        zorder=5,
                        label=f"kept: round {round_index}, epoch {best_epoch}",
                    )
        start += len(frame)
    for ax, panel in zip(axes[0], panels):
        ax.set_xlabel("epoch (rounds one after another; shaded: chosen round)")
        ax.set_ylabel("loss" if panel == "loss" else "validation Dice (foreground)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="best")
    fig.tight_layout()
    return _save(fig, "png")


def _plot_round(ax, panel: str, frame: pd.DataFrame, x, colour, name: str) -> None:
    # Validation lines join the validated epochs only (train.val_every leaves the others NaN), with markers then.
    validated = frame["val_loss"].notna().to_numpy()
    marker = "-" if validated.all() else ".-"
    if panel == "loss":
        ax.plot(x, frame["train_loss"], "--", color=colour, lw=1, label=f"{name} train")
        ax.plot(x[validated], frame["val_loss"][validated], marker, color=colour, lw=1.5, label=f"{name} validation")
    else:
        ax.plot(x[validated], frame["val_dice"][validated], marker, color=colour, lw=1.5, label=name)


# --- overlays -------------------------------------------------------------------------------------------------------


def overlay_png(image_path, reference_path, prediction_path, palette: dict | None = None, ct: bool = True) -> bytes:
    """Axial and coronal planes through the largest extent of the reference (the prediction's if the reference is
    empty), with reference and prediction contours; radiological view (patient right on the left).

    ``palette`` ({label value: colour}, segflow.labelsets.colours) draws each label in its colour, the reference
    solid and thick, the prediction dashed and thin; without it, all foreground and the masses (KiTS labels 2, 3)
    in green (reference) and red (prediction). CT is shown in a soft-tissue window, other images between their
    1st and 99th percentiles."""
    import nibabel as nib

    volumes = [nib.as_closest_canonical(nib.load(str(p))) for p in (image_path, reference_path, prediction_path)]
    image, reference, prediction = (np.asarray(v.dataobj) for v in volumes)
    sx, sy, sz = (float(s) for s in volumes[0].header.get_zooms()[:3])
    _, y, z = _centre_planes(reference if reference.any() else prediction)
    planes = [
        ("axial", lambda v: _radiological(v[:, :, z]), sy / sx),
        ("coronal", lambda v: _radiological(v[:, y, :]), sz / sx),
    ]
    window = CT_WINDOW_HU if ct else tuple(float(v) for v in np.percentile(image, [1, 99]))
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.0))
    for ax, (name, cut, aspect) in zip(axes, planes):
        ax.imshow(cut(image), cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect, interpolation="nearest")
        for labels, style in ((reference, REFERENCE_STYLE), (prediction, PREDICTION_STYLE)):
            if palette:
                _label_contours(ax, cut(labels), palette, style["linestyles"], 1.3 if labels is reference else 0.9)
            else:
                _contours(ax, cut(labels), style)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, "png")


def _centre_planes(labels: np.ndarray) -> tuple[int, int, int]:
    """Per axis, the index of the plane with the most foreground (the middle when there is none)."""
    foreground = labels > 0
    if not foreground.any():
        return tuple(n // 2 for n in labels.shape)
    axes = range(3)
    return tuple(int(np.argmax(foreground.sum(axis=tuple(a for a in axes if a != keep)))) for keep in axes)


def _contours(ax, plane: np.ndarray, style: dict) -> None:
    for mask, width in ((plane > 0, 1.3), (np.isin(plane, MASS_LABELS), 0.8)):
        if mask.any() and not mask.all():
            ax.contour(mask.astype(float), levels=[0.5], linewidths=width, **style)


def _label_contours(ax, plane: np.ndarray, palette: dict, linestyle: str, width: float) -> None:
    for value, colour in palette.items():
        mask = plane == value
        if mask.any() and not mask.all():
            ax.contour(mask.astype(float), levels=[0.5], linewidths=width, colors=colour, linestyles=linestyle)


def _radiological(plane: np.ndarray) -> np.ndarray:
    """A RAS plane (first axis x, second y or z) for display: anterior/superior up, patient right on the left."""
    return plane.T[::-1, ::-1]


# --- output ---------------------------------------------------------------------------------------------------------


def _save(fig, kind: str) -> bytes:
    buffer = io.BytesIO()
    metadata = {"Date": None} if kind == "svg" else {"Software": None}
    fig.savefig(buffer, format=kind, dpi=110, bbox_inches="tight", metadata=metadata)
    plt.close(fig)
    return buffer.getvalue()
