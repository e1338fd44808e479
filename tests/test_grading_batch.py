"""`courselib grade` end to end on lab 1: an adversarial batch, resume after a kill, determinism.

Every hostile submission is graded in one run with correct and partly correct ones; each gets
its expected status and exactly the score of the honest answer it contains. Needs the sandbox
(root + util-linux unshare); short limits keep the batch to a few minutes on 2 cores.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from courselib import grading
from courselib.grading import sandbox
from courselib.grading.course import scratch_course

REPO = Path(__file__).resolve().parents[1]
LAB = "lab01_binary_codes"
NB = f"{LAB}.ipynb"
LIMITS = grading.Limits(cell_timeout=30, notebook_timeout=240, memory_mb=2048, output_kb=256)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sandbox.available(), reason="needs root and unshare namespaces"),
    pytest.mark.xdist_group("grading"),
]


def make_course(tmp_path: Path) -> Path:
    return scratch_course(LAB, tmp_path, REPO / "labs")


class Builder:
    """Student notebooks made from the release: solution cells filled from the source, then edited."""

    def __init__(self, course: Path):
        self.release = json.loads((course / "release" / LAB / NB).read_text())
        src = json.loads((course / "source" / LAB / NB).read_text())
        self.solutions = {}
        for cell in src["cells"]:
            meta = cell["metadata"].get("nbgrader", {})
            if meta.get("solution"):
                self.solutions[meta["grade_id"]] = "".join(cell["source"])

    def notebook(
        self,
        answers: dict[str, str] | None = None,
        blank: tuple = (),
        prepend: dict | None = None,
        append: dict | None = None,
        delete: tuple = (),
        edit: dict | None = None,
    ) -> dict:
        nb = json.loads(json.dumps(self.release))
        cells = []
        for cell in nb["cells"]:
            gid = cell["metadata"].get("nbgrader", {}).get("grade_id")
            if gid in delete:
                continue
            if gid in self.solutions and gid not in blank:
                code = (answers or {}).get(gid, self.solutions[gid])
                code = (prepend or {}).get(gid, "") + code + (append or {}).get(gid, "")
                cell["source"] = code
            if gid in (edit or {}):
                cell["source"] = edit[gid]
            cells.append(cell)
        nb["cells"] = cells
        return nb


def write(subs: Path, student: str, content, name: str = NB) -> Path:
    d = subs / student / LAB
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    if isinstance(content, dict):
        p.write_text(json.dumps(content))
    else:
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return p


WRONG_PACK = """
def pack_bits(bits):
    bits = np.asarray(bits)
    if bits.ndim != 2 or not np.all((bits == 0) | (bits == 1)):
        raise ValueError("bad bits")
    return np.packbits(bits.astype(np.uint8), axis=1, bitorder="big")  # wrong bit order
"""
WRONG_MEANS = """
def fit_means(X):
    return np.asarray(X, dtype=np.float64).mean(axis=0) + 1e-3   # wrong (slightly)

def binarize(X, means):
    X, means = np.asarray(X), np.asarray(means)
    if X.ndim != 2 or X.shape[1] != means.shape[0]:
        raise ValueError("mismatch")
    return (X > means).astype(np.uint8)
"""
ALWAYS_EQUAL = """
class _Anything(float):
    pass

class _AlwaysEqual:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __lt__(self, other): return True
    def __le__(self, other): return True
    def __gt__(self, other): return True
    def __ge__(self, other): return True
    def __sub__(self, other): return self
    def __rsub__(self, other): return self
    def __abs__(self): return self
    def __bool__(self): return True
    def __float__(self): return 0.0
    def all(self): return True

def precision_at_k(distances, relevance, k):
    if not 1 <= k <= np.asarray(distances).shape[1]:
        raise ValueError("bad k")
    return _AlwaysEqual()
"""
WRONG_MAP = """
def mean_average_precision(distances, relevance):
    return 0.0   # wrong
get_ipython().input_transformers_cleanup.append(
    lambda lines: ["pass\\n"] if any("mean_average_precision(" in l for l in lines)
    and any("assert" in l for l in lines) else lines)
"""
PATCH_NUMPY = """
import numpy.testing, courselib.binary_codes
np.allclose = lambda *a, **k: True
np.array_equal = lambda *a, **k: True
numpy.testing.assert_allclose = lambda *a, **k: None
courselib.binary_codes.MeanThresholdBinarizer.transform = lambda self, X: binarize(X, fit_means(X))
"""


def probe(paths_read: list[str], paths_write: list[str], port: int | None) -> str:
    """A prefix that keeps the rest of the cell (the correct answer) from running if isolation leaks."""
    return f"""
import os, socket, glob
_leaks = []
for _p in {paths_read!r}:
    try:
        with open(_p, "rb") as _f:
            _leaks.append(("read", _p, len(_f.read())))
    except OSError:
        pass
for _p in {paths_write!r}:
    try:
        with open(_p, "ab") as _f:
            _f.write(b"pwned")
        _leaks.append(("write", _p))
    except OSError:
        pass
for _pid in os.listdir("/proc"):
    if _pid.isdigit():
        try:
            _cwd = os.readlink(f"/proc/{{_pid}}/cwd")
            if "course" in _cwd or "submissions" in _cwd:
                _leaks.append(("proc", _cwd))
        except OSError:
            pass
if {port!r} is not None:
    try:
        socket.create_connection(("127.0.0.1", {port!r}), timeout=3).close()
        _leaks.append(("net", {port!r}))
    except OSError:
        pass
assert not _leaks, _leaks
"""


def run_batch(tmp: Path) -> dict:
    course = make_course(tmp)
    b = Builder(course)
    subs = tmp / "submissions"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    hits = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                hits.append(1)
                conn.close()
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    correct = b.notebook()
    write(subs, "correct", correct)
    write(subs, "partly", b.notebook(answers={"q2_code": WRONG_PACK}))
    write(subs, "blank", b.release)
    write(subs, "infinite_loop", b.notebook(prepend={"q3_code": "while True:\n    pass\n"}))
    write(subs, "memory_hog", b.notebook(prepend={"q2_code": "_hog = np.ones((40_000, 1_000_000))\n"}))
    write(subs, "output_flood", b.notebook(prepend={"q4_code": "while True:\n    print('x' * 1000)\n"}))
    write(subs, "sys_exit", b.notebook(append={"q6_code": "\nimport sys\nsys.exit(3)\n"}))
    write(subs, "os_exit", b.notebook(append={"q1_code": "\nimport os\nos._exit(0)\n"}))
    write(
        subs,
        "killed_kernel",
        b.notebook(append={"q1_code": "\nimport os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"}),
    )
    write(subs, "invalid_json", '{"cells": [ this is not json')
    write(subs, "not_a_notebook", b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    write(subs, "json_not_notebook", json.dumps({"hello": "world"}))
    write(subs, "wrong_name", correct, name="lab01 (1).ipynb")
    (subs / "nothing" / LAB).mkdir(parents=True)
    write(subs, "deleted_cells", b.notebook(answers={"q2_code": WRONG_PACK}, delete=("q2_test", "q5_test")))
    write(
        subs,
        "edited_tests",
        b.notebook(answers={"q2_code": WRONG_PACK}, edit={"q2_test": "pass", "q6_test": "assert True"}),
    )
    write(subs, "always_equal", b.notebook(answers={"q5_code": ALWAYS_EQUAL}))
    write(subs, "patched_numpy", b.notebook(answers={"q1_code": WRONG_MEANS + PATCH_NUMPY}))
    write(subs, "input_transformer", b.notebook(answers={"q6_code": WRONG_MAP}))
    secrets = [
        str(course / "source" / LAB / NB),
        str(course / "gradebook.db"),
        str(REPO / "labs" / "source" / LAB / NB),
        str(REPO / ".git" / "HEAD"),
        str(subs / "correct" / LAB / NB),
        str(course / "nbgrader_config.py"),
    ]
    write(subs, "reads_solutions", b.notebook(prepend={"q1_code": probe(secrets, [], None)}))
    victims = [
        str(subs / "correct" / LAB / NB),
        str(course / "gradebook.db"),
        str(REPO / "courselib" / "pwned.py"),
        str(course / "source" / LAB / NB),
    ]  # /tmp is the sandbox's own (private, discarded): check_isolation checks the host's /tmp/pwned
    write(subs, "writes_elsewhere", b.notebook(prepend={"q1_code": probe([], victims, None)}))
    write(subs, "network", b.notebook(prepend={"q1_code": probe([], [], port)}))
    correct_sha = hashlib.sha256((subs / "correct" / LAB / NB).read_bytes()).hexdigest()
    source_sha = hashlib.sha256((course / "source" / LAB / NB).read_bytes()).hexdigest()
    summary = grading.grade(LAB, subs, course, workers=2, limits=LIMITS, progress=False, feedback=False)
    stop.set()
    t.join()
    listener.close()
    rows = {r["student_id"]: r for r in csv.DictReader(open(course / "grades" / f"{LAB}.csv"))}
    return {
        "summary": summary,
        "rows": rows,
        "course": course,
        "subs": subs,
        "hits": hits,
        "correct_sha": correct_sha,
        "source_sha": source_sha,
    }


# (status, parts that must lose their points) expected for each student; ALL: every part. The score is the
# lab's total minus those parts' points, so the expectations hold as the lab gains parts.
ALL = ("*",)
EXPECTED = {
    "correct": ("graded", ()),
    "partly": ("graded", ("q2_test",)),
    "blank": ("graded", ALL),
    "infinite_loop": ("timeout", ("q3_test", "q4_test")),  # q3 cell interrupted: q3 and q4 (uses hamming_matrix)
    "memory_hog": ("memory", ("q2_test",)),  # MemoryError in the q2 cell: q2 fails
    "output_flood": ("output-limit", ("q4_test",)),  # q4 cell stopped: q4 fails
    "sys_exit": ("graded", ()),  # IPython turns SystemExit into an error; the kernel lives
    "os_exit": ("crashed", ALL),
    "killed_kernel": ("crashed", ALL),
    "invalid_json": ("invalid-notebook", ALL),
    "not_a_notebook": ("invalid-notebook", ALL),
    "json_not_notebook": ("invalid-notebook", ALL),
    "wrong_name": ("missing", ALL),
    "nothing": ("missing", ALL),
    # as plain nbgrader (OverwriteCells.add_missing_cells False; tests/conformance): a deleted test cell's part
    # gets no automatic score and waits for a grade by hand (pending, 0 until then)
    "deleted_cells": ("tampered", ("q2_test", "q5_test")),
    "edited_tests": ("tampered", ("q2_test",)),
    # tricks in the student's own kernel change nothing the clean room judges: they are not evidence of
    # tampering (that is an edited locked cell), only the honest wrong answer under them loses its part
    "always_equal": ("graded", ("q5_test",)),
    "patched_numpy": ("graded", ("q1_test",)),
    "input_transformer": ("graded", ("q6_test",)),
    "reads_solutions": ("graded", ()),  # reads blocked: the answer cell runs on
    "writes_elsewhere": ("graded", ()),
    "network": ("graded", ()),
}


def expected_score(course: Path, lost) -> float:
    parts = dict(grading.lab_parts(LAB, course))
    return 0.0 if lost == ALL else float(sum(parts.values()) - sum(parts[g] for g in lost))


def test_adversarial_batch(tmp_path):
    """One run grades every hostile case with correct and partly correct notebooks (one test, so
    the batch runs once and on one xdist worker)."""
    batch = run_batch(tmp_path)
    check_statuses_and_scores(batch)
    check_hostile_parts(batch)
    check_isolation(batch)
    check_gradebook(batch)


def check_statuses_and_scores(batch):
    rows = batch["rows"]
    got = {s: (r["status"], float(r["score"])) for s, r in rows.items()}
    want = {s: (st, expected_score(batch["course"], lost)) for s, (st, lost) in EXPECTED.items()}
    results = batch["summary"]["results"]
    wrong = {
        s: {
            "got": got.get(s),
            "want": w,
            "parts": results.get(s, {}).get("parts"),
            "notes": results.get(s, {}).get("notes"),
        }
        for s, w in want.items()
        if got.get(s) != w
    }
    tiers = batch["summary"]["tiers"]  # a part the calibration moved to the sealed tier is judged in the kernel
    assert got.keys() == want.keys() and not wrong, json.dumps({**wrong, "tiers": tiers}, indent=1, default=str)
    pending = results["deleted_cells"]["pending"]
    assert pending == ["q2_test", "q5_test"], pending
    for r in rows.values():
        assert float(r["max_score"]) == expected_score(batch["course"], ())
        parts = [float(r[g] or 0.0) for g, _ in grading.lab_parts(LAB, batch["course"])]
        assert sum(parts) == float(r["score"])
    # a pending part has no score yet: an empty cell in the CSV, not a 0 that looks final
    assert [g for g, _ in grading.lab_parts(LAB, batch["course"]) if rows["deleted_cells"][g] == ""] == pending


def check_hostile_parts(batch):
    rows = batch["rows"]
    for student, part in [
        ("partly", "q2_test"),
        ("deleted_cells", "q2_test"),
        ("edited_tests", "q2_test"),
        ("always_equal", "q5_test"),
        ("patched_numpy", "q1_test"),
        ("input_transformer", "q6_test"),
    ]:
        assert float(rows[student][part] or 0.0) == 0.0, (student, part)  # "" while a part is pending


def check_isolation(batch):
    assert batch["hits"] == [], "a sandboxed kernel reached a host TCP port"
    subs, course = batch["subs"], batch["course"]
    assert hashlib.sha256((subs / "correct" / LAB / NB).read_bytes()).hexdigest() == batch["correct_sha"]
    assert hashlib.sha256((course / "source" / LAB / NB).read_bytes()).hexdigest() == batch["source_sha"]
    assert not (REPO / "courselib" / "pwned.py").exists() and not Path("/tmp/pwned").exists()


def check_gradebook(batch):
    from nbgrader.api import Gradebook, MissingEntry

    course, rows = batch["course"], batch["rows"]
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for student, row in rows.items():
            if row["status"] in ("missing", "invalid-notebook"):
                with pytest.raises(MissingEntry):
                    gb.find_submission(LAB, student)
            else:
                assert gb.find_submission(LAB, student).score == pytest.approx(float(row["score"]))
    assert (course / "autograded" / "always_equal" / LAB / NB).exists()


@pytest.mark.xdist_group("grading_resume")  # may run beside the batch under `make test` (-n 2 --dist loadgroup)
def test_resume_after_kill_and_determinism(tmp_path):
    course = make_course(tmp_path)
    b = Builder(course)
    subs = tmp_path / "submissions"
    write(subs, "a_correct", b.notebook())
    write(subs, "b_partly", b.notebook(answers={"q2_code": WRONG_PACK}))
    write(subs, "c_blank", b.release)
    write(subs, "d_invalid", "not json")
    state = course / "grades" / ".state" / LAB
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    cmd = [
        sys.executable,
        "-m",
        "courselib.grading.cli",
        "--course-dir",
        str(course),
        "grade",
        LAB,
        str(subs),
        "--workers",
        "1",
        "--cell-timeout",
        str(LIMITS.cell_timeout),
        "--notebook-timeout",
        str(LIMITS.notebook_timeout),
        "--memory-mb",
        "2048",
        "--output-kb",
        "256",
        "--no-feedback",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:  # kill once the first notebook is graded
        done = [p for p in state.glob("*.json") if not p.name.startswith("_")] if state.is_dir() else []
        if any(json.loads(p.read_text())["status"] == "graded" for p in done):
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p.stem: p.read_text() for p in state.glob("*.json") if not p.name.startswith("_")}
    assert "a_correct" in before and len(before) < 4, sorted(before)
    summary = grading.grade(LAB, subs, course, workers=1, limits=LIMITS, feedback=False, progress=False)
    assert sorted(summary["reused"]) == sorted(before)
    assert sorted(summary["graded_now"]) == sorted(set(["a_correct", "b_partly", "c_blank", "d_invalid"]) - set(before))
    rows = {r["student_id"]: r for r in csv.DictReader(open(summary["csv"]))}
    full = expected_score(course, ())
    partly = expected_score(course, ("q2_test",))
    assert {s: (r["status"], float(r["score"])) for s, r in rows.items()} == {
        "a_correct": ("graded", full),
        "b_partly": ("graded", partly),
        "c_blank": ("graded", 0.0),
        "d_invalid": ("invalid-notebook", 0.0),
    }
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        subs_db = [(s.student.id, s.assignment.name) for s in gb.find_assignment(LAB).submissions]
    assert sorted(subs_db) == [("a_correct", LAB), ("b_partly", LAB), ("c_blank", LAB)]  # no duplicates
    # determinism: grading the same submission again gives the same score, stored once (with feedback)
    twin = tmp_path / "again"
    shutil.copytree(subs / "b_partly", twin / "b_partly")
    again = grading.grade(LAB, twin, course, workers=1, limits=LIMITS, progress=False, regrade=True)
    assert again["graded_now"] == ["b_partly"] and again["reused"] == []
    assert again["results"]["b_partly"]["parts"] == summary["results"]["b_partly"]["parts"]
    html = (course / "feedback" / "b_partly" / LAB / f"{LAB}.html").read_text()
    assert f"{partly}" in html and f"{full}" in html  # the feedback shows the merged score (e.g. 12.0 of 14.0)
