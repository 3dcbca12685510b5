"""Rule download_case: bring one case into the canonical raw layout (download, import or generate)."""

from segflow.logs import run_logged
from segflow.sources import import_case


def main(smk):
    import_case(smk.params.dataset, smk.wildcards.case, smk.output.image, smk.output.segmentation, smk.params.seed)


run_logged(lambda: main(snakemake), snakemake.log[0], f"download_case {snakemake.wildcards.case}")  # noqa: F821
