"""The lab pipeline on nbgrader: release student versions, autograde submissions, export grades.

The course directory is ``labs/`` (it holds ``nbgrader_config.py`` and ``source/<lab>/<lab>.ipynb``).
nbgrader does the work; this module only drives it and reads its gradebook:

- :func:`release` runs ``nbgrader generate_assignment`` (solutions and hidden tests stripped) into
  ``labs/release/<lab>/``; these student notebooks are build products, never edited by hand.
- :func:`autograde` copies a folder of submissions laid out as ``<student>/<lab>/<lab>.ipynb`` into the
  course's ``submitted/`` folder and runs ``nbgrader autograde`` and ``nbgrader generate_feedback``.
- :func:`export_grades` writes ``labs/grades/<lab>.csv``: one row per student with ``student_id``,
  ``status``, ``score``, ``max_score`` and one column per graded part.

- :func:`grade` is the class-scale instructor command (``courselib grade LAB SUBMISSIONS``): every
  submission is autograded by nbgrader in its own scratch course with its kernel in a sandbox
  (:mod:`courselib.sandbox`), under time, memory and output limits, re-checked in a clean room
  (:mod:`courselib.cleanroom`), then merged into the course gradebook by one writer; resumable.

nbgrader runs the ``alembic`` executable by name to set up its gradebook, so every call here puts the
running interpreter's ``bin`` folder first on ``PATH``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
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
    "Limits",
    "STATUSES",
    "collect_submissions",
    "grade",
]

NOTEBOOK_SUFFIX = ".ipynb"


class GradingError(RuntimeError):
    """nbgrader failed, or the course directory is not what the pipeline expects."""


def find_course_dir(course_dir: str | os.PathLike | None = None) -> Path:
    """The nbgrader course directory: ``course_dir``, else the current folder or its ``labs/``
    if it holds ``nbgrader_config.py``, else the repository's ``labs/``."""
    candidates = (
        [Path(course_dir)]
        if course_dir is not None
        else [Path.cwd(), Path.cwd() / "labs", Path(__file__).resolve().parents[1] / "labs"]
    )
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


def autograde(
    lab: str, submissions_dir: str | os.PathLike, course_dir: str | os.PathLike | None = None, *, feedback: bool = True
) -> list[str]:
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


def _state_dir(course: Path, lab: str) -> Path:
    return course / "grades" / ".state" / lab


def _load_states(course: Path, lab: str) -> dict[str, dict]:
    out = {}
    d = _state_dir(course, lab)
    if d.is_dir():
        for f in sorted(d.glob("*.json")):
            if f.name.startswith("_"):
                continue
            try:
                st = json.loads(f.read_text())
            except ValueError:
                continue
            out[st["student_id"]] = st
    return out


def export_grades(
    lab: str,
    course_dir: str | os.PathLike | None = None,
    out_csv: str | os.PathLike | None = None,
    students: list[str] | None = None,
) -> Path:
    """Write ``grades/<lab>.csv``: one row per student.

    Columns: ``student_id``, ``status`` (see :data:`STATUSES`), ``score``, ``max_score`` and one
    column per graded part (its ``grade_id``). Rows come from :func:`grade`'s results (statuses and
    scores), then from nbgrader's gradebook for submissions graded otherwise (status ``graded``);
    ``students`` adds ``missing`` rows for students with no submission at all.
    """
    from nbgrader.api import Gradebook, MissingEntry

    course = find_course_dir(course_dir)
    parts = lab_parts(lab, course)
    max_score = sum(p for _, p in parts)
    out = Path(out_csv) if out_csv else course / "grades" / f"{lab}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = {}
    for student, st in _load_states(course, lab).items():
        rows[student] = {
            "student_id": student,
            "status": st["status"],
            "score": st["score"],
            "max_score": max_score,
            **{g: st["parts"].get(g, 0.0) for g, _ in parts},
        }
    db = course / "gradebook.db"
    if db.exists():
        with Gradebook(f"sqlite:///{db}") as gb:
            for student in sorted(s.id for s in gb.students):
                if student in rows:
                    continue
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
                rows[student] = row
    for student in students or []:
        if student not in rows:
            rows[student] = {
                "student_id": student,
                "status": "missing",
                "score": 0.0,
                "max_score": max_score,
                **{g: 0.0 for g, _ in parts},
            }
    tmp = out.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["student_id", "status", "score", "max_score", *[g for g, _ in parts]])
        writer.writeheader()
        writer.writerows(rows[k] for k in sorted(rows))
    os.replace(tmp, out)
    return out


# =============================================================================================
# Class-scale grading: one command, parallel, isolated, limited, tamper-proof, resumable
# =============================================================================================

STATUSES = ("graded", "timeout", "memory", "output-limit", "crashed", "invalid-notebook", "tampered", "missing")
"""Submission statuses, in the order of precedence used when several apply."""

GRADER_VERSION = "courselib-grade-1"


@dataclass(frozen=True)
class Limits:
    """Per-submission limits of :func:`grade`.

    Parameters
    ----------
    cell_timeout : int
        Seconds one cell may run (nbgrader's ``Execute.timeout``); the kernel is interrupted.
    notebook_timeout : int
        Seconds the whole autograding of one notebook may take; the sandbox is killed.
    memory_mb : int
        Address-space limit (``RLIMIT_AS``) of the student's kernel, in MiB.
    output_kb : int
        Largest output of one cell, in KiB (further output is dropped, the cell fails).
    file_mb : int
        Largest file the student's code may write (``RLIMIT_FSIZE``), in MiB.
    """

    cell_timeout: int = 120
    notebook_timeout: int = 900
    memory_mb: int = 3072
    output_kb: int = 1024
    file_mb: int = 64

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Limits.{name} must be a positive int, got {value!r}")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,99}$")


def _safe_extract(zpath: Path, dest: Path) -> Path:
    with zipfile.ZipFile(zpath) as zf:
        for info in zf.infolist():
            name = info.filename
            if name.startswith("/") or ".." in Path(name).parts:
                raise GradingError(f"unsafe path {name!r} in {zpath}")
        zf.extractall(dest)
    return dest


def collect_submissions(
    lab: str, submissions: str | os.PathLike, unpack_dir: str | os.PathLike | None = None
) -> dict[str, Path | None]:
    """Map each student id to their notebook ``<student>/<lab>/<lab>.ipynb`` (``None``: missing).

    ``submissions`` is nbgrader's folder layout, or a ``.zip`` (an LMS download): either that
    layout inside the archive (possibly under one top folder), or flat files named
    ``<student>_<lab>.ipynb`` / ``<student>_<anything>`` (nbgrader ``zip_collect`` style; a
    student's file counts only if its name ends with ``<lab>.ipynb``). Nothing else is guessed:
    a student folder without the expected notebook name is ``missing``.
    """
    submissions = Path(submissions)
    if submissions.is_file() and zipfile.is_zipfile(submissions):
        if unpack_dir is None:
            raise GradingError("a zip of submissions needs an unpack_dir")
        root = _safe_extract(submissions, Path(unpack_dir))
        entries = [p for p in root.iterdir() if not p.name.startswith((".", "__MACOSX"))]
        if len(entries) == 1 and entries[0].is_dir() and not (entries[0] / lab).is_dir():
            root = entries[0]
        files = [p for p in root.iterdir() if p.is_file()]
        if files and not any(p.is_dir() and (p / lab).is_dir() for p in root.iterdir()):
            out: dict[str, Path | None] = {}
            for f in sorted(files):
                student = f.name.split("_", 1)[0]
                if not _STUDENT_ID.match(student):
                    continue
                good = f.name == f"{student}_{lab}{NOTEBOOK_SUFFIX}" or f.name.endswith(f"_{lab}{NOTEBOOK_SUFFIX}")
                if good:
                    out[student] = f
                else:
                    out.setdefault(student, None)
            return out
        submissions = root
    if not submissions.is_dir():
        raise GradingError(f"{submissions} is not a folder (or a zip of submissions)")
    out = {}
    for d in sorted(p for p in submissions.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not _STUDENT_ID.match(d.name):
            continue
        nb = d / lab / f"{lab}{NOTEBOOK_SUFFIX}"
        out[d.name] = nb if nb.is_file() else None
    return out


def _check_notebook(data: bytes) -> str | None:
    """Why ``data`` is not a valid notebook (``None`` if it is one)."""
    import nbformat

    try:
        text = data.decode("utf-8")
        raw = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        return f"not JSON: {exc}"[:300]
    if not isinstance(raw, dict) or "cells" not in raw:
        return "JSON but not a notebook (no cells)"
    try:
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
    except Exception as exc:
        return f"invalid notebook: {exc}"[:300]
    return None


def _hidden_paths(course: Path, extra: list[Path]) -> list[str]:
    import courselib

    pkg = Path(courselib.__file__).resolve().parent
    hide = [
        course,
        *extra,
        Path(tempfile.gettempdir()),
        Path("/tmp"),
        Path("/var/tmp"),
        Path("/root"),
        Path("/home"),
        Path.home(),
    ]
    repo = pkg.parent
    if (repo / "pyproject.toml").exists() or (repo / ".git").exists():
        hide.append(repo)  # an editable install: hide the repository (.git holds every solution)
    return sorted({str(p.resolve()) for p in hide if p.exists()})


def _kept_paths() -> list[str]:
    import courselib

    return sorted(
        {
            str(Path(sys.prefix).resolve()),
            str(Path(sys.base_prefix).resolve()),
            str(Path(courselib.__file__).resolve().parent),
        }
    )


def _course_config(root: Path, limits: Limits, work: Path | None) -> str:
    lines = [
        "c = get_config()  # noqa: F821",
        "c.CourseDirectory.course_id = 'ondevice-ml'",
        f"c.CourseDirectory.root = {str(root)!r}",
        f"c.CourseDirectory.db_url = {('sqlite:///' + str(root / 'gradebook.db'))!r}",
        "c.ClearSolutions.code_stub = {'python': '# YOUR CODE HERE\\nraise NotImplementedError()'}",
        f"c.Execute.timeout = {limits.cell_timeout}",
        "c.Execute.interrupt_on_timeout = True",
        "c.OverwriteCells.add_missing_cells = True",
        "c.OverwriteCells.missing_cell_notification = "
        "'This cell (id:{cell_id}) was missing from the submission; nbgrader restored it.\\n'",
        "c.Execute.startup_timeout = 120",
        "c.Execute.raise_on_iopub_timeout = False",
        f"c.LimitedExecute.max_output_bytes = {limits.output_kb * 1024}",
        "from courselib._grading_exec import LimitedExecute",
        "from nbgrader.preprocessors import IgnorePattern, LimitOutput, SaveAutoGrades, AssignLatePenalties, "
        "CheckCellMetadata",
        "from nbconvert.preprocessors import ClearMetadataPreprocessor",
        "c.Autograde.autograde_preprocessors = [LimitedExecute, IgnorePattern, ClearMetadataPreprocessor, "
        "LimitOutput, SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]",
    ]
    if work is not None:
        lines += [
            "c.Execute.kernel_name = 'courselib-sandbox'",
            "c.KernelManager.transport = 'ipc'",
            f"c.KernelManager.ip = {str(work / 'k')!r}",
        ]
    return "\n".join(lines) + "\n"


def _run(cmd: list[str], *, cwd, env, timeout: float) -> tuple[int | None, str]:
    """Run ``cmd`` in its own session; kill the whole session on timeout. Return (exit code or None, output)."""

    def preexec():
        import ctypes

        os.setsid()
        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # die with the grading process

    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=preexec,
        text=True,
        errors="replace",
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        out, _ = proc.communicate()
        return None, out


def _notebook_cells(nb: dict) -> list[dict]:
    """Source cells classified for the clean room: test / solution / instructor."""
    out = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        meta = cell.get("metadata", {}).get("nbgrader", {})
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if meta.get("grade"):
            out.append({"kind": "test", "grade_id": meta["grade_id"], "source": src})
        elif meta.get("solution"):
            out.append({"kind": "solution", "grade_id": meta.get("grade_id"), "source": src})
        elif meta.get("locked"):
            out.append({"kind": "instructor", "grade_id": meta.get("grade_id"), "source": src})
    return out


def _error_names(cell: dict) -> list[str]:
    return [o.get("ename", "") for o in cell.get("outputs", []) if o.get("output_type") == "error"]


class _Job:
    def __init__(self, idx: int, student: str, notebook: Path | None, key: str):
        self.idx, self.student, self.notebook, self.key = idx, student, notebook, key


class _Grader:
    """Shared, read-only context of one :func:`grade` run (workers only read it)."""

    def __init__(self, lab, course, limits, base, hide, feedback, sandboxed):
        self.lab, self.course, self.limits, self.base = lab, course, limits, base
        self.hide, self.keep, self.feedback, self.sandboxed = hide, _kept_paths(), feedback, sandboxed
        self.source_nb = json.loads((course / "source" / lab / f"{lab}{NOTEBOOK_SUFFIX}").read_text())
        self.release_nb = json.loads((course / "release" / lab / f"{lab}{NOTEBOOK_SUFFIX}").read_text())
        self.cells = _notebook_cells(self.source_nb)
        self.parts = lab_parts(lab, course)
        self.release_extras = [
            p
            for p in (course / "release" / lab).iterdir()
            if p.name != f"{lab}{NOTEBOOK_SUFFIX}" and not p.name.startswith(".")
        ]
        self.template = base / "template"
        self.verifiable: set[str] = set()

    def env(self, jupyter_dir: Path | None = None, runtime: Path | None = None) -> dict:
        env = _env()
        env["PYTHONHASHSEED"] = "0"
        env.pop("JUPYTER_CONFIG_DIR", None)
        if jupyter_dir is not None:
            env["JUPYTER_PATH"] = str(jupyter_dir)
        if runtime is not None:
            env["JUPYTER_RUNTIME_DIR"] = str(runtime)
        return env

    # ------------------------------------------------------------------ scratch set-up
    def make_template(self) -> None:
        t = self.template
        (t / "source").mkdir(parents=True)
        shutil.copytree(self.course / "source" / self.lab, t / "source" / self.lab)
        (t / "nbgrader_config.py").write_text(_course_config(t, self.limits, None))
        nbgrader(["generate_assignment", self.lab, "--force"], t)

    def sandbox_config(self, work: Path, path: Path):
        from . import sandbox

        cfg = sandbox.SandboxConfig(
            work_dir=str(work),
            hide=self.hide,
            keep=self.keep,
            memory_bytes=self.limits.memory_mb << 20,
            file_bytes=self.limits.file_mb << 20,
            cpu_seconds=self.limits.notebook_timeout + 30,
        )
        cfg.save(path)
        return path

    def tampering(self, nb: dict) -> list[str]:
        """Locked cells of a submission that were edited, retyped or deleted (compared by grade_id
        with both the release and the source version; nbgrader restores them from its checksums)."""

        def locked(cells):
            out = {}
            for cell in cells:
                meta = cell.get("metadata", {}).get("nbgrader", {})
                if meta.get("locked") or meta.get("grade"):
                    src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
                    out[meta.get("grade_id")] = (cell["cell_type"], src.strip(), meta.get("points"))
            return out

        want = [locked(self.release_nb["cells"]), locked(self.source_nb["cells"])]
        got = {}
        for cell in nb.get("cells", []):
            meta = cell.get("metadata", {}).get("nbgrader", {})
            gid = meta.get("grade_id")
            if gid in want[0]:
                src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
                got.setdefault(gid, []).append((cell["cell_type"], src.strip(), meta.get("points")))
        changed = []
        for gid in want[0]:
            versions = got.get(gid, [])
            if not versions:
                changed.append(f"{gid} (deleted)")
            elif len(versions) > 1 or versions[0] not in (want[0][gid], want[1].get(gid)):
                changed.append(f"{gid} (edited)")
        return changed

    def make_work(self, root: Path, notebook_bytes: bytes | None) -> Path:
        work = root / "work"
        work.mkdir(parents=True)
        for extra in self.release_extras:
            (shutil.copytree if extra.is_dir() else shutil.copy)(extra, work / extra.name)
        if notebook_bytes is not None:
            (work / f"{self.lab}{NOTEBOOK_SUFFIX}").write_bytes(notebook_bytes)
        if self.sandboxed:
            for dirpath, _dirnames, filenames in os.walk(work):
                for n in [dirpath, *[os.path.join(dirpath, f) for f in filenames]]:
                    os.chown(n, 65534, 65534)
        return work

    # ------------------------------------------------------------------ clean room
    def clean_room(self, root: Path, work: Path, student_cells: list[str]) -> dict[str, bool]:
        from . import sandbox

        (work / "cells.json").write_text(json.dumps(student_cells))
        if self.sandboxed:
            os.chown(work / "cells.json", 65534, 65534)
        serve = [sys.executable, "-m", "courselib.cleanroom", "serve", str(work / "cells.json")]
        if self.sandboxed:
            serve = sandbox.command(self.sandbox_config(work, root / "sandbox-serve.json"), serve)
        clean = root / "clean"
        clean.mkdir(exist_ok=True)
        for extra in self.release_extras:
            (shutil.copytree if extra.is_dir() else shutil.copy)(extra, clean / extra.name)
        spec = {
            "cells": self.cells,
            "student_argv": serve,
            "cwd": str(work),
            "startup_timeout": self.limits.notebook_timeout,
            "call_timeout": self.limits.cell_timeout,
        }
        (root / "clean-spec.json").write_text(json.dumps(spec))
        out = root / "clean-result.json"
        code, log = _run(
            [sys.executable, "-m", "courselib.cleanroom", "check", str(root / "clean-spec.json"), str(out)],
            cwd=clean,
            env=self.env(),
            timeout=2 * self.limits.notebook_timeout + 60,
        )
        if code != 0 or not out.exists():
            return {}
        return json.loads(out.read_text())

    def calibrate(self) -> None:
        """Which parts the clean room can check: those the solution passes there."""
        root = self.base / "calibration"
        root.mkdir()
        work = self.make_work(root, None)
        last = max((i for i, c in enumerate(self.cells) if c["kind"] == "test"), default=len(self.cells))
        cells = [c["source"] for c in self.cells[:last] if c["kind"] != "test"]
        res = self.clean_room(root, work, cells)
        self.verifiable = {g for g, ok in res.items() if ok}

    # ------------------------------------------------------------------ one submission
    def grade_one(self, job: _Job) -> dict:
        from nbgrader.api import Gradebook

        t0 = time.monotonic()
        result = {
            "student_id": job.student,
            "lab": self.lab,
            "key": job.key,
            "notes": [],
            "parts": {g: 0.0 for g, _ in self.parts},
        }
        if job.notebook is None:
            result.update(status="missing", notes=[f"no {self.lab}/{self.lab}{NOTEBOOK_SUFFIX}"])
            return self._finish(result, t0)
        data = job.notebook.read_bytes()
        why = _check_notebook(data)
        if why:
            result.update(status="invalid-notebook", notes=[why])
            return self._finish(result, t0)
        root = self.base / f"s{job.idx}"
        course = root / "course"
        (course / "source").mkdir(parents=True)
        shutil.copytree(self.template / "source" / self.lab, course / "source" / self.lab)
        shutil.copy(self.template / "gradebook.db", course / "gradebook.db")
        work = self.make_work(root, data)
        jupyter = root / "jupyter"
        if self.sandboxed:
            from . import sandbox

            sandbox.write_kernelspec(jupyter, "courselib-sandbox", self.sandbox_config(work, root / "sandbox.json"))
        (course / "nbgrader_config.py").write_text(
            _course_config(course, self.limits, work if self.sandboxed else None)
        )
        sub = course / "submitted" / job.student / self.lab
        sub.mkdir(parents=True)
        (sub / f"{self.lab}{NOTEBOOK_SUFFIX}").write_bytes(data)
        t1 = time.monotonic()
        code, log = _run(
            [
                sys.executable,
                "-m",
                "nbgrader",
                "autograde",
                self.lab,
                "--create",
                "--force",
                f"--student={job.student}",
            ],
            cwd=course,
            env=self.env(jupyter, work),
            timeout=self.limits.notebook_timeout,
        )
        auto_nb = course / "autograded" / job.student / self.lab / f"{self.lab}{NOTEBOOK_SUFFIX}"
        flags = []
        result["timing"] = {"autograde": round(time.monotonic() - t1, 2)}
        result["log"] = [
            ln
            for ln in log.splitlines()
            if ("[AutogradeApp | WARNING]" in ln or "ERROR" in ln) and "Attribute 'checksum'" not in ln
        ][-20:]
        if code is None:
            result.update(status="timeout", notes=[f"notebook exceeded {self.limits.notebook_timeout} s"])
            return self._finish(result, t0, root)
        if code != 0 or not auto_nb.exists():
            dead = "Kernel died" in log or "DeadKernelError" in log
            result.update(
                status="crashed",
                notes=[
                    "the kernel died" if dead else "nbgrader autograde failed",
                    log.strip().splitlines()[-1][:300] if log.strip() else "",
                ],
            )
            return self._finish(result, t0, root)
        changed = self.tampering(json.loads(data))
        if changed:
            flags.append("tampered")
            result["notes"].append("restored from the source: " + ", ".join(changed))
        auto = json.loads(auto_nb.read_text())
        student_cells, skipped = [], 0
        grade_idx = [i for i, c in enumerate(auto["cells"]) if c.get("metadata", {}).get("nbgrader", {}).get("grade")]
        last_grade = max(grade_idx, default=len(auto["cells"]))
        for i, cell in enumerate(auto["cells"]):
            if cell["cell_type"] != "code":
                continue
            meta = cell.get("metadata", {}).get("nbgrader", {})
            late_instructor = i > last_grade and meta.get("locked") and not meta.get("solution")
            enames = _error_names(cell)
            if "CellTimeoutError" in enames:
                flags.append("timeout")
            if "MemoryError" in enames:
                flags.append("memory")
            if "OutputLimitExceeded" in enames:
                flags.append("output-limit")
            if "DeadKernelError" in enames:
                flags.append("crashed")
            if meta.get("grade") or late_instructor:  # tests never reach the student's process
                continue
            if {"CellTimeoutError", "OutputLimitExceeded"} & set(enames):
                skipped += 1
                continue
            student_cells.append("".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"])
        with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
            nb_scores = {
                g: float(gb.find_grade(g, self.lab, self.lab, job.student).score or 0.0) for g, _ in self.parts
            }
        # nothing passed in the kernel: nothing to confirm (the final score is the smaller of the two)
        t1 = time.monotonic()
        clean = self.clean_room(root, work, student_cells) if any(nb_scores.values()) else {}
        result["timing"]["clean_room"] = round(time.monotonic() - t1, 2)
        for g, _pts in self.parts:
            score = nb_scores[g]
            if g in self.verifiable and not clean.get(g, False):
                if score > 0:
                    flags.append("tampered")
                    result["notes"].append(f"{g}: passed in the student's kernel, failed in the clean room")
                score = 0.0
            result["parts"][g] = score
        status = next((s for s in STATUSES if s in flags), "graded")
        result["status"] = status
        with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
            for g, _ in self.parts:
                gr = gb.find_grade(g, self.lab, self.lab, job.student)
                gr.auto_score = result["parts"][g]
            gb.db.commit()
        t1 = time.monotonic()
        if self.feedback:
            fcode, flog = _run(
                [
                    sys.executable,
                    "-m",
                    "nbgrader",
                    "generate_feedback",
                    self.lab,
                    "--force",
                    f"--student={job.student}",
                ],
                cwd=course,
                env=self.env(),
                timeout=300,
            )
            if fcode != 0:
                result["notes"].append("feedback failed")
            result["timing"]["feedback"] = round(time.monotonic() - t1, 2)
        result["scratch"] = str(course)
        return self._finish(result, t0, root)

    def _finish(self, result: dict, t0: float, root: Path | None = None) -> dict:
        result["score"] = float(sum(result["parts"].values()))
        result["max_score"] = float(sum(p for _, p in self.parts))
        result["seconds"] = round(time.monotonic() - t0, 2)
        result.setdefault("scratch", None)
        return result


def _merge(course: Path, lab: str, parts, results: list[dict], state_dir: Path) -> None:
    """The single writer: copy a result's files into the course, upsert the gradebook, record the state."""
    import warnings

    from nbgrader.api import Gradebook, MissingEntry

    with warnings.catch_warnings(), Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        warnings.simplefilter("ignore")  # nbgrader's API triggers SQLAlchemy autoflush warnings
        for res in results:
            student = res["student_id"]
            if res.get("scratch"):
                scratch = Path(res["scratch"])
                for kind in ("submitted", "autograded", "feedback"):
                    src = scratch / kind / student / lab
                    if src.is_dir():
                        dest = course / kind / student / lab
                        shutil.rmtree(dest, ignore_errors=True)
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copytree(src, dest)
            if res["status"] in ("missing", "invalid-notebook"):
                try:
                    gb.remove_submission(lab, student)
                except MissingEntry:
                    pass
            else:
                gb.update_or_create_student(student)
                try:
                    gb.find_submission(lab, student)
                except MissingEntry:
                    gb.update_or_create_submission(lab, student)
                for g, _ in parts:
                    grade = gb.find_grade(g, lab, lab, student)
                    grade.auto_score = float(res["parts"][g])
                    grade.needs_manual_grade = False
                gb.db.commit()
            state = {k: v for k, v in res.items() if k != "scratch"}
            tmp = state_dir / f".{student}.json.tmp"
            tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
            os.replace(tmp, state_dir / f"{student}.json")


def _ensure_assignment(lab: str, course: Path) -> None:
    from nbgrader.api import Gradebook, MissingEntry

    db = course / "gradebook.db"
    if db.exists() and (course / "release" / lab).is_dir():
        with Gradebook(f"sqlite:///{db}") as gb:
            try:
                gb.find_assignment(lab)
                return
            except MissingEntry:
                pass
    release(lab, course)


def _remove_stale_scratch() -> None:
    """Scratch folders ``cg-<pid>-*`` left behind by grading runs that were killed."""
    for d in Path(tempfile.gettempdir()).glob("cg-*-*"):
        try:
            pid = int(d.name.split("-")[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            pass


def grade(
    lab: str,
    submissions: str | os.PathLike,
    course_dir: str | os.PathLike | None = None,
    *,
    workers: int = 1,
    limits: Limits | None = None,
    feedback: bool = True,
    regrade: bool = False,
    sandboxed: bool | None = None,
    progress: bool = True,
    log=None,
) -> dict:
    """Autograde every submission of ``lab`` in parallel, isolated, limited and resumable.

    Each submission is graded by ``nbgrader autograde`` in its own scratch course, with its kernel
    inside :mod:`courselib.sandbox` (no view of the course, the submissions or the network; limits
    of ``limits``), then every graded test cell is re-run in a clean room (:mod:`courselib.cleanroom`):
    a part scores only if it passes there too (on parts the solution passes there). One writer merges
    the results into the course's gradebook and ``grades/.state/<lab>/<student>.json``; a submission
    whose notebook and settings are unchanged since its last grading is not graded again (so an
    interrupted run resumes), unless ``regrade``.

    Returns a summary dict: ``{"csv": Path, "results": {student: result}, "graded_now": [...],
    "reused": [...], "counts": {status: n}, "seconds": float, "workers": int}``.
    """
    course = find_course_dir(course_dir)
    _check_lab(lab, course)
    limits = limits or Limits()
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    from . import sandbox

    if sandboxed is None:
        sandboxed = sandbox.available()
    elif sandboxed and not sandbox.available():
        raise GradingError("the sandbox needs root and util-linux unshare (user, mount, net, pid namespaces)")
    say = log or (lambda msg: print(msg, flush=True))
    if not sandboxed:
        say("courselib grade: WARNING: no sandbox on this machine; student code runs unisolated")
    t_start = time.monotonic()
    _ensure_assignment(lab, course)
    source_sha = _sha256((course / "source" / lab / f"{lab}{NOTEBOOK_SUFFIX}").read_bytes())
    settings = json.dumps(
        {"v": GRADER_VERSION, "limits": asdict(limits), "source": source_sha, "sandboxed": sandboxed}, sort_keys=True
    )
    state_dir = _state_dir(course, lab)
    state_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_scratch()
    base = Path(tempfile.mkdtemp(prefix=f"cg-{os.getpid()}-"))
    try:
        os.chmod(base, 0o755)
        subs = collect_submissions(lab, submissions, base / "unzipped")
        states = _load_states(course, lab)
        jobs, reused = [], []
        for idx, (student, nb) in enumerate(sorted(subs.items())):
            key = _sha256(settings.encode() + b"\0" + (nb.read_bytes() if nb is not None else b"<missing>"))
            if not regrade and states.get(student, {}).get("key") == key:
                reused.append(student)
            else:
                jobs.append(_Job(idx, student, nb, key))
        sub_path = Path(submissions).resolve()
        extra_hide = [sub_path if sub_path.is_dir() else sub_path.parent, base]
        grader = _Grader(lab, course, limits, base, _hidden_paths(course, extra_hide), feedback, sandboxed)
        results = {s: states[s] for s in reused}
        if reused:  # the gradebook may lag behind the state files if a run was killed: re-merge (idempotent)
            _merge(course, lab, grader.parts, [states[s] for s in reused], state_dir)
        if jobs:
            grader.make_template()
            grader.calibrate()
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=len(jobs), desc=f"grading {lab}", unit="nb", file=sys.stdout, ascii=True)
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(grader.grade_one, job): job for job in jobs}
                try:
                    for fut in as_completed(futures):
                        job = futures[fut]
                        try:
                            res = fut.result()
                        except Exception as exc:
                            res = grader._finish(
                                {
                                    "student_id": job.student,
                                    "lab": lab,
                                    "key": job.key,
                                    "status": "crashed",
                                    "notes": [f"grader error: {exc!r}"[:300]],
                                    "parts": {g: 0.0 for g, _ in grader.parts},
                                },
                                time.monotonic(),
                            )
                        _merge(course, lab, grader.parts, [res], state_dir)
                        if res.get("scratch"):
                            shutil.rmtree(Path(res["scratch"]).parent, ignore_errors=True)
                        res.pop("scratch", None)
                        results[job.student] = res
                        if bar is not None:
                            bar.update(1)
                            bar.set_postfix_str(f"{job.student}: {res['status']} {res['score']:g}")
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
                finally:
                    if bar is not None:
                        bar.close()
        out = export_grades(lab, course)
        leaderboard = challenge_leaderboard(lab, course, subs, base) if lab in CHALLENGE_LABS else None
        counts = {s: sum(1 for r in results.values() if r["status"] == s) for s in STATUSES}
        return {
            "csv": out,
            "results": results,
            "graded_now": sorted(j.student for j in jobs),
            "reused": sorted(reused),
            "counts": counts,
            "seconds": time.monotonic() - t_start,
            "workers": workers,
            "verifiable": sorted(grader.verifiable),
            "leaderboard": leaderboard,
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)


#: Labs whose submissions also carry a model to score (see courselib.challenge): grading them
#: writes a leaderboard beside the grades.
CHALLENGE_LABS = {"lab06_challenge"}


def challenge_leaderboard(lab: str, course: Path, subs: dict[str, Path | None], scratch: Path) -> Path:
    """Score every student's ``<student>/<lab>/submission/`` with :func:`courselib.challenge.grade_challenge`.

    ``subs`` maps student ids to their notebooks (from :func:`collect_submissions`); the model folder sits
    beside the notebook. Loading a submission never unpickles or runs student code (safetensors plus an
    allow-listed architecture), so this runs in the grader's own process, every model timed in the same
    process as the reference. Writes ``grades/<lab>_leaderboard.csv`` and ``.html``; returns the HTML path.
    A student whose submission folder is absent or refused gets a status and no score on the board.
    """
    from .challenge import grade_challenge

    roots = {nb.parent.parent.parent for nb in subs.values() if nb is not None}
    # nbgrader's layout shares one root; flat zip files carry no model folder (every row is then missing)
    root = roots.pop() if len(roots) == 1 else scratch / "no-model-folders"
    root.mkdir(parents=True, exist_ok=True)
    grade_challenge(root, course / "grades", lab=lab, students=sorted(subs))
    return course / "grades" / f"{lab}_leaderboard.html"


def summary_table(summary: dict) -> str:
    """A Markdown table of a :func:`grade` summary: counts per status, mean score, time."""
    results = summary["results"]
    lines = ["| status | students | mean score |", "|---|---:|---:|"]
    for status in STATUSES:
        rs = [r for r in results.values() if r["status"] == status]
        if rs:
            lines.append(f"| {status} | {len(rs)} | {sum(r['score'] for r in rs) / len(rs):.2f} |")
    lines.append(
        f"| **all** | {len(results)} | {(sum(r['score'] for r in results.values()) / max(len(results), 1)):.2f} |"
    )
    lines.append("")
    lines.append(
        f"graded now: {len(summary['graded_now'])}, reused from an earlier run: {len(summary['reused'])}, "
        f"{summary['workers']} worker(s), {summary['seconds']:.1f} s; grades: {summary['csv']}"
    )
    return "\n".join(lines)
