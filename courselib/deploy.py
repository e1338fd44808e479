"""Deploying to a device: export a trained model to a runtime program, quantize it to int8, run and measure it there.

Implements the chapter ``book/deploying.md`` and ``benchmarks/bench_deploy.py``. Two runtimes:

- **ExecuTorch** (``"executorch"``): :func:`torch.export.export` captures the forward pass as a graph of
  ATen operators; :func:`executorch.exir.to_edge_transform_and_lower` *lowers* it, handing every subgraph
  the XNNPACK delegate supports to XNNPACK (the CPU kernel library of phones and embedded boards);
  ``.to_executorch()`` serializes the result to a ``.pte`` program (a flatbuffer), which the small
  ExecuTorch runtime loads and executes. A ``.pte`` plans its memory for a maximum input shape: the
  batch axis is dynamic up to the batch of the example input.
- **ONNX Runtime** (``"onnxruntime"``): :func:`torch.onnx.export` writes an ONNX graph (batch axis
  dynamic), and ``onnxruntime.InferenceSession`` runs it with its CPU kernels.

int8 (book chapter *From 32 bits to 1*, Jacob et al. 2018):

- ExecuTorch: PT2E static quantization (:func:`quantize_pt2e`): ``prepare_pt2e`` with the
  ``XNNPACKQuantizer`` inserts observers, calibration images run through, ``convert_pt2e`` writes the
  ``quantize``/``dequantize`` pairs that the XNNPACK partitioner turns into int8 kernels. Activations:
  affine int8 per tensor, min-max range (book Eqs. ``quant-scale``, ``quant-zero-point``; the signed zero
  point is the book's ``z - 128``). Weights: symmetric int8 per output channel on the full grid
  ``-128..127`` (book Eq. ``quant-symmetric``, ``q_signed = q - 128``), BatchNorm folded into the
  convolution first (book Eq. ``filters-fold-bn``).
- ONNX Runtime: static QDQ quantization (:func:`quantize_onnx`, ``onnxruntime.quantization.quantize_static``
  with min-max calibration): activations ``uint8`` affine (exactly book Eqs. ``quant-scale`` and
  ``quant-zero-point``); weights ``int8`` symmetric per channel, by default on the reduced grid ``-64..64``
  (``reduce_range``: full-range weights saturate the 16-bit sums of ONNX Runtime's x86 kernels on CPUs
  without VNNI).

Measured in the runtime, with one thread (:func:`set_runtime_threads`) and the protocol of
:func:`courselib.measure.measure_latency` (warm-up calls, then the median of timed calls, thread CPU
clock): :func:`program_latency`; :func:`program_accuracy`; :func:`program_bytes` (the file on disk);
:func:`deploy_model` does everything for one model and one runtime.

A model the exporter cannot capture -- a Python ``if`` on tensor values, for instance -- raises
:class:`DeployError` naming the cause and the line, instead of a long exporter traceback.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import io
import logging
import os
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import compare
from .binaryconnect import BinaryConv2d, BinaryLinear
from .distillation import distill
from .measure import LATENCY_CLOCKS, file_bytes, measure_latency
from .pruning import prune_filters
from .quantization import quantize_dynamic_int8, quantize_static_int8
from .training import evaluate


@contextlib.contextmanager
def _quiet():
    """Silence Python warnings, torch's loggers and native (fd 2) messages of the runtimes' C++ code."""
    loggers = [logging.getLogger(n) for n in ("torch", "torchao", "executorch", "onnxruntime", "root")]
    levels = [lg.level for lg in loggers]
    try:
        fd = os.dup(2)
    except OSError:  # no stderr at all
        fd = None
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        if fd is not None:
            os.dup2(devnull, 2)
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        logging.disable(logging.CRITICAL)  # torch's handlers hold the original stderr: mute them at the source
        # pybind11 may route the C++ std::cerr of the runtimes to Python's sys.stderr instead of fd 2
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)
        if fd is not None:
            os.dup2(fd, 2)
            os.close(fd)
        os.close(devnull)


with _quiet():
    import onnx
    import onnxruntime as ort
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from executorch.exir import to_edge_transform_and_lower
    from executorch.extension.pybindings import portable_lib as _et_lib
    from executorch.runtime import Runtime
    from onnxruntime import quantization as ortq
    from torchao.quantization.pt2e import MinMaxObserver
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e


__all__ = [
    "DeployError",
    "RUNTIMES",
    "QUANTIZATIONS",
    "deployable_copy",
    "export_graph",
    "int8_config",
    "quantize_pt2e",
    "quantization_parameters",
    "export_executorch",
    "export_onnx",
    "quantize_onnx",
    "onnx_quantization_parameters",
    "Program",
    "load_program",
    "set_runtime_threads",
    "program_bytes",
    "program_latency",
    "program_outputs",
    "program_accuracy",
    "max_output_difference",
    "deploy_model",
    "study_models",
    "runtime_study",
    "study_table",
    "plot_runtimes",
]

#: The two runtimes.
RUNTIMES = ("executorch", "onnxruntime")
#: ``None`` (float32), ``"static"`` (int8 weights and activations, calibrated), ``"dynamic"`` (int8
#: weights of the Linear layers, activations quantized per batch at run time).
QUANTIZATIONS = (None, "static", "dynamic")


class DeployError(ValueError):
    """A model (or an argument) that cannot be turned into a runtime program; the message says why."""


# --------------------------------------------------------------------------------------------------
# the model as the runtime sees it
# --------------------------------------------------------------------------------------------------
def deployable_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy in which BinaryConnect layers became ordinary layers holding their test-time weights.

    A runtime executes standard operators. :class:`~courselib.binaryconnect.BinaryLinear` and
    :class:`~courselib.binaryconnect.BinaryConv2d` compute ``sign(w)`` (book Eq. ``bc-sign``) in a custom
    autograd function at every call; the deployed form stores those +-1 weights once, in an ordinary
    ``nn.Linear``/``nn.Conv2d`` (as float32: neither XNNPACK nor ONNX Runtime's CPU kernels have a 1-bit
    weight type). Layers with ``eval_weights="real"`` keep their real weights.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    out = copy.deepcopy(model).eval()
    for name, mod in list(out.named_modules()):
        if isinstance(mod, (BinaryLinear, BinaryConv2d)):
            with torch.no_grad():
                w = mod.binary_weight().detach().clone()
            if isinstance(mod, BinaryLinear):
                new = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None)
            else:
                new = nn.Conv2d(
                    mod.in_channels,
                    mod.out_channels,
                    mod.kernel_size,
                    stride=mod.stride,
                    padding=mod.padding,
                    dilation=mod.dilation,
                    groups=mod.groups,
                    bias=mod.bias is not None,
                    padding_mode=mod.padding_mode,
                )
            with torch.no_grad():
                new.weight.copy_(w)
                if mod.bias is not None:
                    new.bias.copy_(mod.bias)
            parent_name, _, child = name.rpartition(".")
            parent = out.get_submodule(parent_name) if parent_name else out
            setattr(parent, child, new.eval())
    return out


def _as_input(x, name: str = "example_input") -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor or a NumPy array, got {type(x).__name__}")
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"{name} must have a batch axis with at least one example, got shape {tuple(x.shape)}")
    return x.detach().float().contiguous()


def _user_frame(err: BaseException, model: nn.Module) -> str:
    """``file:line: code`` of the deepest traceback frame inside the model's own source, if any."""
    try:  # the file of the forward method (a notebook cell has a file of its own too)
        src = os.path.realpath(inspect.unwrap(type(model).forward).__code__.co_filename)
    except AttributeError:
        src = ""
    found = ""
    e: BaseException | None = err
    while e is not None:
        for fr in traceback.extract_tb(e.__traceback__):
            if src and os.path.realpath(fr.filename) == src:
                found = f"{os.path.basename(fr.filename)}:{fr.lineno}: {(fr.line or '').strip()}"
        e = e.__cause__ or e.__context__
    return found


def export_graph(model: nn.Module, example_input, *, dynamic_batch: bool = False) -> torch.export.ExportedProgram:
    """:func:`torch.export.export` of ``deployable_copy(model)``, with exporter failures turned into :class:`DeployError`.

    The exporter runs the forward pass on symbolic tensors. Python control flow that depends on tensor
    *values* (``if x.sum() > 0:``) has no single graph; the exporter stops with a long traceback. Here
    it becomes one message: the cause, the line of the model's code, and the fix (``torch.where`` or
    ``torch.cond``).

    Parameters
    ----------
    model : nn.Module
    example_input : tensor or ndarray
        The input the program will take. Its batch is the largest the graph accepts when
        ``dynamic_batch``; otherwise the shape is fixed.
    dynamic_batch : bool, default False
        Mark the batch axis dynamic, from 1 to the example's batch (at least 2).
    """
    m = deployable_copy(model)
    x = _as_input(example_input)
    dyn = None
    if dynamic_batch:
        if x.shape[0] < 2:
            x = torch.cat([x, x])
        dyn = ({0: torch.export.Dim("batch", min=1, max=int(x.shape[0]))},)
    try:
        with _quiet():
            return torch.export.export(m, (x,), dynamic_shapes=dyn)
    except Exception as err:  # the exporter raises many types; all are reported the same way
        text = f"{type(err).__name__}: {err}"
        where = _user_frame(err, model)
        data_dependent = any(
            key in text for key in ("data-dependent", "data dependent", "GuardOnDataDependent", "Could not guard")
        )
        if data_dependent:
            cause = (
                "its forward pass takes a Python branch on tensor values (data-dependent control flow), "
                "which has no single graph; compute both branches and select with torch.where, or use torch.cond"
            )
        else:
            cause = "torch.export could not capture its forward pass: " + text.splitlines()[0][:300]
        raise DeployError(
            f"cannot export {type(model).__name__}: {cause}" + (f" (at {where})" if where else "")
        ) from None


# --------------------------------------------------------------------------------------------------
# ExecuTorch: PT2E int8 and .pte programs
# --------------------------------------------------------------------------------------------------
def int8_config(*, per_channel: bool = True, dynamic: bool = False, narrow_weights: bool = False):
    """The XNNPACK quantization config of the book: min-max activations, symmetric per-channel weights.

    Starts from ``get_symmetric_quantization_config`` (XNNPACK's own) and replaces its histogram
    activation observer by a min-max one, so that the activation ranges are those of book Eq.
    ``quant-scale``; the weights use the full int8 grid ``-128..127`` (``narrow_weights=False``), whose
    scale is book Eq. ``quant-symmetric`` ``s = max|w| / 127.5``, or XNNPACK's default narrow grid
    ``-127..127`` (``s = max|w| / 127``).

    Parameters
    ----------
    per_channel : bool, default True
        One weight scale per output channel (else one per tensor).
    dynamic : bool, default False
        Dynamic quantization: activation ranges measured per batch at run time (no calibration).
    narrow_weights : bool, default False
    """
    cfg = get_symmetric_quantization_config(
        is_per_channel=per_channel, is_dynamic=dynamic, weight_qmin=-127 if narrow_weights else -128
    )
    if not dynamic:
        act = dataclasses.replace(cfg.input_activation, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
        cfg = dataclasses.replace(cfg, input_activation=act, output_activation=act)
    return cfg


def _check_quantize(quantize):
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {QUANTIZATIONS}, got {quantize!r}")


def quantize_pt2e(
    model: nn.Module, calibration_X, *, dynamic: bool = False, per_channel: bool = True, batch_size: int = 64
) -> torch.fx.GraphModule:
    """PT2E post-training int8 quantization for XNNPACK: export, insert observers, calibrate, convert.

    Steps (Jacob et al. 2018, Sec. 3; book chapter *From 32 bits to 1*): :func:`export_graph` with a
    dynamic batch axis; ``prepare_pt2e(graph, XNNPACKQuantizer().set_global(int8_config()))`` folds
    BatchNorm into the convolutions and attaches an observer to every weight and activation; the
    calibration images run through it (observers record min and max); ``convert_pt2e`` replaces the
    observers by ``quantize``/``dequantize`` pairs with the scales and zero points of book Eqs.
    ``quant-scale``/``quant-zero-point`` (activations) and ``quant-symmetric`` (weights). The result still
    computes in float (it simulates int8); lowering turns each pair around a convolution or a Linear
    into one int8 XNNPACK kernel.

    Parameters
    ----------
    model : nn.Module
        A float model (BinaryConnect layers are replaced by their test-time weights first).
    calibration_X : array or tensor
        A few hundred typical inputs (training images, never test images). Ignored when ``dynamic``
        (one batch is still needed for the shapes).
    dynamic, per_channel : bool
        See :func:`int8_config`.
    batch_size : int, default 64
        Calibration batch size.

    Returns
    -------
    torch.fx.GraphModule
        The converted (quantize-dequantize) graph; :func:`quantization_parameters` lists its numbers.
    """
    X = _as_input(calibration_X, "calibration_X")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    gm = export_graph(model, X[: max(batch_size, 2)], dynamic_batch=True).module()
    quantizer = XNNPACKQuantizer().set_global(int8_config(per_channel=per_channel, dynamic=dynamic))
    with _quiet():
        prepared = prepare_pt2e(gm, quantizer)
        with torch.no_grad():
            for i in range(0, X.shape[0] if not dynamic else min(X.shape[0], batch_size), batch_size):
                prepared(X[i : i + batch_size])
        return convert_pt2e(prepared)


def _const(gm: torch.fx.GraphModule, arg):
    if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
        obj = gm
        for part in str(arg.target).split("."):
            obj = getattr(obj, part)
        return obj.detach().clone()
    return arg


def quantization_parameters(converted: torch.fx.GraphModule) -> list[dict]:
    """The int8 numbers of a PT2E-converted graph (:func:`quantize_pt2e`), in graph order.

    Returns
    -------
    list of dict
        One entry per ``dequantize`` node: ``kind`` (``"weight"`` for a per-channel or constant tensor,
        ``"activation"`` otherwise), ``node`` (the name of the tensor it dequantizes), ``scale`` and
        ``zero_point`` (floats/ints per tensor, 1-D tensors per channel), ``qmin``, ``qmax``, ``axis``
        (per channel) and, for weights, ``q`` (the int8 tensor stored in the program).
    """
    out = []
    for node in converted.graph.nodes:
        if node.op != "call_function" or "dequantize_per" not in str(node.target):
            continue
        src = node.args[0]
        if "per_channel" in str(node.target):
            q, scale, zp, axis, qmin, qmax = (_const(converted, a) for a in node.args[:6])
            out.append(
                {
                    "kind": "weight",
                    "node": str(getattr(src, "name", src)),
                    "scale": scale.double(),
                    "zero_point": zp.long(),
                    "axis": int(axis),
                    "qmin": int(qmin),
                    "qmax": int(qmax),
                    "q": q if isinstance(q, torch.Tensor) else None,
                }
            )
        else:
            q, scale, zp, qmin, qmax = (_const(converted, a) for a in node.args[:5])
            is_const = isinstance(q, torch.Tensor)
            entry = {
                "kind": "weight" if is_const else "activation",
                "node": str(getattr(src, "name", src)),
                "scale": float(scale),
                "zero_point": int(zp),
                "axis": None,
                "qmin": int(qmin),
                "qmax": int(qmax),
            }
            if is_const:
                entry["q"] = q
            out.append(entry)
    return out


def export_executorch(
    model: nn.Module,
    example_input,
    path,
    *,
    quantize: str | None = None,
    calibration_X=None,
    converted: torch.fx.GraphModule | None = None,
) -> Path:
    """Export, lower to XNNPACK and serialize ``model`` to an ExecuTorch ``.pte`` program at ``path``.

    Parameters
    ----------
    model : nn.Module
        A float model.
    example_input : tensor or ndarray
        Fixes the program's input shape; its batch size is the largest the program takes (a batch of
        ``b >= 2`` gives a program for any batch from 1 to ``b``; a batch of 1, a program for batch 1).
    path : str or Path
        Where the ``.pte`` is written (parent folders are created).
    quantize : {None, "static", "dynamic"}
        int8 through :func:`quantize_pt2e` (``"static"`` needs ``calibration_X``).
    calibration_X : array or tensor, optional
    converted : GraphModule, optional
        A graph already returned by :func:`quantize_pt2e` (then ``quantize`` and ``calibration_X`` are
        not used): calibrate once, export one program per batch size.

    Returns
    -------
    Path
        The program file.
    """
    _check_quantize(quantize)
    x = _as_input(example_input)
    if converted is None and quantize == "static" and calibration_X is None:
        raise ValueError("quantize='static' needs calibration_X (a few hundred training inputs)")
    if converted is None and quantize is not None:
        cal = calibration_X if calibration_X is not None else x
        converted = quantize_pt2e(model, cal, dynamic=quantize == "dynamic")
    dynamic = x.shape[0] >= 2
    if converted is not None:
        dyn = ({0: torch.export.Dim("batch", min=1, max=int(x.shape[0]))},) if dynamic else None
        try:
            with _quiet():
                ep = torch.export.export(converted, (x,), dynamic_shapes=dyn)
        except Exception as err:
            raise DeployError(f"cannot export the quantized graph: {type(err).__name__}: {err}") from None
    else:
        ep = export_graph(model, x, dynamic_batch=dynamic)
    with _quiet():
        program = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(program.buffer)
    return path


# --------------------------------------------------------------------------------------------------
# ONNX Runtime
# --------------------------------------------------------------------------------------------------
def export_onnx(model: nn.Module, example_input, path) -> Path:
    """Write ``model`` as an ONNX graph (batch axis dynamic, input ``"x"``, output ``"logits"``).

    Uses :func:`torch.onnx.export` (TorchScript-based exporter, offline); the model is first checked
    with :func:`export_graph`, so that a model no exporter can capture raises :class:`DeployError`.
    """
    m = deployable_copy(model)
    x = _as_input(example_input)
    export_graph(m, x)  # same failure, same message, for both runtimes
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet():
        torch.onnx.export(
            m,
            (x,),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


class _Reader(ortq.CalibrationDataReader):
    """Feeds the calibration images to ONNX Runtime's calibrator, ``batch_size`` at a time."""

    def __init__(self, X: np.ndarray, batch_size: int):
        self._batches = iter([{"x": X[i : i + batch_size]} for i in range(0, len(X), batch_size)])

    def get_next(self):
        return next(self._batches, None)


def quantize_onnx(
    float_path,
    path,
    *,
    quantize: str = "static",
    calibration_X=None,
    per_channel: bool = True,
    reduce_range: bool = True,
    batch_size: int = 64,
) -> Path:
    """int8 ONNX model from a float one: static QDQ (calibrated, min-max) or dynamic.

    Static: ``onnxruntime.quantization.quantize_static`` in QDQ format (``QuantizeLinear`` /
    ``DequantizeLinear`` pairs that ONNX Runtime fuses into int8 kernels), activations ``uint8`` with the
    min-max range of the calibration images (book Eqs. ``quant-scale``, ``quant-zero-point``), weights
    ``int8`` symmetric (per output channel by default, the narrow grid of book Eq. ``quant-symmetric``:
    ``s = max|w| / 127``, or ``/ 64`` with ``reduce_range``). Dynamic: ``quantize_dynamic`` of the
    MatMul/Gemm weights.

    Parameters
    ----------
    float_path, path : str or Path
        The float ONNX model (:func:`export_onnx`) and the file to write.
    quantize : {"static", "dynamic"}, default "static"
    calibration_X : array-like, optional
        Calibration inputs (training data), required for ``"static"``.
    per_channel : bool, default True
        One weight scale per output channel.
    reduce_range : bool, default True
        Quantize the weights on ONNX Runtime's reduced grid ``-64..64`` (``s = max|w| / 64``, about 7 bits)
        instead of ``-127..127``; the activations keep 8 bits. ONNX Runtime's x86 kernels multiply uint8
        activations by int8 weights; on a CPU without an 8-bit dot-product instruction (AVX2 or AVX-512
        without VNNI) they use ``vpmaddubsw``, which adds two products into a *16-bit* sum that saturates at
        32,767: two products of 255 x 127 reach 64,770, so full-range weights silently clip sums and lose
        accuracy, whereas 2 x 255 x 64 = 32,640 fits. With VNNI or AMX (and on ARM) the sums are 32-bit and
        nothing saturates. A program is written once and runs wherever it is shipped, so the default is the
        setting that is right on every x86 CPU (ONNX Runtime's documentation recommends it for machines
        without VNNI); pass ``False`` only for a target known to have an 8-bit dot product
        (:attr:`courselib.measure.Machine.int8_dot_product`). The chapter ``book/deploying.md`` runs both
        on the build machine.
    batch_size : int, default 64
        Calibration batch.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    if quantize not in ("static", "dynamic"):
        raise ValueError(f"quantize must be 'static' or 'dynamic', got {quantize!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet():
        if quantize == "dynamic":
            ortq.quantize_dynamic(
                str(float_path),
                str(path),
                weight_type=ortq.QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Gemm"],
                reduce_range=reduce_range,
            )
            return path
        if calibration_X is None:
            raise ValueError("quantize='static' needs calibration_X (a few hundred training inputs)")
        X = _as_input(calibration_X, "calibration_X").numpy()
        ortq.quantize_static(
            str(float_path),
            str(path),
            _Reader(X, batch_size),
            quant_format=ortq.QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=ortq.QuantType.QUInt8,
            weight_type=ortq.QuantType.QInt8,
            calibrate_method=ortq.CalibrationMethod.MinMax,
            reduce_range=reduce_range,
        )
    return path


def onnx_quantization_parameters(path) -> list[dict]:
    """The int8 numbers of a QDQ ONNX model, one entry per ``DequantizeLinear`` node (graph order).

    Entries as in :func:`quantization_parameters`: ``kind`` (``"weight"`` when the integers are an
    initializer, ``"activation"`` otherwise), ``node``, ``scale``, ``zero_point``, ``axis``, ``q`` (weights).
    """
    graph = onnx.load(str(path)).graph
    init = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    out = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        qname, sname = node.input[0], node.input[1]
        zname = node.input[2] if len(node.input) > 2 else None
        scale, zp = init[sname], init[zname] if zname else np.zeros((), np.int8)
        axis = next((a.i for a in node.attribute if a.name == "axis"), None)
        is_weight = qname in init
        entry = {
            "kind": "weight" if is_weight else "activation",
            "node": qname,
            "scale": scale.astype(np.float64) if scale.ndim else float(scale),
            "zero_point": zp.astype(np.int64) if zp.ndim else int(zp),
            "axis": axis if scale.ndim else None,
            "dtype": str(zp.dtype),
        }
        if is_weight:
            entry["q"] = init[qname]
        out.append(entry)
    return out


# --------------------------------------------------------------------------------------------------
# loading, running, measuring
# --------------------------------------------------------------------------------------------------
def set_runtime_threads(num_threads: int = 1) -> None:
    """Size ExecuTorch's thread pool (XNNPACK's workers); ONNX Runtime sessions get theirs in :func:`load_program`."""
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    if _et_lib._threadpool_get_thread_count() != num_threads:
        _et_lib._unsafe_reset_threadpool(int(num_threads))


class Program:
    """A loaded runtime program: call it with a batch, get the logits as a NumPy array.

    Made by :func:`load_program`. Attributes: ``runtime`` (``"executorch"`` or ``"onnxruntime"``),
    ``path``, ``batch_size`` (the largest batch a ``.pte`` takes; ``None`` for ONNX, whose batch axis
    is unbounded), ``input_shape`` (``.pte``: the shape at the largest batch), ``num_threads``.
    """

    def __init__(self, runtime: str, path: Path, num_threads: int):
        self.runtime, self.path, self.num_threads = runtime, Path(path), num_threads
        with _quiet():
            if runtime == "executorch":
                set_runtime_threads(num_threads)
                self._method = Runtime.get().load_program(self.path).load_method("forward")
                self.input_shape = tuple(self._method.metadata.input_tensor_meta(0).sizes())
                self.batch_size = self.input_shape[0]
            else:
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = num_threads
                opts.inter_op_num_threads = 1
                opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
                opts.log_severity_level = 3
                self._session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
                self.input_shape = None
                self.batch_size = None

    def _prepared(self, x) -> torch.Tensor | np.ndarray:
        t = _as_input(x, "x")
        if self.runtime == "executorch":
            if tuple(t.shape[1:]) != self.input_shape[1:] or t.shape[0] > self.input_shape[0]:
                raise ValueError(
                    f"this .pte program takes inputs of shape (b, {', '.join(map(str, self.input_shape[1:]))}) "
                    f"with b <= {self.input_shape[0]} (fixed at export), got {tuple(t.shape)}"
                )
            return t
        return t.numpy()

    def _run(self, x):
        if self.runtime == "executorch":
            return self._method.execute([x])[0]
        return self._session.run(None, {"x": x})[0]

    def __call__(self, x) -> np.ndarray:
        prepared = self._prepared(x)
        with _quiet():
            out = self._run(prepared)
        return out.numpy() if isinstance(out, torch.Tensor) else np.asarray(out)

    def __repr__(self) -> str:
        return f"Program({self.runtime!r}, {self.path.name!r}, batch_size={self.batch_size})"


def load_program(path, *, num_threads: int = 1) -> Program:
    """Load a ``.pte`` (ExecuTorch) or ``.onnx`` (ONNX Runtime) file written by this module's exporters.

    The runtime is chosen by the suffix. ``num_threads`` (default 1) sizes the runtime's intra-op pool.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no program file at {path}")
    runtime = {".pte": "executorch", ".onnx": "onnxruntime"}.get(path.suffix)
    if runtime is None:
        raise ValueError(f"unknown program type {path.suffix!r}: expected a .pte or an .onnx file")
    return Program(runtime, path, num_threads)


def program_bytes(path) -> int:
    """Size of the program file on disk, in bytes (what a device stores)."""
    return os.path.getsize(Path(path))


def program_latency(program: Program, x, *, repeats: int = 20, warmup: int = 3, clock: str = "thread") -> float:
    """Median seconds of one call of ``program`` on ``x`` in the runtime, one thread.

    The protocol of :func:`courselib.measure.measure_latency`: ``warmup`` untimed calls, then the median
    of ``repeats`` timed ones, with the CPU-time clock of the calling thread by default (with a single
    runtime thread the whole call runs on it: both runtimes execute on the caller when their pool has
    one thread).
    """
    if not isinstance(program, Program):
        raise TypeError(f"program must be a Program (load_program), got {type(program).__name__}")
    if program.num_threads != 1 and clock == "thread":
        raise ValueError("clock='thread' needs a program loaded with num_threads=1")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    if clock not in LATENCY_CLOCKS:
        raise ValueError(f"clock must be one of {LATENCY_CLOCKS}, got {clock!r}")
    tick = time.thread_time if clock == "thread" else time.perf_counter
    prepared = program._prepared(x)
    times = []
    with _quiet():
        if program.runtime == "executorch":
            set_runtime_threads(program.num_threads)
        for _ in range(warmup):
            program._run(prepared)
        for _ in range(repeats):
            t0 = tick()
            program._run(prepared)
            times.append(tick() - t0)
    return float(np.median(times))


def program_outputs(program: Program, X, *, batch_size: int = 256) -> np.ndarray:
    """Logits of ``program`` for every row of ``X``, in batches of ``batch_size`` (at most the program's)."""
    Xt = _as_input(X, "X")
    b = min(batch_size, program.batch_size or batch_size)
    return np.concatenate([program(Xt[i : i + b]) for i in range(0, Xt.shape[0], b)])


def program_accuracy(program: Program, X, y, *, batch_size: int = 256) -> float:
    """Share of ``X`` classified as ``y`` by the program (argmax of the runtime's logits)."""
    pred = program_outputs(program, X, batch_size=batch_size).argmax(axis=1)
    y = np.asarray(y)
    if pred.shape[0] != y.shape[0]:
        raise ValueError(f"X has {pred.shape[0]} rows but y has {y.shape[0]}")
    return float((pred == y).mean())


def max_output_difference(program: Program, reference, X) -> float:
    """Largest absolute difference between the program's logits and ``reference(X)`` (an eager module)."""
    Xt = _as_input(X, "X")
    with torch.no_grad():
        ref = deployable_copy(reference)(Xt).numpy() if isinstance(reference, nn.Module) else np.asarray(reference)
    return float(np.abs(program_outputs(program, Xt) - ref).max())


def deploy_model(
    model: nn.Module,
    X_test,
    y_test,
    *,
    runtime: str = "executorch",
    quantize: str | None = None,
    calibration_X=None,
    batch_sizes=(1, 64),
    folder=None,
    name: str = "model",
    repeats: int = 20,
    warmup: int = 3,
) -> dict:
    """Export ``model`` to ``runtime``, then measure it there: size, latency per batch size, accuracy.

    Parameters
    ----------
    model : nn.Module
        Float model (quantization happens here, from ``calibration_X``).
    X_test, y_test : arrays
        Test images (in the shape the model takes) and labels.
    runtime : {"executorch", "onnxruntime"}
    quantize : {None, "static", "dynamic"}
    calibration_X : array, optional
        Calibration images for ``quantize="static"``.
    batch_sizes : tuple of int, default (1, 64)
        Latency is timed on the first ``b`` test images for each ``b``; the ExecuTorch program takes
        batches up to the largest.
    folder : path, optional
        Where the program files go (default: a temporary folder, removed afterwards).
    name : str
        File stem.
    repeats, warmup : int
        Latency protocol (:func:`program_latency`).

    Returns
    -------
    dict
        ``runtime``, ``size_bytes`` (the program file), ``latency_ms`` (``{b: median ms}``), ``accuracy``
        (in the runtime), ``path``.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    _check_quantize(quantize)
    X = _as_input(X_test, "X_test")
    if not batch_sizes or any(int(b) < 1 or int(b) > X.shape[0] for b in batch_sizes):
        raise ValueError(f"batch_sizes must be between 1 and the {X.shape[0]} test images, got {batch_sizes}")
    with contextlib.ExitStack() as stack:
        if folder is None:
            folder = stack.enter_context(tempfile.TemporaryDirectory())
        folder = Path(folder)
        if quantize == "static" and calibration_X is None:
            raise ValueError("quantize='static' needs calibration_X")
        bmax = max(int(b) for b in batch_sizes)
        if runtime == "executorch":
            conv = None
            if quantize is not None:
                cal = calibration_X if quantize == "static" else X[:bmax]
                conv = quantize_pt2e(model, cal, dynamic=quantize == "dynamic")
            path = export_executorch(model, X[: max(bmax, 2)], folder / f"{name}.pte", converted=conv)
        else:
            path = export_onnx(model, X[:1], folder / f"{name}_float.onnx")
            if quantize is not None:
                path = quantize_onnx(path, folder / f"{name}_int8.onnx", quantize=quantize, calibration_X=calibration_X)
        prog = load_program(path)
        lat = {int(b): 1e3 * program_latency(prog, X[: int(b)], repeats=repeats, warmup=warmup) for b in batch_sizes}
        return {
            "runtime": runtime,
            "size_bytes": program_bytes(path),
            "latency_ms": lat,
            "accuracy": program_accuracy(prog, X, y_test),
            "path": str(path),
        }


# --------------------------------------------------------------------------------------------------
# the trade-off table of "Putting it together", deployed
# --------------------------------------------------------------------------------------------------
def study_models(train, calibration_X, *, settings: dict | None = None, reference=None, seed: int = 0) -> list[dict]:
    """The models of the trade-off table (``courselib.compare``'s recipes), each in its deployable float form.

    Every entry: ``name``; ``model``, the float model that is exported (int8 rows export the float
    reference and quantize it in the runtime's own flow); ``quantize`` (``None``, ``"static"``,
    ``"dynamic"``); ``eager``, the model PyTorch runs in the chapter *Putting it together* (its
    ``torch.ao`` int8 models for the int8 rows); ``saver``, the file format of its eager size.

    Parameters
    ----------
    train : (X, y)
        Training images (28x28) and labels.
    calibration_X : array
        Calibration images for static int8 (training images).
    settings : dict, optional
        Overrides of :data:`courselib.compare.STUDY`.
    reference : nn.Module, optional
        A trained reference (default :func:`courselib.compare.train_reference`).
    seed : int
    """
    s = {**compare.STUDY, **(settings or {})}
    unknown = set(s) - set(compare.STUDY)
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}; known: {sorted(compare.STUDY)}")
    ref = reference if reference is not None else compare.train_reference(seed, s["reference_epochs"], train)
    calib = np.asarray(calibration_X)
    rows = [
        {"name": "float32 reference", "model": ref, "quantize": None, "eager": ref, "saver": compare.save_dense},
        {
            "name": "int8 dynamic",
            "model": ref,
            "quantize": "dynamic",
            "eager": quantize_dynamic_int8(ref),
            "saver": compare.save_dense,
        },
        {
            "name": "int8 static",
            "model": ref,
            "quantize": "static",
            "eager": quantize_static_int8(ref, calib),
            "saver": compare.save_dense,
        },
    ]
    binary = compare.train_binary(train, epochs=s["binary_epochs"], seed=seed)
    rows.append(
        {
            "name": "BinaryConnect",
            "model": binary,
            "quantize": None,
            "eager": binary,
            "saver": compare.save_packed_binary,
        }
    )
    obd = compare.obd_prune(ref, train, s["obd_amount"], finetune_epochs=s["finetune_epochs"], seed=seed)
    rows.append(
        {
            "name": f"OBD {int(100 * s['obd_amount'])}% pruned",
            "model": obd,
            "quantize": None,
            "eager": obd,
            "saver": compare.save_sparse,
        }
    )
    filt = compare.filter_prune(ref, train, s["filter_amount"], finetune_epochs=s["finetune_epochs"], seed=seed)
    rows.append(
        {
            "name": f"filters {int(100 * s['filter_amount'])}% pruned",
            "model": filt,
            "quantize": None,
            "eager": filt,
            "saver": compare.save_dense,
        }
    )
    student = compare.distill_student(ref, train, channels=s["student_channels"], epochs=s["student_epochs"], seed=seed)
    rows.append(
        {"name": "distilled student", "model": student, "quantize": None, "eager": student, "saver": compare.save_dense}
    )
    # the pipeline of compare.combined_pipeline, kept in float before its last step (int8 in the runtime)
    pruned = copy.deepcopy(student)
    last = [n for n, mod in pruned.named_modules() if isinstance(mod, nn.Conv2d) and mod.groups == 1][-1]
    prune_filters(pruned, last, s["pipeline_amount"])
    distill(pruned, ref, train, epochs=max(1, s["finetune_epochs"]), lr=3e-3, batch_size=32, seed=seed, progress=False)
    pruned.eval()
    rows.append(
        {
            "name": "distill + prune + int8",
            "model": pruned,
            "quantize": "static",
            "eager": quantize_static_int8(pruned, calib),
            "saver": compare.save_dense,
        }
    )
    return rows


def runtime_study(
    entries: list[dict],
    X_test,
    y_test,
    calibration_X,
    *,
    runtimes=RUNTIMES,
    batch_sizes=(1, 64),
    repeats: int = 20,
    warmup: int = 3,
    folder=None,
    log=None,
) -> list[dict]:
    """Every entry of :func:`study_models` in eager PyTorch and in each runtime: size, latency, accuracy.

    Returns
    -------
    list of dict
        One row per (entry, runtime), eager first: ``name``, ``runtime`` (``"eager"``, ``"executorch"``,
        ``"onnxruntime"``), ``size_bytes`` (eager: the file of the entry's ``saver``; runtimes: the
        program file), ``latency_ms`` (``{batch: median ms}``, one thread), ``accuracy``.
    """
    X = _as_input(X_test, "X_test")
    y = np.asarray(y_test)
    say = log or (lambda msg: None)
    rows = []
    with contextlib.ExitStack() as stack:
        if folder is None:
            folder = stack.enter_context(tempfile.TemporaryDirectory())
        for i, e in enumerate(entries):
            eager = e["eager"].eval()
            lat = {int(b): 1e3 * measure_latency(eager, X[:b], repeats=repeats, warmup=warmup) for b in batch_sizes}
            rows.append(
                {
                    "name": e["name"],
                    "runtime": "eager",
                    "size_bytes": file_bytes(eager, e["saver"]),
                    "latency_ms": lat,
                    "accuracy": float(evaluate(eager, (X, y))["accuracy"]),
                }
            )
            for rt in runtimes:
                r = deploy_model(
                    e["model"],
                    X,
                    y,
                    runtime=rt,
                    quantize=e["quantize"],
                    calibration_X=calibration_X,
                    batch_sizes=batch_sizes,
                    folder=Path(folder) / f"{i}",
                    name=rt,
                    repeats=repeats,
                    warmup=warmup,
                )
                rows.append(
                    {"name": e["name"], **{k: r[k] for k in ("runtime", "size_bytes", "latency_ms", "accuracy")}}
                )
            say(f"{e['name']}: done")
    return rows


def study_table(rows: list[dict], batch_sizes=(1, 64)) -> str:
    """The rows of :func:`runtime_study` as one Markdown table (a column group per runtime)."""
    runtimes = list(dict.fromkeys(r["runtime"] for r in rows))
    names = list(dict.fromkeys(r["name"] for r in rows))
    by = {(r["name"], r["runtime"]): r for r in rows}
    head = ["method"]
    for rt in runtimes:
        head += [f"{rt} KB"] + [f"{rt} ms (batch {b})" for b in batch_sizes] + [f"{rt} acc."]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in names:
        cells = [n]
        for rt in runtimes:
            r = by.get((n, rt))
            if r is None:
                cells += [""] * (len(batch_sizes) + 2)
                continue
            cells += [f"{r['size_bytes'] / 1000:.1f}"]
            cells += [f"{r['latency_ms'][int(b)]:.3f}" for b in batch_sizes]
            cells += [f"{100 * r['accuracy']:.1f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_runtimes(rows: list[dict], batch: int = 64, *, ax=None):
    """Grouped bars: latency of a batch of ``batch`` images per method, one bar per runtime (log axis).

    ``rows`` as returned by :func:`runtime_study`. Returns the figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    runtimes = list(dict.fromkeys(r["runtime"] for r in rows))
    names = list(dict.fromkeys(r["name"] for r in rows))
    by = {(r["name"], r["runtime"]): r for r in rows}
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / len(runtimes)
    for j, rt in enumerate(runtimes):
        vals = [by[(n, rt)]["latency_ms"][batch] if (n, rt) in by else np.nan for n in names]
        ax.bar(np.arange(len(names)) + (j - (len(runtimes) - 1) / 2) * width, vals, width, label=rt)
    ax.set_xticks(np.arange(len(names)), names, rotation=25, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel(f"ms per batch of {batch} (1 thread)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.figure.tight_layout()
    return ax.figure
