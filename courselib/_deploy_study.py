"""Deploying, the study: the trade-off table of the chapter *Putting it together*, in eager PyTorch and in each runtime.

Private to :mod:`courselib.deploy`, which re-exports :func:`study_models`, :func:`runtime_study`,
:func:`study_table` and :func:`plot_runtimes` (the chapter ``book/deploying.md`` and
``benchmarks/bench_deploy.py`` run them). The models are those of :func:`courselib.compare.trade_off_study`,
built by the same recipes of :mod:`courselib.compare` with the same settings (:data:`courselib.compare.STUDY`).
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import numpy as np

from . import compare
from ._deploy_export import _as_input
from ._deploy_runtime import RUNTIMES, deploy_model
from .measure import file_bytes, measure_latency
from .quantization import quantize_dynamic_int8, quantize_static_int8
from .training import evaluate


def study_models(train, calibration_X, *, settings: dict | None = None, reference=None, seed: int = 0) -> list[dict]:
    """The models of the trade-off table (``courselib.compare``'s recipes), each in its deployable float form.

    The models of :func:`courselib.compare.trade_off_study`, from the same recipes and settings; the last row,
    distill + prune + int8, exports the float model of :func:`courselib.compare.prune_student` (``amount`` and
    ``finetune_epochs`` from the settings' ``pipeline_amount`` and ``pipeline_epochs``), which the runtime
    quantizes as :func:`courselib.compare.combined_pipeline` does in PyTorch.

    Every entry: ``name``; ``model``, the float model that is exported (int8 rows export the float
    reference and quantize it in the runtime's own flow); ``quantize`` (``None``, ``"static"``,
    ``"dynamic"``); ``eager``, the model PyTorch runs in the chapter *Putting it together* (its
    ``torch.ao`` int8 models for the int8 rows); ``saver``, the file format of its eager size.

    Parameters
    ----------
    train : (X, y)
        Training images (28x28) and labels.
    calibration_X : array
        Calibration images for static int8 (training images).
    settings : dict, optional
        Overrides of :data:`courselib.compare.STUDY`.
    reference : nn.Module, optional
        A trained reference (default :func:`courselib.compare.train_reference`).
    seed : int
    """
    s = {**compare.STUDY, **(settings or {})}
    unknown = set(s) - set(compare.STUDY)
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}; known: {sorted(compare.STUDY)}")
    ref = reference if reference is not None else compare.train_reference(seed, s["reference_epochs"], train)
    calib = np.asarray(calibration_X)
    rows = [
        {"name": "float32 reference", "model": ref, "quantize": None, "eager": ref, "saver": compare.save_dense},
        {
            "name": "int8 dynamic",
            "model": ref,
            "quantize": "dynamic",
            "eager": quantize_dynamic_int8(ref),
            "saver": compare.save_dense,
        },
        {
            "name": "int8 static",
            "model": ref,
            "quantize": "static",
            "eager": quantize_static_int8(ref, calib),
            "saver": compare.save_dense,
        },
    ]
    binary = compare.train_binary(train, epochs=s["binary_epochs"], seed=seed)
    rows.append(
        {
            "name": "BinaryConnect",
            "model": binary,
            "quantize": None,
            "eager": binary,
            "saver": compare.save_packed_binary,
        }
    )
    obd = compare.obd_prune(ref, train, s["obd_amount"], finetune_epochs=s["finetune_epochs"], seed=seed)
    rows.append(
        {
            "name": f"OBD {int(100 * s['obd_amount'])}% pruned",
            "model": obd,
            "quantize": None,
            "eager": obd,
            "saver": compare.save_sparse,
        }
    )
    filt = compare.filter_prune(ref, train, s["filter_amount"], finetune_epochs=s["finetune_epochs"], seed=seed)
    rows.append(
        {
            "name": f"filters {int(100 * s['filter_amount'])}% pruned",
            "model": filt,
            "quantize": None,
            "eager": filt,
            "saver": compare.save_dense,
        }
    )
    student = compare.distill_student(ref, train, channels=s["student_channels"], epochs=s["student_epochs"], seed=seed)
    rows.append(
        {"name": "distilled student", "model": student, "quantize": None, "eager": student, "saver": compare.save_dense}
    )
    # compare.combined_pipeline kept in float before its last step, static int8, which the runtime does
    pruned = compare.prune_student(
        student, ref, train, amount=s["pipeline_amount"], finetune_epochs=s["pipeline_epochs"], seed=seed
    )
    rows.append(
        {
            "name": "distill + prune + int8",
            "model": pruned,
            "quantize": "static",
            "eager": quantize_static_int8(pruned, calib),
            "saver": compare.save_dense,
        }
    )
    return rows


def runtime_study(
    entries: list[dict],
    X_test,
    y_test,
    calibration_X,
    *,
    runtimes=RUNTIMES,
    batch_sizes=(1, 64),
    repeats: int = 20,
    warmup: int = 3,
    folder=None,
    log=None,
) -> list[dict]:
    """Every entry of :func:`study_models` in eager PyTorch and in each runtime: size, latency, accuracy.

    Returns
    -------
    list of dict
        One row per (entry, runtime), eager first: ``name``, ``runtime`` (``"eager"``, ``"executorch"``,
        ``"onnxruntime"``), ``size_bytes`` (eager: the file of the entry's ``saver``; runtimes: the
        program file), ``latency_ms`` (``{batch: median ms}``, one thread), ``accuracy``.
    """
    X = _as_input(X_test, "X_test")
    y = np.asarray(y_test)
    say = log or (lambda msg: None)
    rows = []
    with contextlib.ExitStack() as stack:
        if folder is None:
            folder = stack.enter_context(tempfile.TemporaryDirectory())
        for i, e in enumerate(entries):
            eager = e["eager"].eval()
            lat = {int(b): 1e3 * measure_latency(eager, X[:b], repeats=repeats, warmup=warmup) for b in batch_sizes}
            rows.append(
                {
                    "name": e["name"],
                    "runtime": "eager",
                    "size_bytes": file_bytes(eager, e["saver"]),
                    "latency_ms": lat,
                    "accuracy": float(evaluate(eager, (X, y))["accuracy"]),
                }
            )
            for rt in runtimes:
                r = deploy_model(
                    e["model"],
                    X,
                    y,
                    runtime=rt,
                    quantize=e["quantize"],
                    calibration_X=calibration_X,
                    batch_sizes=batch_sizes,
                    folder=Path(folder) / f"{i}",
                    name=rt,
                    repeats=repeats,
                    warmup=warmup,
                )
                rows.append(
                    {"name": e["name"], **{k: r[k] for k in ("runtime", "size_bytes", "latency_ms", "accuracy")}}
                )
            say(f"{e['name']}: done")
    return rows


def study_table(rows: list[dict], batch_sizes=(1, 64)) -> str:
    """The rows of :func:`runtime_study` as one Markdown table (a column group per runtime)."""
    runtimes = list(dict.fromkeys(r["runtime"] for r in rows))
    names = list(dict.fromkeys(r["name"] for r in rows))
    by = {(r["name"], r["runtime"]): r for r in rows}
    head = ["method"]
    for rt in runtimes:
        head += [f"{rt} KB"] + [f"{rt} ms (batch {b})" for b in batch_sizes] + [f"{rt} acc."]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in names:
        cells = [n]
        for rt in runtimes:
            r = by.get((n, rt))
            if r is None:
                cells += [""] * (len(batch_sizes) + 2)
                continue
            cells += [f"{r['size_bytes'] / 1000:.1f}"]
            cells += [f"{r['latency_ms'][int(b)]:.3f}" for b in batch_sizes]
            cells += [f"{100 * r['accuracy']:.1f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_runtimes(rows: list[dict], batch: int = 64, *, ax=None):
    """Grouped bars: latency of a batch of ``batch`` images per method, one bar per runtime (log axis).

    ``rows`` as returned by :func:`runtime_study`. Returns the figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    runtimes = list(dict.fromkeys(r["runtime"] for r in rows))
    names = list(dict.fromkeys(r["name"] for r in rows))
    by = {(r["name"], r["runtime"]): r for r in rows}
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / len(runtimes)
    for j, rt in enumerate(runtimes):
        vals = [by[(n, rt)]["latency_ms"][batch] if (n, rt) in by else np.nan for n in names]
        ax.bar(np.arange(len(names)) + (j - (len(runtimes) - 1) / 2) * width, vals, width, label=rt)
    ax.set_xticks(np.arange(len(names)), names, rotation=25, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel(f"ms per batch of {batch} (1 thread)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.figure.tight_layout()
    return ax.figure
