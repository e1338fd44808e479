"""Instructor tooling: everything an instructor runs and a student never imports.

The book's appendix is the content modules one level up (``courselib.data`` ... ``courselib.compare``);
nothing there imports this subpackage (``tests/test_architecture.py`` checks it). Here:

- :mod:`~courselib.grading.course` -- the nbgrader driver: course folder, student releases, plain
  autograding, lab settings and hooks (``labs/course.toml``)
- :mod:`~courselib.grading.intake` -- submissions in: folders or an LMS zip, notebook checks
- :mod:`~courselib.grading.grader` -- grading one submission: scratch course, sandboxed kernel, tamper
  check, clean room, feedback
- :mod:`~courselib.grading.batch` -- ``courselib grade``: many submissions in parallel, resumable
- :mod:`~courselib.grading.gradebook` -- the single writer, state files, the grades CSV
- :mod:`~courselib.grading.sandbox`, :mod:`~courselib.grading.cleanroom`,
  :mod:`~courselib.grading.execute` -- isolation of student code, hidden tests re-run on plain data,
  nbgrader's executor with an output limit
- :mod:`~courselib.grading.leaderboard` -- the compression challenge's leaderboard (a lab hook)
- :mod:`~courselib.grading.quiz` -- the concept-check question bank and its autograder
- :mod:`~courselib.grading.mutants` -- mutation testing of the labs (plausible wrong answers)
- :mod:`~courselib.grading.cli` -- the one ``courselib`` command and its sub-commands

``from courselib import grading`` gives the common entry points below.
"""

from .batch import grade, summary_table
from .course import (
    GradingError,
    autograde,
    find_course_dir,
    lab_parts,
    lab_settings,
    list_labs,
    nbgrader,
    release,
    release_all,
)
from .gradebook import export_grades
from .grader import STATUSES, Limits
from .intake import collect_submissions

__all__ = [
    "GradingError",
    "find_course_dir",
    "list_labs",
    "lab_parts",
    "lab_settings",
    "nbgrader",
    "release",
    "release_all",
    "autograde",
    "export_grades",
    "Limits",
    "STATUSES",
    "collect_submissions",
    "grade",
    "summary_table",
]
