"""Rule aggregate_scores: one table row per test case, and summary statistics per column and per region/label."""

from pathlib import Path

from segflow.logs import run_logged
from segflow.score import aggregate


def main(smk):
    paths = [Path(p) for p in smk.input.scores]
    case_ids = [p.name.removesuffix(".json") for p in paths]
    aggregate(
        paths, case_ids, smk.output.table, smk.output.summary, smk.output.summary_table, score_cfg=smk.params.score
    )


run_logged(lambda: main(snakemake), snakemake.log[0], "aggregate_scores")  # noqa: F821
