import os

import numpy as np
import pytest

from segflow.io import atomic_dir, atomic_path, read_json, write_json
from segflow.seeding import derive_seed, rng_for


def test_atomic_path_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": np.int64(1), "b": np.arange(2)})
    assert read_json(target) == {"a": 1, "b": [0, 1]}
    assert os.listdir(tmp_path) == ["out.json"]


def test_atomic_dir_replaces_a_pre_created_empty_dir(tmp_path):
    target = tmp_path / "case"
    target.mkdir()
    with atomic_dir(target) as tmp:
        (tmp / "meta.json").write_text("{}")
    assert os.listdir(target) == ["meta.json"]
    with pytest.raises(ValueError):
        with atomic_dir(tmp_path / "other") as tmp:
            raise ValueError
    assert sorted(os.listdir(tmp_path)) == ["case"]


def test_derived_seeds_depend_on_purpose_not_order():
    assert derive_seed(1, "split", 0) == derive_seed(1, "split", 0)
    assert derive_seed(1, "split", 0) != derive_seed(1, "split", 1)
    assert derive_seed(1, "split", 0) != derive_seed(2, "split", 0)
    assert np.array_equal(rng_for(5, "x").permutation(10), rng_for(5, "x").permutation(10))


def test_outputs_get_the_usual_permissions_not_mkstemp_0600(tmp_path):
    write_json(tmp_path / "a.json", {})
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~mask
