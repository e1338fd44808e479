"""Deploying, the runtime side: a program loaded into ExecuTorch or ONNX Runtime, run and measured there.

Private to :mod:`courselib.deploy`, which re-exports the public names (:class:`Program`, :func:`load_program`,
:func:`program_latency`, :func:`deploy_model`, ...) and documents the whole pipeline. The runtimes come from
:mod:`courselib._deploy_export`, whose import checks the ``deploy`` extra once.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._deploy_export import (
    DeployError,
    Runtime,
    _as_input,
    _check_quantize,
    _et_lib,
    _quiet,
    deployable_copy,
    export_executorch,
    export_onnx,
    ort,
    quantize_onnx,
    quantize_pt2e,
)
from ._timing import _check_timing_args, time_call

# (documented where it is re-exported)
RUNTIMES = ("executorch", "onnxruntime")


def set_runtime_threads(num_threads: int = 1) -> None:
    """Size ExecuTorch's thread pool (XNNPACK's workers); ONNX Runtime sessions get theirs in :func:`load_program`.

    The first call probes the CPU (cpuinfo), whose notices on file descriptor 2 are silenced, as is the pool's own.
    """
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    with _quiet():
        if _et_lib._threadpool_get_thread_count() != num_threads:
            _et_lib._unsafe_reset_threadpool(int(num_threads))


#: ExecuTorch's scalar types (its schema's ``ScalarType``) as torch dtypes.
_ET_DTYPES = {
    0: torch.uint8,
    1: torch.int8,
    2: torch.int16,
    3: torch.int32,
    4: torch.int64,
    5: torch.float16,
    6: torch.float32,
    7: torch.float64,
    11: torch.bool,
    15: torch.bfloat16,
}
#: ONNX Runtime's input types as torch dtypes.
_ORT_DTYPES = {"tensor(float)": torch.float32, "tensor(double)": torch.float64, "tensor(float16)": torch.float16}
#: Native messages that say nothing about a failure: cpuinfo's probes of the CPU, the thread pool's notices.
_NOISE = ("cpuinfo", "threadpool.cpp", "midr", "# of cpus")


def _runtime_says(native: str, limit: int = 4) -> str:
    """The runtime's own lines about a failure (without their ``[file.cpp:line]`` prefix), as one short note."""
    lines = []
    for line in native.splitlines():
        line = line.strip()
        if not line or any(n in line for n in _NOISE):
            continue
        if line.startswith("[") and "] " in line:
            line = line.split("] ", 1)[1].strip()
        if line and line not in lines:
            lines.append(line)
    return "\n  the runtime says: " + " | ".join(lines[:limit]) if lines else ""


def _shape_text(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


class Program:
    """A loaded runtime program: call it with a batch, get the logits as a NumPy array.

    Made by :func:`load_program`. Attributes: ``runtime`` (``"executorch"`` or ``"onnxruntime"``),
    ``path``, ``batch_size`` (the largest batch a ``.pte`` takes; ``None`` for ONNX, whose batch axis
    is unbounded), ``input_shape`` (``.pte``: the shape at the largest batch), ``input_dtype``, ``num_threads``.

    An input the program cannot take raises ``ValueError`` before the runtime sees it, saying what the program
    expects (its shape, fixed or dynamic batch, dtype: all set at export), what came, and the export step to
    revisit; a failure inside the runtime raises ``RuntimeError`` with the same comparison and the runtime's
    own explanation, instead of its bare error code (``method->set_inputs() ... failed with error 0x10``).
    """

    def __init__(self, runtime: str, path: Path, num_threads: int):
        self.runtime, self.path, self.num_threads = runtime, Path(path), num_threads
        self._dynamic: bool | None = None
        self._looked_up = False
        if runtime == "executorch":
            set_runtime_threads(num_threads)
            with open(self.path, "rb") as f:
                head = f.read(8)
            if head[4:6] != b"ET":
                raise DeployError(
                    f"{self.path.name} is not an ExecuTorch program: a .pte file has the identifier 'ET' at byte 4, "
                    f"this one starts with {head!r}; write the bytes of the serialized program, "
                    "to_edge_transform_and_lower(...).to_executorch().buffer"
                )
            failure = None
            with _quiet() as log:
                try:
                    self._method = Runtime.get().load_program(self.path).load_method("forward")
                except RuntimeError as err:
                    failure = err
            if failure is not None:
                raise DeployError(
                    f"the ExecuTorch runtime could not load {self.path.name}: {failure}{_runtime_says(log.text)}"
                ) from None
            meta = self._method.metadata.input_tensor_meta(0)
            self.input_shape = tuple(meta.sizes())
            self.input_dtype = _ET_DTYPES.get(int(meta.dtype()))
            self.batch_size = self.input_shape[0]
        else:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = num_threads
            opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            opts.log_severity_level = 3
            with _quiet():
                self._session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
            first = self._session.get_inputs()[0]
            self._input_name, self._onnx_shape = first.name, tuple(first.shape)
            self.input_dtype = _ORT_DTYPES.get(first.type)
            self.input_shape = None
            self.batch_size = None

    def dynamic_batch(self) -> bool | None:
        """Whether the ``.pte``'s batch axis is dynamic (any batch up to ``batch_size``) or fixed (exactly
        ``batch_size``), read from the program's flatbuffer; ``None`` if it cannot be read (or for ONNX)."""
        if self.runtime != "executorch":
            return None
        if not self._looked_up:
            self._looked_up = True
            try:
                from executorch.exir._serialize._program import deserialize_pte_binary

                with _quiet(native=False):
                    pte = deserialize_pte_binary(self.path.read_bytes())
                plans = getattr(pte, "program", pte).execution_plan
                plan = next((p for p in plans if p.name == "forward"), plans[0])
                self._dynamic = int(plan.values[plan.inputs[0]].val.shape_dynamism) != 0  # 0: STATIC
            except Exception:  # another version of the schema: say less, never fail here
                self._dynamic = None
        return self._dynamic

    def _expects(self) -> str:
        """What the program takes, in words."""
        if self.runtime != "executorch":
            return f"inputs of shape {_shape_text(self._onnx_shape)}"
        rest = ", ".join(map(str, self.input_shape[1:]))
        b = self.batch_size
        batch = {True: f"b <= {b}", False: f"b = {b}", None: f"b <= {b}"}[self.dynamic_batch()]
        return f"inputs of shape (b, {rest}) with {batch} (fixed at export)"

    def _input_problem(self, shape: tuple, dtype) -> str | None:
        """Why the program cannot take an input of ``shape`` and ``dtype`` (``None``: it can)."""
        if self.runtime != "executorch":
            want = self._onnx_shape
            if len(shape) != len(want) or any(isinstance(w, int) and w != g for w, g in zip(want, shape)):
                return (
                    f"this .onnx program takes inputs of shape {_shape_text(want)} (set at export: the example's "
                    f"shape, batch axis dynamic), got {_shape_text(shape)}; pass inputs shaped like the example it "
                    "was exported on, or export again (torch.onnx.export) on an example shaped like your data"
                )
            return None
        want, b, n = self.input_shape, self.batch_size, shape[0]
        if len(shape) != len(want) or shape[1:] != want[1:]:
            hint = ""
            if len(shape) == len(want) - 1 and shape[1:] == tuple(d for i, d in enumerate(want) if i != 1)[1:]:
                hint = f" (your input lacks the axis of size {want[1]} after the batch: x.unsqueeze(1))"
            elif len(shape) == len(want) + 1:
                hint = " (your input has one axis more than the example)"
            return (
                f"this .pte program takes {self._expects()}: the shape of the example it was exported on; "
                f"got {_shape_text(shape)}{hint}. Pass inputs shaped like that example, or export again "
                "(torch.export.export) on an example shaped like your data"
            )
        dynamic = self.dynamic_batch()
        if dynamic is False and n != b:
            images = "image" if b == 1 else "images"
            return (
                f"this .pte program takes exactly {b} {images} per call, b = {b} (fixed at export): it was exported "
                f"on an example of batch {b} with a fixed shape (torch.export.export without dynamic_shapes); got "
                f"a batch of {n}. Export on an example of the batch you pass ({n} rows), call it on exactly {b} "
                f"{'row' if b == 1 else 'rows'} at a time, or export with a dynamic batch axis, dynamic_shapes=({{0: torch.export.Dim("
                f'"batch", min=1, max={max(b, n)})}},), so that any batch up to {max(b, n)} runs'
            )
        if n > b:
            return (
                f"this .pte program takes at most {b} images per call, b <= {b} (fixed at export): its batch axis is "
                f"dynamic up to the batch of the example it was exported on; got a batch of {n}. Run the input in "
                f"slices of at most {b} rows (X[i : i + {b}]), or export on an example of {n} rows"
            )
        if self.input_dtype not in (None, torch.float32) and dtype != self.input_dtype:
            return (
                f"this .pte program takes {str(self.input_dtype).replace('torch.', '')} inputs (the dtype of the "
                f"example it was exported on), got {str(dtype).replace('torch.', '')}: export on a float32 example "
                "(example.float(): XNNPACK's float kernels are float32), or cast the input to the program's dtype"
            )
        return None

    def _prepared(self, x) -> torch.Tensor | np.ndarray:
        t = _as_input(x, "x", keep_dtype=True)
        problem = self._input_problem(tuple(t.shape), t.dtype)
        if problem is not None:
            raise ValueError(problem)
        t = t.to(self.input_dtype or torch.float32)
        return t if self.runtime == "executorch" else t.numpy()

    def _run(self, x):
        if self.runtime == "executorch":
            return self._method.execute([x])[0]
        return self._session.run(None, {self._input_name: x})[0]

    def _failure(self, x, err: BaseException, native: str) -> RuntimeError:
        """A runtime failure on the input ``x`` as a message a reader can act on (what the program takes, what
        came, the runtime's own lines), instead of the bare error code."""
        name = "ExecuTorch" if self.runtime == "executorch" else "ONNX Runtime"
        dtype = str(getattr(x, "dtype", "")).replace("torch.", "")
        text = (
            f"the {name} runtime failed on an input of shape {_shape_text(tuple(x.shape))} ({dtype}); this program "
            f"takes {self._expects()}. The runtime's error: {str(err).strip()[:300]}"
        )
        if "static tensor" in native:
            text += (
                f". Its batch is fixed at {self.batch_size}: export with a dynamic batch axis "
                "(dynamic_shapes), or pass batches of exactly that size"
            )
        return RuntimeError(text + _runtime_says(native))

    def _execute(self, prepared):
        failure = None
        with _quiet() as log:
            try:
                out = self._run(prepared)
            except Exception as err:  # the runtimes raise RuntimeError and their own classes
                failure = err
        if failure is not None:
            raise self._failure(prepared, failure, log.text) from None
        return out

    def __call__(self, x) -> np.ndarray:
        out = self._execute(self._prepared(x))
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

    The book's timing protocol (:func:`courselib.measure.time_call`, as in
    :func:`courselib.measure.measure_latency`): ``warmup`` untimed calls, then the median of ``repeats`` timed
    ones, with the CPU-time clock of the calling thread by default (with a single runtime thread the whole call
    runs on it: both runtimes execute on the caller when their pool has one thread).
    """
    if not isinstance(program, Program):
        raise TypeError(f"program must be a Program (load_program), got {type(program).__name__}")
    if program.num_threads != 1 and clock == "thread":
        raise ValueError("clock='thread' needs a program loaded with num_threads=1")
    _check_timing_args(repeats, warmup, None, clock)  # before the runtime runs: its own errors are said below
    prepared = program._prepared(x)
    if program.runtime == "executorch":
        set_runtime_threads(program.num_threads)
    failure = None
    with _quiet() as log:
        try:
            seconds = time_call(lambda: program._run(prepared), repeats=repeats, warmup=warmup, clock=clock)
        except Exception as err:  # said as a call of the program would say it
            failure = err
    if failure is not None:
        raise program._failure(prepared, failure, log.text) from None
    return float(seconds)


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
