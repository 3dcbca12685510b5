rule inspect_case:
    input:
        image=result("raw", "{case}", "imaging.nii.gz"),
        segmentation=result("raw", "{case}", "segmentation.nii.gz"),
        library=library("io", "inspection"),
    output:
        result("inspect", "{case}.json"),
    log:
        log_path("inspect_case", "{case}.log"),
    benchmark:
        benchmark_path("inspect_case", "{case}.tsv")
    conda:
        "../envs/data.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 6000 * attempt,
        runtime=5,
    params:
        labels=ALLOWED_LABELS,
        modality=config["modality"],
    script:
        "../workflow_scripts/inspect_case.py"
