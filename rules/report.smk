rule plot_curves:
    input:
        metrics=result("train", "round_{round}", "metrics.csv"),
        library=library("io", "curves"),
    output:
        report(
            result("train", "round_{round}", "curves.png"),
            caption="../report/curves.rst",
            category="Training",
            subcategory="Round {round}",
        ),
    log:
        log_path("plot_curves", "round_{round}.log"),
    benchmark:
        benchmark_path("plot_curves", "round_{round}.tsv")
    localrule: True  # one small figure from a CSV, on the submit host
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 1000 * attempt,
        runtime=10,
    script:
        "../workflow_scripts/plot_curves.py"


rule render_report:
    input:
        unpack(get_report_case_files),
        selection=result("selection", "cases.tsv"),
        metrics=expand(result("train", "round_{round}", "metrics.csv"), round=ROUNDS),
        curves=expand(result("train", "round_{round}", "curves.png"), round=ROUNDS),
        best=result("train", "best.json"),
        rounds=result("train", "rounds.tsv"),
        scores=result("scores", "scores.tsv"),
        summary=result("scores", "summary.json"),
        benchmarks=get_benchmarks,
        library=library(
            "io", "metrics", "score", "report", "report_figures", "labelsets"
        ),
    output:
        report(
            result("report", "report.html"),
            caption="../report/report.rst",
            category="Report",
        ),
    log:
        log_path("render_report", "render_report.log"),
    benchmark:
        benchmark_path("render_report", "render_report.tsv")
    localrule: True  # a few figures and one HTML file, on the submit host
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=20,
    params:
        config=config,
        workflow_dir=workflow.basedir,
    script:
        "../workflow_scripts/render_report.py"
