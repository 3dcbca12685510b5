# segflow: CT scans from download to a trained kidney/tumour segmentation model and a report.
# Stages and their file contracts: docs/DESIGN.md. Run: snakemake --cores 8 (add --use-conda for per-rule envs).

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/download.smk"
include: "rules/inspect.smk"
include: "rules/select.smk"
include: "rules/preprocess.smk"
include: "rules/train.smk"
include: "rules/predict.smk"
include: "rules/score.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        get_final_outputs(),
