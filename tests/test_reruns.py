"""Only invalidated steps rerun: proven from Snakemake's own plan (dry runs) and from what a real run executed."""

import pytest
import yaml
from workflow import clone_run, jobs_run, planned_jobs, snakemake

DATA_STAGES = {"download_case", "inspect_case", "select_cases", "preprocess_case"}
FROM_TRAINING = {
    "train_round",
    "plot_curves",
    "select_model",
    "predict_case",
    "score_case",
    "aggregate_scores",
    "render_report",
}
FROM_PREDICTION = {"predict_case", "score_case", "aggregate_scores", "render_report"}


def with_overrides(workdir, name, overrides):
    """A config file layered on top of the tiny config, holding only the changed keys."""
    path = workdir / "config" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(overrides))
    return f"config/{name}.yaml"


def plan(workdir, *configfiles):
    args = ["-n"]
    if configfiles:
        args += ["--configfile", "config/tiny.yaml", *configfiles]
    return planned_jobs(snakemake(workdir, *args).stdout)


def test_nothing_reruns_when_nothing_changed(tiny_run):
    assert plan(tiny_run) == {}


def test_training_parameter_reruns_training_onward_only(tiny_run):
    jobs = plan(tiny_run, with_overrides(tiny_run, "lr", {"train": {"lr": 0.005}}))
    assert set(jobs) - {"all"} == FROM_TRAINING
    assert jobs["train_round"] == 2


def test_preprocessing_parameter_reruns_preprocessing_onward_for_every_case(tiny_run):
    jobs = plan(tiny_run, with_overrides(tiny_run, "gamma", {"preprocess": {"gamma": 1.4}}))
    assert set(jobs) - {"all"} == {"preprocess_case"} | FROM_TRAINING
    assert jobs["preprocess_case"] == 4  # every selected case of the tiny config


def test_choosing_where_and_how_post_processing_is_decided_retrains_nothing(tiny_run):
    overrides = {
        "train": {"postprocess": ["largest_foreground"], "postprocess_on": "unseen", "postprocess_prune": True}
    }
    jobs = plan(tiny_run, with_overrides(tiny_run, "unseen", overrides))
    assert set(jobs) - {"all"} == {"select_model"} | FROM_PREDICTION


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    return clone_run(tiny_run, tmp_path / "run")


def test_selection_threshold_preprocesses_only_newly_selected_cases(run_copy):
    # synth_005 is a 44-slice series, beyond the tiny config's max_slices of 40.
    overrides = with_overrides(run_copy, "slices", {"selection": {"max_slices": 50}})
    process = snakemake(run_copy, "--configfile", "config/tiny.yaml", overrides)
    ran = jobs_run(process.stdout + process.stderr)
    rules = {rule for rule, _ in ran}
    assert not {"download_case", "inspect_case"} & rules
    assert {"select_cases", "preprocess_case"} | FROM_TRAINING <= rules
    assert [w for rule, w in ran if rule == "preprocess_case"] == ["case=synth_005"]


def test_editing_a_rule_script_reruns_that_rule_and_dependants(run_copy):
    script = run_copy / "workflow_scripts" / "score_case.py"
    script.write_text(script.read_text() + "\n# an edit\n")
    assert set(plan(run_copy)) - {"all"} == {"score_case", "aggregate_scores", "render_report"}


def test_editing_a_library_module_reruns_the_rules_that_use_it(run_copy):
    module = run_copy / "workflow_scripts" / "segflow" / "inspection.py"
    module.write_text(module.read_text() + "\n# an edit\n")
    jobs = plan(run_copy)
    assert jobs["inspect_case"] == 6 and "download_case" not in jobs and "select_cases" in jobs


def test_adding_a_case_downloads_and_inspects_only_that_case(run_copy):
    overrides = with_overrides(run_copy, "more", {"dataset": {"n_cases": 7}})
    jobs = plan(run_copy, overrides)
    assert jobs["download_case"] == 1 and jobs["inspect_case"] == 1
    assert "preprocess_case" not in jobs  # decided after the checkpoint reruns; preprocessing keeps its outputs


def edit_module(workdir, name):
    module = workdir / "workflow_scripts" / "segflow" / f"{name}.py"
    module.write_text(module.read_text() + "\n# an edit\n")
    return set(plan(workdir)) - {"all"}


def test_editing_the_way_back_reruns_only_prediction_onward(run_copy):
    assert edit_module(run_copy, "restore") == FROM_PREDICTION


def test_editing_curve_drawing_retrains_and_rescores_nothing(run_copy):
    assert edit_module(run_copy, "curves") == {"plot_curves", "render_report"}


def test_editing_checkpoint_loading_preprocesses_nothing(run_copy):
    jobs = edit_module(run_copy, "checkpoints")
    assert not jobs & DATA_STAGES
    assert jobs == FROM_TRAINING  # train_round saves checkpoints with it, select_model and predict_case load them


def test_editing_the_forward_chain_reruns_preprocessing_onward(run_copy):
    jobs = edit_module(run_copy, "preprocess")
    assert jobs == {"preprocess_case"} | FROM_TRAINING  # no download, inspection or selection
