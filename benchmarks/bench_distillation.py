"""Knowledge distillation: share of the teacher-student gap closed, temperature sweep, ensemble table.

Run: ``.venv/bin/python benchmarks/run.py distillation`` (``--quick``: digits only, no sweep).

Setting (chapter "Knowledge distillation", section "Experiments on digits"): the teacher is
``CourseCNN(32, 64)`` trained on the whole training split; the student is the depthwise-separable
``SeparableCNN`` (average pooling to a 2x2 grid before its classifier). The student has only ``n_labelled`` labelled images (a different random subset per
seed); the **transfer set** is the whole training split, the other images being *unlabelled*
(``courselib.distillation.UNLABELLED``): the teacher labels them with its soft targets and features
(Hinton, Vinyals & Dean 2015 note that the transfer set may be unlabelled). Rows:

- student alone: cross-entropy on the labelled images, 40 epochs, Adam lr 1e-2, batch 32;
- + soft targets: ``distill`` on the transfer set, T=4, alpha=0.9 (hard loss on the labelled images
  only), 10 epochs, Adam lr 1e-2, batch 64;
- + feature matching (FitNets, two stages): stage 1 trains the student up to its last block
  (``blocks.0.6``) to predict the teacher's last feature map (``pool``) through a 1x1
  ``HintRegressor``, on the transfer set (10 epochs, batch 32, no labels); stage 2 trains the whole
  student on the labelled images as "student alone";
- + both: stage 1 as above, then stage 2 is the soft-target distillation (FitNets' own recipe).

"Gap closed" is ``(acc - acc_alone) / (acc_teacher - acc_alone)`` per seed; mean +- std over 3 seeds.
MNIST rows use the real 10,000-image MNIST test set from ``../shared/data/mnist`` (split 80/20 with
seed 0; the transfer set is the first ``n_transfer`` training images), when present. One torch thread.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from _common import SHARED_MNIST, machine_line, print_table, shared_mnist_available

from courselib.data import load_dataset, train_test_split_arrays
from courselib.distillation import UNLABELLED, Ensemble, HintRegressor, SeparableCNN, distill
from courselib.measure import count_macs, count_parameters, measure_latency
from courselib.models import CourseCNN
from courselib.training import evaluate, fit

SEEDS = (0, 1, 2)
LR = 1e-2


def _pm(values, fmt="{:.3f}"):
    v = np.asarray(values, dtype=float)
    return f"{fmt.format(v.mean())} +- {fmt.format(v.std())}"


def _setting(name: str):
    """Data, teacher/student factories and hyper-parameters of one data set."""
    if name == "digits":
        Xtr, ytr = load_dataset("digits", "train")
        Xte, yte = load_dataset("digits", "test")
        return dict(
            train=(Xtr, ytr),
            test=(Xte, yte),
            size=8,
            n_labelled=150,
            teacher_epochs=10,
            teacher=(32, 64),
            student=(16, 32),
            hint=("blocks.0.6", "pool", 32, 64),
        )
    X, y = load_dataset("mnist", "test", root=SHARED_MNIST)
    Xtr, Xte, ytr, yte = train_test_split_arrays(X, y, test_size=0.2, seed=0)
    n = 3000
    return dict(
        train=(Xtr[:n], ytr[:n]),
        test=(Xte, yte),
        size=28,
        n_labelled=300,
        teacher_epochs=6,
        teacher=(16, 32),
        student=(8, 16, 32),
        hint=("blocks.0.6", "pool", 16, 32),
    )


def _split(st, seed):
    Xtr, ytr = st["train"]
    idx = np.random.default_rng(seed).permutation(len(Xtr))
    labelled = (Xtr[idx[: st["n_labelled"]]], ytr[idx[: st["n_labelled"]]])
    y = ytr.copy()
    y[idx[st["n_labelled"] :]] = UNLABELLED
    return labelled, (Xtr, y)


def _student(st, seed):
    torch.manual_seed(seed)
    return SeparableCNN(channels=st["student"], pool_size=2)


def _alone(student, labelled, seed):
    fit(student, labelled, epochs=40, lr=LR, batch_size=32, seed=seed, progress=False)
    return student


def _soft(student, teacher, transfer, seed, temperature=4.0, alpha=0.9):
    distill(
        student,
        teacher,
        transfer,
        temperature=temperature,
        alpha=alpha,
        epochs=10,
        lr=LR,
        batch_size=64,
        seed=seed,
        progress=False,
    )
    return student


def _hint_stage(student, teacher, transfer, seed, hint):
    s_layer, t_layer, s_width, t_width = hint
    X, y = transfer
    distill(
        student,
        teacher,
        (X, np.full_like(y, UNLABELLED)),
        alpha=0.0,
        beta=1e-2,
        student_layer=s_layer,
        teacher_layer=t_layer,
        regressor=HintRegressor(s_width, t_width),
        epochs=10,
        lr=LR,
        batch_size=32,
        seed=seed,
        progress=False,
    )
    return student


def run_seed(st, teacher, seed, temps=()):
    """Test accuracies of the four rows (and soft targets at extra temperatures) for one seed."""
    labelled, transfer = _split(st, seed)
    acc = lambda m: evaluate(m, st["test"])["accuracy"]  # noqa: E731
    out = {
        "student alone": acc(_alone(_student(st, seed), labelled, seed)),
        "+ soft targets": acc(_soft(_student(st, seed), teacher, transfer, seed)),
    }
    hinted = _hint_stage(_student(st, seed), teacher, transfer, seed, st["hint"])
    out["+ feature matching"] = acc(_alone(copy.deepcopy(hinted), labelled, seed))
    out["+ both"] = acc(_soft(hinted, teacher, transfer, seed))
    for T in temps:
        out[f"T={T:g}"] = acc(_soft(_student(st, seed), teacher, transfer, seed, temperature=T))
    return out


def gap_table(name: str, quick: bool = False) -> None:
    st = _setting(name)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    teacher = CourseCNN(channels=st["teacher"], image_size=st["size"])
    fit(teacher, st["train"], epochs=st["teacher_epochs"], progress=False)
    teacher.eval()
    t_acc = evaluate(teacher, st["test"])["accuracy"]
    student = SeparableCNN(channels=st["student"], pool_size=2)
    x1 = torch.from_numpy(st["test"][0][:1])
    shape = (1, 1, st["size"], st["size"])
    print_table(
        f"{name}: teacher vs student cost (batch 1, 1 thread)",
        ["network", "params", "MACs", "latency (us)"],
        [
            [
                f"teacher CourseCNN{st['teacher']}",
                count_parameters(teacher),
                count_macs(teacher, shape),
                f"{1e6 * measure_latency(teacher, x1, repeats=50):.0f}",
            ],
            [
                f"student SeparableCNN{student.channels}, pool 2x2",
                count_parameters(student),
                count_macs(student, shape),
                f"{1e6 * measure_latency(student, x1, repeats=50):.0f}",
            ],
        ],
    )
    print(machine_line(num_threads=1) + "\n")
    temps = () if quick else (1.0, 2.0, 8.0, 16.0)
    runs = [run_seed(st, teacher, s, temps) for s in SEEDS]
    accs = {k: np.array([r[k] for r in runs]) for k in runs[0]}
    alone = accs["student alone"]
    rows = [[f"teacher ({len(st['train'][0])} labelled images)", f"{t_acc:.3f}", "", ""]]
    for c in ("student alone", "+ soft targets", "+ feature matching", "+ both"):
        a = accs[c]
        closed = (a - alone) / (t_acc - alone)
        rows.append(
            [c, _pm(a), "" if c == "student alone" else _pm(100 * closed, "{:.0f}%"), " ".join(f"{v:.3f}" for v in a)]
        )
    print_table(
        f"{name}: share of the teacher-student gap closed ({st['n_labelled']} labelled + "
        f"{len(st['train'][0]) - st['n_labelled']} unlabelled transfer images, 3 seeds, "
        f"{time.perf_counter() - t0:.0f} s)",
        ["model", "test accuracy", "gap closed", "per seed"],
        rows,
    )
    if temps:
        rows = []
        for T in sorted((4.0,) + temps):
            a = accs["+ soft targets"] if T == 4.0 else accs[f"T={T:g}"]
            rows.append([f"{T:g}", _pm(a), _pm(100 * (a - alone) / (t_acc - alone), "{:.0f}%")])
        print_table(
            f"{name}: temperature sweep (soft targets, alpha=0.9, 3 seeds)", ["T", "test accuracy", "gap closed"], rows
        )


ENSEMBLE = dict(members=5, epochs=40, batch_size=32, temperature=4.0, alpha=0.9)


def ensemble_run(st, seed: int, cfg=ENSEMBLE):
    """Baseline (mean member accuracy), ensemble and distilled single student for one seed.

    Members are students trained alone on the seed's labelled images (member 0 is exactly the "student
    alone" of the gap table); the distilled student sees the same labelled images only.
    """
    labelled, _ = _split(st, seed)
    members = [_alone(_student(st, seed + k), labelled, seed + k) for k in range(cfg["members"])]
    base = float(np.mean([evaluate(m, st["test"])["accuracy"] for m in members]))
    ens = Ensemble(members).eval()
    e_acc = evaluate(ens, st["test"])["accuracy"]
    single = _student(st, seed + cfg["members"])
    distill(
        single,
        ens,
        labelled,
        temperature=cfg["temperature"],
        alpha=cfg["alpha"],
        epochs=cfg["epochs"],
        lr=LR,
        batch_size=cfg["batch_size"],
        seed=seed,
        progress=False,
    )
    return base, e_acc, evaluate(single, st["test"])["accuracy"]


def ensemble_table(quick: bool = False) -> None:
    st = _setting("digits")
    r = np.array([ensemble_run(st, s) for s in SEEDS]) * 100
    c = ENSEMBLE
    per = lambda col: " ".join(f"{v:.1f}" for v in col)  # noqa: E731
    print_table(
        f"Ensemble distillation: Hinton et al. (speech frame accuracy) vs digits (SeparableCNN"
        f"{st['student']}, {st['n_labelled']} labelled images, {c['members']} members, {c['epochs']} "
        f"epochs, distilled with T={c['temperature']:g}, alpha={c['alpha']:g} on the same images; "
        f"mean +- std over 3 seeds)",
        ["system", "paper", "digits (ours)", "per seed"],
        [
            ["baseline (one model)", "58.9%", f"{_pm(r[:, 0], '{:.1f}')}%", per(r[:, 0])],
            [f"ensemble of {c['members']} (paper: 10) models", "61.1%", f"{_pm(r[:, 1], '{:.1f}')}%", per(r[:, 1])],
            ["distilled single model", "60.8%", f"{_pm(r[:, 2], '{:.1f}')}%", per(r[:, 2])],
        ],
    )


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
