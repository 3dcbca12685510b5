"""Rule download_case: bring one case into the canonical raw layout (download, import or generate)."""

from segflow.logs import run_logged
from segflow.sources import import_case


def main(smk):
    # The full dataset config: params.dataset holds only what the case's content depends on (no base URL where a
    # manifest checksum stands in for it, no download options), so that changing the rest reimports nothing.
    dataset = smk.config["dataset"]
    import_case(dataset, smk.wildcards.case, smk.output.image, smk.output.segmentation, smk.params.seed)


run_logged(lambda: main(snakemake), snakemake.log[0], f"download_case {snakemake.wildcards.case}")  # noqa: F821
