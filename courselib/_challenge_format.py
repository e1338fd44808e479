"""The challenge's submission format: ``model.json`` + ``model.safetensors``, saved and loaded safely.

Private to :mod:`courselib.challenge`, which re-exports the public names (:func:`save_submission`,
:func:`load_submission`, :func:`encode_int8`, :data:`ARCHS`, ...); the format itself is described in
that module's documentation. Everything here treats the folder as untrusted input: nothing is
unpickled, no submitted code runs, every size is bounded before anything is allocated.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save_file
from torch import nn

from .binary_codes import pack_codes, unpack_codes
from .binaryconnect import binary_layers, make_binary_cnn
from .data import load_dataset
from .distillation import SeparableCNN
from .models import MLP, CourseCNN
from .quantization import quantize_static_int8
from .utils import seeded

FORMAT = "courselib-challenge/v1"
JSON_NAME, WEIGHTS_NAME = "model.json", "model.safetensors"
MAX_JSON_BYTES = 16 << 10
MAX_WEIGHTS_BYTES = 32 << 20
MAX_HEADER_BYTES = 1 << 20
MAX_PARAMETERS = 2_000_000
_MAX_WIDTH = {"channels": 512, "hidden": 4096}
RUNTIMES = ("float32", "int8")
WEIGHT_BITS = (32, 16, 8, 1)
_DTYPES = {
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "I64": (torch.int64, 8),
}


class ChallengeError(ValueError):
    """A submission that cannot be scored; ``status`` says why (``missing``, ``invalid-model``, ``too-large``)."""

    def __init__(self, status: str, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


# --------------------------------------------------------------------------------------------------
# allow-listed architectures
# --------------------------------------------------------------------------------------------------
def _course_cnn(**kw):
    return CourseCNN(**kw)


def _separable_cnn(**kw):
    return SeparableCNN(**kw)


def _mlp(**kw):
    return MLP(**kw)


def _binary_cnn(**kw):
    return make_binary_cnn(**kw)


# (documented where it is re-exported)
ARCHS: dict[str, tuple[Callable[..., nn.Module], dict]] = {
    "CourseCNN": (_course_cnn, {"channels": "widths2", "in_channels": 1, "n_classes": 10, "image_size": 28}),
    "SeparableCNN": (_separable_cnn, {"channels": "widths", "in_channels": 1, "n_classes": 10}),
    "MLP": (_mlp, {"hidden": "widths0", "in_features": 784, "n_classes": 10}),
    "BinaryCNN": (
        _binary_cnn,
        {
            "mode": ("det", "stoch", "float"),
            "channels": "widths",
            "in_channels": 1,
            "n_classes": 10,
            "image_size": 28,
            "float_first_conv": "bool",
        },
    ),
}


def _check_kwargs(arch, kwargs) -> dict:
    if not isinstance(arch, str) or arch not in ARCHS:
        raise ChallengeError("invalid-model", f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
    if not isinstance(kwargs, dict):
        raise ChallengeError("invalid-model", f"arch_kwargs must be a JSON object, got {type(kwargs).__name__}")
    spec = ARCHS[arch][1]
    unknown = sorted(set(kwargs) - set(spec))
    if unknown:
        raise ChallengeError("invalid-model", f"{arch} does not take {unknown}; allowed: {sorted(spec)}")
    out = {}
    for key, value in kwargs.items():
        kind = spec[key]
        if kind in ("widths", "widths2", "widths0"):
            key_max = _MAX_WIDTH["hidden" if key == "hidden" else "channels"]
            if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value
            ):
                raise ChallengeError("invalid-model", f"{key} must be a list of integers, got {value!r}")
            lo = 0 if kind == "widths0" else (2 if kind == "widths2" else 1)
            hi = 2 if kind == "widths2" else 4
            if not lo <= len(value) <= hi:
                raise ChallengeError("invalid-model", f"{arch}: {key} needs {lo} to {hi} widths, got {len(value)}")
            if any(v < 1 for v in value):
                raise ChallengeError("invalid-model", f"{key} must be positive, got {value!r}")
            if any(v > key_max for v in value):
                raise ChallengeError("too-large", f"{key} {value!r} exceeds the limit of {key_max} per layer")
            out[key] = tuple(value)
        elif kind == "bool":
            if not isinstance(value, bool):
                raise ChallengeError("invalid-model", f"{key} must be true or false, got {value!r}")
            out[key] = value
        elif isinstance(kind, tuple):
            if value not in kind:
                raise ChallengeError("invalid-model", f"{key} must be one of {kind}, got {value!r}")
            out[key] = value
        else:  # a fixed value
            if value != kind or isinstance(value, bool):
                raise ChallengeError("invalid-model", f"{key} is fixed to {kind!r} in the challenge, got {value!r}")
            out[key] = value
    return out


def _build(arch: str, kwargs: dict, device: str = "cpu") -> nn.Module:
    ctor = ARCHS[arch][0]
    try:
        # the weights are replaced by the submission's: initialising them must not draw from the caller's stream
        with seeded(0), torch.device(device):
            return ctor(**kwargs)
    except (ValueError, TypeError) as err:
        raise ChallengeError("invalid-model", f"{arch}({kwargs}) cannot be built: {err}") from None


def _expected_state(arch: str, kwargs: dict) -> tuple[dict, set, int]:
    """Shapes/dtypes of the state dict (built on the meta device: no memory), the encodable keys and
    the number of parameters."""
    meta = _build(arch, kwargs, "meta")
    n_params = sum(p.numel() for p in meta.parameters())
    if n_params > MAX_PARAMETERS:
        raise ChallengeError(
            "too-large", f"{arch}({kwargs}) has {n_params:,} parameters; the limit is {MAX_PARAMETERS:,}"
        )
    state = {k: (tuple(v.shape), v.dtype) for k, v in meta.state_dict().items()}
    return state, set(_weight_keys(meta)), int(n_params)


def _weight_keys(model: nn.Module) -> list[str]:
    return [
        f"{n}.weight" if n else "weight"
        for n, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d)) and m.weight.dim() >= 2
    ]


# --------------------------------------------------------------------------------------------------
# calibration data and the int8 encoding
# --------------------------------------------------------------------------------------------------
def calibration_data(n: int = 256) -> np.ndarray:
    """The public calibration images of the ``"int8"`` runtime: the first ``n`` digits training images, 28x28."""
    return load_dataset("digits", "train", image_size=28)[0][:n]


def encode_int8(w) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: ``w ~ scale[c] * q`` with ``q in [-127, 127]``.

    ``scale[c] = max |w[c]| / 127``; ``q = round(w / scale)`` (ties to even). An all-zero channel gets
    ``scale = 0`` and ``q = 0``. This is the narrow-grid variant of book Eq. ``quant-symmetric``: that
    equation uses the full grid, ``scale = max|w| / 127.5``; the narrow grid ``-127..127`` is what ONNX
    Runtime and XNNPACK's default use (PyTorch's ``qint8`` with ``quant_min=-127``).

    Parameters
    ----------
    w : torch.Tensor or ndarray, at least 1-D, finite
        Axis 0 is the output channel.

    Returns
    -------
    q : torch.Tensor, int8, shape of ``w``
    scale : torch.Tensor, float32, shape ``(w.shape[0],)``
    """
    t = torch.as_tensor(np.asarray(w) if not isinstance(w, torch.Tensor) else w).detach().to(torch.float32)
    if t.dim() < 1 or t.numel() == 0:
        raise ValueError(f"w must be a non-empty tensor with an output-channel axis, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError("w contains NaN or infinite values")
    flat = t.reshape(t.shape[0], -1)
    scale = flat.abs().amax(dim=1) / 127.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(flat / safe[:, None]).clamp(-127, 127).to(torch.int8).reshape(t.shape)
    return q, scale


# --------------------------------------------------------------------------------------------------
# saving
# --------------------------------------------------------------------------------------------------
def _binary_module_names(model) -> set[str]:
    return {f"{n}.weight" if n else "weight" for n in binary_layers(model)}


def save_submission(
    model: nn.Module,
    folder,
    arch: str,
    arch_kwargs: dict | None = None,
    *,
    weight_bits: int = 32,
    runtime: str = "float32",
) -> Path:
    """Write ``model`` as a challenge submission: ``folder/model.json`` and ``folder/model.safetensors``.

    Parameters
    ----------
    model : nn.Module
        Built by ``ARCHS[arch]`` with ``arch_kwargs`` (its ``state_dict`` must match: plain weights,
        call ``torch.nn.utils.prune.remove`` on pruned layers first).
    folder : path
        Created if needed; the two files are overwritten.
    arch : str
        A key of :data:`ARCHS`.
    arch_kwargs : dict
        JSON-serializable constructor arguments (lists for widths).
    weight_bits : {32, 16, 8, 1}
        Encoding of the Linear/Conv2d weights: float32, float16, per-channel int8
        (:func:`encode_int8`) or 1 bit (signs packed 8 per byte and a per-channel ``alpha``; ``alpha = 1``
        for BinaryConnect layers, ``mean |w|`` otherwise). Other entries (biases, BatchNorm) are
        stored as float32 (float16 when ``weight_bits=16``).
    runtime : {"float32", "int8"}
        How the grader runs the model: as loaded, or through
        :func:`courselib.quantization.quantize_static_int8` calibrated on :func:`calibration_data`.

    Returns
    -------
    Path
        ``folder``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if weight_bits not in WEIGHT_BITS:
        raise ValueError(f"weight_bits must be one of {WEIGHT_BITS}, got {weight_bits!r}")
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    arch_kwargs = {} if arch_kwargs is None else arch_kwargs
    try:
        json_kwargs = json.loads(json.dumps(arch_kwargs))
    except (TypeError, ValueError) as err:
        raise ValueError(f"arch_kwargs must be JSON-serializable: {err}") from None
    try:
        kwargs = _check_kwargs(arch, json_kwargs)
        expected, weight_keys, _ = _expected_state(arch, kwargs)
    except ChallengeError as err:
        raise ValueError(err.message) from None
    state = model.state_dict()
    if set(state) != set(expected):
        raise ValueError(
            f"model's state_dict does not match {arch}({json_kwargs}): missing "
            f"{sorted(set(expected) - set(state))}, unexpected {sorted(set(state) - set(expected))}"
        )
    for k, v in state.items():
        if tuple(v.shape) != expected[k][0]:
            raise ValueError(f"{k}: shape {tuple(v.shape)} but {arch}({json_kwargs}) expects {expected[k][0]}")
    binary = _binary_module_names(model)
    other_dtype = torch.float16 if weight_bits == 16 else torch.float32
    tensors = {}
    for k, v in state.items():
        v = v.detach().cpu()
        if not v.is_floating_point():
            tensors[k] = v.to(torch.int64).contiguous()
        elif k in weight_keys and weight_bits == 8:
            q, s = encode_int8(v)
            tensors[k + "::int8"], tensors[k + "::scale"] = q.contiguous(), s.contiguous()
        elif k in weight_keys and weight_bits == 1:
            bits = (v >= 0).reshape(1, -1).numpy().astype(np.uint8)
            tensors[k + "::bits"] = torch.from_numpy(pack_codes(bits).reshape(-1).copy())
            alpha = (torch.ones(v.shape[0]) if k in binary else v.abs().reshape(v.shape[0], -1).mean(dim=1)).to(
                torch.float32
            )
            tensors[k + "::alpha"] = alpha.contiguous()
        elif k in weight_keys and weight_bits == 16:
            tensors[k] = v.to(torch.float16).contiguous()
        else:
            tensors[k] = v.to(other_dtype).contiguous()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / WEIGHTS_NAME))
    meta = {"format": FORMAT, "arch": arch, "arch_kwargs": json_kwargs, "runtime": runtime}
    (folder / JSON_NAME).write_text(json.dumps(meta, indent=1, sort_keys=True))
    return folder


# --------------------------------------------------------------------------------------------------
# loading (untrusted input)
# --------------------------------------------------------------------------------------------------
def _read_regular(path: Path, limit: int, what: str) -> bytes:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ChallengeError("missing", f"no {what} ({path.name}) in {path.parent}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ChallengeError("invalid-model", f"{path.name} must be a regular file (not a link or folder)")
    if st.st_size > limit:
        raise ChallengeError("too-large", f"{path.name} has {st.st_size:,} bytes; the limit is {limit:,}")
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise ChallengeError("too-large", f"{path.name} exceeds {limit:,} bytes")
    return data


def _parse_header(data: bytes) -> dict:
    """Validate the safetensors layout: 8-byte header length, JSON header, contiguous offsets."""
    if len(data) < 8:
        raise ChallengeError(
            "invalid-model", f"{WEIGHTS_NAME} is truncated ({len(data)} bytes): not a safetensors file"
        )
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES:
        raise ChallengeError(
            "invalid-model",
            f"{WEIGHTS_NAME}: declared header of {n:,} bytes (limit {MAX_HEADER_BYTES:,}); not a safetensors file",
        )
    if 8 + n > len(data):
        raise ChallengeError(
            "invalid-model", f"{WEIGHTS_NAME} is truncated: header needs {8 + n} bytes, file has {len(data)}"
        )
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ChallengeError("invalid-model", f"{WEIGHTS_NAME}: header is not JSON; not a safetensors file") from None
    if not isinstance(header, dict):
        raise ChallengeError("invalid-model", f"{WEIGHTS_NAME}: header must be a JSON object")
    header.pop("__metadata__", None)
    body = len(data) - 8 - n
    spans = []
    for key, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise ChallengeError("invalid-model", f"{WEIGHTS_NAME}: malformed entry {key!r}")
        dtype, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _DTYPES:
            raise ChallengeError("invalid-model", f"{key}: dtype {dtype!r} not allowed ({sorted(_DTYPES)})")
        if (
            not isinstance(shape, list)
            or len(shape) > 8
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s for s in shape)
        ):
            raise ChallengeError("invalid-model", f"{key}: bad shape {shape!r}")
        if (
            not isinstance(offs, list)
            or len(offs) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
        ):
            raise ChallengeError("invalid-model", f"{key}: bad data_offsets {offs!r}")
        numel = math.prod(shape)
        if numel > MAX_PARAMETERS:
            raise ChallengeError(
                "too-large", f"{key}: declared shape {shape} holds {numel:,} values (limit {MAX_PARAMETERS:,})"
            )
        if offs[1] - offs[0] != numel * _DTYPES[dtype][1] or not 0 <= offs[0] <= offs[1] <= body:
            raise ChallengeError(
                "invalid-model",
                f"{key}: data_offsets {offs} do not match shape {shape} "
                f"{dtype} inside a body of {body} bytes (truncated file?)",
            )
        spans.append((offs[0], offs[1]))
    spans.sort()
    pos = 0
    for a, b in spans:
        if a != pos:
            raise ChallengeError("invalid-model", f"{WEIGHTS_NAME}: overlapping or gapped tensor data")
        pos = b
    if pos != body:
        raise ChallengeError("invalid-model", f"{WEIGHTS_NAME}: {body - pos} trailing bytes after the tensors")
    return header


def _decode_state(header: dict, data: bytes, expected: dict, weight_keys: set) -> dict:
    want = {}  # entry name -> (dtype names allowed, shape)
    groups = {}
    present = set(header)
    for k, (shape, dt) in expected.items():
        if not dt.is_floating_point:
            want[k] = ({"I64"}, shape)
            groups[k] = ("plain", k)
            continue
        if k in weight_keys and k + "::int8" in present:
            want[k + "::int8"], want[k + "::scale"] = ({"I8"}, shape), ({"F32"}, (shape[0],))
            groups[k] = ("int8", k)
        elif k in weight_keys and k + "::bits" in present:
            want[k + "::bits"] = ({"U8"}, (math.ceil(math.prod(shape) / 8),))
            want[k + "::alpha"] = ({"F32"}, (shape[0],))
            groups[k] = ("bits", k)
        else:
            want[k] = ({"F32", "F16"}, shape)
            groups[k] = ("plain", k)
    missing, extra = sorted(set(want) - present), sorted(present - set(want))
    if missing or extra:
        raise ChallengeError(
            "invalid-model",
            f"weights do not match the declared architecture: missing {missing[:5]}, unexpected {extra[:5]}",
        )
    for name, (dtypes, shape) in want.items():
        info = header[name]
        if info["dtype"] not in dtypes:
            raise ChallengeError("invalid-model", f"{name}: dtype {info['dtype']}, expected one of {sorted(dtypes)}")
        if tuple(info["shape"]) != tuple(shape):
            raise ChallengeError(
                "invalid-model", f"{name}: shape {tuple(info['shape'])}, the architecture needs {tuple(shape)}"
            )
    try:
        raw = st_load(data)
    except Exception as err:
        raise ChallengeError("invalid-model", f"{WEIGHTS_NAME} cannot be decoded: {err}") from None
    state = {}
    for k, (kind, _) in groups.items():
        shape, dt = expected[k]
        if kind == "plain":
            v = raw[k]
        elif kind == "int8":
            v = raw[k + "::int8"].to(torch.float32) * raw[k + "::scale"].reshape(-1, *([1] * (len(shape) - 1)))
        else:
            n = math.prod(shape)
            bits = unpack_codes(raw[k + "::bits"].numpy().reshape(1, -1), n).reshape(shape).astype(np.float32)
            v = torch.from_numpy(bits * 2 - 1) * raw[k + "::alpha"].reshape(-1, *([1] * (len(shape) - 1)))
        v = v.to(dt)
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ChallengeError("invalid-model", f"{k} contains NaN or infinite values")
        state[k] = v
    return state


def load_submission(folder) -> tuple[nn.Module, dict]:
    """Load and validate a submission folder; never unpickles, never runs submitted code.

    Returns
    -------
    model : nn.Module
        In eval mode; for ``runtime="int8"`` already converted by
        :func:`courselib.quantization.quantize_static_int8` (calibrated on :func:`calibration_data`).
    meta : dict
        The validated ``model.json`` content plus ``"n_parameters"``.

    Raises
    ------
    ChallengeError
        ``status="missing"`` (no folder or file), ``"invalid-model"`` (bad JSON, arch not allowed,
        wrong kwargs, not a safetensors file, truncated, wrong names/dtypes/shapes, NaN) or
        ``"too-large"`` (files, declared widths or declared tensors above the limits).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ChallengeError("missing", f"{folder} is not a folder")
    raw_json = _read_regular(folder / JSON_NAME, MAX_JSON_BYTES, "model description")
    try:
        meta = json.loads(raw_json.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ChallengeError("invalid-model", f"{JSON_NAME} is not valid JSON") from None
    if not isinstance(meta, dict):
        raise ChallengeError("invalid-model", f"{JSON_NAME} must hold a JSON object")
    allowed = {"format", "arch", "arch_kwargs", "runtime"}
    if set(meta) - allowed or "arch" not in meta:
        raise ChallengeError(
            "invalid-model", f"{JSON_NAME} must have keys {sorted(allowed)} (arch required), got {sorted(meta)}"
        )
    if meta.get("format", FORMAT) != FORMAT:
        raise ChallengeError("invalid-model", f"format must be {FORMAT!r}, got {meta.get('format')!r}")
    runtime = meta.get("runtime", "float32")
    if runtime not in RUNTIMES:
        raise ChallengeError("invalid-model", f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    kwargs = _check_kwargs(meta["arch"], meta.get("arch_kwargs", {}))
    expected, weight_keys, n_params = _expected_state(meta["arch"], kwargs)
    data = _read_regular(folder / WEIGHTS_NAME, MAX_WEIGHTS_BYTES, "weights file")
    header = _parse_header(data)
    state = _decode_state(header, data, expected, weight_keys)
    model = _build(meta["arch"], kwargs)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ChallengeError("invalid-model", f"state does not load: {str(err)[:300]}") from None
    model.eval()
    if runtime == "int8":
        if meta["arch"] == "BinaryCNN":
            raise ChallengeError("invalid-model", "runtime 'int8' is for CourseCNN, SeparableCNN and MLP")
        model = quantize_static_int8(model, calibration_data()).eval()
    out = {
        "format": FORMAT,
        "arch": meta["arch"],
        "arch_kwargs": meta.get("arch_kwargs", {}),
        "runtime": runtime,
        "n_parameters": n_params,
    }
    return model, out


def submission_nbytes(folder) -> int:
    """Bytes on disk of a submission: ``model.json`` plus ``model.safetensors``."""
    folder = Path(folder)
    return sum(os.lstat(folder / n).st_size for n in (JSON_NAME, WEIGHTS_NAME))
