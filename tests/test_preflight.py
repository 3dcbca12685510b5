"""Checkpoint and device problems: found at start-up (or when the job starts), each in one line naming the key."""

import pytest
import torch
from test_train import TRAIN

import segflow.train
from segflow.checkpoints import save_checkpoint
from segflow.device import DeviceError, pick_device
from segflow.models import CheckpointError, build_model, load_weights
from segflow.preflight import ConfigError, check_init_checkpoint


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint(path, build_model(TRAIN, 4).state_dict(), TRAIN, 4, round=0)
    return path


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_segflow_checkpoint_of_this_architecture_passes(checkpoint):
    assert check_init_checkpoint(checkpoint, {**TRAIN, "dropout": 0.3})["n_classes"] == 4  # dropout: same weights
    load_weights(build_model(TRAIN, 4), checkpoint, key="train.init_checkpoint")


def test_a_file_that_is_no_checkpoint_is_named_with_its_key(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    weights_only = tmp_path / "weights.pt"
    torch.save(build_model(TRAIN, 4).state_dict(), weights_only)  # a bare state_dict, no model_cfg
    for path, words in (
        (text, "is not a torch checkpoint"),
        (weights_only, "is a torch file but not a segflow checkpoint"),
        (tmp_path / "missing.pt", "does not exist"),
    ):
        with pytest.raises(ConfigError) as error:
            check_init_checkpoint(path, TRAIN)
        assert one_line(error).startswith(f"train.init_checkpoint {path} {words}")
    with pytest.raises(CheckpointError) as error:  # the same file, when the job loads it
        load_weights(build_model(TRAIN, 4), text, key="train.init_checkpoint")
    assert one_line(error).startswith(f"train.init_checkpoint {text} is not a segflow checkpoint (UnpicklingError")


def test_a_checkpoint_of_another_architecture_is_one_line(checkpoint):
    other = {**TRAIN, "channels": [8, 16, 32]}
    with pytest.raises(ConfigError) as error:
        check_init_checkpoint(checkpoint, other)
    assert one_line(error) == (
        f"train.init_checkpoint {checkpoint} is a checkpoint of another architecture: train.channels [8, 16, 32] "
        "(the checkpoint's [4, 8]); set those keys to the checkpoint's values, or point train.init_checkpoint at a "
        "checkpoint of this architecture"
    )
    with pytest.raises(CheckpointError) as error:
        load_weights(build_model(other, 4), checkpoint, key="train.init_checkpoint")
    assert one_line(error).startswith(f"train.init_checkpoint {checkpoint} holds weights of another architecture (")


def test_cuda_without_a_gpu_names_the_key(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: False)
    with pytest.raises(DeviceError) as error:
        pick_device("cuda", "train.device")
    assert one_line(error).startswith("train.device is 'cuda', but the torch on ")
    assert "was built without CUDA; set train.device to auto or cpu" in one_line(error)

    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceError) as error:
        pick_device("cuda:1", "infer.device")
    assert "infer.device is 'cuda:1', but " in one_line(error) and "has 1 visible CUDA GPU(s)" in one_line(error)
    assert pick_device("cpu").type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_fails_before_training(tmp_path):
    from test_train import make_cases, outputs_in

    dirs = make_cases(tmp_path, n=3)
    with pytest.raises(DeviceError, match="^train.device is 'cuda', but"):
        segflow.train.train_round(
            dirs, {c: c for c in dirs}, 0, {**TRAIN, "device": "cuda"}, 1, outputs_in(tmp_path / "r")
        )
    assert not (tmp_path / "r" / "resume").exists()
