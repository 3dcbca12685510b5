"""Rule inspect_case: geometry, HU range and labels of one raw case, and what is wrong with it."""

import logging

from segflow.inspection import inspect_case
from segflow.io import write_json
from segflow.logs import run_logged


def main(smk):
    report = inspect_case(
        smk.wildcards.case, smk.input.image, smk.input.segmentation, smk.params.labels, smk.params.modality
    )
    for problem in report["problems"]:
        logging.warning("%s: %s", smk.wildcards.case, problem)
    write_json(smk.output[0], report)


run_logged(lambda: main(snakemake), snakemake.log[0], f"inspect_case {snakemake.wildcards.case}")  # noqa: F821
