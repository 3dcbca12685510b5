"""Rule aggregate_scores: one table row per test case, and summary statistics per column."""

from pathlib import Path

from segflow.logs import run_logged
from segflow.score import aggregate


def main(smk):
    paths = [Path(p) for p in smk.input.scores]
    aggregate(paths, [p.name.removesuffix(".json") for p in paths], smk.output.table, smk.output.summary)


run_logged(lambda: main(snakemake), snakemake.log[0], "aggregate_scores")  # noqa: F821
