"""Rule score_case: metrics of one prediction against its reference segmentation."""

import logging

from segflow.io import write_json
from segflow.logs import run_logged
from segflow.score import json_scores, score_files


def main(smk):
    scores = score_files(smk.input.prediction, smk.input.reference, smk.params.score)
    logging.info("%s: %s", smk.wildcards.case, {k: round(v, 4) for k, v in scores.items() if k.startswith("dice_")})
    write_json(smk.output[0], {"case_id": smk.wildcards.case, "scores": json_scores(scores)})


run_logged(lambda: main(snakemake), snakemake.log[0], f"score_case {snakemake.wildcards.case}")  # noqa: F821
