"""Benchmark for the chapter "From 32 bits to 1" (``book/quantization.md``).

Prints:
1. post-training int8 quantization with ``torch.ao.quantization`` (eager mode, x86 backend), static and
   dynamic, of a 784-1024-1024-10 MLP and of the course CNN on 28x28 inputs: test accuracy, size of the saved
   ``state_dict`` and one-thread latency at batch 1 and batch 256 (median of repeats, float32 and int8 measured
   side by side in one run);
2. weight-only quantization of the MLP at 8, 4, 2 and 1 bit (per tensor and per channel), with ``sign(w)`` and
   the XNOR-Net ``alpha sign(w)`` at 1 bit; no retraining.

Data: the real MNIST test images split 7,000 train / 3,000 test with seed 0 when ``../shared/data/mnist`` is
present, else scikit-learn's digits upsampled to 28x28 (offline). ``--quick`` uses digits, a 256-256 MLP and
fewer epochs and repeats.

Run: ``.venv/bin/python benchmarks/run.py quantization`` or ``.venv/bin/python benchmarks/bench_quantization.py
[--quick]``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import SHARED_MNIST, machine_line, print_table, shared_mnist_available, time_call

from courselib import quantization as Q
from courselib.data import load_dataset, train_test_split_arrays
from courselib.measure import state_dict_bytes
from courselib.models import MLP, CourseCNN
from courselib.training import evaluate, fit


def _data(quick: bool):
    if not quick and shared_mnist_available():
        X, y = load_dataset("mnist", split="test", root=SHARED_MNIST)
        Xtr, Xte, ytr, yte = train_test_split_arrays(X, y, test_size=0.3, seed=0)
        return "MNIST test set (7,000 / 3,000)", (Xtr, ytr), (Xte, yte)
    train = load_dataset("digits", "train", image_size=28)
    test = load_dataset("digits", "test", image_size=28)
    return "digits upsampled to 28x28 (1,257 / 540)", train, test


def _latency(model, X, batch, repeats):
    xb = torch.as_tensor(X[:batch])
    with torch.no_grad():
        return time_call(lambda: model(xb), repeats=repeats, warmup=max(2, repeats // 10))


def int8_rows(name, model, train, test, repeats):
    calib = torch.as_tensor(train[0][:512])
    variants = [
        ("float32", model),
        ("int8 static (x86)", Q.quantize_static_int8(model, calib, backend="x86")),
        ("int8 dynamic (Linear only)", Q.quantize_dynamic_int8(model)),
    ]
    rows, base = [], None
    for label, m in variants:
        acc = evaluate(m, test)["accuracy"]
        size = state_dict_bytes(m)
        t1 = _latency(m, test[0], 1, repeats * 10)
        t256 = _latency(m, test[0], 256, repeats)
        if base is None:
            base = (size, t1, t256)
        rows.append(
            [
                name,
                label,
                f"{100 * acc:.2f}",
                size,
                f"{base[0] / size:.2f}x",
                f"{1e6 * t1:.1f}",
                f"{base[1] / t1:.2f}x",
                f"{1e3 * t256:.3f}",
                f"{base[2] / t256:.2f}x",
            ]
        )
    return rows


def bits_rows(model, test):
    rows = []
    for bits in (8, 4, 2, 1):
        rows.append(
            [
                f"uniform {bits} bit",
                f"{100 * evaluate(Q.fake_quantize_weights(model, bits), test)['accuracy']:.2f}",
                f"{100 * evaluate(Q.fake_quantize_weights(model, bits, per_channel=True), test)['accuracy']:.2f}",
            ]
        )
    rows.append(
        [
            "sign(w), 1 bit",
            f"{100 * evaluate(Q.fake_quantize_weights(model, 1, method='sign'), test)['accuracy']:.2f}",
            "-",
        ]
    )
    rows.append(
        [
            "alpha sign(w), 1 bit",
            f"{100 * evaluate(Q.fake_quantize_weights(model, 1, method='xnor'), test)['accuracy']:.2f}",
            f"{100 * evaluate(Q.fake_quantize_weights(model, 1, method='xnor', per_channel=True), test)['accuracy']:.2f}",
        ]
    )
    return rows


def main(quick: bool = False) -> None:
    warnings.filterwarnings("ignore")  # torch.ao.quantization deprecation notices
    torch.set_num_threads(1)
    print(machine_line(num_threads=1) + "\n")
    desc, train, test = _data(quick)
    epochs = 3 if quick else 8
    hidden = (256, 256) if quick else (1024, 1024)
    repeats = 10 if quick else 30
    torch.manual_seed(0)
    mlp = MLP(in_features=784, hidden=hidden)
    fit(mlp, train, epochs=epochs, lr=1e-3, seed=0, progress=False)
    torch.manual_seed(0)
    cnn = CourseCNN(channels=(16, 32), image_size=28)
    fit(cnn, train, epochs=epochs, lr=1e-3, seed=0, progress=False)
    mlp.eval()
    cnn.eval()
    rows = int8_rows(f"MLP 784-{'-'.join(map(str, hidden))}-10", mlp, train, test, repeats)
    rows += int8_rows("CourseCNN (16, 32)", cnn, train, test, repeats)
    print_table(
        f"Post-training int8 with torch.ao.quantization, {desc}, 1 thread",
        ["model", "variant", "acc %", "bytes", "smaller", "batch 1 (us)", "speed-up", "batch 256 (ms)", "speed-up"],
        rows,
    )
    print(machine_line(num_threads=1) + "\n")
    print_table(
        f"Weight-only quantization of the MLP, no retraining, {desc} (test accuracy %; float32 "
        f"{100 * evaluate(mlp, test)['accuracy']:.2f})",
        ["weights", "per tensor", "per channel"],
        bits_rows(mlp, test),
    )


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
