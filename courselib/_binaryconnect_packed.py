"""BinaryConnect on packed bits: 1-bit weight files and XNOR-popcount products (private).

Public in :mod:`courselib.binaryconnect`. A trained BinaryConnect model needs only ``sign(w)``, one bit per
weight (chapter ``book/binaryconnect.md``):

- :func:`pack_binary_weights` / :func:`load_packed_weights` -- 1 bit per binary weight on disk, everything
  else as float tensors; :func:`binary_weight_bytes` -- what that saves;
- :func:`xnor_popcount_matmul` and :func:`binary_conv2d` -- products of +-1 vectors on packed
  codes, ``a . b = n - 2 popcount(a XOR b)`` (book Eq. ``bc-xnor``), exact;
- :func:`pack_channels` and :func:`binary_conv2d_packed` -- the convolution on operands packed once along
  their channels.

The bit-level loops (popcount, word views, NumPy fallbacks) are ``courselib._bits``'s.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import _bits
from ._binaryconnect_layers import binary_layers
from ._validation import Interval, check_params
from .binary_codes import pack_codes, unpack_codes

# ``stride`` and ``padding`` of the binary convolutions
_STRIDE, _PADDING = Interval(Integral, 1, None), Interval(Integral, 0, None)


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
    a_codes = _bits.check_codes(a_codes, "a_codes")
    b_codes = _bits.check_codes(b_codes, "b_codes")
    check_params(dict(n_bits=n_bits), {"n_bits": Interval(Integral, 1, None)})
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
    check_params(dict(stride=stride, padding=padding), {"stride": _STRIDE, "padding": _PADDING})
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
    check_params(
        dict(stride=stride, padding=padding, n_channels=n_channels),
        {"stride": _STRIDE, "padding": _PADDING, "n_channels": Interval(Integral, 1, None)},
    )
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
