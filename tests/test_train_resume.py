"""A round killed with SIGKILL resumes from its last saved epoch and ends with the same weights as an uninterrupted one."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from test_train import TRAIN, make_cases, outputs_in
from segflow.train import train_round

DRIVER = Path(__file__).with_name("train_driver.py")


def test_sigkill_mid_round_then_rerun_resumes_and_matches(tmp_path, caplog):
    dirs = make_cases(tmp_path)
    cfg = {**TRAIN, "epochs": 8, "samples_per_epoch": 16}
    interrupted = tmp_path / "interrupted"
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"out": str(interrupted), "cases": {k: str(v) for k, v in dirs.items()}, "train": cfg, "seed": 5}))

    process = subprocess.Popen([sys.executable, str(DRIVER), str(args)], stderr=subprocess.DEVNULL)
    state = outputs_in(interrupted).resume_state
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert state.exists() and not (interrupted / "model_last.pt").exists(), "the round finished before the kill"
    saved_epoch = torch.load(state, weights_only=False)["epoch"]

    with caplog.at_level(logging.INFO, logger="segflow.train"):
        train_round(dirs, {c: c for c in dirs}, 0, cfg, 5, outputs_in(interrupted))
    assert f"resuming after epoch {saved_epoch + 1}" in caplog.text
    assert not state.parent.exists()  # the resume folder is cleaned up once the round is complete

    uninterrupted = tmp_path / "uninterrupted"
    train_round(dirs, {c: c for c in dirs}, 0, cfg, 5, outputs_in(uninterrupted))
    resumed_weights = torch.load(interrupted / "model_last.pt", weights_only=False)["model"]
    reference_weights = torch.load(uninterrupted / "model_last.pt", weights_only=False)["model"]
    assert all(torch.equal(resumed_weights[k], reference_weights[k]) for k in reference_weights)
    columns = lambda frame: frame.drop(columns="seconds")  # noqa: E731
    assert columns(pd.read_csv(interrupted / "metrics.csv")).equals(columns(pd.read_csv(uninterrupted / "metrics.csv")))
    assert len(pd.read_csv(interrupted / "metrics.csv")) == 8


def test_state_from_another_configuration_is_not_resumed(tmp_path, caplog):
    dirs = make_cases(tmp_path, n=3)
    out = tmp_path / "round"
    cfg = {**TRAIN, "epochs": 1}
    train_round(dirs, {c: c for c in dirs}, 0, cfg, 5, outputs_in(out))
    state = outputs_in(out).resume_state
    state.parent.mkdir()
    os.replace(out / "model_last.pt", state)  # a leftover state, then the user changes the learning rate
    with caplog.at_level(logging.INFO, logger="segflow.train"):
        train_round(dirs, {c: c for c in dirs}, 0, {**cfg, "lr": 0.001}, 5, outputs_in(out))
    assert "from another configuration; starting over" in caplog.text
