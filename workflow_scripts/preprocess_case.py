"""Rule preprocess_case: one raw case to 2D slices (NPY or PNG) plus meta.json for the way back."""

import logging

from segflow.logs import run_logged
from segflow.preprocess import preprocess_case


def main(smk):
    meta = preprocess_case(smk.input.image, smk.input.segmentation, smk.output[0], smk.params.preprocess)
    logging.info("%s: %d slices, crop %s, size %s", smk.wildcards.case, meta["n_slices"], meta["crop_box"], meta["size"])


run_logged(lambda: main(snakemake), snakemake.log[0], f"preprocess_case {snakemake.wildcards.case}")  # noqa: F821
