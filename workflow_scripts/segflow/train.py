"""Training in rounds: round r starts from round r-1's best weights on a freshly drawn patient-level split.

One call of :func:`train_round` trains one round and writes its artefacts (``model_best.pt`` with the lowest
validation loss, ``model_last.pt`` with the full training state, ``metrics.csv`` with one row per epoch,
``split.json``); the plot_curves rule draws ``curves.png`` from the metrics (segflow.curves), and select_model
keeps the best round (segflow.model_selection). Devices: segflow.device; checkpoints: segflow.checkpoints.

Resuming: after every epoch the whole training state (model, optimiser, scheduler, loss scaler, random generator
states, early-stopping counters, the best weights and the metrics so far) is written atomically to
``<round dir>/resume/state.pt``, a path Snakemake does not own (it deletes a job's declared outputs before rerunning
it). Every random stream is also reseeded from (seed, round, epoch) at the start of each epoch, so a round resumed
after a kill continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from segflow.checkpoints import model_cfg, save_checkpoint
from segflow.data import (
    SliceDataset,
    build_augmentation,
    class_balanced_weights,
    epoch_indices,
    lesion_bank,
    region_presence,
    same_shape_batches,
)
from segflow.device import amp_dtype_for, autocast_for, pick_device
from segflow.io import atomic_path, write_json, write_table
from segflow.losses import build_loss, main_output
from segflow.models import build_model, class_labels, for_whole_slices, load_weights
from segflow.seeding import derive_seed, rng_for, seed_everything

log = logging.getLogger(__name__)

CLASS_NAMES = {1: "kidney", 2: "tumor", 3: "cyst"}


@dataclass
class RoundOutputs:
    model_best: Path
    model_last: Path
    metrics: Path
    split: Path

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
    """A fixed set of trainval patients kept out of every round: the one yardstick all rounds are measured on.

    At least one patient when ``fraction`` > 0, so that rounds.tsv can compare rounds even on tiny datasets, but
    never so many that a round lacks a train and a val patient.
    """
    unique = sorted(set(patients))
    n_holdout = max(1, int(round(fraction * len(unique)))) if fraction > 0 else 0
    n_holdout = min(n_holdout, max(0, len(unique) - 2))
    return set(sorted(unique, key=lambda p: derive_seed(seed, "holdout", p))[:n_holdout])


def round_split(
    case_ids: list[str], patients: list[str], round_index: int, val_fraction: float, seed: int, scheme: str = "folds"
):
    """Patient-level (train, val) case lists for one round.

    ``folds``: with k = round(1 / val_fraction) folds over one seeded patient order, round r validates on fold
    r mod k, so successive rounds see different validation patients. ``reshuffle``: a fresh seeded draw each
    round. Either way no patient is ever in both sets of one round. ``val_fraction`` 0: every patient trains and
    val is empty (the round then validates on the fixed holdout, see _setup_round).
    """
    if val_fraction == 0:
        return list(case_ids), []
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


# --- one round --------------------------------------------------------------------------------------------------------


@dataclass
class RoundSetup:
    """Everything a round trains with, built once; the loop below only advances it."""

    cfg: dict
    round_index: int
    round_seed: int
    device: torch.device
    amp_dtype: torch.dtype | None
    model: torch.nn.Module
    optimiser: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau
    scaler: torch.amp.GradScaler
    loss_fn: torch.nn.Module
    train_set: SliceDataset
    val_set: torch.utils.data.Dataset
    augmentation: object
    sample_weights: np.ndarray | None
    n_classes: int
    class_names: dict = field(default_factory=lambda: dict(CLASS_NAMES))
    ema: torch.optim.swa_utils.AveragedModel | None = None  # train.ema_decay > 0: the average of the weights

    @property
    def kept_model(self) -> torch.nn.Module:
        """The network the round validates, keeps and hands on: the weights' moving average when train.ema_decay
        is on, else the trained weights themselves."""
        return self.model if self.ema is None else self.ema.module


@dataclass
class RoundState:
    """What the loop has achieved so far: the metrics rows, early-stopping counters and the best weights."""

    rows: list = field(default_factory=list)
    best_loss: float = math.inf
    best_epoch: int = -1
    best_weights: dict | None = None
    stale: int = 0
    next_epoch: int = 0

    def record(self, row: dict, model: torch.nn.Module) -> None:
        """Add an epoch's row; a row without validation (NaN loss, train.val_every) counts as no improvement."""
        self.rows.append(row)
        self.next_epoch = row["epoch"] + 1
        if row["val_loss"] < self.best_loss:
            self.best_loss, self.best_epoch, self.stale = row["val_loss"], row["epoch"], 0
            self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            self.stale += 1


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
    class_names: dict | None = None,
    regions: dict | None = None,
) -> pd.DataFrame:
    """Train one round (resuming from its saved state when there is one); return the per-epoch metrics.

    ``n_classes`` and ``class_names`` ({label value: name}) come from the config's label set (segflow.labelsets);
    ``regions`` ({name: label values}, ``score.regions``) is what ``train.dice_targets: regions`` takes Dice over."""
    torch.set_num_threads(max(1, threads))
    with _stop_on_sigterm():
        setup = _setup_round(case_dirs, patients, round_index, cfg, seed, outputs, init_checkpoint, n_classes, regions)
        setup.class_names = class_names or CLASS_NAMES
        fingerprint = _fingerprint(cfg, seed, round_index, case_dirs, init_checkpoint, regions)
        state = _resume(setup, outputs.resume_state, fingerprint)
        while state.next_epoch < cfg["epochs"] and state.stale < cfg["patience"]:
            validate = validates(state.next_epoch, state.stale, cfg)
            state.record(_run_epoch(setup, state.next_epoch, validate), setup.kept_model)
            write_table(outputs.metrics, pd.DataFrame(state.rows), sep=",")  # readable while the round runs
            _save_state(setup, state, outputs.resume_state, fingerprint)
            if state.stale >= cfg["patience"]:
                log.info("round %d: early stop, val loss did not improve for %d epochs", round_index, state.stale)
    return _finish_round(setup, state, outputs)


def round_seeds(seed: int, round_index: int, repeat: int = 0) -> tuple[int, int]:
    """(split seed, training seed) of a round. The split seed draws what a round is measured on (its validation
    slices or patches); the training seed its weights, sample order and augmentations. ``train.repeat`` 0 uses
    the split seed for both, as every round always has; repeat n > 0 draws another training from the same seed on
    the same split and validation slices: the spread between trainings of one recipe."""
    split_seed = derive_seed(seed, "train_round", round_index)
    return split_seed, split_seed if repeat == 0 else derive_seed(split_seed, "repeat", repeat)


def _setup_round(
    case_dirs, patients, round_index, cfg, seed, outputs, init_checkpoint, n_classes, regions=None
) -> RoundSetup:
    split_seed, round_seed = round_seeds(seed, round_index, cfg["repeat"])
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
    if not val_ids and not holdout_ids:
        raise ValueError(
            f"train.val_fraction is 0 and the fixed holdout is empty ({len(case_ids)} trainval cases leave no holdout "
            "patient): nothing to validate on; set train.val_fraction > 0 or select more cases"
        )
    if not val_ids:
        # train.val_fraction 0: every patient outside the holdout trains. The curve is drawn on the holdout, which
        # no round trains on; config_checks makes sure nothing (epoch, schedule, early stop) is steered by it.
        val_ids = holdout_ids
        log.info("round %d: no validation patients (train.val_fraction 0): the holdout draws the curve", round_index)

    device = pick_device(cfg["device"])
    dtype = amp_dtype_for(device, cfg, training=True)
    log.info("round %d: device %s, %s", round_index, device, f"mixed precision {dtype}" if dtype else "float32")
    if device.type == "cpu" and cfg.get("amp_cpu") and dtype is None:
        log.warning("round %d: train.amp_cpu is on, but this CPU lacks native bfloat16: float32 instead", round_index)
    model = build_model(cfg, n_classes)
    _initialise(model, round_index, init_checkpoint, cfg)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=_channels_last(cfg))  # faster convolutions on tensor cores
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    ema = weight_average(model, cfg["ema_decay"])
    scheduler = build_scheduler(optimiser, cfg)
    # float16 gradients underflow without loss scaling; bfloat16 has float32's range and needs none.
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    if cfg["dims"] == 3:  # volumes: label-balanced patches, fixed validation patches (segflow.volumes)
        from segflow.volumes import patch_datasets

        train_dirs, val_dirs = [case_dirs[c] for c in train_ids], [case_dirs[c] for c in val_ids]
        train_set, val_set = patch_datasets(train_dirs, val_dirs, cfg, n_classes, split_seed)
    else:
        context = cfg["context_slices"]
        train_set = SliceDataset([case_dirs[c] for c in train_ids], context=context)
        train_set.transform = build_augmentation(cfg["augment"], cfg["patch_size"], n_classes, lesions(train_set, cfg))
        val_set = validation_subset(SliceDataset([case_dirs[c] for c in val_ids], context=context), cfg, split_seed)
    loss_fn = build_loss(cfg, regions, n_classes).to(device)
    if cfg.get("dice_targets") == "regions":
        log.info("round %d: %s loss, Dice over the regions %s", round_index, cfg["loss"], ", ".join(regions))
    weights = sampling_weights(train_set, cfg["class_balance"], regions)
    if init_checkpoint is not None and cfg["hard_slice_boost"] > 0:
        whole = for_whole_slices(model, model_cfg(cfg))
        hard = hard_slice_weights(whole, train_set, loss_fn, cfg["batch_size"], device, dtype, cfg["hard_slice_boost"])
        weights = hard if weights is None else weights * hard
    return RoundSetup(
        cfg,
        round_index,
        round_seed,
        device,
        dtype,
        model,
        optimiser,
        scheduler,
        scaler,
        loss_fn,
        train_set,
        val_set,
        train_set.transform,
        weights,
        n_classes,
        ema=ema,
    )


def weight_average(model: torch.nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of ``model``'s weights (train.ema_decay; None when 0).

    The decay ramps up as (1 + n) / (10 + n) after n updates, up to ``decay``: a fixed 0.999 from the first step
    would carry the random initial weights for thousands of steps, longer than a short CPU training lasts.
    Buffers are averaged too (use_buffers), so that a network with batch norm keeps statistics that match its
    averaged weights; integer buffers (batch counts) are copied.
    """
    if not decay:
        return None

    @torch.no_grad()
    def update(averaged: list, current: list, count: torch.Tensor) -> None:
        if not torch.is_floating_point(averaged[0]):
            torch._foreach_copy_(averaged, current)
            return
        steps = int(count)
        torch._foreach_lerp_(averaged, current, 1.0 - min(decay, (1.0 + steps) / (10.0 + steps)))

    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def sampling_weights(train_set: SliceDataset, class_balance, regions: dict | None = None) -> np.ndarray | None:
    """The slice weights of ``train.class_balance``: none (false), labels balanced over slices (true), labels
    balanced over the cases that show them and then over their slices (per_case), or ``regions`` ({name: label
    values}, score.regions) balanced over slices (regions)."""
    if not class_balance:
        return None
    presence = train_set.class_presence()
    if class_balance == "regions":
        if not regions:  # the rules pass score.regions with this setting; without them it would be plain true
            raise ValueError("train.class_balance is regions but the round was given no score.regions")
        return class_balanced_weights(region_presence(presence, regions))
    cases = train_set.item_cases() if class_balance == "per_case" else None
    return class_balanced_weights(presence, cases)


def lesions(train_set: SliceDataset, cfg: dict) -> list[dict]:
    """The lesion bank for copy-paste (train.augment.lesion_paste_prob), from this round's training cases only."""
    augment = cfg["augment"]
    if not augment["enabled"] or augment["lesion_paste_prob"] == 0:
        return []
    bank = lesion_bank(train_set, augment["lesion_host_label"])
    log.info("lesion copy-paste: %d lesion cuts from %d training cases", len(bank), len(train_set.cases))
    if not bank:
        log.warning(
            "train.augment.lesion_paste_prob is %g but no training slice shows a lesion next to label %d: nothing "
            "is pasted",
            augment["lesion_paste_prob"],
            augment["lesion_host_label"],
        )
    return bank


def build_scheduler(optimiser, cfg: dict):
    """``poly``: nnU-Net's (1 - epoch / epochs) ** 0.9 decay, stepped once per epoch; it reaches a small learning
    rate at the end of the budget whatever the validation does. ``plateau``: halve the rate after
    ``patience // 2`` epochs without a lower validation loss (the seeds' schedule)."""
    if cfg["lr_schedule"] == "poly":
        epochs = cfg["epochs"]
        return torch.optim.lr_scheduler.LambdaLR(optimiser, lambda epoch: (1 - min(epoch, epochs - 1) / epochs) ** 0.9)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimiser, factor=0.5, patience=max(1, cfg["patience"] // 2))


def validation_subset(val_set: SliceDataset, cfg: dict, round_seed: int):
    """The validation slices of a round: all of them, or a fixed seeded draw of ``val_max_slices`` (half from
    slices with labels). The draw is the same every epoch, so epochs stay comparable, and the cost of validating
    no longer grows with the slice count of the validation volumes."""
    limit = cfg["val_max_slices"]
    if not limit or limit >= len(val_set):
        return val_set
    rng = rng_for(round_seed, "validation_slices")
    picked = np.unique(epoch_indices(val_set.foreground_mask(), limit, 0.5, rng, unique=True))
    return torch.utils.data.Subset(val_set, picked.tolist())


def _initialise(model, round_index: int, init_checkpoint, cfg: dict) -> None:
    if init_checkpoint is not None:
        previous = load_weights(model, init_checkpoint, key=f"round {round_index - 1}'s model")
        log.info(
            "round %d starts from %s (round %s, epoch %s, val loss %.4f)",
            round_index,
            init_checkpoint,
            previous.get("round"),
            previous.get("epoch"),
            previous.get("val_loss", math.nan),
        )
    elif cfg["init_checkpoint"]:
        load_weights(model, cfg["init_checkpoint"], key="train.init_checkpoint")
        log.info("round %d starts from train.init_checkpoint %s", round_index, cfg["init_checkpoint"])
    else:
        log.info("round %d starts from random initialisation", round_index)


def validates(epoch: int, stale: int, cfg: dict) -> bool:
    """Whether ``epoch`` (0-based) validates under ``train.val_every``: every N-th epoch, the last one (whose model
    keep_epoch last keeps), and one after which early stopping could end the round, so that the stop rests on a
    measured loss."""
    return (epoch + 1) % cfg["val_every"] == 0 or epoch == cfg["epochs"] - 1 or stale + 1 >= cfg["patience"]


def _run_epoch(setup: RoundSetup, epoch: int, validate: bool = True) -> dict:
    """One epoch; every random stream is reseeded from (round seed, epoch) so that resuming is exact. Without
    ``validate`` the validation figures are NaN; validation draws no random numbers, so skipping it leaves the
    training identical."""
    cfg = setup.cfg
    epoch_seed = derive_seed(setup.round_seed, "epoch", epoch)
    torch.manual_seed(epoch_seed)  # dropout, and the DataLoader's worker seeds
    if setup.augmentation is not None:
        setup.augmentation.set_random_state(seed=derive_seed(epoch_seed, "augment"))
    started = time.perf_counter()
    indices = epoch_indices(
        setup.train_set.foreground_mask(),
        cfg["samples_per_epoch"] or len(setup.train_set),
        cfg["foreground_fraction"],
        rng_for(epoch_seed, "sampler"),
        weights=setup.sample_weights,
    )
    train_loss, train_dice = _train_epoch(setup, indices, epoch_seed)
    val = _validate(setup) if validate else _not_validated(setup)
    lr = setup.optimiser.param_groups[0]["lr"]  # the rate this epoch trained with
    if isinstance(setup.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        setup.scheduler.step(val.loss)
    else:
        setup.scheduler.step()
    row = {
        "round": setup.round_index,
        "epoch": epoch,
        "train_loss": train_loss,
        "train_dice": train_dice,
        "val_loss": val.loss,
        "val_dice": val.dice,
        "val_iou": val.iou,
        "val_precision": val.precision,
        "val_recall": val.recall,
        "val_f1": val.dice,  # F1 is Dice for binary masks; kept under its own name for readers who expect it
        **{f"val_dice_{name}": value for name, value in val.class_dice.items()},
        "lr": lr,
        "seconds": round(time.perf_counter() - started, 3),
    }
    log.info(
        "round %d epoch %d/%d: train loss %.4f, %s, lr %.2g (%.1f s)",
        setup.round_index,
        epoch + 1,
        cfg["epochs"],
        train_loss,
        f"val loss {val.loss:.4f}, val Dice {val.dice:.4f}" if validate else "not validated (train.val_every)",
        row["lr"],
        row["seconds"],
    )
    return row


def _validate(setup: RoundSetup) -> Scores:
    # Validation sees whole slices, as inference does (in windows of the crop size for a crop-trained network).
    whole = for_whole_slices(setup.kept_model, model_cfg(setup.cfg))
    return evaluate(
        whole,
        setup.val_set,
        setup.loss_fn,
        setup.cfg["batch_size"],
        setup.device,
        setup.n_classes,
        setup.amp_dtype,
        setup.class_names,
    )


def _not_validated(setup: RoundSetup) -> Scores:
    """NaN figures with the columns of a validated epoch, so that metrics.csv keeps one layout."""
    names = [(setup.class_names or CLASS_NAMES).get(c, str(c)) for c in range(1, setup.n_classes)]
    return Scores(math.nan, math.nan, math.nan, math.nan, math.nan, dict.fromkeys(names, math.nan))


def _train_epoch(setup: RoundSetup, indices: np.ndarray, epoch_seed: int) -> tuple[float, float]:
    """(mean loss, foreground Dice pooled over the augmented training batches) of one pass over ``indices``."""
    cfg, model, device = setup.cfg, setup.model, setup.device
    model.train()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(setup.train_set, indices.tolist()),
        batch_size=cfg["batch_size"],
        shuffle=False,  # the order is already a seeded shuffle
        num_workers=cfg["num_workers"],
        drop_last=len(indices) > cfg["batch_size"],
        worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(epoch_seed),  # the workers' base seed
    )
    total, count, overlap = 0.0, 0, np.zeros(2)
    progress = _ProgressBar(len(loader), f"round {setup.round_index}")
    for batch in loader:
        _check_stop()
        images, labels = _to_device(batch, device)
        setup.optimiser.zero_grad(set_to_none=True)
        with autocast_for(device, setup.amp_dtype):
            logits = model(images).float()
            loss = setup.loss_fn(logits, labels)
        setup.scaler.scale(loss).backward()
        setup.scaler.unscale_(setup.optimiser)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        setup.scaler.step(setup.optimiser)
        setup.scaler.update()
        if setup.ema is not None:
            setup.ema.update_parameters(model)
        total += loss.item() * len(images)
        count += len(images)
        pred, ref = _predicts_foreground(main_output(logits.detach(), labels)), labels[:, 0] > 0
        overlap += [float((pred & ref).sum()), float(pred.sum() + ref.sum())]
        progress.step(total / count)
    progress.close()
    return total / max(count, 1), _ratio(2 * overlap[0], overlap[1])


def _seed_worker(worker_id: int) -> None:
    """Seed a DataLoader worker from torch's per-worker seed (base seed from the epoch's generator + worker id).

    Each worker holds its own copy of the MONAI transforms; without reseeding them all workers would replay the
    same augmentation sequence.
    """
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)
    transform = getattr(torch.utils.data.get_worker_info().dataset.dataset, "transform", None)
    if transform is not None:
        transform.set_random_state(seed=worker_seed)


def _to_device(batch: dict, device: torch.device):
    images, labels = batch["image"].to(device, non_blocking=True), batch["label"].to(device, non_blocking=True)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last if images.dim() == 4 else torch.channels_last_3d)
    return images, labels


def _channels_last(cfg: dict):
    """The channels-last memory format of the network's dimensionality (2D: NHWC, 3D: NDHWC)."""
    return torch.channels_last_3d if cfg.get("dims", 2) == 3 else torch.channels_last


@torch.no_grad()
def evaluate(model, dataset, loss_fn, batch_size: int, device, n_classes: int, amp_dtype=None, names=None) -> Scores:
    """Mean loss over slices, and overlap figures pooled over all slices (foreground, and Dice per class)."""
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=same_shape_batches(dataset, batch_size))
    total, count = 0.0, 0
    class_inter, class_volume = np.zeros(n_classes), np.zeros(n_classes)
    tp = fp = fn = 0.0
    for batch in loader:
        _check_stop()
        images, labels = _to_device(batch, device)
        with autocast_for(device, amp_dtype):
            logits = model(images).float()
        total += float(loss_fn(logits, labels)) * len(images)
        count += len(images)
        pred, ref = class_labels(logits), labels[:, 0]
        for c in range(1, n_classes):
            class_inter[c] += float(((pred == c) & (ref == c)).sum())
            class_volume[c] += float((pred == c).sum() + (ref == c).sum())
        tp += float(((pred > 0) & (ref > 0)).sum())
        fp += float(((pred > 0) & (ref == 0)).sum())
        fn += float(((pred == 0) & (ref > 0)).sum())
    class_dice = {
        (names or CLASS_NAMES).get(c, str(c)): _ratio(2 * class_inter[c], class_volume[c]) for c in range(1, n_classes)
    }
    return Scores(
        loss=total / max(count, 1),
        dice=_ratio(2 * tp, 2 * tp + fp + fn),
        iou=_ratio(tp, tp + fp + fn),
        precision=_ratio(tp, tp + fp),
        recall=_ratio(tp, tp + fn),
        class_dice=class_dice,
    )


def _predicts_foreground(logits: torch.Tensor) -> torch.Tensor:
    """argmax > 0 (some class beats background; ties go to background as with argmax), without an argmax."""
    return logits[:, 1:].amax(1) > logits[:, 0]


def _ratio(numerator: float, denominator: float) -> float:
    """Overlap ratios with the KiTS convention: nothing predicted and nothing there scores 1."""
    return 1.0 if denominator == 0 else numerator / denominator


@torch.no_grad()
def hard_slice_weights(model, dataset, loss_fn, batch_size: int, device, amp_dtype, boost: float) -> np.ndarray:
    """Sampling weights 1 + boost * (per-slice loss rank in [0, 1]) from the model this round starts from.

    Round r then sees more of the slices round r-1 got most wrong. Slices are scored unaugmented, in batches.
    """
    model.eval()
    losses = []
    for items in same_shape_batches(dataset, batch_size):
        _check_stop()
        samples = [dataset.untransformed(i) for i in items]
        batch = {key: torch.stack([s[key] for s in samples]) for key in ("image", "label")}
        images, labels = _to_device(batch, device)
        with autocast_for(device, amp_dtype):
            logits = model(images).float()
        losses += [float(loss_fn(logits[i : i + 1], labels[i : i + 1])) for i in range(len(samples))]
    ranks = np.argsort(np.argsort(losses)) / max(len(losses) - 1, 1)
    log.info("hard-slice oversampling: weights 1 to %.1f from the starting model's per-slice loss", 1 + boost)
    return 1.0 + boost * ranks


# --- resume and the end of a round ------------------------------------------------------------------------------------


def _fingerprint(cfg: dict, seed: int, round_index: int, case_dirs: dict, init_checkpoint, regions=None) -> dict:
    """What a saved state must match to be resumed: the training config (train_round's params, which leave out the
    keys only select_model reads, and the regions of a region loss), seed and round, the starting weights, and
    the data training reads (one identity per preprocessed case, see :func:`case_identity`).

    A dict of parts, so that a mismatch can say what changed."""
    warm_start = cfg["init_checkpoint"] if init_checkpoint is None else None  # as _initialise chooses
    return {
        "config": _digest(
            json.dumps([cfg, seed, round_index, *([regions] if regions else [])], sort_keys=True, default=str).encode()
        ),
        "init": {str(p): _file_digest(p) for p in (init_checkpoint, warm_start) if p},
        "cases": {case: case_identity(case_dirs[case]) for case in sorted(case_dirs)},
    }


def case_identity(case_dir) -> str:
    """A preprocessed case as training reads it: the content of meta.json and slices.tsv, and the name, size and
    modification time (ns) of every array or slice file, which a rerun of preprocess_case always renews."""
    case_dir = Path(case_dir)
    parts = []
    for path in sorted(p for p in case_dir.rglob("*") if p.is_file()):
        name = path.relative_to(case_dir).as_posix()
        if path.suffix in (".json", ".tsv"):
            parts.append([name, _file_digest(path)])
        else:
            stat = path.stat()
            parts.append([name, stat.st_size, stat.st_mtime_ns])
    return _digest(json.dumps(parts).encode())


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_digest(path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _fingerprint_change(saved, current: dict) -> str:
    """Why a saved state does not match, in words (for the log line that says the round starts over)."""
    if not isinstance(saved, dict) or saved.get("config") != current["config"]:
        return "another configuration"
    if saved.get("init") != current["init"]:
        return "other starting weights (" + ", ".join(current["init"]) + ")"
    old, new = saved.get("cases", {}), current["cases"]
    changed = sorted(c for c in set(old) & set(new) if old[c] != new[c])
    added, removed = sorted(set(new) - set(old)), sorted(set(old) - set(new))
    words = [f"{label} {', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''}"
             for label, ids in (("changed", changed), ("added", added), ("removed", removed)) if ids]  # fmt: skip
    return "other data (preprocessed cases " + "; ".join(words) + ")"


def _training_state(setup: RoundSetup, state: RoundState, fingerprint: dict | None) -> dict:
    """Everything needed to continue after ``state.next_epoch - 1`` exactly as if the process had never stopped.

    The sampler and the MONAI augmentations are reseeded from (seed, round, epoch) at every epoch start, so the
    epoch number is their state; the global generators are saved for anything else that draws from them.
    ``model`` is the kept model (the weights' average with train.ema_decay, which then adds the trained weights
    the optimiser state belongs to, and the average's update count).
    """
    averaged = {}
    if setup.ema is not None:
        averaged = {"trained_model": setup.model.state_dict(), "ema_updates": int(setup.ema.n_averaged)}
    return {
        "model": setup.kept_model.state_dict(),
        **averaged,
        "model_cfg": model_cfg(setup.cfg),
        "n_classes": setup.n_classes,
        "optimiser": setup.optimiser.state_dict(),
        "scheduler": setup.scheduler.state_dict(),
        "scaler": setup.scaler.state_dict(),
        "rng": _rng_states(),
        "round": setup.round_index,
        "epoch": state.next_epoch - 1,
        "rows": state.rows,
        "best_loss": state.best_loss,
        "best_epoch": state.best_epoch,
        "best_weights": state.best_weights,
        "stale": state.stale,
        "fingerprint": fingerprint,
    }


def _save_state(setup: RoundSetup, state: RoundState, path: Path, fingerprint: dict) -> None:
    # One atomic file: a kill at any instant leaves either the previous complete epoch or this one, never a mix.
    with atomic_path(path) as tmp:
        torch.save(_training_state(setup, state, fingerprint), tmp)


def _resume(setup: RoundSetup, path: Path, fingerprint: dict) -> RoundState:
    """The state saved after the last completed epoch when it was built from this round's configuration, starting
    weights and data, else a fresh one."""
    if not path.exists():
        return RoundState()
    saved = torch.load(path, map_location="cpu", weights_only=False)
    if saved.get("fingerprint") != fingerprint:
        log.info(
            "round %d: saved state %s is from %s; starting over",
            setup.round_index,
            path,
            _fingerprint_change(saved.get("fingerprint"), fingerprint),
        )
        path.unlink()
        return RoundState()
    setup.model.load_state_dict(saved.get("trained_model", saved["model"]))
    if setup.ema is not None:
        setup.ema.module.load_state_dict(saved["model"])
        setup.ema.n_averaged.fill_(saved["ema_updates"])
    setup.optimiser.load_state_dict(saved["optimiser"])
    setup.scheduler.load_state_dict(saved["scheduler"])
    setup.scaler.load_state_dict(saved["scaler"])
    _restore_rng_states(saved["rng"])
    log.info("round %d: resuming after epoch %d from %s", setup.round_index, saved["epoch"] + 1, path)
    return RoundState(
        rows=list(saved["rows"]),
        best_loss=float(saved["best_loss"]),
        best_epoch=int(saved["best_epoch"]),
        best_weights=saved["best_weights"],
        stale=int(saved["stale"]),
        next_epoch=int(saved["epoch"]) + 1,
    )


def _rng_states() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _finish_round(setup: RoundSetup, state: RoundState, outputs: RoundOutputs) -> pd.DataFrame:
    """Write the round's outputs from the final state, then drop the resume folder.

    Everything is written here rather than during the loop because Snakemake deletes a job's outputs before a
    rerun: a resumed round must be able to produce all of them from the saved state alone.
    """
    if state.best_weights is None:
        raise RuntimeError("no epoch reached a finite validation loss; there is no model to keep")
    cfg, best = setup.cfg, state.rows[state.best_epoch]
    save_checkpoint(
        outputs.model_best,
        state.best_weights,
        cfg,
        setup.n_classes,
        round=setup.round_index,
        epoch=state.best_epoch,
        val_loss=best["val_loss"],
        val_dice=best["val_dice"],
    )
    final = _training_state(setup, state, fingerprint=None)
    del final["best_weights"], final["fingerprint"]
    with atomic_path(outputs.model_last) as tmp:
        torch.save(final, tmp)
    metrics = pd.DataFrame(state.rows)
    write_table(outputs.metrics, metrics, sep=",")
    shutil.rmtree(outputs.resume_state.parent, ignore_errors=True)
    # Which of the two is the round's model is train.keep_epoch's choice, made by select_model: that key is not
    # part of training's config, so that changing it retrains nothing.
    log.info(
        "round %d: lowest validation loss %.4f at epoch %d (model_best.pt); last epoch %d (model_last.pt)",
        setup.round_index,
        state.best_loss,
        state.best_epoch + 1,
        state.rows[-1]["epoch"] + 1,
    )
    return metrics


_stop_signal: int | None = None  # set by the SIGTERM handler, acted on between batches


def _check_stop() -> None:
    """Raise Terminated at a batch boundary once SIGTERM has arrived."""
    if _stop_signal is not None:
        raise Terminated(
            f"received signal {_stop_signal}; the last completed epoch is saved and will be resumed on rerun"
        )


@contextlib.contextmanager
def _stop_on_sigterm():
    """SIGTERM (a scheduler's time limit or preemption, scancel) stops the round at the next batch boundary.

    The handler only records the signal: an exception raised at an arbitrary point would be rewrapped by libraries
    (MONAI turns errors inside transforms into RuntimeError) or cut a write short. The last completed epoch's
    state is already on disk, so the job exits within a batch, non-zero, well inside SLURM's grace period before
    SIGKILL, and the rerun resumes from that epoch.
    """
    global _stop_signal

    def record(signum, frame):
        global _stop_signal
        _stop_signal = signum

    _stop_signal = None
    previous = signal.signal(signal.SIGTERM, record)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop_signal = None


class _ProgressBar:
    """A progress bar on a terminal; nothing per batch in log files (one line per epoch is logged instead)."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self.done = total, label, 0
        self.active = sys.stderr.isatty()

    def step(self, loss: float) -> None:
        self.done += 1
        if self.active:
            filled = int(30 * self.done / max(self.total, 1))
            sys.stderr.write(
                f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} loss {loss:.4f}"
            )
            sys.stderr.flush()

    def close(self) -> None:
        if self.active:
            sys.stderr.write("\n")
