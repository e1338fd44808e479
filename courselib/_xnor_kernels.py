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
    from numba import njit

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    HAVE_NUMBA = False


if HAVE_NUMBA:
    # the same one-instruction popcount as the Hamming search kernels
    from .binary_codes import _popcount64

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


if HAVE_NUMBA:

    @njit(nogil=True, fastmath=False)
    def pack_channels(x, n_words):
        """Pack a float (N, C, H, W) array of +-1 values along C: uint64 (N, H, W, n_words), bit 1 <-> +1.

        Channel ``c`` goes to bit ``c % 64`` of word ``c // 64``; unused high bits stay 0.
        """
        n, c, h, w = x.shape
        out = np.zeros((n, h, w, n_words), dtype=np.uint64)
        for i in range(n):
            for y in range(h):
                for z in range(w):
                    for word in range(n_words):
                        acc = np.uint64(0)
                        for b in range(min(64, c - 64 * word)):
                            if x[i, 64 * word + b, y, z] > 0:
                                acc |= np.uint64(1) << np.uint64(b)
                        out[i, y, z, word] = acc
        return out

    @njit(nogil=True, fastmath=False)
    def binary_conv_packed(xp, wp, n_channels, stride, padding, h_out, w_out):
        """Direct binary convolution on channel-packed words (im2col fused into the loop).

        ``xp``: (N, H, W, n_words) packed inputs from :func:`pack_channels`; ``wp``: (kh, kw,
        n_words, O) packed filters (filters last, so the innermost loop runs over contiguous
        filters and LLVM can vectorize the popcounts). Every kernel tap (ky, kx) inside the image
        contributes ``n_channels - 2 popcount(x_word XOR w_word)`` summed over the words; taps on
        the zero padding contribute 0, exactly as in ``F.conv2d``. Returns int32 (N, O, h_out, w_out).
        """
        n, h, w, n_w = xp.shape
        kh, kw, _, o = wp.shape
        out = np.empty((n, o, h_out, w_out), dtype=np.int32)
        acc = np.empty(o, dtype=np.int64)
        for i in range(n):
            for oy in range(h_out):
                y0 = oy * stride - padding
                for ox in range(w_out):
                    x0 = ox * stride - padding
                    acc[:] = 0
                    n_taps = 0
                    for ky in range(kh):
                        y = y0 + ky
                        if y < 0 or y >= h:
                            continue
                        for kx in range(kw):
                            z = x0 + kx
                            if z < 0 or z >= w:
                                continue
                            n_taps += 1
                            for k in range(n_w):
                                xw = xp[i, y, z, k]
                                for f in range(o):
                                    acc[f] += _popcount64(xw ^ wp[ky, kx, k, f])
                    base = n_taps * n_channels
                    for f in range(o):
                        out[i, f, oy, ox] = base - 2 * acc[f]
        return out
