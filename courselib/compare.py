"""Putting it together: every method of the book on one model, measured the same way.

Implements the chapter ``book/putting_together.md`` and ``benchmarks/bench_compare.py``:

- :func:`evaluate_compressed` -- accuracy, size of the file really written to disk, and median
  latency (:func:`courselib.measure.measure_latency`, torch threads fixed) of one model;
- savers that decide what "size on disk" means for each method: :func:`save_dense`
  (``torch.save`` of the state dict; int8 models store their weights as one byte each),
  :func:`save_sparse` (pruned weights as CSR tensors with int32 indices, book Eq. ``obd-csr-bytes``:
  unstructured sparsity only saves space in a sparse format) and :func:`save_packed_binary`
  (1 bit per binary weight, :func:`courselib.binaryconnect.pack_binary_weights`);
- :func:`pareto_front` and :func:`plot_pareto` -- the accuracy-versus-cost trade-off;
- the recipes of the chapter's table, one function per method, each a few calls of the book's
  modules: :func:`obd_prune` (LeCun et al. 1989), :func:`filter_prune` (Li et al. 2017),
  :func:`train_binary` (Courbariaux et al. 2015), :func:`distill_student` (Hinton et al. 2015,
  MobileNets-style student), :func:`combined_pipeline` (distill, then prune filters, then static
  int8, Jacob et al. 2018; its float part is :func:`prune_student`) and :func:`trade_off_study`, which
  runs them all with the settings :data:`STUDY`.

The same models in ExecuTorch and ONNX Runtime (chapter *Deploying to a device*): :func:`courselib.deploy.study_models`
and :func:`courselib.deploy.runtime_study`, in the module of the ``deploy`` extra, which this one does not need.

Every recipe takes a ``seed`` and leaves the caller's random stream alone (:func:`courselib.utils.seeded`).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.lines import Line2D
from matplotlib.ticker import LogLocator, ScalarFormatter
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn.utils import prune

from .binaryconnect import RECIPE, fit_binaryconnect, init_latent_weights_, make_binary_cnn, pack_binary_weights
from .data import load_dataset
from .distillation import SeparableCNN, distill
from .measure import file_bytes, measure_latency
from .models import CourseCNN
from .pruning import obd_saliency, prunable_parameters, prune_filters, saliency_prune
from .quantization import quantize_dynamic_int8, quantize_static_int8
from .training import evaluate, fit
from .utils import seeded

__all__ = [
    "study_data",
    "reference_arch",
    "train_reference",
    "save_dense",
    "save_sparse",
    "save_packed_binary",
    "evaluate_compressed",
    "pareto_front",
    "plot_pareto",
    "markdown_table",
    "obd_prune",
    "filter_prune",
    "train_binary",
    "distill_student",
    "prune_student",
    "combined_pipeline",
    "trade_off_study",
    "STUDY",
]


# ---------------------------------------------------------------------------------------------
# the study's data and reference model (also the compression challenge's, lab 6)
# ---------------------------------------------------------------------------------------------
def study_data() -> dict:
    """Digits upsampled to 28x28 (offline, scikit-learn's bundled set), split for the study.

    Returns ``{"train": (X, y), "val": (X, y), "test": (X, y)}``: the 1257 training images split
    (stratified, seed 0) into 1000 for training and 257 for validation, and the 540 test images.
    """
    X, y = load_dataset("digits", "train", image_size=28)
    Xtr, Xva, ytr, yva = train_test_split(X, y, train_size=1000, stratify=y, random_state=0)
    return {"train": (Xtr, ytr), "val": (Xva, yva), "test": load_dataset("digits", "test", image_size=28)}


def reference_arch() -> tuple[str, dict]:
    """Architecture of the reference model: ``("CourseCNN", {"channels": [16, 32]})``."""
    return "CourseCNN", {"channels": [16, 32]}


def train_reference(seed: int = 0, epochs: int = 4, train=None) -> nn.Module:
    """The reference model: ``CourseCNN(channels=(16, 32))`` trained on digits at 28x28.

    Adam, learning rate 3e-3, batches of 64, ``epochs`` epochs, seeded, one torch thread (so that
    every run on the same machine gives the same model; the caller's threads and random stream are
    restored). About 2 s per epoch on one core.

    Parameters
    ----------
    seed : int
    epochs : int
    train : (X, y), optional
        Default ``study_data()["train"]`` (1000 digits images at 28x28).
    """
    if train is None:
        train = study_data()["train"]
    _, kw = reference_arch()
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with seeded(seed), torch.device("cpu"):
            model = CourseCNN(channels=tuple(kw["channels"]))
        fit(model, train, epochs=epochs, lr=3e-3, seed=seed, progress=False)
    finally:
        torch.set_num_threads(old)
    return model.eval()


# --------------------------------------------------------------------------------------------------
# sizes on disk
# --------------------------------------------------------------------------------------------------
def save_dense(model: nn.Module, path) -> None:
    """``torch.save(model.state_dict(), path)``: every stored value at its dtype (int8 models: 1 byte)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(model.state_dict(), path)


def _weight_names(model: nn.Module) -> set[str]:
    return {f"{n}.weight" if n else "weight" for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def save_sparse(model: nn.Module, path) -> None:
    """Save the state dict with every Linear/Conv weight in CSR (values + int32 column indices + row pointers).

    A conv weight ``(out, in, kh, kw)`` is stored as the ``(out, in*kh*kw)`` matrix. The file holds
    ``nnz * (4 + 4) + (rows + 1) * 4`` bytes per weight plus the format's overhead (book Eq.
    ``obd-csr-bytes`` with 4-byte indices), so it is smaller than the dense file only above 50%
    sparsity. Pruning masks must have been made permanent (``torch.nn.utils.prune.remove``).
    """
    state = model.state_dict()
    if any(k.endswith("_orig") or k.endswith("_mask") for k in state):
        raise ValueError("save_sparse needs plain weights: call torch.nn.utils.prune.remove(...) first")
    names = _weight_names(model)
    out = {}
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore")
        for k, v in state.items():
            if k in names:
                csr = v.detach().reshape(v.shape[0], -1).to_sparse_csr()
                out[k] = torch.sparse_csr_tensor(
                    csr.crow_indices().to(torch.int32), csr.col_indices().to(torch.int32), csr.values(), csr.shape
                )
                out[k + ".shape"] = torch.tensor(v.shape, dtype=torch.int32)
            else:
                out[k] = v
        torch.save(out, path)


def save_packed_binary(model: nn.Module, path) -> None:
    """``torch.save(pack_binary_weights(model))``: 1 bit per BinaryConnect weight, the rest as is."""
    torch.save(pack_binary_weights(model), path)


def evaluate_compressed(
    model: nn.Module, X, y, example_input, *, saver: Callable = save_dense, repeats: int = 20, num_threads: int = 1
) -> dict:
    """Accuracy on ``(X, y)``, size of the file ``saver`` writes, and median latency on ``example_input``.

    Parameters
    ----------
    model : nn.Module
    X, y : arrays or tensors
        Test data in the shape the model expects.
    example_input : torch.Tensor
        The timed batch (state its size next to the numbers).
    saver : callable, default :func:`save_dense`
        ``saver(model, path)``; :func:`save_sparse` for unstructured pruning, :func:`save_packed_binary`
        for BinaryConnect models.
    repeats : int
        Timed repeats (median), after 3 warm-up calls.
    num_threads : int
        torch intra-op threads while timing (:func:`courselib.measure.measure_latency`).

    Returns
    -------
    dict
        ``accuracy`` (float), ``size_bytes`` (int), ``latency_ms`` (float).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a torch.Tensor, got {type(example_input).__name__}")
    acc = evaluate(model, (X, y))["accuracy"]
    size = file_bytes(model, saver)
    lat = measure_latency(model, example_input, repeats=repeats, warmup=3, num_threads=num_threads)
    return {"accuracy": float(acc), "size_bytes": int(size), "latency_ms": 1e3 * float(lat)}


# --------------------------------------------------------------------------------------------------
# Pareto front, figure, table
# --------------------------------------------------------------------------------------------------
def pareto_front(points) -> list[int]:
    """Indices of the non-dominated ``(cost, accuracy)`` points, by increasing cost.

    A point is dominated when another has cost ``<=`` and accuracy ``>=`` with at least one strict.
    Exact duplicates are all kept.

    Parameters
    ----------
    points : sequence of (cost, accuracy) pairs, finite
    """
    P = np.asarray(points, dtype=float)
    if P.ndim != 2 or P.shape[1] != 2:
        raise ValueError(f"points must be a sequence of (cost, accuracy) pairs, got shape {P.shape}")
    if not np.all(np.isfinite(P)):
        raise ValueError("points must be finite")
    keep = []
    for i, (c, a) in enumerate(P):
        dominated = np.any((P[:, 0] <= c) & (P[:, 1] >= a) & ((P[:, 0] < c) | (P[:, 1] > a)))
        if not dominated:
            keep.append(i)
    return sorted(keep, key=lambda i: (P[i, 0], -P[i, 1]))


def plot_pareto(results: Sequence[dict], cost: str = "size_bytes", *, ax=None, log: bool = True):
    """Accuracy against ``cost`` (``"size_bytes"`` or ``"latency_ms"``), the Pareto front as a step line.

    Parameters
    ----------
    results : sequence of dict
        Each with ``name``, ``accuracy`` and ``cost``.
    ax : matplotlib Axes, optional
    log : bool
        Log-scaled cost axis.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if cost not in ("size_bytes", "latency_ms"):
        raise ValueError(f"cost must be 'size_bytes' or 'latency_ms', got {cost!r}")
    if not results:
        raise ValueError("results is empty")
    if ax is None:
        fig, ax = plt.subplots(figsize=(8.0, 3.8))
    else:
        fig = ax.figure
    xs = np.array([r[cost] / (1024 if cost == "size_bytes" else 1) for r in results], dtype=float)
    ys = np.array([100 * r["accuracy"] for r in results])
    front = pareto_front(list(zip(xs, ys)))
    ax.plot(xs[front], ys[front], color="C2", lw=1.5, drawstyle="steps-post", zorder=1)
    handles = [Line2D([], [], color="C2", lw=1.5, label="Pareto front")]
    for i, r in enumerate(results):
        on = i in front
        ax.scatter(xs[i], ys[i], s=60, color="C0" if on else "0.75", edgecolor="k", zorder=2)
        ax.annotate(
            str(i + 1),
            (xs[i], ys[i]),
            textcoords="offset points",
            xytext=(6, 3),
            fontsize=9,
            fontweight="bold" if on else "normal",
        )
        handles.append(
            Line2D(
                [],
                [],
                ls="",
                marker="o",
                color="C0" if on else "0.75",
                markeredgecolor="k",
                label=f"{i + 1}  {r['name']}",
            )
        )
    if log:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xlabel("size on disk (KiB)" if cost == "size_bytes" else "latency (ms per batch)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def markdown_table(results: Sequence[dict], *, reference: str | None = None) -> str:
    """The trade-off table as Markdown: method, accuracy, size, latency and the ratios to ``reference``."""
    if not results:
        raise ValueError("results is empty")
    ref = next((r for r in results if r["name"] == reference), results[0])
    lines = [
        "| method | accuracy (%) | size on disk (bytes) | smaller | latency (ms) | faster | storage |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['name']} | {100 * r['accuracy']:.1f} | {r['size_bytes']:,} | "
            f"{ref['size_bytes'] / r['size_bytes']:.1f}x | {r['latency_ms']:.2f} | "
            f"{ref['latency_ms'] / r['latency_ms']:.1f}x | {r.get('storage', '')} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# recipes: one per row of the table
# --------------------------------------------------------------------------------------------------
def obd_prune(
    model: nn.Module,
    train,
    amount: float = 0.8,
    *,
    n_hessian: int = 256,
    finetune_epochs: int = 1,
    lr: float = 1e-3,
    seed: int = 0,
) -> nn.Module:
    """Optimal Brain Damage on a copy: Gauss-Newton saliencies, prune ``amount`` of the weights, retrain.

    LeCun et al. (1989) steps 2-5 with :func:`courselib.pruning.obd_saliency` (book Eq.
    ``obd-saliency``) on the first ``n_hessian`` training examples, global
    :func:`courselib.pruning.saliency_prune` over every Linear/Conv weight, ``finetune_epochs`` of
    retraining with the masks on, then ``prune.remove`` (the zeros become plain weights).
    """
    m = copy.deepcopy(model).eval()
    X, y = train
    sub = (torch.as_tensor(np.asarray(X[:n_hessian])), torch.as_tensor(np.asarray(y[:n_hessian])))
    sal = obd_saliency(m, F.cross_entropy, sub, method="gauss-newton")
    saliency_prune(m, sal, amount)
    if finetune_epochs:
        fit(m, train, epochs=finetune_epochs, lr=lr, seed=seed, progress=False)
    for _, module, attr in prunable_parameters(m):
        if hasattr(module, attr + "_mask"):
            prune.remove(module, attr)
    return m.eval()


def filter_prune(
    model: nn.Module,
    train,
    amount: float = 0.5,
    *,
    layers: Sequence[str] = ("conv1", "conv2"),
    finetune_epochs: int = 1,
    lr: float = 1e-3,
    seed: int = 0,
) -> nn.Module:
    """Li et al. (2017) on a copy, layer by layer: remove the ``amount`` smallest-L1 filters, retrain, next layer."""
    m = copy.deepcopy(model)
    for i, layer in enumerate(layers):
        with seeded(seed + i):  # the rebuilt layers' initial weights (then overwritten) are not the caller's draws
            prune_filters(m, layer, amount)
        if finetune_epochs:
            fit(m, train, epochs=finetune_epochs, lr=lr, seed=seed + i, progress=False)
    return m.eval()


def train_binary(train, *, channels: Sequence[int] = (16, 32), epochs: int = 4, seed: int = 0) -> nn.Module:
    """A BinaryConnect CNN of the reference's widths (deterministic binarization, first conv in float).

    :func:`courselib.binaryconnect.make_binary_cnn` with ``float_first_conv=True``, latent weights from
    ``U(-1, 1)``, trained with :func:`courselib.binaryconnect.fit_binaryconnect` (the paper's recipe,
    ``epochs`` epochs). Evaluated with ``sign(w)``.
    """
    X = np.asarray(train[0])
    with seeded(seed):
        m = make_binary_cnn("det", channels=tuple(channels), image_size=int(X.shape[-1]), float_first_conv=True)
        init_latent_weights_(m, seed=seed)
        fit_binaryconnect(
            m, train, epochs=epochs, lr=RECIPE["det"]["lr"], lr_final=RECIPE["det"]["lr_final"], seed=seed
        )
    return m.eval()


def distill_student(
    teacher: nn.Module,
    train,
    *,
    channels: Sequence[int] = (8, 16, 32),
    epochs: int = 8,
    lr: float = 1e-2,
    batch_size: int = 32,
    temperature: float = 4.0,
    alpha: float = 0.9,
    seed: int = 0,
) -> nn.Module:
    """Distil ``teacher`` into a :class:`courselib.models.SeparableCNN` (Hinton et al. 2015 soft targets)."""
    with seeded(seed):
        student = SeparableCNN(channels=tuple(channels))
    distill(
        student,
        teacher,
        train,
        temperature=temperature,
        alpha=alpha,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        progress=False,
    )
    return student.eval()


def prune_student(
    student: nn.Module,
    teacher: nn.Module,
    train,
    *,
    amount: float = 0.5,
    finetune_epochs: int = 2,
    lr: float = 3e-3,
    seed: int = 0,
) -> nn.Module:
    """The float part of :func:`combined_pipeline`: prune a copy of a distilled student, then distil it again.

    The ``amount`` smallest-L1 filters of the student's last pointwise convolution (the last ``Conv2d``
    with ``groups == 1``) are removed (:func:`courselib.pruning.prune_filters`, Li et al. 2017: structured,
    so the network stays dense and smaller; the depthwise layers before it cannot lose channels alone),
    then the copy is distilled from ``teacher`` for ``finetune_epochs`` epochs (Hinton et al. 2015; batches
    of 32, temperature 4, alpha 0.9). ``finetune_epochs=0`` skips the retraining.

    Parameters
    ----------
    student : nn.Module
        A distilled :class:`~courselib.models.SeparableCNN` (:func:`distill_student`); not modified.
    teacher : nn.Module
    train : (X, y)
    amount : float, default 0.5
    finetune_epochs : int, default 2
        Epochs of distillation after pruning, ``>= 0``.
    lr : float, default 3e-3
    seed : int, default 0

    Returns
    -------
    nn.Module
        The pruned float copy, in eval mode: what :func:`combined_pipeline` quantizes, and what
        :func:`courselib.deploy.study_models` exports.
    """
    if isinstance(finetune_epochs, bool) or not isinstance(finetune_epochs, (int, np.integer)) or finetune_epochs < 0:
        raise ValueError(f"finetune_epochs must be an int >= 0, got {finetune_epochs!r}")
    m = copy.deepcopy(student)
    last = [n for n, mod in m.named_modules() if isinstance(mod, nn.Conv2d) and mod.groups == 1][-1]
    with seeded(seed):  # the rebuilt layers' initial weights (then overwritten) are not the caller's draws
        prune_filters(m, last, amount)
    if finetune_epochs:
        distill(m, teacher, train, epochs=int(finetune_epochs), lr=lr, batch_size=32, seed=seed, progress=False)
    return m.eval()


def combined_pipeline(
    student: nn.Module,
    teacher: nn.Module,
    train,
    calibration_X,
    *,
    amount: float = 0.5,
    finetune_epochs: int = 2,
    lr: float = 3e-3,
    seed: int = 0,
) -> nn.Module:
    """Distil, then prune, then quantize: the book's three steps in a row, on a copy of ``student``.

    1. ``student`` is a distilled :class:`~courselib.models.SeparableCNN` (:func:`distill_student`);
    2. :func:`prune_student`: the ``amount`` smallest-L1 filters of its last pointwise convolution are
       removed (:func:`courselib.pruning.prune_filters`) and the student is distilled again for
       ``finetune_epochs`` (``0``: not retrained);
    3. post-training static int8 (:func:`courselib.quantization.quantize_static_int8`) calibrated on
       ``calibration_X``.
    """
    pruned = prune_student(student, teacher, train, amount=amount, finetune_epochs=finetune_epochs, lr=lr, seed=seed)
    return quantize_static_int8(pruned, calibration_X)


#: The study's settings, read by the chapter *Putting it together* and used by :func:`trade_off_study` and
#: :func:`courselib.deploy.study_models` (overrides through ``settings=``; the benchmark scales the epochs and
#: the data). ``finetune_epochs`` is the retraining after OBD and after each layer of filter pruning,
#: ``pipeline_epochs`` the distillation after pruning the student (:func:`prune_student`); ``0`` skips either.
#: ``repeats`` timed calls per model, after 3 warm-up ones, on a batch of ``latency_batch`` test images.
STUDY = {
    "reference_epochs": 4,
    "binary_epochs": 4,
    "obd_amount": 0.8,
    "filter_amount": 0.5,
    "student_channels": (8, 16, 32),
    "student_epochs": 8,
    "pipeline_amount": 0.5,
    "finetune_epochs": 1,
    "pipeline_epochs": 2,
    "latency_batch": 64,
    "repeats": 20,
}


def trade_off_study(
    train,
    test,
    *,
    settings: dict | None = None,
    reference: nn.Module | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> tuple[list[dict], dict]:
    """Every method of the book on one reference model; returns the table rows and the models.

    Rows (in order): float32 reference (``CourseCNN(16, 32)``), dynamic int8, static int8,
    BinaryConnect (1-bit weights, packed), OBD-pruned (CSR file), filter-pruned, distilled
    ``SeparableCNN``, and the combined pipeline. Each row: ``name``, ``accuracy``, ``size_bytes``,
    ``latency_ms``, ``storage`` (what the file holds). Latency: a batch of ``latency_batch`` test
    images, one torch thread.

    Parameters
    ----------
    train, test : (X, y) with X of shape (n, 28, 28)
    settings : dict, optional
        Overrides of :data:`STUDY`.
    reference : nn.Module, optional
        A trained reference (default: :func:`train_reference` on ``train``).
    log : callable, optional
        Called with a short message after each method (progress).
    """
    s = {**STUDY, **(settings or {})}
    unknown = set(s) - set(STUDY)
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}; known: {sorted(STUDY)}")
    say = log or (lambda msg: None)
    Xte, yte = test
    example = torch.as_tensor(np.asarray(Xte[: s["latency_batch"]]), dtype=torch.float32)
    calib = np.asarray(train[0][:256])

    def ev(m, saver=save_dense):
        return evaluate_compressed(m, Xte, yte, example, saver=saver, repeats=s["repeats"])

    models, rows = {}, []

    def add(name, model, storage, saver=save_dense):
        models[name] = model
        rows.append({"name": name, **ev(model, saver), "storage": storage})
        say(f"{name}: done")

    ref = reference if reference is not None else train_reference(seed=seed, epochs=s["reference_epochs"], train=train)
    add("float32 reference", ref, "float32 weights")
    add("int8 dynamic", quantize_dynamic_int8(ref), "int8 Linear weights, float32 convs")
    add("int8 static", quantize_static_int8(ref, calib), "int8 weights and activations")
    add(
        "BinaryConnect",
        train_binary(train, epochs=s["binary_epochs"], seed=seed),
        "1 bit/weight packed; float conv1",
        save_packed_binary,
    )
    add(
        f"OBD {int(100 * s['obd_amount'])}% pruned",
        obd_prune(ref, train, s["obd_amount"], finetune_epochs=s["finetune_epochs"], seed=seed),
        "CSR (float32 values, int32 indices)",
        save_sparse,
    )
    add(
        f"filters {int(100 * s['filter_amount'])}% pruned",
        filter_prune(ref, train, s["filter_amount"], finetune_epochs=s["finetune_epochs"], seed=seed),
        "float32, smaller dense CNN",
    )
    student = distill_student(ref, train, channels=s["student_channels"], epochs=s["student_epochs"], seed=seed)
    add("distilled student", student, "float32 SeparableCNN")
    add(
        "distill + prune + int8",
        combined_pipeline(
            student, ref, train, calib, amount=s["pipeline_amount"], finetune_epochs=s["pipeline_epochs"], seed=seed
        ),
        "int8 SeparableCNN, fewer filters",
    )
    return rows, models
