"""Shared helpers for the benchmark scripts: timing (median of repeats) and table printing.

``time_call`` and ``time_calls`` are :func:`courselib.measure.time_call` (the book's one timing protocol:
median wall-clock seconds of ``repeats`` calls after ``warmup`` untimed ones, by default) and
:func:`courselib.measure.time_calls` (several functions in interleaved rounds, for fair ratios),
re-exported for the scripts.

Every number quoted in the book, the README or an issue note is printed by one of these
scripts; run them all with ``make bench`` or one with ``.venv/bin/python benchmarks/run.py NAME``.
"""

from __future__ import annotations

from pathlib import Path

from courselib.measure import time_call, time_calls  # noqa: F401  (re-exported for the scripts)

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"


def shared_mnist_available() -> bool:
    """True when the real MNIST test set sits in ``../shared/data/mnist``."""
    return (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").exists()


def format_table(title: str, headers: list[str], rows: list[list[object]]) -> str:
    """Render a GitHub-flavoured Markdown table (readable in a terminal and pasteable into notes)."""

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = [f"### {title}", ""]
    lines.append("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    return "\n".join(lines) + "\n"


def print_table(title: str, headers: list[str], rows: list[list[object]]) -> None:
    print(format_table(title, headers, rows), flush=True)


def machine_line(num_threads: int | None = None, libraries=("torch", "numpy")) -> str:
    """The *Measured on:* line (:func:`courselib.measure.machine`) printed beside every timed table.

    Chapters that quote a benchmark's table copy this line under it (CONTRIBUTING.md, "Claims").
    """
    from courselib.measure import machine

    return str(machine(num_threads=num_threads, libraries=libraries))
