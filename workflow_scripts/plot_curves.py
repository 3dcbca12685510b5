"""Rule plot_curves: one round's loss and Dice per epoch, drawn from its metrics.csv."""

import pandas as pd

from segflow.curves import plot_curves
from segflow.logs import run_logged


def main(smk):
    plot_curves(smk.output[0], pd.read_csv(smk.input.metrics))


run_logged(lambda: main(snakemake), snakemake.log[0], f"plot_curves {snakemake.wildcards.round}")  # noqa: F821
