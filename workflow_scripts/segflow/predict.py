"""Inference: the selected model (or ensemble of rounds) over a preprocessed case, back on the original grid.

The network's softmax is averaged over the ensemble members and, with ``infer.tta``, over the slice and its
mirror images along both in-plane axes (each prediction flipped back first). The way back then resamples either
the class probabilities (``infer.restore: probabilities``, nnU-Net's export) or the argmax labels, and the
post-processing steps select_model chose on the fixed holdout are applied last.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from segflow.data import context_stack
from segflow.io import read_json, save_nifti
from segflow.models import build_model, class_labels
from segflow.preprocess import load_case, restore_labels, restore_probabilities

log = logging.getLogger(__name__)

# Mirror images along rows, columns and both (dims of an (N, C, H, W) batch); the identity comes first.
TTA_FLIPS = ((), (2,), (3,), (2, 3))


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
        models.append(model.to(device).eval())
    contexts = {int(m["model_cfg"].get("context_slices", 1)) for m in members}
    if len(contexts) != 1:
        raise ValueError(f"{checkpoint_path}: ensemble members take different numbers of input slices {contexts}")
    first = dict(members[0])
    first["context_slices"] = contexts.pop()
    first["dims"] = int(first["model_cfg"].get("dims", 2))  # checkpoints from before train.dims are 2D
    first["patch_size"] = first["model_cfg"].get("patch_size")
    first["members"] = len(members)
    return models, first


@torch.no_grad()
def predict_probabilities(
    models: list[torch.nn.Module], image_zhw: np.ndarray, context: int, batch_size: int, device: torch.device,
    tta: bool = False,
) -> np.ndarray:
    """Mean softmax (Z, C, H, W) float16 over the models and, with ``tta``, the four in-plane mirrorings."""
    flips = TTA_FLIPS if tta else TTA_FLIPS[:1]
    out = None
    for start in range(0, image_zhw.shape[0], batch_size):
        stop = min(start + batch_size, image_zhw.shape[0])
        batch = torch.from_numpy(context_stack(image_zhw, start, stop, context)).to(device)
        total = None
        for model in models:
            for dims in flips:
                logits = model(torch.flip(batch, dims) if dims else batch).float()
                probability = torch.softmax(logits, dim=1)
                probability = torch.flip(probability, dims) if dims else probability
                total = probability if total is None else total + probability
        mean = (total / (len(models) * len(flips))).cpu().numpy()
        if out is None:
            out = np.empty((image_zhw.shape[0], *mean.shape[1:]), dtype=np.float16)
        out[start:stop] = mean
    return out


def predict_slices(model: torch.nn.Module, image_zhw: np.ndarray, batch_size: int, device: torch.device,
                   context: int = 1) -> np.ndarray:
    """Argmax labels (Z, H, W) uint8 of one network over a preprocessed image stack, in batches of slices."""
    out = np.empty(image_zhw.shape, dtype=np.uint8)
    with torch.no_grad():
        for start in range(0, image_zhw.shape[0], batch_size):
            stop = min(start + batch_size, image_zhw.shape[0])
            batch = torch.from_numpy(context_stack(image_zhw, start, stop, context)).to(device)
            out[start:stop] = class_labels(model(batch)).cpu().numpy().astype(np.uint8)
    return out


def probability_labels(probabilities_zchw: np.ndarray) -> np.ndarray:
    """Argmax over the class axis of a (Z, C, H, W) probability stack (first maximum on ties), as uint8."""
    return np.argmax(probabilities_zchw, axis=1).astype(np.uint8)


def case_probabilities(models, image, checkpoint: dict, infer: dict, device: torch.device) -> np.ndarray:
    """Mean softmax (Z, C, H, W) over a preprocessed image: slice by slice (2D), or by sliding window over the
    volume (3D checkpoints, segflow.volumes)."""
    if checkpoint.get("dims", 2) == 3:
        from segflow.volumes import sliding_window_probabilities

        return sliding_window_probabilities(
            models, image, checkpoint["patch_size"], infer["overlap"], infer["batch_size"], device, infer["tta"]
        )
    return predict_probabilities(models, image, checkpoint["context_slices"], infer["batch_size"], device, infer["tta"])


def predict_volume(models, case_dir, infer: dict, device: torch.device, context) -> tuple[np.ndarray, dict]:
    """Labels on the original grid of one preprocessed case (before post-processing), and its meta.json.

    ``context`` is the checkpoint dictionary of segflow.predict.load_models (or, for 2D, its context_slices)."""
    image, _ = load_case(case_dir)
    meta = read_json(Path(case_dir) / "meta.json")
    checkpoint = context if isinstance(context, dict) else {"context_slices": context}
    probabilities = case_probabilities(models, image, checkpoint, infer, device)
    meta["n_classes"] = probabilities.shape[1]
    if infer["restore"] == "probabilities":
        return restore_probabilities(probabilities, meta), meta
    return restore_labels(probability_labels(probabilities), meta), meta


def predict_case(checkpoint_path, case_dir, raw_image_path, output_path, infer: dict, postprocess=(), threads: int = 1):
    """Predict one case and save the label map with the raw image's shape and affine."""
    import nibabel as nib

    from segflow.postprocess import apply as apply_postprocessing
    from segflow.train import pick_device  # here, not at the top: segflow.train brings pandas and the training code

    torch.set_num_threads(max(1, threads))
    device = pick_device(infer["device"], "infer.device")
    models, checkpoint = load_models(checkpoint_path, device)
    labels, _ = predict_volume(models, case_dir, infer, device, checkpoint)
    raw = nib.load(str(raw_image_path))
    if list(raw.shape[:3]) != list(labels.shape):
        raise RuntimeError(f"{raw_image_path}: prediction shape {list(labels.shape)} != image {list(raw.shape)}")
    if postprocess:
        labels = apply_postprocessing(labels, list(postprocess))
    save_nifti(output_path, labels, raw.affine)
    log.info(
        "%s: %d model(s), tta %s, restore %s, post-processing %s; labels %s", Path(output_path).name,
        len(models), infer["tta"], infer["restore"], list(postprocess) or "none",
        dict(zip(*map(list, np.unique(labels, return_counts=True)))),
    )


def save_ensemble(path, checkpoint_paths: list) -> None:
    """One checkpoint file holding several rounds' networks; :func:`load_models` averages their softmax."""
    from segflow.io import atomic_path

    members = [torch.load(p, map_location="cpu", weights_only=False) for p in checkpoint_paths]
    with atomic_path(path) as tmp:
        torch.save({"members": members, "sources": [str(p) for p in checkpoint_paths]}, tmp)


def decide_postprocessing(checkpoint_path, holdout_dirs: list, candidates: list, infer: dict, regions: dict,
                          threads: int = 1) -> dict:
    """Which post-processing steps help on the fixed holdout (nnU-Net decides on cross-validation the same way).

    The holdout cases are predicted on the preprocessed grid, where their reference labels are, with the same
    ensemble and mirroring as the test cases. Returns ``{"steps": [...], "table": [...]}``.
    """
    from segflow.postprocess import decide

    from segflow.train import pick_device

    if not candidates:
        return {"steps": [], "table": []}
    if not holdout_dirs:
        log.warning("train.postprocess needs a fixed holdout (train.holdout_fraction > 0); no post-processing")
        return {"steps": [], "table": []}
    torch.set_num_threads(max(1, threads))
    device = pick_device(infer["device"], "infer.device")
    models, checkpoint = load_models(checkpoint_path, device)
    predictions, references = [], []
    for case_dir in holdout_dirs:
        image, label = load_case(case_dir)
        probabilities = case_probabilities(models, image, checkpoint, infer, device)
        predictions.append(probability_labels(probabilities))
        references.append(np.asarray(label))
    steps, table = decide(predictions, references, list(candidates), {k: list(v) for k, v in regions.items()})
    log.info("post-processing on %d holdout cases: kept %s of %s", len(holdout_dirs), steps or "none", candidates)
    return {"steps": steps, "table": table}
