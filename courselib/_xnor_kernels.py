"""Numba kernels for XNOR-popcount products on packed binary codes (private helpers).

The public entry points live in :mod:`courselib.binaryconnect`; this module only holds the
compiled inner loops. Codes are rows of 64-bit words (``uint64``), one bit per +-1 value
(bit 1 <-> +1, bit 0 <-> -1). For two rows ``a`` and ``b`` of ``n`` values,

    a . b = n - 2 * popcount(a XOR b)

because every agreeing position contributes +1 and every disagreeing one -1. The padding bits
beyond ``n`` are zero in both operands, so their XOR is zero and they never count.

``popcount`` is LLVM's ``ctpop`` intrinsic, which compiles to the CPU's ``popcnt`` instruction
(numba compiles for the host CPU). The loops are serial (no ``prange``): on a shared 2-core
machine a tight single-threaded loop is the honest comparison with a single-threaded BLAS call.
When numba is unavailable, :mod:`courselib.binaryconnect` falls back to ``np.bitwise_count``.
"""

from __future__ import annotations

import numpy as np

try:  # pragma: no cover - exercised implicitly wherever numba is installed
    from llvmlite import ir  # noqa: F401
    from numba import njit, types
    from numba.extending import intrinsic

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    HAVE_NUMBA = False


if HAVE_NUMBA:

    @intrinsic
    def _popcount64(typingctx, x):
        """LLVM ``ctpop`` on a uint64 (one ``popcnt`` instruction on x86-64)."""
        sig = types.uint64(types.uint64)

        def codegen(context, builder, signature, args):
            return builder.ctpop(args[0])

        return sig, codegen

    @njit(nogil=True, fastmath=False)
    def xnor_matmul_words(a, b, n_bits):
        """(n_a, n_b) int32 matrix of a_i . b_j for uint64 word rows ``a`` (n_a, w), ``b`` (n_b, w)."""
        n_a, n_w = a.shape
        n_b = b.shape[0]
        out = np.empty((n_a, n_b), dtype=np.int32)
        for i in range(n_a):
            for j in range(n_b):
                c = np.uint64(0)
                for k in range(n_w):
                    c += _popcount64(a[i, k] ^ b[j, k])
                out[i, j] = n_bits - 2 * np.int32(c)
        return out

    @njit(nogil=True, fastmath=False)
    def xnor_matmul_words_masked(a, a_mask, b):
        """Like :func:`xnor_matmul_words` but only positions where ``a_mask`` has a 1 bit count.

        ``a_mask`` (n_a, w) marks the valid positions of each row of ``a`` (e.g. the non-padding
        positions of an im2col patch); a padded position contributes 0, as a zero input does in
        ``F.conv2d``. Result: n_valid_i - 2 * popcount((a_i XOR b_j) AND mask_i).
        """
        n_a, n_w = a.shape
        n_b = b.shape[0]
        out = np.empty((n_a, n_b), dtype=np.int32)
        for i in range(n_a):
            n_valid = np.uint64(0)
            for k in range(n_w):
                n_valid += _popcount64(a_mask[i, k])
            for j in range(n_b):
                c = np.uint64(0)
                for k in range(n_w):
                    c += _popcount64((a[i, k] ^ b[j, k]) & a_mask[i, k])
                out[i, j] = np.int32(n_valid) - 2 * np.int32(c)
        return out
