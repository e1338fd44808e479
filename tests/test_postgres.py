"""The gradebook in PostgreSQL: a real server started by the fixture in a temporary data directory.

nbgrader's own commands read what ``courselib grade --db`` wrote; concurrent writers lose and duplicate
nothing; the database going away mid-run fails clearly and the same command then completes the run.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _servers import PostgresServer, postgres_bindir
from nbgrader.api import Gradebook

from courselib import grading
from courselib.grading import gradebook, mutants
from courselib.grading.course import scratch_course

pytestmark = [pytest.mark.xdist_group("postgres")]

REPO = Path(__file__).resolve().parents[1]
LAB = "lab00_memory"


@pytest.fixture(scope="module")
def pg():
    if postgres_bindir() is None:
        pytest.skip("PostgreSQL is not installed (Debian's postgresql; `make test` installs it when run as root)")
    server = PostgresServer()
    yield server
    server.close()


@pytest.fixture
def db(pg, request):
    """A fresh database on the shared server for each test."""
    name = "gb_" + request.node.name.lower().replace("[", "_").replace("]", "")[:40]
    pg._run([str(pg.bindir / "dropdb"), "--if-exists", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", name])
    pg._run([str(pg.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", name])
    return f"postgresql://postgres@127.0.0.1:{pg.port}/{name}"


def make_course(root: Path) -> Path:
    return scratch_course(LAB, root, REPO / "labs", release_lab=False)


def make_submissions(root: Path, course: Path, n_solutions: int = 1) -> Path:
    subs = root / "subs"
    nb = json.loads((course / "source" / LAB / f"{LAB}.ipynb").read_text())
    wrong = mutants.apply_mutant(
        nb, {"id": "partial", "cell": "q1_code", "source": "def nbytes_of(shape, dtype):\n    return 0\n"}
    )
    books = {"partial": wrong, **{f"solution{i}": nb for i in range(n_solutions)}}
    for student, book in books.items():
        d = subs / student / LAB
        d.mkdir(parents=True)
        (d / f"{LAB}.ipynb").write_text(json.dumps(book))
    return subs


@pytest.mark.slow
def test_nbgrader_export_reads_what_courselib_grade_wrote(tmp_path, db):
    course = make_course(tmp_path)
    subs = make_submissions(tmp_path, course)
    summary = grading.grade(LAB, subs, course, workers=2, db=db, progress=False)
    assert summary["counts"]["graded"] == 2
    assert not (course / "gradebook.db").exists(), "the SQLite gradebook was written instead of PostgreSQL"
    out = tmp_path / "nbgrader_export.csv"
    subprocess.run(
        [sys.executable, "-m", "nbgrader", "export", f"--db={db}", f"--to={out}"],
        cwd=course,
        check=True,
        capture_output=True,
        env=grading.course.nbgrader_env(),
    )
    rows = {r["student_id"]: r for r in csv.DictReader(out.open()) if r["assignment"] == LAB}
    max_score = sum(p for _, p in grading.lab_parts(LAB, course))
    assert float(rows["solution0"]["raw_score"]) == max_score
    assert 0 < float(rows["partial"]["raw_score"]) < max_score
    ours = {r["student_id"]: r for r in csv.DictReader(grading.export_grades(LAB, course, db=db).open())}
    assert {s: float(r["score"]) for s, r in ours.items()} == {s: float(r["raw_score"]) for s, r in rows.items()}


def _writer(args):
    """One grader process merging synthetic results into the shared gradebook."""
    course, db, students, seed = args
    parts = grading.lab_parts(LAB, course)
    state_dir = Path(course) / "grades" / ".state" / f"w{seed}"
    state_dir.mkdir(parents=True, exist_ok=True)
    for s in students:
        res = {
            "student_id": s,
            "lab": LAB,
            "key": f"k{seed}",
            "status": "graded",
            "notes": [],
            "parts": {g: float(p) for g, p in parts},
            "score": float(sum(p for _, p in parts)),
            "files": {},
        }
        gradebook.merge_results(Path(course), LAB, parts, [res], state_dir, db=db)
    return len(students)


def test_concurrent_writers_lose_and_duplicate_nothing(tmp_path, db):
    course = make_course(tmp_path)
    grading.release(LAB, course, db=db)
    shared = [f"both{i:02d}" for i in range(6)]  # every one written by all three processes at once
    jobs = [(str(course), db, shared + [f"only{w}_{i:02d}" for i in range(4)], w) for w in range(3)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        assert pool.map(_writer, jobs) == [10, 10, 10]
    with Gradebook(db) as gb:
        students = sorted(s.id for s in gb.students)
        subs = sorted(s.student.id for s in gb.find_assignment(LAB).submissions)
        max_score = sum(p for _, p in grading.lab_parts(LAB, course))
        scores = {s.student.id: s.score for s in gb.find_assignment(LAB).submissions}
    expected = sorted(shared + [f"only{w}_{i:02d}" for w in range(3) for i in range(4)])
    assert students == expected and subs == expected  # nothing lost, nothing twice
    assert set(scores.values()) == {max_score}


def _states(state_dir: Path) -> list[str]:
    """Students with a recorded result (files named ``_*`` are the grader's own, not students')."""
    return sorted(p.stem for p in state_dir.glob("*.json") if not p.name.startswith("_"))


@pytest.mark.slow
def test_the_database_going_away_fails_clearly_and_a_rerun_completes(tmp_path, pg, db):
    course = make_course(tmp_path)
    subs = make_submissions(tmp_path, course, n_solutions=3)
    state_dir = course / "grades" / ".state" / LAB
    errors = []

    def run():
        try:
            grading.grade(LAB, subs, course, workers=1, db=db, progress=False)
        except grading.GradingError as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 600
    while t.is_alive() and time.monotonic() < deadline and not _states(state_dir):
        time.sleep(0.1)
    pg.stop()
    t.join(timeout=600)
    pg.start()
    done = _states(state_dir)
    if not errors:
        pytest.skip("the whole batch was merged before the database went away")
    assert isinstance(errors[0], gradebook.GradebookUnavailable)
    assert "run the same command again" in str(errors[0]) or "unreachable" in str(errors[0])
    assert 1 <= len(done) < 4
    again = grading.grade(LAB, subs, course, workers=2, db=db, progress=False)
    assert sorted(again["reused"]) == done
    assert sorted(again["graded_now"]) == sorted(set(again["results"]) - set(done))
    with Gradebook(db) as gb:
        subs_db = sorted(s.student.id for s in gb.find_assignment(LAB).submissions)
    assert subs_db == sorted(again["results"]) and len(subs_db) == 4
