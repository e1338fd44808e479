"""The labs' own validate step: courselib.labcheck (the tracker and the summary) and what tools/lab_setup.py writes.

- The fingerprints lab_setup.py writes into every lab's summary cell are those of the test and answer cells
  *as nbgrader releases them* (nbgrader's own ClearSolutions and ClearHiddenTests, run here in-process with the
  course's code stub), so the summary recognises the released test cells a student runs.
- The tracker, fed by a real IPython shell: a passing part, a failing visible test with its message, a part
  not run, an answer that still raises NotImplementedError (inside a function, and at the top of a cell), an
  edited copy of a test cell, an answer run again after its test, a grader's run (hidden tests: no table).
- The file: the name the grader expects and the size against the grader's limit, which is the constant of
  courselib.grading.intake (the content module keeps a copy: a content module never imports grading).
- The release tags every cell from the first part on with `raises-exception`, so Run All reaches the summary.
- The introduction's paragraph on validating replaces every older "press Validate" wording, idempotently.

One slow test releases lab00 with nbgrader and runs the blank student version and a half-answered one with
nbclient, as *Restart and Run All* does: the summary's table is checked line by line.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from courselib import labcheck
from courselib.grading import course, intake

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import lab_setup  # noqa: E402

LABS = sorted(p.name for p in (REPO / "labs" / "source").iterdir() if p.is_dir())
fp = labcheck.fingerprint


def _text(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _gid(cell) -> str | None:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def course_config() -> dict:
    """labs/nbgrader_config.py's settings, read as nbgrader reads them (`c = get_config()`, attributes set on it)."""
    config: dict = {}

    class Config:
        def __getattr__(self, name):
            return config.setdefault(name, type("Section", (), {})())

    exec((REPO / "labs" / "nbgrader_config.py").read_text(), {"get_config": Config, "__file__": "nbgrader_config.py"})
    return config


def nbgrader_release(nb: dict):
    """The student version of a source notebook's cells, by nbgrader's own preprocessors and the course's stub."""
    import nbformat
    from nbgrader.preprocessors import ClearHiddenTests, ClearSolutions

    node = nbformat.reads(json.dumps(nb), as_version=4)
    node, res = ClearSolutions(code_stub=course_config()["ClearSolutions"].code_stub).preprocess(node, {})
    node, _ = ClearHiddenTests().preprocess(node, res)
    return node


# ------------------------------------------------------------------------------ what lab_setup.py writes


def test_the_stub_and_markers_are_nbgrader_s():
    from nbgrader.preprocessors import ClearHiddenTests, ClearSolutions

    assert course_config()["ClearSolutions"].code_stub == {"python": lab_setup.CODE_STUB}
    assert (ClearSolutions().begin_solution_delimeter, ClearSolutions().end_solution_delimeter) == lab_setup.SOLUTION
    assert (ClearHiddenTests().begin_test_delimeter, ClearHiddenTests().end_test_delimeter) == lab_setup.HIDDEN


@pytest.mark.parametrize("lab", LABS)
def test_fingerprints_are_those_of_the_released_cells(lab):
    src = json.loads((REPO / "labs" / "source" / lab / f"{lab}.ipynb").read_text())
    released = {_gid(c): c for c in nbgrader_release(src).cells if _gid(c)}
    parts = lab_setup.parts(src)
    graded = [_gid(c) for c in src["cells"] if c.get("metadata", {}).get("nbgrader", {}).get("grade")]
    assert [p[0] for p in parts] == graded and len(parts) >= 3
    for gid, points, (cell_id, test_fp), answers in parts:
        cell = released[gid]
        assert test_fp == fp(cell.source), f"{lab}:{gid}: the summary would not recognise the released test cell"
        assert cell_id == cell.get("id"), f"{lab}:{gid}: nbgrader changed the cell id"
        assert points == cell.metadata.nbgrader.points
        assert answers, f"{lab}:{gid} has no answer cell before it"
        for agid, acell_id, blank_fp in answers:
            assert blank_fp == fp(released[agid].source), f"{lab}:{agid}: blank answer's fingerprint"
            assert "raise NotImplementedError()" in released[agid].source
            assert acell_id == released[agid].get("id")
    meta = [(c, c.metadata.get("nbgrader", {})) for c in nbgrader_release(src).cells if c.cell_type == "code"]
    others = [fp(c.source) for c, m in meta if not (m.get("solution") or m.get("grade")) and _gid(c) != "labcheck"]
    assert lab_setup.other_cells(src) == others and others, f"{lab}: the other code cells' fingerprints"


@pytest.mark.parametrize("lab", LABS)
def test_the_summary_cell_lab_setup_writes_is_last_and_up_to_date(lab, tmp_path):
    """On a copy (the sources are updated by running tools/lab_setup.py): the summary is the last cell,
    locked, names every part, and a second run changes nothing."""
    nb_path = tmp_path / f"{lab}.ipynb"
    shutil.copy(REPO / "labs" / "source" / lab / f"{lab}.ipynb", nb_path)
    assert lab_setup.update(nb_path, lab_setup.version(), False).startswith(("updated", "ok"))
    assert lab_setup.update(nb_path, lab_setup.version(), True) == "ok"
    nb = json.loads(nb_path.read_text())
    last = nb["cells"][-1]
    assert _gid(last) == "labcheck" and last["metadata"]["nbgrader"]["locked"] is True
    assert _gid(nb["cells"][-2]) == "labcheck_text"
    code = _text(last)
    for gid, points, (cell_id, test_fp), answers in lab_setup.parts(nb):
        assert repr((gid, points, (cell_id, test_fp), answers)) in code
    compile(code, "labcheck", "exec")
    setup = _text(lab_setup.setup_cell(nb))
    assert "labcheck.track()" in setup and setup.index("labcheck.track()") < setup.index(lab_setup.END)
    intro = _text(next(c for c in nb["cells"] if c["cell_type"] == "markdown"))
    assert lab_setup.VALIDATE_HEAD in intro and f"`{lab}.ipynb`" in intro
    assert "**Validate**" not in intro and "nbgrader" not in intro, "an older 'press Validate' sentence is left"
    assert not any(line.startswith(">") for line in intro.split("\n"))
    cells_before = [c for c in json.loads((REPO / "labs" / "source" / lab / f"{lab}.ipynb").read_text())["cells"]]
    kept = [c for c in nb["cells"] if _gid(c) not in lab_setup.SUMMARY_IDS]
    changed = {
        _gid(c) for c, d in zip(kept, [c for c in cells_before if _gid(c) not in lab_setup.SUMMARY_IDS]) if c != d
    }
    assert changed <= {"intro", "setup"}, changed


OLD_WORDINGS = [
    "run the test\ncell below it. Before you submit, restart the kernel\nand press **Validate** (the *Validate* "
    "button of the notebook toolbar, or *Assignments* > *Validate* in\nJupyter) to run every cell in order as the "
    "grader will. 5 parts, 10 points.",
    "gives quick feedback. Before you submit, press **Validate** (the Validate button of the Assignments tab, or "
    "of the\nnotebook toolbar in Jupyter) to run every cell in order. **Hidden tests** run only when graded.",
    "what it expected. Before you hand\nin, press nbgrader's **Validate** button (the Assignments tab, or Validate "
    "in the notebook toolbar) to run\nthe whole notebook from the top as the grader will.",
]


@pytest.mark.parametrize("old", OLD_WORDINGS)
def test_the_validate_paragraph_replaces_every_old_wording(old):
    intro = "# Lab 9\n\nSome text.\n\nFill in every cell and " + old + "\n\nRules: none."
    new = lab_setup.new_intro(intro, "lab09_x")
    assert "**Validate**" not in new and "nbgrader" not in new
    assert new.startswith("# Lab 9\n\nSome text.\n\nFill in every cell and ")
    assert new.endswith(lab_setup.validate_paragraph("lab09_x") + "\n\nRules: none.")
    assert lab_setup.new_intro(new, "lab09_x") == new
    assert "Kernel > Restart Kernel and Run All Cells" in new.replace("\n", " ")


def test_an_unknown_validate_wording_is_reported_not_ignored(tmp_path):
    nb_path = tmp_path / f"{LABS[0]}.ipynb"
    nb = json.loads((REPO / "labs" / "source" / LABS[0] / f"{LABS[0]}.ipynb").read_text())
    nb["cells"][0]["source"] = _text(nb["cells"][0]) + "\n\nWhen done, click the Validate button in the toolbar."
    nb_path.write_text(json.dumps(nb))
    assert "still sends students to nbgrader's Validate button" in lab_setup.update(nb_path, lab_setup.version(), False)
    assert json.loads(nb_path.read_text()) == nb  # nothing written
    assert lab_setup.main([str(nb_path)]) == 1


def test_tag_run_all_tags_every_cell_from_the_first_part_on():
    def cell(kind, gid=None, **meta):
        c = {"cell_type": kind, "metadata": {}, "source": ""}
        if gid:
            c["metadata"]["nbgrader"] = {"grade_id": gid, **meta}
        return c

    nb = {
        "cells": [
            cell("markdown", "intro"),
            cell("code", "setup", locked=True),
            cell("code", "helpers", locked=True),
            cell("code", "q1_code", solution=True),
            cell("code", "q1_test", grade=True, points=1),
            cell("code"),
            cell("markdown", "outro"),
            cell("code", "labcheck", locked=True),
        ]
    }
    tagged = course.tag_run_all(json.loads(json.dumps(nb)))
    tags = [c["metadata"].get("tags") for c in tagged["cells"]]
    run_all = [course.RUN_ALL_TAG]
    assert tags == [None, None, None, run_all, run_all, run_all, None, run_all]
    assert course.tag_run_all(tagged) == tagged


# --------------------------------------------------------------------------------------------- the tracker


@pytest.fixture
def shell():
    from IPython.core.interactiveshell import InteractiveShell

    sh = InteractiveShell.instance()
    yield sh
    for cb in list(sh.events.callbacks["post_run_cell"]):
        if isinstance(getattr(cb, "__self__", None), labcheck.Tracker):
            sh.events.unregister("post_run_cell", cb)
    InteractiveShell.clear_instance()


ANSWER_1 = "def double(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()"
TEST_1 = "# Visible tests\nassert double(2) == 4, f'double(2): expected 4, got {double(2)!r}'\nprint('q1 ok')"
ANSWER_2 = "def half(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()"
TEST_2 = "assert half(4) == 2, f'half(4): expected 2, got {half(4)!r}'"
ANSWER_3 = "# YOUR CODE HERE\nraise NotImplementedError()"  # an answer at the top of the cell, not in a function
TEST_3 = "assert model_size > 0, 'model_size must be positive'"
TEST_4 = "assert True"
PARTS = [
    ("q1_test", 2, ("t1", fp(TEST_1)), [("q1_code", "a1", fp(ANSWER_1))]),
    ("q2_test", 3, ("t2", fp(TEST_2)), [("q2_code", "a2", fp(ANSWER_2))]),
    ("q3_test", 1, ("t3", fp(TEST_3)), [("q3_code", "a3", fp(ANSWER_3))]),
    ("q4_test", 4, ("t4", fp(TEST_4)), []),
]


def run(sh, source, cell_id=None):
    sh.run_cell(source, store_history=True, cell_id=cell_id)


def statuses(report) -> dict[str, tuple[str, str]]:
    return {p.grade_id: (p.status, p.detail) for p in report.parts}


@pytest.mark.parametrize("with_ids", [True, False], ids=["cell-ids", "no-cell-ids"])
def test_run_all_of_a_half_answered_lab(shell, with_ids, capsys, monkeypatch):
    monkeypatch.setattr(labcheck, "_TRACKER", None)
    t = labcheck.track(shell)
    assert t is not None and labcheck.track(shell) is t and labcheck.tracker() is t
    assert (
        sum(
            isinstance(getattr(cb, "__self__", None), labcheck.Tracker)
            for cb in shell.events.callbacks["post_run_cell"]
        )
        == 1
    )
    ids = (lambda i: i) if with_ids else (lambda i: None)
    run(shell, "def double(x):\n    return 2 * x", ids("a1"))  # answered right
    run(shell, TEST_1, ids("t1"))
    run(shell, "def half(x):\n    return x // 3", ids("a2"))  # answered wrong
    run(shell, TEST_2, ids("t2"))
    run(shell, ANSWER_3, ids("a3"))  # left blank: raises at the top of the cell, and its test fails on a name
    run(shell, TEST_3, ids("t3"))
    capsys.readouterr()
    report = labcheck.check("lab09_demo", PARTS, notebook=None)
    assert statuses(report) == {
        "q1_test": ("passed", ""),
        "q2_test": ("failed", "AssertionError: half(4): expected 2, got 1"),
        "q3_test": ("not answered", "answer cell q3_code still raises NotImplementedError"),
        "q4_test": ("not run", ""),
    }
    assert report.other_errors == [] and report.notes == []
    text = report.text()
    assert text.startswith("lab09_demo: the visible tests pass in 1 of 4 graded parts, worth 2 of the lab's 10 points.")
    assert "q2_test       3  FAILED: AssertionError: half(4): expected 2, got 1" in text
    assert "q4_test       4  not run" in text
    assert "hand in this notebook as lab09_demo.ipynb" in text
    labcheck.summary("lab09_demo", PARTS, notebook=None)
    assert capsys.readouterr().out.strip() == text


def test_a_blank_answer_raises_inside_its_test(shell, monkeypatch):
    t = labcheck.Tracker()
    shell.events.register("post_run_cell", t.post_run_cell)
    run(shell, ANSWER_1, "a1")
    run(shell, TEST_1, "t1")
    assert statuses(labcheck.check("lab", PARTS[:1], tracker=t, notebook=None))["q1_test"] == (
        "not answered",
        "the answer still raises NotImplementedError",
    )


def test_without_cell_ids_a_demo_cell_is_no_edited_answer(shell):
    """Colab-like (no cell ids): the blank answer defines a function, a demonstration cell (one of the lab's
    `others`) raises on it, the test then fails on a name: the part is not answered. An answer edited after
    its blank run (a cell that is none of the lab's) makes the test's own error the verdict again."""
    demo = "steps = double(3)"
    test = "assert steps == 6, 'steps'"
    parts = [("q1_test", 2, ("t1", fp(test)), [("q1_code", "a1", fp(ANSWER_1))])]
    t = labcheck.Tracker()
    shell.events.register("post_run_cell", t.post_run_cell)
    for source in (ANSWER_1, demo, test):
        run(shell, source)
    got = labcheck.check("lab", parts, others=[fp(demo)], tracker=t, notebook=None)
    assert statuses(got)["q1_test"] == (
        "not answered",
        "answer cell q1_code is as released: replace its raise NotImplementedError()",
    )
    assert got.other_errors == ["NotImplementedError (in the cell starting 'steps = double(3)')"]
    # the same runs, but the demonstration cell is not known to be the lab's: it might be an edited answer
    assert statuses(labcheck.check("lab", parts, tracker=t, notebook=None))["q1_test"][0] == "failed"
    run(shell, "def double(x):\n    return 2 * x + 1")  # edited answer, wrong
    run(shell, demo)
    run(shell, test)
    status, detail = statuses(labcheck.check("lab", parts, others=[fp(demo)], tracker=t, notebook=None))["q1_test"]
    assert (status, detail) == ("failed", "AssertionError: steps")


def test_reruns_edits_and_other_errors(shell):
    t = labcheck.Tracker()
    shell.events.register("post_run_cell", t.post_run_cell)
    run(shell, "def double(x):\n    return 2 * x", "a1")
    run(shell, TEST_1, "t1")
    run(shell, "def double(x):\n    return 3 * x", "a1")  # the answer changed after its test passed
    run(shell, "assert half(4) == 2 or True", "t2")  # an edited copy of part 2's test cell
    run(shell, "1 / 0", "x9")  # some other cell fails
    run(shell, TEST_4, "t4")
    run(shell, TEST_4, "t4")  # twice
    report = labcheck.check("lab", PARTS, tracker=t, notebook=None)
    got = {p.grade_id: p for p in report.parts}
    assert got["q1_test"].status == "passed" and "ran again after this test" in got["q1_test"].notes[0]
    assert got["q2_test"].status == "not run" and "edited" in got["q2_test"].detail
    assert report.other_errors == ["ZeroDivisionError: division by zero (in the cell starting '1 / 0')"]
    assert report.notes and "more than once or out of order" in report.notes[0]
    assert "Other cells that raised an error: ZeroDivisionError: division by zero (in the cell" in report.text()


def test_the_tracker_never_breaks_a_cell(shell):
    t = labcheck.Tracker()
    shell.events.register("post_run_cell", t.post_run_cell)

    class Weird(Exception):
        def __str__(self):
            raise RuntimeError("no message for you")

    shell.user_ns["Weird"] = Weird
    result = shell.run_cell("raise Weird()")
    assert isinstance(result.error_in_exec, Weird)  # still raised: the tracker only notes it
    assert t.runs[-1].error == "Weird" and t.runs[-1].message == ""
    t.post_run_cell(object())  # not an ExecutionResult: ignored
    result = shell.run_cell("x = (")
    assert t.runs[-1].error == "SyntaxError"
    long = "assert False, '" + "y" * 1000 + "'"
    shell.run_cell(long)
    assert len(t.runs[-1].message) <= 240


def test_a_graders_run_shows_no_table():
    t = labcheck.Tracker()
    hidden = "### " + " ".join(("BEGIN", "HIDDEN", "TESTS"))
    t.record(TEST_4 + "\n" + hidden + "\nassert secret() == 42\n### END HIDDEN TESTS", AssertionError("x"))
    text = labcheck.check("lab", PARTS, tracker=t, notebook=None).text()
    assert "a grader's run" in text and "q4_test" not in text and "42" not in text


def test_without_a_tracker_the_summary_says_how_to_start_one(monkeypatch):
    monkeypatch.setattr(labcheck, "_TRACKER", None)
    assert labcheck.track(shell=object()) is None  # not IPython: nothing to track
    text = labcheck.check("lab", PARTS, notebook=None).text()
    assert "Restart Kernel and Run All Cells" in text and "q1_test" not in text


# ------------------------------------------------------------------------------------------------ the file


def test_the_size_limit_is_the_graders():
    assert labcheck.MAX_NOTEBOOK_BYTES == intake.MAX_NOTEBOOK_BYTES


def test_the_file_name_and_size(tmp_path, shell):
    t = labcheck.Tracker()
    good = tmp_path / "lab09_demo.ipynb"
    good.write_text('{"cells": []}')
    text = labcheck.check("lab09_demo", PARTS, tracker=t, notebook=good).text()
    assert "File: lab09_demo.ipynb, the name the grader expects." in text
    assert "13 bytes as last saved, within the grader's limit of 32 MiB" in text

    renamed = tmp_path / "lab09_demo (1).ipynb"
    shutil.copy(good, renamed)
    text = labcheck.check("lab09_demo", PARTS, tracker=t, notebook=renamed).text()
    assert "but the grader looks for lab09_demo.ipynb" in text

    huge = tmp_path / "big" / "lab09_demo.ipynb"
    huge.parent.mkdir()
    with open(huge, "wb") as fh:
        fh.truncate(labcheck.MAX_NOTEBOOK_BYTES + 1)  # sparse: no 32 MiB written
    text = labcheck.check("lab09_demo", PARTS, tracker=t, notebook=huge).text()
    assert "TOO LARGE, the grader refuses files over 32 MiB" in text
    assert intake.check_notebook(b" " * (labcheck.MAX_NOTEBOOK_BYTES + 1)).startswith("refused")

    gone = tmp_path / "moved.ipynb"
    assert "is not on disk" in labcheck.check("lab09_demo", PARTS, tracker=t, notebook=gone).text()

    # the kernel's own notebook: ipykernel sets __session__ from Jupyter Server's JPY_SESSION_NAME
    shell.user_ns["__session__"] = str(good)
    assert labcheck._notebook_path(shell) == good
    shell.user_ns["__session__"] = "console-1234"  # a console, not a notebook
    assert labcheck._notebook_path(shell) is None or labcheck._notebook_path(shell).suffix == ".ipynb"


# --------------------------------------------------------------------------------- a released lab, run all


@pytest.mark.slow
def test_restart_and_run_all_of_the_released_lab00(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    lab = "lab00_memory"
    scratch = course.scratch_course(lab, tmp_path, REPO / "labs", release_lab=False)
    lab_setup.update(scratch / "source" / lab / f"{lab}.ipynb", lab_setup.version(), False)  # a no-op once applied
    out = course.release(lab, scratch)
    nb = nbformat.read(out / f"{lab}.ipynb", as_version=4)

    def run_all(notebook):
        client = NotebookClient(
            notebook, timeout=300, kernel_name="python3", allow_errors=True, resources={"metadata": {"path": str(out)}}
        )
        client.execute()
        last = notebook.cells[-1]
        assert last.metadata.nbgrader.grade_id == "labcheck"
        return "".join(o.get("text", "") for o in last.outputs if o.get("name") == "stdout")

    blank = run_all(nb)
    assert "pass in 0 of 5 graded parts, worth 0 of the lab's 10 points" in blank
    assert blank.count("not answered: the answer still raises NotImplementedError") == 5

    src = json.loads((scratch / "source" / lab / f"{lab}.ipynb").read_text())
    solution = next(_text(c) for c in src["cells"] if _gid(c) == "q1_code")
    for cell in nb.cells:
        if _gid(cell) == "q1_code":
            cell.source = "\n".join(ln for ln in solution.split("\n") if "SOLUTION" not in ln)
        elif _gid(cell) == "q2_code":
            cell.source = "def packed_bytes(n_bits):\n    return n_bits // 8"
    half = run_all(nb)
    assert "pass in 1 of 5 graded parts, worth 2 of the lab's 10 points" in half
    assert "q1_test       2  passed" in half
    assert "q2_test       2  FAILED: AssertionError: packed_bytes(9): expected 2, got 1" in half
    assert half.count("not answered") == 3
