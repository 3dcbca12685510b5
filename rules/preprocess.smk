rule preprocess_case:
    input:
        image=result("raw", "{case}", "imaging.nii.gz"),
        segmentation=result("raw", "{case}", "segmentation.nii.gz"),
        library=library(
            "io", "geometry", "nifti_reader", "cases", "preprocess", "normalise"
        ),
    output:
        directory(result("preprocessed", "{case}")),
    log:
        log_path("preprocess_case", "{case}.log"),
    benchmark:
        benchmark_path("preprocess_case", "{case}.tsv")
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        # Measured peak ~1.0 GB for a 512x512x600 int16 case (~1.5 GB at 1059 slices, ~2.7 GB stored as float64):
        # see docs/preprocessing.md.
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=10,
    params:
        preprocess=config["preprocess"],
        modality=config["modality"],
    script:
        "../workflow_scripts/preprocess_case.py"
