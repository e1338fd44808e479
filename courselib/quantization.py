"""From 32 bits to 1: uniform k-bit quantization, int8 with PyTorch, and the XNOR-Net scaling factor.

Implements the chapter ``book/quantization.md``:

- :func:`quantize_uniform` / :func:`dequantize` -- uniform (affine) quantization with min-max
  calibration, ``x ~ s (q - z)`` (Jacob et al., "Quantization and Training of Neural Networks for
  Efficient Integer-Arithmetic-Only Inference", CVPR 2018, Eq. 1; book Eqs. ``quant-affine``,
  ``quant-scale``, ``quant-zero-point``, ``quant-q``), asymmetric by default, symmetric on request,
  per tensor or per channel;
- :func:`xnor_binarize` -- the 1-bit approximation ``w ~ alpha sign(w)`` with ``alpha`` the mean
  absolute weight per output channel (Rastegari et al., "XNOR-Net", ECCV 2016, Eq. 4; book Eq.
  ``quant-xnor-alpha``);
- :func:`fake_quantize_weights` -- a copy of a model whose weights went through quantize-dequantize
  (weight-only quantization, to measure accuracy at 8, 4, 2 and 1 bit);
- :func:`quantize_dynamic_int8`, :func:`quantize_static_int8` -- post-training int8 quantization
  with PyTorch's own ``torch.ao.quantization`` (eager mode); :func:`courselib.measure.state_dict_bytes`
  measures the saved size;
- :func:`quantization_explorer` -- the chapter's explorer (bits, per-channel, symmetric).

Conventions (the same as PyTorch's ``MinMaxObserver`` with ``quint8``):

- The integers are unsigned, ``q in [0, 2^b - 1]``, stored as ``uint8`` for ``b <= 8`` and
  ``int32`` above.
- The calibrated range always contains 0: ``[min(x_min, 0), max(x_max, 0)]``, so that 0 (zero
  padding, ReLU outputs, pruned weights) is represented exactly by the integer ``z``.
- Symmetric quantization fixes ``z = 2^(b-1)`` and ``s = max|x| / ((2^b - 1) / 2)``; the extremes
  ``+-max|x|`` then fall on rounding ties (``+-(2^b - 1) / 2``) and the top one is clamped, so they
  are off by half a step at most. At 1 bit the symmetric grid is ``{-2 max|x|, 0}``: use
  :func:`xnor_binarize` instead.
- An all-zero tensor (or channel) has an empty range: it gets ``s = 0``, ``z = 0`` and ``q = 0``,
  and :func:`dequantize` returns exact zeros (PyTorch instead clamps ``s`` to float32 epsilon).
- Rounding is to the nearest integer, ties to even (``np.round``, like ``torch.round``).
"""

from __future__ import annotations

import contextlib
import copy
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.ao.quantization as tq
from torch import nn

__all__ = [
    "quantize_uniform",
    "dequantize",
    "fake_quantize",
    "quantization_error",
    "xnor_binarize",
    "fake_quantize_weights",
    "weight_layers",
    "quantize_dynamic_int8",
    "quantize_static_int8",
    "quantization_explorer",
    "METHODS",
]

#: Weight-only methods of :func:`fake_quantize_weights`.
METHODS = ("uniform", "sign", "xnor")
_MAX_BITS = 16


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------
def _to_numpy(x, name: str = "x") -> tuple[np.ndarray, bool]:
    """Return ``(array, was_torch)``; reject non-numeric, empty and non-finite input."""
    was_torch = isinstance(x, torch.Tensor)
    if was_torch:
        a = x.detach().cpu().numpy()
    elif isinstance(x, (np.ndarray, list, tuple, float, int, np.floating, np.integer)):
        a = np.asarray(x)
    else:
        raise TypeError(f"{name} must be a NumPy array or a torch tensor, got {type(x).__name__}")
    if a.dtype == bool or not np.issubdtype(a.dtype, np.number):
        raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
    if a.size == 0:
        raise ValueError(f"{name} is empty: there is no range to calibrate")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values; quantization needs a finite range")
    return a, was_torch


def _check_bits(n_bits) -> int:
    if isinstance(n_bits, bool) or not isinstance(n_bits, (int, np.integer)):
        raise TypeError(f"n_bits must be an integer, got {type(n_bits).__name__}")
    if not 1 <= n_bits <= _MAX_BITS:
        raise ValueError(f"n_bits must be between 1 and {_MAX_BITS}, got {n_bits}")
    return int(n_bits)


def _check_axis(axis, ndim: int, name: str = "per_channel_axis") -> int:
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{name} must be an integer axis or None, got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}={axis} is out of range for an array with {ndim} dimension(s)")
    return int(axis) % ndim


def _int_dtype(n_bits: int):
    return np.uint8 if n_bits <= 8 else np.int32


def _reduce_axes(ndim: int, axis: int | None) -> tuple[int, ...]:
    return tuple(range(ndim)) if axis is None else tuple(i for i in range(ndim) if i != axis)


# ---------------------------------------------------------------------------------------------
# Uniform quantization
# ---------------------------------------------------------------------------------------------
def quantize_uniform(x, n_bits: int, *, symmetric: bool = False, per_channel_axis: int | None = None):
    """Uniform ``n_bits`` quantization with min-max calibration: ``x ~ scale * (q - zero_point)``.

    Asymmetric (affine) by default, book Eqs. ``quant-scale``, ``quant-zero-point`` and ``quant-q``
    (Jacob et al. 2018, Eq. 1 and Sec. 2.1)::

        x_min, x_max = min(min(x), 0), max(max(x), 0)          # the range always contains 0
        scale        = (x_max - x_min) / (2^b - 1)
        zero_point   = clamp(round(-x_min / scale), 0, 2^b - 1)
        q            = clamp(round(x / scale) + zero_point, 0, 2^b - 1)

    Symmetric (book Eq. ``quant-symmetric``): ``zero_point = 2^(b-1)`` and
    ``scale = max|x| / ((2^b - 1) / 2)``, as PyTorch's ``MinMaxObserver`` does for ``quint8``.

    Parameters
    ----------
    x : ndarray or torch.Tensor
        Real values (weights or activations), finite, not empty.
    n_bits : int, 1 <= n_bits <= 16
        Bits per value; the integers are ``0 .. 2^n_bits - 1``.
    symmetric : bool, default False
        Symmetric range around 0 instead of the min-max (affine) range.
    per_channel_axis : int or None, default None
        ``None``: one scale and zero-point for the whole tensor. An axis (0 for the output
        channels of an ``nn.Linear`` or ``nn.Conv2d`` weight): one pair per slice along it.

    Returns
    -------
    q : ndarray or torch.Tensor
        The integers, ``uint8`` for ``n_bits <= 8`` else ``int32``, same shape as ``x`` and the
        same kind (NumPy in, NumPy out; torch in, torch out).
    scale : float, or array/tensor
        Per tensor: a Python float. Per channel: float64 values of shape ``x.shape`` with 1 on
        every axis except ``per_channel_axis`` (so that ``scale * (q - zero_point)`` broadcasts;
        ``.ravel()``/``.flatten()`` gives the vector of channel scales).
    zero_point : int, or array/tensor
        Per tensor: a Python int. Per channel: int64 values shaped like ``scale``.

    Notes
    -----
    An all-zero tensor (or channel) has an empty range: ``scale = 0``, ``zero_point = 0``,
    ``q = 0``; :func:`dequantize` maps it back to exact zeros. A nonzero constant is not a special
    case: the range ``[min(c, 0), max(c, 0)]`` is not empty and ``c`` is represented exactly.

    Examples
    --------
    >>> q, s, z = quantize_uniform(np.array([-1.0, 0.0, 0.5, 2.0]), 2)
    >>> q.tolist(), s, z
    ([0, 1, 1, 3], 1.0, 1)
    """
    a, was_torch = _to_numpy(x)
    b = _check_bits(n_bits)
    if not isinstance(symmetric, (bool, np.bool_)):
        raise TypeError(f"symmetric must be True or False, got {symmetric!r}")
    axis = None if per_channel_axis is None else _check_axis(per_channel_axis, a.ndim)
    a = a.astype(np.float64)
    qmax = 2**b - 1
    red = _reduce_axes(a.ndim, axis)
    lo = np.minimum(a.min(axis=red, keepdims=True), 0.0)
    hi = np.maximum(a.max(axis=red, keepdims=True), 0.0)
    if symmetric:
        amax = np.maximum(-lo, hi)
        scale = amax / (qmax / 2.0)
        zp = np.full_like(scale, 2 ** (b - 1))
    else:
        scale = (hi - lo) / qmax
        safe = np.where(scale > 0, scale, 1.0)
        zp = np.clip(np.round(-lo / safe), 0, qmax)
    empty = scale == 0
    zp = np.where(empty, 0.0, zp)
    safe = np.where(empty, 1.0, scale)
    q = np.clip(np.round(a / safe) + zp, 0, qmax)
    q = np.where(empty, 0.0, q).astype(_int_dtype(b))
    zp = zp.astype(np.int64)
    if axis is None:
        scale_out, zp_out = float(scale.reshape(())), int(zp.reshape(()))
    else:
        scale_out, zp_out = scale, zp
    if was_torch:
        q = torch.from_numpy(q)
        if axis is not None:
            scale_out, zp_out = torch.from_numpy(scale_out), torch.from_numpy(zp_out)
    return q, scale_out, zp_out


def dequantize(q, scale, zero_point, *, axis: int | None = None):
    """Map integers back to real values: ``x_hat = scale * (q - zero_point)`` (book Eq. ``quant-affine``).

    Parameters
    ----------
    q : ndarray or torch.Tensor of integers
        Output of :func:`quantize_uniform`.
    scale, zero_point : scalars, or arrays/tensors broadcastable to ``q``
        As returned by :func:`quantize_uniform`. One-dimensional per-channel vectors (PyTorch's
        layout) are accepted together with ``axis``.
    axis : int, optional
        The channel axis of ``q`` when ``scale``/``zero_point`` are 1-D vectors of channel values.

    Returns
    -------
    ndarray or torch.Tensor, float32
        Same kind as ``q``.
    """
    was_torch = isinstance(q, torch.Tensor)
    qa = q.detach().cpu().numpy() if was_torch else np.asarray(q)
    if not (np.issubdtype(qa.dtype, np.integer)) or qa.dtype == bool:
        raise TypeError(f"q must hold integers (quantize_uniform output), got dtype {qa.dtype}")
    s = scale.detach().cpu().numpy() if isinstance(scale, torch.Tensor) else np.asarray(scale)
    z = zero_point.detach().cpu().numpy() if isinstance(zero_point, torch.Tensor) else np.asarray(zero_point)
    s = s.astype(np.float64)
    z = z.astype(np.int64)
    if np.any(s < 0) or not np.all(np.isfinite(s)):
        raise ValueError("scale must be finite and >= 0")
    if axis is not None:
        ax = _check_axis(axis, qa.ndim, "axis")
        shape = [1] * qa.ndim
        shape[ax] = -1
        if s.size not in (1, qa.shape[ax]) or z.size not in (1, qa.shape[ax]):
            raise ValueError(
                f"scale/zero_point must have 1 or {qa.shape[ax]} values along axis {ax}, got {s.size} and {z.size}"
            )
        s, z = s.reshape(shape) if s.size > 1 else s.reshape(()), z.reshape(shape) if z.size > 1 else z.reshape(())
    elif qa.ndim > 1 and (s.ndim == 1 and s.size > 1 or z.ndim == 1 and z.size > 1):
        raise ValueError(
            "1-D per-channel scale/zero_point need axis=...; or pass the keepdims-shaped "
            "values that quantize_uniform returns"
        )
    try:
        out = (s * (qa.astype(np.int64) - z)).astype(np.float32)
    except ValueError as err:
        raise ValueError(f"scale {s.shape} / zero_point {z.shape} do not broadcast to q {qa.shape}") from err
    if out.shape != qa.shape:
        raise ValueError(f"scale {s.shape} / zero_point {z.shape} change the shape of q {qa.shape}")
    return torch.from_numpy(out) if was_torch else out


def fake_quantize(x, n_bits: int, *, symmetric: bool = False, per_channel_axis: int | None = None):
    """Quantize then dequantize: the real values the integers stand for (same kind and shape as ``x``)."""
    q, s, z = quantize_uniform(x, n_bits, symmetric=symmetric, per_channel_axis=per_channel_axis)
    out = dequantize(q, s, z)
    if isinstance(x, torch.Tensor):
        return out.to(x.dtype) if x.is_floating_point() else out
    return out


def quantization_error(x, x_hat) -> float:
    """Relative squared error ``||x - x_hat||^2 / ||x||^2`` (0 when both are 0)."""
    a, _ = _to_numpy(x)
    b, _ = _to_numpy(x_hat, "x_hat")
    if a.shape != b.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {a.shape} and {b.shape}")
    a, b = a.astype(np.float64), b.astype(np.float64)
    den = float(np.sum(a * a))
    num = float(np.sum((a - b) ** 2))
    return 0.0 if den == 0 and num == 0 else num / den if den > 0 else float("inf")


# ---------------------------------------------------------------------------------------------
# XNOR-Net scaling factor
# ---------------------------------------------------------------------------------------------
def xnor_binarize(w, axis: int | None = 0):
    """The XNOR-Net 1-bit approximation ``w ~ alpha * b`` with ``b = sign(w)``, ``alpha = mean |w|``.

    Rastegari et al. 2016, Eq. 4 (book Eq. ``quant-xnor-alpha``): for a fixed ``b = sign(w)`` the
    ``alpha`` minimizing ``||w - alpha b||^2`` is ``b.w / n = mean |w|``, computed per output channel.

    Parameters
    ----------
    w : ndarray or torch.Tensor
        Weights, e.g. ``(out, in)`` for ``nn.Linear`` or ``(out, in, kh, kw)`` for ``nn.Conv2d``.
    axis : int or None, default 0
        The output-channel axis: one ``alpha`` per slice along it. ``None``: one ``alpha`` for the
        whole tensor.

    Returns
    -------
    b : same kind as ``w``, float32
        ``sign(w)`` in ``{-1, +1}`` with ``sign(0) = +1`` (as in ``courselib.binaryconnect``).
    alpha : same kind as ``w``, float32
        Shape ``w.shape`` with 1 on every axis but ``axis`` (broadcasts against ``b``).
    """
    a, was_torch = _to_numpy(w, "w")
    ax = None if axis is None else _check_axis(axis, a.ndim, "axis")
    a = a.astype(np.float64)
    b = np.where(a >= 0, 1.0, -1.0).astype(np.float32)
    alpha = np.abs(a).mean(axis=_reduce_axes(a.ndim, ax), keepdims=True).astype(np.float32)
    if was_torch:
        return torch.from_numpy(b), torch.from_numpy(alpha)
    return b, alpha


# ---------------------------------------------------------------------------------------------
# Models: weight-only fake quantization, sizes, PyTorch int8
# ---------------------------------------------------------------------------------------------
def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The ``nn.Linear`` and ``nn.Conv2d`` modules of ``model`` (the weights that get quantized)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def fake_quantize_weights(
    model: nn.Module, n_bits: int, *, symmetric: bool = False, per_channel: bool = False, method: str = "uniform"
) -> nn.Module:
    """A copy of ``model`` whose Linear/Conv2d weights are replaced by their quantized values.

    Weight-only quantization: the copy still computes in float32, but every weight takes one of
    ``2^n_bits`` values per tensor (or per output channel), so its accuracy is the accuracy of
    the quantized model. Biases stay float32 (they are few; int8 kernels keep them in 32 bits).

    Parameters
    ----------
    model : nn.Module
        Left unchanged.
    n_bits : int
        Bits per weight (``method="uniform"``); must be 1 for ``"sign"`` and ``"xnor"``.
    symmetric : bool, default False
        For ``"uniform"``: see :func:`quantize_uniform`.
    per_channel : bool, default False
        One scale per output channel (axis 0) instead of one per tensor; for ``"xnor"`` one
        ``alpha`` per output channel instead of one per tensor.
    method : {"uniform", "sign", "xnor"}
        ``"uniform"``: :func:`fake_quantize` (book Eq. ``quant-affine``). ``"sign"``: ``sign(w)``
        (book Eq. ``quant-sign``). ``"xnor"``: ``alpha sign(w)`` (book Eq. ``quant-xnor-alpha``).

    Returns
    -------
    nn.Module
        The quantized copy, in eval mode.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    b = _check_bits(n_bits)
    if method != "uniform" and b != 1:
        raise ValueError(f"method={method!r} is a 1-bit method; got n_bits={n_bits}")
    layers = weight_layers(model)
    if not layers:
        raise ValueError("model has no nn.Linear or nn.Conv2d layer to quantize")
    out = copy.deepcopy(model).eval()
    for _name, m in weight_layers(out).items():
        w = m.weight.detach()
        if method == "uniform":
            new = fake_quantize(w, b, symmetric=symmetric, per_channel_axis=0 if per_channel else None)
        elif method == "sign":
            new = torch.where(w >= 0, 1.0, -1.0)
        else:
            sign, alpha = xnor_binarize(w, axis=0 if per_channel else None)
            new = alpha * sign
        with torch.no_grad():
            m.weight.copy_(new.to(w.dtype))
    return out


def _check_backend(backend: str) -> str:
    engines = torch.backends.quantized.supported_engines
    if backend not in engines or backend == "none":
        raise ValueError(f"backend must be one of {[e for e in engines if e != 'none']}, got {backend!r}")
    return backend


@contextlib.contextmanager
def _engine(backend: str):
    """PyTorch's quantized engine set to ``backend`` inside the block, the caller's engine restored after.

    ``torch.backends.quantized.engine`` is process-wide; the conversion needs it (the weights are packed for
    it), running the converted model does not (its packed weights carry their kernels).
    """
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = _check_backend(backend)
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


def quantize_dynamic_int8(model: nn.Module, backend: str = "x86") -> nn.Module:
    """Post-training dynamic int8 quantization of the ``nn.Linear`` layers (``torch.ao.quantization``).

    Weights are quantized once to int8 (symmetric, per tensor); activations are quantized on the
    fly, per batch, from their observed min and max, and the int8 products are accumulated in
    int32 (Jacob et al. 2018, Sec. 2.2-2.4). ``model`` is left unchanged, and so is PyTorch's global
    quantized engine: it is set to ``backend`` during the conversion only (see
    :func:`quantize_static_int8`).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    with _engine(backend), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tq.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def _fusion_groups(model: nn.Module) -> list[list[str]]:
    """Module names to fuse: Linear/Conv followed by BatchNorm and/or ReLU inside a Sequential,
    and top-level ``convK``/``bnK`` pairs (``courselib.models.CourseCNN``)."""
    groups: list[list[str]] = []
    for prefix, mod in model.named_modules():
        if isinstance(mod, nn.Sequential):
            kids = list(mod.named_children())
            i = 0
            while i < len(kids):
                name, m = kids[i]
                if isinstance(m, (nn.Linear, nn.Conv2d)):
                    group = [name]
                    j = i + 1
                    if isinstance(m, nn.Conv2d) and j < len(kids) and isinstance(kids[j][1], nn.BatchNorm2d):
                        group.append(kids[j][0])
                        j += 1
                    if j < len(kids) and isinstance(kids[j][1], nn.ReLU):
                        group.append(kids[j][0])
                        j += 1
                    if len(group) > 1:
                        groups.append([f"{prefix}.{g}" if prefix else g for g in group])
                    i = j
                else:
                    i += 1
    children = dict(model.named_children())
    for name, m in children.items():
        if isinstance(m, nn.Conv2d) and name.startswith("conv"):
            bn = children.get("bn" + name[4:])
            if isinstance(bn, nn.BatchNorm2d):
                groups.append([name, "bn" + name[4:]])
    return groups


def quantize_static_int8(
    model: nn.Module, calibration_X, *, backend: str = "x86", per_channel: bool = True, batch_size: int = 256
) -> nn.Module:
    """Post-training static int8 quantization, eager mode (``torch.ao.quantization``).

    Steps: copy ``model``; wrap it in ``QuantWrapper`` (a ``QuantStub`` quantizes the float input,
    a ``DeQuantStub`` dequantizes the output); fuse Linear/Conv with a following BatchNorm/ReLU;
    attach the backend's default ``qconfig`` (per-channel symmetric int8 weights, affine uint8
    activations with a histogram observer); ``prepare`` inserts observers; run the calibration
    data through; ``convert`` replaces each module by its int8 kernel, with the activation scale
    and zero-point fixed from calibration (Jacob et al. 2018, Sec. 2-3; book Eq. ``quant-affine``).

    Parameters
    ----------
    model : nn.Module
        Float model whose operations all have eager-mode quantized versions (Linear, Conv2d,
        BatchNorm2d, ReLU, MaxPool2d, reshape/flatten): ``courselib.models.MLP`` and ``CourseCNN``.
    calibration_X : array or tensor
        Typical inputs (a few hundred training examples), in the shape the model expects.
    backend : str, default "x86"
        A quantized engine from ``torch.backends.quantized.supported_engines`` ("x86", "fbgemm",
        "qnnpack", "onednn"). PyTorch's process-wide ``torch.backends.quantized.engine`` is set to it
        during the conversion only and restored afterwards: the converted model's weights are packed for
        ``backend`` and run with its kernels whatever the engine is later. A copy of the model
        (``copy.deepcopy``, :func:`courselib.measure.inference_copy`) or a loaded state dict packs its
        weights again for the engine active at that moment: when ``backend`` is not the process's
        engine, set the engine to ``backend`` around such steps.
    per_channel : bool, default True
        Per-output-channel weight scales (the backend default) or one scale per tensor.
    batch_size : int, default 256

    Returns
    -------
    nn.Module
        The int8 model: float tensors in, float tensors out, int8 inside.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_backend(backend)
    X = calibration_X if isinstance(calibration_X, torch.Tensor) else torch.as_tensor(np.asarray(calibration_X))
    if X.ndim < 1 or X.shape[0] == 0:
        raise ValueError("calibration_X must hold at least one example")
    X = X.float()
    with _engine(backend), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inner = copy.deepcopy(model).eval()
        groups = _fusion_groups(inner)
        if groups:
            inner = tq.fuse_modules(inner, groups)
        wrapped = tq.QuantWrapper(inner).eval()
        qconfig = tq.get_default_qconfig(backend)
        if not per_channel:
            qconfig = tq.QConfig(activation=qconfig.activation, weight=tq.default_weight_observer)
        wrapped.qconfig = qconfig
        tq.prepare(wrapped, inplace=True)
        with torch.no_grad():
            for i in range(0, X.shape[0], batch_size):
                wrapped(X[i : i + batch_size])
        tq.convert(wrapped, inplace=True)
    return wrapped


# ---------------------------------------------------------------------------------------------
# Explorer
# ---------------------------------------------------------------------------------------------
def _demo_weight(seed: int = 0) -> np.ndarray:
    """A weight matrix whose 16 output channels have very different ranges, like real layers."""
    rng = np.random.default_rng(seed)
    spread = np.geomspace(0.02, 1.0, 16)[rng.permutation(16)]
    return (rng.standard_normal((16, 64)) * spread[:, None]).astype(np.float32)


def quantization_explorer(
    n_bits: int = 4, per_channel: bool = False, symmetric: bool = False, weight=None, seed: int = 0
):
    """Draw one figure: a weight matrix quantized to ``n_bits``, per tensor or per channel.

    Left: quantized value against original value for the channel with the smallest range and the
    one with the largest (a staircase with ``2^n_bits`` steps at most). Right: relative squared
    error per output channel, sorted by the channel's range.

    Parameters
    ----------
    n_bits : int, 1..16
    per_channel : bool
    symmetric : bool
    weight : 2-D array or tensor, optional
        ``(out, in)`` weights; default: a synthetic matrix whose rows span a 50x range of scales.
    seed : int
        For the synthetic matrix.

    Returns
    -------
    matplotlib.figure.Figure
    """
    W = _demo_weight(seed) if weight is None else _to_numpy(weight, "weight")[0].astype(np.float32)
    if W.ndim != 2:
        raise ValueError(f"weight must be 2-D (out, in), got shape {W.shape}")
    W_hat = fake_quantize(W, n_bits, symmetric=symmetric, per_channel_axis=0 if per_channel else None)
    rng_ch = W.max(1) - W.min(1)
    order = np.argsort(rng_ch)
    err = np.array([quantization_error(W[i], W_hat[i]) if np.any(W[i]) else 0.0 for i in range(W.shape[0])])
    total = quantization_error(W, W_hat)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9.5, 3.4))
    for c, i, lab in (("C0", order[0], "smallest range"), ("C3", order[-1], "largest range")):
        s = np.argsort(W[i])
        m = float(np.abs(W[i]).max()) or 1.0
        ax0.plot(W[i][s] / m, W_hat[i][s] / m, drawstyle="steps-post", color=c, lw=1.8, label=f"channel {i} ({lab})")
    ax0.plot([-1.05, 1.05], [-1.05, 1.05], color="0.6", lw=0.8, ls="--", label="no error")
    ax0.set_xlabel("original weight / max |w| of its channel")
    ax0.set_ylabel("dequantized weight / max |w|")
    ax0.legend(fontsize=7, loc="upper left")
    scheme = ("symmetric" if symmetric else "affine") + (", per channel" if per_channel else ", per tensor")
    ax0.set_title(f"{n_bits} bit, {scheme}", fontsize=10)
    ax1.bar(np.arange(len(order)), np.maximum(err[order], 1e-12), color="C0" if per_channel else "C1")
    ax1.set_yscale("log")
    ax1.set_ylim(1e-7, 10)
    ax1.set_xlabel("output channel (sorted by range)")
    ax1.set_ylabel("relative squared error")
    ax1.set_title(f"whole matrix: {total:.2e}", fontsize=10)
    fig.tight_layout()
    return fig
