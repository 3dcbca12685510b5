rule predict_case:
    output:
        result("predictions", "{case}.nii.gz"),
    input:
        model=result("train", "best.pt"),
        summary=result("train", "best.json"),
        case=result("preprocessed", "{case}"),
        image=result("raw", "{case}", "imaging.nii.gz"),
        library=library(
            "io", "models", "networks", "volumes", "data", "preprocess", "normalise", "predict", "postprocess",
            "train",
        ),
    params:
        infer=config["infer"],
    log:
        log_path("predict_case", "{case}.log"),
    benchmark:
        benchmark_path("predict_case", "{case}.tsv")
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 6000 * attempt,
        runtime=30,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/predict_case.py"
