"""Optimal Brain Damage: unstructured pruning of single weights (private; public in :mod:`courselib.pruning`).

The chapter *Optimal Brain Damage* (``book/pruning_obd.md``), after LeCun, Denker & Solla (1989):

- :func:`diagonal_hessian` -- the diagonal of the Hessian of the training loss (book Eq. ``obd-taylor``),
  exact or in its Gauss-Newton and empirical-Fisher approximations;
- :func:`obd_saliency` -- the saliency ``s_k = h_kk u_k^2 / 2`` (book Eq. ``obd-saliency``);
- :func:`magnitude_prune`, :func:`saliency_prune`, :func:`random_prune` -- remove the weights of lowest
  ``|w|`` (book Eq. ``obd-magnitude``), of lowest saliency, or at random, over all layers at once or layer by
  layer. :func:`torch.nn.utils.prune.global_unstructured` picks them and stores the masks, so
  ``prune.remove`` works and retraining keeps pruned weights at zero;
- :func:`iterative_prune` -- the prune-and-retrain loop (book section ``obd-procedure``);
- :func:`plot_saliency_vs_magnitude` -- the chapter's explorer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from numbers import Real

import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vjp, vmap
from torch.nn.utils import prune

from ._validation import Interval, Options, check_params

HESSIAN_METHODS = ("exact", "gauss-newton", "empirical-fisher")
#: ``amount``: the fraction of the weights to remove (a target sparsity).
AMOUNT = Interval(Real, 0, 1)


# --------------------------------------------------------------------------------------------------
# the weights pruning acts on
# --------------------------------------------------------------------------------------------------
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
        mname, _, attr = base.rpartition(".")
        try:
            module = model.get_submodule(mname)
        except AttributeError as err:
            raise ValueError(f"unknown parameter {name!r}: no module {mname!r} in the model") from err
        if not (hasattr(module, attr + "_orig") or isinstance(getattr(module, attr, None), nn.Parameter)):
            raise ValueError(f"unknown parameter {name!r}: module {mname!r} has no parameter {attr!r}")
        out.append((base, module, attr))
    return out


def _apply_global_masks(targets, scores: list[torch.Tensor], amount: float) -> None:
    """Prune ``targets`` to a sparsity of ``amount``, the lowest ``scores`` first.

    ``round(amount * total)`` weights end up removed, counting the ones removed earlier (they stay
    removed). :func:`torch.nn.utils.prune.global_unstructured` with ``L1Unstructured`` removes the weights
    of smallest ``|importance|`` among those still in; the importance given to it is each score's rank
    (1 for the lowest), so negative saliencies go first too, and ties go to the earlier weight (targets
    in order, row-major within a tensor).
    """
    for (_, module, attr), s in zip(targets, scores):
        w = _effective(module, attr)
        if s.shape != w.shape:
            raise ValueError(f"score for {attr!r} has shape {tuple(s.shape)}, expected {tuple(w.shape)}")
    flat = torch.cat([s.detach().reshape(-1).to(torch.float64) for s in scores])
    ranks = torch.empty_like(flat)
    ranks[torch.argsort(flat, stable=True)] = torch.arange(1, flat.numel() + 1, dtype=torch.float64)
    removed = sum(int((getattr(m, a + "_mask") == 0).sum()) for _, m, a in targets if hasattr(m, a + "_mask"))
    importance = {
        (m, a): r.view(s.shape).to(_effective(m, a).device)
        for (_, m, a), r, s in zip(targets, ranks.split([s.numel() for s in scores]), scores)
    }
    prune.global_unstructured(
        [(m, a) for _, m, a in targets],
        pruning_method=prune.L1Unstructured,
        importance_scores=importance,
        amount=max(round(amount * flat.numel()) - removed, 0),
    )


# --------------------------------------------------------------------------------------------------
# the Hessian diagonal and the saliency
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
    check_params(dict(method=method, loss_fn=loss_fn), {"method": Options(HESSIAN_METHODS), "loss_fn": Callable})
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
        mname, _, attr = _base_name(name).rpartition(".")
        u = _effective(model.get_submodule(mname), attr) if name.endswith("_orig") else p
        out[name] = (0.5 * h.to(p.dtype) * u.detach() ** 2).detach()
    return out


# --------------------------------------------------------------------------------------------------
# pruning by a score: magnitude, saliency, chance
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
        Ties go to the earlier weight (layers in order, row-major within a tensor).

    Returns
    -------
    torch.nn.Module
        The same ``model``.
    """
    targets = prunable_parameters(model, parameters)
    scores = [_effective(m, a).detach().abs() for _, m, a in targets]
    return _prune_with_scores(model, targets, scores, amount, scope)


def _prune_with_scores(model, targets, scores, amount, scope):
    check_params(dict(amount=amount, scope=scope), {"amount": AMOUNT, "scope": Options(("global", "layer"))})
    if scope == "global":
        _apply_global_masks(targets, scores, float(amount))
    else:
        for t, s in zip(targets, scores):
            _apply_global_masks([t], [s], float(amount))
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
        ``"_orig"`` suffix of an already pruned parameter or not. The lowest go first, negative ones
        (an exact Hessian diagonal can have them) before zero.
    amount : float in [0, 1]
        Target sparsity of the selected weights (see :func:`magnitude_prune`).
    parameters : iterable of str, optional
        Which parameters to prune (default: the weights of every Linear and Conv layer; each must
        have an entry in ``saliencies``).
    scope : {"global", "layer"}
        As in :func:`magnitude_prune`, ties too.

    Returns
    -------
    torch.nn.Module
        The same ``model``.
    """
    check_params(dict(saliencies=saliencies), {"saliencies": dict})
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
    check_params(dict(method=method), {"method": Options(("magnitude", "obd", "random"))})
    amounts = list(amounts)
    for amount in amounts:
        check_params(dict(amount=amount), {"amount": AMOUNT})
    amounts = [float(a) for a in amounts]
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
# explorer callback
# --------------------------------------------------------------------------------------------------
def plot_saliency_vs_magnitude(weights: torch.Tensor, saliency: torch.Tensor, amount: float = 0.5):
    """Scatter ``|w|`` against OBD saliency, marking what each criterion removes at ``amount``.

    Explorer callback of the OBD chapter; returns the matplotlib figure.
    """
    check_params(dict(amount=amount), {"amount": AMOUNT})
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
