checkpoint select_cases:
    localrule: True  # reads one small JSON per case: a second of work, not worth a place in the queue
    output:
        table=report(
            result("selection", "cases.tsv"),
            caption="../report/selection.rst",
            category="Data",
        ),
    input:
        inspections=get_inspections,
        library=library("io", "selection", "seeding"),
    params:
        selection=config["selection"],
        seed=config["seed"],
    log:
        log_path("select_cases", "select_cases.log"),
    benchmark:
        benchmark_path("select_cases", "select_cases.tsv")
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/select_cases.py"
