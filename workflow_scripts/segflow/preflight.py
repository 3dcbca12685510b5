"""Checks that can run when Snakemake starts, before any job: cheap, and free of torch (the Snakefile imports this).

``check_init_checkpoint`` reads a ``torch.save`` zip without torch: its ``data.pkl`` is unpickled with every class
replaced by an inert stand-in and every tensor storage by nothing, which yields the checkpoint's dictionary (weight
names and shapes, ``model_cfg``, ``n_classes``) without executing anything from the file. The exact check (every
weight's shape, with torch) follows when round 0 loads the weights (``segflow.models.load_weights``).
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path

# Keys of model_cfg that change the weights only for some models; dropout and the crop/window sizes never do.
ONLY_FOR_MODEL = {
    "num_res_units": ("unet",),
    "backbone": ("efficientnet_unet",),
    "norm": ("unet", "unetpp", "efficientnet_unet", "attention_unet"),
}
NOT_ARCHITECTURE = ("dropout", "patch_size", "window_overlap")


class ConfigError(ValueError):
    """A config value that cannot work; the one-line message names the key, the file and what to do."""


class _Stub:
    """Stands in for any class or function the pickle names; remembers its arguments (a tensor's shape)."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __call__(self, *args, **kwargs):
        return _Stub(*args)

    def __setstate__(self, state):
        self.state = state


class _HeaderUnpickler(pickle.Unpickler):
    SAFE = {("collections", "OrderedDict"): collections.OrderedDict}

    def find_class(self, module, name):
        return self.SAFE.get((module, name), _Stub())

    def persistent_load(self, pid):
        return None  # a tensor storage: its bytes are not needed here


def read_checkpoint(path: str | Path, key: str = "train.init_checkpoint") -> dict:
    """The dictionary of a segflow checkpoint, with stand-ins for the tensors; ConfigError if it is none."""
    path = Path(path)
    where = f"{key} {path}"
    if not path.is_file():
        raise ConfigError(
            f"{where} does not exist; point {key} at a segflow checkpoint (e.g. results/train/best.pt) "
            "or set it to null"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            member = next((n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if member is None:
                raise ConfigError(
                    f"{where} is a zip file but not a torch checkpoint (no data.pkl); "
                    f"point {key} at a segflow checkpoint"
                )
            content = _HeaderUnpickler(io.BytesIO(archive.read(member))).load()
    except zipfile.BadZipFile:
        raise ConfigError(
            f"{where} is not a torch checkpoint (not a torch.save zip file); point {key} at a segflow checkpoint "
            "such as results/train/best.pt"
        ) from None
    except ConfigError:
        raise
    except Exception as error:  # a damaged pickle: many exception types
        raise ConfigError(
            f"{where} is a damaged checkpoint ({type(error).__name__}: {error}); point {key} at another file"
        ) from None
    if not isinstance(content, dict) or not isinstance(content.get("model"), dict) or "model_cfg" not in content:
        raise ConfigError(
            f"{where} is a torch file but not a segflow checkpoint (it needs 'model' weights and 'model_cfg', as "
            f"segflow's model_best.pt, best.pt and model_last.pt have); point {key} at one of those"
        )
    return content


def check_init_checkpoint(path: str | Path, train_cfg: dict, key: str = "train.init_checkpoint") -> dict:
    """Fail with one line unless ``path`` is a segflow checkpoint of the architecture ``train_cfg`` builds."""
    checkpoint = read_checkpoint(path, key)
    saved = checkpoint["model_cfg"]
    model = train_cfg.get("model")
    differences = []
    for name, value in saved.items():
        if name in NOT_ARCHITECTURE or name not in train_cfg:
            continue
        if name in ONLY_FOR_MODEL and model not in ONLY_FOR_MODEL[name]:
            continue
        if _plain(value) != _plain(train_cfg[name]):
            differences.append(f"train.{name} {_plain(train_cfg[name])!r} (the checkpoint's {_plain(value)!r})")
    if differences:
        raise ConfigError(
            f"{key} {path} is a checkpoint of another architecture: {', '.join(differences)}; set those keys to the "
            f"checkpoint's values, or point {key} at a checkpoint of this architecture"
        )
    return checkpoint


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value
