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

Measured in the runtime, with one thread (:func:`set_runtime_threads`) and the book's timing protocol
(:func:`courselib.measure.time_call`, as :func:`courselib.measure.measure_latency`: warm-up calls, then the median
of timed calls, thread CPU clock): :func:`program_latency`; :func:`program_accuracy`; :func:`program_bytes` (the
file on disk); :func:`deploy_model` does everything for one model and one runtime. :func:`study_models` builds
the models of :func:`courselib.compare.trade_off_study` with the same recipes and settings, :func:`runtime_study`
measures each in eager PyTorch and in both runtimes, :func:`study_table` and :func:`plot_runtimes` show the result.

A model the exporter cannot capture -- a Python ``if`` on tensor values, for instance -- raises
:class:`DeployError` naming the cause and the line, instead of a long exporter traceback; an input a loaded
:class:`Program` cannot take (a batch larger than, or different from, the one fixed at export; another shape or
dtype) raises an error that says what the program takes, what came and which export step to revisit, instead of
the runtime's error code. The runtimes' own console messages (cpuinfo's probes of the CPU, thread-pool notices)
are silenced around each call, never at import.

Each part is written in a module of its own and gathered here: ``courselib/_deploy_export.py`` (the model as the
runtime sees it, the exporters and each runtime's int8 flow), ``courselib/_deploy_runtime.py`` (loading, running
and measuring a program) and ``courselib/_deploy_study.py`` (the study). Import from here.

The runtimes are the ``deploy`` extra (``pip install 'ondevice-ml-courselib[deploy]'``); without them, importing
this module raises an ``ImportError`` that says so.
"""

from __future__ import annotations

from . import _deploy_export, _deploy_runtime
from ._deploy_export import (
    DeployError,
    deployable_copy,
    export_executorch,
    export_graph,
    export_onnx,
    get_symmetric_quantization_config,  # noqa: F401 - XNNPACK's own config: lab 7's mutant bank calls it from here
    int8_config,
    onnx_quantization_parameters,
    program_key,
    quantization_parameters,
    quantize_onnx,
    quantize_pt2e,
)
from ._deploy_runtime import (
    Program,
    deploy_model,
    load_program,
    max_output_difference,
    program_accuracy,
    program_bytes,
    program_latency,
    program_outputs,
    set_runtime_threads,
)
from ._deploy_study import plot_runtimes, runtime_study, study_models, study_table

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
    "program_key",
    "PROGRAM_CACHE_ENV",
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
RUNTIMES = _deploy_runtime.RUNTIMES
#: ``None`` (float32), ``"static"`` (int8 weights and activations, calibrated), ``"dynamic"`` (int8
#: weights of the Linear layers, activations quantized per batch at run time).
QUANTIZATIONS = _deploy_export.QUANTIZATIONS
#: The environment variable naming a folder where :func:`export_executorch` keeps lowered programs.
PROGRAM_CACHE_ENV = _deploy_export.PROGRAM_CACHE_ENV
