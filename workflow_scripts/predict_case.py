"""Rule predict_case: the selected model applied to one test case, saved on the case's original grid."""

from segflow.io import read_json
from segflow.logs import run_logged
from segflow.predict import predict_case


def main(smk):
    summary = read_json(smk.input.summary)
    predict_case(
        smk.input.model,
        smk.input.case,
        smk.input.image,
        smk.output[0],
        smk.params.infer,
        summary.get("postprocess", []),
        smk.threads,
        smk.params.regions,
        summary.get("region_thresholds") or {},
        summary.get("mass_seed"),
        summary.get("slice_sigma_mm") or 0.0,  # best.json from before infer.slice_sigma_mm: no blur
    )


run_logged(lambda: main(snakemake), snakemake.log[0], f"predict_case {snakemake.wildcards.case}")  # noqa: F821
