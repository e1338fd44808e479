"""Tests for courselib.binary_codes: threshold binarization, packing, Hamming distance and k-NN.

Answer keys: hand-worked tiny arrays, ``np.packbits(bitorder="little")``, scipy's Hamming
distance and ``faiss.IndexBinaryFlat`` (distances and indices, exactly).
"""

import matplotlib

matplotlib.use("Agg")

import faiss
import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.datasets import load_digits
from sklearn.utils.estimator_checks import check_estimator

from courselib import binary_codes as bc
from courselib.binary_codes import MeanThresholdBinarizer, hamming_distances, hamming_knn, pack_codes, unpack_codes

BACKENDS = ["numpy", "numba"]


def random_bits(rng, n, n_bits, p=0.5):
    return (rng.random((n, n_bits)) < p).astype(np.uint8)


def faiss_search(q_codes, db_codes, k):
    index = faiss.IndexBinaryFlat(8 * db_codes.shape[1])
    index.add(db_codes)
    return index.search(q_codes, k)


# --------------------------------------------------------------------------- threshold binarization
def test_threshold_matches_mean():
    X = np.array([[0.0, 1.0, 5.0], [2.0, 3.0, 5.0], [4.0, 2.0, 5.0]])
    b = MeanThresholdBinarizer().fit(X)
    np.testing.assert_allclose(b.mean_, [2.0, 2.0, 5.0])
    # hand-worked: bit = x > mean, strictly (x equal to its mean -> 0)
    expected = np.array([[0, 0, 0], [0, 1, 0], [1, 0, 0]], dtype=np.uint8)
    out = b.transform(X)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_threshold_uses_training_mean_on_new_data():
    rng = np.random.default_rng(0)
    X_train, X_test = rng.normal(size=(50, 6)), rng.normal(size=(20, 6))
    b = MeanThresholdBinarizer().fit(X_train)
    np.testing.assert_allclose(b.mean_, X_train.mean(axis=0))
    np.testing.assert_array_equal(b.transform(X_test), (X_test > X_train.mean(axis=0)).astype(np.uint8))


def test_check_estimator_passes():
    check_estimator(MeanThresholdBinarizer())


def test_sklearn_tags_declare_uint8():
    assert MeanThresholdBinarizer().__sklearn_tags__().transformer_tags.preserves_dtype == ["uint8"]


def test_threshold_bad_input():
    b = MeanThresholdBinarizer().fit(np.zeros((3, 4)))
    with pytest.raises(ValueError):
        b.transform(np.zeros((2, 5)))  # wrong number of features
    with pytest.raises(ValueError):
        MeanThresholdBinarizer().fit(np.array([[np.nan, 1.0]]))


# --------------------------------------------------------------------------- packing
def test_pack_hand_worked_little_endian():
    # bit 0 -> value 1 of byte 0; bits 8 and 9 -> values 1 and 2 of byte 1
    codes = pack_codes([[1, 0, 0, 0, 0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0, 0, 1, 0, 0]])
    np.testing.assert_array_equal(codes, [[1, 3], [128, 0]])
    assert codes.dtype == np.uint8 and codes.shape == (2, 2)


@pytest.mark.parametrize("n_bits", [1, 7, 8, 9, 63, 64, 65, 100, 128, 200])
def test_pack_matches_packbits_and_roundtrips(n_bits):
    rng = np.random.default_rng(n_bits)
    bits = random_bits(rng, 13, n_bits)
    codes = pack_codes(bits)
    assert codes.shape == (13, (n_bits + 7) // 8)
    np.testing.assert_array_equal(codes, np.packbits(bits, axis=1, bitorder="little"))
    np.testing.assert_array_equal(unpack_codes(codes, n_bits), bits)
    # bool and float 0/1 inputs give the same codes
    np.testing.assert_array_equal(pack_codes(bits.astype(bool)), codes)
    np.testing.assert_array_equal(pack_codes(bits.astype(np.float32)), codes)


def test_pack_bit_order_matches_faiss():
    # faiss's own bit-string reader decodes our bytes into the same bits
    bits = np.eye(16, dtype=np.uint8)
    codes = pack_codes(bits)
    np.testing.assert_array_equal(faiss.unpack_bitstrings(codes, 16, 1), bits)  # 16 fields of 1 bit


@pytest.mark.parametrize(
    "bad",
    [
        np.array([[0, 2, 1]]),
        np.array([[0.5, 1.0]]),
        np.array([[-1, 0]]),
        np.zeros((0, 8)),
        np.zeros(8),
        np.array([["a", "b"]]),
    ],
)
def test_pack_bad_input(bad):
    with pytest.raises(ValueError):
        pack_codes(bad)


def test_unpack_bad_input():
    codes = pack_codes(np.ones((2, 10)))
    with pytest.raises(ValueError, match="bytes"):
        unpack_codes(codes, 20)  # needs 3 bytes
    with pytest.raises(ValueError, match="bytes"):
        unpack_codes(codes, 8)  # needs 1 byte
    with pytest.raises(ValueError):
        unpack_codes(codes, 0)
    with pytest.raises(ValueError, match="uint8"):
        unpack_codes(codes.astype(np.int64), 10)


def test_code_bytes():
    assert bc.code_bytes(1000, 64) == 8000
    assert bc.code_bytes(3, 65) == 27


# --------------------------------------------------------------------------- Hamming distance
def test_hamming_hand_worked():
    a = pack_codes([[1, 1, 0, 0, 1, 0, 1, 0, 1]])
    b = pack_codes([[1, 0, 1, 0, 1, 0, 1, 0, 0], [1, 1, 0, 0, 1, 0, 1, 0, 1]])
    np.testing.assert_array_equal(hamming_distances(a, b), [[3, 0]])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_bits", [5, 64, 72, 128, 200])
def test_hamming_matches_scipy(backend, n_bits):
    rng = np.random.default_rng(n_bits)
    q, db = random_bits(rng, 9, n_bits), random_bits(rng, 31, n_bits)
    d = hamming_distances(pack_codes(q), pack_codes(db), backend=backend)
    assert np.issubdtype(d.dtype, np.integer) and d.shape == (9, 31)
    np.testing.assert_array_equal(d, np.rint(cdist(q, db, "hamming") * n_bits).astype(int))


def test_hamming_non_contiguous_input():
    rng = np.random.default_rng(1)
    codes = pack_codes(random_bits(rng, 20, 128))
    view = codes[::2]
    np.testing.assert_array_equal(
        hamming_distances(view, codes, backend="numba"), hamming_distances(view.copy(), codes, backend="numpy")
    )


def test_hamming_bad_input():
    a = pack_codes(np.ones((2, 16)))
    with pytest.raises(ValueError, match="widths differ"):
        hamming_distances(a, pack_codes(np.ones((2, 24))))
    with pytest.raises(ValueError, match="non-empty"):
        hamming_distances(a, np.zeros((0, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        hamming_distances(a, np.ones((2, 16)))  # unpacked bits passed by mistake
    with pytest.raises(ValueError, match="backend"):
        hamming_distances(a, a, backend="gpu")


# --------------------------------------------------------------------------- k-NN vs faiss
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_bits", [8, 24, 64, 72, 128, 200, 256])
def test_knn_matches_faiss_random(backend, n_bits):
    rng = np.random.default_rng(1000 + n_bits)
    db = pack_codes(random_bits(rng, 3000, n_bits))
    q = pack_codes(random_bits(rng, 40, n_bits))
    for k in (1, 10, 100):
        d, i = hamming_knn(q, db, k, backend=backend)
        fd, fi = faiss_search(q, db, k)
        assert d.shape == i.shape == (40, k)
        np.testing.assert_array_equal(d, fd)
        np.testing.assert_array_equal(i, fi)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_bits", [32, 64])
def test_knn_matches_faiss_digits(backend, n_bits):
    # real codes: many exact ties and duplicates, so the tie rule is exercised heavily
    X, _ = load_digits(return_X_y=True)
    cols = bc.select_bits_by_variance(X[:1200], n_bits)
    b = MeanThresholdBinarizer().fit(X[:1200, cols])
    db, q = pack_codes(b.transform(X[:1200, cols])), pack_codes(b.transform(X[1200:, cols]))
    d, i = hamming_knn(q, db, 50, backend=backend)
    fd, fi = faiss_search(q, db, 50)
    np.testing.assert_array_equal(d, fd)
    np.testing.assert_array_equal(i, fi)
    # the same result as a stable sort on (distance, index) of the full distance matrix
    full = hamming_distances(q, db)
    order = np.lexsort((np.broadcast_to(np.arange(len(db)), full.shape), full), axis=1)[:, :50]
    np.testing.assert_array_equal(i, order)


@pytest.mark.parametrize("backend", BACKENDS)
def test_knn_tie_rule_lower_index_first(backend):
    # database: codes at distances [2, 1, 1, 0, 1, 0] from the zero query
    bits = np.zeros((6, 8), dtype=np.uint8)
    bits[0, :2] = 1
    bits[1, 0] = bits[2, 3] = bits[4, 7] = 1
    d, i = hamming_knn(pack_codes(np.zeros((1, 8))), pack_codes(bits), 5, backend=backend)
    np.testing.assert_array_equal(d, [[0, 0, 1, 1, 1]])
    np.testing.assert_array_equal(i, [[3, 5, 1, 2, 4]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_knn_k_equals_database_size(backend):
    rng = np.random.default_rng(3)
    db, q = pack_codes(random_bits(rng, 17, 40)), pack_codes(random_bits(rng, 4, 40))
    d, i = hamming_knn(q, db, 17, backend=backend)
    full = hamming_distances(q, db)
    np.testing.assert_array_equal(i, np.argsort(full, axis=1, kind="stable"))
    np.testing.assert_array_equal(d, np.sort(full, axis=1))


def brute_force_knn(q_codes, db_codes, k):
    """Answer key without courselib: every distance with np.bitwise_count, then a stable sort by (distance, index)."""
    full = np.bitwise_count(q_codes[:, None, :] ^ db_codes[None, :, :]).sum(axis=2, dtype=np.int64)
    idx = np.argsort(full, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(full, idx, axis=1), idx


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n_bits", [16, 32, 64, 72, 128, 256])
def test_knn_answer_key_many_ties(n_bits, threads):
    # Biased bits and repeated rows give long runs of equal distances, so the lower-index rule decides most
    # of each answer. From 64 bits on, 20,011 codes span more than one block of the kernel and end mid-step;
    # n_bits covers every word width it reads (uint16, uint32, uint64, and bytes for 72 bits = 9 bytes).
    import numba

    rng = np.random.default_rng(n_bits)
    db = pack_codes(random_bits(rng, 20_011, n_bits, p=0.95))
    db[rng.integers(0, len(db), 5_000)] = db[rng.integers(0, len(db), 5_000)]
    q = np.concatenate([pack_codes(random_bits(rng, 20, n_bits, p=0.95)), db[[3, 3, 17]]])
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        for k in (1, 10, 257):
            d, i = hamming_knn(q, db, k, backend="numba")
            bd, bi = brute_force_knn(q, db, k)
            fd, fi = faiss_search(q, db, k)
            assert d.dtype == np.int32 and i.dtype == np.int64 and d.shape == (len(q), k)
            np.testing.assert_array_equal(d, bd)
            np.testing.assert_array_equal(i, bi)
            np.testing.assert_array_equal(d, fd)
            np.testing.assert_array_equal(i, fi)
        assert (bd[:, -1] == bd[:, -2]).mean() > 0.5  # the ties are real: the tie rule was exercised
        small = db[:40]
        d, i = hamming_knn(q, small, len(small), backend="numba")  # k = n: the whole database, ordered
        bd, bi = brute_force_knn(q, small, len(small))
        np.testing.assert_array_equal(d, bd)
        np.testing.assert_array_equal(i, bi)
    finally:
        numba.set_num_threads(before)
    with pytest.raises(ValueError, match="k must be between 1 and the database size 40"):
        hamming_knn(q, small, len(small) + 1)  # k larger than n: an error, not padding (faiss pads with -1)


def test_knn_auto_backend_large_matches_numpy():
    rng = np.random.default_rng(4)
    db, q = pack_codes(random_bits(rng, 20000, 64)), pack_codes(random_bits(rng, 120, 64))
    assert q.shape[0] * db.shape[0] >= bc.NUMPY_PAIRS_THRESHOLD
    d, i = hamming_knn(q, db, 10)
    d2, i2 = hamming_knn(q, db, 10, backend="numpy")
    np.testing.assert_array_equal(d, d2)
    np.testing.assert_array_equal(i, i2)


@pytest.mark.parametrize("k", [0, -1, 6, 2.5, True])
def test_knn_bad_k(k):
    codes = pack_codes(np.ones((5, 8)))
    with pytest.raises(ValueError, match="k must"):
        hamming_knn(codes, codes, k)


def test_knn_bad_codes():
    codes = pack_codes(np.ones((5, 8)))
    with pytest.raises(ValueError, match="widths differ"):
        hamming_knn(codes, pack_codes(np.ones((5, 16))), 1)
    with pytest.raises(ValueError, match="non-empty"):
        hamming_knn(np.zeros((0, 1), dtype=np.uint8), codes, 1)


def test_knn_on_mnist_matches_faiss(shared_mnist):
    from courselib.data import load_dataset

    X, _ = load_dataset("mnist", split="test", root=shared_mnist)
    X = X.reshape(len(X), -1)
    cols = bc.select_bits_by_variance(X[:9000], 128)
    b = MeanThresholdBinarizer().fit(X[:9000, cols])
    db, q = pack_codes(b.transform(X[:9000, cols])), pack_codes(b.transform(X[9000:9200, cols]))
    d, i = hamming_knn(q, db, 20)
    fd, fi = faiss_search(q, db, 20)
    np.testing.assert_array_equal(d, fd)
    np.testing.assert_array_equal(i, fi)


# --------------------------------------------------------------------------- explorer callback
@pytest.mark.parametrize("query_index,n_bits", [(0, 64), (17, 8), (296, 32)])
def test_plot_neighbours_draws_the_nearest_digits(query_index, n_bits):
    import matplotlib.pyplot as plt

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = X[:1500], X[1500:], y[:1500], y[1500:]
    k = 5
    fig = bc.plot_neighbours(query_index, n_bits, k, X_train=X_train, X_test=X_test, y_train=y_train, y_test=y_test)
    rows = [fig.axes[: k + 1], fig.axes[k + 1 :]]
    # answer key without packing: bit i is x_i > mean_i on the n_bits most variable pixels; Hamming distance
    # counts differing bits, Euclidean distance is on all pixels; ties go to the lower training index
    cols = np.sort(np.argsort(-X_train.var(axis=0), kind="stable")[:n_bits])
    bits = X_train[:, cols] > X_train[:, cols].mean(axis=0)
    query_bits = X_test[query_index, cols] > X_train[:, cols].mean(axis=0)
    hamming = (bits != query_bits).sum(axis=1)
    q = X_test[query_index].astype(np.float32)
    euclid = np.sqrt(((X_train.astype(np.float32) - q) ** 2).sum(axis=1))
    for row, name, dist, fmt in [(rows[0], "Hamming", hamming, "{:.0f}"), (rows[1], "Euclidean", euclid, "{:.2f}")]:
        assert row[0].get_ylabel() == name
        np.testing.assert_array_equal(row[0].images[0].get_array(), q.reshape(8, 8))
        nearest = np.lexsort((np.arange(len(dist)), dist))[:k]
        for ax, j in zip(row[1:], nearest):
            np.testing.assert_array_equal(ax.images[0].get_array(), X_train[j].reshape(8, 8).astype(np.float32))
            assert ax.get_title() == f"d={fmt.format(dist[j])}  y={y_train[j]}"
            framed = matplotlib.colors.same_color(ax.spines["left"].get_edgecolor(), "red")
            assert framed == (y_train[j] != y_test[query_index])
    plt.close(fig)


def test_plot_neighbours_bad_input():
    with pytest.raises(ValueError):
        bc.plot_neighbours(10_000, 64)
    with pytest.raises(ValueError):
        bc.plot_neighbours(0, 65)
