"""Deploying, the export side: a trained model turned into a runtime program, int8 through each runtime's own flow.

Private to :mod:`courselib.deploy`, which re-exports the public names (:func:`export_executorch`,
:func:`export_onnx`, :func:`quantize_pt2e`, :func:`quantize_onnx`, :class:`DeployError`, ...) and documents the
whole pipeline. This module also holds :func:`_quiet`, the silencer of the runtimes' console messages that the
runtime side (:mod:`courselib._deploy_runtime`) uses too, and the one import of the ``deploy`` extra's libraries
(ExecuTorch, torchao, ONNX, ONNX Runtime): without them, importing it raises an ``ImportError`` that names the
extra to install.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import importlib.metadata
import inspect
import io
import logging
import os
import tempfile
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__ as courselib_version
from .binaryconnect import BinaryConv2d, BinaryLinear
from .measure import conv_like

#: What to install when the runtimes are missing (``pyproject.toml``, ``[project.optional-dependencies]``).
_EXTRA = "pip install 'ondevice-ml-courselib[deploy]'"


class _Captured:
    """What the runtimes' C++ code printed during a :func:`_quiet` block (``text``, set when the block ends)."""

    text = ""


#: Most bytes of native messages kept from one :func:`_quiet` block.
_CAPTURE_BYTES = 1 << 16


@contextlib.contextmanager
def _quiet(native: bool = True):
    """Silence Python warnings, torch's loggers and what the runtimes' C++ code prints (cpuinfo's probes of the CPU,
    ``Resetting threadpool``, the runtime's own error lines) during the block, and keep that text.

    The C++ messages reach Python's ``sys.stderr`` (pybind11 routes ``std::cerr`` there) or, with ``native``, file
    descriptor 2, which goes to a temporary file for the duration of the block only (restored when it ends, even
    after an error). The text is yielded as :class:`_Captured` ``.text`` (set when the block ends), so that a
    failed call can quote the runtime's explanation (``Program._failure``, on the runtime side). Importing this
    module moves no file descriptor: its imports use ``native=False``.
    """
    loggers = [logging.getLogger(n) for n in ("torch", "torchao", "executorch", "onnxruntime", "root")]
    levels = [lg.level for lg in loggers]
    disabled = logging.root.manager.disable  # an enclosing block's setting, restored at the end
    captured, routed = _Captured(), io.StringIO()
    saved = sink = None
    if native:
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all
            saved = None
        if saved is not None:
            try:
                sink = tempfile.TemporaryFile()
                os.dup2(sink.fileno(), 2)
            except OSError:  # no temporary file: leave stderr as it is
                os.close(saved)
                saved = None
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        logging.disable(logging.CRITICAL)  # torch's handlers hold the original stderr: mute them at the source
        # pybind11 routes the C++ std::cerr of the runtimes to Python's sys.stderr instead of fd 2
        with warnings.catch_warnings(), contextlib.redirect_stderr(routed):
            warnings.simplefilter("ignore")
            yield captured
    finally:
        captured.text = routed.getvalue()[:_CAPTURE_BYTES]
        logging.disable(disabled)
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
        if sink is not None:
            try:
                sink.seek(0)
                captured.text += sink.read(_CAPTURE_BYTES).decode("utf-8", "replace")
            finally:
                sink.close()


try:
    with _quiet(native=False):  # Python's warnings and loggers only: no file descriptor moves at import
        import onnx
        import onnxruntime as ort  # noqa: F401 - the runtime side takes the runtimes from here (one check)
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from executorch.exir import to_edge_transform_and_lower
        from executorch.extension.pybindings import portable_lib as _et_lib  # noqa: F401 - as ort
        from executorch.runtime import Runtime  # noqa: F401 - as ort
        from onnxruntime import quantization as ortq
        from torchao.quantization.pt2e import MinMaxObserver
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
except ImportError as exc:  # an optional extra: say which one, not only the first module that is missing
    raise ImportError(
        f"courselib.deploy needs the deploy extra (ExecuTorch, torchao, ONNX, ONNX Runtime): {_EXTRA}; {exc}"
    ) from exc

# (documented where it is re-exported)
QUANTIZATIONS = (None, "static", "dynamic")

#: The environment variable naming a folder of lowered ExecuTorch programs (:func:`export_executorch`).
PROGRAM_CACHE_ENV = "COURSELIB_PROGRAM_CACHE"


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
            else:  # the same convolution, as a plain nn.Conv2d
                new = conv_like(mod)
            with torch.no_grad():
                new.weight.copy_(w)
                if mod.bias is not None:
                    new.bias.copy_(mod.bias)
            parent_name, _, child = name.rpartition(".")
            parent = out.get_submodule(parent_name) if parent_name else out
            setattr(parent, child, new.eval())
    return out


def _as_input(x, name: str = "example_input", *, keep_dtype: bool = False) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor or a NumPy array, got {type(x).__name__}")
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"{name} must have a batch axis with at least one example, got shape {tuple(x.shape)}")
    return (x.detach() if keep_dtype else x.detach().float()).contiguous()


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

    Notes
    -----
    Lowering takes seconds per model. When the environment variable ``COURSELIB_PROGRAM_CACHE`` names a
    folder, each lowered program is kept there under a hash of everything it depends on
    (:func:`program_key`) and reused when the same graph and weights are exported again; ``courselib grade``
    uses one per lab for the reference programs the hidden tests export for every submission.
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
    data = _lowered(ep)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def program_key(ep: torch.export.ExportedProgram) -> str:
    """What the lowered program of ``ep`` depends on, hashed: the versions of courselib, torch and ExecuTorch,
    the graph (its operators and their constant arguments, quantization scales included), every node's shape
    and dtype, the batch range, and the bytes of every parameter, buffer and constant.

    Parameters
    ----------
    ep : torch.export.ExportedProgram
        What :func:`export_executorch` lowers (from :func:`export_graph`, or the export of a converted graph).

    Returns
    -------
    str
        A SHA-256 hex digest: the name of the program's file in the folder of ``COURSELIB_PROGRAM_CACHE``.
    """
    h = hashlib.sha256()
    versions = (courselib_version, torch.__version__, importlib.metadata.version("executorch"))
    nodes = [(n.name, str(n.meta.get("val"))) for n in ep.graph.nodes]
    h.update(repr((versions, str(ep.graph), nodes, str(ep.range_constraints))).encode())
    for name, t in sorted({**ep.state_dict, **ep.constants}.items()):
        t = t.detach().cpu().contiguous()
        h.update(repr((name, str(t.dtype), tuple(t.shape))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _lowered(ep: torch.export.ExportedProgram) -> bytes:
    """``ep`` lowered to XNNPACK and serialized (the slow step: seconds per model). With the environment
    variable :data:`PROGRAM_CACHE_ENV` naming a folder, the bytes are kept there under :func:`program_key` and
    reused by every later export of the same graph and weights (a grader exports the same reference
    programs for every submission)."""
    folder = os.environ.get(PROGRAM_CACHE_ENV)
    cached = Path(folder) / f"{program_key(ep)}.pte" if folder else None
    if cached is not None and cached.is_file():
        return cached.read_bytes()
    with _quiet():
        data = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch().buffer
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cached.parent, delete=False, suffix=".tmp") as f:
            f.write(data)
        os.replace(f.name, cached)
    return data


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
