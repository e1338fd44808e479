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
- :func:`pack_binary_weights` / :func:`load_packed_weights` -- 1 bit per binary weight on disk;
- :func:`xnor_popcount_matmul` and :func:`binary_conv2d` -- products of +-1 vectors on packed
  codes, ``a . b = n - 2 popcount(a XOR b)`` (book Eq. ``bc-xnor``), exact.

What is implemented, precisely: the plain straight-through estimator of Algorithm 1 (identity
gradient). BinaryNet-style gradient cancelling (zero gradient where ``|w| > 1``) is not needed
because the latent weights are clipped to ``[-1, 1]`` after every update, so the cancelling
indicator would always be 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import _bits
from .binary_codes import pack_codes, unpack_codes
from .training import evaluate, fit
from .utils import progress as progress_bar

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
_EVAL_WEIGHTS = ("sign", "real")


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
    if not isinstance(stochastic, (bool, np.bool_)):
        raise TypeError(f"stochastic must be a bool, got {stochastic!r}")
    one = torch.ones((), dtype=w.dtype, device=w.device)
    if not stochastic:
        return torch.where(w >= 0, one, -one)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
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
        if not isinstance(stochastic, (bool, np.bool_)):
            raise TypeError(f"stochastic must be a bool, got {stochastic!r}")
        if eval_weights not in _EVAL_WEIGHTS:
            raise ValueError(f"eval_weights must be one of {_EVAL_WEIGHTS}, got {eval_weights!r}")
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
    layers = binary_layers(model)
    if not layers:
        raise ValueError("model has no BinaryLinear/BinaryConv2d layer: nothing to clip")
    if not bound > 0:
        raise ValueError(f"bound must be > 0, got {bound!r}")
    for m in layers.values():
        m.weight.clamp_(-bound, bound)
    return model


# ---------------------------------------------------------------------------------------------
# Packed weights (1 bit per binary weight)
# ---------------------------------------------------------------------------------------------
_FORMAT = "courselib.binaryconnect/packed-v1"


def pack_binary_weights(model: nn.Module) -> dict:
    """Pack a BinaryConnect model: 1 bit per binary weight, everything else as float tensors.

    For every :class:`BinaryLinear` / :class:`BinaryConv2d`, ``sign(weight)`` (bit 1 <-> +1,
    ``sign(0) = +1``) is flattened and packed with :func:`courselib.binary_codes.pack_codes`
    (8 weights per byte, so 32x smaller than float32 up to the last byte's padding). Every
    other entry of ``model.state_dict()`` (biases, BatchNorm weights and running statistics,
    float layers) is copied as is. :func:`load_packed_weights` restores a model that predicts
    exactly like ``model`` in eval mode. Save the result with ``torch.save`` (it holds only
    tensors, ints, tuples and strings, so ``torch.load(..., weights_only=True)`` reads it).

    Parameters
    ----------
    model : nn.Module
        Contains binary layers, all with ``eval_weights="sign"`` (the packed format stores signs;
        a model evaluated with real-valued weights is not a binary model).

    Returns
    -------
    dict
        ``{"format": str, "binary": {name: {"codes": uint8 tensor (1, ceil(numel/8)),
        "shape": tuple}}, "state": {key: tensor}}``.
    """
    layers = binary_layers(model)
    if not layers:
        raise ValueError("model has no BinaryLinear/BinaryConv2d layer: nothing to pack")
    for name, m in layers.items():
        if m.eval_weights != "sign":
            raise ValueError(
                f"layer {name!r} uses eval_weights={m.eval_weights!r}; the packed format "
                "stores sign(weight), so set eval_weights='sign' before packing"
            )
    binary = {}
    for name, m in layers.items():
        w = m.weight.detach().cpu()
        bits = (w >= 0).reshape(1, -1).numpy().astype(np.uint8)
        binary[name] = {"codes": torch.from_numpy(pack_codes(bits)), "shape": tuple(w.shape)}
    skip = {f"{name}.weight" if name else "weight" for name in layers}
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k not in skip}
    return {"format": _FORMAT, "binary": binary, "state": state}


@torch.no_grad()
def load_packed_weights(model: nn.Module, packed: dict) -> nn.Module:
    """Load :func:`pack_binary_weights` output into ``model`` in place (inverse of packing).

    The binary layers' latent weights become the unpacked -1/+1 values and every other state
    entry is copied, so in eval mode the model's outputs equal those of the packed model exactly.

    Parameters
    ----------
    model : nn.Module
        Same architecture as the packed model.
    packed : dict
        Output of :func:`pack_binary_weights` (possibly after ``torch.save`` / ``torch.load``).

    Returns
    -------
    nn.Module
        ``model`` itself.
    """
    if not isinstance(packed, dict) or packed.get("format") != _FORMAT:
        raise ValueError("packed must be the dict returned by pack_binary_weights")
    layers = binary_layers(model)
    if set(layers) != set(packed["binary"]):
        raise ValueError(f"binary layers differ: model has {sorted(layers)}, packed has {sorted(packed['binary'])}")
    for name, m in layers.items():
        entry = packed["binary"][name]
        shape = tuple(entry["shape"])
        if shape != tuple(m.weight.shape):
            raise ValueError(f"layer {name!r}: packed shape {shape} != model shape {tuple(m.weight.shape)}")
        n = int(np.prod(shape))
        bits = unpack_codes(np.asarray(entry["codes"].cpu().numpy(), dtype=np.uint8), n)
        signs = torch.from_numpy(bits.reshape(shape).astype(np.float32) * 2 - 1)
        m.weight.copy_(signs.to(m.weight.dtype))
    own = model.state_dict()
    skip = {f"{name}.weight" if name else "weight" for name in layers}
    expected = set(own) - skip
    if expected != set(packed["state"]):
        raise ValueError(
            f"state entries differ: missing {sorted(expected - set(packed['state']))}, "
            f"unexpected {sorted(set(packed['state']) - expected)}"
        )
    for k, v in packed["state"].items():
        if own[k].shape != v.shape:
            raise ValueError(f"state entry {k!r}: shape {tuple(v.shape)} != {tuple(own[k].shape)}")
        own[k].copy_(v)
    return model


def binary_weight_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of the binary layers' weights as float32 and packed, and of the other state entries.

    Returns
    -------
    dict
        ``binary_float32`` (4 bytes per weight), ``binary_packed`` (``ceil(n / 8)`` per layer),
        ``other`` (every other state entry at its own dtype).
    """
    packed = pack_binary_weights(model)
    f32 = sum(4 * int(np.prod(e["shape"])) for e in packed["binary"].values())
    pk = sum(int(e["codes"].numel()) for e in packed["binary"].values())
    other = sum(int(v.numel() * v.element_size()) for v in packed["state"].values())
    return {"binary_float32": f32, "binary_packed": pk, "other": other}


# ---------------------------------------------------------------------------------------------
# XNOR-popcount products on packed codes
# ---------------------------------------------------------------------------------------------
def _check_codes(codes, name):
    if not isinstance(codes, np.ndarray) or codes.dtype != np.uint8 or codes.ndim != 2:
        got = f"{type(codes).__name__}" + (f" {codes.dtype} ndim={codes.ndim}" if isinstance(codes, np.ndarray) else "")
        raise ValueError(f"{name} must be a 2-D uint8 array of packed codes (pack_codes output), got {got}")
    if codes.shape[0] == 0:
        raise ValueError(f"{name} is empty")


def xnor_popcount_matmul(a_codes: np.ndarray, b_codes: np.ndarray, n_bits: int, *, backend: str = "auto") -> np.ndarray:
    """Exact products ``A B^T`` of +-1 vectors given as packed codes, by XNOR and popcount.

    Row ``i`` of ``a_codes`` encodes a vector ``a_i`` in {-1, +1}^n_bits (bit 1 <-> +1, bit 0 <->
    -1, the layout of :func:`courselib.binary_codes.pack_codes`). Agreeing positions contribute
    +1 and disagreeing ones -1, so (book Eq. ``bc-xnor``)

        a_i . b_j = n_bits - 2 popcount(a_i XOR b_j) = 2 popcount(XNOR(a_i, b_j)) - n_bits.

    The bytes are read as 64-bit words (without copying when ``n_bits`` is a multiple of 64), so
    one XOR and one ``popcnt`` instruction handle 64 multiply-adds.

    Parameters
    ----------
    a_codes : ndarray of uint8, shape (n_a, ceil(n_bits / 8))
    b_codes : ndarray of uint8, shape (n_b, ceil(n_bits / 8))
    n_bits : int
        Length of the +-1 vectors. Padding bits beyond ``n_bits`` are ignored.
    backend : {"auto", "numba", "numpy"}, default "auto"
        ``"numba"``: compiled loop with the ``ctpop`` intrinsic; ``"numpy"``: ``np.bitwise_count``.

    Returns
    -------
    ndarray of int32, shape (n_a, n_b)
        Exactly the float matrix ``(2 A_bits - 1) (2 B_bits - 1)^T``.
    """
    _check_codes(a_codes, "a_codes")
    _check_codes(b_codes, "b_codes")
    if not isinstance(n_bits, (int, np.integer)) or isinstance(n_bits, bool) or n_bits < 1:
        raise ValueError(f"n_bits must be a positive integer, got {n_bits!r}")
    n_bits = int(n_bits)
    n_bytes = -(-n_bits // 8)
    for name, c in (("a_codes", a_codes), ("b_codes", b_codes)):
        if c.shape[1] != n_bytes:
            raise ValueError(f"{name} has {c.shape[1]} bytes per row, but n_bits={n_bits} needs {n_bytes}")
    backend = _bits.choose_backend(backend)
    return _bits.xnor_matmul(_bits.to_words(a_codes, n_bits), _bits.to_words(b_codes, n_bits), n_bits, backend)


def _as_pm1_tensor(x, name):
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or ndarray, got {type(x).__name__}")
    x = x.detach().to(torch.float32)
    if x.ndim != 4:
        raise ValueError(f"{name} must be 4-D, got shape {tuple(x.shape)}")
    if not bool(((x == 1) | (x == -1)).all()):
        raise ValueError(f"{name} must contain only -1 and +1 (binarize it first)")
    return x


def binary_conv2d(x, weight, *, stride: int = 1, padding: int = 0, backend: str = "auto") -> torch.Tensor:
    """2-D convolution of +-1 inputs with +-1 filters by packing and XNOR-popcount (book Eq. ``bc-xnor``).

    Each output is the dot product of a ``C kh kw`` input patch with a filter, i.e. one entry of
    an XNOR-popcount matrix product between the im2col patches and the filters. Two backends:

    - ``"numpy"``: literally that -- im2col (``F.unfold``), :func:`courselib.binary_codes.pack_codes`
      on the patches and filters, and the product of :func:`xnor_popcount_matmul`; a padded
      position is masked out of the popcount, ``n_valid - 2 popcount((a XOR b) AND mask)``;
    - ``"numba"`` (default when numba is installed): im2col fused into a compiled loop. The
      inputs and filters are packed once along the channels (64 channels per ``uint64`` word) and
      every kernel tap inside the image adds ``C - 2 popcount(x XOR w)``; taps on the padding add
      nothing. Same products, no patch matrix in memory.

    Zero padding is exact in both: a padded position contributes 0, as in ``F.conv2d``.

    Parameters
    ----------
    x : torch.Tensor or ndarray, shape (N, C, H, W), entries in {-1, +1}
    weight : torch.Tensor or ndarray, shape (O, C, kh, kw), entries in {-1, +1}
    stride, padding : int
        As in ``F.conv2d`` (same value for both spatial dimensions).
    backend : {"auto", "numba", "numpy"}

    Returns
    -------
    torch.Tensor of float32, shape (N, O, H_out, W_out)
        Equal (exactly) to ``F.conv2d(x, weight, stride=stride, padding=padding)``.
    """
    x = _as_pm1_tensor(x, "x")
    weight = _as_pm1_tensor(weight, "weight")
    for name, v, lo in (("stride", stride, 1), ("padding", padding, 0)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    n, c, h, w = x.shape
    o, c_w, kh, kw = weight.shape
    if c != c_w:
        raise ValueError(f"x has {c} channels but weight expects {c_w}")
    h_out = (h + 2 * padding - kh) // stride + 1
    w_out = (w + 2 * padding - kw) // stride + 1
    if h_out < 1 or w_out < 1:
        raise ValueError(f"kernel {kh}x{kw} does not fit the padded {h}x{w} input")
    backend = _bits.choose_backend(backend)
    if backend == "numba":
        # im2col fused into a compiled loop: inputs and filters packed once along the channels
        return binary_conv2d_packed(
            _pack_channels_checked(x), _pack_channels_checked(weight), c, stride=stride, padding=padding
        )
    k = c * kh * kw
    cols = F.unfold(x, (kh, kw), padding=padding, stride=stride)  # (N, k, L), zeros at padding
    cols = cols.transpose(1, 2).reshape(-1, k).numpy()  # (N L, k)
    # bit 1 where the value is >= 0 (sign(0) = +1); the zeros of the padding are masked out below
    a_codes = pack_codes((cols >= 0).astype(np.uint8))
    b_codes = pack_codes((weight.reshape(o, k).numpy() >= 0).astype(np.uint8))
    aw, bw = _bits.to_words(a_codes, k), _bits.to_words(b_codes, k)
    if padding == 0:
        out = _bits.xnor_matmul(aw, bw, k, "numpy")
    else:
        mw = _bits.to_words(pack_codes((cols != 0).astype(np.uint8)), k)
        out = _bits.xnor_matmul(aw, bw, k, "numpy", a_mask=mw)
    out = torch.from_numpy(out.astype(np.float32)).reshape(n, h_out * w_out, o)
    return out.transpose(1, 2).reshape(n, o, h_out, w_out).contiguous()


def pack_channels(x) -> np.ndarray:
    """Pack a +-1 tensor of shape (N, C, H, W) along its channels: uint64 words (N, H, W, ceil(C / 64)).

    Channel ``c`` is bit ``c % 64`` of word ``c // 64`` (bit 1 <-> +1). Pack a binary layer's
    filters (O, C, kh, kw) once when the model is loaded, and a binary activation map once per layer;
    :func:`binary_conv2d_packed` then convolves the packed operands. Needs numba.
    """
    return _pack_channels_checked(_as_pm1_tensor(x, "x"))


def _pack_channels_checked(t: torch.Tensor) -> np.ndarray:
    return _bits.pack_channels_words(t.numpy())


def binary_conv2d_packed(
    x_packed: np.ndarray, w_packed: np.ndarray, n_channels: int, *, stride: int = 1, padding: int = 0
) -> torch.Tensor:
    """Binary convolution of channel-packed operands (see :func:`pack_channels`), by XNOR-popcount.

    ``out[n, o, y, x] = sum over kernel taps inside the image of (C - 2 popcount(x_word XOR w_word))``
    (book Eq. ``bc-xnor``, 64 channels per word); taps on the zero padding add 0, as in ``F.conv2d``.

    Parameters
    ----------
    x_packed : ndarray of uint64, shape (N, H, W, words)
        ``pack_channels(x)`` of the +-1 inputs.
    w_packed : ndarray of uint64, shape (O, kh, kw, words)
        ``pack_channels(weight)`` of the +-1 filters.
    n_channels : int
        C, the number of (unpacked) input channels.
    stride, padding : int

    Returns
    -------
    torch.Tensor of float32, shape (N, O, H_out, W_out)
        Equal (exactly) to ``F.conv2d(x, weight, stride=stride, padding=padding)``.
    """
    for name, a in (("x_packed", x_packed), ("w_packed", w_packed)):
        if not isinstance(a, np.ndarray) or a.dtype != np.uint64 or a.ndim != 4:
            raise ValueError(f"{name} must be a 4-D uint64 array from pack_channels")
    for name, v, lo in (("stride", stride, 1), ("padding", padding, 0), ("n_channels", n_channels, 1)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    n, h, w, n_words = x_packed.shape
    o, kh, kw, w_words = w_packed.shape
    if n_words != w_words or n_words != -(-int(n_channels) // 64):
        raise ValueError(
            f"x_packed has {n_words} words, w_packed {w_words}, but n_channels={n_channels} "
            f"needs {-(-int(n_channels) // 64)}"
        )
    h_out = (h + 2 * padding - kh) // stride + 1
    w_out = (w + 2 * padding - kw) // stride + 1
    if h_out < 1 or w_out < 1:
        raise ValueError(f"kernel {kh}x{kw} does not fit the padded {h}x{w} input")
    wt = np.ascontiguousarray(w_packed.transpose(1, 2, 3, 0))  # (kh, kw, words, O): filters innermost
    out = _bits.binary_conv_words(
        np.ascontiguousarray(x_packed), wt, int(n_channels), int(stride), int(padding), h_out, w_out
    )
    return torch.from_numpy(out.astype(np.float32))


# ---------------------------------------------------------------------------------------------
# Small models for the chapter, the lab and the benchmark
# ---------------------------------------------------------------------------------------------
def _check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


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
    _check_mode(mode)
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
    _check_mode(mode)
    if not isinstance(float_first_conv, (bool, np.bool_)):
        raise TypeError(f"float_first_conv must be a bool, got {float_first_conv!r}")
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
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if latent_lr_scale != "glorot" and not (isinstance(latent_lr_scale, (int, float)) and latent_lr_scale > 0):
        raise ValueError(f"latent_lr_scale must be 'glorot' or a positive number, got {latent_lr_scale!r}")
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
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if not (lr > 0 and lr_final > 0):
        raise ValueError(f"lr and lr_final must be > 0, got {lr!r} and {lr_final!r}")
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
    _check_mode(mode)
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {tuple(ARCHS)}, got {arch!r}")
    X = np.asarray(train[0])
    kwargs = {**ARCHS[arch], **(arch_kwargs or {})}
    torch.manual_seed(seed)
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
    if mode not in ("deterministic", "stochastic"):
        raise ValueError(f"mode must be 'deterministic' or 'stochastic', got {mode!r}")
    if not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
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
