"""The nbgrader driver: the course folder, student releases, plain autograding.

The course directory is ``labs/`` (it holds ``nbgrader_config.py`` and ``source/<lab>/<lab>.ipynb``).
nbgrader does the work; this module only drives it:

- :func:`release` runs ``nbgrader generate_assignment`` (solutions and hidden tests stripped) into
  ``labs/release/<lab>/``; these student notebooks are build products, never edited by hand.
- :func:`autograde` copies a folder of submissions laid out as ``<student>/<lab>/<lab>.ipynb`` into the
  course's ``submitted/`` folder and runs ``nbgrader autograde`` and ``nbgrader generate_feedback``
  (trusted notebooks only: the class-scale, sandboxed path is :func:`courselib.grading.batch.grade`).

nbgrader runs the ``alembic`` executable by name to set up its gradebook, so every call here puts the
running interpreter's ``bin`` folder first on ``PATH``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from importlib import import_module
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

NOTEBOOK_SUFFIX = ".ipynb"


class GradingError(RuntimeError):
    """nbgrader failed, or the course directory is not what the pipeline expects."""


def find_course_dir(course_dir: str | os.PathLike | None = None) -> Path:
    """The nbgrader course directory: ``course_dir``, else the current folder or its ``labs/``
    if it holds ``nbgrader_config.py``, else the repository's ``labs/``."""
    candidates = (
        [Path(course_dir)]
        if course_dir is not None
        else [Path.cwd(), Path.cwd() / "labs", Path(__file__).resolve().parents[2] / "labs"]
    )
    for cand in candidates:
        if (cand / "nbgrader_config.py").exists() and (cand / "source").is_dir():
            return cand.resolve()
    raise GradingError(f"no nbgrader course directory (nbgrader_config.py and source/) in {candidates}")


def list_labs(course_dir: str | os.PathLike | None = None) -> list[str]:
    """Names of the labs under ``source/`` (folders holding ``<name>/<name>.ipynb``), sorted."""
    src = find_course_dir(course_dir) / "source"
    return sorted(p.name for p in src.iterdir() if (p / f"{p.name}{NOTEBOOK_SUFFIX}").exists())


def nbgrader_env() -> dict[str, str]:
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def nbgrader(args: list[str], course_dir: str | os.PathLike, *, timeout: float | None = None) -> str:
    """Run ``python -m nbgrader ARGS`` in ``course_dir``; return its output or raise :class:`GradingError`."""
    cmd = [sys.executable, "-m", "nbgrader", *args]
    proc = subprocess.run(cmd, cwd=course_dir, env=nbgrader_env(), capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise GradingError(f"nbgrader {' '.join(args)} failed (exit {proc.returncode}):\n{out[-4000:]}")
    return out


def check_lab(lab: str, course: Path) -> None:
    if lab not in list_labs(course):
        raise GradingError(f"unknown lab {lab!r}; the course has {list_labs(course)}")


def scratch_course(lab: str, dest, course_dir=None, *, settings: str = "", release_lab: bool = True) -> Path:
    """A course folder ``dest/course`` holding only ``lab`` (its source and the nbgrader config), and
    its release unless ``release_lab`` is false: a place to try grading without touching the real course.

    ``settings`` is written as the scratch course's ``course.toml``.
    """
    course_dir = find_course_dir(course_dir)
    course = Path(dest) / "course"
    (course / "source").mkdir(parents=True)
    shutil.copy(course_dir / "nbgrader_config.py", course)
    shutil.copytree(course_dir / "source" / lab, course / "source" / lab)
    if settings:
        (course / "course.toml").write_text(settings)
    if release_lab:
        release(lab, course)
    return course


def release(lab: str, course_dir: str | os.PathLike | None = None, *, db: str | None = None) -> Path:
    """Generate the student version of ``lab``; return the folder ``release/<lab>``.

    ``db`` is a gradebook URL other than the course config's (nbgrader's ``--db``).
    """
    course = find_course_dir(course_dir)
    check_lab(lab, course)
    nbgrader(["generate_assignment", lab, "--force", *([f"--db={db}"] if db else [])], course)
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


def autograde(
    lab: str, submissions_dir: str | os.PathLike, course_dir: str | os.PathLike | None = None, *, feedback: bool = True
) -> list[str]:
    """Autograde every ``<student>/<lab>/<lab>.ipynb`` under ``submissions_dir`` with nbgrader.

    Returns the student ids that were graded. Students whose folder lacks the notebook are
    skipped here (``export_grades`` reports them as ``missing``).
    """
    course = find_course_dir(course_dir)
    check_lab(lab, course)
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


#: Instructor-side course settings beside ``nbgrader_config.py`` (never under ``source/``, so never released).
COURSE_SETTINGS = "course.toml"


def course_settings(course_dir: str | os.PathLike | None = None) -> dict:
    """The course's ``course.toml`` as a dict (empty when the file is absent).

    Per-lab tables ``[labs.<lab>]`` declare hooks, e.g.
    ``after_grading = "courselib.grading.leaderboard:lab_hook"``, and instructor-only settings such as
    a private test set (see :mod:`courselib.grading.leaderboard`).
    """
    path = find_course_dir(course_dir) / COURSE_SETTINGS
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise GradingError(f"{path} is not valid TOML: {exc}") from None


def lab_settings(lab: str, course_dir: str | os.PathLike | None = None) -> dict:
    """The ``[labs.<lab>]`` table of the course settings (empty when there is none)."""
    return course_settings(course_dir).get("labs", {}).get(lab, {})


def lab_hook(lab: str, course_dir: str | os.PathLike | None, name: str) -> Callable | None:
    """The callable a lab declares as ``name = "module:function"`` in ``course.toml``, or ``None``."""
    spec = lab_settings(lab, course_dir).get(name)
    if spec is None:
        return None
    module, _, attr = str(spec).partition(":")
    try:
        return getattr(import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise GradingError(f"course.toml: labs.{lab}.{name} = {spec!r} cannot be loaded: {exc}") from None
