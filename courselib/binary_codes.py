"""Binary codes and exact Hamming search (chapter "Binary codes and Hamming search").

The pipeline of the chapter, one function per step:

1. :class:`MeanThresholdBinarizer` -- bit ``i`` of a code is 1 where feature ``x_i`` is *larger* than
   its training-set mean ``mu_i`` (book equation ``binary-codes-threshold``);
2. :func:`pack_codes` / :func:`unpack_codes` -- eight bits per byte, **little-endian within each byte**:
   bit ``j`` of a row is stored in byte ``j // 8`` at bit position ``j % 8`` (value ``1 << (j % 8)``),
   exactly like ``np.packbits(..., bitorder="little")`` and faiss's binary indexes; the padding bits of
   the last byte are 0;
3. :func:`hamming_distances` -- ``popcount(a XOR b)`` (book equation ``binary-codes-hamming``);
4. :func:`hamming_knn` -- exact k-nearest-neighbour search in Hamming space; the result is sorted by
   distance, ties broken by the lower database index, so it is deterministic (and equal to
   ``faiss.IndexBinaryFlat``'s result, tested).

Packed codes are ``uint8`` arrays of shape ``(n, ceil(n_bits / 8))``. The distance kernel reads them as
64-bit words (zero-padded to a multiple of 8 bytes, which does not change any distance), the k-NN kernel
as the widest words that divide a row (64-bit when ``n_bytes % 8 == 0``), in place; both count bits with
the CPU's popcount through numba (``cache=True``). Small inputs, and machines without numba, use a pure
NumPy path that gives identical results, so short chapter cells and labs do not pay the one-off JIT
compilation.

:func:`plot_neighbours` is the callback of the chapter's explorer: nearest neighbours of a digit by
Hamming distance on its threshold codes and by Euclidean distance on its pixels.
"""

from __future__ import annotations

from numbers import Integral

import matplotlib.pyplot as plt
import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from . import _bits
from ._validation import Interval, check_params
from .data import digits_split

__all__ = [
    "MeanThresholdBinarizer",
    "pack_codes",
    "unpack_codes",
    "hamming_distances",
    "hamming_knn",
    "code_bytes",
    "select_bits_by_variance",
    "plot_neighbours",
]

# Below this many (query, database) pairs the pure NumPy path is used (no JIT compilation needed).
NUMPY_PAIRS_THRESHOLD = 2_000_000


# ----------------------------------------------------------------------------------------------------
# Threshold binarization
# ----------------------------------------------------------------------------------------------------
class MeanThresholdBinarizer(TransformerMixin, BaseEstimator):
    r"""Binarize each feature at its training-set mean.

    ``fit`` learns :math:`\mu_i = \frac{1}{n}\sum_{t=1}^{n} x_{ti}` for every feature ``i``;
    ``transform`` returns the bits :math:`b_i = [x_i > \mu_i]` (book equation
    ``binary-codes-threshold``) as a 0/1 ``uint8`` array. A value exactly equal to the mean gives 0.
    This is the simplest feature quantizer of the chapter, the baseline that ITQ
    (Gong & Lazebnik, CVPR 2011) improves on.

    Attributes
    ----------
    mean_ : ndarray of shape (n_features,)
        Per-feature mean of the training data (the thresholds).
    n_features_in_ : int
        Number of features seen during ``fit``.

    Notes
    -----
    The output is always ``uint8`` whatever the input dtype; this is declared to scikit-learn through
    ``__sklearn_tags__`` (``transformer_tags.preserves_dtype = ["uint8"]``), so
    ``sklearn.utils.estimator_checks.check_estimator`` passes. Pack the bits with :func:`pack_codes`.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 2.0]])
    >>> MeanThresholdBinarizer().fit_transform(X)
    array([[0, 0],
           [0, 1],
           [1, 0]], dtype=uint8)
    """

    def fit(self, X, y=None):
        """Learn the per-feature means of ``X`` (shape ``(n_samples, n_features)``); returns ``self``."""
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=True)
        self.mean_ = X.mean(axis=0)
        return self

    def transform(self, X):
        """Return ``(X > mean_)`` as a 0/1 ``uint8`` array of shape ``(n_samples, n_features)``."""
        check_is_fitted(self, "mean_")
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return (X > self.mean_).astype(np.uint8)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["uint8"]
        return tags


# ----------------------------------------------------------------------------------------------------
# Packing
# ----------------------------------------------------------------------------------------------------
def _as_bits(bits) -> np.ndarray:
    """Validate a 2-D 0/1 array (bool, integer or float) and return it as uint8."""
    arr = np.asarray(bits)
    if arr.ndim != 2:
        raise ValueError(f"bits must be a 2-D array of shape (n, n_bits), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"bits must be non-empty, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"bits must be a numeric or boolean array, got dtype {arr.dtype}")
    if not np.all((arr == 0) | (arr == 1)):
        bad = arr[(arr != 0) & (arr != 1)].ravel()[0]
        raise ValueError(
            f"bits must contain only 0 and 1, found {bad!r}; binarize first "
            "(e.g. MeanThresholdBinarizer, or (x > 0) for sign codes)"
        )
    return arr.astype(np.uint8)


def pack_codes(bits) -> np.ndarray:
    """Pack 0/1 bits into bytes, eight bits per byte, little-endian within each byte.

    Bit ``j`` of a row goes to byte ``j // 8`` at bit position ``j % 8`` (it contributes
    ``1 << (j % 8)`` to that byte), the layout of ``np.packbits(bits, axis=1, bitorder="little")``
    and of faiss's binary indexes. The unused high bits of the last byte are 0.

    Parameters
    ----------
    bits : array_like of shape (n, n_bits)
        Bits as bool, or integers/floats equal to 0 or 1.

    Returns
    -------
    codes : ndarray of uint8, shape (n, ceil(n_bits / 8))
        The packed codes: ``n_bits / 8`` bytes per code instead of ``4 * n_bits`` for float32
        features (32x smaller when ``n_bits`` is a multiple of 8).

    Raises
    ------
    ValueError
        If ``bits`` is not 2-D, is empty, or contains values other than 0 and 1.

    Examples
    --------
    >>> pack_codes([[1, 0, 0, 0, 0, 0, 0, 0, 1, 1]])
    array([[1, 3]], dtype=uint8)
    """
    arr = _as_bits(bits)
    return np.packbits(arr, axis=1, bitorder="little")


def unpack_codes(codes, n_bits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: unpack ``uint8`` codes into 0/1 bits.

    Parameters
    ----------
    codes : ndarray of uint8, shape (n, n_bytes)
        Packed codes (little-endian within each byte).
    n_bits : int
        Number of bits per code; ``ceil(n_bits / 8)`` must equal ``n_bytes``.

    Returns
    -------
    bits : ndarray of uint8, shape (n, n_bits)

    Raises
    ------
    ValueError
        If ``codes`` is not a non-empty 2-D uint8 array or ``n_bits`` does not fit its width.
    """
    arr = _bits.check_codes(codes)
    check_params(dict(n_bits=n_bits), {"n_bits": Interval(Integral, 1, None)})
    n_bytes = arr.shape[1]
    if (int(n_bits) + 7) // 8 != n_bytes:
        raise ValueError(
            f"n_bits={n_bits} needs {(int(n_bits) + 7) // 8} bytes per code, but the codes have {n_bytes} bytes"
        )
    return np.unpackbits(arr, axis=1, count=int(n_bits), bitorder="little")


def code_bytes(n_items: int, n_bits: int) -> int:
    """Bytes needed to store ``n_items`` packed codes of ``n_bits`` bits (``n_items * ceil(n_bits / 8)``)."""
    check_params(
        dict(n_items=n_items, n_bits=n_bits),
        {"n_items": Interval(Integral, 0, None), "n_bits": Interval(Integral, 1, None)},
    )
    return int(n_items) * ((int(n_bits) + 7) // 8)


def _check_pair(query_codes, database_codes):
    q = _bits.check_codes(query_codes, "query_codes")
    db = _bits.check_codes(database_codes, "database_codes")
    if q.shape[1] != db.shape[1]:
        raise ValueError(
            f"code widths differ: query_codes have {q.shape[1]} bytes per code, database_codes have {db.shape[1]}"
        )
    return q, db


def _backend(backend: str, n_pairs: int) -> str:
    """``"auto"``: NumPy below :data:`NUMPY_PAIRS_THRESHOLD` pairs (no JIT compilation to pay), numba above."""
    return _bits.choose_backend(backend, auto_numba=n_pairs >= NUMPY_PAIRS_THRESHOLD)


def hamming_distances(query_codes, database_codes, *, backend: str = "auto") -> np.ndarray:
    """All pairwise Hamming distances between packed codes, ``popcount(a XOR b)``.

    Book equation ``binary-codes-hamming``: :math:`d_H(a, b) = \\sum_w \\mathrm{popcount}(a_w \\oplus b_w)`
    summed over the 64-bit words ``w`` of the codes.

    Parameters
    ----------
    query_codes : ndarray of uint8, shape (n_queries, n_bytes)
    database_codes : ndarray of uint8, shape (n_database, n_bytes)
        Packed codes (see :func:`pack_codes`), same width.
    backend : {"auto", "numba", "numpy"}, default "auto"
        ``"auto"`` uses NumPy for small problems and the numba kernel for large ones; results are identical.

    Returns
    -------
    distances : ndarray of int32, shape (n_queries, n_database)

    Raises
    ------
    ValueError
        If either array is empty, not 2-D ``uint8``, or the code widths differ.
    """
    q, db = _check_pair(query_codes, database_codes)
    backend = _backend(backend, q.shape[0] * db.shape[0])
    return _bits.hamming_matrix(_bits.to_words(q), _bits.to_words(db), backend)


def hamming_knn(query_codes, database_codes, k: int, *, backend: str = "auto"):
    """Exact k-nearest-neighbour search in Hamming space.

    For every query, the ``k`` database codes with the smallest Hamming distance, sorted by
    distance; ties are broken by the lower database index, so the result is unique and
    deterministic. It equals ``faiss.IndexBinaryFlat(n_bits).search(query_codes, k)``
    (distances and indices; tested), which uses the same bit layout and tie rule.

    Distances are integers in ``0..n_bits``, so the numba kernel selects by counting instead of
    sorting (book section ``binary-codes-topk``, Eq. ``binary-codes-threshold-k``): per query, a
    histogram of the admitted distances gives the current ``k``-th smallest distance ``t``, and a
    database code is admitted only when its distance is below ``t``; scanning the database in index
    order makes this the lower-index tie rule. The distances are computed 128 codes at a time in a
    loop the compiler vectorizes, over cache-sized blocks of the database, which is read as 64-bit
    words when its rows are a multiple of 8 bytes (narrower words otherwise; a C-contiguous database
    is not copied). The queries are split over numba's threads (``numba.set_num_threads``).

    Parameters
    ----------
    query_codes : ndarray of uint8, shape (n_queries, n_bytes)
    database_codes : ndarray of uint8, shape (n_database, n_bytes)
        Packed codes (see :func:`pack_codes`), same width.
    k : int
        Number of neighbours, ``1 <= k <= n_database``.
    backend : {"auto", "numba", "numpy"}, default "auto"
        ``"auto"`` uses NumPy for small problems and numba for large ones; results are identical.

    Returns
    -------
    distances : ndarray of int32, shape (n_queries, k)
        Hamming distances, ascending along each row.
    indices : ndarray of int64, shape (n_queries, k)
        Database indices of the neighbours.

    Raises
    ------
    ValueError
        On empty or non-``uint8`` codes, mismatched widths, or ``k`` outside ``[1, n_database]``.
    """
    q, db = _check_pair(query_codes, database_codes)
    check_params(dict(k=k), {"k": Interval(Integral, 1, None)})
    if k > db.shape[0]:
        raise ValueError(f"k must be between 1 and the database size {db.shape[0]}, got {k}")
    k = int(k)
    backend = _backend(backend, q.shape[0] * db.shape[0])
    words = _bits.to_words(q, pad=False), _bits.to_words(db, pad=False)
    return _bits.hamming_topk(*words, k, 8 * q.shape[1], backend)


# ----------------------------------------------------------------------------------------------------
# Explorer callback
# ----------------------------------------------------------------------------------------------------
def select_bits_by_variance(X_train, n_bits: int) -> np.ndarray:
    """Indices (ascending) of the ``n_bits`` features with the largest training variance.

    Used to vary the code length of threshold codes, whose natural length is the number of
    features: keep the most variable features, the ones whose bits split the data best.
    Ties in variance go to the lower feature index.
    """
    X_train = np.asarray(X_train, dtype=np.float64)
    check_params(dict(n_bits=n_bits), {"n_bits": Interval(Integral, 1, X_train.shape[1])})
    var = X_train.var(axis=0)
    return np.sort(np.argsort(-var, kind="stable")[:n_bits])


def plot_neighbours(
    query_index: int = 0,
    n_bits: int = 64,
    k: int = 8,
    *,
    X_train=None,
    X_test=None,
    y_train=None,
    y_test=None,
    image_shape=(8, 8),
):
    """Draw a query digit with its ``k`` nearest training digits by Hamming and by Euclidean distance.

    The codes keep the ``n_bits`` highest-variance pixels (so the number of bits can be chosen),
    thresholded at their training means (:class:`MeanThresholdBinarizer`), packed with
    :func:`pack_codes` and searched with :func:`hamming_knn`; the Euclidean row is exact search on
    all float pixels. Neighbours whose label differs from the query's are framed in red.

    Parameters
    ----------
    query_index : int
        Index of the query in the test split.
    n_bits : int
        Number of bits per code (1 to the number of pixels).
    k : int
        Number of neighbours shown per row.
    X_train, X_test, y_train, y_test : ndarray, optional
        Images (flattened here) and labels; default: the course's digits split,
        :func:`courselib.data.digits_split` (1257 train / 540 test).
    image_shape : tuple of int
        Shape used to draw each image.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if X_train is None or X_test is None:
        X_train, X_test, y_train, y_test = digits_split()  # cached, read-only (courselib.data)
    X_train = np.asarray(X_train, dtype=np.float32).reshape(len(X_train), -1)
    X_test = np.asarray(X_test, dtype=np.float32).reshape(len(X_test), -1)
    check_params(dict(query_index=query_index), {"query_index": Interval(Integral, 0, len(X_test) - 1)})
    cols = select_bits_by_variance(X_train, n_bits)
    binarizer = MeanThresholdBinarizer().fit(X_train[:, cols])
    db_codes = pack_codes(binarizer.transform(X_train[:, cols]))
    q_codes = pack_codes(binarizer.transform(X_test[query_index : query_index + 1, cols]))
    h_dist, h_idx = hamming_knn(q_codes, db_codes, k)
    d2 = ((X_train - X_test[query_index]) ** 2).sum(axis=1)
    e_idx = np.lexsort((np.arange(len(d2)), d2))[:k]
    e_dist = np.sqrt(d2[e_idx])

    fig, axes = plt.subplots(2, k + 1, figsize=(1.25 * (k + 1), 3.1))
    label = "" if y_test is None else f" (label {y_test[query_index]})"
    for r, (name, idx, dist) in enumerate([("Hamming", h_idx[0], h_dist[0]), ("Euclidean", e_idx, e_dist)]):
        ax = axes[r, 0]
        ax.imshow(X_test[query_index].reshape(image_shape), cmap="gray_r")
        ax.set_title(f"query{label}" if r == 0 else "query", fontsize=8)
        ax.set_ylabel(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        for c, (j, d) in enumerate(zip(idx, dist), start=1):
            ax = axes[r, c]
            ax.imshow(X_train[j].reshape(image_shape), cmap="gray_r")
            text = f"d={d:.0f}" if name == "Hamming" else f"d={d:.2f}"
            if y_train is not None:
                text += f"  y={y_train[j]}"
                if y_test is not None and y_train[j] != y_test[query_index]:
                    for spine in ax.spines.values():
                        spine.set_edgecolor("red")
                        spine.set_linewidth(2.5)
            ax.set_title(text, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{n_bits}-bit threshold codes (Hamming) vs float pixels (Euclidean)", fontsize=10)
    fig.tight_layout()
    return fig
