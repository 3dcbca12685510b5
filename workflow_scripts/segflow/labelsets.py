"""Label sets as data: each dataset's label values, their names, the scored regions and the report's colours come
from the config (``score.labels``, ``score.regions``, ``score.colours``, ``score.headline``, ``selection.labels``),
not from kidney constants. Torch-free: the Snakefile and the report use it.
"""

from __future__ import annotations

# Contour colours for labels without one in score.colours (matplotlib's tab10, colour-blind friendlier than RGB).
FALLBACK_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22")


def label_names(score_cfg: dict) -> dict[int, str]:
    """{label value: name} from ``score.labels`` (name -> value), in value order."""
    return {int(value): str(name) for name, value in sorted(score_cfg["labels"].items(), key=lambda item: item[1])}


def allowed_labels(config: dict) -> list[int]:
    """The label values a segmentation may hold: ``selection.labels``, or 0 and every value of ``score.labels`` and
    ``score.regions`` when that is null."""
    explicit = config["selection"]["labels"]
    if explicit is not None:
        return sorted({int(v) for v in explicit})
    values = {0, *(int(v) for v in config["score"]["labels"].values())}
    values |= {int(v) for members in config["score"]["regions"].values() for v in members}
    return sorted(values)


def n_classes(config: dict) -> int:
    """Network outputs: background and every label value up to the largest allowed one."""
    return max(allowed_labels(config)) + 1


def colours(score_cfg: dict) -> dict[int, str]:
    """{label value: contour colour}: ``score.colours`` by label name, a fixed palette for the others."""
    chosen = score_cfg["colours"]
    names = label_names(score_cfg)
    return {
        value: chosen.get(name, FALLBACK_COLOURS[i % len(FALLBACK_COLOURS)])
        for i, (value, name) in enumerate(names.items())
    }


def headline_column(score_cfg: dict, columns) -> str | None:
    """The Dice column that heads the report and ranks overlays: ``score.headline``'s, else the first Dice column."""
    wanted = f"dice_{score_cfg['headline']}"
    dice = [c for c in columns if c.startswith("dice_")]
    return wanted if wanted in dice else (dice[0] if dice else None)
