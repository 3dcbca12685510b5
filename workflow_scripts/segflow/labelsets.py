"""Label sets as data: each dataset's label values, their names, the scored regions and the report's colours come
from the config (``score.labels``, ``score.regions``, ``score.colours``, ``score.headline``, ``selection.labels``),
not from kidney constants. Torch-free: the Snakefile and the report use it.
"""

from __future__ import annotations

import itertools

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


def region_tree(regions: dict, n_classes: int, thresholds: dict | None = None) -> list:
    """The label values 0..n_classes-1 as a tree of ``score.regions``, for ``infer.decode: regions``.

    A node is a list of branches ``(labels, children, threshold)``, in the order of their lowest label: each label
    of the node that no smaller region holds (``children`` None), and each largest region inside the node with its
    own node. KiTS's regions give [(0), (1, 2, 3) -> [(1), (2, 3) -> [(2), (3)]]]. Regions must nest or be
    disjoint (a tree); a region naming a label outside 1..n_classes-1 is an error too. ``thresholds`` (region name
    -> share in (0, 1), ``infer.region_thresholds``) sets a region's branch ``threshold``: the region is chosen
    where its share of the node's probability reaches it, and only there (segflow.inference.decode_labels); every
    other branch's is None.
    """
    sets: dict[frozenset, str] = {}
    for name, members in regions.items():
        labels = frozenset(int(v) for v in members)
        outside = sorted(v for v in labels if not 0 < v < n_classes)
        if outside:
            raise ValueError(f"score.regions.{name} holds {outside}, outside the labels 1..{n_classes - 1}")
        for other, other_name in sets.items():
            if labels & other and not (labels <= other or other <= labels):
                raise ValueError(
                    f"score.regions.{name} and score.regions.{other_name} overlap without one holding the other; "
                    "infer.decode: regions needs regions that nest or are disjoint (or set infer.decode to argmax)"
                )
        sets.setdefault(labels, name)  # one region under two names is one branch
    cut = _thresholds_by_labels(regions, thresholds or {})

    def node(universe: frozenset) -> list:
        inside = [s for s in sets if s < universe]
        largest = [s for s in inside if not any(s < t for t in inside)]
        held = frozenset().union(*largest)
        branches = [((v,), None, None) for v in universe - held]
        branches += [(tuple(sorted(s)), node(s) if len(s) > 1 else None, cut.get(s)) for s in largest]
        return sorted(branches, key=lambda branch: branch[0][0])  # ties go to the lowest label, as with argmax

    return node(frozenset(range(n_classes)))


def _thresholds_by_labels(regions: dict, thresholds: dict) -> dict[frozenset, float]:
    unknown = sorted(set(thresholds) - set(regions))
    if unknown:
        raise ValueError(
            f"infer.region_thresholds names {unknown}, which are not in score.regions {sorted(regions)}; "
            "use the names of score.regions"
        )
    by_labels: dict[frozenset, float] = {}
    for name, value in thresholds.items():
        labels = frozenset(int(v) for v in regions[name])
        if by_labels.get(labels, value) != value:  # one region under two names with two thresholds
            raise ValueError(f"infer.region_thresholds gives two thresholds to the labels of score.regions.{name}")
        by_labels[labels] = float(value)
    return by_labels


def label_tree(infer: dict, regions: dict | None, n_classes: int, thresholds: dict | None = None) -> list | None:
    """The region tree ``infer.decode`` asks for (None: the argmax). ``regions``: ``score.regions``;
    ``thresholds``: one threshold per region of ``infer.region_thresholds`` (select_model's choice). Raises
    ValueError when decoding through regions that are missing or do not form a tree (checked at start-up too)."""
    if infer["decode"] != "regions":
        if thresholds:
            raise ValueError("infer.region_thresholds needs infer.decode: regions; set it or drop the thresholds")
        return None
    if not regions:
        raise ValueError("infer.decode is regions but score.regions is empty; name the regions there or decode argmax")
    return region_tree(regions, n_classes, thresholds)


def threshold_choices(infer: dict) -> list[dict[str, float]]:
    """Every combination of ``infer.region_thresholds``' candidates (region name -> threshold), the first
    candidates first: the combinations select_model compares on the holdout. [{}] without thresholds."""
    names = list(infer.get("region_thresholds") or {})
    lists = [infer["region_thresholds"][name] for name in names]
    return [dict(zip(names, (float(v) for v in values))) for values in itertools.product(*lists)]


def seed_choices(infer: dict) -> list[float | None]:
    """``infer.mass_seed``'s candidate peaks in order, [None] without seeding (segflow.postprocess.seeded_masses)."""
    return [float(peak) for peak in infer.get("mass_seed") or []] or [None]


def sigma_choices(infer: dict) -> list[float]:
    """``infer.slice_sigma_mm``'s candidate blurs across slices in order, [0.0] (none) without candidates."""
    return [float(sigma) for sigma in infer.get("slice_sigma_mm") or []] or [0.0]


def threshold_name(thresholds: dict) -> str:
    """A threshold combination as text ("masses 0.4"), the name select_model's threshold_table gives it."""
    return ", ".join(f"{name} {value:g}" for name, value in thresholds.items()) or "no thresholds"
