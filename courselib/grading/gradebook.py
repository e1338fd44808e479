"""The gradebook side of grading: per-student state files, the single writer, the grades CSV.

Grading workers never write the course's gradebook: each returns a result, and :func:`merge_results`
(one writer) copies its files into the course, upserts nbgrader's gradebook and records
``grades/.state/<lab>/<student>.json`` atomically, so a killed run resumes where it stopped.
:func:`export_grades` writes ``grades/<lab>.csv``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import warnings
from pathlib import Path

from nbgrader.api import Gradebook, MissingEntry

from .course import find_course_dir, lab_parts, release


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
) -> Path:
    """Write ``grades/<lab>.csv``: one row per student.

    Columns: ``student_id``, ``status`` (see :data:`STATUSES`), ``score``, ``max_score`` and one
    column per graded part (its ``grade_id``). Rows come from :func:`grade`'s results (statuses and
    scores), then from nbgrader's gradebook for submissions graded otherwise (status ``graded``);
    ``students`` adds ``missing`` rows for students with no submission at all.
    """
    course = find_course_dir(course_dir)
    parts = lab_parts(lab, course)
    max_score = sum(p for _, p in parts)
    out = Path(out_csv) if out_csv else course / "grades" / f"{lab}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = {}
    for student, st in load_states(course, lab).items():
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


def merge_results(course: Path, lab: str, parts, results: list[dict], state_dir: Path) -> None:
    """The single writer: copy a result's files into the course, upsert the gradebook, record the state."""
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


def ensure_assignment(lab: str, course: Path) -> None:
    db = course / "gradebook.db"
    if db.exists() and (course / "release" / lab).is_dir():
        with Gradebook(f"sqlite:///{db}") as gb:
            try:
                gb.find_assignment(lab)
                return
            except MissingEntry:
                pass
    release(lab, course)
