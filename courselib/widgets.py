"""Interactive explorers for the chapters (ipywidgets), with the same callback used for static figures.

A chapter defines nothing interactive itself: its explorer is ``make_explorer(callback, **controls)``
around a plain courselib function that draws one figure for given parameters. In the HTML book the
widget cell's output is removed and a static call of the same callback stands in for it; in Jupyter
the explorer is live. Tests drive the callbacks directly.
"""

from __future__ import annotations

from collections.abc import Callable

import matplotlib.pyplot as plt

__all__ = ["make_explorer"]


def make_explorer(callback: Callable, **controls):
    """Wrap ``callback`` in an ``ipywidgets.interactive`` with the given controls.

    Parameters
    ----------
    callback : callable
        Draws one figure (matplotlib) for keyword arguments named like the controls.
    **controls
        As for ``ipywidgets.interactive``: ``(min, max[, step])`` tuples give sliders, lists give
        dropdowns, booleans give check boxes, and fixed values can be wrapped in ``ipywidgets.fixed``.

    Returns
    -------
    ipywidgets.interactive
    """
    # lazy: ipywidgets is in the optional `book` extra, not a dependency of courselib
    import ipywidgets as widgets

    if not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")

    def _draw(**kwargs):
        callback(**kwargs)
        plt.show()

    return widgets.interactive(_draw, **controls)
