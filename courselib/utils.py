"""Small helpers shared by every chapter: seeding, text progress bars.

Progress bars are plain-text ``tqdm`` bars written to ``sys.stdout`` (never the
notebook widget flavour), so they render as text in the HTML book and in CI logs.

:func:`set_seed` seeds the global generators on purpose (a chapter or a lab calls it once, at the top);
library code uses :func:`seeded` instead, which leaves the caller's random stream as it was.

``time_call`` is deprecated here: it is :func:`courselib.measure.time_call`, the book's one timing
protocol, re-exported under its old name (the same function, same defaults: the median wall-clock time
of 7 calls after 1 warm-up call). Import it from :mod:`courselib.measure`.
"""

from __future__ import annotations

import contextlib
import random
import sys
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from tqdm.std import tqdm

from .measure import time_call as time_call  # deprecated alias, kept for old imports (see the module docstring)

__all__ = ["set_seed", "seeded", "progress"]


def set_seed(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global random number generators.

    This replaces the caller's random streams: call it at the top of a script, a chapter or a test, never
    inside a library function (which takes a ``seed`` and uses :func:`seeded` or its own generator).
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's global generator seeded with ``seed``, then give the caller's stream back.

    Inside the block every draw from torch's global generator (weight initialisation, dropout,
    ``torch.rand``) follows from ``seed`` alone; on leaving it, the generator's state is the one it had
    before the block (:func:`torch.random.fork_rng`), so the caller's random stream is neither read nor
    changed. This is how a library function that takes a ``seed`` stays free of global side effects.

    Parameters
    ----------
    seed : int

    Examples
    --------
    >>> _ = torch.manual_seed(1)
    >>> with seeded(0):
    ...     a = torch.rand(2)
    >>> b = torch.rand(2)                     # the caller's stream continues where it was
    >>> _ = torch.manual_seed(1)
    >>> torch.equal(b, torch.rand(2)), torch.equal(a, torch.rand(2, generator=torch.Generator().manual_seed(0)))
    (True, True)
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


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
