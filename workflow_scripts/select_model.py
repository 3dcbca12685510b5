"""Rule select_model: keep the round with the lowest validation loss."""

import logging
import shutil

from segflow.io import atomic_path, write_json, write_table
from segflow.logs import run_logged
from segflow.train import select_best_round


def main(smk):
    choice = select_best_round(list(smk.input.metrics), list(smk.input.models))
    logging.info("selected round %d (val loss %.4f)", choice["round"], choice["val_loss"])
    with atomic_path(smk.output.best) as tmp:
        shutil.copyfile(choice["checkpoint"], tmp)
    write_table(smk.output.rounds, choice["table"])
    write_json(smk.output.summary, {k: v for k, v in choice.items() if k != "table"})


run_logged(lambda: main(snakemake), snakemake.log[0], "select_model")  # noqa: F821
