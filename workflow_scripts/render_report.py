"""Rule render_report: the self-contained HTML report."""

from pathlib import Path

from segflow.logs import run_logged
from segflow.report import ReportInputs, render_report


def main(smk):
    cases = {
        Path(p).name.removesuffix(".nii.gz"): {"image": Path(i), "reference": Path(r), "prediction": Path(p)}
        for i, r, p in zip(smk.input.images, smk.input.references, smk.input.predictions)
    }
    inputs = ReportInputs(
        selection_tsv=Path(smk.input.selection),
        round_metrics=[Path(p) for p in smk.input.metrics],
        round_curves=[Path(p) for p in smk.input.curves],
        best_json=Path(smk.input.best),
        rounds_tsv=Path(smk.input.rounds),
        scores_tsv=Path(smk.input.scores),
        summary_json=Path(smk.input.summary),
        cases=cases,
        config=smk.params.config,
        benchmarks=[Path(p) for p in smk.input.benchmarks],
        workflow_dir=Path(smk.params.workflow_dir),
    )
    render_report(inputs, Path(smk.output[0]))


run_logged(lambda: main(snakemake), snakemake.log[0], "render_report")  # noqa: F821
