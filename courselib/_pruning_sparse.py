"""Does pruning save space and time? Dense versus CSR storage (private; public in :mod:`courselib.pruning`).

The section "Does this really save space or time?" of the chapter *Optimal Brain Damage* (book section
``obd-sparse-storage``):
:func:`storage_bytes` counts the bytes of a weight matrix stored densely or in compressed sparse rows (book
Eq. ``obd-csr-bytes``), :func:`dense_vs_csr` measures both and times a product with each.
"""

from __future__ import annotations

import warnings

import torch

from ._validation import Options, check_params
from .measure import time_call


def storage_bytes(weight, fmt: str = "dense", *, value_bytes: int = 4, index_bytes: int = 4) -> int:
    """Bytes to store a 2-D weight matrix densely or in CSR (book Eq. ``obd-csr-bytes``).

    Dense: ``rows * cols * value_bytes``. CSR: ``nnz * (value_bytes + index_bytes)`` (values and
    column indices) ``+ (rows + 1) * index_bytes`` (row pointers).
    """
    check_params(dict(fmt=fmt), {"fmt": Options(("dense", "csr"))})
    w = torch.as_tensor(weight)
    if w.dim() != 2:
        raise ValueError(f"weight must be 2-D, got shape {tuple(w.shape)}")
    rows, cols = w.shape
    if fmt == "dense":
        return rows * cols * value_bytes
    nnz = int((w != 0).sum())
    return nnz * (value_bytes + index_bytes) + (rows + 1) * index_bytes


def dense_vs_csr(weight: torch.Tensor, x: torch.Tensor, *, repeats: int = 20, num_threads: int = 1) -> dict:
    """Size and median time of ``x @ weight.T`` with the weight dense versus in CSR (torch.sparse).

    Returns ``{"dense_bytes", "csr_bytes", "dense_s", "csr_s", "density"}`` (torch threads fixed
    to ``num_threads`` while timing). Used in the section "Does this really save space/time?".
    """
    w = torch.as_tensor(weight)
    if w.dim() != 2 or x.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"need weight (out, in) and x (batch, in); got {tuple(w.shape)} and {tuple(x.shape)}")
    with warnings.catch_warnings():  # "sparse CSR support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        w_csr = w.to_sparse_csr()
    xt = x.T.contiguous()
    with torch.inference_mode():
        dense_s = time_call(lambda: w @ xt, repeats=repeats, num_threads=num_threads)
        csr_s = time_call(lambda: w_csr @ xt, repeats=repeats, num_threads=num_threads)
    return {
        "dense_bytes": storage_bytes(w, "dense", value_bytes=w.element_size()),
        "csr_bytes": storage_bytes(
            w, "csr", value_bytes=w.element_size(), index_bytes=w_csr.col_indices().element_size()
        ),
        "dense_s": dense_s,
        "csr_s": csr_s,
        "density": float((w != 0).float().mean()),
    }
