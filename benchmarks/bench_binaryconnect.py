"""Benchmark for the BinaryConnect chapter (``book/binaryconnect.md``).

Prints:
1. test error (mean +- std over 3 seeds) of float / BC-det / BC-stoch MLPs and small binary CNNs on
   digits (recipe ``courselib.binaryconnect.RECIPE``) and, when ``../shared/data/mnist`` is present, on the real MNIST test images (split 7,000 train /
   3,000 test with seed 0); goal: det within 1.0 point of float, stoch within 2.0;
2. XNOR-popcount GEMV (numba and numpy) vs float32 GEMV (numpy BLAS and torch) at n = 1024, 4096, 8192,
   one thread; goal: >= 5x faster than float32 at 4096;
3. the packed binary convolution vs float32 ``F.conv2d`` on a 64-channel 3x3 layer at 28x28;
4. packed model size vs float32 (goal: >= 31x smaller for the binarized layers).

Run: ``.venv/bin/python benchmarks/run.py binaryconnect`` or ``.venv/bin/python benchmarks/bench_binaryconnect.py
[--quick] [--only=accuracy | --only=speed]``. ``--quick`` trains one seed (and MNIST for a fraction of the epochs).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import SHARED_MNIST, machine_line, print_table, shared_mnist_available, time_call

from courselib import binaryconnect as bc
from courselib.binary_codes import pack_codes
from courselib.data import load_dataset, train_test_split_arrays
from courselib.measure import state_dict_bytes

LABELS = {"float": "float", "det": "BC-det", "stoch": "BC-stoch"}
LIBRARIES = ("torch", "numpy", "numba")  # the libraries whose kernels the tables time


def accuracy_rows(name, train, test, archs, seeds, epoch_scale=1.0, arch_kwargs=None):
    """Rows of test error (%): float / BC-det / BC-stoch, mean ± std over seeds (book recipe, bc.RECIPE)."""
    rows = []
    for arch in archs:
        base = None
        for mode in bc.MODES:
            errs = [
                bc.train_and_evaluate(
                    arch, mode, train, test, seed=s, epoch_scale=epoch_scale, arch_kwargs=arch_kwargs
                )[2]
                for s in seeds
            ]
            sign = np.array([e["sign"] for e in errs])
            real = np.array([e["real"] for e in errs]) if mode == "stoch" else None
            paper = sign if real is None else real  # the paper's test-time weights: sign for det, real for stoch
            if mode == "float":
                base = paper.mean()
            epochs = max(1, int(round(bc.RECIPE[mode]["epochs"] * epoch_scale)))
            rows.append(
                [
                    name,
                    arch,
                    LABELS[mode],
                    f"{sign.mean():.2f} ± {sign.std():.2f}",
                    "-" if real is None else f"{real.mean():.2f} ± {real.std():.2f}",
                    "-" if mode == "float" else f"{paper.mean() - base:+.2f}",
                    len(seeds),
                    epochs,
                ]
            )
    return rows


def gemv_rows(sizes, repeats):
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        Wf = rng.standard_normal((n, n)).astype(np.float32)
        xf = rng.standard_normal(n).astype(np.float32)
        Wt, xt = torch.from_numpy(Wf), torch.from_numpy(xf)
        Wb = rng.integers(0, 2, size=(n, n), dtype=np.uint8)
        xb = rng.integers(0, 2, size=(1, n), dtype=np.uint8)
        Wc, xc = pack_codes(Wb), pack_codes(xb)
        # exactness check on this very input
        ref = ((2.0 * Wb[:64] - 1) @ (2.0 * xb[0] - 1)).astype(np.int64)
        assert np.array_equal(bc.xnor_popcount_matmul(Wc[:64], xc, n)[:, 0], ref)
        t_np = time_call(lambda: Wf @ xf, repeats=repeats)
        t_torch = time_call(lambda: torch.mv(Wt, xt), repeats=repeats)
        t_xnp = time_call(lambda: bc.xnor_popcount_matmul(Wc, xc, n, backend="numpy"), repeats=repeats)
        t_xnb = time_call(lambda: bc.xnor_popcount_matmul(Wc, xc, n, backend="numba"), repeats=repeats)
        rows.append(
            [
                n,
                f"{t_np * 1e3:.3f}",
                f"{t_torch * 1e3:.3f}",
                f"{t_xnp * 1e3:.3f}",
                f"{t_xnb * 1e3:.4f}",
                f"{t_np / t_xnp:.1f}x",
                f"{t_np / t_xnb:.1f}x",
                f"{t_torch / t_xnb:.1f}x",
            ]
        )
    return rows


def conv_rows(repeats, batch=1):
    g = torch.Generator().manual_seed(0)
    x = bc.binarize(torch.randn(batch, 64, 28, 28, generator=g))
    w = bc.binarize(torch.randn(64, 64, 3, 3, generator=g))
    ref = F.conv2d(x, w, padding=1)
    xp, wp = bc.pack_channels(x), bc.pack_channels(w)  # weights: once at load; inputs: once per layer
    exact = (
        torch.equal(bc.binary_conv2d(x, w, padding=1), ref)
        and torch.equal(bc.binary_conv2d_packed(xp, wp, 64, padding=1), ref)
        and torch.equal(bc.binary_conv2d(x, w, padding=1, backend="numpy"), ref)
    )
    t_f = time_call(lambda: F.conv2d(x, w, padding=1), repeats=repeats)
    t_k = time_call(lambda: bc.binary_conv2d_packed(xp, wp, 64, padding=1), repeats=repeats)
    t_b = time_call(lambda: bc.binary_conv2d(x, w, padding=1), repeats=repeats)
    t_bn = time_call(lambda: bc.binary_conv2d(x, w, padding=1, backend="numpy"), repeats=max(1, repeats // 2))
    return [
        [
            f"{batch}x64x28x28, 64 filters 3x3, pad 1",
            f"{t_f * 1e3:.3f}",
            f"{t_k * 1e3:.3f}",
            f"{t_b * 1e3:.3f}",
            f"{t_bn * 1e3:.2f}",
            f"{t_f / t_k:.2f}x",
            f"{t_f / t_b:.2f}x",
            exact,
        ]
    ]


def size_rows():
    rows = []
    specs = [
        ("MLP 784-1024-1024-1024-10 (paper's MNIST)", lambda: bc.make_binary_mlp("det", 784, (1024,) * 3)),
        ("MLP 64-256-256-10 (chapter)", lambda: bc.make_binary_mlp("det", 64, (256, 256))),
        (
            "CNN 32-64 on 8x8 (chapter; first conv float)",
            lambda: bc.make_binary_cnn("det", channels=(32, 64), image_size=8, float_first_conv=True),
        ),
        ("CNN 16-32 on 28x28, all binary", lambda: bc.make_binary_cnn("det", channels=(16, 32), image_size=28)),
    ]
    for name, make in specs:
        torch.manual_seed(0)
        model = make().eval()
        s = bc.binary_weight_bytes(model)
        f_file = state_dict_bytes(model.state_dict())
        p_file = state_dict_bytes(bc.pack_binary_weights(model))
        rows.append(
            [
                name,
                s["binary_float32"],
                s["binary_packed"],
                f"{s['binary_float32'] / s['binary_packed']:.2f}x",
                s["other"],
                f_file,
                p_file,
                f"{f_file / p_file:.2f}x",
            ]
        )
    return rows


def main(quick: bool = False, sections=("accuracy", "speed")) -> None:
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)
    print(machine_line(num_threads=1, libraries=LIBRARIES))
    print("torch.set_num_threads(1), BLAS threads 1; times are medians of repeats (ms)\n")

    if "accuracy" in sections:
        seeds = (0,) if quick else (0, 1, 2)
        Xtr, ytr = load_dataset("digits", "train")
        Xte, yte = load_dataset("digits", "test")
        headers = [
            "data",
            "model",
            "training",
            "error, sign w",
            "error, real w",
            "paper's test w - float",
            "seeds",
            "epochs",
        ]
        print_table(
            "Test error (%) on digits of float vs BinaryConnect, mean ± std over seeds",
            headers,
            accuracy_rows("digits 8x8", (Xtr, ytr), (Xte, yte), ("MLP", "CNN"), seeds),
        )
        if shared_mnist_available():
            X, y = load_dataset("mnist", "test", root=str(SHARED_MNIST))
            Xa, Xb, ya, yb = train_test_split_arrays(X, y, test_size=0.3, seed=0)
            print_table(
                "Test error (%) on MNIST of float vs BinaryConnect, mean ± std over seeds",
                headers,
                accuracy_rows("MNIST 7k/3k", (Xa, ya), (Xb, yb), ("MLP",), seeds, epoch_scale=0.15 if quick else 1.0),
            )
        else:
            print("(../shared/data/mnist not found: MNIST rows skipped)\n")
        print(
            "MLP: 256-256 hidden units; CNN: 32-64 channels, first convolution kept in float32, all other "
            "layers binary; BatchNorm after every layer; recipe courselib.binaryconnect.RECIPE. "
            "'paper's test w': sign(w) for BC-det, real w for BC-stoch (paper Section 2.6)."
        )
        print(
            "Paper (Courbariaux et al. 2015, Table 2): MNIST float 1.30 ± 0.04, det 1.29 ± 0.08, stoch 1.18 ± 0.04; "
            "CIFAR-10 float 10.64, det 9.90, stoch 8.27.\n"
        )
    if "speed" not in sections:
        return

    sizes = (1024, 4096) if quick else (1024, 4096, 8192)
    print_table(
        "GEMV: n x n matrix times vector, XNOR-popcount on packed +-1 vs float32 (ms)",
        [
            "n",
            "numpy f32",
            "torch f32",
            "XNOR numpy",
            "XNOR numba",
            "speed-up numpy XNOR",
            "speed-up numba XNOR",
            "vs torch",
        ],
        gemv_rows(sizes, repeats=7 if quick else 21),
    )
    print(machine_line(num_threads=1, libraries=LIBRARIES) + "\n")
    print_table(
        "Binary convolution (XNOR-popcount, packed along channels) vs float32 F.conv2d (ms)",
        [
            "layer",
            "F.conv2d f32",
            "binary, packed operands",
            "binary, pack + conv",
            "binary numpy im2col",
            "speed-up packed",
            "speed-up pack + conv",
            "exact",
        ],
        conv_rows(repeats=5 if quick else 11),
    )
    print(machine_line(num_threads=1, libraries=LIBRARIES) + "\n")
    print_table(
        "Model size: packed binary weights vs float32 (bytes)",
        [
            "model",
            "binary layers f32",
            "binary layers packed",
            "ratio",
            "other params",
            "torch.save f32",
            "torch.save packed",
            "file ratio",
        ],
        size_rows(),
    )


if __name__ == "__main__":
    only = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--only=")]
    main(quick="--quick" in sys.argv, sections=tuple(only) or ("accuracy", "speed"))
