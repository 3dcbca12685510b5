"""Training curves of one round (loss and Dice per epoch), drawn from its metrics.csv by the plot_curves rule."""

from __future__ import annotations

import pandas as pd

from segflow.io import atomic_path


def plot_curves(path, metrics: pd.DataFrame) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax_loss.plot(metrics["epoch"], metrics["train_loss"], label="train")
    # Only validated epochs (train.val_every leaves the others NaN), joined by lines, with markers where sparse.
    validated = metrics.dropna(subset=["val_loss"])
    marker = "o" if len(validated) < len(metrics) else None
    ax_loss.plot(validated["epoch"], validated["val_loss"], label="val", marker=marker, ms=3)
    best = validated["val_loss"].idxmin()
    ax_loss.scatter([metrics.loc[best, "epoch"]], [metrics.loc[best, "val_loss"]], color="red", zorder=3, label="best")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    if "train_dice" in metrics:
        ax_dice.plot(metrics["epoch"], metrics["train_dice"], label="train", linestyle="--", color="grey")
    ax_dice.plot(validated["epoch"], validated["val_dice"], label="val foreground", marker=marker, ms=3)
    for column in [c for c in metrics.columns if c.startswith("val_dice_")]:
        ax_dice.plot(validated["epoch"], validated[column], label=column.removeprefix("val_dice_"), alpha=0.7)
    ax_dice.set(xlabel="epoch", ylabel="Dice", title="Dice", ylim=(0, 1))
    ax_dice.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
