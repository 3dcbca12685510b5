rule inspect_case:
    output:
        result("inspect", "{case}.json"),
    input:
        image=result("raw", "{case}", "imaging.nii.gz"),
        segmentation=result("raw", "{case}", "segmentation.nii.gz"),
        library=library("io", "inspection"),
    params:
        labels=ALLOWED_LABELS,
        modality=config["modality"],
    log:
        log_path("inspect_case", "{case}.log"),
    benchmark:
        benchmark_path("inspect_case", "{case}.tsv")
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=20,
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/inspect_case.py"
