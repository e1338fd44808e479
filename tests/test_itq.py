"""Tests of courselib.itq (Iterative Quantization, Gong & Lazebnik 2011) and its baselines.

Answer keys: scipy.linalg.orthogonal_procrustes (R-step), scikit-learn's PCA and check_estimator,
brute force over all codes (B-step), and the invariants of the paper's alternating minimization.
faiss's ITQMatrix is *not* an answer key (its rotation is the transpose of the paper's update).
"""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from scipy.linalg import orthogonal_procrustes
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import check_estimator

from courselib import itq as itq_mod
from courselib.binary_codes import hamming_knn, pack_codes, unpack_codes
from courselib.itq import (
    ITQ,
    LSH,
    PCAHash,
    compare_hashers,
    hamming_map,
    itq_explorer,
    itq_rotation,
    plot_itq_2d,
    procrustes_rotation,
    quantization_loss,
    random_orthogonal,
    sign_codes,
)


@pytest.fixture(scope="module")
def digits():
    return itq_mod._digits()  # (X_train, X_test, y_train, y_test), flattened float64 (courselib.data.digits_split)


@pytest.fixture
def gaussian():
    rng = np.random.default_rng(0)
    # anisotropic data: PCA variances differ, so the rotation matters
    return rng.normal(size=(300, 12)) * np.linspace(3.0, 0.3, 12) + 5.0


def _orth_error(R):
    return np.abs(R.T @ R - np.eye(R.shape[0])).max()


# ----------------------------------------------------------------------------- scikit-learn API
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.SkipTestWarning")
@pytest.mark.parametrize(
    "estimator",
    [ITQ(n_bits=2), PCAHash(n_bits=2), PCAHash(n_bits=2, random_rotation=True), LSH(n_bits=2)],
    ids=["ITQ", "PCA-direct", "PCA-RR", "LSH"],
)
def test_check_estimator(estimator):
    check_estimator(estimator)


@pytest.mark.parametrize("cls", [ITQ, PCAHash, LSH])
def test_transform_gives_uint8_codes_declared_in_tags(cls, gaussian):
    est = cls(n_bits=5, random_state=0).fit(gaussian)
    codes = est.transform(gaussian)
    assert codes.dtype == np.uint8 and codes.shape == (300, 5)
    assert set(np.unique(codes)) <= {0, 1}
    assert est.__sklearn_tags__().transformer_tags.preserves_dtype == ["uint8"]
    assert list(est.get_feature_names_out()) == [f"{cls.__name__.lower()}{k}" for k in range(5)]


# ----------------------------------------------------------------------------- the paper's equations
def test_components_are_sklearn_pca(gaussian):
    itq = ITQ(4, random_state=0).fit(gaussian)
    pca = PCA(n_components=4, svd_solver="full").fit(gaussian)
    np.testing.assert_allclose(itq.mean_, gaussian.mean(axis=0))
    np.testing.assert_allclose(itq.components_, pca.components_, atol=1e-8)
    # wide data (n < d) goes through the full SVD
    Xw = gaussian[:10]
    np.testing.assert_allclose(
        ITQ(4, random_state=0).fit(Xw).components_,
        PCA(n_components=4, svd_solver="full").fit(Xw).components_,
        atol=1e-8,
    )


def test_r_step_matches_scipy_orthogonal_procrustes():
    rng = np.random.default_rng(1)
    for c in (2, 5, 16):
        V = rng.normal(size=(200, c)) * np.linspace(2, 0.5, c)
        B = sign_codes(V @ random_orthogonal(c, 3))
        R = procrustes_rotation(V, B)
        R_scipy, _ = orthogonal_procrustes(V, B)  # argmin_R ||V R - B||_F over orthogonal R
        np.testing.assert_allclose(R, R_scipy, atol=1e-10)
        assert _orth_error(R) < 1e-10


def test_r_step_is_not_transposed_and_beats_random_rotations():
    rng = np.random.default_rng(2)
    V = rng.normal(size=(500, 6)) * np.linspace(3, 0.5, 6)
    B = sign_codes(V @ random_orthogonal(6, 0))
    R = procrustes_rotation(V, B)
    best = quantization_loss(B, V, R)
    # the transposed update (a known bug in public implementations) is clearly worse
    assert quantization_loss(B, V, R.T) > best + 1.0
    for seed in range(50):
        assert best <= quantization_loss(B, V, random_orthogonal(6, seed)) + 1e-9


def test_r_step_hand_worked_2d():
    # V^T B = diag(2, 1) rotated by 90 degrees: V = I-ish rows, B = V rotated; R must undo it exactly
    V = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    rot90 = np.array([[0.0, 1.0], [-1.0, 0.0]])
    B = V @ rot90  # each row of B is a rotated row of V, so the best R is rot90 and the loss 0
    R = procrustes_rotation(V, B)
    np.testing.assert_allclose(R, rot90, atol=1e-12)
    assert quantization_loss(B, V, R) == pytest.approx(0.0, abs=1e-20)
    assert quantization_loss(B, V, R.T) == pytest.approx(16.0)


def test_b_step_is_the_brute_force_minimizer():
    rng = np.random.default_rng(3)
    V = rng.normal(size=(20, 3))
    R = random_orthogonal(3, 1)
    B = sign_codes(V @ R)
    all_codes = np.array(list(itertools.product([-1.0, 1.0], repeat=3)))
    Z = V @ R
    for i in range(len(V)):
        errs = ((all_codes - Z[i]) ** 2).sum(axis=1)
        np.testing.assert_array_equal(B[i], all_codes[np.argmin(errs)])


def test_sign_codes_tie_goes_to_plus_one():
    # sign(0) = +1, as everywhere in the book
    np.testing.assert_array_equal(sign_codes([[0.0, 2.0, -3.0, -0.0]]), [[1.0, 1.0, -1.0, 1.0]])


def test_quantization_loss_hand_worked():
    B = np.array([[1.0, -1.0], [-1.0, -1.0]])
    V = np.array([[0.5, -1.0], [-2.0, 0.0]])
    # (1-0.5)^2 + 0 + (-1+2)^2 + (-1-0)^2 = 0.25 + 1 + 1
    assert quantization_loss(B, V, np.eye(2)) == pytest.approx(2.25)


# ----------------------------------------------------------------------------- invariants of the fit
@pytest.mark.parametrize("n_iter", [0, 1, 7, 50])
def test_loss_history_length_and_monotone_random(gaussian, n_iter):
    itq = ITQ(6, n_iter=n_iter, random_state=0).fit(gaussian)
    assert itq.loss_history_.shape == (n_iter + 1,)
    assert np.all(np.diff(itq.loss_history_) <= 1e-9 * itq.loss_history_[0])


@pytest.mark.parametrize("n_bits", [8, 16, 32, 64])
def test_loss_monotone_on_digits(digits, n_bits):
    itq = ITQ(n_bits, random_state=0).fit(digits[0])
    h = itq.loss_history_
    assert np.all(np.diff(h) <= 1e-9 * h[0])
    assert h[-1] < h[0]


def test_initial_rotation_is_the_seeded_random_orthogonal(gaussian):
    itq0 = ITQ(5, n_iter=0, random_state=4).fit(gaussian)
    np.testing.assert_array_equal(itq0.rotation_, random_orthogonal(5, 4))
    V = (gaussian - itq0.mean_) @ itq0.components_.T
    assert itq0.loss_history_[0] == pytest.approx(quantization_loss(sign_codes(V @ itq0.rotation_), V, itq0.rotation_))


def test_rotation_orthogonal_and_last_loss_matches_codes(digits):
    X = digits[0]
    itq = ITQ(16, random_state=0).fit(X)
    assert _orth_error(itq.rotation_) < 1e-8
    V = (X - itq.mean_) @ itq.components_.T
    B = 2.0 * itq.transform(X) - 1.0
    assert quantization_loss(B, V, itq.rotation_) == pytest.approx(itq.loss_history_[-1], rel=1e-10)


@pytest.mark.parametrize("cls", [ITQ, PCAHash, LSH])
def test_codes_are_sign_of_projection(cls, gaussian):
    est = cls(n_bits=6, random_state=0).fit(gaussian)
    Xq = gaussian[:40] + 0.1
    VR = est.project(Xq)
    np.testing.assert_allclose(VR, (Xq - est.mean_) @ est.components_.T @ est.rotation_)
    np.testing.assert_array_equal(est.transform(Xq), ((sign_codes(VR) + 1) / 2).astype(np.uint8))


def test_itq_rotation_function_matches_estimator(gaussian):
    itq = ITQ(4, n_iter=10, random_state=7).fit(gaussian)
    V = (gaussian - itq.mean_) @ itq.components_.T
    R, hist = itq_rotation(V, 10, random_state=7)
    np.testing.assert_array_equal(R, itq.rotation_)
    np.testing.assert_array_equal(hist, itq.loss_history_)


def test_fixed_random_state_gives_identical_codes(digits):
    X = digits[0]
    a = ITQ(16, random_state=3).fit(X).transform(X)
    b = ITQ(16, random_state=3).fit(X).transform(X)
    np.testing.assert_array_equal(a, b)
    c = LSH(16, random_state=3).fit(X).transform(X)
    np.testing.assert_array_equal(c, LSH(16, random_state=3).fit(X).transform(X))
    assert not np.array_equal(LSH(16, random_state=4).fit(X).components_, LSH(16, random_state=3).fit(X).components_)


def test_pca_direct_and_random_rotation(gaussian):
    direct = PCAHash(5).fit(gaussian)
    np.testing.assert_array_equal(direct.rotation_, np.eye(5))
    rr = PCAHash(5, random_rotation=True, random_state=2).fit(gaussian)
    np.testing.assert_allclose(rr.rotation_, random_orthogonal(5, 2))
    assert _orth_error(rr.rotation_) < 1e-10
    # PCA-RR is exactly ITQ stopped before its first iteration
    itq0 = ITQ(5, n_iter=0, random_state=2).fit(gaussian)
    np.testing.assert_array_equal(rr.transform(gaussian), itq0.transform(gaussian))


def test_random_orthogonal_is_orthogonal_and_seeded():
    for c in (1, 3, 64):
        Q = random_orthogonal(c, 0)
        assert _orth_error(Q) < 1e-10
    np.testing.assert_array_equal(random_orthogonal(8, 5), random_orthogonal(8, 5))
    assert not np.allclose(random_orthogonal(8, 5), random_orthogonal(8, 6))


def test_codes_pack_and_search_with_binary_codes(digits):
    Xtr, Xte, _, _ = digits
    itq = ITQ(12, random_state=0).fit(Xtr)
    codes = itq.transform(Xtr)
    packed = pack_codes(codes)
    assert packed.shape == (len(Xtr), 2)
    np.testing.assert_array_equal(unpack_codes(packed, 12), codes)
    dist, idx = hamming_knn(pack_codes(itq.transform(Xte[:5])), packed, k=3)
    assert idx.shape == (5, 3) and np.all(np.diff(dist, axis=1) >= 0)


# ----------------------------------------------------------------------------- ITQ vs baselines on digits
def test_itq_beats_pca_direct_in_loss_on_digits(digits):
    X = digits[0]
    for c in (16, 32):
        itq = ITQ(c, random_state=0).fit(X)
        V = (X - itq.mean_) @ itq.components_.T
        direct = quantization_loss(sign_codes(V), V, np.eye(c))
        assert itq.loss_history_[-1] < direct
        assert itq.loss_history_[-1] < itq.loss_history_[0]  # and beats its random start (PCA-RR)


def test_itq_beats_baselines_in_map_on_digits_32_bits(digits):
    Xtr, Xte, ytr, yte = digits
    res = compare_hashers(Xtr, Xtr, ytr, Xte, yte, bits=(32,), random_state=0)
    assert res["ITQ"][0] > res["PCA-direct"][0]
    assert res["ITQ"][0] > res["LSH"][0]
    assert res["ITQ"][0] > res["PCA-RR"][0]


def test_hamming_map_matches_retrieval_by_hand(digits):
    Xtr, Xte, ytr, yte = digits
    itq = ITQ(8, random_state=0).fit(Xtr)
    # brute force: rank by Hamming distance on unpacked codes (stable sort), AP per query
    q, d = itq.transform(Xte[:30]).astype(int), itq.transform(Xtr).astype(int)
    D = (q[:, None, :] != d[None, :, :]).sum(-1)
    order = np.argsort(D, axis=1, kind="stable")
    rel = (ytr[order] == yte[:30, None]).astype(float)
    prec = np.cumsum(rel, axis=1) / np.arange(1, rel.shape[1] + 1)
    ap = (prec * rel).sum(axis=1) / rel.sum(axis=1)
    assert hamming_map(itq, Xtr, ytr, Xte[:30], yte[:30]) == pytest.approx(ap.mean(), rel=1e-12)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("cls", [ITQ, PCAHash, LSH])
def test_n_bits_larger_than_n_features(cls):
    X = np.random.default_rng(0).normal(size=(50, 4))
    with pytest.raises(ValueError, match="n_bits=5 must be <= n_features=4"):
        cls(n_bits=5).fit(X)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "8", True])
def test_bad_n_bits(bad):
    X = np.random.default_rng(0).normal(size=(50, 10))
    with pytest.raises(ValueError, match="n_bits must be a positive integer"):
        ITQ(n_bits=bad).fit(X)


@pytest.mark.parametrize("bad", [-1, 1.5, None])
def test_bad_n_iter(bad):
    X = np.random.default_rng(0).normal(size=(50, 10))
    with pytest.raises(ValueError, match="n_iter must be a non-negative integer"):
        ITQ(n_bits=3, n_iter=bad).fit(X)


def test_too_few_samples():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="n_bits=8 must be <= n_samples=5"):
        ITQ(n_bits=8).fit(rng.normal(size=(5, 20)))
    with pytest.raises(ValueError, match="minimum of 2 is required"):
        PCAHash(n_bits=1).fit(rng.normal(size=(1, 20)))


@pytest.mark.parametrize("cls", [ITQ, PCAHash, LSH])
def test_nan_and_wrong_width_and_unfitted(cls):
    X = np.random.default_rng(0).normal(size=(50, 10))
    Xnan = X.copy()
    Xnan[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cls(n_bits=3).fit(Xnan)
    with pytest.raises(NotFittedError):
        cls(n_bits=3).transform(X)
    est = cls(n_bits=3, random_state=0).fit(X)
    with pytest.raises(ValueError, match="X has 9 features"):
        est.transform(X[:, :9])
    with pytest.raises(ValueError, match="NaN"):
        est.project(Xnan)


def test_function_input_errors():
    with pytest.raises(ValueError, match="same shape"):
        procrustes_rotation(np.ones((5, 3)), np.ones((5, 2)))
    with pytest.raises(ValueError, match="2-D"):
        sign_codes(np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        procrustes_rotation(np.full((4, 2), np.nan), np.ones((4, 2)))
    with pytest.raises(ValueError, match="shapes do not match"):
        quantization_loss(np.ones((4, 2)), np.ones((4, 2)), np.eye(3))
    with pytest.raises(ValueError, match="positive integer"):
        random_orthogonal(0)
    with pytest.raises(ValueError, match="R0 must have shape"):
        itq_rotation(np.ones((4, 2)), 3, R0=np.eye(3))
    with pytest.raises(ValueError, match="unknown method"):
        compare_hashers(np.ones((4, 2)), np.ones((4, 2)), [0] * 4, np.ones((4, 2)), [0] * 4, bits=(1,), methods=("SH",))


# ----------------------------------------------------------------------------- explorer callbacks
@pytest.mark.parametrize("n_iter", [0, 5, 50])
def test_plot_itq_2d(n_iter):
    fig = plot_itq_2d(n_iter=n_iter)
    assert len(fig.axes) == 2
    titles = [a.get_title() for a in fig.axes]
    assert "PCA-direct" in titles[0] and f"after {n_iter} iterations" in titles[1]
    plt.close(fig)


@pytest.mark.parametrize("n_bits,n_iter", [(8, 0), (16, 10), (32, 50)])
def test_itq_explorer(n_bits, n_iter):
    fig = itq_explorer(n_bits=n_bits, n_iter=n_iter)
    assert len(fig.axes) == 2
    line = fig.axes[0].lines[0]
    y = line.get_ydata()
    assert len(y) == n_iter + 1 and np.all(np.diff(y) <= 1e-9 * y[0])
    assert "mAP" in fig.axes[1].get_title()
    plt.close(fig)


# ----------------------------------------------------------------------------- real MNIST (optional)
def test_itq_on_shared_mnist(shared_mnist):
    from courselib.data import load_dataset

    X, y = load_dataset("mnist", split="test", root=shared_mnist, download=False)
    X = X.reshape(len(X), -1)[:3000].astype(np.float64)
    y = y[:3000]
    itq = ITQ(32, n_iter=20, random_state=0).fit(X[:2000])
    h = itq.loss_history_
    assert np.all(np.diff(h) <= 1e-9 * h[0])
    assert _orth_error(itq.rotation_) < 1e-8
    m_itq = hamming_map(itq, X[:2000], y[:2000], X[2000:], y[2000:])
    m_pca = hamming_map(PCAHash(32).fit(X[:2000]), X[:2000], y[:2000], X[2000:], y[2000:])
    assert m_itq > m_pca
