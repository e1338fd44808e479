"""Memory representation: bytes per value, packed bits, and a model's size on disk.

Chapter "Why on-device machine learning" (syllabus part 0). An ``int32`` or ``float32`` takes 4 bytes,
a ``float64`` 8, a ``bool`` stored naively one byte, and a bit packed eight to a byte one eighth of a
byte: binarizing float32 values cuts memory 4x as bool bytes and 32x as packed bits (:eq:`intro-ratio`).
"""

from __future__ import annotations

import numpy as np
import torch

from .measure import file_bytes

__all__ = [
    "REPRESENTATIONS",
    "bytes_per_value",
    "measure_representations",
    "compression_ratio",
    "packed_bytes",
    "popcount",
    "hamming_distance_int",
    "model_size_on_disk",
]

#: The representations the chapter compares, with their numpy dtype (``None`` = packed bits).
REPRESENTATIONS = {
    "int32": np.int32,
    "float32": np.float32,
    "float64": np.float64,
    "bool": np.bool_,
    "packed bits": None,
}


def bytes_per_value(representation: str) -> float:
    """Bytes one value occupies in ``representation`` (one of :data:`REPRESENTATIONS`).

    >>> bytes_per_value("float32"), bytes_per_value("packed bits")
    (4.0, 0.125)
    """
    if representation not in REPRESENTATIONS:
        raise ValueError(f"unknown representation {representation!r}; choose from {list(REPRESENTATIONS)}")
    dtype = REPRESENTATIONS[representation]
    return 0.125 if dtype is None else float(np.dtype(dtype).itemsize)


def packed_bytes(n_values: int) -> int:
    """Bytes needed to store ``n_values`` bits packed eight to a byte: ``ceil(n / 8)``.

    >>> packed_bytes(8), packed_bytes(9)
    (1, 2)
    """
    if n_values < 0:
        raise ValueError(f"n_values must be >= 0, got {n_values}")
    return -(-int(n_values) // 8)  # integer ceiling: exact for any n (n / 8 is a float past 2**53)


def measure_representations(values: np.ndarray) -> list[dict]:
    """Store the same values in every representation and measure the real arrays' ``nbytes``.

    ``values`` are real numbers; the binary representations keep their sign, bit 1 where ``x >= 0``
    (``sign(0) = +1``, the convention of the whole book).

    Returns
    -------
    list of dict
        One row per representation: ``representation``, ``nbytes`` (measured), ``bytes_per_value``
        and ``ratio_vs_float32``.
    """
    values = np.asarray(values)
    if values.size == 0:
        raise ValueError("values is empty")
    n = values.size
    arrays = {
        "int32": values.astype(np.int32),
        "float32": values.astype(np.float32),
        "float64": values.astype(np.float64),
        "bool": values >= 0,
        "packed bits": np.packbits((values >= 0).ravel(), bitorder="little"),
    }
    f32 = arrays["float32"].nbytes
    return [
        {
            "representation": name,
            "nbytes": int(a.nbytes),
            "bytes_per_value": a.nbytes / n,
            "ratio_vs_float32": f32 / a.nbytes,
        }
        for name, a in arrays.items()
    ]


def compression_ratio(source: str, target: str) -> float:
    """How many times smaller ``target`` is than ``source`` per value (float32 -> packed bits: 32)."""
    return bytes_per_value(source) / bytes_per_value(target)


def popcount(x: int) -> int:
    """Number of 1 bits of a non-negative integer."""
    if x < 0:
        raise ValueError("popcount is defined here for non-negative integers")
    return int(x).bit_count()


def hamming_distance_int(a: int, b: int) -> int:
    """Hamming distance of two binary codes held in Python integers: ``popcount(a XOR b)``."""
    return popcount(a ^ b)


def _save_float32(model, path) -> None:
    torch.save({k: v.detach().float() for k, v in model.state_dict().items()}, path)


def _save_packed_signs(model, path) -> None:
    arrays = {}
    for name, p in model.state_dict().items():
        a = p.detach().cpu().numpy()
        if a.ndim >= 2:
            arrays[name] = np.packbits((a >= 0).ravel(), bitorder="little")
            arrays[name + ".shape"] = np.asarray(a.shape, dtype=np.int32)
        else:
            arrays[name] = a.astype(np.float32)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def model_size_on_disk(model, fmt: str = "float32") -> int:
    """Write a torch model's parameters to a temporary file and return the file's size in bytes.

    Parameters
    ----------
    model : torch.nn.Module
    fmt : {"float32", "packed bits"}
        ``"float32"`` saves the ``state_dict`` (every entry cast to float32) with ``torch.save``.
        ``"packed bits"`` keeps only the sign of every weight matrix/kernel, bit 1 where ``w >= 0``
        (``sign(0) = +1``), packed eight to a byte (``np.savez``); biases and other 1-D parameters
        stay float32, as in BinaryConnect.

    Returns
    -------
    int
        Measured with :func:`courselib.measure.file_bytes`.
    """
    if fmt not in ("float32", "packed bits"):
        raise ValueError(f"fmt must be 'float32' or 'packed bits', got {fmt!r}")
    return file_bytes(model, _save_float32 if fmt == "float32" else _save_packed_signs)
