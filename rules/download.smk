rule download_case:
    input:
        source=get_source_files,
        library=source_modules(),
    output:
        image=result("raw", "{case}", "imaging.nii.gz"),
        segmentation=result("raw", "{case}", "segmentation.nii.gz"),
    log:
        log_path("download_case", "{case}.log"),
    benchmark:
        benchmark_path("download_case", "{case}.tsv")
    # Runs where Snakemake runs (the submit host): compute nodes often have no internet. A site whose nodes do
    # can put it in a group in the SLURM profile, which submits it (docs/slurm.md, "489 cases").
    localrule: True
    conda:
        "../envs/data.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=60,
    params:
        dataset=get_case_import_params,
        seed=config["seed"],
    script:
        "../workflow_scripts/download_case.py"
