"""Bit-level kernels behind :mod:`courselib.binary_codes` and :mod:`courselib.binaryconnect` (private).

One home for everything that works on packed bits below the public functions:

- the backend choice, :func:`choose_backend` (``"auto"``, ``"numba"`` or ``"numpy"``);
- :func:`to_words` -- packed ``uint8`` codes seen as rows of 64-bit words;
- the LLVM ``ctpop`` intrinsic :func:`popcount64` (one ``popcnt`` instruction on x86-64; numba
  compiles for the host CPU);
- Hamming kernels: the distance matrix (:func:`hamming_matrix`) and the exact top-k
  (:func:`hamming_topk`), ``popcount(a XOR b)`` (book Eq. ``binary-codes-hamming``);
- XNOR-popcount kernels for products of +-1 vectors, ``a . b = n - 2 popcount(a XOR b)`` (book Eq.
  ``bc-xnor``): :func:`xnor_matmul` on packed rows, and the channel-packed direct convolution
  (:func:`pack_channels_words`, :func:`binary_conv_words`);
- and for each kernel its NumPy fallback (``np.bitwise_count``), which gives identical results.

Bit convention (the same everywhere in courselib): bit 1 <-> +1, bit 0 <-> -1, and a real value
``w`` becomes bit 1 when ``w >= 0`` (``sign(0) = +1``). Padding bits beyond the code length are 0
in both operands, so their XOR is 0 and they never count.

The Hamming kernels are parallel (``prange``) and cached on disk (``cache=True``); the XNOR loops are
serial: on a shared 2-core machine a tight single-threaded loop is the honest comparison with a
single-threaded BLAS call. Without numba every call takes the NumPy path.
"""

from __future__ import annotations

import numpy as np

try:  # numba is a dependency; if it is missing or broken, every kernel falls back to NumPy
    import numba as nb
    from numba import types as nbtypes
    from numba.extending import intrinsic

    HAVE_NUMBA = True
except Exception:  # pragma: no cover - numba missing or broken
    HAVE_NUMBA = False

BACKENDS = ("auto", "numba", "numpy")


def choose_backend(backend: str, *, auto_numba: bool = True) -> str:
    """Resolve ``backend`` to ``"numba"`` or ``"numpy"``.

    ``"auto"`` gives ``"numba"`` when numba is available and ``auto_numba`` is true (the caller's
    size rule, e.g. "enough pairs to pay for the JIT compilation"), else ``"numpy"``. ``"numba"``
    without numba raises ``ValueError``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto', 'numba' or 'numpy', got {backend!r}")
    if backend == "numba" and not HAVE_NUMBA:
        raise ValueError("backend='numba' needs numba, which is not installed")
    if backend == "auto":
        return "numba" if (auto_numba and HAVE_NUMBA) else "numpy"
    return backend


def to_words(codes: np.ndarray, n_bits: int | None = None) -> np.ndarray:
    """View packed ``uint8`` codes ``(n, n_bytes)`` as ``uint64`` words ``(n, ceil(n_bytes / 8))``.

    Each row is zero-padded to a multiple of 8 bytes (no copy when it already is one and the array is
    C-contiguous). With ``n_bits`` given and not a multiple of 8, the unused high bits of the last
    byte are cleared too (a copy), so codes whose padding bits are not 0 still give exact results.
    """
    n, n_bytes = codes.shape
    n_words = (n_bytes + 7) // 8
    partial = n_bits is not None and n_bits % 8 != 0
    if n_bytes == 8 * n_words and not partial and codes.flags.c_contiguous:
        return codes.view(np.uint64)  # zero-copy fast path
    padded = np.zeros((n, 8 * n_words), dtype=np.uint8)
    padded[:, :n_bytes] = codes
    if partial:
        padded[:, n_bytes - 1] &= np.uint8((1 << (n_bits % 8)) - 1)
    return padded.view(np.uint64)


# ----------------------------------------------------------------------------------------------------
# NumPy fallbacks
# ----------------------------------------------------------------------------------------------------
def hamming_numpy(qw: np.ndarray, dw: np.ndarray, block: int = 256) -> np.ndarray:
    """int32 ``(n_q, n_d)`` Hamming distances between uint64 word rows, with ``np.bitwise_count``."""
    out = np.empty((qw.shape[0], dw.shape[0]), dtype=np.int32)
    for start in range(0, qw.shape[0], block):
        x = qw[start : start + block, None, :] ^ dw[None, :, :]
        out[start : start + block] = np.bitwise_count(x).sum(axis=2, dtype=np.int32)
    return out


def topk_from_distances(dist: np.ndarray, k: int):
    """Exact top-k of each row by (distance, index): sorted, ties broken by the lower index."""
    n_db = dist.shape[1]
    key = dist.astype(np.int64) * n_db + np.arange(n_db, dtype=np.int64)
    if k < n_db:
        part = np.argpartition(key, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(n_db), key.shape).copy()
    order = np.argsort(np.take_along_axis(key, part, axis=1), axis=1)
    idx = np.take_along_axis(part, order, axis=1).astype(np.int64)
    return np.take_along_axis(dist, idx, axis=1).astype(np.int32), idx


def xnor_numpy(aw: np.ndarray, bw: np.ndarray, n_bits: int, a_mask: np.ndarray | None = None, chunk: int = 256):
    """int32 ``(n_a, n_b)`` products ``n_bits - 2 popcount(a XOR b)`` of word rows, with ``np.bitwise_count``.

    With ``a_mask`` (word rows like ``aw``), only the positions where the mask has a 1 bit count:
    ``n_valid_i - 2 popcount((a_i XOR b_j) AND mask_i)`` (a masked position contributes 0, as a zero
    input does in ``F.conv2d``).
    """
    out = np.empty((aw.shape[0], bw.shape[0]), dtype=np.int32)
    for s in range(0, aw.shape[0], chunk):
        x = aw[s : s + chunk, None, :] ^ bw[None, :, :]
        if a_mask is None:
            out[s : s + chunk] = n_bits - 2 * np.bitwise_count(x).sum(-1, dtype=np.int32)
        else:
            m = a_mask[s : s + chunk]
            n_valid = np.bitwise_count(m).sum(-1, dtype=np.int32)[:, None]
            out[s : s + chunk] = n_valid - 2 * np.bitwise_count(x & m[:, None, :]).sum(-1, dtype=np.int32)
    return out


# ----------------------------------------------------------------------------------------------------
# numba kernels (compiled lazily on first use)
# ----------------------------------------------------------------------------------------------------
if HAVE_NUMBA:

    @intrinsic
    def popcount64(typingctx, x):
        """The LLVM ``ctpop`` intrinsic on a uint64 (one ``popcnt`` instruction on x86-64)."""
        sig = nbtypes.uint64(nbtypes.uint64)

        def codegen(context, builder, signature, args):
            return builder.ctpop(args[0])

        return sig, codegen

    @nb.njit(cache=True, nogil=True, parallel=True)
    def _hamming_matrix_kernel(qw, dw, out):  # pragma: no cover - compiled
        n_q, n_w = qw.shape
        n_d = dw.shape[0]
        for i in nb.prange(n_q):
            for j in range(n_d):
                s = 0
                for t in range(n_w):
                    s += popcount64(qw[i, t] ^ dw[j, t])
                out[i, j] = s

    @nb.njit(cache=True, nogil=True, inline="always")
    def _sift_down(hd, hi, k):  # pragma: no cover - compiled
        # restore the max-heap on key (distance, index) after the root was replaced
        pos = 0
        d0 = hd[0]
        i0 = hi[0]
        while True:
            child = 2 * pos + 1
            if child >= k:
                break
            if child + 1 < k and (
                hd[child + 1] > hd[child] or (hd[child + 1] == hd[child] and hi[child + 1] > hi[child])
            ):
                child += 1
            if hd[child] > d0 or (hd[child] == d0 and hi[child] > i0):
                hd[pos] = hd[child]
                hi[pos] = hi[child]
                pos = child
            else:
                break
        hd[pos] = d0
        hi[pos] = i0

    @nb.njit(cache=True, nogil=True)
    def _topk_block(qw, dw, k, dist, idx, q_block, d_block):  # pragma: no cover - compiled
        n_q, n_w = qw.shape
        n_d = dw.shape[0]
        for q0 in range(0, n_q, q_block):
            q1 = min(q0 + q_block, n_q)
            for d0 in range(0, n_d, d_block):
                d1 = min(d0 + d_block, n_d)
                for i in range(q0, q1):
                    hd = dist[i]
                    hi = idx[i]
                    worst = hd[0]
                    if n_w == 1:
                        a = qw[i, 0]
                        for j in range(d0, d1):
                            s = popcount64(a ^ dw[j, 0])
                            if s < worst:
                                hd[0] = s
                                hi[0] = j
                                _sift_down(hd, hi, k)
                                worst = hd[0]
                    else:
                        for j in range(d0, d1):
                            s = 0
                            for t in range(n_w):
                                s += popcount64(qw[i, t] ^ dw[j, t])
                            if s < worst:
                                hd[0] = s
                                hi[0] = j
                                _sift_down(hd, hi, k)
                                worst = hd[0]

    @nb.njit(cache=True, nogil=True, parallel=True)
    def _hamming_topk_kernel(qw, dw, k, dist, idx, q_block, d_block):  # pragma: no cover - compiled
        n_q = qw.shape[0]
        big = 1 << 30
        for i in range(n_q):
            for t in range(k):
                dist[i, t] = big
                idx[i, t] = -1
        n_chunks = (n_q + q_block - 1) // q_block
        for c in nb.prange(n_chunks):
            a = c * q_block
            b = min(a + q_block, n_q)
            _topk_block(qw[a:b], dw, k, dist[a:b], idx[a:b], q_block, d_block)
        # heap -> sorted by (distance, index): pop the maximum k times
        for i in nb.prange(n_q):
            hd = dist[i]
            hi = idx[i]
            for end in range(k - 1, 0, -1):
                d_top = hd[0]
                i_top = hi[0]
                hd[0] = hd[end]
                hi[0] = hi[end]
                hd[end] = d_top
                hi[end] = i_top
                _sift_down(hd, hi, end)

    @nb.njit(nogil=True, fastmath=False)
    def _xnor_matmul_kernel(a, b, n_bits):  # pragma: no cover - compiled
        """(n_a, n_b) int32 matrix of a_i . b_j for uint64 word rows ``a`` (n_a, w), ``b`` (n_b, w)."""
        n_a, n_w = a.shape
        n_b = b.shape[0]
        out = np.empty((n_a, n_b), dtype=np.int32)
        for i in range(n_a):
            for j in range(n_b):
                c = np.uint64(0)
                for k in range(n_w):
                    c += popcount64(a[i, k] ^ b[j, k])
                out[i, j] = n_bits - 2 * np.int32(c)
        return out

    @nb.njit(nogil=True, fastmath=False)
    def _pack_channels_kernel(x, n_words):  # pragma: no cover - compiled
        n, c, h, w = x.shape
        out = np.zeros((n, h, w, n_words), dtype=np.uint64)
        for i in range(n):
            for y in range(h):
                for z in range(w):
                    for word in range(n_words):
                        acc = np.uint64(0)
                        for b in range(min(64, c - 64 * word)):
                            if x[i, 64 * word + b, y, z] >= 0:  # sign(0) = +1 -> bit 1
                                acc |= np.uint64(1) << np.uint64(b)
                        out[i, y, z, word] = acc
        return out

    @nb.njit(nogil=True, fastmath=False)
    def _binary_conv_kernel(xp, wp, n_channels, stride, padding, h_out, w_out):  # pragma: no cover - compiled
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
                                    acc[f] += popcount64(xw ^ wp[ky, kx, k, f])
                    base = n_taps * n_channels
                    for f in range(o):
                        out[i, f, oy, ox] = base - 2 * acc[f]
        return out


def _require_numba(what: str) -> None:
    if not HAVE_NUMBA:
        raise ValueError(f"{what} needs numba, which is not installed")


# ----------------------------------------------------------------------------------------------------
# Entry points used by the public modules
# ----------------------------------------------------------------------------------------------------
def hamming_matrix(qw: np.ndarray, dw: np.ndarray, backend: str) -> np.ndarray:
    """All Hamming distances between word rows, int32 ``(n_q, n_d)``; ``backend`` is ``"numba"`` or ``"numpy"``."""
    if backend == "numpy":
        return hamming_numpy(qw, dw)
    out = np.empty((qw.shape[0], dw.shape[0]), dtype=np.int32)
    _hamming_matrix_kernel(qw, dw, out)
    return out


def hamming_topk(qw: np.ndarray, dw: np.ndarray, k: int, backend: str, *, q_block: int = 64, d_block: int = 8192):
    """Exact top-k by (distance, lower index) of word rows: int32 distances and int64 indices ``(n_q, k)``.

    The numba kernel scans the database in blocks of ``d_block`` codes for ``q_block`` queries at a time
    (so both stay in cache) and keeps a bounded max-heap of size ``k`` per query.
    """
    if backend == "numpy":
        return topk_from_distances(hamming_numpy(qw, dw), k)
    dist = np.empty((qw.shape[0], k), dtype=np.int32)
    idx = np.empty((qw.shape[0], k), dtype=np.int64)
    _hamming_topk_kernel(qw, dw, k, dist, idx, q_block, d_block)
    return dist, idx


def xnor_matmul(aw: np.ndarray, bw: np.ndarray, n_bits: int, backend: str, a_mask: np.ndarray | None = None):
    """int32 ``(n_a, n_b)`` products of +-1 vectors given as word rows (see :func:`xnor_numpy`).

    The masked form is NumPy only (it serves the im2col convolution, whose numba path is
    :func:`binary_conv_words`).
    """
    if backend == "numpy" or a_mask is not None:
        return xnor_numpy(aw, bw, n_bits, a_mask=a_mask)
    return _xnor_matmul_kernel(aw, bw, n_bits)


def pack_channels_words(x: np.ndarray) -> np.ndarray:
    """Pack a float (N, C, H, W) array along C into uint64 (N, H, W, ceil(C / 64)): bit 1 where ``x >= 0``.

    Channel ``c`` goes to bit ``c % 64`` of word ``c // 64``; unused high bits stay 0. Needs numba.
    """
    _require_numba("pack_channels")
    x = np.ascontiguousarray(x)
    return _pack_channels_kernel(x, -(-x.shape[1] // 64))


def binary_conv_words(xp, wp, n_channels: int, stride: int, padding: int, h_out: int, w_out: int) -> np.ndarray:
    """Direct binary convolution on channel-packed words (im2col fused into the loop); int32 (N, O, h_out, w_out).

    ``xp``: (N, H, W, n_words) packed inputs; ``wp``: (kh, kw, n_words, O) packed filters (filters
    last, so the innermost loop runs over contiguous filters and LLVM can vectorize the popcounts).
    Every kernel tap inside the image contributes ``n_channels - 2 popcount(x_word XOR w_word)`` summed
    over the words; taps on the zero padding contribute 0, exactly as in ``F.conv2d``. Needs numba.
    """
    _require_numba("binary_conv2d_packed")
    return _binary_conv_kernel(xp, wp, n_channels, stride, padding, h_out, w_out)
