"""Benchmark for the pruning chapters (Optimal Brain Damage, filter pruning).

Tables:

1. OBD vs magnitude vs random pruning at 50/80/90/95% sparsity, iterative with retraining, 3 seeds, on a
   digits MLP and (when ``../shared/data/mnist`` is present) an MNIST MLP. Goal: OBD >= magnitude at 90%.
2. Filter pruning of the course CNN (28x28 inputs: MNIST when present, else digits upsampled), layer by
   layer with retraining: the largest share of MACs removed at <= 1 point accuracy loss, and the measured
   latency reduction divided by the MAC reduction (batch 64, one torch thread). Goals: >= 40% and >= 0.7.

Run: ``.venv/bin/python benchmarks/run.py pruning`` (or ``python benchmarks/bench_pruning.py [--quick]``).
"""

from __future__ import annotations

import copy
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_MNIST, machine_line, print_table, shared_mnist_available  # noqa: E402

from courselib import pruning as P  # noqa: E402
from courselib.data import load_dataset, train_test_split_arrays  # noqa: E402
from courselib.models import MLP, CourseCNN  # noqa: E402
from courselib.training import evaluate, fit  # noqa: E402

THREADS = 1
AMOUNTS = [0.5, 0.8, 0.9, 0.95]


def _datasets(image_size=None):
    """{name: (train, test)}: digits always; MNIST (the shared 10k test set split 70/30, seed 0) if present."""
    out = {}
    if image_size is None:
        out["digits"] = (load_dataset("digits", split="train"), load_dataset("digits", split="test"))
    else:
        out["digits 28x28"] = (load_dataset("digits", split="train", image_size=image_size),
                               load_dataset("digits", split="test", image_size=image_size))
    if shared_mnist_available():
        X, y = load_dataset("mnist", split="test", root=SHARED_MNIST)
        Xa, Xb, ya, yb = train_test_split_arrays(X, y, test_size=0.3, seed=0)
        out["MNIST"] = ((Xa, ya), (Xb, yb))
    return out


def obd_table(quick: bool) -> None:
    seeds = [0] if quick else [0, 1, 2]
    rows = []
    for name, ((Xtr, ytr), (Xte, yte)) in _datasets().items():
        if quick and name != "digits":
            continue
        d = int(np.prod(Xtr.shape[1:]))
        hidden, epochs = ((32,), 20) if name == "digits" else ((64,), 8)
        Xt, yt = torch.as_tensor(Xtr).reshape(len(Xtr), -1), torch.as_tensor(ytr)
        sal_data = (Xt[:2000], yt[:2000])  # saliencies from (at most) 2000 training images
        acc = lambda m: evaluate(m, (Xte, yte))["accuracy"]  # noqa: E731
        scores = {m: [] for m in ("obd", "magnitude", "random")}
        dense = []
        for seed in seeds:
            torch.manual_seed(seed)
            base = MLP(in_features=d, hidden=hidden)
            fit(base, (Xtr, ytr), epochs=epochs, lr=3e-3, seed=seed, progress=False)
            base.eval()
            dense.append(acc(base))
            for method in scores:
                m = copy.deepcopy(base)
                retrain = lambda mm: fit(mm, (Xtr, ytr), epochs=3 if name == "digits" else 2,  # noqa: E731
                                         lr=1e-3, seed=seed, progress=False)
                hist = P.iterative_prune(m, AMOUNTS, method=method, retrain=retrain, evaluate=acc,
                                         loss_fn=F.cross_entropy, data=sal_data, seed=seed)
                scores[method].append([h["score"] for h in hist])
        for method, s in scores.items():
            s = np.array(s)
            rows.append([f"{name} MLP {d}-{hidden[0]}-10", method, f"{np.mean(dense):.3f}"]
                        + [f"{s[:, i].mean():.3f} ± {s[:, i].std():.3f}" for i in range(len(AMOUNTS))])
        i90 = AMOUNTS.index(0.9)
        o, g = np.array(scores["obd"])[:, i90], np.array(scores["magnitude"])[:, i90]
        rows.append([f"{name}: OBD >= magnitude at 90%?", "yes" if o.mean() >= g.mean() else "NO",
                     f"{len(seeds)} seeds", f"OBD wins {int((o >= g).sum())}/{len(seeds)}", "", "", ""])
    print_table(f"OBD vs magnitude vs random, iterative with retraining, test accuracy (mean ± std over "
                f"{len(seeds)} seed(s))", ["model", "method", "dense"] + [f"{a:.0%}" for a in AMOUNTS], rows)


def _latency_pair(a, b, x, rounds: int):
    """Medians of interleaved latency measurements of two models (drift hits both alike)."""
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(P.measure_latency(a, x, repeats=10, warmup=2, num_threads=THREADS))
        tb.append(P.measure_latency(b, x, repeats=10, warmup=2, num_threads=THREADS))
    return statistics.median(ta), statistics.median(tb)


def filter_table(quick: bool) -> None:
    seeds = [0] if quick else [0, 1, 2]
    plans = [(0.25, 0.25), (0.5, 0.5), (0.5, 0.75), (0.75, 0.75)]
    rows, summary = [], []
    for name, ((Xtr, ytr), (Xte, yte)) in _datasets(image_size=28).items():
        if quick and len(_datasets(image_size=28)) > 1 and name != "MNIST":
            continue
        epochs = 3 if name == "MNIST" else 4
        acc = lambda m: evaluate(m, (Xte, yte))["accuracy"]  # noqa: E731
        x = torch.as_tensor(Xte[:64])
        per_plan = {p: [] for p in plans}
        for seed in seeds:
            torch.manual_seed(seed)
            base = CourseCNN(channels=(16, 32), image_size=28)
            fit(base, (Xtr, ytr), epochs=epochs, lr=3e-3, seed=seed, progress=False)
            base.eval()
            a0 = acc(base)
            macs0 = P.count_macs(base, (64, 1, 28, 28))
            for plan in plans:
                m = copy.deepcopy(base)
                for layer, f in zip(("conv1", "conv2"), plan):
                    P.prune_filters(m, layer, f)
                    fit(m, (Xtr, ytr), epochs=1, lr=1e-3, seed=seed, progress=False)
                m.eval()
                t0, t1 = _latency_pair(base, m, x, rounds=3 if quick else 5)
                mac_cut = 1 - P.count_macs(m, (64, 1, 28, 28)) / macs0
                per_plan[plan].append((a0, acc(m), mac_cut, 1 - P.count_parameters(m) / P.count_parameters(base),
                                       t0, t1))
        best = None
        for plan, runs in per_plan.items():
            r = np.array(runs)
            drop = 100 * (r[:, 0] - r[:, 1]).mean()
            lat_cut = 1 - (r[:, 5] / r[:, 4]).mean()
            mac_cut = r[:, 2].mean()
            rows.append([name, f"{plan[0]:.0%} / {plan[1]:.0%}", f"{100 * r[:, 0].mean():.2f}",
                         f"{100 * r[:, 1].mean():.2f}", f"{drop:+.2f}", f"{mac_cut:.1%}", f"{r[:, 3].mean():.1%}",
                         f"{1e3 * r[:, 4].mean():.2f} -> {1e3 * r[:, 5].mean():.2f}", f"{lat_cut:.1%}",
                         f"{lat_cut / mac_cut:.2f}"])
            if drop <= 1.0 and (best is None or mac_cut > best[1]):
                best = (plan, mac_cut, lat_cut / mac_cut, drop)
        if best is None:
            summary.append([name, "none within 1 point", "", "", ""])
        else:
            summary.append([name, f"{best[0][0]:.0%} / {best[0][1]:.0%}", f"{best[1]:.1%}",
                            f"{best[3]:+.2f}", f"{best[2]:.2f}"])
    print_table(f"Filter pruning of CourseCNN(16, 32), layer by layer (smallest L1) with 1 retraining epoch after "
                f"each layer; mean over {len(seeds)} seed(s); latency at batch 64, {THREADS} torch thread",
                ["data", "filters removed conv1 / conv2", "acc % before", "acc % after", "drop (points)",
                 "MACs removed", "params removed", "latency ms", "latency cut", "latency cut / MAC cut"], rows)
    print_table("Largest MAC reduction with <= 1 point accuracy loss (goals: >= 40% MACs, ratio >= 0.7)",
                ["data", "plan", "MACs removed", "accuracy drop (points)", "latency cut / MAC cut"], summary)


def main(quick: bool = False) -> None:
    old = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        print(machine_line())
        print(f"MNIST from {SHARED_MNIST}: {'present' if shared_mnist_available() else 'absent (digits only)'}\n")
        obd_table(quick)
        filter_table(quick)
    finally:
        torch.set_num_threads(old)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
