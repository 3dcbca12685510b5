rule train_round:
    input:
        cases=get_trainval_preprocessed,
        selection=result("selection", "cases.tsv"),
        init=get_previous_round_model,
        warm_start=get_init_checkpoint,
        library=library(
            "io",
            "seeding",
            "selection",
            "cases",
            "data",
            "device",
            "models",
            "networks",
            "volumes",
            "losses",
            "checkpoints",
            "train",
        ),
    output:
        model_best=result("train", "round_{round}", "model_best.pt"),
        model_last=result("train", "round_{round}", "model_last.pt"),
        metrics=result("train", "round_{round}", "metrics.csv"),
        split=result("train", "round_{round}", "split.json"),
    log:
        log_path("train_round", "round_{round}.log"),
    benchmark:
        benchmark_path("train_round", "round_{round}.tsv")
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=720,
    params:
        train=TRAIN_ROUND_PARAMS,
        label_set=LABEL_SET,
        regions=TRAIN_REGIONS,
        seed=config["seed"],
    script:
        "../workflow_scripts/train_round.py"


rule select_model:
    input:
        metrics=expand(result("train", "round_{round}", "metrics.csv"), round=ROUNDS),
        models=expand(result("train", "round_{round}", ROUND_MODEL), round=ROUNDS),
        splits=expand(result("train", "round_{round}", "split.json"), round=ROUNDS),
        cases=get_trainval_preprocessed,
        selection=result("selection", "cases.tsv"),
        library=library(
            "io",
            "seeding",
            "selection",
            "cases",
            "data",
            "device",
            "models",
            "networks",
            "volumes",
            "losses",
            "checkpoints",
            "train",
            "inference",
            "labelsets",
            "postprocess",
            "model_selection",
        ),
    output:
        best=result("train", "best.pt"),
        summary=result("train", "best.json"),
        rounds=report(
            result("train", "rounds.tsv"),
            caption="../report/rounds.rst",
            category="Training",
        ),
    log:
        log_path("select_model", "select_model.log"),
    benchmark:
        benchmark_path("select_model", "select_model.tsv")
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=30,
    params:
        train=config["train"],
        infer=config["infer"],
        regions=config["score"]["regions"],
        seed=config["seed"],
    script:
        "../workflow_scripts/select_model.py"
