checkpoint select_cases:
    input:
        inspections=get_inspections,
        library=library("io", "selection", "seeding"),
    output:
        table=report(
            result("selection", "cases.tsv"),
            caption="../report/selection.rst",
            category="Data",
        ),
    log:
        log_path("select_cases", "select_cases.log"),
    benchmark:
        benchmark_path("select_cases", "select_cases.tsv")
    localrule: True  # reads one small JSON per case: a second of work, not worth a place in the queue
    conda:
        "../envs/data.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        selection=config["selection"],
        seed=config["seed"],
    script:
        "../workflow_scripts/select_cases.py"
