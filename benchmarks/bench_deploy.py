"""Benchmark for the chapter "Deploying to a device": every method in eager PyTorch, ExecuTorch and ONNX Runtime.

The models of the trade-off table (:func:`courselib.deploy.study_models`: reference ``CourseCNN(16, 32)``, int8
dynamic and static, BinaryConnect, OBD 80%, filter pruning 50%, a distilled ``SeparableCNN(8, 16, 32)`` and
distill + prune + int8), each measured by :func:`courselib.deploy.runtime_study` three ways: eager PyTorch (the
file of the chapter "Putting it together"), an ExecuTorch ``.pte`` lowered to XNNPACK (int8 through PT2E), and
ONNX Runtime (int8 through static QDQ quantization). Size: the file on disk. Latency: median of 20 calls after 3
warm-up calls, one thread in every runtime, CPU time of the calling thread, on 1 and on 64 test images.
Accuracy: from the runtime's own outputs. Data: MNIST when ``../shared/data/mnist`` is present (the shared
10,000-image test set split 70/30 with seed 0), else the digits upsampled to 28x28; the first table says which.

Run: ``.venv/bin/python benchmarks/run.py deploy [--quick]`` (or ``python benchmarks/bench_deploy.py [--quick]``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_MNIST, machine_line, print_table, shared_mnist_available

from courselib import compare, deploy
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
    return "digits 28x28 (1,000 train / 540 test; ../shared/data/mnist is absent)", d["train"], d["test"]


def main(quick: bool = False) -> None:
    torch.set_num_threads(1)
    name, train, test = _data(quick)
    settings = (
        {"reference_epochs": 2, "binary_epochs": 2, "student_epochs": 3}
        if quick
        else {"reference_epochs": 4, "binary_epochs": 6, "student_epochs": 10, "finetune_epochs": 2}
    )
    calib = train[0][:256]
    t0 = time.perf_counter()
    entries = deploy.study_models(train, calib, settings=settings)
    t_train = time.perf_counter() - t0
    rows = deploy.runtime_study(entries, test[0], test[1], calib)
    secs = time.perf_counter() - t0
    by = {(r["name"], r["runtime"]): r for r in rows}
    runtimes = ["eager", *deploy.RUNTIMES]
    for rt in runtimes:
        ref = by[(entries[0]["name"], rt)]
        print_table(
            f"{rt}: {name}; 1 thread; {machine_line()}",
            ["method", "accuracy %", "size (bytes)", "smaller", "batch 1 (ms)", "batch 64 (ms)", "faster (64)"],
            [
                [
                    e["name"],
                    f"{100 * by[(e['name'], rt)]['accuracy']:.2f}",
                    f"{by[(e['name'], rt)]['size_bytes']:,}",
                    f"{ref['size_bytes'] / by[(e['name'], rt)]['size_bytes']:.1f}x",
                    f"{by[(e['name'], rt)]['latency_ms'][1]:.3f}",
                    f"{by[(e['name'], rt)]['latency_ms'][64]:.3f}",
                    f"{ref['latency_ms'][64] / by[(e['name'], rt)]['latency_ms'][64]:.1f}x",
                ]
                for e in entries
            ],
        )
    print_table(
        f"Side by side (batch of 64, ms; size in KB): {name}",
        ["method"] + [f"{rt} ms" for rt in runtimes] + [f"{rt} KB" for rt in runtimes],
        [
            [e["name"]]
            + [f"{by[(e['name'], rt)]['latency_ms'][64]:.3f}" for rt in runtimes]
            + [f"{by[(e['name'], rt)]['size_bytes'] / 1000:.1f}" for rt in runtimes]
            for e in entries
        ],
    )
    print(f"settings: {settings}; training {t_train:.0f} s; total {secs:.0f} s")


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
