"""One seed in the config drives every random choice; each use derives its own stream from it.

Derived seeds depend on (seed, purpose, ...) rather than on the order in which things run, so that adding a case
or rerunning one job never changes the random numbers of another.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np


def derive_seed(seed: int, *parts: object) -> int:
    """A 31-bit seed that depends only on ``seed`` and ``parts`` (e.g. ``derive_seed(42, "split", 2)``)."""
    text = ":".join([str(seed), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def rng_for(seed: int, *parts: object) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, *parts))


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; with ``deterministic`` ask torch for reproducible kernels on CPU and GPU."""
    import os

    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
