"""Grading on Dask with real components: a scheduler and two worker processes on 127.0.0.1.

The same submissions graded locally and on the cluster give the same CSV, statuses and feedback; a worker
killed mid-batch (its whole process group: a lost machine) has its submissions re-run elsewhere; after the
scheduler dies, the same command grades only what is missing. Nothing is lost or graded twice.
"""

from __future__ import annotations

import csv
import json
import re
import threading
import time
from pathlib import Path

import pytest
from _servers import DaskCluster

from courselib import grading
from courselib.grading import mutants
from courselib.grading.course import scratch_course

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cluster")]

REPO = Path(__file__).resolve().parents[1]
LAB = "lab00_memory"


def make_course(root: Path) -> Path:
    return scratch_course(LAB, root, REPO / "labs")


def make_submissions(root: Path, course: Path, n_extra: int = 0) -> Path:
    """solution, blank release, a partial answer (part 1 wrong), and ``n_extra`` more copies of the solution."""
    subs = root / "subs"
    nb = json.loads((course / "source" / LAB / f"{LAB}.ipynb").read_text())
    wrong = mutants.apply_mutant(
        nb, {"id": "partial", "cell": "q1_code", "source": "def nbytes_of(shape, dtype):\n    return 0\n"}
    )
    books = {
        "solution": nb,
        "partial": wrong,
        "blank": json.loads((course / "release" / LAB / f"{LAB}.ipynb").read_text()),
    }
    for i in range(n_extra):
        books[f"extra{i}"] = nb
    for student, book in books.items():
        d = subs / student / LAB
        d.mkdir(parents=True)
        (d / f"{LAB}.ipynb").write_text(json.dumps(book))
    return subs


def read_csv(course: Path) -> dict:
    return {r["student_id"]: r for r in csv.DictReader((course / "grades" / f"{LAB}.csv").open())}


def feedback(course: Path) -> dict:
    out = {}
    for f in sorted((course / "feedback").rglob("*.html")):
        text = f.read_text()
        text = re.sub(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?", "<time>", text)
        out[str(f.relative_to(course))] = text
    return out


@pytest.fixture
def dask_cluster():
    cluster = DaskCluster(n=2)
    yield cluster
    cluster.close()


def test_cluster_gives_the_same_grades_as_a_local_run(tmp_path, dask_cluster):
    local_course = make_course(tmp_path / "local")
    subs = make_submissions(tmp_path, local_course)
    local = grading.grade(LAB, subs, local_course, workers=2, progress=False)
    remote_course = make_course(tmp_path / "remote")
    remote = grading.grade(LAB, subs, remote_course, cluster=dask_cluster.address, progress=False)
    assert {s: r["status"] for s, r in remote["results"].items()} == {
        s: r["status"] for s, r in local["results"].items()
    }
    rows_l, rows_r = read_csv(local_course), read_csv(remote_course)
    assert rows_r == rows_l
    assert float(rows_l["solution"]["score"]) == float(rows_l["solution"]["max_score"]) > 0
    assert float(rows_l["blank"]["score"]) == 0.0
    assert 0 < float(rows_l["partial"]["score"]) < float(rows_l["partial"]["max_score"])
    assert feedback(remote_course) == feedback(local_course) != {}
    workers = {r.get("worker") for r in remote["results"].values()}
    assert None not in workers  # every submission was graded by a Dask worker process


def _count_states(course: Path) -> int:
    d = course / "grades" / ".state" / LAB
    return len([p for p in d.glob("*.json") if not p.name.startswith("_")]) if d.is_dir() else 0


def _gradebook_submissions(course: Path) -> list[str]:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        return sorted(s.student.id for s in gb.find_assignment(LAB).submissions)


def test_a_worker_killed_mid_batch_has_its_submissions_rerun_elsewhere(tmp_path, dask_cluster):
    course = make_course(tmp_path)
    subs = make_submissions(tmp_path, course, n_extra=2)
    victim = dask_cluster.workers[0]

    def kill_when_busy():
        """Kill worker w0's whole process group a few seconds into its first submission."""
        from distributed import Client

        deadline = time.monotonic() + 600
        with Client(dask_cluster.address, timeout=30) as c:
            while time.monotonic() < deadline:
                addr = [a for a, w in c.scheduler_info()["workers"].items() if w.get("name") == "w0"]
                if addr and c.processing(workers=addr).get(addr[0]):
                    time.sleep(3)  # grading one notebook takes far longer: this is mid-task
                    break
                time.sleep(0.2)
        DaskCluster.kill(victim)

    killer = threading.Thread(target=kill_when_busy, daemon=True)
    killer.start()
    summary = grading.grade(LAB, subs, course, cluster=dask_cluster.address, progress=False)
    killer.join(timeout=60)
    assert victim.poll() is not None, "the worker was not killed during the batch"
    rows = read_csv(course)
    assert set(rows) == {"solution", "partial", "blank", "extra0", "extra1"}
    assert all(rows[s]["status"] == "graded" for s in rows)
    for s in ("solution", "extra0", "extra1"):
        assert float(rows[s]["score"]) == float(rows[s]["max_score"])
    assert _count_states(course) == 5
    assert _gradebook_submissions(course) == sorted(rows)  # one submission each: nothing twice
    assert len({r["worker"] for r in summary["results"].values()}) >= 1


def test_after_a_scheduler_restart_the_same_command_grades_only_what_is_missing(tmp_path, dask_cluster):
    course = make_course(tmp_path)
    subs = make_submissions(tmp_path, course, n_extra=2)
    errors = []

    def run():
        try:
            grading.grade(LAB, subs, course, cluster=dask_cluster.address, progress=False)
        except grading.GradingError as exc:
            errors.append(str(exc))

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 600
    while _count_states(course) < 1 and time.monotonic() < deadline and t.is_alive():
        time.sleep(0.2)
    assert _count_states(course) >= 1, "nothing was graded before the scheduler was to be killed"
    dask_cluster.kill_scheduler()
    t.join(timeout=300)
    done_before = _count_states(course)
    if not errors:  # the whole batch finished before the scheduler died: nothing left to test
        pytest.skip("the batch finished before the scheduler was killed")
    assert "run the same command again" in errors[0]
    assert 1 <= done_before < 5
    for w in dask_cluster.workers:
        DaskCluster.kill(w)
    dask_cluster.workers.clear()
    dask_cluster.start_scheduler()
    dask_cluster.add_worker()
    dask_cluster.add_worker()
    dask_cluster.wait_for_workers(2)
    again = grading.grade(LAB, subs, course, cluster=dask_cluster.address, progress=False)
    assert len(again["reused"]) == done_before
    assert len(again["graded_now"]) == 5 - done_before
    assert not set(again["reused"]) & set(again["graded_now"])
    rows = read_csv(course)
    assert len(rows) == 5 and all(r["status"] == "graded" for r in rows.values())
    assert float(rows["solution"]["score"]) == float(rows["solution"]["max_score"])
    assert _gradebook_submissions(course) == sorted(rows)
