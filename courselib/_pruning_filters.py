"""Pruning filters: structured pruning of whole convolution filters (private; public in :mod:`courselib.pruning`).

The chapter *Pruning filters* (``book/pruning_filters.md``), after Li, Kadav, Durdanovic, Samet & Graf
(ICLR 2017):

- :func:`l1_filter_norms`, :func:`smallest_filters` -- rank a layer's filters by the L1 norm of their
  weights (book Eq. ``filters-l1``);
- :func:`remove_filters` -- the surgery: the filter, its feature map, its BatchNorm entries and the matching
  input channels of the next layer are physically removed, which leaves a smaller *dense* network (book
  section ``filters-surgery``);
- :func:`prune_filters`, :func:`prune_layers` -- one layer, or several at once with the paper's two
  strategies (book section ``filters-multi-layer``);
- :func:`plot_filter_ranking` -- the chapter's explorer.

"Which layer comes next" (for :func:`remove_filters`) is read from the order of ``model.named_modules()``:
this is the execution order for :class:`torch.nn.Sequential` models and for
:class:`courselib.models.CourseCNN`, but not for networks with branches (ResNets), where the function raises a
``ValueError`` rather than guess.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from ._pruning_obd import AMOUNT, _effective
from ._validation import Options, check_params
from .measure import conv_like, count_macs, count_parameters

# The two multi-layer strategies of Li et al. (2017), Sec. 3.3 (documented in courselib.pruning).
STRATEGIES = ("independent", "greedy")

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
# ranking filters
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
    check_params(dict(conv=conv), {"conv": nn.Conv2d})
    w = _effective(conv, "weight").detach()
    return w.abs().sum(dim=(1, 2, 3))


def smallest_filters(conv: nn.Conv2d, amount: float) -> list[int]:
    """Indices of the ``round(amount * out_channels)`` filters of smallest L1 norm, ascending norm."""
    check_params(dict(amount=amount), {"amount": AMOUNT})
    norms = l1_filter_norms(conv)
    k = round(amount * norms.numel())
    return torch.argsort(norms, stable=True)[:k].tolist()


# --------------------------------------------------------------------------------------------------
# the surgery
# --------------------------------------------------------------------------------------------------
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


def _kept_filters(indices, n_filters: int, layer_name: str) -> torch.Tensor:
    """The filters that stay, ascending, once ``indices`` are checked: distinct, in range, not all of them."""
    idx = [int(i) for i in (indices.tolist() if isinstance(indices, (torch.Tensor, np.ndarray)) else indices)]
    if len(set(idx)) != len(idx):
        raise ValueError(f"indices must be distinct, got {sorted(idx)}")
    bad = [i for i in idx if not 0 <= i < n_filters]
    if bad:
        raise ValueError(f"filter indices {bad} out of range for {layer_name!r} with {n_filters} filters")
    if len(idx) >= n_filters:
        raise ValueError(f"cannot remove all {n_filters} filters of {layer_name!r}: at least one must remain")
    return torch.tensor(sorted(set(range(n_filters)) - set(idx)), dtype=torch.long)


def _conv_keeping_filters(conv: nn.Conv2d, keep: torch.Tensor) -> nn.Conv2d:
    """``conv`` with the filters (output channels) ``keep`` only: their weights and biases."""
    new = conv_like(conv, out_channels=len(keep))
    new.weight.copy_(conv.weight[keep])
    if conv.bias is not None:
        new.bias.copy_(conv.bias[keep])
    return new


def _batchnorm_keeping(bn: nn.BatchNorm2d, keep: torch.Tensor) -> nn.BatchNorm2d:
    """``bn`` with the entries ``keep`` only: weight, bias, running mean and variance."""
    like = bn.running_mean if bn.running_mean is not None else bn.weight
    new = nn.BatchNorm2d(
        len(keep),
        eps=bn.eps,
        momentum=bn.momentum,
        affine=bn.affine,
        track_running_stats=bn.track_running_stats,
        device=None if like is None else like.device,
        dtype=None if like is None else like.dtype,
    )
    if bn.affine:
        new.weight.copy_(bn.weight[keep])
        new.bias.copy_(bn.bias[keep])
    if bn.track_running_stats:
        new.running_mean.copy_(bn.running_mean[keep])
        new.running_var.copy_(bn.running_var[keep])
        new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new.train(bn.training)


def _next_keeping_inputs(nxt: nn.Module, keep: torch.Tensor, n_channels: int) -> nn.Module:
    """The layer after the pruned convolution, reading the channels ``keep`` of its ``n_channels`` only.

    A ``Conv2d`` keeps the input channels ``weight[:, keep]``; a ``Linear`` after a flatten keeps the
    block of ``in_features / n_channels`` consecutive input columns of each kept channel (NCHW order).
    """
    if isinstance(nxt, nn.Conv2d):
        new = conv_like(nxt, in_channels=len(keep))
        new.weight.copy_(nxt.weight[:, keep])
    else:
        block = nxt.in_features // n_channels
        cols = (keep.unsqueeze(1) * block + torch.arange(block).unsqueeze(0)).reshape(-1)
        w = nxt.weight
        new = nn.Linear(len(cols), nxt.out_features, bias=nxt.bias is not None, device=w.device, dtype=w.dtype)
        new.weight.copy_(w[:, cols])
        new.train(nxt.training)
    if nxt.bias is not None:
        new.bias.copy_(nxt.bias)
    return new


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


def remove_filters(model: nn.Module, layer_name: str, indices: Iterable[int]) -> nn.Module:
    """Physically remove filters of a convolution (Li et al. 2017, Sec. 3.1 and Fig. 1).

    Removing filter :math:`j` of layer :math:`i` removes output channel :math:`j` (its weights and
    bias), entry :math:`j` of the following ``BatchNorm2d`` (weight, bias, running mean and
    variance), and input channel :math:`j` of the next layer: for a ``Conv2d`` the slice
    ``weight[:, j]``; for a ``Linear`` after a flatten, the block of ``in_features / C`` consecutive
    input columns that channel :math:`j` occupies in NCHW order. The result is a smaller dense
    network (book section ``filters-surgery``). The new convolutions are
    :func:`courselib.measure.conv_like` the old ones.

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
    keep = _kept_filters(indices, conv.out_channels, layer_name)
    if len(keep) == conv.out_channels:
        return model
    with torch.no_grad():
        _replace(model, layer_name, _conv_keeping_filters(conv, keep))
        if bn is not None:
            _replace(model, bn_name, _batchnorm_keeping(bn, keep))
        _replace(model, nxt_name, _next_keeping_inputs(nxt, keep, conv.out_channels))
    return model


# --------------------------------------------------------------------------------------------------
# one layer, several layers
# --------------------------------------------------------------------------------------------------
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
    check_params(dict(strategy=strategy), {"strategy": Options(STRATEGIES)})
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
# explorer callback
# --------------------------------------------------------------------------------------------------
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
