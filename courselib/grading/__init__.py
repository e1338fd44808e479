"""Instructor tooling: everything an instructor runs and a student never imports.

The book's appendix is the content modules one level up (``courselib.data`` ... ``courselib.compare``);
nothing there imports this subpackage (``tests/test_architecture.py`` checks it). Here:

- :mod:`~courselib.grading.course` -- the nbgrader driver: course folder, student releases, plain
  autograding, lab settings and hooks (``labs/course.toml``)
- :mod:`~courselib.grading.intake` -- submissions in: folders or an LMS zip, notebook checks
- :mod:`~courselib.grading.grader` -- grading one submission: scratch course, sandboxed kernel, tamper
  check, each part's tier (clean room, sealed run, by hand), feedback; assignments of several notebooks
- :mod:`~courselib.grading.batch` -- ``courselib grade`` and ``courselib tiers``: many submissions in
  parallel, resumable
- :mod:`~courselib.grading.gradebook` -- the single writer, state files, the grades CSV
- :mod:`~courselib.grading.sandbox` -- isolation of student code (bubblewrap, cgroups, a private disk)
- :mod:`~courselib.grading.cleanroom` -- the trusted driver: every part judged by its hidden tests;
  :mod:`~courselib.grading.kernel` its counterpart in the student's kernel, :mod:`~courselib.grading.wire`
  what crosses between them (bounded, plain data), :mod:`~courselib.grading.execute` nbgrader's executor
  with output limits, :mod:`~courselib.grading.feedback` what a student reads
- :mod:`~courselib.grading.bans`, :mod:`~courselib.grading.testing` -- what a lab's tests use: stated bans
  read from the submitted notebook, gradients and students' programs judged outside the clean room
- :mod:`~courselib.grading.cells` -- notebook cells read as Python
- :mod:`~courselib.grading.leaderboard` -- the compression challenge's leaderboard (a lab hook)
- :mod:`~courselib.grading.quiz` -- the concept-check question bank and its autograder
- :mod:`~courselib.grading.mutants` -- mutation testing of the labs (plausible wrong answers)
- :mod:`~courselib.grading.cli` -- the one ``courselib`` command and its sub-commands

``from courselib import grading`` gives the common entry points below. They are imported on first
use (PEP 562), each from its submodule, and so are the submodules (``grading.batch``): ``import
courselib.grading`` imports nothing heavy, and ``courselib --help`` or ``courselib labs`` never loads
nbgrader, torch or Dask (``tests/test_grading_cli.py`` checks it).
"""

from __future__ import annotations

import importlib

#: Where each public name lives: ``grading.grade`` imports :mod:`~courselib.grading.batch` the first time.
_EXPORTS = {
    "GradingError": "course",
    "find_course_dir": "course",
    "list_labs": "course",
    "lab_parts": "course",
    "lab_settings": "course",
    "nbgrader": "course",
    "release": "course",
    "release_all": "course",
    "autograde": "course",
    "export_grades": "gradebook",
    "Limits": "grader",
    "STATUSES": "grader",
    "collect_submissions": "intake",
    "grade": "batch",
    "summary_table": "batch",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value  # the next access is a plain attribute
        return value
    if not name.startswith("_"):  # a submodule: grading.batch, grading.quiz ...
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":  # the submodule exists, one of its imports is missing
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
