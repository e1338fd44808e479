"""The lab pipeline on nbgrader: release student versions, autograde submissions, export grades.

The course directory is ``labs/`` (it holds ``nbgrader_config.py`` and ``source/<lab>/<lab>.ipynb``).
nbgrader does the work; this module only drives it and reads its gradebook:

- :func:`release` runs ``nbgrader generate_assignment`` (solutions and hidden tests stripped) into
  ``labs/release/<lab>/``; these student notebooks are build products, never edited by hand.
- :func:`autograde` copies a folder of submissions laid out as ``<student>/<lab>/<lab>.ipynb`` into the
  course's ``submitted/`` folder and runs ``nbgrader autograde`` and ``nbgrader generate_feedback``.
- :func:`export_grades` writes ``labs/grades/<lab>.csv``: one row per student with ``student_id``,
  ``status``, ``score``, ``max_score`` and one column per graded part.

nbgrader runs the ``alembic`` executable by name to set up its gradebook, so every call here puts the
running interpreter's ``bin`` folder first on ``PATH``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = [
    "GradingError",
    "find_course_dir",
    "list_labs",
    "nbgrader",
    "release",
    "release_all",
    "autograde",
    "export_grades",
    "lab_parts",
]

NOTEBOOK_SUFFIX = ".ipynb"


class GradingError(RuntimeError):
    """nbgrader failed, or the course directory is not what the pipeline expects."""


def find_course_dir(course_dir: str | os.PathLike | None = None) -> Path:
    """The nbgrader course directory: ``course_dir``, else the current folder or its ``labs/``
    if it holds ``nbgrader_config.py``, else the repository's ``labs/``."""
    candidates = [Path(course_dir)] if course_dir is not None else [
        Path.cwd(), Path.cwd() / "labs", Path(__file__).resolve().parents[1] / "labs"]
    for cand in candidates:
        if (cand / "nbgrader_config.py").exists() and (cand / "source").is_dir():
            return cand.resolve()
    raise GradingError(f"no nbgrader course directory (nbgrader_config.py and source/) in {candidates}")


def list_labs(course_dir: str | os.PathLike | None = None) -> list[str]:
    """Names of the labs under ``source/`` (folders holding ``<name>/<name>.ipynb``), sorted."""
    src = find_course_dir(course_dir) / "source"
    return sorted(p.name for p in src.iterdir() if (p / f"{p.name}{NOTEBOOK_SUFFIX}").exists())


def _env() -> dict[str, str]:
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def nbgrader(args: list[str], course_dir: str | os.PathLike, *, timeout: float | None = None) -> str:
    """Run ``python -m nbgrader ARGS`` in ``course_dir``; return its output or raise :class:`GradingError`."""
    cmd = [sys.executable, "-m", "nbgrader", *args]
    proc = subprocess.run(cmd, cwd=course_dir, env=_env(), capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise GradingError(f"nbgrader {' '.join(args)} failed (exit {proc.returncode}):\n{out[-4000:]}")
    return out


def _check_lab(lab: str, course: Path) -> None:
    if lab not in list_labs(course):
        raise GradingError(f"unknown lab {lab!r}; the course has {list_labs(course)}")


def release(lab: str, course_dir: str | os.PathLike | None = None) -> Path:
    """Generate the student version of ``lab``; return the folder ``release/<lab>``."""
    course = find_course_dir(course_dir)
    _check_lab(lab, course)
    nbgrader(["generate_assignment", lab, "--force"], course)
    out = course / "release" / lab
    if not (out / f"{lab}{NOTEBOOK_SUFFIX}").exists():
        raise GradingError(f"nbgrader did not write {out / (lab + NOTEBOOK_SUFFIX)}")
    return out


def release_all(course_dir: str | os.PathLike | None = None) -> list[Path]:
    """Generate the student versions of every lab."""
    course = find_course_dir(course_dir)
    return [release(lab, course) for lab in list_labs(course)]


def lab_parts(lab: str, course_dir: str | os.PathLike | None = None) -> list[tuple[str, float]]:
    """The graded parts of ``lab`` as ``(grade_id, points)`` in notebook order, read from the source."""
    course = find_course_dir(course_dir)
    nb = json.loads((course / "source" / lab / f"{lab}{NOTEBOOK_SUFFIX}").read_text())
    parts = []
    for cell in nb["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("grade"):
            parts.append((meta["grade_id"], float(meta.get("points", 0))))
    return parts


def autograde(lab: str, submissions_dir: str | os.PathLike, course_dir: str | os.PathLike | None = None,
              *, feedback: bool = True) -> list[str]:
    """Autograde every ``<student>/<lab>/<lab>.ipynb`` under ``submissions_dir`` with nbgrader.

    Returns the student ids that were graded. Students whose folder lacks the notebook are
    skipped here (``export_grades`` reports them as ``missing``).
    """
    course = find_course_dir(course_dir)
    _check_lab(lab, course)
    submissions_dir = Path(submissions_dir)
    if not submissions_dir.is_dir():
        raise GradingError(f"{submissions_dir} is not a folder")
    if not (course / "release" / lab).exists():
        release(lab, course)
    graded = []
    for student_dir in sorted(p for p in submissions_dir.iterdir() if p.is_dir()):
        nb = student_dir / lab / f"{lab}{NOTEBOOK_SUFFIX}"
        if not nb.exists():
            continue
        dest = course / "submitted" / student_dir.name / lab
        if dest.resolve() != nb.parent.resolve():
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(nb.parent, dest)
        graded.append(student_dir.name)
    for student in graded:
        nbgrader(["autograde", lab, "--create", "--force", f"--student={student}"], course)
        if feedback:
            nbgrader(["generate_feedback", lab, "--force", f"--student={student}"], course)
    return graded


def export_grades(lab: str, course_dir: str | os.PathLike | None = None, out_csv: str | os.PathLike | None = None,
                  students: list[str] | None = None) -> Path:
    """Write ``grades/<lab>.csv`` from nbgrader's gradebook: one row per student.

    Columns: ``student_id``, ``status`` (``graded`` or ``missing``), ``score``, ``max_score`` and one
    column per graded part (its ``grade_id``). ``students`` adds rows for students with no submission.
    """
    from nbgrader.api import Gradebook, MissingEntry

    course = find_course_dir(course_dir)
    parts = lab_parts(lab, course)
    max_score = sum(p for _, p in parts)
    out = Path(out_csv) if out_csv else course / "grades" / f"{lab}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    db = course / "gradebook.db"
    seen = set()
    if db.exists():
        with Gradebook(f"sqlite:///{db}") as gb:
            for student in sorted(s.id for s in gb.students):
                try:
                    sub = gb.find_submission(lab, student)
                except MissingEntry:
                    continue
                row = {"student_id": student, "status": "graded", "score": sub.score, "max_score": max_score}
                for grade_id, _ in parts:
                    try:
                        row[grade_id] = gb.find_grade(grade_id, lab, lab, student).score
                    except MissingEntry:
                        row[grade_id] = 0.0
                rows.append(row)
                seen.add(student)
    for student in students or []:
        if student not in seen:
            rows.append({"student_id": student, "status": "missing", "score": 0.0, "max_score": max_score,
                         **{g: 0.0 for g, _ in parts}})
    tmp = out.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["student_id", "status", "score", "max_score", *[g for g, _ in parts]])
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: r["student_id"]))
    os.replace(tmp, out)
    return out
