"""Every lab through the nbgrader pipeline: release, autograde solution (full marks) and blank (zero), CSV.

Each lab is graded in a scratch copy of the course (its own gradebook), so labs run in parallel
(pytest-xdist) without sharing nbgrader's sqlite database. nbval checks each solution notebook too.
"""

from __future__ import annotations

import csv
import html
import json
import re
import shutil
from pathlib import Path

import pytest
from test_feedback import shown_text

from courselib import grading

REPO = Path(__file__).resolve().parents[1]
COURSE = REPO / "labs"
LABS = grading.list_labs(COURSE)


def hidden_secrets(course: Path, lab: str, min_len: int = 1) -> list[str]:
    """Every line of the source's hidden-test regions (stripped, at least ``min_len`` characters) that the
    source shows nowhere else."""
    src = json.loads((course / "source" / lab / f"{lab}.ipynb").read_text())
    region = re.compile(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", re.S)
    texts = ["".join(c["source"]) for c in src["cells"]]
    visible = "\n".join(region.sub("", t) for t in texts)
    lines = {ln.strip() for t in texts for m in region.finditer(t) for ln in m.group(1).splitlines()}
    return sorted(ln for ln in lines if len(ln) >= min_len and ln not in visible)


def feedback_leaks(page: Path, secrets: list[str]) -> list[str]:
    """The hidden-test markers and ``secrets`` a feedback page shows its reader (tags, styles, scripts removed)."""
    text = shown_text(page.read_text())
    return [s for s in ("BEGIN HIDDEN TESTS", "END HIDDEN TESTS", *secrets) if s in text]


def make_course(tmp_path: Path, lab: str) -> Path:
    course = tmp_path / "course"
    (course / "source").mkdir(parents=True)
    shutil.copy(COURSE / "nbgrader_config.py", course)
    shutil.copytree(COURSE / "source" / lab, course / "source" / lab)
    return course


def test_there_are_labs():
    assert "lab00_memory" in LABS


@pytest.mark.parametrize("lab", LABS)
def test_lab_source_is_clean_and_well_formed(lab):
    nb = json.loads((COURSE / "source" / lab / f"{lab}.ipynb").read_text())
    ids = [c["metadata"]["nbgrader"]["grade_id"] for c in nb["cells"] if "nbgrader" in c["metadata"]]
    assert len(ids) == len(set(ids)), "grade ids must be unique"
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, (
                "commit lab sources without outputs"
            )
        meta = cell["metadata"].get("nbgrader", {})
        src = "".join(cell["source"])
        if meta.get("solution"):
            assert "### BEGIN SOLUTION" in src
        if meta.get("grade"):
            assert meta.get("points", 0) > 0 and cell["cell_type"] == "code"
            assert not meta.get("solution"), "labs are fully autograded: no manually graded answers"
    parts = grading.lab_parts(lab, COURSE)
    assert len(parts) >= 3
    assert any("### BEGIN HIDDEN TESTS" in "".join(c["source"]) for c in nb["cells"])


@pytest.mark.slow
@pytest.mark.parametrize("lab", LABS)
def test_solution_full_marks_blank_zero(tmp_path, lab):
    course = make_course(tmp_path, lab)
    release = grading.release(lab, course)
    student_nb = (release / f"{lab}.ipynb").read_text()
    assert "### BEGIN SOLUTION" not in student_nb and "### BEGIN HIDDEN TESTS" not in student_nb
    assert "raise NotImplementedError()" in student_nb

    subs = tmp_path / "submissions"
    shutil.copytree(course / "source" / lab, subs / "solution" / lab)
    shutil.copytree(release, subs / "blank" / lab)
    (subs / "absent" / lab).mkdir(parents=True)  # a student who handed in nothing

    graded = grading.autograde(lab, subs, course)
    assert graded == ["blank", "solution"]
    out = grading.export_grades(lab, course, students=["absent", "blank", "solution"])
    rows = {r["student_id"]: r for r in csv.DictReader(out.open())}
    parts = grading.lab_parts(lab, course)
    max_score = sum(p for _, p in parts)
    assert float(rows["solution"]["score"]) == float(rows["solution"]["max_score"]) == max_score
    assert all(float(rows["solution"][g]) == p for g, p in parts)
    assert float(rows["blank"]["score"]) == 0.0
    assert all(float(rows["blank"][g]) == 0.0 for g, _ in parts)
    assert rows["absent"]["status"] == "missing" and float(rows["absent"]["score"]) == 0.0
    assert (course / "feedback" / "solution" / lab / f"{lab}.html").exists()
    # every cell of the solution ran without error, not only the graded ones (what `pytest --nbval-lax` checks,
    # from the same execution)
    executed = json.loads((course / "autograded" / "solution" / lab / f"{lab}.ipynb").read_text())
    errors = [
        (c.get("metadata", {}).get("nbgrader", {}).get("grade_id"), o.get("ename"))
        for c in executed["cells"]
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert errors == [], f"{lab}: cells of the solution raised {errors}"
    secrets = hidden_secrets(course, lab, min_len=12)  # a traceback of library code may hold a short `else:`
    for student in graded:  # nbgrader's feedback shows the hidden tests; courselib autograde's does not
        assert feedback_leaks(course / "feedback" / student / lab / f"{lab}.html", secrets) == [], student


@pytest.mark.slow
def test_autograde_feedback_holds_no_hidden_test(tmp_path, capsys):
    """``courselib autograde`` (plain nbgrader) says it is unsandboxed, writes feedback without any line of
    the hidden tests, and withholds the feedback of a notebook whose own code printed them."""
    from courselib.grading.cli import main

    lab = "lab00_memory"
    course = make_course(tmp_path, lab)
    release = grading.release(lab, course)
    subs = tmp_path / "submissions"
    shutil.copytree(course / "source" / lab, subs / "solution" / lab)
    shutil.copytree(release, subs / "blank" / lab)
    snoop = json.loads((course / "source" / lab / f"{lab}.ipynb").read_text())
    snoop["cells"].append(  # the kernel ran the hidden tests before this cell: its history holds them
        {"cell_type": "code", "metadata": {}, "source": 'print("\\n".join(In))', "outputs": [], "execution_count": None}
    )
    (subs / "snoop" / lab).mkdir(parents=True)
    (subs / "snoop" / lab / f"{lab}.ipynb").write_text(json.dumps(snoop))

    assert main(["--course-dir", str(course), "autograde", lab, str(subs)]) == 0
    out = capsys.readouterr().out
    assert "plain nbgrader, NOT sandboxed" in out and "autograded 3 submission(s)" in out
    assert "WITHHELD the feedback of snoop" in out
    secrets = hidden_secrets(course, lab)
    assert len(secrets) > 20
    pages = sorted((course / "feedback").rglob("*.html"))
    assert [p.parent.parent.name for p in pages] == ["blank", "solution"]
    for page in pages:
        assert feedback_leaks(page, secrets) == [], page
    solution = (course / "feedback" / "solution" / lab / f"{lab}.html").read_text()
    assert "hidden tests: their code and the cell" in html.unescape(solution)
    rows = {r["student_id"]: r for r in csv.DictReader((course / "grades" / f"{lab}.csv").open())}
    assert float(rows["solution"]["score"]) == float(rows["solution"]["max_score"]) == 10
    assert float(rows["blank"]["score"]) == 0.0


def test_unknown_lab_and_missing_folder(tmp_path):
    course = make_course(tmp_path, "lab00_memory")
    with pytest.raises(grading.GradingError, match="unknown lab"):
        grading.release("lab99_nothing", course)
    with pytest.raises(grading.GradingError, match="not a folder"):
        grading.autograde("lab00_memory", tmp_path / "nowhere", course)
    with pytest.raises(grading.GradingError, match="no nbgrader course directory"):
        grading.find_course_dir(tmp_path)


def test_cli_reports_errors_with_exit_code(tmp_path, capsys):
    from courselib.grading.cli import main

    course = make_course(tmp_path, "lab00_memory")
    assert main(["--course-dir", str(course), "labs"]) == 0
    assert "lab00_memory: 5 graded parts, 10 points" in capsys.readouterr().out
    assert main(["--course-dir", str(course), "release", "lab42"]) == 2
    assert "unknown lab" in capsys.readouterr().err
