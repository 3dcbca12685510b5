"""Training in rounds: round r starts from round r-1's best weights on a freshly drawn patient-level split.

One call of :func:`train_round` trains one round and writes its artefacts (``model_best.pt`` with the lowest
validation loss, ``model_last.pt``, ``metrics.csv`` with one row per epoch, ``split.json``, ``curves.png``).
:func:`select_best_round` then keeps the round with the lowest validation loss.
"""

from __future__ import annotations

import logging
import math
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


@dataclass
class RoundOutputs:
    model_best: Path
    model_last: Path
    metrics: Path
    split: Path
    curves: Path


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    val_loss: float
    val_dice: float  # foreground (kidney and masses) Dice over all validation slices
    class_dice: dict = field(default_factory=dict)
    lr: float = 0.0
    seconds: float = 0.0


def round_split(case_ids: list[str], patients: list[str], round_index: int, val_fraction: float, seed: int):
    """Patient-level (train, val) case lists for one round: rotating folds over one seeded patient order.

    With k = round(1 / val_fraction) folds, round r validates on fold r mod k, so successive rounds see different
    validation patients and no patient is ever in both sets of one round.
    """
    unique = sorted(set(patients))
    if len(unique) < 2:
        raise ValueError(f"need at least 2 trainval patients to split into train and val, got {len(unique)}")
    order = [unique[i] for i in rng_for(seed, "round_folds").permutation(len(unique))]
    n_folds = max(2, min(len(unique), int(round(1.0 / val_fraction))))
    val_patients = set(order[round_index % n_folds :: n_folds])
    train = [c for c, p in zip(case_ids, patients) if p not in val_patients]
    val = [c for c, p in zip(case_ids, patients) if p in val_patients]
    return train, val


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def save_checkpoint(path, model, cfg: dict, n_classes: int, **extra) -> None:
    state = {"model": model.state_dict(), "model_cfg": _model_cfg(cfg), "n_classes": n_classes, **extra}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


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
) -> list[EpochResult]:
    """Train one round; return its per-epoch results (also written to ``outputs.metrics``)."""
    torch.set_num_threads(max(1, threads))
    round_seed = derive_seed(seed, "train_round", round_index)
    seed_everything(round_seed)
    case_ids = sorted(case_dirs)
    train_ids, val_ids = round_split(
        case_ids, [patients[c] for c in case_ids], round_index, cfg["val_fraction"], seed
    )
    write_json(outputs.split, {"round": round_index, "train": train_ids, "val": val_ids, "seed": round_seed})
    log.info("round %d: %d train cases, %d val cases (%s)", round_index, len(train_ids), len(val_ids), val_ids)

    device = pick_device(cfg["device"])
    model = build_model(cfg, n_classes).to(device)
    if init_checkpoint is not None:
        previous = load_weights(model, init_checkpoint)
        log.info(
            "round %d starts from %s (round %s, epoch %s, val loss %.4f)",
            round_index, init_checkpoint, previous.get("round"), previous.get("epoch"), previous.get("val_loss", math.nan),
        )
    else:
        log.info("round %d starts from random initialisation", round_index)

    augmentation = build_augmentation(cfg["augment"])
    if augmentation is not None:
        augmentation.set_random_state(seed=derive_seed(round_seed, "augment"))
    train_set = SliceDataset([case_dirs[c] for c in train_ids], transform=augmentation)
    val_set = SliceDataset([case_dirs[c] for c in val_ids])
    loss_fn = build_loss(cfg)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimiser, factor=0.5, patience=max(1, cfg["patience"] // 2))
    sampler_rng = rng_for(round_seed, "sampler")
    foreground = train_set.foreground_mask()

    results: list[EpochResult] = []
    best_loss, stale = math.inf, 0
    for epoch in range(cfg["epochs"]):
        started = time.perf_counter()
        indices = epoch_indices(foreground, _samples_per_epoch(cfg, len(train_set)), cfg["foreground_fraction"], sampler_rng)
        train_loss = _train_epoch(model, train_set, indices, loss_fn, optimiser, cfg, device)
        val_loss, val_dice, class_dice = evaluate(model, val_set, loss_fn, cfg["batch_size"], device, n_classes)
        scheduler.step(val_loss)
        result = EpochResult(
            epoch, train_loss, val_loss, val_dice, class_dice, optimiser.param_groups[0]["lr"], time.perf_counter() - started
        )
        results.append(result)
        log.info(
            "round %d epoch %d/%d: train loss %.4f, val loss %.4f, val Dice %.4f (%.1f s)",
            round_index, epoch + 1, cfg["epochs"], train_loss, val_loss, val_dice, result.seconds,
        )
        if val_loss < best_loss:
            best_loss, stale = val_loss, 0
            save_checkpoint(
                outputs.model_best, model, cfg, n_classes, round=round_index, epoch=epoch, val_loss=val_loss, val_dice=val_dice
            )
        else:
            stale += 1
        save_checkpoint(outputs.model_last, model, cfg, n_classes, round=round_index, epoch=epoch, val_loss=val_loss)
        write_table(outputs.metrics, metrics_frame(results, round_index), sep=",")
        if stale >= cfg["patience"]:
            log.info("round %d: early stop, val loss did not improve for %d epochs", round_index, stale)
            break
    plot_curves(outputs.curves, metrics_frame(results, round_index))
    return results


def _samples_per_epoch(cfg: dict, n_slices: int) -> int:
    wanted = cfg.get("samples_per_epoch")
    return int(wanted) if wanted else n_slices


def _train_epoch(model, dataset, indices, loss_fn, optimiser, cfg, device) -> float:
    model.train()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices.tolist()),
        batch_size=cfg["batch_size"],
        shuffle=False,  # the order is already a seeded shuffle
        num_workers=cfg["num_workers"],
        drop_last=len(indices) > cfg["batch_size"],
    )
    total, count = 0.0, 0
    for batch in loader:
        images, labels = batch["image"].to(device), batch["label"].to(device)
        optimiser.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        optimiser.step()
        total += loss.item() * len(images)
        count += len(images)
    return total / max(count, 1)


@torch.no_grad()
def evaluate(model, dataset, loss_fn, batch_size: int, device, n_classes: int):
    """Mean loss over slices, and Dice pooled over all slices (foreground, and per class)."""
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    total, count = 0.0, 0
    intersection = np.zeros(n_classes)
    volume = np.zeros(n_classes)
    fg_inter = fg_volume = 0.0
    for batch in loader:
        images, labels = batch["image"].to(device), batch["label"].to(device)
        logits = model(images)
        total += float(loss_fn(logits, labels)) * len(images)
        count += len(images)
        pred = logits.argmax(1)
        ref = labels[:, 0]
        for c in range(1, n_classes):
            intersection[c] += float(((pred == c) & (ref == c)).sum())
            volume[c] += float((pred == c).sum() + (ref == c).sum())
        fg_inter += float(((pred > 0) & (ref > 0)).sum())
        fg_volume += float((pred > 0).sum() + (ref > 0).sum())
    class_dice = {CLASS_NAMES.get(c, str(c)): _dice(intersection[c], volume[c]) for c in range(1, n_classes)}
    return total / max(count, 1), _dice(fg_inter, fg_volume), class_dice


def _dice(intersection: float, volume: float) -> float:
    return 1.0 if volume == 0 else 2.0 * intersection / volume


def metrics_frame(results: list[EpochResult], round_index: int) -> pd.DataFrame:
    rows = []
    for r in results:
        row = {"round": round_index, "epoch": r.epoch, "train_loss": r.train_loss, "val_loss": r.val_loss}
        row["val_dice"] = r.val_dice
        row.update({f"val_dice_{name}": value for name, value in r.class_dice.items()})
        row.update({"lr": r.lr, "seconds": round(r.seconds, 3)})
        rows.append(row)
    return pd.DataFrame(rows)


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


def select_best_round(metrics_paths: list[Path], checkpoint_paths: list[Path]) -> dict:
    """The round whose best epoch has the lowest validation loss, and a per-round summary table."""
    rows = []
    for metrics_path, checkpoint in zip(metrics_paths, checkpoint_paths):
        metrics = pd.read_csv(metrics_path)
        best = metrics.loc[metrics["val_loss"].idxmin()]
        rows.append(
            {
                "round": int(best["round"]),
                "best_epoch": int(best["epoch"]),
                "val_loss": float(best["val_loss"]),
                "val_dice": float(best["val_dice"]),
                "epochs_run": len(metrics),
                "checkpoint": str(checkpoint),
            }
        )
    table = pd.DataFrame(rows)
    chosen = table.loc[table["val_loss"].idxmin()]
    return {"round": int(chosen["round"]), "val_loss": float(chosen["val_loss"]), "table": table, "checkpoint": chosen["checkpoint"]}


def _model_cfg(cfg: dict) -> dict:
    keys = ("model", "channels", "num_res_units", "dropout")
    return {k: cfg[k] for k in keys if k in cfg}
