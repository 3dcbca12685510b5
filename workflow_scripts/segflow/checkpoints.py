"""Checkpoints: what train_round saves, and what select_model and predict_case load back.

A round's checkpoint holds the weights and what is needed to rebuild the network (``model_cfg``, ``n_classes``);
select_model's ensemble checkpoint holds several of them under ``members``.
"""

from __future__ import annotations

import torch

from segflow.io import atomic_path
from segflow.models import MODEL_KEYS, build_model, for_whole_slices


def save_checkpoint(path, weights: dict, cfg: dict, n_classes: int, **extra) -> None:
    """A checkpoint load_models can load: weights plus what is needed to rebuild the network."""
    state = {"model": weights, "model_cfg": model_cfg(cfg), "n_classes": n_classes, **extra}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def model_cfg(cfg: dict) -> dict:
    return {k: cfg[k] for k in MODEL_KEYS if k in cfg}


def load_model(checkpoint_path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """One network from a round checkpoint (the first member of an ensemble checkpoint), in eval mode."""
    models, checkpoint = load_models(checkpoint_path, device)
    return models[0], checkpoint


def load_models(checkpoint_path, device: torch.device) -> tuple[list[torch.nn.Module], dict]:
    """Every network of a checkpoint: one for a round's checkpoint, several for select_model's ensemble.

    Returns the networks in eval mode and the (first member's) checkpoint dictionary with ``context_slices``.
    """
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    members = checkpoint.get("members", [checkpoint])
    models = []
    for member in members:
        model = build_model(member["model_cfg"], member["n_classes"])
        model.load_state_dict(member["model"])
        models.append(for_whole_slices(model.to(device), member["model_cfg"]).eval())
    contexts = {int(m["model_cfg"].get("context_slices", 1)) for m in members}
    if len(contexts) != 1:
        raise ValueError(f"{checkpoint_path}: ensemble members take different numbers of input slices {contexts}")
    first = dict(members[0])
    first["context_slices"] = contexts.pop()
    first["dims"] = int(first["model_cfg"].get("dims", 2))  # checkpoints from before train.dims are 2D
    first["patch_size"] = first["model_cfg"].get("patch_size")
    first["members"] = len(members)
    return models, first


# What prediction needs of a round's model_best.pt or model_last.pt; model_last.pt also holds the optimiser,
# scheduler and random states to resume from (and with train.ema_decay the trained weights, whose average is
# "model"), which a kept model does not carry along.
CHECKPOINT_KEYS = ("model", "model_cfg", "n_classes", "round", "epoch", "val_loss", "val_dice")


def round_checkpoint(path) -> dict:
    """A round's model as a checkpoint dictionary, from its model_best.pt or its model_last.pt."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    return {key: state[key] for key in CHECKPOINT_KEYS if key in state}


def export_checkpoint(path, source) -> None:
    """``source`` (a round's model_best.pt or model_last.pt) as a plain checkpoint at ``path``."""
    with atomic_path(path) as tmp:
        torch.save(round_checkpoint(source), tmp)


def save_ensemble(path, checkpoint_paths: list) -> None:
    """One checkpoint file holding several rounds' networks; :func:`load_models` averages their softmax."""
    members = [round_checkpoint(p) for p in checkpoint_paths]
    with atomic_path(path) as tmp:
        torch.save({"members": members, "sources": [str(p) for p in checkpoint_paths]}, tmp)
