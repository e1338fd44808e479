"""BinaryConnect's binary weights (private; every name is public in :mod:`courselib.binaryconnect`).

The first half of the chapter ``book/binaryconnect.md`` (Courbariaux, Bengio & David, NeurIPS 2015): how a
real-valued latent weight ``w`` becomes ``w_b`` in {-1, +1} -- its sign, or +1 with probability
:func:`hard_sigmoid` ``(w)`` (:func:`binarize`) -- how the gradient reaches ``w`` anyway (the straight-through
estimator, :class:`BinarizeSTE`), and the layers that hold ``w`` and compute with ``w_b``
(:class:`BinaryLinear`, :class:`BinaryConv2d`, kept in range by :func:`clip_latent_weights_`), with the
chapter's explorer of the two binarizations (:func:`binarization_explorer`).
"""

from __future__ import annotations

from numbers import Integral, Real

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._validation import Interval, Options, check_params

_EVAL_WEIGHTS = ("sign", "real")
# ``stochastic`` may be a Python or a NumPy boolean
_BOOL = [bool, np.bool_]


# ---------------------------------------------------------------------------------------------
# Binarization
# ---------------------------------------------------------------------------------------------
def hard_sigmoid(x):
    """The hard sigmoid ``sigma(x) = clip((x + 1) / 2, 0, 1) = max(0, min(1, (x + 1) / 2))``.

    Paper Eq. 3, book Eq. ``bc-hard-sigmoid``. It is the probability that stochastic
    binarization outputs +1.

    Parameters
    ----------
    x : torch.Tensor or array_like
        Real values.

    Returns
    -------
    torch.Tensor or ndarray
        Same type and shape as ``x`` (a tensor in, a tensor out).

    Examples
    --------
    >>> hard_sigmoid(torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0]))
    tensor([0.0000, 0.0000, 0.5000, 0.7500, 1.0000, 1.0000])
    """
    if isinstance(x, torch.Tensor):
        return torch.clamp((x + 1) / 2, 0.0, 1.0)
    arr = np.asarray(x, dtype=np.float64) if not np.issubdtype(np.asarray(x).dtype, np.floating) else np.asarray(x)
    return np.clip((arr + 1) / 2, 0.0, 1.0)


def _check_tensor(w, name="w"):
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(w).__name__}")
    if not torch.is_floating_point(w):
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {w.dtype}")


def binarize(w: torch.Tensor, stochastic: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Binarize real values to -1/+1 (no gradient handling; see :class:`BinarizeSTE`).

    Deterministic (paper Eq. 1, book Eq. ``bc-sign``): ``w_b = +1`` if ``w >= 0`` else ``-1``
    (so ``sign(0) = +1``). Stochastic (paper Eq. 2, book Eq. ``bc-stochastic``): ``w_b = +1``
    with probability ``hard_sigmoid(w)``, else ``-1``; for ``w`` in ``[-1, 1]`` this keeps the
    value in expectation, ``E[w_b] = 2 sigma(w) - 1 = w`` (book Eq. ``bc-expectation``).

    Parameters
    ----------
    w : torch.Tensor (floating point)
        Real-valued weights.
    stochastic : bool, default False
        Draw ``w_b`` at random instead of taking the sign.
    generator : torch.Generator, optional
        Random source for the stochastic case (default: torch's global generator).

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``w``, entries in {-1, +1}.

    Examples
    --------
    >>> binarize(torch.tensor([0.1, 0.1, 0.1, 0.1]))
    tensor([1., 1., 1., 1.])
    >>> binarize(torch.tensor([-0.3, 0.0, 2.0]))
    tensor([-1.,  1.,  1.])
    """
    _check_tensor(w)
    check_params(
        dict(stochastic=stochastic, generator=generator), {"stochastic": _BOOL, "generator": [torch.Generator, None]}
    )
    one = torch.ones((), dtype=w.dtype, device=w.device)
    if not stochastic:
        return torch.where(w >= 0, one, -one)
    u = torch.rand(w.shape, generator=generator, dtype=w.dtype, device=w.device)
    return torch.where(u < hard_sigmoid(w), one, -one)


class BinarizeSTE(torch.autograd.Function):
    """Binarize in the forward pass, pass the gradient straight through in the backward pass.

    Forward: ``w_b = binarize(w, stochastic, generator)``. Backward: ``dC/dw := dC/dw_b``
    (the identity; paper Algorithm 1 updates ``w`` with ``dC/dw_b``; book Eq. ``bc-ste``;
    Bengio et al. 2013 call it the straight-through estimator).
    """

    @staticmethod
    def forward(ctx, w, stochastic=False, generator=None):
        return binarize(w, stochastic=stochastic, generator=generator)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output, None, None


def binarize_ste(w: torch.Tensor, stochastic: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """:func:`binarize` with the straight-through gradient (``BinarizeSTE.apply``)."""
    _check_tensor(w)
    return BinarizeSTE.apply(w, stochastic, generator)


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------
class _BinaryWeightMixin:
    """Shared logic of the binary layers: which weights the forward pass uses."""

    def _setup_binary(self, stochastic, eval_weights):
        check_params(
            dict(stochastic=stochastic, eval_weights=eval_weights),
            {"stochastic": _BOOL, "eval_weights": Options(_EVAL_WEIGHTS)},
        )
        self.stochastic = bool(stochastic)
        self.eval_weights = eval_weights
        self.generator = None

    def binary_weight(self) -> torch.Tensor:
        """The weights used by ``forward``.

        Training: ``binarize(weight, stochastic)`` with the straight-through gradient.
        Evaluation: ``sign(weight)`` when ``eval_weights == "sign"`` (default; the paper's
        choice for BC-deterministic), or the real-valued ``weight`` when ``eval_weights ==
        "real"`` (the paper's choice for BC-stochastic, Section 2.6).
        """
        if self.training:
            return binarize_ste(self.weight, self.stochastic, self.generator)
        if self.eval_weights == "real":
            return self.weight
        return binarize_ste(self.weight, False, None)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", stochastic={self.stochastic}, eval_weights={self.eval_weights!r}"


class BinaryLinear(_BinaryWeightMixin, nn.Linear):
    """A fully connected layer with BinaryConnect weights (paper Section 2, Algorithm 1).

    ``weight`` is an ordinary ``nn.Parameter`` that holds the real-valued latent weights; the
    optimizer updates it. ``forward`` computes ``F.linear(x, w_b, bias)`` with ``w_b`` from
    :meth:`binary_weight`: binarized in training (gradient passed straight through to ``weight``),
    ``sign(weight)`` in eval mode unless ``eval_weights="real"``. The bias stays real-valued.
    Clip the latent weights after every step with :func:`clip_latent_weights_`.

    Parameters
    ----------
    in_features, out_features, bias : as in ``nn.Linear``.
    stochastic : bool, default False
        Stochastic (Eq. ``bc-stochastic``) instead of deterministic (Eq. ``bc-sign``) binarization
        during training.
    eval_weights : {"sign", "real"}, default "sign"
        Weights used in eval mode.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        stochastic: bool = False,
        eval_weights: str = "sign",
        device=None,
        dtype=None,
    ):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._setup_binary(stochastic, eval_weights)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.binary_weight(), self.bias)


class BinaryConv2d(_BinaryWeightMixin, nn.Conv2d):
    """A 2-D convolution with BinaryConnect weights (see :class:`BinaryLinear`).

    Takes every ``nn.Conv2d`` argument plus ``stochastic`` and ``eval_weights``; ``forward`` is
    ``nn.Conv2d``'s convolution with the binary weights of :meth:`binary_weight`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        stochastic: bool = False,
        eval_weights: str = "sign",
        device=None,
        dtype=None,
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
            padding_mode=padding_mode,
            device=device,
            dtype=dtype,
        )
        self._setup_binary(stochastic, eval_weights)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(input, self.binary_weight(), self.bias)


_BINARY_TYPES = (BinaryLinear, BinaryConv2d)


def binary_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The :class:`BinaryLinear` / :class:`BinaryConv2d` submodules of ``model`` by qualified name."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return {name: m for name, m in model.named_modules() if isinstance(m, _BINARY_TYPES)}


@torch.no_grad()
def clip_latent_weights_(model: nn.Module, bound: float = 1.0) -> nn.Module:
    """Clip the latent weights of every binary layer to ``[-bound, bound]``, in place.

    Paper Algorithm 1 (``w_t = clip(w_{t-1} - eta dC/dw_b)``), book Eq. ``bc-clip``. Without the
    clip the latent weights could grow without bound while ``sign`` ignores them; with it, the
    stochastic binarization keeps ``E[w_b] = w``. Use it as ``fit(..., after_step=clip_latent_weights_)``.

    Parameters
    ----------
    model : nn.Module
        A model that contains at least one :class:`BinaryLinear` or :class:`BinaryConv2d`.
    bound : float, default 1.0

    Returns
    -------
    nn.Module
        ``model`` itself.
    """
    check_params(dict(bound=bound), {"bound": Interval(Real, 0, None, closed="neither")})
    layers = binary_layers(model)
    if not layers:
        raise ValueError("model has no BinaryLinear/BinaryConv2d layer: nothing to clip")
    for m in layers.values():
        m.weight.clamp_(-bound, bound)
    return model


# ---------------------------------------------------------------------------------------------
# Explorer callback
# ---------------------------------------------------------------------------------------------
def binarization_explorer(mode: str = "stochastic", w: float = 0.1, n_samples: int = 200, seed: int = 0):
    """Draw one figure: samples of ``w_b`` for one weight ``w`` and the mean they converge to.

    Left: the running mean of ``n_samples`` binarizations of ``w`` (deterministic: always
    ``sign(w)``; stochastic: tends to ``clip(w, -1, 1)``, Eq. ``bc-expectation``). Right:
    ``E[w_b]`` as a function of ``w`` for both modes, with the chosen ``w`` marked.

    Parameters
    ----------
    mode : {"deterministic", "stochastic"}
    w : float
        The real-valued weight.
    n_samples : int >= 1
    seed : int

    Returns
    -------
    matplotlib.figure.Figure
    """
    check_params(
        dict(mode=mode, n_samples=n_samples),
        {"mode": Options(("deterministic", "stochastic")), "n_samples": Interval(Integral, 1, None)},
    )
    gen = torch.Generator().manual_seed(int(seed))
    samples = binarize(
        torch.full((int(n_samples),), float(w)), stochastic=(mode == "stochastic"), generator=gen
    ).numpy()
    running = np.cumsum(samples) / np.arange(1, len(samples) + 1)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax0.plot(np.arange(1, len(samples) + 1), running, color="C0", label="running mean of $w_b$")
    ax0.axhline(float(w), color="C3", ls="--", label=f"$w$ = {float(w):.2f}")
    ax0.set_ylim(-1.1, 1.1)
    ax0.set_xlabel("number of samples")
    ax0.set_ylabel("mean of $w_b$")
    ax0.set_title(f"{mode}: first samples " + " ".join(f"{int(s):+d}" for s in samples[:6]))
    ax0.legend(loc="lower right", fontsize=8)
    grid = np.linspace(-1.5, 1.5, 301)
    ax1.plot(grid, np.where(grid >= 0, 1.0, -1.0), color="C1", label="deterministic: sign($w$)")
    ax1.plot(grid, 2 * hard_sigmoid(grid) - 1, color="C0", label=r"stochastic: $2\sigma(w)-1$")
    ax1.plot([float(w)], [running[-1]], "ko", label="empirical mean")
    ax1.set_xlabel("$w$")
    ax1.set_ylabel("E[$w_b$]")
    ax1.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig
