"""Resuming a round: after SIGKILL the rerun continues from the last saved epoch and ends bit-identical to an
uninterrupted run; SIGTERM exits non-zero with the state on disk; a state from another config is not resumed."""

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_train import TRAIN, make_cases, outputs_in

import segflow.train
from segflow.train import train_round

DRIVER = Path(__file__).with_name("train_driver.py")
SEED = 5


def start_round(tmp_path, dirs, cfg, out):
    """Train round 0 into ``out`` in a child process; return it once its first epoch's state is on disk."""
    args = tmp_path / "args.json"
    args.write_text(
        json.dumps({"out": str(out), "cases": {k: str(v) for k, v in dirs.items()}, "train": cfg, "seed": SEED})
    )
    process = subprocess.Popen([sys.executable, str(DRIVER), str(args)], stderr=subprocess.PIPE, text=True)
    state = outputs_in(out).resume_state
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.005)
    return process


def delete_outputs(out):
    """What Snakemake does to a failed or incomplete job's declared outputs before it reruns the job."""
    for path in vars(outputs_in(out)).values():
        Path(path).unlink(missing_ok=True)


@pytest.mark.parametrize("ema_decay", [0, 0.9], ids=["trained_weights", "weight_average"])
def test_sigkill_mid_round_then_rerun_resumes_and_matches(tmp_path, caplog, ema_decay):
    dirs = make_cases(tmp_path)
    cfg = {**TRAIN, "epochs": 6, "samples_per_epoch": 16, "ema_decay": ema_decay}
    interrupted = tmp_path / "interrupted"
    process = start_round(tmp_path, dirs, cfg, interrupted)
    process.kill()
    process.communicate()
    state = outputs_in(interrupted).resume_state
    assert state.exists() and not (interrupted / "model_last.pt").exists(), "the round finished before the kill"
    saved_epoch = torch.load(state, weights_only=False)["epoch"]
    assert saved_epoch < cfg["epochs"] - 1

    delete_outputs(interrupted)
    with caplog.at_level(logging.INFO, logger="segflow.train"):
        train_round(dirs, {c: c for c in dirs}, 0, cfg, SEED, outputs_in(interrupted))
    assert f"resuming after epoch {saved_epoch + 1} from {state}" in caplog.text
    assert f"epoch {saved_epoch + 1}/6:" not in caplog.text  # completed epochs are not trained again
    assert f"epoch {saved_epoch + 2}/6:" in caplog.text
    assert not state.parent.exists()  # the resume folder is removed once the round is complete

    uninterrupted = tmp_path / "uninterrupted"
    train_round(dirs, {c: c for c in dirs}, 0, cfg, SEED, outputs_in(uninterrupted))
    compared = [("model_last.pt", "model"), ("model_best.pt", "model")]
    if ema_decay:
        compared.append(("model_last.pt", "trained_model"))  # and the weights the average follows
    for name, key in compared:
        resumed = torch.load(interrupted / name, weights_only=False)[key]
        reference = torch.load(uninterrupted / name, weights_only=False)[key]
        assert all(torch.equal(resumed[k], reference[k]) for k in reference), (name, key)
    without_time = lambda folder: pd.read_csv(folder / "metrics.csv").drop(columns="seconds")  # noqa: E731
    assert without_time(interrupted).equals(without_time(uninterrupted))
    assert len(without_time(interrupted)) == cfg["epochs"]


def test_sigterm_exits_nonzero_with_the_last_epoch_saved(tmp_path):
    dirs = make_cases(tmp_path, n=3)
    out = tmp_path / "round"
    process = start_round(tmp_path, dirs, {**TRAIN, "epochs": 20, "samples_per_epoch": 16}, out)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1, stderr
    assert "segflow: train_round: Terminated: received signal 15" in stderr
    saved = torch.load(outputs_in(out).resume_state, weights_only=False)  # complete, loadable
    assert len(saved["rows"]) == saved["epoch"] + 1 and saved["best_weights"] is not None
    assert not list(out.rglob("*.part*")), "a half-written file was left behind"


def test_state_from_another_configuration_is_not_resumed(tmp_path, caplog, monkeypatch):
    dirs = make_cases(tmp_path, n=3)
    out = tmp_path / "round"
    run_epoch = segflow.train._run_epoch

    def crash_in_second_epoch(setup, epoch, validate=True):
        if epoch == 1:
            raise RuntimeError("node failure")
        return run_epoch(setup, epoch, validate)

    monkeypatch.setattr(segflow.train, "_run_epoch", crash_in_second_epoch)
    with pytest.raises(RuntimeError, match="node failure"):
        train_round(dirs, {c: c for c in dirs}, 0, TRAIN, SEED, outputs_in(out))
    monkeypatch.undo()
    assert outputs_in(out).resume_state.exists()
    with caplog.at_level(logging.INFO, logger="segflow.train"):
        train_round(dirs, {c: c for c in dirs}, 0, {**TRAIN, "lr": 0.001}, SEED, outputs_in(out))
    assert "from another configuration; starting over" in caplog.text
    assert "resuming" not in caplog.text
    assert len(pd.read_csv(out / "metrics.csv")) == TRAIN["epochs"]


def test_state_built_on_other_preprocessing_is_not_resumed(tmp_path, caplog, monkeypatch):
    """Kill a round, change preprocess.gamma (every case is preprocessed again), rerun: the round starts over
    and ends exactly as a clean run on the new data, instead of resuming from epochs trained on the old data."""
    from test_train import PRE

    from segflow.preprocess import preprocess_case

    dirs = make_cases(tmp_path, n=3)  # gamma 1.5
    out = tmp_path / "round"
    run_epoch = segflow.train._run_epoch

    def crash_in_second_epoch(setup, epoch, validate=True):
        if epoch == 1:
            raise RuntimeError("killed")
        return run_epoch(setup, epoch, validate)

    monkeypatch.setattr(segflow.train, "_run_epoch", crash_in_second_epoch)
    with pytest.raises(RuntimeError, match="killed"):
        train_round(dirs, {c: c for c in dirs}, 0, TRAIN, SEED, outputs_in(out))
    monkeypatch.undo()
    assert outputs_in(out).resume_state.exists()

    for case in dirs:  # what Snakemake does after the gamma change: preprocess_case reruns for every case
        raw = tmp_path / "raw" / case
        preprocess_case(raw / "imaging.nii.gz", raw / "segmentation.nii.gz", dirs[case], {**PRE, "gamma": 1.0})
    delete_outputs(out)
    with caplog.at_level(logging.INFO, logger="segflow.train"):
        train_round(dirs, {c: c for c in dirs}, 0, TRAIN, SEED, outputs_in(out))
    assert "is from other data (preprocessed cases changed c0, c1, c2); starting over" in caplog.text
    assert "resuming" not in caplog.text

    clean = tmp_path / "clean"
    train_round(dirs, {c: c for c in dirs}, 0, TRAIN, SEED, outputs_in(clean))
    without_time = lambda folder: pd.read_csv(folder / "metrics.csv").drop(columns="seconds")  # noqa: E731
    assert without_time(out).equals(without_time(clean))


def test_state_resumes_when_the_data_are_untouched(tmp_path, caplog, monkeypatch):
    """The data identity is stable: reading the cases (or copying the run with its timestamps) keeps it."""
    from segflow.train import case_identity

    dirs = make_cases(tmp_path, n=2)
    before = {c: case_identity(d) for c, d in dirs.items()}
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(dirs["c0"], copy, copy_function=shutil.copy2)
    assert case_identity(copy) == before["c0"]
    (copy / "meta.json").write_text((copy / "meta.json").read_text().replace('"gamma": 1.5', '"gamma": 1.0'))
    assert case_identity(copy) != before["c0"]
