"""train.ema_decay: a moving average of the weights that a round validates, keeps and resumes, while the
training itself (the trained weights, the losses) stays the same as without it."""

import numpy as np
import pandas as pd
import torch
from test_train import TRAIN, make_cases, outputs_in

from segflow.train import train_round, weight_average


def test_no_average_at_decay_zero():
    assert weight_average(torch.nn.Linear(2, 2), 0) is None


def test_the_average_ramps_up_to_its_decay_and_copies_integer_buffers():
    model = torch.nn.BatchNorm1d(1)  # one float weight, float running stats and an integer batch count
    average = weight_average(model, decay=0.5)
    expected = None
    for step, value in enumerate([4.0, 0.0, 8.0, 2.0]):
        with torch.no_grad():
            model.weight.fill_(value)
            model.num_batches_tracked.fill_(10 * step)
        average.update_parameters(model)
        # The first update copies; update n (n >= 1) keeps min(decay, (1 + n) / (10 + n)) of the average.
        kept = 0.0 if step == 0 else min(0.5, (1 + step) / (10 + step))
        expected = value if expected is None else kept * expected + (1 - kept) * value
        assert np.isclose(float(average.module.weight.detach()), expected)
        assert int(average.module.num_batches_tracked) == 10 * step
    assert int(average.n_averaged) == 4


def test_an_averaged_round_trains_the_same_weights_and_keeps_their_average(tmp_path):
    dirs = make_cases(tmp_path, n=3)
    patients = {case: case for case in dirs}
    cfg = {**TRAIN, "epochs": 3, "samples_per_epoch": 16}
    plain, averaged = outputs_in(tmp_path / "plain"), outputs_in(tmp_path / "ema")
    train_round(dirs, patients, 0, cfg, 3, plain)
    train_round(dirs, patients, 0, {**cfg, "ema_decay": 0.9}, 3, averaged)

    plain_metrics, averaged_metrics = pd.read_csv(plain.metrics), pd.read_csv(averaged.metrics)
    assert np.array_equal(plain_metrics["train_loss"], averaged_metrics["train_loss"])  # the same training
    assert not np.allclose(plain_metrics["val_loss"], averaged_metrics["val_loss"])  # validated on the average
    last, reference = (torch.load(out.model_last, weights_only=False) for out in (averaged, plain))
    assert all(torch.equal(last["trained_model"][k], reference["model"][k]) for k in reference["model"])
    assert any(not torch.equal(last["model"][k], reference["model"][k]) for k in reference["model"])
    assert last["ema_updates"] == 3 * 16 // TRAIN["batch_size"]  # one update per optimiser step


def test_the_lowest_validation_loss_keeps_the_average_too(tmp_path):
    dirs = make_cases(tmp_path, n=3)
    one_epoch = outputs_in(tmp_path / "ema")  # one epoch: its only validated epoch is both best and last
    train_round(dirs, {case: case for case in dirs}, 0, {**TRAIN, "epochs": 1, "ema_decay": 0.9}, 3, one_epoch)
    best, last = (torch.load(path, weights_only=False) for path in (one_epoch.model_best, one_epoch.model_last))
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in last["model"])
    assert any(not torch.equal(best["model"][k], last["trained_model"][k]) for k in last["model"])
