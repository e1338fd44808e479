"""Iterative Quantization (ITQ) and its baselines: PCA-direct, PCA + random rotation, LSH.

Gong & Lazebnik, "Iterative Quantization: A Procrustean Approach to Learning Binary
Codes", CVPR 2011, pp. 817-824; book chapter ``book/itq.md``.

Notation (as in the paper and the chapter): ``X`` is the zero-centred ``n x d`` data,
``W`` the ``d x c`` matrix of the top ``c`` principal directions, ``V = X W`` the
``n x c`` projected data, ``R`` a ``c x c`` orthogonal rotation and
``B = sgn(V R)`` in ``{-1, +1}^{n x c}`` the codes. ITQ minimizes the quantization loss
(book Eq. ``itq-loss``)

    Q(B, R) = ||B - V R||_F^2

by alternating the B-step ``B = sgn(V R)`` (Eq. ``itq-b-step``) and the R-step, an
orthogonal Procrustes problem: with the SVD ``V^T B = U S Phi^T`` of the ``c x c`` matrix,
``R = U Phi^T`` (Eq. ``itq-r-step``). (``W`` is the PCA matrix, ``V = X W``.)

All three estimators are scikit-learn transformers. ``transform`` returns 0/1 ``uint8``
codes (bit = 1 where the projection is positive, i.e. ``(B + 1) / 2``) that
:func:`courselib.binary_codes.pack_codes` packs and
:func:`courselib.binary_codes.hamming_knn` searches; ``project`` returns the real-valued
projection ``V R`` whose signs are the codes.
"""

from __future__ import annotations

import numbers

import matplotlib.pyplot as plt
import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from .binary_codes import hamming_distances, pack_codes
from .data import digits_split
from .retrieval import label_relevance, mean_average_precision

__all__ = [
    "ITQ",
    "PCAHash",
    "LSH",
    "sign_codes",
    "procrustes_rotation",
    "quantization_loss",
    "random_orthogonal",
    "itq_rotation",
    "plot_itq_2d",
    "itq_explorer",
    "compare_hashers",
    "hamming_map",
]


# --------------------------------------------------------------------------------------
# The two steps of ITQ as plain functions (what lab 2 asks students to write)
# --------------------------------------------------------------------------------------
def _as_2d_float(name: str, A) -> np.ndarray:
    A = np.asarray(A, dtype=np.float64)
    if A.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got an array of shape {A.shape}")
    if not np.all(np.isfinite(A)):
        raise ValueError(f"{name} contains NaN or infinity")
    return A


def sign_codes(Z) -> np.ndarray:
    """B-step of ITQ: ``B = sgn(Z)`` with values in ``{-1, +1}`` (book Eq. ``itq-b-step``).

    For a fixed rotation ``R``, ``B = sgn(V R)`` minimizes ``Q(B, R)`` over all
    ``B in {-1, +1}^{n x c}`` (Gong & Lazebnik 2011, Sec. 2.3). Ties (``Z == 0``) go to
    ``+1`` (``sign(0) = +1``, the convention of the whole book), so the 0/1 bits ``(B + 1) / 2``
    equal ``Z >= 0``.

    Parameters
    ----------
    Z : array-like of shape (n, c)
        Real-valued projections, usually ``V R``.

    Returns
    -------
    B : ndarray of shape (n, c), dtype float64
        Entries are exactly ``-1.0`` or ``+1.0``.
    """
    Z = _as_2d_float("Z", Z)
    return np.where(Z >= 0, 1.0, -1.0)


def procrustes_rotation(V, B) -> np.ndarray:
    """R-step of ITQ: the orthogonal ``R`` minimizing ``||B - V R||_F`` (book Eq. ``itq-r-step``).

    With the SVD of the ``c x c`` matrix ``V^T B = U S Phi^T`` the minimizer is
    ``R = U Phi^T`` (orthogonal Procrustes, Schoenemann 1966; the paper writes the same
    thing as ``B^T V = S Omega S_hat^T``, ``R = S_hat S^T``). Both factors enter as the SVD
    returns them, ``U`` and ``Phi^T``; a product with one of them transposed the other way (as in
    faiss's ``ITQMatrix``, book section ``itq-alternating``) is still orthogonal, but changes
    when the SVD flips the sign of a pair of singular vectors, which it may do arbitrarily, and does
    not minimize the loss.

    Parameters
    ----------
    V : array-like of shape (n, c)
        Projected (zero-centred) data.
    B : array-like of shape (n, c)
        Codes in ``{-1, +1}`` (any real targets work).

    Returns
    -------
    R : ndarray of shape (c, c)
        Orthogonal matrix, ``R^T R = I``.
    """
    V = _as_2d_float("V", V)
    B = _as_2d_float("B", B)
    if V.shape != B.shape:
        raise ValueError(f"V and B must have the same shape, got V {V.shape} and B {B.shape}")
    U, _, Phit = np.linalg.svd(V.T @ B)
    return U @ Phit


def quantization_loss(B, V, R) -> float:
    """Quantization loss ``Q(B, R) = ||B - V R||_F^2`` (book Eq. ``itq-loss``; paper Eq. 2).

    Parameters
    ----------
    B : array-like of shape (n, c)
        Codes in ``{-1, +1}``.
    V : array-like of shape (n, c)
        Projected data.
    R : array-like of shape (c, c)
        Rotation.

    Returns
    -------
    float
        The squared Frobenius norm (a sum over all ``n`` samples, not a mean).
    """
    B = _as_2d_float("B", B)
    V = _as_2d_float("V", V)
    R = _as_2d_float("R", R)
    if R.shape != (V.shape[1], V.shape[1]) or B.shape != V.shape:
        raise ValueError(
            f"shapes do not match: B {B.shape}, V {V.shape}, R {R.shape} "
            "(expected B and V of shape (n, c) and R of shape (c, c))"
        )
    return float(np.sum((B - V @ R) ** 2))


def random_orthogonal(c: int, random_state=None) -> np.ndarray:
    """A random ``c x c`` orthogonal matrix (Haar distributed: QR of a Gaussian matrix).

    ITQ starts from such a matrix, as in the paper; PCA + random rotation (PCA-RR) uses one.
    """
    if not isinstance(c, numbers.Integral) or c < 1:
        raise ValueError(f"c must be a positive integer, got {c!r}")
    rng = check_random_state(random_state)
    Q, T = np.linalg.qr(rng.standard_normal((c, c)))
    return Q * np.where(np.diag(T) < 0, -1.0, 1.0)


def itq_rotation(V, n_iter: int = 50, R0=None, random_state=None):
    """Run ITQ's alternating minimization on projected data ``V`` (book Eqs. ``itq-b-step``, ``itq-r-step``).

    Each iteration does a B-step ``B = sgn(V R)`` and then an R-step (Procrustes).

    Parameters
    ----------
    V : array-like of shape (n, c)
        Zero-centred, projected data.
    n_iter : int, default 50
        Number of iterations (the paper uses 50).
    R0 : array-like of shape (c, c), optional
        Initial rotation; by default ``random_orthogonal(c, random_state)``.
    random_state : int, RandomState or None
        Seed of the initial rotation.

    Returns
    -------
    R : ndarray of shape (c, c)
        Final rotation.
    loss_history : ndarray of shape (n_iter + 1,)
        ``Q(sgn(V R_k), R_k)`` for the initial rotation (k = 0) and after each iteration.
        It never increases: each step minimizes ``Q`` over one of its arguments.
    """
    V = _as_2d_float("V", V)
    if not isinstance(n_iter, numbers.Integral) or isinstance(n_iter, bool) or n_iter < 0:
        raise ValueError(f"n_iter must be a non-negative integer, got {n_iter!r}")
    c = V.shape[1]
    R = random_orthogonal(c, random_state) if R0 is None else _as_2d_float("R0", R0)
    if R.shape != (c, c):
        raise ValueError(f"R0 must have shape ({c}, {c}), got {R.shape}")
    losses = [quantization_loss(sign_codes(V @ R), V, R)]
    for _ in range(n_iter):
        B = sign_codes(V @ R)  # B-step, Eq. itq-b-step
        R = procrustes_rotation(V, B)  # R-step, Eq. itq-r-step
        losses.append(quantization_loss(sign_codes(V @ R), V, R))
    return R, np.asarray(losses)


# --------------------------------------------------------------------------------------
# Estimators
# --------------------------------------------------------------------------------------
def _pca(n_components: int, X: np.ndarray) -> PCA:
    """scikit-learn's exact PCA: eigendecomposition of the covariance when n >= d (fast for
    tall data such as MNIST), full SVD otherwise. Both are deterministic (sign-fixed by svd_flip)."""
    solver = "covariance_eigh" if X.shape[0] >= X.shape[1] else "full"
    return PCA(n_components=n_components, svd_solver=solver).fit(X)


class _BaseHasher(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Common parts: input validation, ``project`` = (X - mean_) components_^T rotation_, codes."""

    def _check_params(self, X):
        n_bits = self.n_bits
        if not isinstance(n_bits, numbers.Integral) or isinstance(n_bits, bool) or n_bits < 1:
            raise ValueError(f"n_bits must be a positive integer, got {n_bits!r}")
        n_samples, n_features = X.shape
        if n_bits > n_features:
            raise ValueError(
                f"n_bits={n_bits} must be <= n_features={n_features} "
                f"(one projection per bit); got X with n_features={n_features}"
            )

    def _validate_fit(self, X, uses_pca=True):
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
        self._check_params(X)
        if uses_pca and self.n_bits > X.shape[0]:
            raise ValueError(
                f"n_bits={self.n_bits} must be <= n_samples={X.shape[0]}: PCA cannot find "
                f"more directions than there are samples"
            )
        return X.astype(np.float64, copy=False)

    def project(self, X) -> np.ndarray:
        """Real-valued projection whose signs are the codes.

        For ITQ this is ``V R`` with ``V = (X - mean_) components_^T`` (the paper's
        ``V = X W``, book Eq. ``itq-pca``); for PCA-direct ``V``; for LSH the random
        projections.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_bits), dtype float64
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        X = X.astype(np.float64, copy=False)
        return (X - self.mean_) @ self.components_.T @ self.rotation_

    def transform(self, X) -> np.ndarray:
        """0/1 codes: bit ``k`` is 1 where ``project(X)[:, k] >= 0`` (``(sgn(VR) + 1) / 2``).

        Returns
        -------
        codes : ndarray of shape (n_samples, n_bits), dtype uint8
        """
        return (self.project(X) >= 0).astype(np.uint8)

    @property
    def _n_features_out(self):
        return self.components_.shape[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Output is always 0/1 uint8 codes, whatever the input dtype: scikit-learn reads the
        # first entry of preserves_dtype as the output dtype of a non-preserving transformer.
        tags.transformer_tags.preserves_dtype = ["uint8"]
        return tags


class ITQ(_BaseHasher):
    """Iterative Quantization (Gong & Lazebnik, CVPR 2011): PCA to ``n_bits`` dims + learned rotation.

    Fit: zero-centre, PCA to ``c = n_bits`` dimensions (``V = X W``, book Eq. ``itq-pca``),
    start from a random orthogonal ``R`` and alternate ``n_iter`` times the B-step
    ``B = sgn(V R)`` (Eq. ``itq-b-step``) and the R-step ``R = U Phi^T`` from the SVD
    ``V^T B = U S Phi^T`` (Eq. ``itq-r-step``), which decrease ``Q(B, R) = ||B - V R||_F^2``
    (Eq. ``itq-loss``) monotonically.

    Parameters
    ----------
    n_bits : int
        Code length ``c`` (<= number of features).
    n_iter : int, default 50
        Number of ITQ iterations (the paper uses 50).
    random_state : int, RandomState or None
        Seed of the initial random rotation.

    Attributes
    ----------
    mean_ : ndarray of shape (n_features,)
        Per-feature training mean (the data are zero-centred with it).
    components_ : ndarray of shape (n_bits, n_features)
        Top principal directions (rows), from :class:`sklearn.decomposition.PCA`; ``W = components_.T``.
    rotation_ : ndarray of shape (n_bits, n_bits)
        Learned orthogonal rotation ``R``.
    loss_history_ : ndarray of shape (n_iter + 1,)
        Quantization loss ``Q(sgn(V R_k), R_k)`` on the training set before the first
        iteration (k = 0) and after each iteration; non-increasing.
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from courselib.itq import ITQ
    >>> X = np.random.default_rng(0).normal(size=(100, 8))
    >>> itq = ITQ(n_bits=4, random_state=0).fit(X)
    >>> itq.transform(X[:2]).dtype
    dtype('uint8')
    >>> bool(np.all(np.diff(itq.loss_history_) <= 1e-9))
    True
    """

    def __init__(self, n_bits, n_iter=50, random_state=None):
        self.n_bits = n_bits
        self.n_iter = n_iter
        self.random_state = random_state

    def fit(self, X, y=None):
        """Learn the mean, the PCA directions and the rotation from ``X``; ``y`` is ignored."""
        X = self._validate_fit(X)
        if not isinstance(self.n_iter, numbers.Integral) or isinstance(self.n_iter, bool) or self.n_iter < 0:
            raise ValueError(f"n_iter must be a non-negative integer, got {self.n_iter!r}")
        pca = _pca(self.n_bits, X)
        self.mean_ = pca.mean_
        self.components_ = pca.components_
        V = (X - self.mean_) @ self.components_.T
        self.rotation_, self.loss_history_ = itq_rotation(V, self.n_iter, random_state=self.random_state)
        return self


class PCAHash(_BaseHasher):
    """PCA hashing baselines: PCA-direct ``sgn(V)`` or PCA + random rotation ``sgn(V R)``.

    The two baselines of Gong & Lazebnik (2011, Sec. 3): "PCA-direct" thresholds the top
    ``n_bits`` principal components at zero (book Eq. ``itq-pca``); "PCA-RR" first applies
    a random orthogonal rotation (Jegou et al. 2010), which balances the variances.

    Parameters
    ----------
    n_bits : int
        Code length (<= number of features).
    random_rotation : bool, default False
        Apply a random orthogonal rotation after PCA (PCA-RR).
    random_state : int, RandomState or None
        Seed of the random rotation (ignored when ``random_rotation=False``).

    Attributes
    ----------
    mean_ : ndarray of shape (n_features,)
    components_ : ndarray of shape (n_bits, n_features)
    rotation_ : ndarray of shape (n_bits, n_bits)
        Identity (PCA-direct) or a random orthogonal matrix (PCA-RR).
    n_features_in_ : int
    """

    def __init__(self, n_bits, random_rotation=False, random_state=None):
        self.n_bits = n_bits
        self.random_rotation = random_rotation
        self.random_state = random_state

    def fit(self, X, y=None):
        """Learn the mean and PCA directions (and draw the rotation); ``y`` is ignored."""
        X = self._validate_fit(X)
        pca = _pca(self.n_bits, X)
        self.mean_ = pca.mean_
        self.components_ = pca.components_
        if self.random_rotation:
            self.rotation_ = random_orthogonal(self.n_bits, self.random_state)
        else:
            self.rotation_ = np.eye(self.n_bits)
        return self


class LSH(_BaseHasher):
    """Locality-sensitive hashing with random hyperplanes (Charikar 2002): bit = [w_k^T (x - mean) >= 0].

    The ``w_k`` are i.i.d. standard Gaussian vectors; the data are zero-centred with the
    training mean as for the other methods (Gong & Lazebnik 2011 compare against this LSH).

    Parameters
    ----------
    n_bits : int
        Code length (<= number of features, to keep the same API as the PCA methods).
    random_state : int, RandomState or None
        Seed of the random projections.

    Attributes
    ----------
    mean_ : ndarray of shape (n_features,)
    components_ : ndarray of shape (n_bits, n_features)
        Random Gaussian projection directions (rows).
    rotation_ : ndarray of shape (n_bits, n_bits)
        Identity (kept so that ``project`` has the same formula for every method).
    n_features_in_ : int
    """

    def __init__(self, n_bits, random_state=None):
        self.n_bits = n_bits
        self.random_state = random_state

    def fit(self, X, y=None):
        """Store the mean and draw the random hyperplanes; ``y`` is ignored."""
        X = self._validate_fit(X, uses_pca=False)
        rng = check_random_state(self.random_state)
        self.mean_ = X.mean(axis=0)
        self.components_ = rng.standard_normal((self.n_bits, X.shape[1]))
        self.rotation_ = np.eye(self.n_bits)
        return self


# --------------------------------------------------------------------------------------
# Evaluation and figures used by the chapter, the lab and the benchmark
# --------------------------------------------------------------------------------------
METHODS = {
    "LSH": lambda c, seed: LSH(c, random_state=seed),
    "PCA-direct": lambda c, seed: PCAHash(c, random_state=seed),
    "PCA-RR": lambda c, seed: PCAHash(c, random_rotation=True, random_state=seed),
    "ITQ": lambda c, seed: ITQ(c, n_iter=50, random_state=seed),
}


def hamming_map(hasher, X_database, y_database, X_query, y_query) -> float:
    """Hamming-ranking mAP of a fitted hasher, with class labels as the ground truth.

    The codes are packed with :func:`courselib.binary_codes.pack_codes`, compared with
    :func:`courselib.binary_codes.hamming_distances`, and scored with
    :func:`courselib.retrieval.mean_average_precision` over the whole ranked database
    (ties broken by the lower database index) against
    :func:`courselib.retrieval.label_relevance`.

    Parameters
    ----------
    hasher : fitted ITQ, PCAHash or LSH (anything whose ``transform`` gives 0/1 codes)
    X_database, X_query : array-like of shape (n, n_features)
    y_database, y_query : array-like of shape (n,)

    Returns
    -------
    float
    """
    D = hamming_distances(pack_codes(hasher.transform(X_query)), pack_codes(hasher.transform(X_database)))
    return mean_average_precision(D, label_relevance(y_query, y_database))


def compare_hashers(
    X_train,
    X_database,
    y_database,
    X_query,
    y_query,
    bits=(8, 16, 32, 64),
    methods=("LSH", "PCA-direct", "PCA-RR", "ITQ"),
    random_state=0,
):
    """mAP of each method at each code length: ``{method: [mAP at bits[0], ...]}``.

    Each hasher is fitted on ``X_train`` with ``random_state`` and evaluated with
    :func:`hamming_map` (class labels as ground truth).
    """
    out = {}
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; expected one of {sorted(METHODS)}")
        out[m] = [
            hamming_map(METHODS[m](c, random_state).fit(X_train), X_database, y_database, X_query, y_query)
            for c in bits
        ]
    return out


def plot_itq_2d(n_iter: int = 50, random_state: int = 0, n_samples: int = 400, ax=None):
    """The paper's Fig. 1 in 2-D: data quantized to the square's vertices before and after ITQ.

    Draws two panels: the PCA-projected data ``V`` (c = 2) coloured by ``sgn(V)``
    (PCA-direct) and the rotated data ``V R`` coloured by ``sgn(V R)`` after ``n_iter``
    ITQ iterations, with the vertices ``(+-1, +-1)`` and the quantization loss per point.

    Returns
    -------
    matplotlib.figure.Figure
    """
    rng = np.random.default_rng(random_state)
    # four clusters on the principal axes (a longer and a shorter pair): sgn(V) cuts every cluster
    # in half, a 45-degree rotation puts each cluster in its own quadrant, next to one vertex
    centers = np.array([[1.5, 0.0], [-1.5, 0.0], [0.0, 1.1], [0.0, -1.1]])
    theta = np.deg2rad(30)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    X = (centers[rng.integers(0, 4, n_samples)] + 0.2 * rng.standard_normal((n_samples, 2))) @ rot.T
    itq = ITQ(2, n_iter=n_iter, random_state=random_state).fit(X)
    V = (X - itq.mean_) @ itq.components_.T
    scale = 1.0 / np.sqrt(np.mean(np.sum(V**2, axis=1)) / 2)  # bring points to the cube's scale
    V = V * scale
    panels = [("PCA-direct: sgn(V)", V, np.eye(2)), (f"ITQ after {n_iter} iterations: sgn(VR)", V, itq.rotation_)]
    if ax is None:
        fig, axes = plt.subplots(1, 2, figsize=(9, 4.3))
    else:
        axes = np.ravel(ax)
        fig = axes[0].figure
    cmap = plt.get_cmap("tab10")
    for a, (title, Vp, R) in zip(axes, panels):
        Z = Vp @ R
        B = sign_codes(Z)
        code = ((B[:, 0] > 0) * 2 + (B[:, 1] > 0)).astype(int)
        a.scatter(Z[:, 0], Z[:, 1], c=[cmap(k) for k in code], s=8, alpha=0.7)
        a.scatter(
            [1, 1, -1, -1],
            [1, -1, 1, -1],
            marker="s",
            s=90,
            facecolor="none",
            edgecolor="k",
            linewidth=1.5,
            label="vertices (+-1, +-1)",
        )
        a.axhline(0, color="0.5", lw=0.8)
        a.axvline(0, color="0.5", lw=0.8)
        loss = quantization_loss(B, Vp, R) / len(Vp)
        a.set_title(f"{title}\nloss per point {loss:.3f}", fontsize=10)
        a.set_aspect("equal")
        a.set_xlim(-2.3, 2.3)
        a.set_ylim(-2.3, 2.3)
        a.set_xlabel("dimension 1")
        a.set_ylabel("dimension 2")
    axes[0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


def _digits():
    """The course's digits split (:func:`courselib.data.digits_split`, cached there), flattened to float64."""
    X_train, X_test, y_train, y_test = digits_split()
    return (
        X_train.reshape(len(X_train), -1).astype(np.float64),
        X_test.reshape(len(X_test), -1).astype(np.float64),
        y_train,
        y_test,
    )


def itq_explorer(n_bits: int = 16, n_iter: int = 50, random_state: int = 0):
    """Explorer callback: ITQ on digits for a code length and a number of iterations.

    Left: the per-sample quantization loss per iteration (ITQ) against PCA-direct's and
    PCA-RR's. Right: the variance of each projected dimension before (PCA) and after the
    rotation, with the mAP (database = digits train, queries = digits test) in the title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    Xtr, Xte, ytr, yte = _digits()
    itq = ITQ(n_bits, n_iter=n_iter, random_state=random_state).fit(Xtr)
    pca = PCAHash(n_bits).fit(Xtr)
    rr = PCAHash(n_bits, random_rotation=True, random_state=random_state).fit(Xtr)
    n = len(Xtr)
    V = pca.project(Xtr)
    loss_pca = quantization_loss(sign_codes(V), V, np.eye(n_bits)) / n
    loss_rr = quantization_loss(sign_codes(V @ rr.rotation_), V, rr.rotation_) / n
    maps = {name: hamming_map(h, Xtr, ytr, Xte, yte) for name, h in [("ITQ", itq), ("PCA-direct", pca), ("PCA-RR", rr)]}
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    a1.plot(np.arange(n_iter + 1), itq.loss_history_ / n, "o-", ms=3, label="ITQ")
    a1.axhline(loss_pca, color="C1", ls="--", label="PCA-direct")
    a1.axhline(loss_rr, color="C2", ls=":", label="PCA-RR (iteration 0 of ITQ is one)")
    a1.set_xlabel("iteration")
    a1.set_ylabel("Q(B, R) / n")
    a1.set_title(f"quantization loss, {n_bits} bits")
    a1.legend(fontsize=8, loc="upper right")
    a1.set_ylim(top=max(loss_pca, itq.loss_history_[0] / n) * 1.08)
    k = np.arange(n_bits)
    a2.bar(k - 0.2, V.var(axis=0), width=0.4, label="PCA (V)")
    a2.bar(k + 0.2, itq.project(Xtr).var(axis=0), width=0.4, label="ITQ (VR)")
    a2.set_xlabel("bit k")
    a2.set_ylabel("variance of projection k")
    a2.set_title("mAP: " + ", ".join(f"{m} {v:.3f}" for m, v in maps.items()), fontsize=9)
    a2.legend(fontsize=8)
    fig.tight_layout()
    return fig
