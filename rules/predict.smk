rule predict_case:
    input:
        model=result("train", "best.pt"),
        summary=result("train", "best.json"),
        case=result("preprocessed", "{case}"),
        image=result("raw", "{case}", "imaging.nii.gz"),
        library=library(
            "io",
            "cases",
            "geometry",
            "restore",
            "data",
            "device",
            "models",
            "networks",
            "volumes",
            "seeding",
            "checkpoints",
            "inference",
            "labelsets",
            "predict",
            "postprocess",
        ),
    output:
        result("predictions", "{case}.nii.gz"),
    log:
        log_path("predict_case", "{case}.log"),
    benchmark:
        benchmark_path("predict_case", "{case}.tsv")
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 12000 * attempt,
        runtime=10,
    params:
        infer=config["infer"],
        regions=DECODE_REGIONS,
    script:
        "../workflow_scripts/predict_case.py"
