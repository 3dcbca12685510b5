# Everything that is not a rule: config validation, paths, case lists and the input functions of the rules.

import sys
from pathlib import Path

from snakemake.utils import validate

validate(config, schema="../config/schema.yaml")

# The rule scripts import the segflow package from workflow_scripts/; so does this file, for case lists.
WORKFLOW_SCRIPTS = Path(workflow.basedir) / "workflow_scripts"
sys.path.insert(0, str(WORKFLOW_SCRIPTS))

from segflow.config_checks import check_config  # noqa: E402
from segflow.labelsets import allowed_labels, label_names, n_classes  # noqa: E402
from segflow.preflight import ConfigError, check_init_checkpoint  # noqa: E402
from segflow.sources import (  # noqa: E402
    case_inputs,
    case_params,
    list_cases,
    source_module_name,
)


def _regroup_from_scratch():
    """Work around a Snakemake bug with --group-components in a DAG with a checkpoint (snakemake/snakemake#1217,
    #1628; checked in 9.27). With jobs whose input waits on the checkpoint, every DAG postprocessing runs twice;
    the second pass gets back the group jobs the first pass merged (GroupJobFactory caches them) and merges them
    again, so groups grow past their size and overlap (6 jobs in groups of 2 came out as 4 + 2 + 2). Each
    regrouping here starts from new group jobs. Regrouping happens when the DAG is built and when select_cases
    has run, and no group job is running then: inspect groups are done before select_cases, later ones start
    after. tests/test_slurm_plan.py checks the groups (each job in one group, none over its size).
    """
    from snakemake.dag import DAG

    if getattr(DAG.update_groups, "segflow_regroups", False):
        return
    update_groups = DAG.update_groups

    def update_groups_from_scratch(self):
        self.group_job_factory.cache.clear()
        update_groups(self)

    update_groups_from_scratch.segflow_regroups = True
    DAG.update_groups = update_groups_from_scratch


_regroup_from_scratch()

RESULTS = Path(config["results_dir"])
LOGS = RESULTS / "logs"
BENCHMARKS = RESULTS / "benchmarks"
ROUNDS = list(range(config["train"]["rounds"]))
try:  # combinations of keys the schema cannot express (a 2D model with train.dims 3, HU filters on MRI...)
    check_config(config)
except ConfigError as error:
    sys.exit(f"segflow: {error}")
# The label set is data (segflow.labelsets): what a segmentation may hold, how many classes the network predicts and
# their names, all from the config.
ALLOWED_LABELS = allowed_labels(config)
LABEL_SET = {"n_classes": n_classes(config), "names": label_names(config["score"])}
if config["train"][
    "init_checkpoint"
]:  # at start-up, not after a minute of work: one line naming key and file
    try:
        check_init_checkpoint(config["train"]["init_checkpoint"], config["train"])
    except ConfigError as error:
        sys.exit(f"segflow: {error}")
CASES = list_cases(config["dataset"], config["seed"])
# What each case's import reads: its local source files (inputs, so replacing one reimports exactly that case) and
# an identity for the rest (a zip member's CRC, manifest checksums in place of base URLs); see docs/data_sources.md.
CASE_INPUTS = case_inputs(config["dataset"], CASES)


wildcard_constraints:
    case=r"[A-Za-z0-9][A-Za-z0-9_.\-]*",
    round=r"\d+",


def result(*parts):
    """A path under results_dir, as a string for rule declarations."""
    return str(RESULTS.joinpath(*parts))


def log_path(rule_name, *parts):
    return str(LOGS.joinpath(rule_name, *parts))


def benchmark_path(rule_name, *parts):
    return str(BENCHMARKS.joinpath(rule_name, *parts))


def library(*modules):
    """Library modules a rule's result depends on. Snakemake tracks a rule's script but not what it imports,
    so these are inputs: editing a module reruns exactly the rules that use it."""
    paths = [WORKFLOW_SCRIPTS / "segflow" / f"{name}.py" for name in modules]
    return [_relative_if_inside(p) for p in paths]


def _relative_if_inside(path):
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def source_modules():
    """The library modules that import cases from the configured source."""
    source = config["dataset"]["source"]
    if source_module_name(config["dataset"]) == "segflow.sources.organs":
        return library("io", "sources/__init__", "sources/organs", "sources/synthetic")
    modules = {
        "synthetic": ["sources/synthetic"],
        "phantom": ["sources/phantom", "sources/common", "seeding"],
        "kits23": ["sources/kits", "sources/common", "download"],
        "kits19": ["sources/kits", "sources/common", "download"],
        "local": ["sources/local", "sources/common", "download"],
    }.get(source, [f"sources/{source}", "sources/common"])
    return library("io", "sources/__init__", *modules)


# --- case lists -------------------------------------------------------------------------------------------------


def selection_table():
    """The selection table; reading it makes the caller depend on the select_cases checkpoint."""
    # Imported here: segflow.selection brings pandas, which every Snakemake process (on SLURM two per job) would
    # otherwise import while parsing the workflow, even where no job needs the table.
    from segflow.selection import read_selection

    return read_selection(checkpoints.select_cases.get().output.table)


def get_selected_cases(split=None):
    from segflow.selection import cases_in_split

    return cases_in_split(selection_table(), split)


# --- input functions --------------------------------------------------------------------------------------------


def get_source_files(wildcards):
    """The local files a case's import reads (none for downloaded or generated cases)."""
    return list(CASE_INPUTS[wildcards.case].files)


def get_case_import_params(wildcards):
    """What a case's content depends on: the dataset config without the keys that only choose which cases exist
    (adding cases reimports none of the others) or how files are fetched, plus the case's identity.
    """
    return case_params(config["dataset"], CASE_INPUTS[wildcards.case])


def get_inspections(wildcards):
    return expand(result("inspect", "{case}.json"), case=CASES)


def get_trainval_preprocessed(wildcards):
    return expand(result("preprocessed", "{case}"), case=get_selected_cases("trainval"))


# Each round's model (train.keep_epoch): its lowest-validation-loss epoch, or its last epoch (the final state).
ROUND_MODEL = (
    "model_last.pt" if config["train"]["keep_epoch"] == "last" else "model_best.pt"
)


def get_previous_round_model(wildcards):
    """Round r > 0 starts from round r-1's model (ROUND_MODEL), so that file is an input of round r."""
    round_index = int(wildcards.round)
    return (
        [result("train", f"round_{round_index - 1}", ROUND_MODEL)]
        if round_index > 0
        else []
    )


def get_test_predictions(wildcards):
    return expand(
        result("predictions", "{case}.nii.gz"), case=get_selected_cases("test")
    )


def get_test_scores(wildcards):
    return expand(
        result("scores", "cases", "{case}.json"), case=get_selected_cases("test")
    )


def get_report_case_files(wildcards):
    cases = get_selected_cases("test")
    return {
        "images": expand(result("raw", "{case}", "imaging.nii.gz"), case=cases),
        "references": expand(
            result("raw", "{case}", "segmentation.nii.gz"), case=cases
        ),
        "predictions": expand(result("predictions", "{case}.nii.gz"), case=cases),
    }


def get_benchmarks(wildcards):
    """Benchmark files of every job before the report, for the report's wall-time table."""
    selected, test = get_selected_cases(), get_selected_cases("test")
    per_case = {
        "download_case": CASES,
        "inspect_case": CASES,
        "preprocess_case": selected,
    }
    per_case.update({"predict_case": test, "score_case": test})
    files = [
        benchmark_path(rule, f"{case}.tsv")
        for rule, cases in per_case.items()
        for case in cases
    ]
    files += [
        benchmark_path(rule, f"round_{r}.tsv")
        for rule in ("train_round", "plot_curves")
        for r in ROUNDS
    ]
    files += [
        benchmark_path(rule, f"{rule}.tsv")
        for rule in ("select_cases", "select_model", "aggregate_scores")
    ]
    return files


def get_final_outputs():
    return [result("report", "report.html")]


# --- training ----------------------------------------------------------------------------------------------------

# Keys only select_model reads: adding a round or changing how rounds are compared must neither rerun the rounds that
# exist nor invalidate their saved training state (train_round's resume fingerprint hashes the params it is given).
SELECTION_ONLY_KEYS = (
    "rounds",
    "select_by",
    "ensemble",
    "postprocess",
    "postprocess_on",
    "postprocess_prune",
    "keep_epoch",
)
TRAIN_ROUND_PARAMS = {
    k: v for k, v in config["train"].items() if k not in SELECTION_ONLY_KEYS
}
# The regions train.dice_targets: regions takes Dice over and train.class_balance: regions draws slices by; with
# neither they are not a param of the rounds, so renaming a scored region then reruns no training.
TRAIN_REGIONS = (
    config["score"]["regions"]
    if "regions" in (config["train"]["dice_targets"], config["train"]["class_balance"])
    else None
)
# The regions infer.decode: regions decodes through; with argmax, renaming a scored region reruns no prediction.
DECODE_REGIONS = (
    config["score"]["regions"] if config["infer"]["decode"] == "regions" else None
)


def get_init_checkpoint(wildcards):
    """train.init_checkpoint is an input of round 0, so replacing that file retrains."""
    path = config["train"]["init_checkpoint"]
    return [path] if path and int(wildcards.round) == 0 else []
