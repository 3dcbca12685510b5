rule download_case:
    # Runs where Snakemake runs (the submit host): compute nodes often have no internet. A site whose nodes do
    # can put it in a group in the SLURM profile, which submits it (docs/slurm.md, "489 cases").
    localrule: True
    output:
        image=result("raw", "{case}", "imaging.nii.gz"),
        segmentation=result("raw", "{case}", "segmentation.nii.gz"),
    input:
        source=get_source_files,
        library=source_modules(),
    params:
        dataset=get_case_import_params,
        seed=config["seed"],
    log:
        log_path("download_case", "{case}.log"),
    benchmark:
        benchmark_path("download_case", "{case}.tsv")
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=60,
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/download_case.py"
