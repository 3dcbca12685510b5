rule score_case:
    input:
        prediction=result("predictions", "{case}.nii.gz"),
        reference=result("raw", "{case}", "segmentation.nii.gz"),
        library=library("io", "metrics", "score"),
    output:
        result("scores", "cases", "{case}.json"),
    log:
        log_path("score_case", "{case}.log"),
    benchmark:
        benchmark_path("score_case", "{case}.tsv")
    conda:
        "../envs/data.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=20,
    params:
        score=config["score"],
    script:
        "../workflow_scripts/score_case.py"


rule aggregate_scores:
    input:
        scores=get_test_scores,
        library=library("io", "metrics", "score"),
    output:
        table=report(
            result("scores", "scores.tsv"),
            caption="../report/scores.rst",
            category="Scores",
        ),
        summary=result("scores", "summary.json"),
        summary_table=report(
            result("scores", "summary.tsv"),
            caption="../report/summary.rst",
            category="Scores",
        ),
    log:
        log_path("aggregate_scores", "aggregate_scores.log"),
    benchmark:
        benchmark_path("aggregate_scores", "aggregate_scores.tsv")
    localrule: True  # one small JSON per test case into two tables
    conda:
        "../envs/data.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        score=config["score"],
    script:
        "../workflow_scripts/aggregate_scores.py"
