"""Choosing among the trained rounds (select_model): every round's best model on the fixed holdout, the round (or
the best rounds, for an ensemble) to keep, and the post-processing steps, region thresholds
(``infer.region_thresholds``), mass seed and blur across slices (``infer.slice_sigma_mm``) that help on the fixed
holdout, or on every trainval case the kept model never trained on (``train.postprocess_on``)."""

from __future__ import annotations

import functools
import logging
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from segflow.cases import load_case
from segflow.checkpoints import load_model, load_models
from segflow.data import SliceDataset
from segflow.device import amp_dtype_for, pick_device
from segflow.inference import blur_case, case_probabilities, probability_labels
from segflow.io import read_json
from segflow.labelsets import label_tree, seed_choices, sigma_choices, threshold_choices, threshold_name
from segflow.losses import build_loss
from segflow.train import Scores, evaluate

log = logging.getLogger(__name__)


def evaluate_on_holdout(
    checkpoints: list[Path], case_dirs: list[Path], cfg: dict, threads: int = 1, regions: dict | None = None
) -> list[Scores | None]:
    """Every round's best model on the same fixed holdout slices (None for all when there is no holdout), with the
    loss it trained with (``regions``: ``score.regions``, for ``train.dice_targets: regions``)."""
    if not case_dirs:
        return [None] * len(checkpoints)
    torch.set_num_threads(max(1, threads))
    device = pick_device(cfg["device"])
    dtype = amp_dtype_for(device, cfg)
    results = []
    for checkpoint in checkpoints:
        model, meta = load_model(checkpoint, device)
        loss_fn = build_loss(cfg, regions, meta["n_classes"]).to(device)
        three_d = meta["model_cfg"].get("dims", 2) == 3
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last_3d if three_d else torch.channels_last)
        if three_d:  # the same fixed seeded patches for every round (segflow.volumes)
            from segflow.volumes import FixedPatches

            dataset = FixedPatches(case_dirs, meta["model_cfg"]["patch_size"], meta["n_classes"], 0)
        else:
            dataset = SliceDataset(case_dirs, context=int(meta["model_cfg"].get("context_slices", 1)))
        results.append(evaluate(model, dataset, loss_fn, cfg["batch_size"], device, meta["n_classes"], dtype))
    return results


def select_best_round(
    metrics_paths: list[Path],
    checkpoint_paths: list[Path],
    holdout: list[Scores | None] | None = None,
    select_by: str = "val_loss",
    ensemble: int = 1,
    keep_epoch: str = "best",
) -> dict:
    """The round to keep, and a per-round table (kept epoch, its val loss/Dice, the fixed holdout figures).

    Validation sets differ between rounds, so the holdout figures are the like-for-like comparison; ``select_by``
    chooses between the lowest validation loss (default, as in the seeds) and the highest holdout Dice.
    ``keep_epoch``: which epoch is each round's model (``checkpoint_paths`` are those epochs' checkpoints), the one
    with the lowest validation loss or the last one.
    """
    holdout = holdout or [None] * len(metrics_paths)
    rows = []
    for metrics_path, checkpoint, fixed in zip(metrics_paths, checkpoint_paths, holdout):
        metrics = pd.read_csv(metrics_path)
        kept = metrics.iloc[-1] if keep_epoch == "last" else metrics.loc[metrics["val_loss"].idxmin()]
        rows.append(
            {
                "round": int(kept["round"]),
                "best_epoch": int(kept["epoch"]),
                "val_loss": float(kept["val_loss"]),
                "val_dice": float(kept["val_dice"]),
                "fixed_val_loss": fixed.loss if fixed else math.nan,
                "fixed_val_dice": fixed.dice if fixed else math.nan,
                "epochs_run": len(metrics),
                "checkpoint": str(checkpoint),
            }
        )
    table = pd.DataFrame(rows)
    if select_by == "fixed_dice" and table["fixed_val_dice"].notna().all():
        ranked = table.sort_values("fixed_val_dice", ascending=False, kind="stable")
    else:
        if select_by == "fixed_dice":
            log.warning("train.select_by fixed_dice needs a holdout (train.holdout_fraction > 0); using val_loss")
        ranked = table.sort_values("val_loss", kind="stable")
    chosen = ranked.iloc[0]
    members = ranked.iloc[: max(1, ensemble)]
    return {
        "round": int(chosen["round"]),
        "val_loss": float(chosen["val_loss"]),
        "select_by": select_by,
        "keep_epoch": keep_epoch,
        "fixed_val_dice": None if math.isnan(chosen["fixed_val_dice"]) else float(chosen["fixed_val_dice"]),
        "table": table,
        "checkpoint": chosen["checkpoint"],
        "ensemble_rounds": [int(r) for r in members["round"]],
        "ensemble": list(members["checkpoint"]),
    }


def unseen_cases(case_ids: list[str], splits: list[dict], kept_rounds: list[int]) -> list[str]:
    """The trainval cases that the kept model (or every member of an ensemble) never trained on, sorted.

    Round r starts from round r - 1's model, so a model of round r has trained on the training cases of rounds 0
    to r. What remains are the fixed holdout and the validation cases of the kept round that no earlier round
    trained on: with one round, holdout and validation; with rotating folds, usually the holdout alone.
    ``splits`` are the rounds' split.json contents, in round order. A train.init_checkpoint's own training data
    are unknown here and not excluded.
    """
    last = max(kept_rounds)
    by_round = {int(split["round"]): split for split in splits}
    missing = [r for r in range(last + 1) if r not in by_round]
    if missing:
        raise ValueError(f"no split.json for round(s) {missing}; the kept rounds are {kept_rounds}")
    trained = set().union(*(by_round[r]["train"] for r in range(last + 1)))
    return sorted(c for c in case_ids if c not in trained)


def decide_postprocessing(
    checkpoint_path,
    case_dirs: list,
    candidates: list,
    infer: dict,
    regions: dict,
    threads: int = 1,
    prune: bool = False,
) -> dict:
    """Which post-processing steps, and which of ``infer.region_thresholds``', ``infer.mass_seed``'s and
    ``infer.slice_sigma_mm``'s candidates, help on ``case_dirs``: cases the model never trained on (nnU-Net
    decides on its cross-validation's predictions the same way).

    The cases are predicted once on the preprocessed grid, where their reference labels are, with the same
    ensemble, mirroring and decoding as the test cases, and decoded with every blur, threshold combination and
    seed; each decoding gets its own post-processing decision (segflow.postprocess.decide_with_decodings;
    ``prune``: train.postprocess_prune). Returns ``{"steps", "table", "cases", "thresholds", "mass_seed",
    "slice_sigma_mm", "threshold_table"}``; the choices are the first candidates when there is no case to decide on.
    """
    from segflow.postprocess import decide_with_decodings, mass_classes

    choices = [
        (t, seed, sigma)
        for sigma in sigma_choices(infer)
        for t in threshold_choices(infer)
        for seed in seed_choices(infer)
    ]
    first_thresholds, first_seed, first_sigma = choices[0]
    undecided = {
        "steps": [],
        "table": [],
        "cases": [],
        "thresholds": first_thresholds,
        "mass_seed": first_seed,
        "slice_sigma_mm": first_sigma,
        "threshold_table": [],
    }
    if not case_dirs or (not candidates and len(choices) == 1):
        if not case_dirs and (candidates or len(choices) > 1):
            log.warning(
                "train.postprocess / infer.region_thresholds / infer.mass_seed / infer.slice_sigma_mm: no case to "
                "decide on (set train.holdout_fraction above 0, or train.postprocess_on to unseen); no "
                "post-processing, thresholds %s, mass seed %s, blur %g mm",
                first_thresholds or "none",
                first_seed,
                first_sigma,
            )
        return undecided
    torch.set_num_threads(max(1, threads))
    device = pick_device(infer["device"], "infer.device")
    models, checkpoint = load_models(checkpoint_path, device)
    region_sets = {k: list(v) for k, v in regions.items()}
    # Each decoding of each case waits on disk, and the decision loads one at a time: with several threshold
    # combinations and 12 long cases the label maps would not all fit in select_model's memory.
    with tempfile.TemporaryDirectory(prefix="decisions-") as scratch:
        decoded: list[list] = [[] for _ in choices]
        references = []
        for case_dir in case_dirs:
            image, label = load_case(case_dir)
            probabilities = case_probabilities(models, image, checkpoint, infer, device)
            meta = read_json(Path(case_dir) / "meta.json")
            saved = Path(scratch) / Path(case_dir).name
            for sigma in sigma_choices(infer):  # one blurred copy at a time, decoded every way
                blurred = blur_case(probabilities, sigma, meta)
                masses = None  # the masses' probability, once per copy, for the seeds
                if any(seed is not None for _, seed, _ in choices):
                    masses = np.asarray(blurred[:, mass_classes(blurred.shape[1])], dtype=np.float32).sum(axis=1)
                for index, choice in enumerate(choices):
                    if choice[2] == sigma:
                        labels = _decode(blurred, masses, choice, infer, regions)
                        decoded[index].append(_saved(f"{saved}_{index}.npy", labels))
                del blurred, masses
            references.append(_saved(f"{saved}_reference.npy", np.asarray(label)))
            del probabilities
        named = [(decoding_name(*choice), labels) for choice, labels in zip(choices, decoded)]
        index, steps, table, threshold_table = decide_with_decodings(
            named, references, list(candidates), region_sets, prune=prune
        )
    log.info(
        "decided on %d cases: %s of %d decoding(s), post-processing %s of %s",
        len(case_dirs),
        named[index][0],
        len(choices),
        steps or "none",
        candidates,
    )
    return {
        "steps": steps,
        "table": table,
        "cases": [Path(d).name for d in case_dirs],
        "thresholds": choices[index][0],
        "mass_seed": choices[index][1],
        "slice_sigma_mm": choices[index][2],
        "threshold_table": threshold_table if len(choices) > 1 else [],
    }


def _decode(probabilities: np.ndarray, masses, choice: tuple, infer: dict, regions: dict) -> np.ndarray:
    """Labels of one (thresholds, mass seed, blur) choice from probabilities already blurred by it (``masses``:
    their masses' probability, needed with a seed)."""
    from segflow.postprocess import seeded_masses

    thresholds, seed, _ = choice
    labels = probability_labels(probabilities, label_tree(infer, regions, probabilities.shape[1], thresholds))
    return labels if seed is None else seeded_masses(labels, masses, seed)


def decoding_name(thresholds: dict, seed: float | None, sigma_mm: float = 0.0) -> str:
    """A decoding as the threshold table names it: "masses 0.4" or "no thresholds", then ", mass seed 0.9" and
    ", slices blurred 3 mm" where they apply."""
    name = threshold_name(thresholds) + ("" if seed is None else f", mass seed {seed:g}")
    return name + (f", slices blurred {sigma_mm:g} mm" if sigma_mm else "")


def _saved(path: str, labels: np.ndarray):
    """Save a label map and return a loader of it (segflow.postprocess accepts zero-argument loaders)."""
    np.save(path, labels)
    return functools.partial(np.load, path)
