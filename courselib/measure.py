"""The cost model of the book: parameters, multiply-accumulates, bytes and latency, one name per quantity.

Every chapter that compares models (pruning, distillation, quantization, BinaryConnect, the synthesis
chapter) and every lab and benchmark measures with these functions:

============================  ===========================================================================
quantity                      function
============================  ===========================================================================
parameters                    :func:`count_parameters` (``nonzero=True``: the nonzero ones, masks included)
multiply-accumulates          :func:`count_macs` (book Eq. ``filters-macs``)
bytes of the parameters       :func:`parameter_bytes` (at ``bits_per_weight`` bits each, packed)
bytes of a saved state dict   :func:`state_dict_bytes` (``torch.save`` measured in memory)
bytes of a written file       :func:`file_bytes` (``saver(model, path)``, default ``torch.save`` of the
                              state dict)
latency                       :func:`time_call` (any callable: the timing protocol every timer uses),
                              :func:`time_calls` (several callables side by side),
                              :func:`measure_latency`, :func:`compare_latency` (several models side by
                              side), :func:`layer_times` (per leaf module); :func:`compare_speed` says
                              how two times compare, in words
the machine a time holds for  :func:`machine` (CPU model, the instruction-set features that decide int8
                              and SIMD speed, threads, library versions), shown beside every latency
============================  ===========================================================================

plus the deployment form of a CNN that the latencies are quoted for: :func:`fold_batchnorm` (book Eq.
``filters-fold-bn``) and :func:`inference_copy` (BatchNorm folded, channels-last memory format), and
:func:`conv_like`, the convolution rebuilt with other channels that filter pruning and deployment start from.
"""

from __future__ import annotations

import copy
import functools
import io
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from . import _timing
from ._timing import (
    Machine,
    _check_timing_args,
    _clock,
    _cpu_info,  # noqa: F401 - tests read a cpuinfo text through it
    _torch_threads,
    compare_speed,
    machine,
    time_call,
    time_calls,
)

__all__ = [
    "count_parameters",
    "count_macs",
    "parameter_bytes",
    "state_dict_bytes",
    "file_bytes",
    "measure_latency",
    "compare_latency",
    "layer_times",
    "LATENCY_CLOCKS",
    "LATENCY_STATISTICS",
    "time_call",
    "time_calls",
    "fold_batchnorm",
    "inference_copy",
    "conv_like",
    "Machine",
    "machine",
    "CPU_FEATURES",
    "compare_speed",
]

#: The clocks the timers (:func:`time_call`, :func:`measure_latency`) can read: CPU time of the calling
#: thread, or wall-clock time.
LATENCY_CLOCKS = _timing.LATENCY_CLOCKS
#: The summaries a timer can return of its timed calls (``statistic=``), the median, the minimum, or all of them.
LATENCY_STATISTICS = _timing.LATENCY_STATISTICS
#: The instruction-set features that decide the speed of the book's kernels, as Linux names them in
#: ``/proc/cpuinfo``: on x86, 256-bit SIMD with fused multiply-add (``avx2``, ``fma``), 512-bit SIMD
#: (``avx512f``), 8-bit dot products (``avx512_vnni``, ``avx_vnni``: one instruction multiplies unsigned by
#: signed bytes and adds four products into 32 bits) and AMX tiles (``amx_int8``); on ARM, the 8-bit dot
#: product (``asimddp``) and 8-bit matrix multiply (``i8mm``).
CPU_FEATURES = _timing.CPU_FEATURES


# --------------------------------------------------------------------------------------------------
# parameters and MACs
# --------------------------------------------------------------------------------------------------


def count_parameters(model: nn.Module, *, nonzero: bool = False) -> int:
    """Number of parameters stored by ``model``.

    Parameters
    ----------
    model : torch.nn.Module
    nonzero : bool, default False
        Count only the parameters that are nonzero in effect. For a parameter pruned with
        :mod:`torch.nn.utils.prune` (``weight_orig`` plus a ``weight_mask`` buffer) the effective value
        is ``weight_orig * weight_mask``, so masked weights count as zero.

    Returns
    -------
    int

    Examples
    --------
    >>> count_parameters(torch.nn.Linear(4, 2))
    10
    """
    if not nonzero:
        return sum(p.numel() for p in model.parameters())
    total = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            v = p
            if name.endswith("_orig"):  # pruned: the effective value is orig * mask
                mname, _, attr = name[: -len("_orig")].rpartition(".")
                mask = getattr(model.get_submodule(mname), attr + "_mask", None)
                if mask is not None:
                    v = p * mask
            total += int((v != 0).sum())
    return total


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    r"""Multiply-accumulates of one forward pass on an input of ``input_shape`` (batch included).

    Counted with forward hooks: a ``Conv2d`` costs :math:`N H_\text{out} W_\text{out} C_\text{out}
    (C_\text{in}/g) k_h k_w`, a ``Linear`` :math:`(\text{rows}) \cdot d_\text{out} d_\text{in}`
    (book Eq. ``filters-macs``). Biases, BatchNorm, activations and pooling are not counted
    (they are O(outputs), not O(outputs x inputs)). Pruning masks are ignored: a dense kernel
    multiplies zeros too.

    Parameters
    ----------
    model : torch.nn.Module
    input_shape : sequence of int
        Shape of the input, including the batch dimension.

    Returns
    -------
    int
    """
    if not isinstance(input_shape, (tuple, list, torch.Size)) or not all(
        isinstance(s, (int, np.integer)) and s > 0 for s in input_shape
    ):
        raise ValueError(f"input_shape must be a tuple of positive ints (batch first), got {input_shape!r}")
    total = [0]

    def conv_hook(m, inp, out):
        kh, kw = m.kernel_size
        total[0] += out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m, inp, out):
        total[0] += out.numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    p = next(model.parameters(), None)
    x = torch.zeros(
        tuple(int(s) for s in input_shape),
        dtype=p.dtype if p is not None else torch.float32,
        device=p.device if p is not None else "cpu",
    )
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return int(total[0])


# --------------------------------------------------------------------------------------------------
# bytes
# --------------------------------------------------------------------------------------------------


def parameter_bytes(model: nn.Module, bits_per_weight: float = 32) -> int:
    """Bytes of a torch model's parameters at ``bits_per_weight`` bits each, packed per tensor.

    Each parameter tensor of ``n`` values takes ``ceil(n * bits_per_weight / 8)`` bytes (book Eq.
    ``intro-ratio``: 32 bits for float32, 1 bit for a binary weight).

    Parameters
    ----------
    model : torch.nn.Module
    bits_per_weight : float, default 32
        Must be > 0.

    Returns
    -------
    int

    Examples
    --------
    >>> parameter_bytes(torch.nn.Linear(4, 2)), parameter_bytes(torch.nn.Linear(4, 2), 1)
    (40, 2)
    """
    if bits_per_weight <= 0:
        raise ValueError(f"bits_per_weight must be > 0, got {bits_per_weight}")
    return sum(math.ceil(p.numel() * bits_per_weight / 8) for p in model.parameters())


def state_dict_bytes(obj) -> int:
    """Bytes of ``torch.save`` of a model's state dict (or of a dict), measured in memory.

    Parameters
    ----------
    obj : torch.nn.Module or dict
        A module: ``torch.save(obj.state_dict())``; this works for float models and for the quantized
        models of :func:`courselib.quantization.quantize_dynamic_int8` and
        :func:`~courselib.quantization.quantize_static_int8`, whose int8 weights are saved packed, one
        byte each. A dict (a state dict, or the packed dict of
        :func:`courselib.binaryconnect.pack_binary_weights`): ``torch.save(obj)``. Warnings of
        ``torch.save`` (deprecated quantized storages) are silenced.

    Returns
    -------
    int
        The size of the serialized bytes; :func:`file_bytes` measures a file on disk instead.
    """
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    elif not isinstance(obj, dict):
        raise TypeError(f"obj must be a torch.nn.Module or a dict, got {type(obj).__name__}")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(obj, buf)
    return buf.getbuffer().nbytes


def _save_state_dict(model: nn.Module, path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(model.state_dict(), path)


def file_bytes(model: nn.Module, saver: Callable | None = None) -> int:
    """Size in bytes of the file ``saver(model, path)`` writes, ``path`` being ``model.pt`` in a temporary folder.

    The name is fixed because ``torch.save`` records it inside its zip archive (a longer name, a
    larger file). The folder is removed afterwards.

    Parameters
    ----------
    model : torch.nn.Module
    saver : callable, optional
        ``saver(model, path)`` writes the model to ``path`` in some format (e.g.
        :func:`courselib.compare.save_sparse`). Default: ``torch.save(model.state_dict(), path)``,
        every stored value at its own dtype (int8 models: one byte), warnings silenced.

    Returns
    -------
    int
    """
    if saver is None:
        saver = _save_state_dict
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.pt")
        saver(model, path)
        return os.path.getsize(path)


# --------------------------------------------------------------------------------------------------
# deployment form and latency
# --------------------------------------------------------------------------------------------------


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


def conv_like(conv: nn.Conv2d, **overrides) -> nn.Conv2d:
    """A new :class:`torch.nn.Conv2d` built like ``conv``, with some of its constructor arguments changed.

    Filter pruning rebuilds a convolution with fewer output or input channels
    (:func:`courselib.pruning.remove_filters`, book section ``filters-surgery``), and deployment rebuilds a
    binary convolution as an ordinary one (:func:`courselib.deploy.deployable_copy`); both start here. The
    channels, kernel size, stride, padding, dilation, groups, whether there is a bias, the padding mode, the
    device, the dtype and the training mode are ``conv``'s unless overridden; the weights are freshly
    initialized (copy the ones to keep into them).

    Parameters
    ----------
    conv : torch.nn.Conv2d
        Any convolution (a subclass such as :class:`courselib.binaryconnect.BinaryConv2d` too); not modified.
    **overrides
        Arguments of :class:`torch.nn.Conv2d` to change, e.g. ``out_channels=5``.

    Returns
    -------
    torch.nn.Conv2d
        A plain ``nn.Conv2d`` (not ``conv``'s subclass).

    Examples
    --------
    >>> conv_like(nn.Conv2d(3, 8, 3, padding=1, bias=False), out_channels=5)
    Conv2d(3, 5, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)
    """
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"conv must be a torch.nn.Conv2d, got {type(conv).__name__}")
    args = dict(
        in_channels=conv.in_channels,
        out_channels=conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    unknown = sorted(set(overrides) - set(args))
    if unknown:
        raise TypeError(f"conv_like got {unknown}; it changes only the arguments of nn.Conv2d: {sorted(args)}")
    return nn.Conv2d(**{**args, **overrides}).train(conv.training)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    r"""A copy of ``model`` in eval mode with every BatchNorm2d folded into the convolution before it.

    In eval mode BatchNorm is the affine map :math:`y = \gamma (x - \mu) / \sqrt{\sigma^2 + \epsilon} +
    \beta`, so a convolution followed by it equals one convolution with weights :math:`W_j \gamma_j /
    \sqrt{\sigma_j^2 + \epsilon}` and bias :math:`(b_j - \mu_j) \gamma_j / \sqrt{\sigma_j^2 + \epsilon} +
    \beta_j` (book Eq. ``filters-fold-bn``). This is a standard deployment step (it is what
    :func:`torch.nn.utils.fusion.fuse_conv_bn_eval` computes, and what inference runtimes do); it removes
    BatchNorm's pass over every feature map. The BatchNorm modules become :class:`torch.nn.Identity`.

    A ``BatchNorm2d`` is folded when it is the next leaf module after a ``Conv2d`` in
    ``model.named_modules()`` order with matching channel count (the layout :func:`courselib.pruning.remove_filters`
    also assumes); other BatchNorms are left alone.

    Parameters
    ----------
    model : torch.nn.Module
        Not modified.

    Returns
    -------
    torch.nn.Module
        The folded copy, in eval mode (only valid for inference).
    """
    out = copy.deepcopy(model).eval()
    leaves = [(n, m) for n, m in out.named_modules() if len(list(m.children())) == 0]
    for (cname, conv), (bname, bn) in zip(leaves, leaves[1:]):
        if (
            isinstance(conv, nn.Conv2d)
            and isinstance(bn, nn.BatchNorm2d)
            and bn.track_running_stats
            and bn.num_features == conv.out_channels
            and not hasattr(conv, "weight_orig")
        ):
            _replace_module(out, cname, fuse_conv_bn_eval(conv, bn))
            _replace_module(out, bname, nn.Identity())
    return out


def inference_copy(model: nn.Module, *, fold_bn: bool = True, channels_last: bool = True) -> nn.Module:
    """The deployed form of a CNN: an eval-mode copy with BatchNorm folded (:func:`fold_batchnorm`) and
    the weights in channels-last (NHWC) memory format.

    Channels-last lets oneDNN convolutions and max-pooling read each pixel's channels contiguously; on
    the course machine the NCHW max-pool over conv1's 28x28 maps is several times slower than the NHWC
    one (book section ``filters-latency``). The input must then be channels-last too
    (:func:`measure_latency` with ``deploy=True`` does both).

    Parameters
    ----------
    model : torch.nn.Module
        Not modified.
    fold_bn : bool, default True
        Fold every BatchNorm2d into the convolution before it (:func:`fold_batchnorm`).
    channels_last : bool, default True
        Convert the weights to :data:`torch.channels_last`.

    Returns
    -------
    torch.nn.Module
        The copy, in eval mode.
    """
    out = fold_batchnorm(model) if fold_bn else copy.deepcopy(model).eval()
    if channels_last:
        out = out.to(memory_format=torch.channels_last)
    return out


def _prepare(model, example_input, deploy: bool):
    if not deploy:
        return model, example_input
    x = example_input
    if x.dim() == 3:  # (n, H, W) -> (n, 1, H, W), as CourseCNN does
        x = x.unsqueeze(1)
    if x.dim() != 4:
        raise ValueError(f"deploy=True needs a 4-D (or 3-D image) input, got shape {tuple(example_input.shape)}")
    return inference_copy(model), x.contiguous(memory_format=torch.channels_last)


def measure_latency(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    repeats: int = 20,
    warmup: int = 3,
    num_threads: int = 1,
    clock: str = "thread",
    deploy: bool = False,
) -> float:
    """Median seconds of ``model(example_input)`` in eval mode under ``torch.inference_mode``.

    The protocol of :func:`time_call` (``warmup`` untimed calls, the median of ``repeats`` timed ones), with
    torch's threads fixed and the thread CPU-time clock by default.

    Parameters
    ----------
    model : torch.nn.Module
    example_input : torch.Tensor
    repeats, warmup : int
        Timed calls (the median is returned) and untimed calls before them.
    num_threads : int, default 1
        torch intra-op threads during the measurement (restored afterwards); state it next to
        every number you quote.
    clock : {"thread", "wall"}, default "thread"
        ``"thread"``: CPU time of the calling thread (:func:`time.thread_time`). With one torch thread
        all the work runs on that thread, so this is the latency the model would have on a core of its
        own; it does not count the time the operating system gives the core to other processes, which
        on a shared machine inflates wall-clock times, more for longer calls (a 10 ms forward is
        interrupted more often than a 1 ms one). Requires ``num_threads=1``.
        ``"wall"``: :func:`time.perf_counter`.
    deploy : bool, default False
        Time :func:`inference_copy` of the model (BatchNorm folded, channels-last) on a channels-last
        copy of the input instead of the model as it is.

    Returns
    -------
    float
        Median seconds per call.
    """
    _check_timing_args(repeats, warmup, num_threads, clock)
    return compare_latency(
        {"m": model},
        example_input,
        rounds=1,
        repeats=repeats,
        warmup=warmup,
        num_threads=num_threads,
        clock=clock,
        deploy=deploy,
    )["m"]


def compare_latency(
    models: dict,
    example_input: torch.Tensor,
    *,
    rounds: int = 15,
    repeats: int = 5,
    warmup: int = 3,
    num_threads: int = 1,
    clock: str = "thread",
    deploy: bool = False,
    statistic: str = "median",
) -> dict:
    """Median latency of several models measured side by side: ``rounds`` rounds, each timing every
    model ``repeats`` times in turn, so that a slow spell of a shared machine hits all of them alike
    (:func:`time_calls` of the models' forward passes, in eval mode under ``torch.inference_mode``).

    Parameters
    ----------
    models : dict
        ``{name: torch.nn.Module}``, non-empty.
    example_input : torch.Tensor
    rounds : int, default 15
        Rounds over all models.
    repeats, warmup, num_threads, clock, deploy
        As in :func:`measure_latency` (``repeats`` timed calls per model and round).
    statistic : {"median", "min", "all"}, default "median"
        As in :func:`time_call`: ``"min"`` is the least disturbed call, an estimate of the cost on an idle
        machine, whereas the median includes the typical interference of other processes, e.g. for the
        shared caches. ``"all"`` returns the list of every call's seconds.

    Returns
    -------
    dict
        ``{name: statistic of the seconds over all rounds * repeats calls}``.
    """
    _check_timing_args(repeats, warmup, num_threads, clock, statistic)
    if not isinstance(models, dict) or not models:
        raise ValueError("models must be a non-empty dict {name: module}")
    modes = {k: m.training for k, m in models.items()}
    try:
        with _torch_threads(num_threads):  # inference_copy (deploy=True) runs with the timed threads too
            calls = {}
            for k, m in models.items():
                m.eval()
                calls[k] = functools.partial(*_prepare(m, example_input, deploy))
            with torch.inference_mode():
                return time_calls(
                    calls,
                    rounds=rounds,
                    repeats=repeats,
                    warmup=warmup,
                    clock=clock,
                    statistic=statistic,
                    num_threads=None,  # fixed above
                )
    finally:
        for k, m in models.items():
            m.train(modes[k])


def layer_times(
    model: nn.Module, example_input: torch.Tensor, *, repeats: int = 20, warmup: int = 3, deploy: bool = False
) -> dict:
    """Where the time of a forward pass goes: median thread CPU seconds spent in every leaf module
    (one torch thread), measured with forward pre-/post-hooks.

    A module called several times per forward (CourseCNN's shared ``relu`` and ``pool``) gets one
    entry per call, ``"pool#1"``, ``"pool#2"``. Work done outside modules (``torch.flatten``) is not
    counted.

    Parameters
    ----------
    model : torch.nn.Module
    example_input : torch.Tensor
    repeats, warmup : int
        Timed forward passes (the median per entry is returned) and untimed ones before them.
    deploy : bool, default False
        Time :func:`inference_copy` of the model on a channels-last input.

    Returns
    -------
    dict
        ``{entry: median seconds}`` in execution order.
    """
    _check_timing_args(repeats, warmup, 1, "thread")
    tick = _clock("thread")
    old_threads = torch.get_num_threads()
    was_training = model.training
    torch.set_num_threads(1)
    model.eval()
    handles = []
    try:
        m, x = _prepare(model, example_input, deploy)
        calls: dict[str, int] = {}
        start: dict[str, float] = {}
        record: dict[str, list] = {}

        def pre(name):
            def hook(mod, inp):
                calls[name] = calls.get(name, 0) + 1
                start[name] = tick()

            return hook

        def post(name):
            def hook(mod, inp, out):
                record.setdefault((name, calls[name]), []).append(tick() - start[name])

            return hook

        for name, mod in m.named_modules():
            if len(list(mod.children())) == 0 and not isinstance(mod, nn.Identity):
                handles.append(mod.register_forward_pre_hook(pre(name)))
                handles.append(mod.register_forward_hook(post(name)))
        with torch.inference_mode():
            for i in range(warmup + repeats):
                calls.clear()
                if i == warmup:
                    record.clear()
                m(x)
        counts = {}
        for name, _ in record:
            counts[name] = counts.get(name, 0) + 1
        return {(f"{n}#{c}" if counts[n] > 1 else n): float(np.median(v)) for (n, c), v in record.items()}
    finally:
        for h in handles:
            h.remove()
        torch.set_num_threads(old_threads)
        model.train(was_training)
