"""Parameter pruning: Optimal Brain Damage and filter pruning.

Two families of pruning, as in the chapters *Optimal Brain Damage* (``book/pruning_obd.md``) and
*Pruning filters* (``book/pruning_filters.md``):

- **Unstructured** pruning of single weights, ranked by magnitude or by the Optimal Brain Damage
  saliency ``s_k = h_kk u_k^2 / 2`` of LeCun, Denker & Solla (1989) (book Eq. ``obd-saliency``).
  Masks go through :mod:`torch.nn.utils.prune` (``custom_from_mask``), so ``prune.remove`` works and
  retraining keeps pruned weights at zero.
- **Structured** pruning of whole convolution filters, ranked by the L1 norm of their weights
  (Li, Kadav, Durdanovic, Samet & Graf, ICLR 2017; book Eq. ``filters-l1``). The filter, its feature
  map, its BatchNorm entries and the matching input channels of the next layer are physically
  removed, which leaves a smaller *dense* network.

Plus the size and speed of dense versus CSR storage. The cost model both chapters use (parameter
counts, multiply-accumulates, latency, BatchNorm folding) lives in :mod:`courselib.measure`.

"Which layer comes next" (for :func:`remove_filters`) is read from the order of
``model.named_modules()``: this is the execution order for :class:`torch.nn.Sequential` models and
for :class:`courselib.models.CourseCNN`, but not for networks with branches (ResNets), where the
function raises a ``ValueError`` rather than guess.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vjp, vmap
from torch.nn.utils import prune

from .measure import count_macs, count_parameters
from .utils import time_call

__all__ = [
    "diagonal_hessian",
    "obd_saliency",
    "magnitude_prune",
    "saliency_prune",
    "random_prune",
    "iterative_prune",
    "sparsity",
    "prunable_parameters",
    "l1_filter_norms",
    "smallest_filters",
    "remove_filters",
    "prune_filters",
    "prune_layers",
    "STRATEGIES",
    "storage_bytes",
    "dense_vs_csr",
    "plot_saliency_vs_magnitude",
    "plot_filter_ranking",
]

HESSIAN_METHODS = ("exact", "gauss-newton", "empirical-fisher")

# Modules that may sit between a convolution and the next conv/linear layer without changing which
# channel is which (element-wise activations, pooling, dropout, flatten).
_CHANNEL_PRESERVING = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardtanh,
    nn.PReLU,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Dropout,
    nn.Dropout2d,
    nn.Flatten,
    nn.Identity,
)


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _check_amount(amount) -> float:
    if isinstance(amount, bool) or not isinstance(amount, (int, float, np.floating, np.integer)):
        raise TypeError(f"amount must be a float in [0, 1], got {type(amount).__name__}")
    amount = float(amount)
    if not (0.0 <= amount <= 1.0) or math.isnan(amount):
        raise ValueError(f"amount must be in [0, 1] (the fraction of weights to remove), got {amount}")
    return amount


def _iter_batches(data):
    """Yield ``(X, y)`` tensor batches from an ``(X, y)`` pair or a DataLoader-like iterable."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], (tuple, list)):
        X, y = data
        yield torch.as_tensor(X), torch.as_tensor(y)
        return
    if isinstance(data, torch.utils.data.DataLoader) or hasattr(data, "__iter__"):
        for batch in data:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise TypeError("every batch of the DataLoader must be an (X, y) pair")
            yield torch.as_tensor(batch[0]), torch.as_tensor(batch[1])
        return
    raise TypeError(f"data must be an (X, y) pair of tensors or a DataLoader, got {type(data).__name__}")


def _split_name(name: str) -> tuple[str, str]:
    if "." in name:
        mod, attr = name.rsplit(".", 1)
    else:
        mod, attr = "", name
    return mod, attr


def _base_name(name: str) -> str:
    """``"fc.weight_orig"`` -> ``"fc.weight"`` (the name of the pruned parameter)."""
    return name[: -len("_orig")] if name.endswith("_orig") else name


def _effective(module: nn.Module, attr: str) -> torch.Tensor:
    """The value a parameter takes in the forward pass: ``orig * mask`` when pruned."""
    if hasattr(module, attr + "_orig") and hasattr(module, attr + "_mask"):
        return getattr(module, attr + "_orig") * getattr(module, attr + "_mask")
    return getattr(module, attr)


def prunable_parameters(model: nn.Module, parameters: Iterable[str] | None = None) -> list[tuple[str, nn.Module, str]]:
    """The parameters pruning acts on, as ``(name, module, attribute)`` triples.

    Parameters
    ----------
    model : torch.nn.Module
    parameters : iterable of str, optional
        Names as in ``model.named_parameters()`` (``"net.0.weight"``; the ``"_orig"`` suffix of an
        already pruned parameter may be given or left out). Default: the ``weight`` of every
        :class:`~torch.nn.Linear` and ``Conv`` layer (biases and BatchNorm are not pruned).
    """
    if parameters is None:
        out = []
        for mname, module in model.named_modules():
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                out.append(((mname + "." if mname else "") + "weight", module, "weight"))
        if not out:
            raise ValueError("the model has no Linear or Conv layer to prune; pass `parameters` explicitly")
        return out
    if isinstance(parameters, str):
        raise TypeError("parameters must be an iterable of parameter names, not a single string")
    out = []
    for name in parameters:
        base = _base_name(name)
        mname, attr = _split_name(base)
        try:
            module = model.get_submodule(mname)
        except AttributeError as err:
            raise ValueError(f"unknown parameter {name!r}: no module {mname!r} in the model") from err
        if not (hasattr(module, attr + "_orig") or isinstance(getattr(module, attr, None), nn.Parameter)):
            raise ValueError(f"unknown parameter {name!r}: module {mname!r} has no parameter {attr!r}")
        out.append((base, module, attr))
    return out


def _apply_global_masks(targets, scores: list[torch.Tensor], amount: float) -> None:
    """Zero the ``round(amount * total)`` lowest-scoring entries over all ``targets`` (already pruned
    entries count as removed and stay removed), through ``prune.custom_from_mask``."""
    flat_scores, old_masks = [], []
    for (_, module, attr), s in zip(targets, scores):
        w = _effective(module, attr)
        if s.shape != w.shape:
            raise ValueError(f"score for {attr!r} has shape {tuple(s.shape)}, expected {tuple(w.shape)}")
        old = getattr(module, attr + "_mask", torch.ones_like(w)).detach().reshape(-1)
        old_masks.append(old)
        flat_scores.append(s.detach().reshape(-1).to(torch.float64))
    scores_all = torch.cat(flat_scores)
    old_all = torch.cat(old_masks)
    total = scores_all.numel()
    k = round(amount * total)
    # already-pruned entries rank first (they are removed whatever their score)
    scores_all = torch.where(old_all == 0, torch.full_like(scores_all, -math.inf), scores_all)
    k = max(k, int((old_all == 0).sum()))
    mask_all = torch.ones(total, dtype=torch.float64)
    if k > 0:
        idx = torch.topk(scores_all, k=k, largest=False).indices
        mask_all[idx] = 0.0
    pos = 0
    for (_, module, attr), old in zip(targets, old_masks):
        n = old.numel()
        w = _effective(module, attr)
        mask = mask_all[pos : pos + n].reshape(w.shape).to(dtype=w.dtype, device=w.device)
        prune.custom_from_mask(module, attr, mask=mask)
        pos += n


# --------------------------------------------------------------------------------------------------
# Optimal Brain Damage
# --------------------------------------------------------------------------------------------------


def _named_trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _exact_diag(model, loss_fn, X, y, params, chunk: int = 256) -> dict[str, torch.Tensor]:
    """Exact Hessian diagonal by Hessian-vector products with unit vectors (double backward)."""
    names = list(params)
    loss = loss_fn(model(X), y)
    grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True, allow_unused=True)
    out = {}
    for name, g in zip(names, grads):
        p = params[name]
        n = p.numel()
        if g is None or not g.requires_grad:
            out[name] = torch.zeros_like(p)
            continue
        gflat = g.reshape(-1)
        diag = torch.empty(n, dtype=p.dtype, device=p.device)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            idx = torch.arange(start, stop, device=p.device)
            basis = torch.zeros(stop - start, n, dtype=p.dtype, device=p.device)
            basis[torch.arange(stop - start), idx] = 1.0
            try:
                rows = torch.autograd.grad(
                    gflat, p, grad_outputs=basis, retain_graph=True, is_grads_batched=True, allow_unused=True
                )[0]
                rows = rows.reshape(stop - start, n) if rows is not None else torch.zeros_like(basis)
                diag[start:stop] = rows[torch.arange(stop - start), idx]
            except RuntimeError:  # an op without a batching rule: one unit vector at a time
                for k in range(start, stop):
                    r = torch.autograd.grad(gflat[k], p, retain_graph=True, allow_unused=True)[0]
                    diag[k] = 0.0 if r is None else r.reshape(-1)[k]
        out[name] = diag.reshape(p.shape).detach()
    return out


def _check_per_sample_mode(model: nn.Module, method: str) -> None:
    for mname, m in model.named_modules():
        if m.training and isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout, nn.Dropout2d)):
            raise ValueError(
                f"method={method!r} evaluates the network one sample at a time; module "
                f"{mname!r} ({type(m).__name__}) is in training mode: call model.eval() first"
            )


def _per_sample_diag(model, loss_fn, X, y, params, method: str, chunk: int = 64) -> dict[str, torch.Tensor]:
    """Sum over the samples of diag(J_i^T H_i J_i) (Gauss-Newton) or of g_i**2 (empirical Fisher)."""
    names = list(params)
    detached = {n: params[n].detach() for n in names}
    buffers = {n: b for n, b in model.named_buffers()}
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in detached}

    def f(pdict, x):  # network output for one sample
        return functional_call(model, ({**pdict, **frozen, **buffers}), (x.unsqueeze(0),)).squeeze(0)

    def loss_one(out, t):
        return loss_fn(out.unsqueeze(0), t.unsqueeze(0))

    acc = {n: torch.zeros_like(detached[n]) for n in names}
    for start in range(0, X.shape[0], chunk):
        xb, yb = X[start : start + chunk], y[start : start + chunk]
        if method == "empirical-fisher":

            def g_one(x, t):
                return grad(lambda pd: loss_one(f(pd, x), t))(detached)

            gs = vmap(g_one)(xb, yb)
            for n in names:
                acc[n] += (gs[n] ** 2).sum(0)
            continue
        with torch.no_grad():
            outs = vmap(lambda x: f(detached, x))(xb)  # (b, C)
            H_out = vmap(jacrev(jacrev(loss_one)))(outs, yb)  # (b, C, C)
            H_out = 0.5 * (H_out + H_out.transpose(1, 2))
            evals, evecs = torch.linalg.eigh(H_out)
            A = evecs * evals.clamp_min(0).sqrt().unsqueeze(1)  # H = A A^T, (b, C, C)

        def jta_one(x, a):  # columns of J^T A for one sample: dict of (C, *shape)
            _, pullback = vjp(lambda pd: f(pd, x), detached)
            return vmap(pullback)(a.transpose(0, 1))[0]

        cols = vmap(jta_one)(xb, A)
        for n in names:
            acc[n] += (cols[n] ** 2).sum(dim=(0, 1))
    return acc


def diagonal_hessian(
    model: nn.Module, loss_fn: Callable, data, method: str = "exact", *, parameters: Iterable[str] | None = None
) -> dict[str, torch.Tensor]:
    r"""Diagonal of the Hessian of the mean training loss with respect to every parameter.

    The loss is :math:`E = \frac1N \sum_i \ell(f(x_i; u), y_i)` over all samples of ``data``;
    the function returns :math:`h_{kk} = \partial^2 E / \partial u_k^2` (book Eq. ``obd-taylor``),
    the quantity Optimal Brain Damage needs (LeCun, Denker & Solla, 1989).

    Parameters
    ----------
    model : torch.nn.Module
        The network, used in its current mode (call ``model.eval()`` first when it has BatchNorm or
        dropout; the per-sample methods require it).
    loss_fn : callable
        ``loss_fn(outputs, targets) -> scalar``, the **mean** over the batch (as
        :func:`torch.nn.functional.cross_entropy` with its default reduction).
    data : (X, y) pair of tensors, or a DataLoader of (X, y) batches
        With a DataLoader the batches are combined with weights ``n_batch / N`` so that the result is
        the Hessian diagonal of the mean loss over the whole data set.
    method : {"exact", "gauss-newton", "empirical-fisher"}
        ``"exact"``: Hessian-vector products with unit vectors (double backward), one per parameter
        coordinate; exact but costs one backward pass per coordinate, so for small networks.
        ``"gauss-newton"``: :math:`\frac1N\sum_i \mathrm{diag}(J_i^\top H_i J_i)` with :math:`J_i` the
        Jacobian of the outputs and :math:`H_i` the Hessian of the loss with respect to the outputs
        (book Eq. ``obd-gauss-newton``; for softmax cross-entropy :math:`H_i = \mathrm{diag}(p_i) -
        p_i p_i^\top` and this is the Fisher information). It drops the term with the second
        derivatives of the network, as LeCun et al. do (their Eq. 7), and is never negative.
        ``"empirical-fisher"``: :math:`\frac1N\sum_i g_i^2` with :math:`g_i` the per-sample gradient.
    parameters : iterable of str, optional
        Restrict to these names (default: every parameter that requires a gradient).

    Returns
    -------
    dict
        ``{name from model.named_parameters(): tensor of that parameter's shape and dtype}``.
    """
    if method not in HESSIAN_METHODS:
        raise ValueError(f"method must be one of {HESSIAN_METHODS}, got {method!r}")
    if not callable(loss_fn):
        raise TypeError("loss_fn must be a callable loss_fn(outputs, targets) -> scalar")
    params = _named_trainable(model)
    if parameters is not None:
        wanted = list(parameters)
        missing = [n for n in wanted if n not in params]
        if missing:
            raise ValueError(f"unknown parameter name(s) {missing}; known: {list(params)}")
        params = {n: params[n] for n in wanted}
    if not params:
        raise ValueError("the model has no parameter that requires a gradient")
    if method != "exact":
        _check_per_sample_mode(model, method)

    batches = list(_iter_batches(data))
    total = sum(int(X.shape[0]) for X, _ in batches)
    if total == 0:
        raise ValueError("data holds no samples")
    result = {n: torch.zeros_like(p, memory_format=torch.contiguous_format).detach() for n, p in params.items()}
    for X, y in batches:
        nb = int(X.shape[0])
        if nb == 0:
            continue
        if method == "exact":
            part = _exact_diag(model, loss_fn, X, y, params)
            for n in result:
                result[n] += part[n] * (nb / total)
        else:
            part = _per_sample_diag(model, loss_fn, X, y, params, method)
            for n in result:
                result[n] += part[n] / total
    return result


def obd_saliency(
    model: nn.Module,
    loss_fn: Callable | None = None,
    data=None,
    *,
    method: str = "gauss-newton",
    hessian: dict[str, torch.Tensor] | None = None,
    parameters: Iterable[str] | None = None,
) -> dict[str, torch.Tensor]:
    r"""Optimal Brain Damage saliencies :math:`s_k = h_{kk} u_k^2 / 2` (book Eq. ``obd-saliency``).

    LeCun, Denker & Solla (1989), Eq. 8: the increase of the training loss predicted by the
    diagonal second-order Taylor expansion when parameter :math:`u_k` is set to zero.

    Parameters
    ----------
    model : torch.nn.Module
    loss_fn, data
        As in :func:`diagonal_hessian`; not needed when ``hessian`` is given.
    method : str, default "gauss-newton"
        Passed to :func:`diagonal_hessian`. The paper uses the Gauss-Newton (Levenberg-Marquardt)
        approximation, hence the default.
    hessian : dict, optional
        A precomputed Hessian diagonal ``{name: tensor}``; its keys choose the parameters.
    parameters : iterable of str, optional
        Restrict to these names.

    Returns
    -------
    dict
        ``{name: saliency tensor}`` with the names and shapes of ``model.named_parameters()``.
        For a pruned parameter (``"...weight_orig"``) :math:`u_k` is its effective value
        ``orig * mask``, so removed weights have saliency 0.
    """
    if hessian is None:
        if loss_fn is None or data is None:
            raise ValueError("give either hessian=... or both loss_fn and data")
        hessian = diagonal_hessian(model, loss_fn, data, method=method, parameters=parameters)
    elif parameters is not None:
        hessian = {n: hessian[n] for n in parameters}
    named = dict(model.named_parameters())
    out = {}
    for name, h in hessian.items():
        if name not in named:
            raise ValueError(f"hessian has key {name!r}, which is not a parameter of the model")
        p = named[name]
        if tuple(h.shape) != tuple(p.shape):
            raise ValueError(f"hessian[{name!r}] has shape {tuple(h.shape)}, parameter has {tuple(p.shape)}")
        mname, attr = _split_name(_base_name(name))
        u = _effective(model.get_submodule(mname), attr) if name.endswith("_orig") else p
        out[name] = (0.5 * h.to(p.dtype) * u.detach() ** 2).detach()
    return out


# --------------------------------------------------------------------------------------------------
# unstructured pruning through torch.nn.utils.prune
# --------------------------------------------------------------------------------------------------


def magnitude_prune(
    model: nn.Module, amount: float, *, parameters: Iterable[str] | None = None, scope: str = "global"
) -> nn.Module:
    """Remove the weights of smallest absolute value (book Eq. ``obd-magnitude``).

    Parameters
    ----------
    model : torch.nn.Module
        Modified in place: each pruned parameter ``w`` becomes ``w_orig`` plus a buffer ``w_mask``
        (:func:`torch.nn.utils.prune.custom_from_mask`), so ``prune.remove(module, "weight")`` makes
        the pruning permanent.
    amount : float in [0, 1]
        The **target sparsity**: after the call this fraction of the selected weights is zero by
        mask. Weights pruned earlier count towards it and stay pruned (unlike
        ``prune.l1_unstructured`` called twice, where the amount applies to the remaining weights).
    parameters : iterable of str, optional
        See :func:`prunable_parameters` (default: the weights of every Linear and Conv layer).
    scope : {"global", "layer"}
        ``"global"`` ranks all selected weights together (as ``prune.global_unstructured``);
        ``"layer"`` prunes the same fraction of every tensor (as ``prune.l1_unstructured``).

    Returns
    -------
    torch.nn.Module
        The same ``model``.
    """
    targets = prunable_parameters(model, parameters)
    scores = [_effective(m, a).detach().abs() for _, m, a in targets]
    return _prune_with_scores(model, targets, scores, amount, scope)


def _prune_with_scores(model, targets, scores, amount, scope):
    amount = _check_amount(amount)
    if scope == "global":
        _apply_global_masks(targets, scores, amount)
    elif scope == "layer":
        for t, s in zip(targets, scores):
            _apply_global_masks([t], [s], amount)
    else:
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    return model


def saliency_prune(
    model: nn.Module,
    saliencies: dict[str, torch.Tensor],
    amount: float,
    *,
    parameters: Iterable[str] | None = None,
    scope: str = "global",
) -> nn.Module:
    """Remove the weights of lowest saliency (OBD step 4, LeCun et al. 1989).

    Parameters
    ----------
    model : torch.nn.Module
        Modified in place, through :func:`torch.nn.utils.prune.custom_from_mask`.
    saliencies : dict
        ``{parameter name: tensor of its shape}``, e.g. from :func:`obd_saliency`; keys may carry the
        ``"_orig"`` suffix of an already pruned parameter or not.
    amount : float in [0, 1]
        Target sparsity of the selected weights (see :func:`magnitude_prune`).
    parameters : iterable of str, optional
        Which parameters to prune (default: the weights of every Linear and Conv layer; each must
        have an entry in ``saliencies``).
    scope : {"global", "layer"}

    Returns
    -------
    torch.nn.Module
        The same ``model``.
    """
    if not isinstance(saliencies, dict):
        raise TypeError(f"saliencies must be a dict {{name: tensor}}, got {type(saliencies).__name__}")
    by_base = {_base_name(k): v for k, v in saliencies.items()}
    targets = prunable_parameters(model, parameters)
    missing = [n for n, _, _ in targets if n not in by_base]
    if missing:
        raise ValueError(f"saliencies has no entry for {missing}")
    scores = [torch.as_tensor(by_base[n]) for n, _, _ in targets]
    return _prune_with_scores(model, targets, scores, amount, scope)


def random_prune(
    model: nn.Module, amount: float, *, seed: int = 0, parameters: Iterable[str] | None = None, scope: str = "global"
) -> nn.Module:
    """Remove a random ``amount`` of the weights (the baseline of the OBD chapter); seeded."""
    targets = prunable_parameters(model, parameters)
    gen = torch.Generator().manual_seed(seed)
    scores = [torch.rand(_effective(m, a).shape, generator=gen) for _, m, a in targets]
    return _prune_with_scores(model, targets, scores, amount, scope)


def sparsity(model: nn.Module, *, parameters: Iterable[str] | None = None) -> float:
    """Share of the selected weights that are zero in effect (masks included).

    Parameters
    ----------
    model : torch.nn.Module
    parameters : iterable of str, optional
        See :func:`prunable_parameters` (default: the weights of every Linear and Conv layer).

    Returns
    -------
    float
        ``#zeros / #weights`` of ``orig * mask`` (or of the plain weight when unpruned).
    """
    targets = prunable_parameters(model, parameters)
    zeros = total = 0
    with torch.no_grad():
        for _, m, a in targets:
            w = _effective(m, a)
            zeros += int((w == 0).sum())
            total += w.numel()
    return zeros / total


def iterative_prune(
    model: nn.Module,
    amounts: Sequence[float],
    *,
    method: str = "magnitude",
    retrain: Callable[[nn.Module], object] | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    loss_fn: Callable | None = None,
    data=None,
    hessian_method: str = "gauss-newton",
    seed: int = 0,
    parameters: Iterable[str] | None = None,
) -> list[dict]:
    """The prune-and-retrain loop (OBD steps 2-5, LeCun et al. 1989; book section ``obd-procedure``).

    For each target sparsity in ``amounts`` (non-decreasing): rank the remaining weights
    (``method``), prune up to that sparsity, then call ``retrain(model)`` (if given) and
    ``evaluate(model)`` (if given).

    Parameters
    ----------
    model : torch.nn.Module
        Pruned in place.
    amounts : sequence of float
        Target sparsities, non-decreasing, each in [0, 1].
    method : {"magnitude", "obd", "random"}
    retrain : callable, optional
        ``retrain(model)`` fine-tunes the pruned model (masks keep pruned weights at zero).
    evaluate : callable, optional
        ``evaluate(model) -> float`` (e.g. test accuracy), recorded after retraining.
    loss_fn, data, hessian_method
        For ``method="obd"``: passed to :func:`obd_saliency`.
    seed : int
        For ``method="random"`` (step ``i`` uses ``seed + i``).
    parameters : iterable of str, optional
        See :func:`prunable_parameters`.

    Returns
    -------
    list of dict
        One ``{"amount", "sparsity", "score"}`` per step (``score`` is None without ``evaluate``).
    """
    if method not in ("magnitude", "obd", "random"):
        raise ValueError(f"method must be 'magnitude', 'obd' or 'random', got {method!r}")
    amounts = [_check_amount(a) for a in amounts]
    if any(b < a for a, b in zip(amounts, amounts[1:])):
        raise ValueError(f"amounts must be non-decreasing, got {amounts}")
    if method == "obd" and (loss_fn is None or data is None):
        raise ValueError("method='obd' needs loss_fn and data to compute the saliencies")
    history = []
    for i, amount in enumerate(amounts):
        if method == "magnitude":
            magnitude_prune(model, amount, parameters=parameters)
        elif method == "random":
            random_prune(model, amount, seed=seed + i, parameters=parameters)
        else:
            names = None
            if parameters is not None:
                names = [n for n, _, _ in prunable_parameters(model, parameters)]
            sal = _obd_for_targets(model, loss_fn, data, hessian_method, names)
            saliency_prune(model, sal, amount, parameters=parameters)
        if retrain is not None:
            retrain(model)
        score = float(evaluate(model)) if evaluate is not None else None
        history.append({"amount": amount, "sparsity": sparsity(model, parameters=parameters), "score": score})
    return history


def _obd_for_targets(model, loss_fn, data, hessian_method, names):
    named = dict(model.named_parameters())
    if names is None:
        names = [n for n, _, _ in prunable_parameters(model)]
    keys = [n + "_orig" if n + "_orig" in named else n for n in names]
    return obd_saliency(model, loss_fn, data, method=hessian_method, parameters=keys)


# --------------------------------------------------------------------------------------------------
# filter pruning (Li et al., 2017)
# --------------------------------------------------------------------------------------------------


def l1_filter_norms(conv: nn.Conv2d) -> torch.Tensor:
    r"""L1 norm of every filter, :math:`s_j = \sum |\mathcal F_{j}|` (Li et al. 2017, Sec. 3.1;
    book Eq. ``filters-l1``).

    Parameters
    ----------
    conv : torch.nn.Conv2d

    Returns
    -------
    torch.Tensor
        Shape ``(out_channels,)``.
    """
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"expected a torch.nn.Conv2d, got {type(conv).__name__}")
    w = _effective(conv, "weight").detach()
    return w.abs().sum(dim=(1, 2, 3))


def smallest_filters(conv: nn.Conv2d, amount: float) -> list[int]:
    """Indices of the ``round(amount * out_channels)`` filters of smallest L1 norm, ascending norm."""
    amount = _check_amount(amount)
    norms = l1_filter_norms(conv)
    k = round(amount * norms.numel())
    return torch.argsort(norms, stable=True)[:k].tolist()


def _find_layers(model: nn.Module, layer_name: str):
    """The conv, its BatchNorm (or None) and the next Conv2d/Linear, from ``named_modules()`` order."""
    leaves = [(n, m) for n, m in model.named_modules() if len(list(m.children())) == 0]
    names = [n for n, _ in leaves]
    if layer_name not in dict(model.named_modules()):
        raise ValueError(
            f"unknown layer {layer_name!r}; convolutions in the model: "
            f"{[n for n, m in leaves if isinstance(m, nn.Conv2d)]}"
        )
    conv = model.get_submodule(layer_name)
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"layer {layer_name!r} is a {type(conv).__name__}, expected a Conv2d")
    if conv.groups != 1:
        raise ValueError(f"layer {layer_name!r} is a grouped convolution (groups={conv.groups}); not supported")
    bn = bn_name = nxt = nxt_name = None
    for name, m in leaves[names.index(layer_name) + 1 :]:
        if isinstance(m, nn.BatchNorm2d) and bn is None and nxt is None:
            if m.num_features != conv.out_channels:
                raise ValueError(
                    f"BatchNorm {name!r} has {m.num_features} features but {layer_name!r} "
                    f"has {conv.out_channels} filters; cannot tell which layer follows"
                )
            bn, bn_name = m, name
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            nxt, nxt_name = m, name
            break
        elif isinstance(m, _CHANNEL_PRESERVING):
            continue
        else:
            raise ValueError(
                f"cannot determine the layer that consumes {layer_name!r}: module {name!r} "
                f"({type(m).__name__}) follows it, and only activations, pooling, dropout, "
                "flatten and one BatchNorm2d may sit between a conv and the next conv/linear"
            )
    if nxt is None:
        raise ValueError(
            f"no Conv2d or Linear layer follows {layer_name!r} in named_modules() order; "
            "remove_filters needs the next layer to drop its input channels"
        )
    if isinstance(nxt, nn.Conv2d):
        if nxt.groups != 1 or nxt.in_channels != conv.out_channels:
            raise ValueError(
                f"next layer {nxt_name!r} takes {nxt.in_channels} channels (groups={nxt.groups}) "
                f"but {layer_name!r} gives {conv.out_channels}; the model is not a plain chain"
            )
    elif nxt.in_features % conv.out_channels != 0:
        raise ValueError(
            f"next layer {nxt_name!r} has {nxt.in_features} inputs, not a multiple of the "
            f"{conv.out_channels} channels of {layer_name!r}"
        )
    return conv, bn, bn_name, nxt, nxt_name


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, child = _split_name(name)
    setattr(model.get_submodule(parent_name), child, new)


def remove_filters(model: nn.Module, layer_name: str, indices: Iterable[int]) -> nn.Module:
    """Physically remove filters of a convolution (Li et al. 2017, Sec. 3.1 and Fig. 1).

    Removing filter :math:`j` of layer :math:`i` removes output channel :math:`j` (its weights and
    bias), entry :math:`j` of the following ``BatchNorm2d`` (weight, bias, running mean and
    variance), and input channel :math:`j` of the next layer: for a ``Conv2d`` the slice
    ``weight[:, j]``; for a ``Linear`` after a flatten, the block of ``in_features / C`` consecutive
    input columns that channel :math:`j` occupies in NCHW order. The result is a smaller dense
    network (book section ``filters-surgery``).

    The "next layer" is the first ``Conv2d``/``Linear`` after ``layer_name`` in
    ``model.named_modules()`` order, with only activations, pooling, dropout, flatten and one
    BatchNorm2d in between. This is the execution order for :class:`torch.nn.Sequential` and
    :class:`courselib.models.CourseCNN`; for any other layout where it cannot be determined (another
    module type in between, channel counts that do not match) a ``ValueError`` is raised.

    Parameters
    ----------
    model : torch.nn.Module
        Modified in place (modules are replaced by smaller ones).
    layer_name : str
        Name of a ``Conv2d`` as in ``model.named_modules()``.
    indices : iterable of int
        Filters to remove (distinct, in ``[0, out_channels)``); at least one filter must remain.

    Returns
    -------
    torch.nn.Module
        The same ``model``.
    """
    conv, bn, bn_name, nxt, nxt_name = _find_layers(model, layer_name)
    if hasattr(conv, "weight_orig") or hasattr(nxt, "weight_orig"):
        raise ValueError("remove_filters needs plain weights: call torch.nn.utils.prune.remove(...) first")
    C = conv.out_channels
    idx = [int(i) for i in (indices.tolist() if isinstance(indices, (torch.Tensor, np.ndarray)) else indices)]
    if len(set(idx)) != len(idx):
        raise ValueError(f"indices must be distinct, got {sorted(idx)}")
    bad = [i for i in idx if not 0 <= i < C]
    if bad:
        raise ValueError(f"filter indices {bad} out of range for {layer_name!r} with {C} filters")
    if len(idx) >= C:
        raise ValueError(f"cannot remove all {C} filters of {layer_name!r}: at least one must remain")
    if not idx:
        return model
    keep = torch.tensor([j for j in range(C) if j not in set(idx)], dtype=torch.long)
    w = conv.weight
    with torch.no_grad():
        new_conv = nn.Conv2d(
            conv.in_channels,
            len(keep),
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device=w.device,
            dtype=w.dtype,
        )
        new_conv.weight.copy_(w[keep])
        if conv.bias is not None:
            new_conv.bias.copy_(conv.bias[keep])
        new_conv.train(conv.training)
        _replace(model, layer_name, new_conv)

        if bn is not None:
            new_bn = nn.BatchNorm2d(
                len(keep),
                eps=bn.eps,
                momentum=bn.momentum,
                affine=bn.affine,
                track_running_stats=bn.track_running_stats,
                device=w.device,
                dtype=bn.running_mean.dtype if bn.running_mean is not None else w.dtype,
            )
            if bn.affine:
                new_bn.weight.copy_(bn.weight[keep])
                new_bn.bias.copy_(bn.bias[keep])
            if bn.track_running_stats:
                new_bn.running_mean.copy_(bn.running_mean[keep])
                new_bn.running_var.copy_(bn.running_var[keep])
                new_bn.num_batches_tracked.copy_(bn.num_batches_tracked)
            new_bn.train(bn.training)
            _replace(model, bn_name, new_bn)

        nw = nxt.weight
        if isinstance(nxt, nn.Conv2d):
            new_next = nn.Conv2d(
                len(keep),
                nxt.out_channels,
                nxt.kernel_size,
                stride=nxt.stride,
                padding=nxt.padding,
                dilation=nxt.dilation,
                bias=nxt.bias is not None,
                padding_mode=nxt.padding_mode,
                device=nw.device,
                dtype=nw.dtype,
            )
            new_next.weight.copy_(nw[:, keep])
        else:
            block = nxt.in_features // C
            cols = (keep.unsqueeze(1) * block + torch.arange(block).unsqueeze(0)).reshape(-1)
            new_next = nn.Linear(
                len(cols), nxt.out_features, bias=nxt.bias is not None, device=nw.device, dtype=nw.dtype
            )
            new_next.weight.copy_(nw[:, cols])
        if nxt.bias is not None:
            new_next.bias.copy_(nxt.bias)
        new_next.train(nxt.training)
        _replace(model, nxt_name, new_next)
    return model


def prune_filters(model: nn.Module, layer_name: str, amount: float) -> list[int]:
    """Remove the ``round(amount * out_channels)`` filters of smallest L1 norm from ``layer_name``.

    Li et al. (2017), Sec. 3.1, steps 1-4; returns the removed indices (original numbering).
    """
    conv = dict(model.named_modules()).get(layer_name)
    if conv is None:
        raise ValueError(f"unknown layer {layer_name!r}")
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"layer {layer_name!r} is a {type(conv).__name__}, expected a Conv2d")
    idx = smallest_filters(conv, amount)
    remove_filters(model, layer_name, idx)
    return idx


#: The two multi-layer strategies of Li et al. (2017), Sec. 3.3, accepted by :func:`prune_layers`.
STRATEGIES = ("independent", "greedy")


def prune_layers(model: nn.Module, amounts: dict[str, float], strategy: str = "greedy") -> dict[str, list[int]]:
    """Prune the filters of several convolutions in one pass (Li et al. 2017, Sec. 3.3 and Fig. 3).

    Layers are pruned in the order of ``amounts``, each losing its ``round(amount * out_channels)``
    filters of smallest L1 norm (book Eq. ``filters-l1``); the two strategies of the paper differ only
    in which weights that norm sums over (book section ``filters-multi-layer``):

    - ``"independent"``: every layer's filters are ranked on the **original** weights, as if no other
      layer were pruned; the kernels of layer ``l + 1`` that read feature maps removed from layer ``l``
      still count in its filters' sums.
    - ``"greedy"``: layer ``l + 1`` is ranked **after** layer ``l``'s filters are removed, so the kernels
      of the already removed feature maps no longer count.

    No retraining is done here: this is the "prune once" step of the paper's Sec. 3.5; retrain the
    result with :func:`courselib.training.fit`, or call this once per layer with retraining in
    between for the iterative schedule.

    Parameters
    ----------
    model : torch.nn.Module
        Modified in place (as :func:`remove_filters`).
    amounts : dict of str to float
        Layer name -> fraction of its filters to remove, in the order to prune them.
    strategy : {"independent", "greedy"}

    Returns
    -------
    dict of str to list of int
        Layer name -> removed filter indices, in that layer's original numbering, ascending norm.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    modules = dict(model.named_modules())
    for name in amounts:
        if not isinstance(modules.get(name), nn.Conv2d):
            raise ValueError(f"layer {name!r} is not a Conv2d of the model")
    if strategy == "independent":
        # rank everything first, on the untouched weights; removing a layer's filters renumbers only
        # the next layer's *input* channels, so each layer's output indices stay valid
        chosen = {name: smallest_filters(modules[name], f) for name, f in amounts.items()}
        for name, idx in chosen.items():
            if idx:
                remove_filters(model, name, idx)
        return chosen
    chosen = {}
    for name, f in amounts.items():
        conv = dict(model.named_modules())[name]  # the current module, after earlier surgery
        chosen[name] = smallest_filters(conv, f)
        if chosen[name]:
            remove_filters(model, name, chosen[name])
    return chosen


# --------------------------------------------------------------------------------------------------
# storage: dense versus CSR
# --------------------------------------------------------------------------------------------------


def storage_bytes(weight, fmt: str = "dense", *, value_bytes: int = 4, index_bytes: int = 4) -> int:
    """Bytes to store a 2-D weight matrix densely or in CSR (book Eq. ``obd-csr-bytes``).

    Dense: ``rows * cols * value_bytes``. CSR: ``nnz * (value_bytes + index_bytes)`` (values and
    column indices) ``+ (rows + 1) * index_bytes`` (row pointers).
    """
    w = torch.as_tensor(weight)
    if w.dim() != 2:
        raise ValueError(f"weight must be 2-D, got shape {tuple(w.shape)}")
    rows, cols = w.shape
    if fmt == "dense":
        return rows * cols * value_bytes
    if fmt == "csr":
        nnz = int((w != 0).sum())
        return nnz * (value_bytes + index_bytes) + (rows + 1) * index_bytes
    raise ValueError(f"fmt must be 'dense' or 'csr', got {fmt!r}")


def dense_vs_csr(weight: torch.Tensor, x: torch.Tensor, *, repeats: int = 20, num_threads: int = 1) -> dict:
    """Size and median time of ``x @ weight.T`` with the weight dense versus in CSR (torch.sparse).

    Returns ``{"dense_bytes", "csr_bytes", "dense_s", "csr_s", "density"}`` (torch threads fixed
    to ``num_threads`` while timing). Used in the section "Does this really save space/time?".
    """
    w = torch.as_tensor(weight)
    if w.dim() != 2 or x.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"need weight (out, in) and x (batch, in); got {tuple(w.shape)} and {tuple(x.shape)}")
    with warnings.catch_warnings():  # "sparse CSR support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        w_csr = w.to_sparse_csr()
    xt = x.T.contiguous()
    old = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        with torch.inference_mode():
            dense_s = time_call(lambda: w @ xt, repeats=repeats)
            csr_s = time_call(lambda: w_csr @ xt, repeats=repeats)
    finally:
        torch.set_num_threads(old)
    return {
        "dense_bytes": storage_bytes(w, "dense", value_bytes=w.element_size()),
        "csr_bytes": storage_bytes(
            w, "csr", value_bytes=w.element_size(), index_bytes=w_csr.col_indices().element_size()
        ),
        "dense_s": dense_s,
        "csr_s": csr_s,
        "density": float((w != 0).float().mean()),
    }


# --------------------------------------------------------------------------------------------------
# explorer callbacks
# --------------------------------------------------------------------------------------------------


def plot_saliency_vs_magnitude(weights: torch.Tensor, saliency: torch.Tensor, amount: float = 0.5):
    """Scatter ``|w|`` against OBD saliency, marking what each criterion removes at ``amount``.

    Explorer callback of the OBD chapter; returns the matplotlib figure.
    """
    amount = _check_amount(amount)
    w = torch.as_tensor(weights).detach().reshape(-1).double()
    s = torch.as_tensor(saliency).detach().reshape(-1).double()
    if w.shape != s.shape:
        raise ValueError("weights and saliency must have the same number of entries")
    k = round(amount * w.numel())
    by_mag = torch.zeros(w.numel(), dtype=torch.bool)
    by_obd = torch.zeros(w.numel(), dtype=torch.bool)
    if k:
        by_mag[torch.topk(w.abs(), k, largest=False).indices] = True
        by_obd[torch.topk(s, k, largest=False).indices] = True
    fig, ax = plt.subplots(figsize=(6, 4))
    groups = [
        (~by_mag & ~by_obd, "kept by both", "0.7"),
        (by_mag & by_obd, "removed by both", "k"),
        (by_mag & ~by_obd, "removed by magnitude only", "tab:blue"),
        (~by_mag & by_obd, "removed by OBD only", "tab:red"),
    ]
    floor = max(float(s[s > 0].min()) if (s > 0).any() else 1e-12, 1e-16)
    for sel, label, color in groups:
        ax.scatter(w.abs()[sel].numpy(), s[sel].clamp_min(floor).numpy(), s=4, c=color, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("|w|")
    ax.set_ylabel("OBD saliency $h_{kk} u_k^2 / 2$")
    agree = int((by_mag & by_obd).sum())
    ax.set_title(f"remove {amount:.0%}: criteria agree on {agree} of {k} weights")
    ax.legend(loc="lower right", fontsize=8, markerscale=3)
    fig.tight_layout()
    return fig


def plot_filter_ranking(model: nn.Module, layer_name: str, amount: float = 0.5, input_shape=(1, 1, 28, 28)):
    """Bar chart of a layer's filter L1 norms (sorted), the ``amount`` smallest marked for removal,
    with parameters and MACs before/after in the title. Explorer callback of the filter chapter."""
    conv = dict(model.named_modules()).get(layer_name)
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"{layer_name!r} is not a Conv2d of the model")
    norms = l1_filter_norms(conv)
    removed = set(smallest_filters(conv, amount))
    order = torch.argsort(norms, descending=True).tolist()
    small = copy.deepcopy(model)
    if removed and len(removed) < conv.out_channels:
        remove_filters(small, layer_name, sorted(removed))
    fig, ax = plt.subplots(figsize=(6, 3.2))
    colors = ["tab:red" if j in removed else "tab:blue" for j in order]
    ax.bar(range(len(order)), norms[order].numpy(), color=colors)
    ax.set_xlabel(f"filters of {layer_name}, sorted by L1 norm")
    ax.set_ylabel("sum |weights|")
    m0, m1 = count_macs(model, input_shape), count_macs(small, input_shape)
    p0, p1 = count_parameters(model), count_parameters(small)
    ax.set_title(f"remove {len(removed)} (red): params {p0}->{p1}, MACs {m0 / 1e6:.2f}M->{m1 / 1e6:.2f}M", fontsize=9)
    fig.tight_layout()
    return fig
