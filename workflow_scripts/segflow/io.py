"""Atomic file output and small readers/writers shared by every stage.

Every output is written to a temporary sibling and renamed into place only once it is complete, so a job killed
half way never leaves a file that looks finished (rename is atomic within one filesystem). A job killed with
SIGKILL cannot clean up after itself, so the next write of the same output first removes the hidden temporary
siblings such a kill left behind (Snakemake's lock ensures that no other job writes the same output meanwhile).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it onto ``final`` only if the block succeeds.

    ``suffix`` keeps the extension visible to writers that infer the format from it (``.nii.gz``, ``.png``).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(final.suffixes)
    remove_leftovers(final, f".part{suffix}")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".part{suffix}", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory next to ``final``; it replaces ``final`` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(final, ".part")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
        if final.exists():
            # Snakemake may pre-create an (empty) output directory; anything else there is stale.
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_leftovers(final: str | os.PathLike, suffix: str = ".part") -> list[Path]:
    """Delete the temporary siblings (``.NAME.*<suffix>``) that a killed write of ``final`` left; return them."""
    final = Path(final)
    pattern = os.path.join(glob.escape(str(final.parent)), f".{glob.escape(final.name)}.*{glob.escape(suffix)}")
    removed = [Path(p) for p in glob.glob(pattern)]
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return removed


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike):
    with open(path) as handle:
        return json.load(handle)


def write_table(path: str | os.PathLike, frame, sep: str = "\t", float_format: str = "%.6g") -> None:
    """Write a pandas DataFrame as TSV (or CSV with ``sep=','``) atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep=sep, index=False, float_format=float_format)


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, array)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def save_nifti(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray, header=None) -> None:
    """Write a NIfTI volume atomically, keeping the array dtype (int16 HU, uint8 labels)."""
    import nibabel as nib

    image = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64), header=header)
    image.set_data_dtype(array.dtype)
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(image, tmp)
