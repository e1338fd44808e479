"""Seeded training and evaluation loops for torch models (used by every chapter and lab).

``fit`` is an ordinary mini-batch loop (Adam or SGD) with three hooks that the compression
methods need: ``compute_loss`` (distillation adds the teacher's soft targets), ``after_step``
(BinaryConnect clips its latent weights after every update) and ``val_data`` (curves).
Runs are reproducible and free of global effects: ``seed`` alone fixes the shuffling order and every
draw from torch's global generator during training (dropout, stochastic layers), and the caller's random
stream is left as it was (:func:`courselib.utils.seeded`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .utils import progress as progress_bar
from .utils import seeded

__all__ = ["fit", "evaluate", "predict", "make_loader", "as_tensors"]

Data = "tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor] | DataLoader"


def as_tensors(X, y=None):
    """Convert arrays to ``float32`` / ``int64`` tensors (no copy for tensors of the right dtype)."""
    Xt = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X).float()
    if y is None:
        return Xt
    yt = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).long()
    if len(Xt) != len(yt):
        raise ValueError(f"X and y have different lengths: {len(Xt)} and {len(yt)}")
    return Xt, yt


def make_loader(data, *, batch_size: int = 64, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A ``DataLoader`` over ``(X, y)``; a ``DataLoader`` passes through unchanged."""
    if isinstance(data, DataLoader):
        return data
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise TypeError("data must be an (X, y) pair or a torch DataLoader")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    X, y = as_tensors(*data)
    if len(X) == 0:
        raise ValueError("data is empty")
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(X, y), batch_size=batch_size, shuffle=shuffle, generator=gen)


def _default_loss(outputs, targets):
    return F.cross_entropy(outputs, targets)


def fit(
    model: nn.Module,
    data,
    *,
    epochs: int = 10,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 64,
    optimizer: str | torch.optim.Optimizer = "adam",
    loss_fn: Callable | None = None,
    compute_loss: Callable | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
    val_data=None,
    seed: int = 0,
    progress: bool = True,
    desc: str | None = None,
) -> dict[str, list[float]]:
    """Train ``model`` on ``data`` and return the per-epoch history.

    Parameters
    ----------
    model : nn.Module
    data : (X, y) pair of arrays/tensors, or a DataLoader
        Training data; X in the shape the model expects.
    epochs, lr, weight_decay, batch_size : training hyper-parameters.
    optimizer : {"adam", "sgd"} or torch.optim.Optimizer
        ``"sgd"`` uses momentum 0.9. An optimizer instance is used as given.
    loss_fn : callable, optional
        ``loss_fn(outputs, targets)``; default cross-entropy.
    compute_loss : callable, optional
        ``compute_loss(model, xb, yb) -> loss``; overrides ``loss_fn`` (e.g. distillation).
    after_step : callable, optional
        ``after_step(model)`` after every optimizer step (e.g. BinaryConnect's clipping).
    val_data : optional
        Evaluated after every epoch (``val_loss``, ``val_accuracy``).
    seed : int
        Decides the run with the model's initial weights: the shuffling order and every draw from torch's
        global generator during training (dropout, stochastic layers, hooks) follow from it. The caller's
        generator is neither read nor changed: training runs in :func:`courselib.utils.seeded`, which
        restores its state afterwards.
    progress : bool
        Show a text progress bar over epochs.

    Returns
    -------
    dict of lists
        ``train_loss``, ``train_accuracy`` and, with ``val_data``, ``val_loss``, ``val_accuracy``.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    with seeded(seed):  # seed alone decides the run; the caller's stream is restored afterwards
        loader = make_loader(data, batch_size=batch_size, shuffle=True, seed=seed)
        if isinstance(optimizer, torch.optim.Optimizer):
            opt = optimizer
        elif optimizer == "adam":
            opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        elif optimizer == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
        else:
            raise ValueError(f"optimizer must be 'adam', 'sgd' or a torch optimizer, got {optimizer!r}")
        loss_fn = loss_fn or _default_loss
        history: dict[str, list[float]] = {"train_loss": [], "train_accuracy": []}
        if val_data is not None:
            history["val_loss"], history["val_accuracy"] = [], []
        bar = progress_bar(range(epochs), desc=desc or "epochs", disable=not progress)
        for _ in bar:
            model.train()
            total, correct, loss_sum = 0, 0, 0.0
            for xb, yb in loader:
                opt.zero_grad()
                if compute_loss is not None:
                    loss = compute_loss(model, xb, yb)
                    out = None
                else:
                    out = model(xb)
                    loss = loss_fn(out, yb)
                loss.backward()
                opt.step()
                if after_step is not None:
                    after_step(model)
                n = len(yb)
                total += n
                loss_sum += float(loss.detach()) * n
                if out is not None and out.dim() == 2:
                    correct += int((out.detach().argmax(1) == yb).sum())
            history["train_loss"].append(loss_sum / total)
            if compute_loss is None:
                history["train_accuracy"].append(correct / total)
            else:
                history["train_accuracy"].append(evaluate(model, loader)["accuracy"])
            if val_data is not None:
                ev = evaluate(model, val_data, loss_fn=loss_fn)
                history["val_loss"].append(ev["loss"])
                history["val_accuracy"].append(ev["accuracy"])
                if progress:
                    bar.set_postfix(val_acc=f"{ev['accuracy']:.3f}")
    model.eval()
    return history


@torch.no_grad()
def evaluate(model: nn.Module, data, *, batch_size: int = 512, loss_fn: Callable | None = None) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` on ``data`` in eval mode (the mode is restored afterwards)."""
    loader = make_loader(data, batch_size=batch_size, shuffle=False)
    loss_fn = loss_fn or _default_loss
    was_training = model.training
    model.eval()
    total, correct, loss_sum = 0, 0, 0.0
    try:
        for xb, yb in loader:
            out = model(xb)
            loss_sum += float(loss_fn(out, yb)) * len(yb)
            correct += int((out.argmax(1) == yb).sum())
            total += len(yb)
    finally:
        model.train(was_training)
    return {"loss": loss_sum / total, "accuracy": correct / total}


@torch.no_grad()
def predict(model: nn.Module, X, *, batch_size: int = 512) -> np.ndarray:
    """Logits of ``model`` for ``X`` (eval mode) as a NumPy array."""
    Xt = as_tensors(X)
    was_training = model.training
    model.eval()
    try:
        outs = [model(Xt[i : i + batch_size]) for i in range(0, len(Xt), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(outs).numpy()
