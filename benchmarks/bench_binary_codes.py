"""Benchmark: binary codes and Hamming search (chapter "Binary codes and Hamming search").

Tables printed (all timings are medians of repeats, measured side by side in one run, the methods
of a table timed in interleaved rounds so that load changes on a shared machine hit them alike):

1. ``hamming_knn`` vs faiss ``IndexBinaryFlat``: 100,000 and 1,000,000 uniform random codes of 64, 128
   and 256 bits, 200 queries, k = 10, one table at 1 thread and one at 2 threads (numba's and faiss's
   OpenMP thread counts both set, then restored), with the ratio courselib / faiss; then a naive NumPy
   XOR + popcount + argpartition at 100,000 x 64 bits. ``--quick``: 100,000 codes, 64 and 256 bits.
2. Binary vs float32 exact search on the same 100,000 items (64 float32 features vs 64-bit codes), 200
   queries, 1 thread: time and memory ratios, faiss ``IndexFlatL2`` and NumPy.
3. Retrieval quality of 64/128/256-bit threshold codes (the highest-variance pixels thresholded at
   their training means) vs float Euclidean search: mAP and precision@100 on real MNIST from
   ``../shared/data/mnist`` (9,000 database / 1,000 queries, stratified split, seed 0), or on digits
   when MNIST is absent.

Every timed table is followed by the *Measured on:* line of :func:`courselib.measure.machine` (CPU, its
SIMD features, threads, versions): which kernel is faster depends on them (AVX2 vs AVX-512 ``vpopcntq``,
the thread count), so the book quotes each table with its line. faiss's OpenMP threads spin while they wait,
which on a loaded machine costs faiss more than numba: compare only at equal, explicitly set thread counts.

Run: ``.venv/bin/python benchmarks/run.py binary_codes`` (or ``python benchmarks/bench_binary_codes.py
[--quick]``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SHARED_MNIST, machine_line, print_table, shared_mnist_available, time_calls


def naive_numpy_knn(q, db, k, block=64):
    """XOR + np.bitwise_count + argpartition on the bytes: the obvious NumPy implementation."""
    out_d = np.empty((len(q), k), dtype=np.int64)
    out_i = np.empty((len(q), k), dtype=np.int64)
    for s in range(0, len(q), block):
        d = np.bitwise_count(q[s : s + block, None, :] ^ db[None, :, :]).sum(axis=2, dtype=np.int64)
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(d, part, axis=1), axis=1, kind="stable")
        out_i[s : s + block] = np.take_along_axis(part, order, axis=1)
        out_d[s : s + block] = np.take_along_axis(d, out_i[s : s + block], axis=1)
    return out_d, out_i


def numpy_l2_knn(q, x, k, block=256):
    """Exact float32 k-NN with the matrix-product expansion of the squared distance."""
    xx = (x * x).sum(1)
    out = np.empty((len(q), k), dtype=np.int64)
    for s in range(0, len(q), block):
        qb = q[s : s + block]
        d2 = (qb * qb).sum(1)[:, None] - 2.0 * qb @ x.T + xx[None, :]
        part = np.argpartition(d2, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(d2, part, axis=1), axis=1)
        out[s : s + block] = np.take_along_axis(part, order, axis=1)
    return out


def paired_times(fns, repeats):
    """Median wall-clock time of each function, timed in interleaved rounds (one call of each per round,
    after one warm-up call of each: :func:`courselib.measure.time_calls`).

    Interleaving keeps the ratios fair on a shared machine whose load drifts during the run.
    """
    times = time_calls(dict(enumerate(fns)), rounds=repeats, repeats=1, warmup=1)
    return [times[i] for i in range(len(fns))]


LIBRARIES = ("numpy", "faiss-cpu", "numba")


def _set_threads(n):
    """Set numba's and faiss's (OpenMP) thread counts; return the previous pair for :func:`_restore_threads`."""
    import faiss
    import numba

    before = (numba.get_num_threads(), faiss.omp_get_max_threads())
    faiss.omp_set_num_threads(n)
    numba.set_num_threads(n)
    return before


def _restore_threads(before):
    import faiss
    import numba

    numba.set_num_threads(before[0])
    faiss.omp_set_num_threads(before[1])


def table_knn_vs_faiss(quick):
    """courselib ``hamming_knn`` vs faiss ``IndexBinaryFlat``, side by side, at 1 and at 2 threads."""
    import faiss

    from courselib import binary_codes as bc

    n_q, k = 200, 10
    sizes = (100_000,) if quick else (100_000, 1_000_000)
    widths = (64, 256) if quick else (64, 128, 256)
    repeats = 3 if quick else 7
    rng = np.random.default_rng(0)
    data = {}
    for n_db in sizes:
        for n_bits in widths:
            db = rng.integers(0, 256, size=(n_db, n_bits // 8), dtype=np.uint8)  # uniform random bits
            q = rng.integers(0, 256, size=(n_q, n_bits // 8), dtype=np.uint8)
            index = faiss.IndexBinaryFlat(n_bits)
            index.add(db)
            data[n_db, n_bits] = db, q, index
    for threads in (1, 2):
        before = _set_threads(threads)
        rows = []
        try:
            for (n_db, n_bits), (db, q, index) in data.items():
                d, i = bc.hamming_knn(q, db, k, backend="numba")  # compile / load the kernel outside timing
                fd, fi = index.search(q, k)
                same = bool((d == fd).all() and (i == fi).all())
                t_f, t_c = paired_times(
                    [lambda: index.search(q, k), lambda: bc.hamming_knn(q, db, k, backend="numba")], repeats
                )
                rows.append([f"{n_db:,}", n_bits, t_c * 1e3, t_f * 1e3, t_c / t_f, same])
            if threads == 1:
                db, q, index = data[100_000, 64]
                fd, fi = index.search(q, k)
                nd, ni = naive_numpy_knn(q, db, k)
                same = bool((nd == fd).all() and (ni == fi).all())
                t_f, t_n = paired_times(
                    [lambda: index.search(q, k), lambda: naive_numpy_knn(q, db, k)], 1 if quick else 3
                )
                naive = [["100,000", 64, t_n * 1e3, t_f * 1e3, t_n / t_f, same]]
        finally:
            _restore_threads(before)
        print_table(
            f"Exact Hamming {k}-NN, {n_q} queries, uniform random codes, {threads} thread{'s' * (threads > 1)}: "
            "courselib hamming_knn (numba) vs faiss IndexBinaryFlat",
            ["database codes", "bits", "courselib (ms)", "faiss (ms)", "courselib / faiss", "same result as faiss"],
            rows,
        )
        print(machine_line(num_threads=threads, libraries=LIBRARIES) + "\n", flush=True)
    print_table(
        "For comparison, 1 thread: naive NumPy (XOR + np.bitwise_count + argpartition) vs faiss IndexBinaryFlat",
        ["database codes", "bits", "naive numpy (ms)", "faiss (ms)", "numpy / faiss", "same result as faiss"],
        naive,
    )
    print(machine_line(num_threads=1, libraries=LIBRARIES) + "\n", flush=True)


def table_binary_vs_float(quick):
    import faiss

    from courselib import binary_codes as bc

    rng = np.random.default_rng(1)
    n_db, n_q, dim, k = 100_000, 200, 64, 10
    repeats = 3 if quick else 5
    X = rng.normal(size=(n_db, dim)).astype(np.float32)
    Q = rng.normal(size=(n_q, dim)).astype(np.float32)
    thr = bc.MeanThresholdBinarizer().fit(X)
    db, q = bc.pack_codes(thr.transform(X)), bc.pack_codes(thr.transform(Q))
    ib = faiss.IndexBinaryFlat(dim)
    ib.add(db)
    fl = faiss.IndexFlatL2(dim)
    fl.add(X)
    before = _set_threads(1)
    bc.hamming_knn(q, db, k, backend="numba")
    fns = {
        "faiss IndexBinaryFlat (64-bit codes)": lambda: ib.search(q, k),
        "courselib hamming_knn (64-bit codes)": lambda: bc.hamming_knn(q, db, k, backend="numba"),
        "faiss IndexFlatL2 (64 float32)": lambda: fl.search(Q, k),
        "numpy L2 (64 float32)": lambda: numpy_l2_knn(Q, X, k),
    }
    try:
        times = dict(zip(fns, paired_times(list(fns.values()), repeats)))
    finally:
        _restore_threads(before)
    mem = {m: (db.nbytes if "codes" in m else X.nbytes) for m in times}
    ref_t = times["faiss IndexBinaryFlat (64-bit codes)"]
    rows = [[m, mem[m] / 1e6, mem[m] / db.nbytes, t * 1e3, t / ref_t] for m, t in times.items()]
    print_table(
        f"Binary vs float32 exact 10-NN search: {n_db:,} items, {n_q:,} queries, 1 thread",
        ["method", "database MB", "memory / codes", "time (ms)", "time / faiss binary"],
        rows,
    )
    print(machine_line(num_threads=1, libraries=LIBRARIES) + "\n", flush=True)


def _load_quality_data():
    from courselib.data import load_dataset, train_test_split_arrays

    if shared_mnist_available():
        X, y = load_dataset("mnist", split="test", root=SHARED_MNIST)
        X = X.reshape(len(X), -1)
        X_db, X_q, y_db, y_q = train_test_split_arrays(X, y, test_size=0.1, seed=0)
        return "MNIST test set (../shared), 9,000 database / 1,000 queries", X_db, X_q, y_db, y_q
    X_db, y_db = load_dataset("digits", "train")
    X_q, y_q = load_dataset("digits", "test")
    return (
        "digits (MNIST not found), 1,257 database / 540 queries",
        X_db.reshape(len(X_db), -1),
        X_q.reshape(len(X_q), -1),
        y_db,
        y_q,
    )


def table_quality(quick):
    from courselib import binary_codes as bc
    from courselib import retrieval as rt

    name, X_db, X_q, y_db, y_q = _load_quality_data()
    if quick:
        X_q, y_q = X_q[:300], y_q[:300]
        name += " (quick: first 300 queries)"
    n_bits_grid = [b for b in (64, 128, 256) if b <= X_db.shape[1]]
    rel_label = rt.label_relevance(y_q, y_db)
    rel_nn = rt.euclidean_relevance(X_q, X_db, n_neighbours=100)
    d2 = rt._squared_euclidean(X_q, X_db)
    rows = [
        [
            "float32 Euclidean",
            4 * X_db.shape[1],
            rt.mean_average_precision(d2, rel_label),
            rt.precision_at_k(d2, rel_label, 100),
            rt.mean_average_precision(d2, rel_nn),
            rt.precision_at_k(d2, rel_nn, 100),
        ]
    ]
    for n_bits in n_bits_grid:
        cols = bc.select_bits_by_variance(X_db, n_bits)
        thr = bc.MeanThresholdBinarizer().fit(X_db[:, cols])
        D = bc.hamming_distances(
            bc.pack_codes(thr.transform(X_q[:, cols])), bc.pack_codes(thr.transform(X_db[:, cols]))
        )
        rows.append(
            [
                f"{n_bits}-bit threshold codes, Hamming",
                n_bits // 8,
                rt.mean_average_precision(D, rel_label),
                rt.precision_at_k(D, rel_label, 100),
                rt.mean_average_precision(D, rel_nn),
                rt.precision_at_k(D, rel_nn, 100),
            ]
        )
    print_table(
        f"Retrieval quality: {name}",
        ["method", "bytes / item", "label mAP", "label P@100", "100-NN mAP", "100-NN P@100"],
        rows,
    )


def main(quick: bool = False) -> None:
    print("numba and faiss threads set explicitly per table; each timed table is followed by its machine.\n")
    table_knn_vs_faiss(quick)
    table_binary_vs_float(quick)
    table_quality(quick)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
