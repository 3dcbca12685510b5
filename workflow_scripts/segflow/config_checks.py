"""Config combinations the schema cannot express, checked when Snakemake starts: one line naming the keys.

Torch-free (the Snakefile imports it). The model zoo per dimensionality lives here rather than in segflow.models so
that the check costs no torch import.
"""

from __future__ import annotations

from segflow.labelsets import allowed_labels, label_tree, n_classes, threshold_choices
from segflow.postprocess import KIDNEY, LABELS_OF_STEP, MASSES
from segflow.preflight import ConfigError

MODELS_BY_DIMS = {
    2: ("unet", "dynunet", "attention_unet", "unetpp", "efficientnet_unet", "segresnet", "deeplabv3plus"),
    3: ("vnet", "unet", "dynunet", "segresnet"),
}


def check_config(config: dict) -> None:
    """Raise ConfigError (one line, naming the keys) for a combination of keys that cannot work."""
    train, pre, selection, score = config["train"], config["preprocess"], config["selection"], config["score"]
    dims, model = train["dims"], train["model"]
    if model not in MODELS_BY_DIMS[dims]:
        other = 3 if dims == 2 else 2
        raise ConfigError(
            f"train.model {model!r} is a {other}D model but train.dims is {dims}; with train.dims {dims} choose one of "
            f"{', '.join(MODELS_BY_DIMS[dims])}"
        )
    heads = train["deep_supervision"]
    if heads and model != "dynunet":
        raise ConfigError(
            f"train.deep_supervision is {heads} but train.model is {model}; deep supervision needs train.model dynunet "
            "(or set train.deep_supervision to 0)"
        )
    if heads > len(train["channels"]) - 2:
        raise ConfigError(
            f"train.deep_supervision {heads} needs at least {heads + 2} levels, but train.channels has "
            f"{len(train['channels'])}; lower it to {max(len(train['channels']) - 2, 0)} or add levels"
        )
    _check_ordered_ranges(train["augment"])
    if train["val_every"] > 1 and train["lr_schedule"] == "plateau":
        raise ConfigError(
            f"train.val_every is {train['val_every']}, but train.lr_schedule plateau steps on every epoch's validation "
            "loss; set train.lr_schedule to poly or train.val_every to 1"
        )
    if train["val_fraction"] == 0:
        _check_no_validation_patients(train)
    if pre["spacing"] is not None and not any(pre["spacing"]):
        raise ConfigError(
            f"preprocess.spacing {pre['spacing']} keeps every axis's own spacing (0 = keep); set it to null, which "
            "keeps the grid without resampling"
        )
    patch = train["patch_size"]
    if dims == 3:
        if pre["size"] is not None:
            raise ConfigError(
                f"train.dims is 3 but preprocess.size is {pre['size']}: volumes keep their (resampled) grid; set "
                "preprocess.size to null and choose the grid with preprocess.spacing"
            )
        if not patch or len(patch) != 3:
            raise ConfigError(f"train.dims is 3: train.patch_size needs 3 values (slices, rows, columns), not {patch}")
        if train["context_slices"] != 1:
            raise ConfigError(
                "train.context_slices is a 2D option (neighbour slices as channels); set it to 1 with train.dims 3"
            )
        if train["hard_slice_boost"] > 0:
            raise ConfigError("train.hard_slice_boost weighs slices, a 2D option; set it to 0 with train.dims 3")
        if train["augment"]["lesion_paste_prob"] > 0:
            raise ConfigError(
                "train.augment.lesion_paste_prob pastes lesions into slices, a 2D option; set it to 0 with train.dims 3"
            )
    else:
        if pre["size"] is None and not (patch and train["window_overlap"] is not None):
            raise ConfigError(
                "preprocess.size is null (every case keeps its own grid), which 2D training supports only on crops "
                "seen whole in windows: set train.patch_size and train.window_overlap, or give preprocess.size 2 values"
            )
        if patch and len(patch) != 2:
            raise ConfigError(f"train.patch_size {patch} has 3 values but train.dims is 2; give (rows, columns)")
    if config["modality"] == "mri":
        for key in ("hu_min", "hu_max"):
            if selection[key] is not None:
                raise ConfigError(
                    f"selection.{key} is {selection[key]:g} HU, but modality is mri (no Hounsfield units); set "
                    f"selection.{key} to null"
                )
        if pre["format"] != "npy":
            raise ConfigError(
                "preprocess.format png stores [0, 1] intensities as 8 bits; modality mri (z-scores) needs npy"
            )
    if train["dice_targets"] == "regions":
        if train["loss"] not in ("dice", "dice_ce"):
            raise ConfigError(
                f"train.dice_targets is regions but train.loss is {train['loss']}, which has no Dice part to take "
                "over the regions; choose train.loss dice or dice_ce, or set train.dice_targets to classes"
            )
    if train["ce_top_fraction"] < 1 and train["loss"] not in ("ce", "dice_ce"):
        raise ConfigError(
            f"train.ce_top_fraction is {train['ce_top_fraction']:g} but train.loss is {train['loss']}, which has no "
            "cross-entropy part; choose train.loss ce or dice_ce, or set train.ce_top_fraction to 1"
        )
    if train["batch_dice"] == "both" and train["loss"] not in ("dice", "dice_ce"):
        raise ConfigError(
            f"train.batch_dice is both but train.loss is {train['loss']}, which has no Dice part to take per crop and "
            "pooled; choose train.loss dice or dice_ce, or set train.batch_dice to true or false"
        )
    for key in ("dice_targets", "class_balance"):  # the training settings that read score.regions
        if train[key] == "regions" and not score["regions"]:
            raise ConfigError(f"train.{key} is regions but score.regions is empty; name the regions there")
    try:  # the first threshold candidates stand for all: names and the decoding are what can be wrong
        label_tree(config["infer"], score["regions"], n_classes(config), threshold_choices(config["infer"])[0])
    except ValueError as error:
        raise ConfigError(str(error)) from None
    allowed = set(allowed_labels(config))
    unknown = sorted({int(v) for v in score["labels"].values()} - allowed)
    if unknown:
        raise ConfigError(f"score.labels has values {unknown} outside selection.labels {sorted(allowed)}")
    _check_postprocess_labels(train["postprocess"], score["labels"])
    _check_mass_seed(config["infer"], score["labels"])


def _check_postprocess_labels(steps: list, labels: dict) -> None:
    """The mass and kidney steps of train.postprocess are KiTS's: on another label set they would silently move
    voxels between unrelated classes (FLARE22's right kidney is 2), so they need score.labels to name KiTS's."""
    for step in steps:
        needed = LABELS_OF_STEP[step]
        if any(labels.get(name) != value for name, value in needed.items()):
            wanted = ", ".join(f"{name}: {value}" for name, value in needed.items())
            raise ConfigError(
                f"train.postprocess step {step} works on KiTS labels ({wanted}), but score.labels is {labels}; remove "
                "it from train.postprocess (largest_foreground works on any label set)"
            )


def _check_mass_seed(infer: dict, labels: dict) -> None:
    """infer.mass_seed reads classes 2 and 3 as KiTS's masses (tumour, and cyst where there is one: KiTS19 has
    none) and writes kidney (1)."""
    if not infer.get("mass_seed"):
        return
    named_3 = [name for name, value in labels.items() if value == MASSES[1]]
    if labels.get("kidney") != KIDNEY or labels.get("tumor") != MASSES[0] or named_3 not in ([], ["cyst"]):
        raise ConfigError(
            f"infer.mass_seed works on KiTS labels (kidney: 1, tumor: 2, and cyst: 3 if any), but score.labels is "
            f"{labels}; set infer.mass_seed to [] for this label set"
        )


def _check_ordered_ranges(augment: dict) -> None:
    """The augmentations' [low, high] ranges: a reversed one would otherwise fail (or draw from a reversed
    interval) inside a training round, minutes after start-up."""
    for key in ("blur_sigma", "gamma_range", "lesion_paste_contrast"):
        low, high = augment[key]
        if low > high:
            raise ConfigError(f"train.augment.{key} is [{low:g}, {high:g}]: give the lower bound first")


def _check_no_validation_patients(train: dict) -> None:
    """train.val_fraction 0 trains on every patient outside the holdout and draws the curve on the holdout, which
    must then steer nothing: it still decides post-processing and compares rounds as unseen data."""
    if train["holdout_fraction"] == 0:
        raise ConfigError(
            "train.val_fraction is 0 (no validation patients) and so is train.holdout_fraction: nothing is left to "
            "validate on; set train.holdout_fraction > 0 (the curve is drawn on the holdout) or train.val_fraction > 0"
        )
    steering = [
        f"{key} {train[key]}"
        for key, ok in (
            ("keep_epoch", train["keep_epoch"] == "last"),
            ("lr_schedule", train["lr_schedule"] == "poly"),
            ("patience", train["patience"] >= train["epochs"]),
        )
        if not ok
    ]
    if steering:
        raise ConfigError(
            f"train.val_fraction is 0, so rounds validate on the fixed holdout, which must not steer training, but "
            f"{', '.join('train.' + s for s in steering)} would; set train.keep_epoch: last, train.lr_schedule: poly "
            "and train.patience >= train.epochs, or train.val_fraction > 0"
        )
