"""Benchmark for the chapter "Putting it together": every method of the book on one model, one table.

The same recipe as the chapter (:func:`courselib.compare.trade_off_study`: reference ``CourseCNN(16, 32)``,
dynamic and static int8, BinaryConnect, OBD 80% with a CSR file, filter pruning 50%, a distilled
``SeparableCNN(8, 16, 32)`` and distill + prune + int8), at a larger scale: MNIST when
``../shared/data/mnist`` is present (the shared 10,000-image test set split 70/30 with seed 0), else the
digits upsampled to 28x28. Sizes are files really written (``torch.save``; CSR for OBD, packed bits for
BinaryConnect); latency is the median of 20 forward passes on a batch of 64 test images, one torch thread.

Run: ``.venv/bin/python benchmarks/run.py compare`` (or ``python benchmarks/bench_compare.py [--quick]``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_MNIST, machine_line, print_table, shared_mnist_available

from courselib import compare
from courselib.data import load_dataset, train_test_split_arrays


def _data(quick: bool):
    if shared_mnist_available():
        X, y = load_dataset("mnist", split="test", root=SHARED_MNIST)
        Xa, Xb, ya, yb = train_test_split_arrays(X, y, test_size=0.3, seed=0)
        if quick:
            return (
                "MNIST (2,000 train / 1,000 test of the shared test set)",
                (Xa[:2000], ya[:2000]),
                (Xb[:1000], yb[:1000]),
            )
        return "MNIST (7,000 train / 3,000 test of the shared test set)", (Xa, ya), (Xb, yb)
    d = compare.study_data()
    return "digits 28x28 (1,000 train / 540 test)", d["train"], d["test"]


def main(quick: bool = False) -> None:
    torch.set_num_threads(1)
    name, train, test = _data(quick)
    settings = (
        {"reference_epochs": 2, "binary_epochs": 2, "student_epochs": 3}
        if quick
        else {"reference_epochs": 4, "binary_epochs": 6, "student_epochs": 10, "finetune_epochs": 2}
    )
    t0 = time.perf_counter()
    rows, _ = compare.trade_off_study(train, test, settings=settings)
    secs = time.perf_counter() - t0
    ref = rows[0]
    print_table(
        f"Every method on one model: {name}; latency = batch of 64, 1 torch thread; {machine_line()}",
        ["method", "accuracy %", "size (bytes)", "smaller", "latency (ms)", "faster", "file holds"],
        [
            [
                r["name"],
                f"{100 * r['accuracy']:.2f}",
                f"{r['size_bytes']:,}",
                f"{ref['size_bytes'] / r['size_bytes']:.1f}x",
                f"{r['latency_ms']:.2f}",
                f"{ref['latency_ms'] / r['latency_ms']:.1f}x",
                r["storage"],
            ]
            for r in rows
        ],
    )
    print(f"settings: {settings}; total {secs:.0f} s")


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
