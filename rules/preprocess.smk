rule preprocess_case:
    output:
        directory(result("preprocessed", "{case}")),
    input:
        image=result("raw", "{case}", "imaging.nii.gz"),
        segmentation=result("raw", "{case}", "segmentation.nii.gz"),
        library=library("io", "preprocess"),
    params:
        preprocess=config["preprocess"],
    log:
        log_path("preprocess_case", "{case}.log"),
    benchmark:
        benchmark_path("preprocess_case", "{case}.tsv")
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 6000 * attempt,
        runtime=30,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/preprocess_case.py"
