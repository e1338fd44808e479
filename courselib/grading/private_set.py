"""The compression challenge's private test set (lab 6): graded images no student notebook can read.

Students get :func:`courselib.challenge.challenge_data` -- the 1,257 images of the digits *training*
split (1,000 to train, 257 to validate) at 28x28. The leaderboard scores every submission on a set the
student edition does not contain and cannot reproduce, declared by the instructor in the course
settings (``labs/course.toml``, never published: ``tools/edition.py`` keeps it out of the student
edition, and nbgrader never releases it since it sits beside ``source/``)::

    [labs.lab06_challenge]
    test_seed = 123456789        # a secret: the set is generated at grading time from it
    # or
    test_set = "private/lab06_test.npz"   # a file of the instructor's (arrays X (n, 28, 28) in [0, 1], y)

``test_seed`` builds :func:`perturbed_digits`: each of the 540 images of the digits *test* split (disjoint
from the students' training split) moved by its own random affine map -- a rotation of up to 8 degrees,
a scaling by up to 6 percent and a shift of up to one pixel, bilinear at 28x28 -- and the set shuffled,
all drawn from the secret seed. Without the seed the graded images cannot be regenerated; the
students' splits never contain them. ``test_set`` is for an instructor who has images of their own
(e.g. digits written by the class): no student-side code can read that file either, since graded
notebooks run in a sandbox that sees neither the course folder nor the repository.

:func:`private_test_set` reads the setting; without it grading refuses with a message that says what
to add (there is no public fallback: scoring on the public split would reward tuning on it).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data import load_dataset
from .course import GradingError, find_course_dir, lab_settings

__all__ = ["IMAGE_SIZE", "perturbed_digits", "load_test_set", "private_test_set"]

IMAGE_SIZE = 28
#: Largest rotation (degrees), relative scaling and shift (pixels at 28x28) of :func:`perturbed_digits`.
MAX_ROTATION, MAX_SCALING, MAX_SHIFT = 8.0, 0.06, 1.0
#: Where the private set may never live (nbgrader releases everything under these).
_PUBLISHED_DIRS = ("source", "release")


def perturbed_digits(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The digits test split at 28x28, each image under its own random affine map drawn from ``seed``.

    Parameters
    ----------
    seed : int
        The secret (``test_seed`` in the course settings). The same seed gives the same set, bit for
        bit, on every machine (``numpy.random.default_rng`` draws, float32 bilinear resampling).

    Returns
    -------
    X : ndarray of float32, shape (540, 28, 28), values in [0, 1]
    y : ndarray of int64, shape (540,)
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__}")
    X, y = load_dataset("digits", "test", image_size=IMAGE_SIZE)
    rng = np.random.default_rng(int(seed))
    n = len(X)
    theta = np.deg2rad(rng.uniform(-MAX_ROTATION, MAX_ROTATION, n))
    scale = rng.uniform(1 - MAX_SCALING, 1 + MAX_SCALING, n)
    shift = rng.uniform(-MAX_SHIFT, MAX_SHIFT, (n, 2)) * 2 / IMAGE_SIZE  # affine_grid works in [-1, 1]
    order = rng.permutation(n)
    A = np.zeros((n, 2, 3))
    A[:, 0, 0] = A[:, 1, 1] = np.cos(theta) / scale
    A[:, 0, 1], A[:, 1, 0] = -np.sin(theta) / scale, np.sin(theta) / scale
    A[:, :, 2] = shift
    grid = F.affine_grid(torch.tensor(A, dtype=torch.float32), (n, 1, IMAGE_SIZE, IMAGE_SIZE), align_corners=False)
    out = F.grid_sample(torch.from_numpy(X)[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    Xp = out[:, 0].clamp(0, 1).numpy()
    return np.ascontiguousarray(Xp[order], dtype=np.float32), y[order].astype(np.int64)


def load_test_set(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an instructor's test set: a ``.npz`` with ``X`` (n, 28, 28) in [0, 1] and integer labels ``y`` in 0..9.

    Loaded with ``allow_pickle=False``; the shapes, range and labels are checked.
    """
    path = Path(path)
    if not path.is_file():
        raise GradingError(f"the private test set {path} does not exist")
    with np.load(path, allow_pickle=False) as z:
        if not {"X", "y"} <= set(z.files):
            raise GradingError(f"{path} must hold arrays X and y, it has {sorted(z.files)}")
        X, y = np.asarray(z["X"], dtype=np.float32), np.asarray(z["y"])
    if X.ndim != 3 or X.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or len(X) == 0:
        raise GradingError(f"{path}: X must have shape (n, {IMAGE_SIZE}, {IMAGE_SIZE}), got {X.shape}")
    if not np.isfinite(X).all() or X.min() < 0 or X.max() > 1:
        raise GradingError(f"{path}: X must hold finite values in [0, 1]")
    if y.shape != (len(X),) or not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() > 9:
        raise GradingError(f"{path}: y must be {len(X)} integer labels in 0..9")
    return np.ascontiguousarray(X), y.astype(np.int64)


def private_test_set(lab: str = "lab06_challenge", course_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """The graded test set the course settings declare for ``lab`` (``test_seed`` or ``test_set``).

    Raises
    ------
    GradingError
        When neither is set (grading refuses rather than score on public data), when both are, or when
        the file is missing, malformed or inside a folder nbgrader publishes (``source/``, ``release/``).
    """
    course = find_course_dir(course_dir)
    settings = lab_settings(lab, course)
    seed, file = settings.get("test_seed"), settings.get("test_set")
    if seed is None and file is None:
        raise GradingError(
            f'no private test set for {lab}: add `test_seed = <a secret integer>` or `test_set = "<file.npz>"` '
            f"to the [labs.{lab}] table of {course / 'course.toml'} (instructor edition only); the challenge "
            "is never scored on data the students can read"
        )
    if seed is not None and file is not None:
        raise GradingError(f"course.toml: labs.{lab} sets both test_seed and test_set; keep one")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise GradingError(f"course.toml: labs.{lab}.test_seed must be an integer, got {seed!r}")
        return perturbed_digits(seed)
    path = Path(file)
    path = (path if path.is_absolute() else course / path).resolve()
    for name in _PUBLISHED_DIRS:
        published = (course / name).resolve()
        if path == published or published in path.parents:
            raise GradingError(f"the private test set {path} is under {published}, which nbgrader gives to students")
    return load_test_set(path)
