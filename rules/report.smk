rule render_report:
    localrule: True  # a few figures and one HTML file, on the submit host
    output:
        report(result("report", "report.html"), caption="../report/report.rst", category="Report"),
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
        library=library("io", "report", "report_figures", "score", "labelsets"),
    params:
        config=config,
        workflow_dir=workflow.basedir,
    log:
        log_path("render_report", "render_report.log"),
    benchmark:
        benchmark_path("render_report", "render_report.tsv")
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=20,
    conda:
        "../envs/report.yaml"
    script:
        "../workflow_scripts/render_report.py"
