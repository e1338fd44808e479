"""BinaryConnect: training networks with binary weights, and XNOR-popcount kernels.

Implements Courbariaux, Bengio & David, "BinaryConnect: Training Deep Neural Networks with
binary weights during propagations", NeurIPS 2015 (chapter ``book/binaryconnect.md``):

- :func:`hard_sigmoid` and :func:`binarize` -- deterministic ``w_b = sign(w)`` (paper Eq. 1,
  book Eq. ``bc-sign``; ``sign(0) = +1``) and stochastic binarization, ``w_b = +1`` with
  probability ``sigma(w) = clip((w + 1) / 2, 0, 1)`` (paper Eqs. 2-3, book Eqs.
  ``bc-stochastic`` and ``bc-hard-sigmoid``);
- :class:`BinarizeSTE` -- binarization in the forward pass, the straight-through estimator in the
  backward pass (the gradient with respect to ``w_b`` is applied to ``w`` unchanged, paper
  Algorithm 1, book Eq. ``bc-ste``);
- :class:`BinaryLinear`, :class:`BinaryConv2d` -- ``nn.Linear`` / ``nn.Conv2d`` whose ``weight``
  Parameter holds the real-valued latent weights; :func:`clip_latent_weights_` (book Eq. ``bc-clip``);
- :func:`make_binary_mlp`, :func:`make_binary_cnn` and the training recipe, :func:`fit_binaryconnect`
  with :data:`RECIPE` (Adam with the paper's per-layer learning rates, exponential decay, clipping);
- :func:`pack_binary_weights` / :func:`load_packed_weights` -- 1 bit per binary weight on disk;
- :func:`xnor_popcount_matmul` and :func:`binary_conv2d` -- products of +-1 vectors on packed
  codes, ``a . b = n - 2 popcount(a XOR b)`` (book Eq. ``bc-xnor``), exact.

What is implemented, precisely: the plain straight-through estimator of Algorithm 1 (identity
gradient). BinaryNet-style gradient cancelling (zero gradient where ``|w| > 1``) is not needed
because the latent weights are clipped to ``[-1, 1]`` after every update, so the cancelling
indicator would always be 1.

The models and the training recipe are written here; the binary weights (binarization, the estimator, the
layers, the explorer) in ``courselib/_binaryconnect_layers.py`` and the packed bits (weight files, XNOR
products and convolutions) in ``courselib/_binaryconnect_packed.py``, each the size of its part of the
chapter. Import every name from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np
import torch
from torch import nn

from ._binaryconnect_layers import (
    BinarizeSTE,
    BinaryConv2d,
    BinaryLinear,
    binarization_explorer,
    binarize,
    binarize_ste,
    binary_layers,
    clip_latent_weights_,
    hard_sigmoid,
)
from ._binaryconnect_packed import (
    binary_conv2d,
    binary_conv2d_packed,
    binary_weight_bytes,
    load_packed_weights,
    pack_binary_weights,
    pack_channels,
    xnor_popcount_matmul,
)
from ._validation import Interval, Options, check_params
from .training import evaluate, fit
from .utils import progress as progress_bar
from .utils import seeded

__all__ = [
    "hard_sigmoid",
    "binarize",
    "BinarizeSTE",
    "binarize_ste",
    "BinaryLinear",
    "BinaryConv2d",
    "binary_layers",
    "clip_latent_weights_",
    "pack_binary_weights",
    "load_packed_weights",
    "binary_weight_bytes",
    "xnor_popcount_matmul",
    "binary_conv2d",
    "pack_channels",
    "binary_conv2d_packed",
    "make_binary_mlp",
    "init_latent_weights_",
    "binaryconnect_optimizer",
    "fit_binaryconnect",
    "make_binary_cnn",
    "train_and_evaluate",
    "binarization_explorer",
    "MODES",
    "RECIPE",
    "ARCHS",
]

#: The training modes the model builders accept, in order the real-valued baseline, BC-deterministic and
#: BC-stochastic.
MODES = ("float", "det", "stoch")
_POSITIVE = Interval(Real, 0, None, closed="neither")


# ---------------------------------------------------------------------------------------------
# Small models for the chapter, the lab and the benchmark
# ---------------------------------------------------------------------------------------------
def _linear(mode, i, o, eval_weights):
    if mode == "float":
        return nn.Linear(i, o)
    return BinaryLinear(i, o, stochastic=(mode == "stoch"), eval_weights=eval_weights)


def make_binary_mlp(
    mode: str = "det",
    in_features: int = 64,
    hidden: Sequence[int] = (256, 256),
    n_classes: int = 10,
    eval_weights: str = "sign",
) -> nn.Sequential:
    """The MLP of the chapter: [Linear - BatchNorm - ReLU] x len(hidden), Linear - BatchNorm.

    Following the paper's MNIST setup (Section 3.1) every weight layer, the output layer
    included, is binarized when ``mode`` is ``"det"`` or ``"stoch"``, and every layer is followed
    by batch normalization (which also rescales the +-1 weights' large pre-activations).
    ``mode="float"`` builds the same network with ordinary ``nn.Linear`` layers (the paper's
    "no regularizer" baseline). Flattens its input.

    Parameters
    ----------
    mode : {"float", "det", "stoch"}
    in_features, hidden, n_classes : layer sizes.
    eval_weights : {"sign", "real"}
        Passed to the binary layers.
    """
    check_params(dict(mode=mode), {"mode": Options(MODES)})
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [_linear(mode, width, h, eval_weights), nn.BatchNorm1d(h), nn.ReLU()]
        width = h
    layers += [_linear(mode, width, n_classes, eval_weights), nn.BatchNorm1d(n_classes)]
    return nn.Sequential(*layers)


class _AddChannel(nn.Module):
    def forward(self, x):
        return x.unsqueeze(1) if x.dim() == 3 else x


def make_binary_cnn(
    mode: str = "det",
    in_channels: int = 1,
    channels: Sequence[int] = (16, 32),
    n_classes: int = 10,
    image_size: int = 8,
    eval_weights: str = "sign",
    float_first_conv: bool = False,
) -> nn.Sequential:
    """A small CNN with binary convolutions: [Conv3x3 - BN - ReLU - MaxPool2] x len(channels), Linear - BN.

    With ``mode`` ``"det"`` / ``"stoch"`` the convolutions are :class:`BinaryConv2d` and the
    classifier is a :class:`BinaryLinear`; ``"float"`` uses the ordinary layers. Every weight
    layer is followed by batch normalization, as in the paper. Accepts (N, H, W) or (N, C, H, W)
    inputs.

    Parameters
    ----------
    mode : {"float", "det", "stoch"}
    in_channels, channels, n_classes : layer sizes (3x3 convolutions with padding 1).
    image_size : int
        Side of the square input; must be divisible by ``2 ** len(channels)``.
    eval_weights : {"sign", "real"}
        Passed to the binary layers.
    float_first_conv : bool, default False
        Keep the first convolution real-valued (``nn.Conv2d``) in the binary modes. The paper
        binarizes every layer; keeping the first layer in float is common practice for binary
        networks (e.g. XNOR-Net) and matters most with one input channel, where each 3x3
        filter has only 9 binary weights. The chapter and the benchmark state when it is used.
    """
    check_params(
        dict(mode=mode, float_first_conv=float_first_conv),
        {"mode": Options(MODES), "float_first_conv": [bool, np.bool_]},
    )
    if len(channels) < 1:
        raise ValueError("channels must hold at least one layer width")
    if image_size % 2 ** len(channels):
        raise ValueError(
            f"image_size must be a multiple of {2 ** len(channels)} ({len(channels)} 2x2 poolings), got {image_size}"
        )
    layers: list[nn.Module] = [_AddChannel()]
    c_in = in_channels
    for i, c in enumerate(channels):
        if mode == "float" or (i == 0 and float_first_conv):
            conv = nn.Conv2d(c_in, c, 3, padding=1)
        else:
            conv = BinaryConv2d(c_in, c, 3, padding=1, stochastic=(mode == "stoch"), eval_weights=eval_weights)
        layers += [conv, nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
        c_in = c
    side = image_size // 2 ** len(channels)
    layers += [nn.Flatten(), _linear(mode, c_in * side * side, n_classes, eval_weights), nn.BatchNorm1d(n_classes)]
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------------
# Training recipe (paper Section 3 and its published code)
# ---------------------------------------------------------------------------------------------
def _glorot_scale(m: nn.Module) -> float:
    """``1 / sqrt(1.5 / (fan_in + fan_out))``, the paper's per-layer learning-rate scale."""
    w = m.weight
    receptive = int(np.prod(w.shape[2:])) if w.dim() > 2 else 1
    fan_in, fan_out = w.shape[1] * receptive, w.shape[0] * receptive
    return float(1.0 / np.sqrt(1.5 / (fan_in + fan_out)))


@torch.no_grad()
def init_latent_weights_(model: nn.Module, bound: float = 1.0, seed: int | None = None) -> nn.Module:
    """Draw every binary layer's latent weights from ``U(-bound, bound)``, in place.

    The authors' code initializes the latent weights uniformly in ``[-H, H]`` with ``H = 1``
    (the binary values are +-1). With PyTorch's default (about ``+-1/sqrt(fan_in)``) the
    stochastic binarization starts almost at ``p = 1/2`` everywhere, i.e. as pure noise.
    """
    layers = binary_layers(model)
    if not layers:
        raise ValueError("model has no BinaryLinear/BinaryConv2d layer")
    gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    for m in layers.values():
        m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 2 * bound - bound)
    return model


def binaryconnect_optimizer(model: nn.Module, lr: float = 3e-3, latent_lr_scale="glorot") -> torch.optim.Adam:
    """Adam with the paper's per-layer learning rates for the latent weights.

    The paper (Section 3.1, following its code) scales each binary layer's learning rate by
    ``1 / sqrt(1.5 / (fan_in + fan_out))`` (Glorot & Bengio's initialization coefficient): the
    latent weights live in ``[-1, 1]``, so they need larger steps than ordinary weights to flip
    signs. Other parameters (biases, BatchNorm, float layers) use ``lr``.

    Parameters
    ----------
    model : nn.Module
    lr : float
    latent_lr_scale : "glorot" or float
        Multiplier of ``lr`` for the binary layers' ``weight``.
    """
    check_params(
        dict(lr=lr, latent_lr_scale=latent_lr_scale),
        {"lr": _POSITIVE, "latent_lr_scale": [Options(("glorot",)), _POSITIVE]},
    )
    groups, seen = [], set()
    for m in binary_layers(model).values():
        scale = _glorot_scale(m) if latent_lr_scale == "glorot" else float(latent_lr_scale)
        groups.append({"params": [m.weight], "lr": lr * scale, "base_lr": lr * scale})
        seen.add(id(m.weight))
    rest = [p for p in model.parameters() if id(p) not in seen]
    if rest:
        groups.append({"params": rest, "lr": lr, "base_lr": lr})
    return torch.optim.Adam(groups)


def fit_binaryconnect(
    model: nn.Module,
    data,
    *,
    epochs: int = 20,
    lr: float = 3e-3,
    lr_final: float = 3e-5,
    latent_lr_scale="glorot",
    batch_size: int = 64,
    val_data=None,
    seed: int = 0,
    progress: bool = False,
    desc: str | None = None,
) -> dict[str, list[float]]:
    """Train a BinaryConnect (or float) model with the paper's recipe; returns ``fit``'s history.

    Adam (:func:`binaryconnect_optimizer`), a learning rate decaying exponentially from ``lr`` to
    ``lr_final`` over the epochs, and :func:`clip_latent_weights_` after every step when the model
    has binary layers (paper Algorithm 1). Each epoch is one call of
    :func:`courselib.training.fit` with the same optimizer (seed ``seed + epoch``).
    """
    check_params(
        dict(epochs=epochs, lr=lr, lr_final=lr_final),
        {"epochs": Interval(Integral, 1, None), "lr": _POSITIVE, "lr_final": _POSITIVE},
    )
    has_binary = bool(binary_layers(model))
    opt = binaryconnect_optimizer(model, lr, latent_lr_scale if has_binary else 1.0)
    after = clip_latent_weights_ if has_binary else None
    history: dict[str, list[float]] = {}
    for epoch in progress_bar(range(epochs), desc=desc or "epochs", disable=not progress):
        factor = (lr_final / lr) ** (epoch / max(epochs - 1, 1))
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * factor
        h = fit(
            model,
            data,
            epochs=1,
            optimizer=opt,
            batch_size=batch_size,
            after_step=after,
            val_data=val_data,
            seed=seed + epoch,
            progress=False,
        )
        for k, v in h.items():
            history.setdefault(k, []).extend(v)
    return history


#: The book's training recipe per mode, for digits and MNIST, gives the epochs and the learning rate's
#: exponential decay ``lr -> lr_final``. Stochastic BinaryConnect gets more epochs and a higher final rate: its
#: noisy binary weights need more steps to average out (paper Section 3: stochastic runs train longer).
RECIPE = {
    "float": {"epochs": 20, "lr": 3e-3, "lr_final": 3e-4},
    "det": {"epochs": 20, "lr": 3e-3, "lr_final": 3e-5},
    "stoch": {"epochs": 30, "lr": 3e-3, "lr_final": 3e-4},
}

#: The architectures of the chapter and the benchmark (builder keyword arguments).
ARCHS = {
    "MLP": {"hidden": (256, 256)},
    "CNN": {"channels": (32, 64), "float_first_conv": True},
}


def train_and_evaluate(
    arch: str,
    mode: str,
    train,
    test,
    *,
    seed: int = 0,
    epochs: int | None = None,
    epoch_scale: float = 1.0,
    arch_kwargs: dict | None = None,
    track: bool = False,
):
    """Build, train (:data:`RECIPE`) and test one model of the chapter; the shared experiment runner.

    The binary layers' latent weights start from ``U(-1, 1)`` (:func:`init_latent_weights_`);
    training is :func:`fit_binaryconnect`. The test error is measured with the paper's test-time
    weights (Section 2.6): the model itself for ``"float"``, ``sign(w)`` for ``"det"``, and for ``"stoch"`` both ``sign(w)`` and the real-valued ``w``
    (the paper's choice for the stochastic variant).

    Parameters
    ----------
    arch : {"MLP", "CNN"}
        :func:`make_binary_mlp` or :func:`make_binary_cnn` with :data:`ARCHS` ``[arch]``
        updated by ``arch_kwargs``; the input size is read from ``train``'s images.
    mode : {"float", "det", "stoch"}
    train, test : (X, y) pairs of arrays, X of shape (n, H, W).
    seed : int
        Fixes the initialization and the batch order.
    epochs : int, optional
        Overrides ``RECIPE[mode]["epochs"] * epoch_scale``.
    epoch_scale : float
        Multiplies the recipe's epochs (for quick runs); at least 1 epoch.
    track : bool
        Evaluate the test set after every epoch (history ``val_accuracy``; the chapter's curves).

    Returns
    -------
    model : nn.Module (eval mode; binary layers with ``eval_weights="sign"``)
    history : dict of lists (from :func:`courselib.training.fit`)
    errors : dict
        ``{"sign": test error in %}`` plus ``"real"`` for ``mode="stoch"``.
    """
    check_params(dict(arch=arch, mode=mode), {"arch": Options(ARCHS), "mode": Options(MODES)})
    X = np.asarray(train[0])
    kwargs = {**ARCHS[arch], **(arch_kwargs or {})}
    with seeded(seed):  # the caller's random stream is left as it was
        if arch == "MLP":
            model = make_binary_mlp(mode, in_features=int(np.prod(X.shape[1:])), **kwargs)
        else:
            model = make_binary_cnn(mode, image_size=int(X.shape[-1]), **kwargs)
    if mode != "float":
        init_latent_weights_(model, seed=seed)
    r = RECIPE[mode]
    n_epochs = int(epochs) if epochs is not None else max(1, int(round(r["epochs"] * epoch_scale)))
    history = fit_binaryconnect(
        model, train, epochs=n_epochs, lr=r["lr"], lr_final=r["lr_final"], seed=seed, val_data=test if track else None
    )
    errors = {"sign": 100 * (1 - evaluate(model, test)["accuracy"])}
    if mode == "stoch":
        layers = binary_layers(model).values()
        for layer in layers:
            layer.eval_weights = "real"
        errors["real"] = 100 * (1 - evaluate(model, test)["accuracy"])
        for layer in layers:
            layer.eval_weights = "sign"
    return model.eval(), history, errors
