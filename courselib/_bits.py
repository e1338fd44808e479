"""Bit-level kernels behind :mod:`courselib.binary_codes` and :mod:`courselib.binaryconnect` (private).

One home for everything that works on packed bits below the public functions:

- the validator of packed codes, :func:`check_codes`, and the backend choice, :func:`choose_backend`
  (``"auto"``, ``"numba"`` or ``"numpy"``);
- :func:`to_words` -- packed ``uint8`` codes seen as rows of 64-bit words (or, unpadded, of the
  widest unsigned words that divide a row);
- the LLVM ``ctpop`` intrinsic :func:`popcount` (one ``popcnt`` instruction on x86-64, or a
  vectorized bit count when LLVM vectorizes the loop around it; numba compiles for the host CPU);
- Hamming kernels: the distance matrix (:func:`hamming_matrix`) and the exact top-k
  (:func:`hamming_topk`, a counting selection over integer distances), ``popcount(a XOR b)`` (book
  Eq. ``binary-codes-hamming``);
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


def check_codes(codes, name: str = "codes") -> np.ndarray:
    """``codes`` as an array, checked to be packed codes: non-empty, 2-D, ``uint8`` (``pack_codes`` output).

    The one validator of packed codes, behind every public function that takes them
    (:mod:`courselib.binary_codes`, :mod:`courselib.binaryconnect`); ``name`` is the argument's name in
    the message.
    """
    arr = np.asarray(codes)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D uint8 array of shape (n, n_bytes), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"{name} must be packed uint8 codes (pack_codes output), got dtype {arr.dtype}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {arr.shape}")
    return arr


def to_words(codes: np.ndarray, n_bits: int | None = None, *, pad: bool = True) -> np.ndarray:
    """View packed ``uint8`` codes ``(n, n_bytes)`` as rows of unsigned machine words.

    ``pad=True``: ``uint64`` words ``(n, ceil(n_bytes / 8))``, each row zero-padded to a multiple of 8
    bytes (no copy when it already is one and the array is C-contiguous). With ``n_bits`` given and not a
    multiple of 8, the unused high bits of the last byte are cleared too (a copy), so codes whose padding
    bits are not 0 still give exact results.

    ``pad=False``: the widest unsigned words that divide a row -- ``uint64`` when ``n_bytes % 8 == 0``,
    else ``uint32``, ``uint16`` or bytes -- never padded, so a C-contiguous database is read in place
    (the top-k search). ``n_bits`` must then be ``None``.
    """
    n, n_bytes = codes.shape
    if not pad:
        if n_bits is not None:
            raise ValueError(f"to_words(pad=False) reads the codes as they are; got n_bits={n_bits}")
        word = next(w for w in (8, 4, 2, 1) if n_bytes % w == 0)
        return np.ascontiguousarray(codes).view(f"<u{word}")
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
#: Codes per step of the top-k scan: the distance loops over SUB codes have a constant trip count.
SUB = 128
#: Bytes of database codes per block of the top-k scan (copied word-major, kept in the L2 cache).
BLOCK_BYTES = 1 << 17
#: Bytes of per-query selection state (histogram and candidate buffer) held at once by one thread.
STATE_BYTES = 1 << 23

if HAVE_NUMBA:

    @intrinsic
    def popcount(typingctx, x):
        """The LLVM ``ctpop`` intrinsic on an unsigned integer of any width, same type out.

        One ``popcnt`` instruction on x86-64; in a loop that LLVM vectorizes, a SIMD bit count
        (AVX2's nibble lookup with ``vpshufb``, AVX-512's ``vpopcntq``, ARM's ``cnt``).
        """
        if not isinstance(x, nbtypes.Integer) or x.signed:
            return None
        sig = x(x)

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
                    s += np.int64(popcount(qw[i, t] ^ dw[j, t]))  # int64 + uint64 would be float64
                out[i, j] = s

    # Exact top-k as a counting selection (book section ``binary-codes-topk``). A Hamming distance is an
    # integer in 0..n_bits, so each query keeps a histogram of the distances it admitted and the threshold
    # ``thr``: the smallest distance with at least k admitted candidates at or below it (n_bits + 1 until
    # k are in). The database is scanned in index order and a candidate is admitted only when d < thr: one
    # at d == thr comes after k others at or below thr, so it loses the tie (lower index first). The
    # candidates wait in a small buffer, in index order; the answer is a stable counting sort of it.

    @nb.njit(cache=True, nogil=True, inline="always")
    def _admit(d, j, st, hist, cd, ci, k):  # pragma: no cover - compiled
        # st = [thr, number admitted at distance <= thr, buffer length]; returns the new threshold
        thr = st[0]
        s = st[2]
        if s == cd.shape[0]:  # buffer full: drop the candidates behind the threshold, keep index order
            w = 0
            for r in range(s):
                if cd[r] <= thr:
                    cd[w] = cd[r]
                    ci[w] = ci[r]
                    w += 1
            s = w
        cd[s] = d
        ci[s] = j
        st[2] = s + 1
        hist[d] += 1
        c = st[1] + 1
        while c - hist[thr] >= k:  # at least k below thr: the threshold moves down
            c -= hist[thr]
            thr -= 1
        st[0] = thr
        st[1] = c
        return thr

    @nb.njit(cache=True, nogil=True)
    def _scan_block(a, wt, m, j0, k, dist, st, hist, cd, ci):  # pragma: no cover - compiled
        # query words ``a`` against the first m codes of a word-major block ``wt`` (n_w, B), database
        # index j0 onwards, SUB codes at a time: the distances of SUB codes (a loop that LLVM vectorizes,
        # SUB a compile-time constant), the number of them below the threshold, and only when there is
        # one, the admissions in index order
        n_w = wt.shape[0]
        thr = st[0]
        for c0 in range(0, m, SUB):
            at = a[0]
            w = wt[0, c0 : c0 + SUB]
            for j in range(SUB):
                dist[j] = np.int64(popcount(at ^ w[j]))
            for t in range(1, n_w):
                at = a[t]
                w = wt[t, c0 : c0 + SUB]
                for j in range(SUB):
                    dist[j] += np.int64(popcount(at ^ w[j]))
            for j in range(m - c0, SUB):  # past the last code (last block only): never admitted
                dist[j] = hist.shape[0]
            below = 0
            for j in range(SUB):
                if dist[j] < thr:
                    below += 1
            if below:
                for j in range(SUB):
                    if dist[j] < thr:
                        thr = _admit(dist[j], j0 + c0 + j, st, hist, cd, ci, k)

    @nb.njit(cache=True, nogil=True)
    def _collect(st, hist, cd, ci, k, out_d, out_i):  # pragma: no cover - compiled
        # stable counting sort of the buffered candidates at distance <= thr; the first k are the answer
        thr = st[0]
        pos = np.empty(thr + 1, dtype=np.int64)
        acc = 0
        for t in range(thr + 1):
            pos[t] = acc
            acc += hist[t]
        for r in range(st[2]):
            d = cd[r]
            if d <= thr:
                p = pos[d]
                if p < k:
                    out_d[p] = d
                    out_i[p] = ci[r]
                pos[d] = p + 1

    @nb.njit(cache=True, nogil=True, parallel=True)
    def _hamming_topk_kernel(qw, dw, k, n_bits, out_d, out_i, n_chunks, group, block):  # pragma: no cover
        # queries split into n_chunks contiguous chunks, one per thread; within a chunk, groups of ``group``
        # queries scan the database block by block (``block`` codes, copied word-major so that the
        # distance loops read contiguous words, and reused by every query of the group from the cache)
        n_q, n_w = qw.shape
        n_d = dw.shape[0]
        cap = 2 * k + 64  # at most 2k - 1 candidates survive a compaction
        for c in nb.prange(n_chunks):
            c0 = c * n_q // n_chunks
            c1 = (c + 1) * n_q // n_chunks
            wt = np.zeros((n_w, block), dtype=dw.dtype)
            dist = np.empty(SUB, dtype=np.int64)
            for g0 in range(c0, c1, group):
                g1 = min(g0 + group, c1)
                hist = np.zeros((g1 - g0, n_bits + 2), dtype=np.int32)
                cd = np.empty((g1 - g0, cap), dtype=np.int32)
                ci = np.empty((g1 - g0, cap), dtype=np.int64)
                st = np.zeros((g1 - g0, 3), dtype=np.int64)
                st[:, 0] = n_bits + 1
                for b0 in range(0, n_d, block):
                    m = min(block, n_d - b0)
                    for j in range(m):
                        for t in range(n_w):
                            wt[t, j] = dw[b0 + j, t]
                    for i in range(g1 - g0):
                        _scan_block(qw[g0 + i], wt, m, b0, k, dist, st[i], hist[i], cd[i], ci[i])
                for i in range(g1 - g0):
                    _collect(st[i], hist[i], cd[i], ci[i], k, out_d[g0 + i], out_i[g0 + i])

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
                    c += popcount(a[i, k] ^ b[j, k])
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
                                    acc[f] += popcount(xw ^ wp[ky, kx, k, f])
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


def hamming_topk(qw: np.ndarray, dw: np.ndarray, k: int, n_bits: int, backend: str):
    """Exact top-k by (distance, lower index) of word rows: int32 distances and int64 indices ``(n_q, k)``.

    ``qw``, ``dw`` are word rows of the same unsigned type (:func:`to_words`, ``pad=False`` reads the
    database in place); ``n_bits`` bounds the distances (``8 * n_bytes``). The numba kernel is a counting
    selection (see the comment above :func:`_admit`): the queries are split into one chunk per numba
    thread (``numba.set_num_threads``), each chunk scans the database in blocks of :data:`BLOCK_BYTES`.
    """
    if backend == "numpy":
        return topk_from_distances(hamming_numpy(qw, dw), k)
    n_q, n_w = qw.shape
    dist = np.empty((n_q, k), dtype=np.int32)
    idx = np.empty((n_q, k), dtype=np.int64)
    n_chunks = min(nb.get_num_threads(), n_q)
    group = max(1, STATE_BYTES // (4 * (n_bits + 2) + 12 * (2 * k + 64) + 24))
    block = -(-max(SUB, BLOCK_BYTES // (n_w * qw.itemsize)) // SUB) * SUB
    _hamming_topk_kernel(qw, dw, k, n_bits, dist, idx, n_chunks, group, block)
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
