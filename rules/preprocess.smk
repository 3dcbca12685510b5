rule preprocess_case:
    output:
        directory(result("preprocessed", "{case}")),
    input:
        image=result("raw", "{case}", "imaging.nii.gz"),
        segmentation=result("raw", "{case}", "segmentation.nii.gz"),
        library=library("io", "preprocess", "normalise"),
    params:
        preprocess=config["preprocess"],
        modality=config["modality"],
    log:
        log_path("preprocess_case", "{case}.log"),
    benchmark:
        benchmark_path("preprocess_case", "{case}.tsv")
    threads: 1
    resources:
        # Measured peak ~1.0 GB for a 512x512x600 int16 case (~1.5 GB at 1059 slices, ~2.7 GB stored as float64):
        # see docs/preprocessing.md.
        mem_mb=lambda wildcards, attempt: 6000 * attempt,
        runtime=30,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/preprocess_case.py"
