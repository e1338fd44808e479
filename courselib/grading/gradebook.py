"""The gradebook side of grading: per-student state files, the single writer, the grades CSV.

Grading workers never write the course's gradebook: each returns a result, and :func:`merge_results`
(one writer) copies its files into the course, upserts nbgrader's gradebook and records
``grades/.state/<lab>/<student>.json`` atomically, so a killed run resumes where it stopped.
:func:`export_grades` writes ``grades/<lab>.csv``.

The gradebook is any database nbgrader's SQLAlchemy layer takes (:func:`db_url`): the course's
``CourseDirectory.db_url`` from ``nbgrader_config.py`` (SQLite ``gradebook.db`` by default), or an
explicit URL such as ``postgresql://user@host/db`` shared by graders on several machines and by a
JupyterHub's formgrader. Writes to it are retried when two graders race on the same row (a unique
constraint), and a database that goes away fails the run with :class:`GradebookUnavailable`: what was
merged before is in the state files, so re-running the same command grades only what is missing.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
import warnings
from pathlib import Path

from nbgrader.api import Gradebook, InvalidEntry, MissingEntry
from sqlalchemy.exc import IntegrityError, OperationalError
from traitlets.config.loader import PyFileConfigLoader

from .course import GradingError, find_course_dir, lab_notebooks, lab_parts, release, split_part

#: How often a write that lost a race with another grader (a unique-constraint error) is retried.
WRITE_RETRIES = 8


class GradebookUnavailable(GradingError):
    """The gradebook's database cannot be reached (or went away during a run)."""


def db_url(course: Path, override: str | None = None) -> str:
    """The gradebook's SQLAlchemy URL: ``override``, else the course config's ``CourseDirectory.db_url``,
    else ``sqlite:///<course>/gradebook.db``."""
    if override:
        return str(override)
    cfg = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
    url = cfg.CourseDirectory.get("db_url") if "CourseDirectory" in cfg else None
    return str(url) if url else f"sqlite:///{course / 'gradebook.db'}"


def _is_sqlite_missing(url: str) -> bool:
    return url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).exists()


def open_gradebook(url: str) -> Gradebook:
    """``nbgrader.api.Gradebook(url)``, with an unreachable database reported as :class:`GradebookUnavailable`."""
    try:
        return Gradebook(url)
    except OperationalError as exc:
        raise GradebookUnavailable(f"the gradebook database {_redact(url)} is unreachable: {exc.orig}") from None


def _redact(url: str) -> str:
    """``url`` without its password."""
    head, sep, tail = url.partition("://")
    if sep and "@" in tail:
        cred, _, host = tail.rpartition("@")
        return f"{head}://{cred.split(':')[0]}:***@{host}" if ":" in cred else url
    return url


def lab_state_dir(course: Path, lab: str) -> Path:
    return course / "grades" / ".state" / lab


def load_states(course: Path, lab: str) -> dict[str, dict]:
    out = {}
    d = lab_state_dir(course, lab)
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
    *,
    db: str | None = None,
) -> Path:
    """Write ``grades/<lab>.csv``: one row per student.

    Columns: ``student_id``, ``status`` (see :data:`STATUSES`, and ``needs-manual-grade`` for a submission
    graded but with answers still waiting for a grade by hand), ``score`` (the parts graded so far),
    ``max_score``, one column per graded part (its key, :func:`~courselib.grading.course.lab_parts`; empty while
    the part waits for a grade by hand), ``needs_manual_grade`` (those parts) and ``sandbox`` (``bubblewrap``,
    or ``none (--no-sandbox)`` when student code ran unisolated; empty for rows not graded by :func:`grade`).
    Rows come from :func:`grade`'s results (statuses and scores), with every score an instructor entered in
    nbgrader's formgrader taken from the gradebook, then from nbgrader's gradebook for submissions graded
    otherwise (status ``graded``); ``students`` adds ``missing`` rows for students with no submission at all;
    ``db`` is the gradebook's URL (default :func:`db_url`).
    """
    course = find_course_dir(course_dir)
    parts = lab_parts(lab, course)
    notebooks = lab_notebooks(lab, course)
    max_score = sum(p for _, p in parts)
    out = Path(out_csv) if out_csv else course / "grades" / f"{lab}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    states = load_states(course, lab)
    graded_by_hand: dict[tuple[str, str], float] = {}  # scores entered in the formgrader
    rows = {}
    url = db_url(course, db)
    if not _is_sqlite_missing(url):
        with open_gradebook(url) as gb:
            for student, st in states.items():
                for g in st.get("pending") or ():
                    notebook, grade_id = split_part(lab, g, notebooks)
                    try:
                        grade = gb.find_grade(grade_id, notebook, lab, student)
                    except MissingEntry:
                        continue
                    if grade.manual_score is not None:
                        graded_by_hand[(student, g)] = float(grade.manual_score)
            for student in sorted(s.id for s in gb.students):
                if student in states:
                    continue
                try:
                    gb.find_submission(lab, student)
                except MissingEntry:
                    continue
                scores, pending = {}, []
                for key, _ in parts:
                    notebook, grade_id = split_part(lab, key, notebooks)
                    try:
                        grade = gb.find_grade(grade_id, notebook, lab, student)
                    except MissingEntry:
                        scores[key] = 0.0
                        continue
                    if grade.needs_manual_grade:
                        pending.append(key)
                    scores[key] = grade.score
                rows[student] = _row(student, "graded", scores, pending, max_score, "")
    for student, st in states.items():
        scores = {g: graded_by_hand.get((student, g), st["parts"].get(g, 0.0)) for g, _ in parts}
        pending = [g for g in st.get("pending") or () if (student, g) not in graded_by_hand]
        rows[student] = _row(student, st["status"], scores, pending, max_score, st.get("sandbox", ""))
    for student in students or []:
        if student not in rows:
            rows[student] = _row(student, "missing", {g: 0.0 for g, _ in parts}, [], max_score, "")
    tmp = out.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        fields = ["student_id", "status", "score", "max_score", *[g for g, _ in parts], "needs_manual_grade", "sandbox"]
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows[k] for k in sorted(rows))
    os.replace(tmp, out)
    return out


def _row(student: str, status: str, scores: dict, pending: list, max_score: float, sandbox: str) -> dict:
    """One row of the grade sheet: a part waiting for a grade by hand is empty, not 0, and said so."""
    cells = {g: ("" if g in pending else v) for g, v in scores.items()}
    return {
        "student_id": student,
        "status": "needs-manual-grade" if pending and status == "graded" else status,
        "score": float(sum(v for g, v in scores.items() if g not in pending and v is not None)),
        "max_score": max_score,
        **cells,
        "needs_manual_grade": " ".join(pending),
        "sandbox": sandbox,
    }


def merge_results(
    course: Path, lab: str, parts, results: list[dict], state_dir: Path, *, db: str | None = None
) -> None:
    """The single writer: write a result's files into the course, upsert the gradebook, record the state.

    A result carries its files as ``files`` (``{"autograded/<student>/<lab>/<lab>.ipynb": bytes, ...}``,
    from a worker on any machine) or, from an older local run, a ``scratch`` course folder to copy from.
    The state file is written only after the gradebook committed, so a crash in between re-grades that
    submission on the next run instead of losing it. Raises :class:`GradebookUnavailable` when the
    database cannot be reached.
    """
    url = db_url(course, db)
    try:
        with warnings.catch_warnings(), open_gradebook(url) as gb:
            warnings.simplefilter("ignore")  # nbgrader's API triggers SQLAlchemy autoflush warnings
            for res in results:
                res.setdefault("notebooks", lab_notebooks(lab, course))
                _write_files(course, lab, res)
                _upsert(gb, lab, parts, res)
                _write_state(state_dir, res)
    except OperationalError as exc:
        raise GradebookUnavailable(
            f"the gradebook database {_redact(url)} went away while recording grades ({exc.orig}); "
            "what was recorded before is kept: run the same command again to grade the rest"
        ) from None


def _write_files(course: Path, lab: str, res: dict) -> None:
    student = res["student_id"]
    files = res.get("files")
    if files is not None:
        for kind in ("submitted", "autograded", "feedback"):
            shutil.rmtree(course / kind / student / lab, ignore_errors=True)
        for rel, data in files.items():
            dest = (course / rel).resolve()
            kind_ok = Path(rel).parts[0] in ("submitted", "autograded", "feedback")
            if not kind_ok or Path(rel).parts[1:3] != (student, lab) or not str(dest).startswith(str(course.resolve())):
                raise GradingError(f"result of {student} names a file outside its folders: {rel!r}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        return
    if res.get("scratch"):
        scratch = Path(res["scratch"])
        for kind in ("submitted", "autograded", "feedback"):
            src = scratch / kind / student / lab
            if src.is_dir():
                dest = course / kind / student / lab
                shutil.rmtree(dest, ignore_errors=True)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(src, dest)


def _upsert(gb: Gradebook, lab: str, parts, res: dict) -> None:
    """Record one result, retrying when a concurrent grader created the same row first."""
    student = res["student_id"]
    for attempt in range(WRITE_RETRIES):
        try:
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
                notebooks = res.get("notebooks") or [lab]
                pending = set(res.get("pending") or ())
                for g, _ in parts:
                    notebook, grade_id = split_part(lab, g, notebooks)
                    grade = gb.find_grade(grade_id, notebook, lab, student)
                    if g in pending:  # an answer graded by hand: the formgrader lists it until the instructor has
                        grade.auto_score = None
                        grade.needs_manual_grade = grade.manual_score is None
                    else:
                        grade.auto_score = float(res["parts"][g])
                        grade.needs_manual_grade = False
            gb.db.commit()
            return
        except (IntegrityError, InvalidEntry):  # nbgrader wraps IntegrityError in InvalidEntry
            gb.db.rollback()
            if attempt == WRITE_RETRIES - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def _write_state(state_dir: Path, res: dict) -> None:
    state = {k: v for k, v in res.items() if k not in ("scratch", "files")}
    tmp = state_dir / f".{res['student_id']}.json.tmp"
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(tmp, state_dir / f"{res['student_id']}.json")


def ensure_assignment(lab: str, course: Path, *, db: str | None = None) -> None:
    """Make sure the gradebook knows ``lab`` (nbgrader ``generate_assignment`` if it does not)."""
    url = db_url(course, db)
    if not _is_sqlite_missing(url) and (course / "release" / lab).is_dir():
        with open_gradebook(url) as gb:
            try:
                gb.find_assignment(lab)
                return
            except MissingEntry:
                pass
    release(lab, course, db=db)
