"""The class compression challenge (lab 6): a safe submission format, a published score, a leaderboard.

Students receive a trained reference model (:func:`train_reference`) and hand in a compressed model
as a folder with exactly two files:

- ``model.json`` -- ``{"format": "courselib-challenge/v1", "arch": NAME, "arch_kwargs": {...},
  "runtime": "float32" | "int8"}``. ``NAME`` is one of the allow-listed constructors of
  :data:`ARCHS` (courselib's own models); ``arch_kwargs`` are plain JSON values checked against
  bounds before anything is built.
- ``model.safetensors`` -- the weights, a plain tensor format (no pickle, no code). Every entry of
  the model's ``state_dict()`` is stored either as is (float32 or float16), or, for the weights of
  ``Linear``/``Conv2d`` layers, encoded:

  * ``"<key>::int8"`` (int8, the weight's shape) + ``"<key>::scale"`` (float32, one per output
    channel): ``w = scale * q``, symmetric per-channel int8 (:func:`encode_int8`; the narrow grid
    ``-127..127``, ``scale = max|w| / 127``: the narrow-grid variant of book Eq. ``quant-symmetric``);
  * ``"<key>::bits"`` (uint8, packed signs, 8 per byte) + ``"<key>::alpha"`` (float32, one per output
    channel): ``w = alpha * sign`` (XNOR-Net's scaling, book Eq. ``quant-xnor-alpha``; ``alpha = 1``
    for BinaryConnect layers, whose forward pass uses ``sign(w)``).

Loading (:func:`load_submission`) never unpickles and never runs submitted code: it reads the JSON,
checks the architecture and its sizes (the parameter count is computed on PyTorch's ``meta`` device,
without allocating), parses the safetensors header itself and checks every entry's name, dtype and
shape before the bytes are decoded by the ``safetensors`` library. Anything wrong raises
:class:`ChallengeError` with a ``status``: ``"missing"``, ``"invalid-model"`` or ``"too-large"``.

Score (:func:`challenge_score`, published in the lab)::

    score = 0                                           if accuracy < ref_accuracy - margin
    score = sqrt( (ref_size / size) * (ref_latency / latency) )   otherwise

the geometric mean of the compression ratio (bytes of the two files on disk) and the speed-up
(median latency of a batch of :data:`LATENCY_BATCH` test images, ``torch`` threads fixed to 1,
measured in the grader's process right after the reference's). The reference scores 1.0.

:func:`score_submission` scores one folder, :func:`grade_challenge` scores every student of a
submissions folder (``<student>/<lab>/submission/``) and :func:`write_leaderboard` writes the CSV and
a self-contained HTML page.
"""

from __future__ import annotations

import math
import tempfile

import numpy as np
import torch
from torch import nn

from . import _challenge_format
from ._challenge_format import (
    ChallengeError,
    calibration_data,
    encode_int8,
    load_submission,
    save_submission,
    submission_nbytes,
)
from .compare import reference_arch, study_data, train_reference
from .measure import measure_latency
from .training import evaluate

__all__ = [
    "ChallengeError",
    "ARCHS",
    "FORMAT",
    "MARGIN",
    "LATENCY_BATCH",
    "STATUSES",
    "challenge_data",
    "train_reference",
    "reference_arch",
    "calibration_data",
    "encode_int8",
    "challenge_score",
    "save_submission",
    "load_submission",
    "submission_nbytes",
    "score_submission",
    "reference_stats",
    "result_template",
    "record_score",
]

#: The submission format's name and version, the ``"format"`` value of every ``model.json``.
FORMAT = _challenge_format.FORMAT
#: The architectures a submission may declare, each name mapped to its constructor and the kinds of its
#: keyword arguments ("int", "widths", "bool", or a tuple of allowed strings), as
#: ``name -> (constructor, {kwarg: kind})``.
#: Inputs are 28x28 single-channel images and 10 classes, so those kwargs are fixed.
ARCHS = _challenge_format.ARCHS

#: Allowed accuracy drop below the reference (absolute, 0.02 = 2 percentage points).
MARGIN = 0.02
#: Images per timed forward pass.
LATENCY_BATCH = 64
#: Every status a scored folder can get; only "scored" and "below-margin" have numbers.
STATUSES = ("scored", "below-margin", "missing", "invalid-model", "too-large")


# --------------------------------------------------------------------------------------------------
# the students' data and the score
# --------------------------------------------------------------------------------------------------
def challenge_data() -> dict:
    """The students' data of the challenge: the digits training split at 28x28, offline.

    Returns ``{"train": (X, y), "val": (X, y)}``: 1000 training and 257 validation images (the
    training and validation splits of :func:`courselib.compare.study_data`). There is no test split
    here: the leaderboard scores on a private test set that only the instructor's grading
    configuration provides (``courselib.grading.private_set``), so no notebook can train or tune
    on it.
    """
    d = study_data()
    return {"train": d["train"], "val": d["val"]}


def challenge_score(
    accuracy: float,
    size_bytes: float,
    latency_s: float,
    ref_accuracy: float,
    ref_size_bytes: float,
    ref_latency_s: float,
    margin: float = MARGIN,
) -> float:
    """The published score: 0 below the margin, else ``sqrt(size ratio * speed-up)`` (see the module doc).

    ``accuracy < ref_accuracy - margin`` scores 0; otherwise the score is the geometric mean of
    ``ref_size_bytes / size_bytes`` and ``ref_latency_s / latency_s``, so the reference itself
    scores 1 and a model 4x smaller and 4x faster scores 4.
    """
    vals = dict(
        accuracy=accuracy,
        size_bytes=size_bytes,
        latency_s=latency_s,
        ref_accuracy=ref_accuracy,
        ref_size_bytes=ref_size_bytes,
        ref_latency_s=ref_latency_s,
        margin=margin,
    )
    for k, v in vals.items():
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v):
            raise ValueError(f"{k} must be a finite number, got {v!r}")
    for k in ("size_bytes", "latency_s", "ref_size_bytes", "ref_latency_s"):
        if vals[k] <= 0:
            raise ValueError(f"{k} must be > 0, got {vals[k]!r}")
    for k in ("accuracy", "ref_accuracy", "margin"):
        if not 0 <= vals[k] <= 1:
            raise ValueError(f"{k} must be in [0, 1], got {vals[k]!r}")
    if accuracy < ref_accuracy - margin:
        return 0.0
    return float(math.sqrt((ref_size_bytes / size_bytes) * (ref_latency_s / latency_s)))


# --------------------------------------------------------------------------------------------------
# scoring one submission (students score theirs on the validation split, the grader on the test set)
# --------------------------------------------------------------------------------------------------
def _measure(model, X_test, y_test, latency_batch, repeats):
    acc = evaluate(model, (X_test, y_test))["accuracy"]
    x = torch.as_tensor(np.asarray(X_test[:latency_batch]), dtype=torch.float32)
    lat = measure_latency(model, x, repeats=repeats, warmup=3, num_threads=1)
    return acc, lat


def reference_stats(reference, X_test, y_test, latency_batch, repeats) -> dict:
    if isinstance(reference, dict):
        return reference
    if not isinstance(reference, nn.Module):
        raise TypeError(f"reference must be an nn.Module or a dict of its stats, got {type(reference).__name__}")
    arch, kw = reference_arch()
    with tempfile.TemporaryDirectory() as tmp:
        save_submission(reference, tmp, arch, kw)
        size = submission_nbytes(tmp)
    acc, lat = _measure(reference, X_test, y_test, latency_batch, repeats)
    return {"accuracy": acc, "size_bytes": size, "latency_s": lat}


def score_submission(
    folder, X_test, y_test, reference, *, margin: float = MARGIN, latency_batch: int = LATENCY_BATCH, repeats: int = 20
) -> dict:
    """Load, measure and score one submission against the reference, in this process.

    Parameters
    ----------
    folder : path
        The submission (``model.json`` + ``model.safetensors``).
    X_test, y_test : arrays
        The grader's test images (n, 28, 28) and labels.
    reference : nn.Module or dict
        The reference model (saved as float32 with :func:`save_submission` to measure its size, and
        timed now), or its stats ``{"accuracy", "size_bytes", "latency_s"}`` measured earlier in the
        same process.
    margin : float
    latency_batch, repeats : int
        Batch of the timed forward pass and number of timed repeats (median; one torch thread).

    Returns
    -------
    dict
        ``status`` (see :data:`STATUSES`), ``accuracy``, ``size_bytes``, ``latency_ms``, ``score``
        (``None`` unless scored), ``reference`` (the reference stats), ``note``. Never raises on a
        bad submission: a :class:`ChallengeError` becomes its status with ``score=None``.
    """
    ref = reference_stats(reference, X_test, y_test, latency_batch, repeats)
    out = result_template(ref)
    try:
        model, meta = load_submission(folder)
    except ChallengeError as err:
        out.update(status=err.status, note=err.message)
        return out
    size = submission_nbytes(folder)
    try:
        acc, lat = _measure(model, X_test, y_test, latency_batch, repeats)
    except Exception as err:
        out.update(status="invalid-model", note=f"the model fails on the test images: {err}"[:300])
        return out
    return record_score(
        out, acc, size, lat, ref, margin, f"{meta['arch']} {meta['arch_kwargs']} runtime={meta['runtime']}"
    )


def result_template(ref: dict) -> dict:
    """The result of scoring one folder before anything is measured (``ref``: the reference's stats)."""
    return {
        "status": None,
        "accuracy": None,
        "size_bytes": None,
        "latency_ms": None,
        "score": None,
        "reference": {
            "accuracy": ref["accuracy"],
            "size_bytes": ref["size_bytes"],
            "latency_ms": 1e3 * ref["latency_s"],
        },
        "note": "",
    }


def record_score(out: dict, acc: float, size: int, lat: float, ref: dict, margin: float, note: str) -> dict:
    """Fill ``out`` with the measured numbers and the published score (:func:`challenge_score`)."""
    score = challenge_score(acc, size, lat, ref["accuracy"], ref["size_bytes"], ref["latency_s"], margin)
    below = acc < ref["accuracy"] - margin
    out.update(
        status="below-margin" if below else "scored",
        accuracy=acc,
        size_bytes=size,
        latency_ms=1e3 * lat,
        score=score,
        note=note + (f"; accuracy below {ref['accuracy'] - margin:.4f}" if below else ""),
    )
    return out
