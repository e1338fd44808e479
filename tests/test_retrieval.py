"""Tests for courselib.retrieval: precision@k, average precision, mAP and relevance helpers.

Answer keys: hand-worked rankings, scikit-learn's ``average_precision_score`` (untied scores)
and ``NearestNeighbors`` (Euclidean ground truth).
"""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score
from sklearn.neighbors import NearestNeighbors

from courselib import retrieval as rt
from courselib.binary_codes import hamming_distances, pack_codes


def test_average_precision_hand_worked():
    # relevant at ranks 1, 3 and 6 of 6: AP = (1/1 + 2/3 + 3/6) / 3
    ap = rt.average_precision([[1, 0, 1, 0, 0, 1], [0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]])
    np.testing.assert_allclose(ap, [(1 + 2 / 3 + 3 / 6) / 3, 0.0, 1 / 2])


def test_average_precision_with_total_relevant():
    # top-3 list with 2 hits out of 4 relevant items in the database: (1/1 + 2/3) / 4
    np.testing.assert_allclose(rt.average_precision([[1, 0, 1]], n_relevant=[4]), [(1 + 2 / 3) / 4])


def test_map_hand_worked_with_ties():
    # query 0: distances [2, 0, 1, 0] -> ranking [1, 3, 2, 0] (tie 1 vs 3: lower index first)
    # relevance [0, 0, 1, 1] -> ranked [0, 1, 1, 0] -> AP = (1/2 + 2/3) / 2
    # query 1: distances [1, 1, 1, 1] -> ranking [0, 1, 2, 3], relevance [1, 0, 0, 1] -> (1 + 2/4) / 2
    dist = np.array([[2, 0, 1, 0], [1, 1, 1, 1]])
    rel = np.array([[0, 0, 1, 1], [1, 0, 0, 1]], dtype=bool)
    ap0, ap1 = (1 / 2 + 2 / 3) / 2, (1 + 2 / 4) / 2
    assert rt.mean_average_precision(dist, rel) == pytest.approx((ap0 + ap1) / 2)
    # mAP@2: query 0 ranked [0, 1] -> 1/2 / 1; query 1 ranked [1, 0] -> 1
    assert rt.mean_average_precision(dist, rel, k=2) == pytest.approx((1 / 2 + 1) / 2)
    # precision@2 and @3
    assert rt.precision_at_k(dist, rel, 2) == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert rt.precision_at_k(dist, rel, 3) == pytest.approx((2 / 3 + 1 / 3) / 2)


def test_map_matches_sklearn_without_ties():
    rng = np.random.default_rng(0)
    dist = rng.random((25, 80))
    rel = rng.random((25, 80)) < 0.2
    rel[:, 0] = True  # every query has a relevant item
    expected = np.mean([average_precision_score(rel[i], -dist[i]) for i in range(25)])
    assert rt.mean_average_precision(dist, rel) == pytest.approx(expected)


def test_precision_at_k_matches_direct_count():
    rng = np.random.default_rng(1)
    dist = rng.integers(0, 9, (30, 200))
    rel = rng.random((30, 200)) < 0.3
    order = np.argsort(dist, axis=1, kind="stable")
    for k in (1, 10, 200):
        expected = np.take_along_axis(rel, order[:, :k], axis=1).mean()
        assert rt.precision_at_k(dist, rel, k) == pytest.approx(expected)


@pytest.mark.parametrize("k", [1, 5, 37, 300, None])
def test_rank_by_distance_is_stable_sort(k):
    rng = np.random.default_rng(2)
    dist = rng.integers(0, 6, (12, 300))
    full = np.argsort(dist, axis=1, kind="stable")
    np.testing.assert_array_equal(rt.rank_by_distance(dist, k), full[:, : (k or 300)])


def test_label_relevance():
    rel = rt.label_relevance([0, 1], [1, 0, 1])
    np.testing.assert_array_equal(rel, [[False, True, False], [True, False, True]])


def test_euclidean_relevance_knn_matches_sklearn():
    rng = np.random.default_rng(3)
    q, db = rng.normal(size=(15, 5)), rng.normal(size=(120, 5))
    rel = rt.euclidean_relevance(q, db, n_neighbours=7)
    _, nn = NearestNeighbors(n_neighbors=7).fit(db).kneighbors(q)
    expected = np.zeros_like(rel)
    np.put_along_axis(expected, nn, True, axis=1)
    np.testing.assert_array_equal(rel, expected)
    assert (rel.sum(axis=1) == 7).all()


def test_euclidean_relevance_radius_hand_worked():
    # 1-D points: distances from query 0 to db [0,1,3] = [0,1,3]; from query 10: [10,9,7]
    # 1st-NN distances 0 and 7 -> radius 3.5
    rel = rt.euclidean_relevance([[0.0], [10.0]], [[0.0], [1.0], [3.0]], n_neighbours=1, rule="radius")
    np.testing.assert_array_equal(rel, [[True, True, True], [False, False, False]])


def test_evaluate_codes_consistent():
    rng = np.random.default_rng(4)
    q = pack_codes(rng.random((10, 32)) < 0.5)
    db = pack_codes(rng.random((60, 32)) < 0.5)
    rel = rt.label_relevance(rng.integers(0, 3, 10), rng.integers(0, 3, 60))
    res = rt.evaluate_codes(q, db, rel, ks=(5, 100))
    d = hamming_distances(q, db)
    assert set(res) == {"mAP", "precision@5"}
    assert res["mAP"] == pytest.approx(rt.mean_average_precision(d, rel))
    assert res["precision@5"] == pytest.approx(rt.precision_at_k(d, rel, 5))


def test_ranked_relevance_from_knn_indices():
    rel = np.array([[True, False, True]])
    np.testing.assert_array_equal(rt.ranked_relevance([[2, 1]], rel), [[True, False]])
    with pytest.raises(ValueError, match="outside"):
        rt.ranked_relevance([[3]], rel)


def test_bad_input():
    dist = np.zeros((2, 3))
    rel = np.ones((2, 3), dtype=bool)
    with pytest.raises(ValueError, match="shape"):
        rt.mean_average_precision(dist, np.ones((2, 4), dtype=bool))
    with pytest.raises(ValueError, match="k must"):
        rt.precision_at_k(dist, rel, 4)
    with pytest.raises(ValueError, match="k must"):
        rt.precision_at_k(dist, rel, 0)
    with pytest.raises(ValueError, match="non-empty"):
        rt.mean_average_precision(np.zeros((0, 3)), np.zeros((0, 3), dtype=bool))
    with pytest.raises(ValueError, match="boolean"):
        rt.mean_average_precision(dist, np.full((2, 3), 2))
    with pytest.raises(ValueError, match="rule"):
        rt.euclidean_relevance(dist, dist, 1, rule="cosine")
    with pytest.raises(ValueError, match="1-D"):
        rt.label_relevance([], [1])
