"""Where you are in a lab: which graded parts pass their visible tests in this kernel, and the file you hand in.

Every lab's first cell calls :func:`track`, which registers an IPython ``post_run_cell`` hook: from then on
the kernel notes, for each cell it runs, a fingerprint of the cell's source (:func:`fingerprint`), the cell's
id when the notebook app sends one (JupyterLab and Jupyter Notebook do), and the exception the cell raised,
if any (its class and message). Nothing else is kept and nothing is changed: a cell that raises still
raises, so a grader's run of the same notebook is unaffected.

Every lab's last cell calls :func:`summary` with, for each graded part, its points and the fingerprints of
its visible test cell and its answer cells *as released*, and prints one line per part:

- ``passed``: the visible test cell, exactly as released, last ran without an error;
- ``FAILED``: it last raised, shown with the exception's class and message (an ``assert``'s message says
  what the test expected and what came);
- ``not answered``: it, or an answer cell of the part, last raised ``NotImplementedError`` (the
  ``raise NotImplementedError()`` line of the blank answer is still there);
- ``not run``: this kernel has not run it (or ran an edited copy of it: the grader runs the released one).

Then the file: the name the grader expects (``<lab>.ipynb``) and, where the kernel knows its notebook's
path (JupyterLab and Jupyter Notebook tell ipykernel, which sets ``__session__``; VS Code sets
``__vsc_ipynb_file__``; Colab does not), the saved file's name and size against :data:`MAX_NOTEBOOK_BYTES`.

*Kernel > Restart Kernel and Run All Cells* (Colab: *Runtime > Restart session and run all*) runs every
cell from the top, as the grader does, and this summary last: that is how a lab is validated. The hidden
tests, which decide the grade, run only when the lab is graded; the summary never sees them (a cell that
holds hidden tests marks the run as a grader's, and the summary then shows no table).

The module imports nothing beyond the standard library, so the labs' first cell stays fast.

>>> t = Tracker()
>>> t.record("assert 1 + 1 == 2")
>>> t.record("assert 1 + 1 == 3, 'expected 3'", AssertionError("expected 3"))
>>> parts = [("q1_test", 2, (None, fingerprint("assert 1 + 1 == 2")), []),
...          ("q2_test", 3, (None, fingerprint("assert 1 + 1 == 3, 'expected 3'")), []),
...          ("q3_test", 1, (None, fingerprint("assert True")), [])]
>>> print(check("lab99_demo", parts, tracker=t, notebook=None).table())
part     points  visible tests
q1_test       2  passed
q2_test       3  FAILED: AssertionError: expected 3
q3_test       1  not run
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "MAX_NOTEBOOK_BYTES",
    "FINGERPRINT_LENGTH",
    "fingerprint",
    "Run",
    "Tracker",
    "track",
    "tracker",
    "Part",
    "PartResult",
    "Report",
    "check",
    "summary",
]

MAX_NOTEBOOK_BYTES = 32 << 20
"""Largest notebook file the grader accepts (32 MiB), the grader's own limit, copied here because a content
module never imports the grading layer (``tests/test_labcheck.py`` keeps the two equal)."""

FINGERPRINT_LENGTH = 12
"""Hexadecimal digits of a :func:`fingerprint` (48 bits of SHA-256)."""

_HIDDEN = " ".join(("BEGIN", "HIDDEN", "TESTS"))  # built, not written out: the published wheel holds no marker
_MESSAGE_CHARS = 240
_MAX_RUNS = 20_000


def fingerprint(source: str) -> str:
    """A short hash of a cell's source that ignores what notebook apps change: line endings, trailing
    spaces, and blank lines at the start and the end.

    >>> fingerprint("x = 1\\n") == fingerprint("x = 1   \\r\\n\\n") != fingerprint("x = 2")
    True
    >>> len(fingerprint("x = 1")) == FINGERPRINT_LENGTH
    True
    """
    lines = [ln.rstrip() for ln in source.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()[:FINGERPRINT_LENGTH]


def _message(exc: BaseException) -> str:
    """The exception's message, on one line and at most :data:`_MESSAGE_CHARS` characters."""
    try:
        text = str(exc)
    except Exception:  # a broken __str__ must not break the summary
        text = ""
    text = " / ".join(ln.strip() for ln in text.strip().splitlines() if ln.strip())
    return text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 3] + "..."


def _first_line(source: str) -> str:
    """The first line of code of a cell (not a comment), at most 60 characters."""
    line = next((ln.strip() for ln in source.splitlines() if ln.strip() and not ln.strip().startswith("#")), "")
    return line if len(line) <= 60 else line[:57] + "..."


@dataclass(frozen=True)
class Run:
    """One cell the kernel ran: its source's :func:`fingerprint`, its cell id (``None`` when the notebook
    app sends none), the class name and message of the exception it raised (``error`` is ``None`` when it
    raised none), the cell's first line of code when it raised (to point at it), and whether it held hidden
    tests (only a grader's copy of a lab does)."""

    fingerprint: str
    cell_id: str | None = None
    error: str | None = None
    message: str = ""
    hidden: bool = False
    first_line: str = ""

    def describe(self) -> str:
        """``"Error: message"``, and the cell it came from."""
        text = f"{self.error}: {self.message}" if self.message else f"{self.error}"
        return text + (f" (in the cell starting {self.first_line!r})" if self.first_line else "")


class Tracker:
    """The cells a kernel ran, in order (:class:`Run` each); :func:`track` feeds one from IPython's
    ``post_run_cell`` event. At most the last 20,000 runs are kept."""

    def __init__(self):
        self.runs: list[Run] = []

    def record(self, source: str, error: BaseException | None = None, cell_id: str | None = None) -> None:
        """Note that a cell with ``source`` ran and raised ``error`` (``None``: it did not raise)."""
        self.runs.append(
            Run(
                fingerprint=fingerprint(source),
                cell_id=cell_id or None,
                error=None if error is None else type(error).__name__,
                message="" if error is None else _message(error),
                hidden=_HIDDEN in source,
                first_line="" if error is None else _first_line(source),
            )
        )
        if len(self.runs) > _MAX_RUNS:
            del self.runs[: len(self.runs) - _MAX_RUNS]

    def post_run_cell(self, result) -> None:
        """IPython's ``post_run_cell`` callback: record ``result`` (an ``ExecutionResult``). Never raises."""
        try:
            info = getattr(result, "info", None)
            if info is None or getattr(info, "silent", False):
                return
            error = getattr(result, "error_before_exec", None) or getattr(result, "error_in_exec", None)
            self.record(info.raw_cell or "", error, getattr(info, "cell_id", None))
        except Exception:  # a bookkeeping failure must never show up in the student's cell
            pass


_TRACKER: Tracker | None = None  # the kernel's tracker (one IPython shell per kernel)


def _shell():
    ipython = sys.modules.get("IPython")  # already imported in any Jupyter kernel; never imported here
    get = getattr(ipython, "get_ipython", None)
    return get() if get is not None else None


def track(shell=None) -> Tracker | None:
    """Start noting the cells this kernel runs (a lab's first cell calls it); the kernel's :class:`Tracker`.

    Calling it again (the first cell run twice) keeps the same tracker and registers nothing more. Outside
    IPython (a plain ``python`` process) there is nothing to track: it returns ``None``.
    """
    global _TRACKER
    shell = shell if shell is not None else _shell()
    if shell is None or not hasattr(shell, "events"):
        return None
    if _TRACKER is None:
        _TRACKER = Tracker()
    callbacks = shell.events.callbacks.get("post_run_cell", [])
    if not any(getattr(cb, "__self__", None) is _TRACKER for cb in callbacks):
        shell.events.register("post_run_cell", _TRACKER.post_run_cell)
    return _TRACKER


def tracker() -> Tracker | None:
    """The tracker :func:`track` started in this kernel, or ``None`` if it was never started."""
    return _TRACKER


@dataclass(frozen=True)
class Part:
    """A graded part as the lab's last cell describes it: its ``grade_id``, its ``points``, its visible
    test cell as ``(cell id, fingerprint)`` and its answer cells as ``(grade_id, cell id, fingerprint)``,
    each fingerprint of the cell *as released* (an answer cell's is that of its blank version)."""

    grade_id: str
    points: float
    test: tuple[str | None, str]
    answers: tuple[tuple[str, str | None, str], ...] = ()

    @classmethod
    def of(cls, spec) -> Part:
        if isinstance(spec, Part):
            return spec
        grade_id, points, test, *rest = spec
        answers = tuple(tuple(a) for a in (rest[0] if rest else ()))
        return cls(str(grade_id), float(points), tuple(test), answers)


@dataclass
class PartResult:
    """What the kernel's runs say about one :class:`Part`: ``status`` is ``"passed"``, ``"failed"``,
    ``"not answered"`` or ``"not run"``; ``detail`` the exception (``"AssertionError: ..."``) or why."""

    grade_id: str
    points: float
    status: str
    detail: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    """Everything :func:`summary` prints: one :class:`PartResult` per part, the notebook file and notes."""

    lab: str
    parts: list[PartResult]
    tracked: bool = True
    grader_run: bool = False
    notebook: Path | None = None
    notebook_bytes: int | None = None
    notes: list[str] = field(default_factory=list)
    other_errors: list[str] = field(default_factory=list)

    @property
    def expected_name(self) -> str:
        return f"{self.lab}.ipynb"

    def points(self, status: str | None = None) -> float:
        return sum(p.points for p in self.parts if status is None or p.status == status)

    def table(self) -> str:
        """One line per part: its grade id, its points and what its visible tests did."""
        width = max([len("part"), *(len(p.grade_id) for p in self.parts)])
        lines = [f"{'part':<{width}}  points  visible tests"]
        for p in self.parts:
            shown = {"failed": "FAILED"}.get(p.status, p.status)
            text = f"{shown}: {p.detail}" if p.detail else shown
            lines.append(f"{p.grade_id:<{width}}  {p.points:>6g}  {text}")
            lines += [f"{'':<{width}}          ({note})" for note in p.notes]
        return "\n".join(lines)

    def file_lines(self) -> list[str]:
        name = self.expected_name
        limit = _size(MAX_NOTEBOOK_BYTES)
        if self.notebook is None:
            return [
                f"File: hand in this notebook as {name} (at most {limit}). This kernel does not know which file "
                "it runs (Colab, for one), so it cannot check the name and size for you."
            ]
        if self.notebook_bytes is None:
            return [f"File: {self.notebook} is not on disk (renamed or moved?): hand in {name}."]
        out = []
        if self.notebook.name == name:
            out.append(f"File: {self.notebook.name}, the name the grader expects.")
        else:
            out.append(
                f"File: {self.notebook.name}, but the grader looks for {name}: rename the file you hand in to {name}."
            )
        size = f"{_size(self.notebook_bytes)} as last saved"
        if self.notebook_bytes > MAX_NOTEBOOK_BYTES:
            out.append(
                f"      {size}: TOO LARGE, the grader refuses files over {limit}. Clear the outputs "
                "(Edit > Clear Outputs of All Cells), save and check again."
            )
        else:
            out.append(f"      {size}, within the grader's limit of {limit}. Save (Ctrl+S) before you hand it in.")
        return out

    def text(self) -> str:
        """The whole summary, as the lab's last cell prints it."""
        if not self.tracked:
            return (
                f"{self.lab}: no record of the cells this kernel ran (the lab's first cell starts it). "
                "Restart the kernel and run all cells: Kernel > Restart Kernel and Run All Cells "
                "(Colab: Runtime > Restart session and run all)."
            )
        if self.grader_run:
            return (
                f"{self.lab}: this run also executed hidden tests (a grader's run), so this summary of the visible "
                "tests is left out: the grade comes from the hidden tests."
            )
        n = len(self.parts)
        passed = [p for p in self.parts if p.status == "passed"]
        head = (
            f"{self.lab}: the visible tests pass in {len(passed)} of {n} graded parts, "
            f"worth {self.points('passed'):g} of the lab's {self.points():g} points."
        )
        lines = [head, "", self.table(), ""]
        if self.other_errors:
            more = len(self.other_errors) - 3
            lines.append(
                f"Other cells that raised an error: {'; '.join(self.other_errors[:3])}"
                + (f"; and {more} more" if more > 0 else "")
            )
        lines += self.notes
        lines += self.file_lines()
        lines.append(
            "The visible tests are a first check only: hidden tests, run when the lab is graded, decide the points."
        )
        return "\n".join(lines)


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    if n < 1 << 20:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1 << 20):.1f} MiB".replace(".0 MiB", " MiB")


def _notebook_path(shell=None) -> Path | None:
    """The notebook file this kernel runs, if the notebook app told it: ``__session__`` (set by ipykernel
    from Jupyter Server's ``JPY_SESSION_NAME``) or ``__vsc_ipynb_file__`` (VS Code)."""
    shell = shell if shell is not None else _shell()
    ns = getattr(shell, "user_ns", None) or {}
    for value in (ns.get("__session__"), ns.get("__vsc_ipynb_file__"), os.environ.get("JPY_SESSION_NAME")):
        if isinstance(value, str) and value.endswith(".ipynb"):
            return Path(value)
    return None


def check(
    lab: str,
    parts: Iterable,
    *,
    others: Iterable[str] = (),
    tracker: Tracker | None = None,
    notebook: str | os.PathLike | None | bool = True,
) -> Report:
    """The :class:`Report` that :func:`summary` prints.

    Parameters
    ----------
    lab : str
        The lab's name; the grader expects its notebook as ``<lab>.ipynb``.
    parts : iterable of Part or tuple
        Every graded part, in notebook order, as :class:`Part` or as the tuple
        ``(grade_id, points, (test cell id, fingerprint), [(answer grade_id, cell id, fingerprint), ...])``.
    others : iterable of str
        The fingerprints of the lab's other code cells as released (setup, helpers, demonstrations). Without
        cell ids, a run of a cell that is none of the lab's is taken for an edited answer.
    tracker : Tracker, optional
        The runs to read; by default the kernel's (:func:`track`).
    notebook : path, None or True
        The notebook file to check; ``True`` (the default) asks the kernel (``__session__``, set by ipykernel
        under Jupyter Server, or VS Code's ``__vsc_ipynb_file__``), ``None`` checks no file.
    """
    parts = [Part.of(p) for p in parts]
    runs = tracker if tracker is not None else _TRACKER
    path = _notebook_path() if notebook is True else (Path(notebook) if notebook else None)
    size = None
    if path is not None:
        try:
            size = path.stat().st_size
        except OSError:
            size = None
    report = Report(lab=lab, parts=[], notebook=path, notebook_bytes=size)
    if runs is None:
        report.tracked = False
        return report
    seq = list(enumerate(runs.runs))
    report.grader_run = any(r.hidden for _, r in seq)
    known = {p.test[1] for p in parts} | {a[2] for p in parts for a in p.answers}
    lab_cells = known | set(others)  # every code cell of the lab as released
    ids = {p.test[0] for p in parts if p.test[0]} | {a[1] for p in parts for a in p.answers if a[1]}
    order = []  # (index of a test's last run, part number): runs out of notebook order show up here
    repeated = False
    for n, part in enumerate(parts):
        test_id, test_fp = part.test
        result = PartResult(part.grade_id, part.points, "not run")
        report.parts.append(result)
        released = [i for i, r in seq if r.fingerprint == test_fp]
        edited = [i for i, r in seq if test_id and r.cell_id == test_id and r.fingerprint != test_fp]
        if edited and (not released or edited[-1] > released[-1]):
            result.detail = "its test cell was edited: the grader runs the released one (restore it and run it)"
            continue
        if not released:
            continue
        i = released[-1]
        run = runs.runs[i]
        order.append((i, n))
        repeated = repeated or len(released) > 1
        if run.error is None:
            result.status = "passed"
        elif run.error == "NotImplementedError":
            result.status, result.detail = "not answered", "the answer still raises NotImplementedError"
        else:
            result.status = "failed"
            result.detail = f"{run.error}: {run.message}" if run.message else f"{run.error} (no message)"
        start = max((k for k, _ in order[:-1] if k < i), default=-1)  # the previous part's test run
        for gid, cell_id, blank_fp in part.answers:
            if cell_id and any(r.cell_id == cell_id for _, r in seq):  # the notebook app sends cell ids: exact
                j = max(k for k, r in seq if r.cell_id == cell_id)
            else:  # no ids (Colab): the blank answer as released, run just before this test, nothing after it
                blank = [k for k, r in seq if start < k < i and r.fingerprint == blank_fp]
                if not blank or any(r.fingerprint not in lab_cells for k, r in seq if blank[-1] < k < i):
                    continue
                j = blank[-1]
            answer = runs.runs[j]
            if j > i:
                result.notes.append(f"answer cell {gid} ran again after this test: run the test cell again")
            elif result.status == "failed" and answer.error == "NotImplementedError":
                result.status, result.detail = "not answered", f"answer cell {gid} still raises NotImplementedError"
            elif result.status == "failed" and answer.fingerprint == blank_fp:
                result.status = "not answered"
                result.detail = f"answer cell {gid} is as released: replace its raise NotImplementedError()"
    for _, r in seq:
        if r.error and r.fingerprint not in known and r.cell_id not in ids:
            report.other_errors.append(r.describe())
    if repeated or [n for _, n in sorted(order)] != sorted(n for _, n in order):
        report.notes.append(
            "Some cells ran more than once or out of order in this kernel: to see what the grader sees, "
            "Kernel > Restart Kernel and Run All Cells (Colab: Runtime > Restart session and run all)."
        )
    return report


def summary(lab: str, parts: Iterable, **kwargs) -> None:
    """Print where the lab stands (the last cell of every lab calls it): every graded part with its points
    and whether its visible tests passed, failed (with the message) or did not run in this kernel, the
    answers that still raise ``NotImplementedError``, and the notebook file's name and size.
    Arguments as for :func:`check`."""
    print(check(lab, parts, **kwargs).text())
