"""Small helpers shared by every chapter: seeding, text progress bars, timing.

Progress bars are plain-text ``tqdm`` bars written to ``sys.stdout`` (never the
notebook widget flavour), so they render as text in the HTML book and in CI logs.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch
from tqdm.std import tqdm

__all__ = ["set_seed", "progress", "time_call"]


def set_seed(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global random number generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def progress(
    iterable: Iterable, *, desc: str | None = None, total: int | None = None, disable: bool = False, leave: bool = True
):
    """Wrap ``iterable`` in a text progress bar (``tqdm``) on standard output.

    Parameters
    ----------
    iterable : iterable
        What to iterate over.
    desc : str, optional
        Label shown before the bar.
    total : int, optional
        Number of items, when ``len(iterable)`` is not defined.
    disable : bool, default False
        Silence the bar (tests, nested loops).
    leave : bool, default True
        Keep the finished bar on screen.
    """
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        disable=disable,
        leave=leave,
        file=sys.stdout,
        ascii=True,
        ncols=88,
        mininterval=0.5,
    )


def time_call(fn: Callable[[], object], *, repeats: int = 7, warmup: int = 1) -> float:
    """Median wall-clock time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
