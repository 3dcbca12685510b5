"""Training in rounds: round r starts from round r-1's best weights on a freshly drawn patient-level split.

One call of :func:`train_round` trains one round and writes its artefacts (``model_best.pt`` with the lowest
validation loss, ``model_last.pt`` with the full training state, ``metrics.csv`` with one row per epoch,
``split.json``, ``curves.png``). :func:`select_best_round` then keeps the best round.

Resuming: after every epoch the whole training state (model, optimiser, scheduler, early-stopping counters, the
metrics so far) is written atomically to ``<round dir>/resume/state.pt``, a path Snakemake does not own (it deletes
a job's declared outputs before rerunning it). Every random stream is reseeded from (seed, round, epoch) at the
start of each epoch, so a round resumed after a kill continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from segflow.data import SliceDataset, build_augmentation, epoch_indices
from segflow.io import atomic_path, write_json, write_table
from segflow.losses import build_loss
from segflow.models import build_model, load_weights
from segflow.seeding import derive_seed, rng_for, seed_everything

log = logging.getLogger(__name__)

CLASS_NAMES = {1: "kidney", 2: "tumor", 3: "cyst"}
MODEL_KEYS = ("model", "channels", "num_res_units", "dropout", "backbone")


@dataclass
class RoundOutputs:
    model_best: Path
    model_last: Path
    metrics: Path
    split: Path
    curves: Path

    @property
    def resume_state(self) -> Path:
        return self.model_best.parent / "resume" / "state.pt"


@dataclass
class Scores:
    """Loss and foreground (kidney and masses) overlap figures pooled over all slices of a set."""

    loss: float
    dice: float
    iou: float
    precision: float
    recall: float
    class_dice: dict = field(default_factory=dict)


class Terminated(Exception):
    """SIGTERM from a scheduler (SLURM preemption or time limit): stop after saving what is complete."""


# --- splits ---------------------------------------------------------------------------------------------------------


def holdout_patients(patients: list[str], fraction: float, seed: int) -> set[str]:
    """A fixed set of trainval patients kept out of every round: the one yardstick all rounds are measured on."""
    unique = sorted(set(patients))
    n_holdout = int(round(fraction * len(unique)))
    if fraction > 0 and len(unique) >= 4:
        n_holdout = max(1, n_holdout)
    n_holdout = min(n_holdout, max(0, len(unique) - 2))  # rounds still need a train and a val patient
    return set(sorted(unique, key=lambda p: derive_seed(seed, "holdout", p))[:n_holdout])


def round_split(
    case_ids: list[str], patients: list[str], round_index: int, val_fraction: float, seed: int, scheme: str = "folds"
):
    """Patient-level (train, val) case lists for one round.

    ``folds``: with k = round(1 / val_fraction) folds over one seeded patient order, round r validates on fold
    r mod k, so successive rounds see different validation patients. ``reshuffle``: a fresh seeded draw each
    round. Either way no patient is ever in both sets of one round.
    """
    unique = sorted(set(patients))
    if len(unique) < 2:
        raise ValueError(f"need at least 2 trainval patients to split into train and val, got {len(unique)}")
    if scheme == "reshuffle":
        order = [unique[i] for i in rng_for(seed, "round_split", round_index).permutation(len(unique))]
        n_val = min(len(unique) - 1, max(1, int(round(val_fraction * len(unique)))))
        val_patients = set(order[:n_val])
    else:
        order = sorted(unique, key=lambda p: derive_seed(seed, "round_folds", p))
        n_folds = max(2, min(len(unique), int(round(1.0 / val_fraction))))
        val_patients = set(order[round_index % n_folds :: n_folds])
    train = [c for c, p in zip(case_ids, patients) if p not in val_patients]
    val = [c for c, p in zip(case_ids, patients) if p in val_patients]
    return train, val


# --- devices and checkpoints ------------------------------------------------------------------------------------------


def pick_device(name: str) -> torch.device:
    """``auto`` takes the GPU when there is one (under SLURM: the GPUs the job was given, via CUDA_VISIBLE_DEVICES)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_for(device: torch.device, enabled: bool):
    """Mixed precision on CUDA (bfloat16 where supported, else float16); a no-op on CPU."""
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def save_checkpoint(path, model, cfg: dict, n_classes: int, **extra) -> None:
    state = {"model": model.state_dict(), "model_cfg": _model_cfg(cfg), "n_classes": n_classes, **extra}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _model_cfg(cfg: dict) -> dict:
    return {k: cfg[k] for k in MODEL_KEYS if k in cfg}


# --- one round ----------------------------------------------------------------------------------------------------------


@dataclass
class RoundSetup:
    """Everything a round trains with, built once; the loop below only advances it."""

    cfg: dict
    round_index: int
    round_seed: int
    device: torch.device
    model: torch.nn.Module
    optimiser: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    loss_fn: torch.nn.Module
    train_set: SliceDataset
    val_set: SliceDataset
    augmentation: object
    sample_weights: np.ndarray | None
    n_classes: int


def train_round(
    case_dirs: dict[str, Path],
    patients: dict[str, str],
    round_index: int,
    cfg: dict,
    seed: int,
    outputs: RoundOutputs,
    init_checkpoint: Path | None = None,
    threads: int = 1,
    n_classes: int = 4,
) -> pd.DataFrame:
    """Train one round (resuming from its saved state when there is one); return the per-epoch metrics."""
    torch.set_num_threads(max(1, threads))
    setup = _setup_round(case_dirs, patients, round_index, cfg, seed, outputs, init_checkpoint, n_classes)
    fingerprint = _fingerprint(cfg, seed, round_index, sorted(case_dirs), init_checkpoint)
    rows, best_loss, stale, start_epoch = _resume(setup, outputs.resume_state, fingerprint)
    with _sigterm_raises():
        for epoch in range(start_epoch, cfg["epochs"]):
            if stale >= cfg["patience"]:
                break
            row = _run_epoch(setup, epoch)
            rows.append(row)
            if row["val_loss"] < best_loss:
                best_loss, stale = row["val_loss"], 0
                save_checkpoint(
                    outputs.model_best, setup.model, cfg, n_classes,
                    round=round_index, epoch=epoch, val_loss=row["val_loss"], val_dice=row["val_dice"],
                )
            else:
                stale += 1
            write_table(outputs.metrics, pd.DataFrame(rows), sep=",")
            _save_state(setup, outputs.resume_state, fingerprint, epoch, rows, best_loss, stale)
            if stale >= cfg["patience"]:
                log.info("round %d: early stop, val loss did not improve for %d epochs", round_index, stale)
    metrics = pd.DataFrame(rows)
    plot_curves(outputs.curves, metrics)
    # The final state becomes model_last.pt; the resume folder is no longer needed.
    os.replace(outputs.resume_state, outputs.model_last)
    shutil.rmtree(outputs.resume_state.parent, ignore_errors=True)
    return metrics


def _setup_round(case_dirs, patients, round_index, cfg, seed, outputs, init_checkpoint, n_classes) -> RoundSetup:
    round_seed = derive_seed(seed, "train_round", round_index)
    seed_everything(round_seed)
    case_ids = sorted(case_dirs)
    held_out = holdout_patients([patients[c] for c in case_ids], cfg["holdout_fraction"], seed)
    rotating = [c for c in case_ids if patients[c] not in held_out]
    train_ids, val_ids = round_split(
        rotating, [patients[c] for c in rotating], round_index, cfg["val_fraction"], seed, cfg["split_scheme"]
    )
    holdout_ids = [c for c in case_ids if patients[c] in held_out]
    write_json(outputs.split, {"round": round_index, "train": train_ids, "val": val_ids, "holdout": holdout_ids})
    log.info("round %d: %d train cases, val %s, fixed holdout %s", round_index, len(train_ids), val_ids, holdout_ids)

    device = pick_device(cfg["device"])
    model = build_model(cfg, n_classes)
    _initialise(model, round_index, init_checkpoint, cfg)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimiser, factor=0.5, patience=max(1, cfg["patience"] // 2))
    train_set = SliceDataset([case_dirs[c] for c in train_ids], transform=build_augmentation(cfg["augment"]))
    val_set = SliceDataset([case_dirs[c] for c in val_ids])
    loss_fn = build_loss(cfg)
    weights = None
    if init_checkpoint is not None and cfg["hard_slice_boost"] > 0:
        weights = hard_slice_weights(model, train_set, loss_fn, cfg, device, cfg["hard_slice_boost"])
    return RoundSetup(
        cfg, round_index, round_seed, device, model, optimiser, scheduler, loss_fn, train_set, val_set,
        train_set.transform, weights, n_classes,
    )


def _initialise(model, round_index: int, init_checkpoint, cfg: dict) -> None:
    if init_checkpoint is not None:
        previous = load_weights(model, init_checkpoint)
        log.info(
            "round %d starts from %s (round %s, epoch %s, val loss %.4f)",
            round_index, init_checkpoint, previous.get("round"), previous.get("epoch"), previous.get("val_loss", math.nan),
        )
    elif cfg.get("init_checkpoint"):
        load_weights(model, cfg["init_checkpoint"])
        log.info("round %d starts from train.init_checkpoint %s", round_index, cfg["init_checkpoint"])
    else:
        log.info("round %d starts from random initialisation", round_index)


def _run_epoch(setup: RoundSetup, epoch: int) -> dict:
    """One epoch; every random stream is reseeded from (round seed, epoch) so that resuming is exact."""
    cfg = setup.cfg
    epoch_seed = derive_seed(setup.round_seed, "epoch", epoch)
    torch.manual_seed(epoch_seed)
    if setup.augmentation is not None:
        setup.augmentation.set_random_state(seed=derive_seed(epoch_seed, "augment"))
    started = time.perf_counter()
    indices = epoch_indices(
        setup.train_set.foreground_mask(),
        cfg.get("samples_per_epoch") or len(setup.train_set),
        cfg["foreground_fraction"],
        rng_for(epoch_seed, "sampler"),
        weights=setup.sample_weights,
    )
    train_loss = _train_epoch(setup, indices, epoch_seed)
    val = evaluate(setup.model, setup.val_set, setup.loss_fn, cfg["batch_size"], setup.device, setup.n_classes)
    setup.scheduler.step(val.loss)
    row = {
        "round": setup.round_index, "epoch": epoch, "train_loss": train_loss, "val_loss": val.loss,
        "val_dice": val.dice, "val_iou": val.iou, "val_precision": val.precision, "val_recall": val.recall,
        "val_f1": val.dice,  # F1 is Dice for binary masks; kept under its own name for readers who expect it
        **{f"val_dice_{name}": value for name, value in val.class_dice.items()},
        "lr": setup.optimiser.param_groups[0]["lr"], "seconds": round(time.perf_counter() - started, 3),
    }
    log.info(
        "round %d epoch %d/%d: train loss %.4f, val loss %.4f, val Dice %.4f (%.1f s)",
        setup.round_index, epoch + 1, cfg["epochs"], train_loss, val.loss, val.dice, row["seconds"],
    )
    return row


def _train_epoch(setup: RoundSetup, indices: np.ndarray, epoch_seed: int) -> float:
    cfg, model, device = setup.cfg, setup.model, setup.device
    model.train()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(setup.train_set, indices.tolist()),
        batch_size=cfg["batch_size"],
        shuffle=False,  # the order is already a seeded shuffle
        num_workers=cfg["num_workers"],
        drop_last=len(indices) > cfg["batch_size"],
        worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(epoch_seed),
    )
    total, count = 0.0, 0
    progress = _Progress(len(loader), f"round {setup.round_index}")
    for batch in loader:
        images, labels = _to_device(batch, device)
        setup.optimiser.zero_grad(set_to_none=True)
        with autocast_for(device, cfg["amp"]):
            loss = setup.loss_fn(model(images).float(), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        setup.optimiser.step()
        total += loss.item() * len(images)
        count += len(images)
        progress.step(total / count)
    progress.close()
    return total / max(count, 1)


def _seed_worker(worker_id: int) -> None:
    """DataLoader workers: derive NumPy/random seeds from torch's per-worker seed so workers stay reproducible."""
    import random

    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def _to_device(batch: dict, device: torch.device):
    images, labels = batch["image"].to(device, non_blocking=True), batch["label"].to(device, non_blocking=True)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels


@torch.no_grad()
def evaluate(model, dataset, loss_fn, batch_size: int, device, n_classes: int, amp: bool = True) -> Scores:
    """Mean loss over slices, and overlap figures pooled over all slices (foreground, and Dice per class)."""
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    total, count = 0.0, 0
    class_inter, class_volume = np.zeros(n_classes), np.zeros(n_classes)
    tp = fp = fn = 0.0
    for batch in loader:
        images, labels = _to_device(batch, device)
        with autocast_for(device, amp):
            logits = model(images).float()
        total += float(loss_fn(logits, labels)) * len(images)
        count += len(images)
        pred, ref = logits.argmax(1), labels[:, 0]
        for c in range(1, n_classes):
            class_inter[c] += float(((pred == c) & (ref == c)).sum())
            class_volume[c] += float((pred == c).sum() + (ref == c).sum())
        tp += float(((pred > 0) & (ref > 0)).sum())
        fp += float(((pred > 0) & (ref == 0)).sum())
        fn += float(((pred == 0) & (ref > 0)).sum())
    class_dice = {CLASS_NAMES.get(c, str(c)): _ratio(2 * class_inter[c], class_volume[c]) for c in range(1, n_classes)}
    return Scores(
        loss=total / max(count, 1), dice=_ratio(2 * tp, 2 * tp + fp + fn), iou=_ratio(tp, tp + fp + fn),
        precision=_ratio(tp, tp + fp), recall=_ratio(tp, tp + fn), class_dice=class_dice,
    )


def _ratio(numerator: float, denominator: float) -> float:
    """Overlap ratios with the KiTS convention: nothing predicted and nothing there scores 1."""
    return 1.0 if denominator == 0 else numerator / denominator


@torch.no_grad()
def hard_slice_weights(model, dataset, loss_fn, cfg, device, boost: float) -> np.ndarray:
    """Sampling weights 1 + boost * (per-slice loss rank in [0, 1]) from the model this round starts from.

    Round r then sees more of the slices round r-1 got most wrong.
    """
    model.eval()
    losses = []
    for item in range(len(dataset)):
        sample = dataset.untransformed(item)
        images, labels = sample["image"][None].to(device), sample["label"][None].to(device)
        losses.append(float(loss_fn(model(images).float(), labels)))
    ranks = np.argsort(np.argsort(losses)) / max(len(losses) - 1, 1)
    log.info("hard-slice oversampling: weights 1 to %.1f from the starting model's per-slice loss", 1 + boost)
    return 1.0 + boost * ranks


# --- resume ---------------------------------------------------------------------------------------------------------------


def _fingerprint(cfg: dict, seed: int, round_index: int, case_ids: list[str], init_checkpoint) -> str:
    """What a saved state must match to be resumed: same config, seed, cases and starting weights."""
    init = Path(init_checkpoint).stat().st_size if init_checkpoint else None
    text = json.dumps([cfg, seed, round_index, case_ids, str(init_checkpoint), init], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _save_state(setup: RoundSetup, path: Path, fingerprint: str, epoch: int, rows: list, best_loss: float, stale: int):
    state = {
        "model": setup.model.state_dict(), "model_cfg": _model_cfg(setup.cfg), "n_classes": setup.n_classes,
        "optimiser": setup.optimiser.state_dict(), "scheduler": setup.scheduler.state_dict(),
        "round": setup.round_index, "epoch": epoch, "rows": rows, "best_loss": best_loss, "stale": stale,
        "fingerprint": fingerprint,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _resume(setup: RoundSetup, path: Path, fingerprint: str):
    """(rows, best loss, stale epochs, first epoch to run): from a matching saved state, or a fresh start."""
    if not path.exists():
        return [], math.inf, 0, 0
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("fingerprint") != fingerprint:
        log.info("round %d: saved state %s is from another configuration; starting over", setup.round_index, path)
        return [], math.inf, 0, 0
    setup.model.load_state_dict(state["model"])
    setup.optimiser.load_state_dict(state["optimiser"])
    setup.scheduler.load_state_dict(state["scheduler"])
    log.info("round %d: resuming after epoch %d from %s", setup.round_index, state["epoch"] + 1, path)
    return list(state["rows"]), float(state["best_loss"]), int(state["stale"]), int(state["epoch"]) + 1


@contextlib.contextmanager
def _sigterm_raises():
    """Turn SIGTERM (scheduler preemption, time limit) into an exception: the last complete epoch is on disk."""

    def handler(signum, frame):
        raise Terminated(f"received signal {signum}; the last completed epoch is saved and will be resumed")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Progress:
    """A progress bar on a terminal; nothing per batch in log files (one line per epoch is logged instead)."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self.done = total, label, 0
        self.active = sys.stderr.isatty()

    def step(self, loss: float) -> None:
        self.done += 1
        if self.active:
            filled = int(30 * self.done / max(self.total, 1))
            sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} loss {loss:.4f}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.active:
            sys.stderr.write("\n")


# --- curves and model selection ---------------------------------------------------------------------------------------


def plot_curves(path, metrics: pd.DataFrame) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax_loss.plot(metrics["epoch"], metrics["train_loss"], label="train")
    ax_loss.plot(metrics["epoch"], metrics["val_loss"], label="val")
    best = metrics["val_loss"].idxmin()
    ax_loss.scatter([metrics.loc[best, "epoch"]], [metrics.loc[best, "val_loss"]], color="red", zorder=3, label="best")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    ax_dice.plot(metrics["epoch"], metrics["val_dice"], label="foreground")
    for column in [c for c in metrics.columns if c.startswith("val_dice_")]:
        ax_dice.plot(metrics["epoch"], metrics[column], label=column.removeprefix("val_dice_"), alpha=0.7)
    ax_dice.set(xlabel="epoch", ylabel="Dice", title="validation Dice", ylim=(0, 1))
    ax_dice.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def evaluate_on_holdout(checkpoints: list[Path], case_dirs: list[Path], cfg: dict, threads: int = 1) -> list[Scores | None]:
    """Every round's best model on the same fixed holdout slices (None for all when there is no holdout)."""
    if not case_dirs:
        return [None] * len(checkpoints)
    from segflow.predict import load_model

    torch.set_num_threads(max(1, threads))
    device = pick_device(cfg["device"])
    dataset = SliceDataset(case_dirs)
    loss_fn = build_loss(cfg)
    results = []
    for checkpoint in checkpoints:
        model, meta = load_model(checkpoint, device)
        results.append(evaluate(model, dataset, loss_fn, cfg["batch_size"], device, meta["n_classes"]))
    return results


def select_best_round(
    metrics_paths: list[Path], checkpoint_paths: list[Path], holdout: list[Scores | None] | None = None,
    select_by: str = "val_loss",
) -> dict:
    """The round to keep, and a per-round table (best epoch, its val loss/Dice, the fixed holdout figures).

    Validation sets differ between rounds, so the holdout figures are the like-for-like comparison; ``select_by``
    chooses between the lowest validation loss (default, as in the seeds) and the highest holdout Dice.
    """
    holdout = holdout or [None] * len(metrics_paths)
    rows = []
    for metrics_path, checkpoint, fixed in zip(metrics_paths, checkpoint_paths, holdout):
        metrics = pd.read_csv(metrics_path)
        best = metrics.loc[metrics["val_loss"].idxmin()]
        rows.append(
            {
                "round": int(best["round"]), "best_epoch": int(best["epoch"]), "val_loss": float(best["val_loss"]),
                "val_dice": float(best["val_dice"]), "fixed_val_loss": fixed.loss if fixed else math.nan,
                "fixed_val_dice": fixed.dice if fixed else math.nan, "epochs_run": len(metrics),
                "checkpoint": str(checkpoint),
            }
        )
    table = pd.DataFrame(rows)
    if select_by == "fixed_dice" and table["fixed_val_dice"].notna().all():
        chosen = table.loc[table["fixed_val_dice"].idxmax()]
    else:
        if select_by == "fixed_dice":
            log.warning("train.select_by fixed_dice needs a holdout (train.holdout_fraction > 0); using val_loss")
        chosen = table.loc[table["val_loss"].idxmin()]
    return {
        "round": int(chosen["round"]), "val_loss": float(chosen["val_loss"]), "select_by": select_by,
        "fixed_val_dice": None if math.isnan(chosen["fixed_val_dice"]) else float(chosen["fixed_val_dice"]),
        "table": table, "checkpoint": chosen["checkpoint"],
    }
