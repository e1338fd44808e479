"""ITQ benchmark: retrieval mAP of LSH, PCA-direct, PCA-RR and ITQ; ITQ fit time; ITQ loss vs faiss.

Data: the real MNIST test set in ``../shared/data/mnist`` (784-d pixels in [0, 1]) when present,
split with a fixed seed into a database (9,000 images, also the training set of the hashers) and
queries (1,000); otherwise scikit-learn's digits (train = database, test = queries).
Ground truth: same class label. Every method is fitted with ``random_state=0``.

Tables:
1. mAP (Hamming ranking of the whole database) at 16/32/64/128 bits (digits: 8/16/32/64).
2. ITQ fit time (PCA + 50 iterations), median of repeats.
3. Quantization loss per sample, Q(B, R) / n, of courselib's ITQ (the paper's Procrustes update
   R = U W^T) and of faiss's ``ITQMatrix`` (50 iterations) on the same PCA-projected data, with the
   loss of the random start (PCA-RR) and of PCA-direct (R = I) for reference.

Run: ``.venv/bin/python benchmarks/run.py itq`` or ``.venv/bin/python benchmarks/bench_itq.py [--quick]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SHARED_MNIST, machine_line, print_table, shared_mnist_available, time_call


def _load(quick: bool):
    from courselib.data import load_dataset, train_test_split_arrays

    if shared_mnist_available():
        X, y = load_dataset("mnist", split="test", root=SHARED_MNIST, download=False)
        X = X.reshape(len(X), -1).astype(np.float64)
        X_db, X_q, y_db, y_q = train_test_split_arrays(X, y, test_size=0.1, seed=0)
        if quick:
            X_q, y_q = X_q[:300], y_q[:300]
        return (
            f"MNIST test set (database 9,000 / queries {len(X_q)}, seed 0)",
            X_db,
            y_db,
            X_q,
            y_q,
            (16, 32, 64, 128),
        )
    X_tr, y_tr = load_dataset("digits", split="train")
    X_te, y_te = load_dataset("digits", split="test")
    return (
        "digits (database 1,257 / queries 540)",
        X_tr.reshape(len(X_tr), -1).astype(np.float64),
        y_tr,
        X_te.reshape(len(X_te), -1).astype(np.float64),
        y_te,
        (8, 16, 32, 64),
    )


def main(quick: bool = False) -> None:
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)  # one BLAS thread: reproducible timings on a shared 2-core machine
    from courselib.itq import ITQ, compare_hashers, quantization_loss, sign_codes

    name, X_db, y_db, X_q, y_q, bits = _load(quick)
    print(f"data: {name}; {X_db.shape[1]} features; ground truth: same label\n")

    t0 = time.perf_counter()
    res = compare_hashers(X_db, X_db, y_db, X_q, y_q, bits=bits, random_state=0)
    rows = [[m] + [round(v, 4) for v in vals] for m, vals in res.items()]
    print_table(f"ITQ: mAP vs code length on {name.split(' (')[0]}", ["method"] + [f"{c} bits" for c in bits], rows)

    repeats = 1 if quick else 3
    rows = []
    for c in bits:
        t = time_call(lambda: ITQ(c, n_iter=50, random_state=0).fit(X_db), repeats=repeats, warmup=0)
        rows.append([c, X_db.shape[0], round(t, 3)])
    print_table(
        "ITQ fit time (PCA + 50 iterations; 1 BLAS thread)", ["bits", "training samples", "seconds (median)"], rows
    )
    print("\n" + machine_line(num_threads=1, libraries=("numpy", "scipy")))

    rows = []
    try:
        import faiss
    except ImportError:  # pragma: no cover
        faiss = None
    n = X_db.shape[0]
    for c in bits:
        itq = ITQ(c, n_iter=50, random_state=0).fit(X_db)
        V = (X_db - itq.mean_) @ itq.components_.T
        direct = quantization_loss(sign_codes(V), V, np.eye(c)) / n
        row = [c, round(direct, 3), round(itq.loss_history_[0] / n, 3), round(itq.loss_history_[-1] / n, 3)]
        if faiss is not None:
            m = faiss.ITQMatrix(c)
            m.max_iter = 50
            m.train(np.ascontiguousarray(V, dtype=np.float32))
            A = faiss.vector_to_array(m.A).reshape(c, c).astype(np.float64)
            Y = V @ A.T  # faiss applies y = A v
            row.append(round(float(np.sum((sign_codes(Y) - Y) ** 2)) / n, 3))
        else:
            row.append("faiss missing")
        rows.append(row)
    print_table(
        "ITQ: quantization loss per sample Q(B, R) / n on the same PCA data (lower is better)",
        ["bits", "PCA-direct (R = I)", "random start (PCA-RR)", "courselib ITQ", "faiss ITQMatrix"],
        rows,
    )
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    print(machine_line())
    main(quick="--quick" in sys.argv)
