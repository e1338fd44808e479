"""Intake keeps every student: LMS file names (flat, Canvas, Moodle) map to students without losing the
``_`` in an id, two notebooks of one student stop the run naming both, a file of no student is listed,
and a notebook's checks are bounded before any per-cell work."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import pytest

from courselib import grading
from courselib.grading import intake

LAB = "lab00_memory"
NB = f"{LAB}.ipynb"


def make_zip(path: Path, names: list[str]) -> Path:
    """A zip whose entries are ``names``, each holding its own name (so a test sees which file was read)."""
    with zipfile.ZipFile(path, "w") as zf:
        for n in names:
            zf.writestr(n, json.dumps({"from": n}))
    return path


def read_back(found: dict) -> dict:
    return {s: (json.loads(p.read_text())["from"] if p is not None else None) for s, p in found.items()}


def test_flat_names_keep_underscores_in_student_ids(tmp_path):
    names = [f"s_1001_{NB}", f"s_1002_{NB}", f"s_1003_{NB}", f"mary_{NB}", f"mary_ann_{NB}"]
    found = grading.collect_submissions(LAB, make_zip(tmp_path / "lms.zip", names), tmp_path / "unz")
    assert read_back(found) == {
        "s_1001": f"s_1001_{NB}",
        "s_1002": f"s_1002_{NB}",
        "s_1003": f"s_1003_{NB}",
        "mary": f"mary_{NB}",
        "mary_ann": f"mary_ann_{NB}",
    }
    assert found.unmatched == [] and found.layouts == ["flat"]


def test_flat_files_in_a_folder_too(tmp_path):
    subs = tmp_path / "subs"
    subs.mkdir()
    for n in (f"mary_{NB}", f"mary_ann_{NB}"):
        (subs / n).write_text(json.dumps({"from": n}))
    assert read_back(grading.collect_submissions(LAB, subs)) == {"mary": f"mary_{NB}", "mary_ann": f"mary_ann_{NB}"}


def test_canvas_names_late_and_resubmissions(tmp_path):
    names = [
        f"smithjane_123456_7890123_{NB}",
        f"doejohn_LATE_234567_7890124_{LAB}-1.ipynb",  # late, and the second upload of the file
        f"leeann_345678_7890125_lee_{LAB}-2.ipynb",  # a prefix of her own, and a third upload
        "parkbo_456789_7890126_Copy of lab00.ipynb",  # a student whose notebook has another name
        "parkbo_456789_7890126_notes.pdf",
    ]
    found = grading.collect_submissions(LAB, make_zip(tmp_path / "canvas.zip", names), tmp_path / "unz")
    assert read_back(found) == {
        "123456": names[0],
        "234567": names[1],
        "345678": names[2],
        "456789": None,  # missing, and both of their files are listed
    }
    assert found.layouts == ["canvas"]
    assert len(found.unmatched) == 2
    assert any(u.startswith(names[3]) and "456789" in u for u in found.unmatched)
    assert any(u.startswith(names[4]) for u in found.unmatched)


def test_moodle_folders_and_flattened_names(tmp_path):
    names = [
        f"Jane Smith_4711_assignsubmission_file_/{NB}",  # Moodle 3.x folders end in "_"
        f"John Doe_4712_assignsubmission_file/{NB}",  # newer Moodle drops it
        f"Ann Lee_4713_assignsubmission_file_{NB}",  # "download submissions in folders" unticked
        "Bo Park_4714_assignsubmission_file_/lab00 final.ipynb",
        "Bo Park_4714_assignsubmission_onlinetext_/onlinetext.html",
    ]
    found = grading.collect_submissions(LAB, make_zip(tmp_path / "moodle.zip", names), tmp_path / "unz")
    assert read_back(found) == {"4711": names[0], "4712": names[1], "4713": names[2], "4714": None}
    assert found.layouts == ["moodle"]
    assert sorted(u.split(":")[0] for u in found.unmatched) == [
        "Bo Park_4714_assignsubmission_file_/lab00 final.ipynb",
        "Bo Park_4714_assignsubmission_onlinetext_/",
    ]
    # one student's folder alone in the zip is not mistaken for a wrapping top folder
    one = grading.collect_submissions(LAB, make_zip(tmp_path / "one.zip", names[:1]), tmp_path / "unz1")
    assert read_back(one) == {"4711": names[0]}


def test_a_collision_is_an_error_that_names_both_files(tmp_path):
    z = make_zip(tmp_path / "both.zip", [f"ann/{LAB}/{NB}", f"ann_{NB}"])
    with pytest.raises(grading.GradingError, match="more than one notebook") as err:
        grading.collect_submissions(LAB, z, tmp_path / "unz")
    assert f"ann/{LAB}/{NB}" in str(err.value) and f"ann_{NB}" in str(err.value)
    # two uploads of one Canvas student in one download: the instructor decides which counts
    z = make_zip(tmp_path / "twice.zip", [f"smithjane_123456_1_{NB}", f"smithjane_123456_2_{LAB}-1.ipynb"])
    with pytest.raises(grading.GradingError, match="student 123456") as err:
        grading.collect_submissions(LAB, z, tmp_path / "unz2")
    assert f"smithjane_123456_1_{NB}" in str(err.value) and f"smithjane_123456_2_{LAB}-1.ipynb" in str(err.value)


def test_unmatched_files_are_listed_by_name_never_graded(tmp_path):
    names = [f"ann_{NB}", "readme.txt", f"Mary Ann_{NB}", f"{NB}", "bad name/lab00_memory/x.ipynb"]
    found = grading.collect_submissions(LAB, make_zip(tmp_path / "odd.zip", names), tmp_path / "unz")
    assert read_back(found) == {"ann": f"ann_{NB}"}
    listed = [u.split(":")[0] for u in found.unmatched]
    assert sorted(listed) == sorted(["readme.txt", f"Mary Ann_{NB}", NB, "bad name/"])
    report = "\n".join(found.report())
    assert all(n in report for n in listed) and "1 student(s)" in report
    # the grading summary lists them too
    summary = {"results": {}, "graded_now": [], "reused": [], "workers": 1, "seconds": 0.0, "csv": "x.csv"}
    table = grading.summary_table({**summary, "unmatched": found.unmatched})
    assert all(u in table for u in found.unmatched)


def test_a_folder_student_without_the_notebook_lists_what_they_sent(tmp_path):
    subs = tmp_path / "subs"
    (subs / "bob" / LAB).mkdir(parents=True)
    (subs / "bob" / LAB / "Copy of lab00_memory.ipynb").write_text("{}")
    found = grading.collect_submissions(LAB, subs)
    assert dict(found) == {"bob": None}
    assert [u.split(":")[0] for u in found.unmatched] == [f"bob/{LAB}/Copy of lab00_memory.ipynb"]


def test_submissions_survive_pickling(tmp_path):
    found = grading.collect_submissions(LAB, make_zip(tmp_path / "a.zip", [f"ann_{NB}", "x.txt"]), tmp_path / "u")
    again = pickle.loads(pickle.dumps(found))
    assert again == found and again.unmatched == found.unmatched and again.layouts == found.layouts


def _cells(n: int) -> bytes:
    cell = {"cell_type": "code", "metadata": {}, "source": "x = 1", "outputs": [], "execution_count": None}
    return json.dumps({"cells": [cell] * n, "metadata": {}, "nbformat": 4, "nbformat_minor": 4}).encode()


def test_check_notebook_refuses_before_per_cell_work():
    assert intake.check_notebook(_cells(10)) is None
    assert intake.check_notebook(_cells(100_000)) == f"refused: 100000 cells, more than {intake.MAX_CELLS}"
    out = {"output_type": "stream", "name": "stdout", "text": "1\n"}
    many = {"cells": [{"cell_type": "code", "metadata": {}, "source": "", "outputs": [out] * 5, "execution_count": 1}]}
    many["cells"] *= intake.MAX_OUTPUTS // 5 + 1
    assert intake.check_notebook(json.dumps(many).encode()).startswith("refused: 10005 outputs, more than")
    wide = {"cells": [], "metadata": {f"k{i}": i for i in range(intake.MAX_JSON_VALUES)}}
    assert (
        intake.check_notebook(json.dumps(wide).encode()) == f"refused: more than {intake.MAX_JSON_VALUES} JSON values"
    )
    assert intake.check_notebook(b"[" * 100_000) == "not JSON: nested too deeply"
