"""Rule preprocess_case: one raw case to 2D slices (NPY or PNG) plus meta.json for the way back."""

import logging
import time

from segflow.logs import run_logged
from segflow.preprocess import preprocess_case


def main(smk):
    import torch

    torch.set_num_threads(max(1, int(smk.threads)))  # the resize; everything else is single-threaded numpy/zlib
    start = time.perf_counter()
    cfg = {**smk.params.preprocess, "modality": smk.params.modality}
    meta = preprocess_case(smk.input.image, smk.input.segmentation, smk.output[0], cfg)
    logging.info(
        "%s: %s %s -> %d slices of %s, crop %s%s, %.1f s",
        smk.wildcards.case,
        meta["original_axcodes"],
        meta["original_shape"],
        meta["n_slices"],
        meta["size"],
        meta["crop_box"],
        f", resampled to {meta['resampling']['shape']}" if meta["resampling"] else "",
        time.perf_counter() - start,
    )


run_logged(lambda: main(snakemake), snakemake.log[0], f"preprocess_case {snakemake.wildcards.case}")  # noqa: F821
