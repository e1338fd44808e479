r"""Retrieval evaluation for binary codes: precision@k and mean average precision (mAP).

Conventions used throughout (book section ``binary-codes-evaluation``):

- **Ranking.** Each query ranks the whole database by ascending distance; ties are broken by the
  lower database index (a stable sort), the same rule as :func:`courselib.binary_codes.hamming_knn`.
  Hamming distances take only ``n_bits + 1`` values, so ties are frequent and the rule matters.
- **Relevance** is a boolean matrix ``relevance[i, j]`` (query ``i``, database item ``j``), built by
  :func:`label_relevance` (same class label) or :func:`euclidean_relevance` (among the query's
  Euclidean nearest neighbours in the float features, the ground truth of Gong & Lazebnik, 2011).
- **precision@k** (book equation ``binary-codes-precision-at-k``) of one query is the fraction of
  relevant items among its top ``k``: :math:`P@k = \frac{1}{k}\sum_{r=1}^{k} \mathrm{rel}_r`.
- **Average precision** (book equation ``binary-codes-ap``) of one query over a ranked list of
  length :math:`L`: :math:`AP = \frac{1}{R_L}\sum_{r=1}^{L} P@r \cdot \mathrm{rel}_r`, where
  :math:`R_L` is the number of relevant items in the list (for the full ranking, :math:`L = n` and
  :math:`R_L` is the total number of relevant items). A query with no relevant item gets AP = 0.
  **mAP** is the mean of AP over the queries. With a cut-off ``k`` (``mAP@k``) the list is the top ``k``
  and :math:`R_k` counts the relevant items retrieved there (the hashing-literature convention).

Typical use with packed codes::

    from courselib import binary_codes, retrieval
    relevance = retrieval.label_relevance(y_query, y_database)
    retrieval.evaluate_codes(query_codes, database_codes, relevance, ks=(10, 100))
    # -> {"mAP": ..., "precision@10": ..., "precision@100": ...}

or, with any distance matrix (Hamming, Euclidean, ...)::

    retrieval.mean_average_precision(distances, relevance)
    retrieval.precision_at_k(distances, relevance, k=100)
"""

from __future__ import annotations

import numpy as np

from .binary_codes import hamming_distances

__all__ = [
    "label_relevance",
    "euclidean_relevance",
    "rank_by_distance",
    "ranked_relevance",
    "average_precision",
    "mean_average_precision",
    "precision_at_k",
    "evaluate_codes",
]


def _check_2d(a, name: str, dtype=None) -> np.ndarray:
    arr = np.asarray(a, dtype=dtype)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n_queries, n_database), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {arr.shape}")
    return arr


def _check_relevance(relevance, shape=None) -> np.ndarray:
    rel = np.asarray(relevance)
    if rel.dtype != np.bool_:
        if not (np.issubdtype(rel.dtype, np.integer) or np.issubdtype(rel.dtype, np.floating)) or not np.all(
            (rel == 0) | (rel == 1)
        ):
            raise ValueError("relevance must be a boolean (or 0/1) matrix")
        rel = rel.astype(bool)
    rel = _check_2d(rel, "relevance")
    if shape is not None and rel.shape != tuple(shape):
        raise ValueError(f"relevance has shape {rel.shape} but the distances have shape {tuple(shape)}")
    return rel


def _check_k(k, n: int, name: str = "k") -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
        raise ValueError(f"{name} must be an integer, got {k!r}")
    if k < 1 or k > n:
        raise ValueError(f"{name} must be between 1 and the database size {n}, got {k}")
    return int(k)


# ----------------------------------------------------------------------------------------------------
# Ground truth
# ----------------------------------------------------------------------------------------------------
def label_relevance(query_labels, database_labels) -> np.ndarray:
    """Relevance by class label: ``relevance[i, j] = (query_labels[i] == database_labels[j])``.

    Returns
    -------
    relevance : ndarray of bool, shape (n_queries, n_database)
    """
    q = np.asarray(query_labels)
    d = np.asarray(database_labels)
    if q.ndim != 1 or d.ndim != 1 or q.size == 0 or d.size == 0:
        raise ValueError(f"labels must be non-empty 1-D arrays, got shapes {q.shape} and {d.shape}")
    return q[:, None] == d[None, :]


def _squared_euclidean(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    q = q.astype(np.float64)
    d = d.astype(np.float64)
    d2 = (q * q).sum(1)[:, None] - 2.0 * q @ d.T + (d * d).sum(1)[None, :]
    return np.maximum(d2, 0.0)


def euclidean_relevance(query_features, database_features, n_neighbours: int = 50, *, rule: str = "knn") -> np.ndarray:
    """Relevance by Euclidean neighbourhood in the float features.

    Parameters
    ----------
    query_features : array_like of shape (n_queries, n_features)
    database_features : array_like of shape (n_database, n_features)
    n_neighbours : int, default 50
        Size of the neighbourhood.
    rule : {"knn", "radius"}, default "knn"
        ``"knn"``: item ``j`` is relevant to query ``i`` when it is one of the ``n_neighbours``
        Euclidean nearest neighbours of ``i`` (exactly ``n_neighbours`` per query; ties broken by
        the lower database index). ``"radius"``: relevant when closer than a single threshold, the
        average over the queries of the distance to the ``n_neighbours``-th nearest neighbour
        (Gong & Lazebnik's "nominal threshold", CVPR 2011, Sec. 4).

    Returns
    -------
    relevance : ndarray of bool, shape (n_queries, n_database)
    """
    q = _check_2d(query_features, "query_features", np.float64)
    d = _check_2d(database_features, "database_features", np.float64)
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"feature dimensions differ: {q.shape[1]} vs {d.shape[1]}")
    n_neighbours = _check_k(n_neighbours, d.shape[0], "n_neighbours")
    if rule not in ("knn", "radius"):
        raise ValueError(f"rule must be 'knn' or 'radius', got {rule!r}")
    d2 = _squared_euclidean(q, d)
    order = rank_by_distance(d2, n_neighbours)
    if rule == "knn":
        rel = np.zeros(d2.shape, dtype=bool)
        np.put_along_axis(rel, order, True, axis=1)
        return rel
    kth = np.sqrt(np.take_along_axis(d2, order[:, -1:], axis=1)).mean()
    return np.sqrt(d2) <= kth


# ----------------------------------------------------------------------------------------------------
# Ranking
# ----------------------------------------------------------------------------------------------------
def rank_by_distance(distances, k: int | None = None) -> np.ndarray:
    """Database indices of each query sorted by ascending distance, ties by the lower index.

    Parameters
    ----------
    distances : array_like of shape (n_queries, n_database)
    k : int, optional
        Keep only the first ``k`` columns (default: the whole ranking).

    Returns
    -------
    ranking : ndarray of int64, shape (n_queries, k or n_database)
    """
    dist = _check_2d(distances, "distances")
    n = dist.shape[1]
    k = n if k is None else _check_k(k, n)
    if k < n and k <= 1024:
        # exact partial selection on the (distance, index) order, then a stable sort of the kept part
        kth = np.partition(dist, k - 1, axis=1)[:, k - 1 : k]
        out = np.empty((dist.shape[0], k), dtype=np.int64)
        for i in range(dist.shape[0]):
            cand = np.flatnonzero(dist[i] <= kth[i, 0])
            out[i] = cand[np.argsort(dist[i, cand], kind="stable")[:k]]
        return out
    return np.argsort(dist, axis=1, kind="stable")[:, :k].astype(np.int64)


def ranked_relevance(ranking, relevance) -> np.ndarray:
    """Relevance of the ranked items: ``out[i, r] = relevance[i, ranking[i, r]]``.

    ``ranking`` can be the indices returned by :func:`courselib.binary_codes.hamming_knn`, by
    :func:`rank_by_distance` or by any other search (faiss, ...).
    """
    rk = _check_2d(ranking, "ranking")
    rel = _check_relevance(relevance)
    if rk.shape[0] != rel.shape[0]:
        raise ValueError(f"ranking has {rk.shape[0]} queries but relevance has {rel.shape[0]}")
    if not np.issubdtype(rk.dtype, np.integer):
        raise ValueError(f"ranking must hold integer indices, got dtype {rk.dtype}")
    if rk.min() < 0 or rk.max() >= rel.shape[1]:
        raise ValueError(f"ranking holds indices outside [0, {rel.shape[1] - 1}]")
    return np.take_along_axis(rel, rk, axis=1)


# ----------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------
def average_precision(ranked_rel, n_relevant=None) -> np.ndarray:
    r"""Average precision of each query from the relevance of its ranked list.

    :math:`AP = \frac{1}{R}\sum_{r=1}^{L} P@r\,\mathrm{rel}_r` (book equation ``binary-codes-ap``).

    Parameters
    ----------
    ranked_rel : array_like of bool, shape (n_queries, L)
        ``ranked_rel[i, r]``: is the item at rank ``r`` (0-based) relevant to query ``i``.
    n_relevant : array_like of int, shape (n_queries,), optional
        The normalizer :math:`R` per query. Default: the number of relevant items in the list
        (which is the total number of relevant items when the list is the full ranking).
        Queries with :math:`R = 0` get AP = 0.

    Returns
    -------
    ap : ndarray of float64, shape (n_queries,)

    Examples
    --------
    Relevant items at ranks 1 and 3: AP = (1/1 + 2/3) / 2 = 5/6.

    >>> average_precision([[True, False, True, False]])
    array([0.83333333])
    """
    rel = _check_relevance(ranked_rel)
    hits = np.cumsum(rel, axis=1)
    ranks = np.arange(1, rel.shape[1] + 1)
    summed = ((hits / ranks) * rel).sum(axis=1)
    if n_relevant is None:
        R = hits[:, -1].astype(np.float64)
    else:
        R = np.asarray(n_relevant, dtype=np.float64).reshape(-1)
        if R.shape[0] != rel.shape[0] or np.any(R < 0):
            raise ValueError(f"n_relevant must be {rel.shape[0]} non-negative counts, got {R.shape}")
    return np.divide(summed, R, out=np.zeros_like(summed), where=R > 0)


def mean_average_precision(distances, relevance, *, k: int | None = None) -> float:
    r"""Mean average precision (mAP) of a distance matrix against a relevance matrix.

    Every query ranks the database by ascending ``distances`` (ties: lower database index first)
    and gets :math:`AP = \frac{1}{R_L}\sum_{r=1}^{L} P@r \cdot \mathrm{rel}_r`; mAP is the mean over
    queries (book equations ``binary-codes-ap`` and ``binary-codes-map``).

    Parameters
    ----------
    distances : array_like of shape (n_queries, n_database)
        E.g. :func:`courselib.binary_codes.hamming_distances` of packed codes, or squared Euclidean
        distances of float features.
    relevance : array_like of bool, shape (n_queries, n_database)
        Ground truth (:func:`label_relevance`, :func:`euclidean_relevance`).
    k : int, optional
        Evaluate the top ``k`` only (mAP@k, normalized by the relevant items found in the top ``k``).
        Default: the full ranking (normalized by all relevant items), as in Gong & Lazebnik (2011).

    Returns
    -------
    float
    """
    dist = _check_2d(distances, "distances")
    rel = _check_relevance(relevance, dist.shape)
    ranking = rank_by_distance(dist, k)
    return float(average_precision(ranked_relevance(ranking, rel)).mean())


def precision_at_k(distances, relevance, k: int) -> float:
    r"""Mean precision@k: :math:`\frac{1}{|Q|}\sum_i \frac{1}{k}\sum_{r=1}^{k}\mathrm{rel}_{ir}`.

    Parameters
    ----------
    distances : array_like of shape (n_queries, n_database)
    relevance : array_like of bool, shape (n_queries, n_database)
    k : int
        Cut-off, ``1 <= k <= n_database``. Ties at the cut-off are broken by the lower index.

    Returns
    -------
    float
    """
    dist = _check_2d(distances, "distances")
    rel = _check_relevance(relevance, dist.shape)
    k = _check_k(k, dist.shape[1])
    ranking = rank_by_distance(dist, k)
    return float(ranked_relevance(ranking, rel).mean())


def evaluate_codes(query_codes, database_codes, relevance, *, ks=(10, 100), map_k: int | None = None) -> dict:
    """Hamming-ranking evaluation of packed binary codes in one call.

    Parameters
    ----------
    query_codes, database_codes : ndarray of uint8
        Packed codes (:func:`courselib.binary_codes.pack_codes`), same width.
    relevance : array_like of bool, shape (n_queries, n_database)
    ks : sequence of int, default (10, 100)
        Cut-offs for precision@k (values larger than the database are skipped).
    map_k : int, optional
        Cut-off for mAP (default: full ranking).

    Returns
    -------
    dict
        ``{"mAP": float, "precision@10": float, ...}``
    """
    dist = hamming_distances(query_codes, database_codes)
    out = {"mAP": mean_average_precision(dist, relevance, k=map_k)}
    for k in ks:
        if k <= dist.shape[1]:
            out[f"precision@{k}"] = precision_at_k(dist, relevance, k)
    return out
