"""Knowledge distillation: share of the teacher-student gap closed, temperature sweep, ensemble table.

Run: ``.venv/bin/python benchmarks/run.py distillation`` (``--quick``: digits only, fewer rows).

Setting (chapter "Knowledge distillation"): the teacher is ``CourseCNN(32, 64)`` trained on the whole
training split; the student is ``SeparableCNN`` (depthwise-separable) trained on a small transfer set
(a different random subset per seed) alone, with soft targets (T=4, alpha=0.9), with FitNets feature
matching through a 1x1 HintRegressor (beta=1e-3) and with both. "Gap closed" is
``(acc - acc_alone) / (acc_teacher - acc_alone)`` per seed; mean +- std over 3 seeds.
MNIST rows use the real 10,000-image MNIST test set from ``../shared/data/mnist`` (split 80/20 with seed 0),
when present. One torch thread throughout.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from _common import SHARED_MNIST, print_table, shared_mnist_available
from courselib.data import load_dataset, train_test_split_arrays
from courselib.distillation import Ensemble, HintRegressor, SeparableCNN, distill
from courselib.models import MLP, CourseCNN
from courselib.pruning import count_macs, count_parameters, measure_latency
from courselib.training import evaluate, fit

SEEDS = (0, 1, 2)
CONFIGS = {"student alone": dict(alpha=0.0), "+ soft targets": dict(alpha=0.9),
           "+ feature matching": dict(beta=1e-3), "+ both": dict(alpha=0.9, beta=1e-3)}


def _pm(values, fmt="{:.3f}"):
    v = np.asarray(values, dtype=float)
    return f"{fmt.format(v.mean())} +- {fmt.format(v.std())}"


def _setting(name: str):
    """Data, teacher/student factories and hyper-parameters of one data set."""
    if name == "digits":
        Xtr, ytr = load_dataset("digits", "train")
        Xte, yte = load_dataset("digits", "test")
        return dict(train=(Xtr, ytr), test=(Xte, yte), size=8, n_transfer=150, teacher_epochs=15,
                    epochs=40, student=lambda: SeparableCNN(channels=(16, 32)), width=(32, 64))
    X, y = load_dataset("mnist", "test", root=SHARED_MNIST)
    Xtr, Xte, ytr, yte = train_test_split_arrays(X, y, test_size=0.2, seed=0)
    return dict(train=(Xtr, ytr), test=(Xte, yte), size=28, n_transfer=500, teacher_epochs=4,
                epochs=30, student=lambda: SeparableCNN(channels=(8, 16, 32)), width=(16, 64))


def _run_student(st, teacher, seed, *, alpha=0.0, beta=0.0, temperature=4.0):
    Xtr, ytr = st["train"]
    idx = np.random.default_rng(seed).permutation(len(Xtr))[:st["n_transfer"]]
    torch.manual_seed(seed)
    student = st["student"]()
    extra = {}
    if beta > 0:
        extra = dict(student_layer="blocks.0.4", teacher_layer="bn2", regressor=HintRegressor(*st["width"]))
    distill(student, teacher, (Xtr[idx], ytr[idx]), temperature=temperature, alpha=alpha, beta=beta,
            epochs=st["epochs"], lr=1e-2, batch_size=32, seed=seed, progress=False, **extra)
    return evaluate(student, st["test"])["accuracy"]


def gap_table(name: str, quick: bool = False) -> None:
    st = _setting(name)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    teacher = CourseCNN(channels=(32, 64), image_size=st["size"])
    fit(teacher, st["train"], epochs=st["teacher_epochs"], progress=False)
    teacher.eval()
    t_acc = evaluate(teacher, st["test"])["accuracy"]
    student = st["student"]()
    x1 = torch.from_numpy(st["test"][0][:1])
    shape = (1, 1, st["size"], st["size"])
    print_table(f"{name}: teacher vs student cost (batch 1, 1 thread)",
                ["network", "params", "MACs", "latency (us)"],
                [[f"teacher CourseCNN(32, 64)", count_parameters(teacher), count_macs(teacher, shape),
                  f"{1e6 * measure_latency(teacher, x1, repeats=50):.0f}"],
                 [f"student SeparableCNN{student.channels}", count_parameters(student), count_macs(student, shape),
                  f"{1e6 * measure_latency(student, x1, repeats=50):.0f}"]])
    accs = {c: np.array([_run_student(st, teacher, s, **kw) for s in SEEDS]) for c, kw in CONFIGS.items()}
    alone = accs["student alone"]
    rows = [["teacher (full training split)", f"{t_acc:.3f}", "", ""]]
    for c, a in accs.items():
        closed = (a - alone) / (t_acc - alone)
        rows.append([c, _pm(a), "" if c == "student alone" else _pm(100 * closed, "{:.0f}%"),
                     " ".join(f"{v:.3f}" for v in a)])
    print_table(f"{name}: share of the teacher-student gap closed ({st['n_transfer']} transfer images, "
                f"3 seeds, {time.perf_counter() - t0:.0f} s)",
                ["model", "test accuracy", "gap closed", "per seed"], rows)
    if not quick:
        temps = [1.0, 2.0, 4.0, 8.0, 16.0]
        rows = []
        for T in temps:
            a = accs["+ soft targets"] if T == 4.0 else np.array(
                [_run_student(st, teacher, s, alpha=0.9, temperature=T) for s in SEEDS])
            rows.append([f"{T:g}", _pm(a), _pm(100 * (a - alone) / (t_acc - alone), "{:.0f}%")])
        print_table(f"{name}: temperature sweep (alpha=0.9, 3 seeds)", ["T", "test accuracy", "gap closed"], rows)


def ensemble_table(quick: bool = False) -> None:
    Xtr, ytr = load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    members = []
    for s in range(10):
        torch.manual_seed(100 + s)
        m = MLP(in_features=64, hidden=(32,))
        fit(m, (Xtr, ytr), epochs=15, lr=3e-3, batch_size=64, seed=100 + s, progress=False)
        members.append(m)
    m_acc = np.array([evaluate(m, test)["accuracy"] for m in members])
    ens = Ensemble(members).eval()
    e_acc = evaluate(ens, test)["accuracy"]
    d_acc = []
    for s in SEEDS[:1] if quick else SEEDS:
        torch.manual_seed(200 + s)
        single = MLP(in_features=64, hidden=(32,))
        distill(single, ens, (Xtr, ytr), temperature=2.0, alpha=0.9, epochs=15, lr=3e-3, batch_size=64,
                seed=200 + s, progress=False)
        d_acc.append(evaluate(single, test)["accuracy"])
    print_table("Ensemble distillation: Hinton et al. (speech frame accuracy) vs digits (MLP 64-32-10)",
                ["system", "paper", "digits (ours)"],
                [["baseline (one model)", "58.9%", f"{_pm(100 * m_acc, '{:.1f}')}% (10 models)"],
                 ["ensemble of 10 models", "61.1%", f"{100 * e_acc:.1f}%"],
                 ["distilled single model", "60.8%", f"{_pm(100 * np.array(d_acc), '{:.1f}')}% ({len(d_acc)} seeds)"]])


def main(quick: bool = False) -> None:
    torch.set_num_threads(1)
    gap_table("digits", quick=quick)
    ensemble_table(quick=quick)
    if not quick:
        if shared_mnist_available():
            gap_table("mnist", quick=True)
        else:
            print(f"(MNIST rows skipped: {SHARED_MNIST} not found)\n")


if __name__ == "__main__":
    main()
