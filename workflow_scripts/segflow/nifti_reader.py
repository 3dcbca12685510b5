"""Reading a NIfTI volume's stored values once, fast: zlib straight into the final buffer (preprocess_case)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_voxels(nii) -> tuple[np.ndarray, tuple[float, float] | None]:
    """The stored voxel values, read and inflated once, and the NIfTI scaling (slope, inter) if not identity.

    Unscaled float64 comes back as float32: the chain works in float32 anyway (MONAI's loader casts), and the
    volume then takes half the memory from the moment it is read.
    """
    proxy = nii.dataobj
    if not hasattr(proxy, "get_unscaled"):  # an in-memory image
        return np.asanyarray(proxy), None
    slope, inter = float(proxy.slope), float(proxy.inter)
    scaling = None if (slope, inter) == (1.0, 0.0) else (slope, inter)
    if isinstance(proxy.file_like, (str, Path)) and str(proxy.file_like).endswith(".gz"):
        narrow = scaling is None and np.dtype(proxy.dtype).kind == "f" and np.dtype(proxy.dtype).itemsize > 4
        return _inflate_stored(proxy, narrow), scaling
    return proxy.get_unscaled(), scaling  # uncompressed: nibabel memory-maps it


def _inflate_stored(proxy, narrow: bool) -> np.ndarray:
    """The stored array of a .nii.gz, inflated by zlib straight into its final buffer (float32 if ``narrow``).

    nibabel reads through Python's GzipFile, which (before Python 3.12) has no readinto of its own: the whole
    volume is inflated into one bytes object and then copied, so reading holds it twice and pays a Python call
    per 8 KiB of data. This holds it once and calls zlib per 16 MiB.
    """
    dtype, count = np.dtype(proxy.dtype), int(np.prod(proxy.shape))
    pieces = _inflated(proxy.file_like, int(proxy.offset), count * dtype.itemsize)
    if not narrow:
        buffer = bytearray(count * dtype.itemsize)
        at = 0
        for piece in pieces:
            buffer[at : at + len(piece)] = piece
            at += len(piece)
        return np.ndarray(proxy.shape, dtype=dtype, buffer=buffer, order=proxy.order)
    flat, at, carry = np.empty(count, dtype=np.float32), 0, b""
    for piece in pieces:  # pieces need not end on a value boundary: carry the partial value over
        data = carry + piece
        whole = len(data) // dtype.itemsize
        flat[at : at + whole] = np.frombuffer(data, dtype=dtype, count=whole)
        at, carry = at + whole, data[whole * dtype.itemsize :]
    return flat.reshape(proxy.shape, order=proxy.order)


def _inflated(path, skip: int, size: int, piece: int = 2**24):
    """Yield the decompressed bytes of a gzip file after its first ``skip`` bytes (the header), ``size`` in all.

    Reads on to the end of the gzip member so that zlib checks its CRC; multi-member files are followed.
    """
    import zlib

    left, decompressor = size, zlib.decompressobj(wbits=31)
    with open(path, "rb") as handle:
        while not (decompressor.eof and left == 0):
            if decompressor.eof:  # the next member of a concatenated gzip file
                data, decompressor = decompressor.unused_data, zlib.decompressobj(wbits=31)
                data = data or handle.read(piece // 4)
            else:
                data = decompressor.unconsumed_tail or handle.read(piece // 4)
            if not data:
                raise EOFError(f"{path}: compressed data ends before the image does (truncated file?)")
            chunk = memoryview(decompressor.decompress(data, piece))
            dropped = min(skip, len(chunk))
            taken = min(len(chunk) - dropped, left)
            skip, left = skip - dropped, left - taken
            if taken:
                yield chunk[dropped : dropped + taken]
