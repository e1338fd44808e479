"""Benchmark for the pruning chapters (Optimal Brain Damage, filter pruning).

Tables:

1. OBD vs magnitude vs random pruning at 50/80/90/95% sparsity, iterative with retraining, 3 seeds, on a
   digits MLP and (when ``../shared/data/mnist`` is present) an MNIST MLP. Goal: OBD >= magnitude at 90%.
2. Filter pruning of the course CNN (28x28 inputs: MNIST when present, else digits upsampled), layer by
   layer with retraining: the largest share of MACs removed at <= 1 point accuracy loss, and the measured
   latency reduction divided by the MAC reduction (batch 64, one torch thread). Goals: >= 40% and >= 0.7.
   Latency is the median of interleaved rounds (dense and pruned timed in turn), as thread CPU time
   (``time.thread_time``: on the shared 2-core machine wall-clock times include the time other processes
   hold the core, which inflates long calls more than short ones) and, for reference, wall-clock; for the
   model as trained (NCHW, BatchNorm) and deployed (BatchNorm folded into the conv weights, channels-last).
   ``--quick``: one seed, the two middle plans, fewer latency rounds (about a minute).
3. Where the time goes: per-module thread CPU time of the dense and the chosen pruned CNN. It explains why
   the ratio stays below 1: conv1 (one input channel, ~11% of the MACs) and the BatchNorm/ReLU/max-pool
   passes over its 28x28 maps cost time that MACs do not count and that falls only linearly in the number
   of filters, while conv2's MACs fall with the product of both layers' filter counts.

Run: ``.venv/bin/python benchmarks/run.py pruning`` (or ``python benchmarks/bench_pruning.py [--quick]``).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_MNIST, machine_line, print_table, shared_mnist_available

from courselib import measure as M
from courselib import pruning as P
from courselib.data import load_dataset, train_test_split_arrays
from courselib.models import MLP, CourseCNN
from courselib.training import evaluate, fit

THREADS = 1
AMOUNTS = [0.5, 0.8, 0.9, 0.95]


def _datasets(image_size=None):
    """{name: (train, test)}: digits always; MNIST (the shared 10k test set split 70/30, seed 0) if present."""
    out = {}
    if image_size is None:
        out["digits"] = (load_dataset("digits", split="train"), load_dataset("digits", split="test"))
    else:
        out["digits 28x28"] = (
            load_dataset("digits", split="train", image_size=image_size),
            load_dataset("digits", split="test", image_size=image_size),
        )
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

                def retrain(mm):
                    return fit(mm, (Xtr, ytr), epochs=3 if name == "digits" else 2, lr=1e-3, seed=seed, progress=False)

                hist = P.iterative_prune(
                    m,
                    AMOUNTS,
                    method=method,
                    retrain=retrain,
                    evaluate=acc,
                    loss_fn=F.cross_entropy,
                    data=sal_data,
                    seed=seed,
                )
                scores[method].append([h["score"] for h in hist])
        for method, s in scores.items():
            s = np.array(s)
            rows.append(
                [f"{name} MLP {d}-{hidden[0]}-10", method, f"{np.mean(dense):.3f}"]
                + [f"{s[:, i].mean():.3f} ± {s[:, i].std():.3f}" for i in range(len(AMOUNTS))]
            )
        i90 = AMOUNTS.index(0.9)
        o, g = np.array(scores["obd"])[:, i90], np.array(scores["magnitude"])[:, i90]
        rows.append(
            [
                f"{name}: OBD >= magnitude at 90%?",
                "yes" if o.mean() >= g.mean() else "NO",
                f"{len(seeds)} seeds",
                f"OBD wins {int((o >= g).sum())}/{len(seeds)}",
                "",
                "",
                "",
            ]
        )
    print_table(
        f"OBD vs magnitude vs random, iterative with retraining, test accuracy (mean ± std over {len(seeds)} seed(s))",
        ["model", "method", "dense"] + [f"{a:.0%}" for a in AMOUNTS],
        rows,
    )


PLANS = [(0.25, 0.25), (0.5, 0.5), (0.5, 0.75), (0.75, 0.75)]
SHAPE = (64, 1, 28, 28)


def _cnn_data():
    """28x28 data for the CNN: MNIST (shared 10k test set split 70/30) when present, else digits upsampled."""
    data = _datasets(image_size=28)
    return ("MNIST", data["MNIST"]) if "MNIST" in data else ("digits 28x28", data["digits 28x28"])


def _pruned(base, plan, retrain=None):
    m = copy.deepcopy(base)
    for layer, f in zip(("conv1", "conv2"), plan):
        P.prune_filters(m, layer, f)
        if retrain is not None:
            retrain(m)
    return m.eval()


def filter_table(quick: bool) -> None:
    seeds = [0] if quick else [0, 1, 2]
    name, ((Xtr, ytr), (Xte, yte)) = _cnn_data()
    epochs = 3 if name == "MNIST" else 4
    acc = lambda m: evaluate(m, (Xte, yte))["accuracy"]  # noqa: E731
    plans = PLANS[1:3] if quick else PLANS
    runs = {p: [] for p in plans}
    bases = []
    for seed in seeds:
        torch.manual_seed(seed)
        base = CourseCNN(channels=(16, 32), image_size=28)
        fit(base, (Xtr, ytr), epochs=epochs, lr=3e-3, seed=seed, progress=False)
        base.eval()
        bases.append(base)
        a0 = acc(base)
        for plan in plans:
            retrain = lambda mm: fit(mm, (Xtr, ytr), epochs=1, lr=1e-3, seed=seed, progress=False)  # noqa: E731
            runs[plan].append((a0, acc(_pruned(base, plan, retrain))))
    macs0, par0 = M.count_macs(bases[0], SHAPE), M.count_parameters(bases[0])
    archs = {"dense": bases[0], **{p: _pruned(bases[0], p) for p in plans}}  # latency depends on shapes only
    x = torch.as_tensor(Xte[:64])
    rounds = 8 if quick else 24
    keys = (
        ("thread", False, "median"),
        ("thread", True, "median"),
        ("wall", False, "median"),
        ("thread", False, "min"),
        ("thread", True, "min"),
    )
    lat = {}
    for clock in ("thread", "wall"):
        for deploy in (False, True) if clock == "thread" else (False,):
            # the same interleaved calls give the median and the minimum
            times = M.compare_latency(
                archs,
                x,
                rounds=rounds,
                repeats=5,
                warmup=3,
                num_threads=THREADS,
                clock=clock,
                deploy=deploy,
                statistic="all",
            )
            lat[(clock, deploy, "median")] = {k: float(np.median(v)) for k, v in times.items()}
            lat[(clock, deploy, "min")] = {k: float(np.min(v)) for k, v in times.items()}
    rows, best = [], None
    for plan in plans:
        r = np.array(runs[plan])
        drop = 100 * (r[:, 0] - r[:, 1]).mean()
        m = archs[plan]
        mac_cut = 1 - M.count_macs(m, SHAPE) / macs0
        cells = [
            f"{plan[0]:.0%} / {plan[1]:.0%}",
            f"{100 * r[:, 0].mean():.2f}",
            f"{100 * r[:, 1].mean():.2f}",
            f"{drop:+.2f}",
            f"{mac_cut:.1%}",
            f"{1 - M.count_parameters(m) / par0:.1%}",
        ]
        ratios = []
        for key in keys:
            t0, t1 = lat[key]["dense"], lat[key][plan]
            ratios.append((1 - t1 / t0) / mac_cut)
            cells += [f"{1e3 * t0:.2f} -> {1e3 * t1:.2f}", f"{ratios[-1]:.2f}"]
        rows.append(cells)
        if drop <= 1.0 and (best is None or mac_cut > best[1]):
            best = (plan, mac_cut, drop, ratios)
    print_table(
        f"Filter pruning of CourseCNN(16, 32) on {name} (smallest L1 first, layer by layer, 1 retraining "
        f"epoch after each layer; accuracy mean over {len(seeds)} seed(s)). Latency: median ms at batch 64 "
        f"of 1x28x28, {THREADS} torch thread, {rounds} interleaved rounds x 5 calls; 'CPU' = thread CPU time "
        "(time.thread_time), 'deployed' = BatchNorm folded into the conv weights + channels-last; "
        "ratio = latency cut / MAC cut",
        [
            "filters removed conv1 / conv2",
            "acc % before",
            "acc % after",
            "drop (points)",
            "MACs removed",
            "params removed",
            "CPU ms as trained",
            "ratio",
            "CPU ms deployed",
            "ratio",
            "wall ms as trained",
            "ratio",
            "min CPU ms as trained",
            "ratio",
            "min CPU ms deployed",
            "ratio",
        ],
        rows,
    )
    if best is None:
        summary = [[name, "none within 1 point"] + [""] * 7]
    else:
        summary = [
            [name, f"{best[0][0]:.0%} / {best[0][1]:.0%}", f"{best[1]:.1%}", f"{best[2]:+.2f}"]
            + [f"{r:.2f}" for r in best[3]]
        ]
    print_table(
        "Largest MAC reduction with <= 1 point accuracy loss (goals: >= 40% MACs, ratio >= 0.7)",
        [
            "data",
            "plan",
            "MACs removed",
            "accuracy drop (points)",
            "ratio (CPU, as trained)",
            "ratio (CPU, deployed)",
            "ratio (wall, as trained)",
            "ratio (min CPU, as trained)",
            "ratio (min CPU, deployed)",
        ],
        summary,
    )
    where = best[0] if best is not None else plans[0]
    reps = 10 if quick else 30
    parts = {
        (label, deploy): M.layer_times(archs[key], x, repeats=reps, deploy=deploy)
        for label, key in (("dense", "dense"), (f"{where[0]:.0%} / {where[1]:.0%}", where))
        for deploy in (False, True)
    }
    names = list(parts[("dense", False)])
    rows = []
    for (label, deploy), t in parts.items():
        rows.append(
            [label, "deployed" if deploy else "as trained"]
            + [f"{1e3 * t[n]:.2f}" if n in t else "folded" for n in names]
            + [f"{1e3 * sum(t.values()):.2f}"]
        )
    print_table(
        f"Where the time goes: median thread CPU ms per module at batch 64, {THREADS} torch thread "
        "(forward hooks; relu#k / pool#k = k-th call of the shared module)",
        ["model", "form"] + names + ["sum"],
        rows,
    )


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
