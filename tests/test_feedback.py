"""Hidden tests stay secret: in feedback, autograded notebooks, state files, CSVs, and the student's process.

``courselib grade`` executes a submission once, in the sandboxed kernel, with the *release* version of
its test cells; the hidden tests run only in the clean room. These tests grade real submissions through
:func:`courselib.grading.grade` and look for the secrets of the lab's source notebook (every non-trivial
line between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS``, the markers, and the constants that
appear only there) in everything the grader writes, and let a submission hunt for them while it runs.

The same grading runs check that every part of every lab is judged by its hidden tests in the clean room:
no part of this course is in the sealed tier (where the hidden tests run beside the student's code, as under
nbgrader), and none is scored by anything the student's kernel reports.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import html
import json
import re
from pathlib import Path

import pytest
from conftest import calibrate_once

from courselib import grading
from courselib.grading import cleanroom, feedback, grader, sandbox
from courselib.grading.course import scratch_course

REPO = Path(__file__).resolve().parents[1]
LABS = grading.list_labs(REPO / "labs")
LAB1 = "lab01_binary_codes"
MARKERS = ("BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
LIMITS = grading.Limits(cell_timeout=120, notebook_timeout=900, memory_mb=3072, output_kb=512)

pytestmark = [pytest.mark.xdist_group("grading")]


def _source(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def hidden_blocks(lab: str, course: Path) -> list[str]:
    src = json.loads((course / "source" / lab / f"{lab}.ipynb").read_text())
    blocks = []
    for cell in src["cells"]:
        text = _source(cell)
        for m in re.finditer(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", text, re.S):
            blocks.append(m.group(1))
    return blocks


def secrets(lab: str, course: Path) -> dict[str, list[str]]:
    """What must never reach a student: hidden lines (those not also in the release) and the constants
    that appear only in hidden tests, their assertion messages included (the feedback never shows them)."""
    release = (course / "release" / lab / f"{lab}.ipynb").read_text()
    src = json.loads((course / "source" / lab / f"{lab}.ipynb").read_text())
    hidden = re.compile(r"### BEGIN HIDDEN TESTS\n.*?### END HIDDEN TESTS", re.S)
    # everything a student may see: the release, and the source outside hidden blocks (solutions included)
    release_text = "\n".join(
        [*(_source(c) for c in json.loads(release)["cells"]), *(hidden.sub("", _source(c)) for c in src["cells"])]
    )
    lines, values = set(), set()
    for block in hidden_blocks(lab, course):
        for ln in block.splitlines():
            s = ln.strip()
            if len(s) >= 12 and not s.startswith("#") and s not in release_text:
                lines.add(s)
        try:
            tree = ast.parse(block)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Constant):
                continue
            v = node.value
            if isinstance(v, str) and len(v) >= 8 and v not in release_text:
                values.add(v)
            elif (
                isinstance(v, float) and repr(v) not in release_text and len(repr(v).replace(".", "").strip("0-")) >= 3
            ):
                values.add(repr(v))  # three significant digits at least: 12.0 is also a score
            elif isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 1000 and str(v) not in release_text:
                values.add(str(v))
    return {"lines": sorted(lines), "values": sorted(values)}


def shown_text(page: str) -> str:
    """An HTML page as a reader sees it: without styles, scripts and tags, entities decoded."""
    page = re.sub(r"<(style|script)\b.*?</\1>", "", page, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", "", page))


#: Fields of a state file that are the grader's own measurements (its clock, ``getrusage``), not text.
MEASURED = {"seconds": float, "driver_maxrss_mb": float, "proxy_calls": int, "timing": dict}


def visible_text(path: Path) -> str:
    """A file as a reader sees it (:func:`shown_text` for HTML). A state file is read without the grader's
    measurements, after checking that they are plain numbers: a time such as ``kernel_start: 1.01`` may
    equal a hidden constant by chance, and nothing but a number can hide in them."""
    text = path.read_text(errors="replace")
    if path.suffix == ".html":
        return shown_text(text)
    if path.suffix == ".json" and path.parent.parent.name == ".state" and not path.name.startswith("_"):
        state = json.loads(text)
        for key, kind in MEASURED.items():
            value = state.pop(key, None)
            if kind is dict:
                value = value or {}
                assert all(type(v) in (int, float) for v in value.values()), (path, key, value)
                assert all(re.fullmatch(r"[a-z_]+", k) for k in value), (path, key, value)
            else:
                assert value is None or type(value) in (kind, int), (path, key, value)
        return json.dumps(state)
    return text


def leaks(text: str, found: dict[str, list[str]]) -> list[str]:
    out = [m for m in MARKERS if m in text]
    out += [ln for ln in found["lines"] if ln in text]
    for v in found["values"]:
        if re.search(r"(?<![\w.,])" + re.escape(v) + r"(?![\w.])", text):
            out.append(v)
    return out


def course_copy(tmp: Path, lab: str, settings: str = "") -> Path:
    return scratch_course(lab, tmp, REPO / "labs", settings=settings)


def notebook(course: Path, lab: str, answers: dict | None = None, solved: bool = True) -> dict:
    """The release with every solution cell filled from the source (``solved``), then ``answers``."""
    release = json.loads((course / "release" / lab / f"{lab}.ipynb").read_text())
    src = json.loads((course / "source" / lab / f"{lab}.ipynb").read_text())
    sols = {
        c["metadata"]["nbgrader"]["grade_id"]: _source(c)
        for c in src["cells"]
        if c["metadata"].get("nbgrader", {}).get("solution")
    }
    for cell in release["cells"]:
        gid = cell["metadata"].get("nbgrader", {}).get("grade_id")
        if gid in sols and solved:
            cell["source"] = sols[gid]
        if gid in (answers or {}):
            cell["source"] = answers[gid]
    return release


def submit(subs: Path, student: str, lab: str, nb: dict) -> None:
    d = subs / student / lab
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{lab}.ipynb").write_text(json.dumps(nb))


def written_files(course: Path, lab: str) -> list[Path]:
    files = [course / "grades" / f"{lab}.csv"]
    for kind in ("autograded", "feedback"):
        files += [p for p in (course / kind).rglob("*") if p.is_file()]
    files += [p for p in (course / "grades" / ".state" / lab).glob("*") if p.suffix in (".json", ".html", ".ipynb")]
    return files


def feedback_of(course: Path, student: str, lab: str) -> str:
    return visible_text(course / "feedback" / student / lab / f"{lab}.html")


# ------------------------------------------------------------------ fast: the pieces
def test_restore_uses_the_release_never_the_source(tmp_path):
    course = course_copy(tmp_path, LAB1)
    g = grader.Grader(LAB1, course, grading.Limits(), tmp_path, [], False, False)
    sub = notebook(course, LAB1)
    # a student who deleted one test cell and edited another
    sub["cells"] = [c for c in sub["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") != "q3_test"]
    for c in sub["cells"]:
        if c["metadata"].get("nbgrader", {}).get("grade_id") == "q2_test":
            c["source"] = "pass"
    out = grader.restore_locked_cells(sub, g.release_nb)
    text = json.dumps(out)
    assert not leaks(text, secrets(LAB1, course))
    ids = [c["metadata"].get("nbgrader", {}).get("grade_id") for c in out["cells"]]
    release_ids = [c["metadata"].get("nbgrader", {}).get("grade_id") for c in g.release_nb["cells"]]
    assert [i for i in ids if i] == [i for i in release_ids if i]  # q3_test back in its place
    by_id = {c["metadata"]["nbgrader"]["grade_id"]: _source(c) for c in out["cells"] if "nbgrader" in c["metadata"]}
    rel = {
        c["metadata"]["nbgrader"]["grade_id"]: _source(c) for c in g.release_nb["cells"] if "nbgrader" in c["metadata"]
    }
    assert by_id["q2_test"] == rel["q2_test"] and by_id["q3_test"] == rel["q3_test"]
    # the clean room gets both versions of every test cell
    tests = [c for c in g.cells if c["kind"] == "test"]
    assert tests and all("BEGIN HIDDEN TESTS" in c["source"] for c in tests)
    assert not any("HIDDEN" in c["release_source"] for c in tests)


def test_a_state_file_is_scanned_without_the_graders_measurements(tmp_path):
    """A time equal to a hidden constant by chance is no leak (the 7011516 run's ``kernel_start: 1.01`` in
    lab 4); the same constant anywhere else in the state file is, and a measurement that is not a number
    fails the scan."""
    found = {"lines": [], "values": ["1.01"]}
    state = tmp_path / "grades" / ".state" / "lab"
    state.mkdir(parents=True)
    path = state / "s.json"
    base = {"score": 2.0, "seconds": 1.01, "timing": {"kernel_start": 1.01}, "driver_maxrss_mb": 101.0}
    path.write_text(json.dumps(base))
    assert not leaks(visible_text(path), found)
    path.write_text(json.dumps({**base, "notes": ["expected 1.01"]}))
    assert leaks(visible_text(path), found) == ["1.01"]
    path.write_text(json.dumps({**base, "timing": {"kernel_start": "expected 1.01"}}))
    with pytest.raises(AssertionError):
        visible_text(path)


def test_failure_message_keeps_test_code_messages_out():
    assert feedback.failure_message(AssertionError("codes differ")) == "codes differ"
    assert feedback.failure_message(AssertionError()) == "an assertion failed"
    # an exception raised by test code may carry an expected value: only its type is said
    assert feedback.failure_message(KeyError("secret-42")) == "the test raised KeyError"
    exc = cleanroom._student_exception(["ValueError", "Exception"], "bad k", "knn", False)
    assert isinstance(exc, ValueError) and feedback.failure_message(exc) == "your knn raised ValueError: bad k"
    # raised while hidden tests ran: its message could repeat a hidden input (4097, (1000, 784) ...)
    hidden = cleanroom._student_exception(["ValueError"], "got shape (1000, 784)", "knn", True)
    assert feedback.failure_message(hidden) == "your knn raised ValueError on a hidden input"
    assert feedback.failure_message(exc, hidden=True) == "your knn raised ValueError on a hidden input"
    missing = NameError("name 'pack_bits' is not defined", name="pack_bits")
    assert "pack_bits" in feedback.failure_message(missing, ["pack_bits"])
    assert feedback.failure_message(NameError("x", name="_ref"), ["pack_bits"]) == "the test raised NameError"


def test_feedback_mode_is_validated(tmp_path):
    course = course_copy(tmp_path, LAB1, f'[labs.{LAB1}]\nfeedback = "everything"\n')
    with pytest.raises(grading.GradingError, match="feedback"):
        grader.Grader(LAB1, course, grading.Limits(), tmp_path, [], False, False)


# ------------------------------------------------------------------ slow: real grading runs
@pytest.mark.slow
@pytest.mark.parametrize("lab", LABS)
def test_no_hidden_test_in_anything_written(tmp_path, lab, calibrations):
    """The solution and the blank release of every lab, graded with the default limits: no hidden line,
    marker or hidden-only constant in the feedback, the autograded notebook, the state file or the CSV; every
    part is judged in the clean room (no sealed part: the second-tier list of this course is empty).

    The solution is graded once, by the lab's calibration (shared with its mutant chunks,
    conftest.calibrate_once), which grades it exactly as a submission and keeps its graded notebook and
    feedback page beside ``_calibration.json``; the blank is graded here as a submission."""
    course = course_copy(tmp_path, lab)
    subs = tmp_path / "subs"
    submit(subs, "blank", lab, json.loads((course / "release" / lab / f"{lab}.ipynb").read_text()))
    calibrate_once(calibrations, lab, course)
    summary = grading.grade(lab, subs, course, workers=1, progress=False)
    res = summary["results"]
    assert res["blank"]["status"] == "graded" and res["blank"]["score"] == 0, res["blank"]
    # the calibration (the solution graded as a submission) put every part in the clean room
    not_clean = {g: t for g, t in summary["tiers"].items() if t != "clean"}
    assert not not_clean, f"{lab}: parts not judged in the clean room: {not_clean} (run `courselib tiers {lab}`)"
    state = course / "grades" / ".state" / lab
    cached = json.loads((state / "_calibration.json").read_text())
    assert cached["tiers"] == summary["tiers"], "the calibration cache differs from the run"
    assert set(res["blank"]["tiers"].values()) == {"clean"}
    # the solution's pages, from the calibration: full marks, every part passed
    solution_nb = json.loads((state / "_calibration.autograded.ipynb").read_text())
    scores = [
        c["metadata"]["nbgrader"].get("score")
        for c in solution_nb["cells"]
        if c["metadata"].get("nbgrader", {}).get("grade") and c["cell_type"] == "code"
    ]
    top = sum(p for _, p in grading.lab_parts(lab, course))
    assert len(scores) == len(grading.lab_parts(lab, course)) and sum(scores) == top, scores
    fb = visible_text(state / "_calibration.feedback.html")
    assert fb.count("passed:") == len(grading.lab_parts(lab, course)) and "failed:" not in fb
    found = secrets(lab, course)
    assert found["lines"], "the lab has hidden tests to keep secret"
    files = written_files(course, lab)
    assert {p.name for p in files} >= {"_calibration.autograded.ipynb", "_calibration.feedback.html", "blank.json"}
    assert any(p.suffix == ".html" and "feedback" in p.parts for p in files)
    for path in files:
        assert not leaks(visible_text(path), found), (path, leaks(visible_text(path), found)[:5])


@pytest.mark.skipif(not sandbox.available(), reason=f"no grading sandbox: {sandbox.unavailable_reason()}")
def test_tiers_says_how_each_part_is_judged_and_where_the_solutions_feedback_is(tmp_path, capsys):
    """``courselib tiers LAB``: one line per part with its tier, and the solution's feedback page, kept by the
    calibration, named and readable (every part passed, no hidden test)."""
    from courselib.grading.cli import main

    lab = "lab00_memory"
    course = course_copy(tmp_path, lab)
    assert main(["--course-dir", str(course), "tiers", lab]) == 0
    out = capsys.readouterr().out
    for gid, _points in grading.lab_parts(lab, course):
        assert re.search(rf"^  {gid} +\d+ pts  clean", out, re.M), out
    page = Path(re.search(r"the solution's feedback page .*: (\S+)$", out, re.M).group(1))
    assert page == course / "grades" / ".state" / lab / "_calibration.feedback.html"
    text = visible_text(page)
    assert text.count("passed:") == len(grading.lab_parts(lab, course)) and not leaks(text, secrets(lab, course))
    assert "BEGIN SOLUTION" not in page.read_text()  # the solution as a student hands it in: no nbgrader markers


@pytest.mark.slow
def test_feedback_teaches_without_leaking_and_full_mode(tmp_path):
    """A failing visible test shows its message; a failing hidden test shows only pass/fail and points,
    never its own message; ``feedback = "full"`` in course.toml shows the hidden tests."""
    course = course_copy(tmp_path / "redacted", LAB1)
    src = {
        c["grade_id"]: c["source"]
        for c in grader._notebook_cells(json.loads((course / "source" / LAB1 / f"{LAB1}.ipynb").read_text()))
        if c["kind"] == "solution"
    }
    subs = tmp_path / "subs"
    # visible failure: a value equal to the mean gives 1
    submit(subs, "ge", LAB1, notebook(course, LAB1, {"q1_code": src["q1_code"].replace("X > means", "X >= means")}))
    # hidden failure only: no check that the bits are 0/1
    no_check = src["q2_code"].replace("if not np.all((bits == 0) | (bits == 1)):", "if False:")
    assert no_check != src["q2_code"]
    submit(subs, "lax", LAB1, notebook(course, LAB1, {"q2_code": no_check}))
    summary = grading.grade(LAB1, subs, course, workers=2, limits=LIMITS, progress=False)
    res = summary["results"]
    assert res["ge"]["parts"]["q1_test"] == 0 and res["lax"]["parts"]["q2_test"] == 0
    assert res["ge"]["score"] == res["lax"]["score"] == res["ge"]["max_score"] - 2
    ge, lax = feedback_of(course, "ge", LAB1), feedback_of(course, "lax", LAB1)
    assert "bit = x > mean (strictly" in ge and "failed: 0 / 2 points (the visible tests above failed)" in ge
    assert "failed: 0 / 2 points (the visible tests passed; the hidden tests failed)" in lax
    # a hidden test's own message is hidden test text: never shown (the full mode below shows it)
    assert "pack_bits should raise ValueError on non-binary input" not in lax
    found = secrets(LAB1, course)
    for path in written_files(course, LAB1):
        assert not leaks(visible_text(path), found), path
    # the instructor's opt-in: full feedback for this lab
    full_course = course_copy(tmp_path / "full", LAB1, f'[labs.{LAB1}]\nfeedback = "full"\n')
    grading.grade(LAB1, subs, full_course, workers=2, limits=LIMITS, progress=False)
    full = feedback_of(full_course, "lax", LAB1)
    assert "BEGIN HIDDEN TESTS" in full and any(ln in full for ln in found["lines"])
    assert "AssertionError: pack_bits should raise ValueError" in full  # the clean room's traceback


SNOOP = '''
import hashlib as _hl, os as _os, sys as _sys

_SECRET_HASHES = set({hashes!r})


def _snoop():
    """Every text this process can reach: its working directory, /tmp, its kernel's history and
    namespace, the callers' frames."""
    texts = []
    for top in (_os.getcwd(), "/tmp", _os.path.expanduser("~")):
        for dirpath, _dirs, files in _os.walk(top):
            for f in files:
                try:
                    with open(_os.path.join(dirpath, f), "rb") as fh:
                        texts.append(fh.read(2_000_000).decode("utf-8", "replace"))
                except OSError:
                    pass
    ip = get_ipython()
    texts += [str(x) for x in ip.user_ns.get("In", [])] + [str(x) for x in ip.user_ns.get("_ih", [])]
    try:
        texts += [str(x) for x in ip.history_manager.input_hist_raw]
        texts += [s for _, _, s in ip.history_manager.get_tail(10_000, raw=True)]
    except Exception:
        pass
    texts += [repr(v)[:100_000] for v in list(globals().values())]
    f = _sys._getframe()
    while f is not None:
        texts += [repr(v)[:100_000] for v in list(f.f_locals.values())]
        f = f.f_back
    hits = set()
    for t in texts:
        for ln in t.replace("\\\\n", "\\n").splitlines():
            h = _hl.sha256(ln.strip().encode()).hexdigest()
            if h in _SECRET_HASHES:
                hits.add("hidden test line")
    return sorted(hits)


_FOUND = _snoop()
print("snoop while executing:", _FOUND)
'''


@pytest.mark.slow
@pytest.mark.skipif(not sandbox.available(), reason="the snooping submission must run in the sandbox")
def test_a_snooping_submission_finds_no_hidden_test(tmp_path):
    """A submission that walks its working directory, reads its kernel's history, ``In``/``Out``,
    ``globals()`` and its callers' frames, at execution time and inside every call the clean room
    makes, finds no hidden test (it would answer wrongly if it did)."""
    course = course_copy(tmp_path, LAB1)
    found = secrets(LAB1, course)
    wanted = [*found["lines"], *(f"### {m}" for m in MARKERS)]  # the markers by hash: never as text here
    snoop = SNOOP.format(hashes=sorted(hashlib.sha256(ln.encode()).hexdigest() for ln in wanted))
    src = {
        c["grade_id"]: c["source"]
        for c in grader._notebook_cells(json.loads((course / "source" / LAB1 / f"{LAB1}.ipynb").read_text()))
        if c["kind"] == "solution"
    }
    # search_cost (part 7, which bans nothing: a part with a ban would fail on the snoop's globals() alone)
    # snoops at every call (hidden tests call it on their own inputs) and lies if it found anything
    spy = src["q7_code"].replace(
        '    return {\n        "float32_bytes": 4 * n_database * n_features,',
        "    _hits = _snoop()\n    _CALL_HITS.extend(_hits)\n"
        '    return {\n        "float32_bytes": 4 * n_database * n_features + (1 if _hits else 0),',
    )
    assert spy != src["q7_code"]
    subs = tmp_path / "subs"
    answers = {"q1_code": snoop + "\n_CALL_HITS = []\n" + src["q1_code"], "q7_code": spy}
    submit(subs, "snoop", LAB1, notebook(course, LAB1, answers))
    summary = grading.grade(LAB1, subs, course, workers=1, limits=LIMITS, progress=False)
    r = summary["results"]["snoop"]
    assert r["status"] == "graded" and r["score"] == r["max_score"], r
    auto = json.loads((course / "autograded" / "snoop" / LAB1 / f"{LAB1}.ipynb").read_text())
    texts = [o.get("text", "") for c in auto["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    outs = "".join("".join(t) if isinstance(t, list) else t for t in texts)  # nbformat stores lines as a list
    assert "snoop while executing: []" in outs
    rows = list(csv.DictReader(open(course / "grades" / f"{LAB1}.csv")))
    assert rows[0]["status"] == "graded"
