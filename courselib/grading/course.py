"""The nbgrader driver: the course folder, student releases, plain autograding.

The course directory is ``labs/`` (it holds ``nbgrader_config.py`` and ``source/<lab>/<lab>.ipynb``).
nbgrader does the work; this module only drives it:

- :func:`release` runs ``nbgrader generate_assignment`` (solutions and hidden tests stripped) into
  ``labs/release/<lab>/``; these student notebooks are build products, never edited by hand.
- :func:`autograde` copies a folder of submissions laid out as ``<student>/<lab>/<lab>.ipynb`` into the
  course's ``submitted/`` folder and runs ``nbgrader autograde`` and ``nbgrader generate_feedback``
  (trusted notebooks only: the hidden tests run in the student's process; the class-scale, sandboxed
  path is :func:`courselib.grading.batch.grade`). Its feedback leaves the hidden tests out
  (:func:`hide_hidden_tests`), which plain ``nbgrader generate_feedback`` shows verbatim.

nbgrader runs the ``alembic`` executable by name to set up its gradebook, so every call here puts the
running interpreter's ``bin`` folder first on ``PATH``.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from importlib import import_module
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

NOTEBOOK_SUFFIX = ".ipynb"
HIDDEN_TESTS = tuple(f"{word} HIDDEN TESTS" for word in ("BEGIN", "END"))
"""nbgrader's delimiters of a hidden-test region (``ClearHiddenTests``'s defaults, behind ``### ``); built, not
written out, so that courselib's own files hold no marker (``tools/edition.py`` scans the published wheel)."""
SOLUTION = tuple(f"{word} SOLUTION" for word in ("BEGIN", "END"))
"""nbgrader's delimiters of a solution region (``ClearSolutions``' defaults, behind ``### ``), built likewise."""


class GradingError(RuntimeError):
    """nbgrader failed, or the course directory is not what the pipeline expects."""


def find_course_dir(course_dir: str | os.PathLike | None = None) -> Path:
    """The nbgrader course directory: ``course_dir``, else the current folder or its ``labs/``
    if it holds ``nbgrader_config.py``, else the repository's ``labs/``."""
    candidates = (
        [Path(course_dir)]
        if course_dir is not None
        else [Path.cwd(), Path.cwd() / "labs", Path(__file__).resolve().parents[2] / "labs"]
    )
    for cand in candidates:
        if (cand / "nbgrader_config.py").exists() and (cand / "source").is_dir():
            return cand.resolve()
    raise GradingError(f"no nbgrader course directory (nbgrader_config.py and source/) in {candidates}")


def list_labs(course_dir: str | os.PathLike | None = None) -> list[str]:
    """Names of the assignments under ``source/`` (folders holding at least one notebook), sorted. A lab of
    this course is ``source/<lab>/<lab>.ipynb``; another course's assignment may hold several notebooks
    (nbgrader's ``source/ps1/problem1.ipynb``, ``problem2.ipynb``)."""
    src = find_course_dir(course_dir) / "source"
    return sorted(p.name for p in src.iterdir() if p.is_dir() and _notebooks_in(p))


def _notebooks_in(folder: Path) -> list[str]:
    return sorted(f.stem for f in folder.glob(f"*{NOTEBOOK_SUFFIX}") if f.is_file() and not f.name.startswith("."))


def lab_notebooks(lab: str, course_dir: str | os.PathLike | None = None) -> list[str]:
    """The notebooks of an assignment (their names without ``.ipynb``), sorted: ``[lab]`` for a lab of this
    course, ``["problem1", "problem2"]`` for nbgrader's example ``ps1``."""
    return _notebooks_in(find_course_dir(course_dir) / "source" / lab)


def part_key(lab: str, notebook: str, grade_id: str, notebooks: list[str]) -> str:
    """The name of a part in results and grade sheets: its ``grade_id`` when the assignment is the one notebook
    named like it (every lab of this course), else ``<notebook>:<grade_id>`` (grade ids repeat across notebooks)."""
    return grade_id if notebooks == [lab] else f"{notebook}:{grade_id}"


def split_part(lab: str, key: str, notebooks: list[str]) -> tuple[str, str]:
    """``(notebook, grade_id)`` of a part named by :func:`part_key`."""
    if notebooks == [lab]:
        return lab, key
    notebook, _, grade_id = key.partition(":")
    return notebook, grade_id


def nbgrader_env() -> dict[str, str]:
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def nbgrader(args: list[str], course_dir: str | os.PathLike, *, timeout: float | None = None) -> str:
    """Run ``python -m nbgrader ARGS`` in ``course_dir``; return its output or raise :class:`GradingError`."""
    cmd = [sys.executable, "-m", "nbgrader", *args]
    proc = subprocess.run(cmd, cwd=course_dir, env=nbgrader_env(), capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise GradingError(f"nbgrader {' '.join(args)} failed (exit {proc.returncode}):\n{out[-4000:]}")
    return out


def check_lab(lab: str, course: Path) -> None:
    if lab not in list_labs(course):
        raise GradingError(f"unknown lab {lab!r}; the course has {list_labs(course)}")


def scratch_course(lab: str, dest, course_dir=None, *, settings: str = "", release_lab: bool = True) -> Path:
    """A course folder ``dest/course`` holding only ``lab`` (its source and the nbgrader config), and
    its release unless ``release_lab`` is false: a place to try grading without touching the real course.

    ``settings`` is written as the scratch course's ``course.toml``.
    """
    course_dir = find_course_dir(course_dir)
    course = Path(dest) / "course"
    (course / "source").mkdir(parents=True)
    shutil.copy(course_dir / "nbgrader_config.py", course)
    shutil.copytree(course_dir / "source" / lab, course / "source" / lab)
    if settings:
        (course / "course.toml").write_text(settings)
    if release_lab:
        release(lab, course)
    return course


RUN_ALL_TAG = "raises-exception"
"""The cell tag with which JupyterLab's (and Jupyter Notebook's) *Run All* carries on past a cell that raises
(the kernel is asked not to abort the cells queued after it); nbclient, nbconvert and nbval read it too."""


def tag_run_all(nb: dict) -> dict:
    """Tag, in a student version, every code cell from the first answer or graded test on with
    :data:`RUN_ALL_TAG`, so that *Kernel > Restart Kernel and Run All Cells* runs the whole lab, as the grader
    does, and reaches its last cell (the summary of :mod:`courselib.labcheck`) however many parts fail. The
    cells before the first part (the setup, the lab's helpers) stay untagged: if one of them fails, the run
    stops there, since nothing after it can work. Grading never reads the tag (every grader runs every cell
    anyway) and nbgrader's checksums do not cover it."""
    started = False
    for cell in nb.get("cells", []):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        started = started or bool(meta.get("solution") or meta.get("grade"))
        if started and cell.get("cell_type") == "code":
            tags = cell.setdefault("metadata", {}).setdefault("tags", [])
            if RUN_ALL_TAG not in tags:
                tags.append(RUN_ALL_TAG)
    return nb


def release(lab: str, course_dir: str | os.PathLike | None = None, *, db: str | None = None) -> Path:
    """Generate the student version of ``lab``; return the folder ``release/<lab>``.

    nbgrader writes it (solutions replaced by the code stub, hidden tests removed); then every notebook's
    cells from the first part on are tagged so that *Run All* carries on past a failing part
    (:func:`tag_run_all`). ``db`` is a gradebook URL other than the course config's (nbgrader's ``--db``).
    """
    course = find_course_dir(course_dir)
    check_lab(lab, course)
    nbgrader(["generate_assignment", lab, "--force", *([f"--db={db}"] if db else [])], course)
    out = course / "release" / lab
    missing = [nb for nb in lab_notebooks(lab, course) if not (out / f"{nb}{NOTEBOOK_SUFFIX}").exists()]
    if missing:
        raise GradingError(f"nbgrader did not write {', '.join(str(out / (nb + NOTEBOOK_SUFFIX)) for nb in missing)}")
    for name in lab_notebooks(lab, course):
        path = out / f"{name}{NOTEBOOK_SUFFIX}"
        text = path.read_text(encoding="utf-8")
        tagged = json.dumps(tag_run_all(json.loads(text)), sort_keys=True, indent=1, ensure_ascii=False) + "\n"
        if tagged != text:
            path.write_text(tagged, encoding="utf-8")
    return out


def release_all(course_dir: str | os.PathLike | None = None) -> list[Path]:
    """Generate the student versions of every lab."""
    course = find_course_dir(course_dir)
    return [release(lab, course) for lab in list_labs(course)]


def notebook_parts(nb: dict) -> list[dict]:
    """The graded cells of one notebook (a parsed ``.ipynb``): ``grade_id``, ``points`` and ``kind``
    (``"test"``: autograded tests; ``"manual"``: an answer graded by hand; ``"task"``: a task cell)."""
    out = []
    for cell in nb["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("grade") or meta.get("task"):
            kind = "task" if meta.get("task") else "manual" if meta.get("solution") else "test"
            out.append({"grade_id": meta["grade_id"], "points": float(meta.get("points", 0)), "kind": kind})
    return out


def _part_cells(lab: str, course_dir) -> list[dict]:
    course = find_course_dir(course_dir)
    notebooks = lab_notebooks(lab, course)
    out = []
    for notebook in notebooks:
        nb = json.loads((course / "source" / lab / f"{notebook}{NOTEBOOK_SUFFIX}").read_text())
        for part in notebook_parts(nb):
            out.append({**part, "grade_id": part_key(lab, notebook, part["grade_id"], notebooks)})
    return out


def lab_parts(lab: str, course_dir: str | os.PathLike | None = None) -> list[tuple[str, float]]:
    """The graded parts of ``lab`` as ``(key, points)`` in notebook order, read from the source: its
    autograded test cells, its answers graded by hand (code or Markdown) and its task cells, as nbgrader
    counts them into the maximum score. ``key`` is the ``grade_id``, prefixed by ``<notebook>:`` in an
    assignment of several notebooks (:func:`part_key`)."""
    return [(c["grade_id"], c["points"]) for c in _part_cells(lab, course_dir)]


def part_kinds(lab: str, course_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """``{grade_id: kind}`` for the parts of :func:`lab_parts`: ``"test"`` (autograded tests), ``"manual"``
    (an answer graded by hand) or ``"task"`` (a task cell, graded by hand)."""
    return {c["grade_id"]: c["kind"] for c in _part_cells(lab, course_dir)}


def _split_hidden(source: str) -> tuple[str, list[str]]:
    """``source`` without its hidden-test regions (markers included), and the regions' lines."""
    kept, hidden, inside = [], [], False
    for line in source.split("\n"):
        if HIDDEN_TESTS[0] in line:
            inside = True
        elif HIDDEN_TESTS[1] in line:
            inside = False
        elif inside:
            hidden.append(line)
        else:
            kept.append(line)
    return "\n".join(kept), hidden


HIDDEN_NOTE = "This test cell also runs hidden tests: their code and the cell's output are not shown here. Result: "


def hide_hidden_tests(nb, resources):
    """``nbgrader generate_feedback``'s preprocessor that keeps the hidden tests out of the feedback.

    nbgrader's autograded notebook holds every test cell in its *source* version, hidden tests included,
    and its own feedback shows them verbatim. Here, in every cell with a hidden-test region, the region
    and its markers are removed from the source, and the cell's outputs (a traceback quotes the failing
    hidden line; a hidden test may print) are replaced by one line: :data:`HIDDEN_NOTE` and ``passed``,
    or ``failed`` with the exceptions' names. The score per cell still comes from nbgrader's gradebook.
    A plain callable (nbconvert calls ``preprocessor(nb, resources)``), registered by :func:`autograde`.
    """
    from nbformat import NotebookNode  # in nbgrader's process, where nbformat is loaded anyway

    for cell in nb.cells:
        source = cell.source if isinstance(cell.source, str) else "".join(cell.source)
        kept, _ = _split_hidden(source)
        if kept == source:
            continue
        cell.source = kept
        if cell.cell_type == "code":
            errors = [o.get("ename", "error") for o in cell.get("outputs", []) if o.get("output_type") == "error"]
            verdict = f"failed ({', '.join(errors)})" if errors else "passed"
            cell.outputs = [NotebookNode(output_type="stream", name="stdout", text=HIDDEN_NOTE + verdict + "\n")]
    return nb, resources


#: ``nbgrader generate_feedback``'s preprocessors (nbgrader 0.9's own two, and :func:`hide_hidden_tests`).
FEEDBACK_PREPROCESSORS = (
    "nbgrader.preprocessors.GetGrades",
    f"{__name__}.hide_hidden_tests",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
)


def hidden_test_lines(lab: str, course_dir: str | os.PathLike | None = None) -> list[str]:
    """The lines of ``lab``'s hidden tests a student must never read: 12 characters or more, not comments,
    and not also in the source outside the hidden regions (a line a solution holds is no secret)."""
    course = find_course_dir(course_dir)
    cells = [
        cell
        for notebook in lab_notebooks(lab, course)
        for cell in json.loads((course / "source" / lab / f"{notebook}{NOTEBOOK_SUFFIX}").read_text())["cells"]
    ]
    visible, hidden = [], []
    for cell in cells:
        kept, lines = _split_hidden("".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"])
        visible.append(kept)
        hidden += lines
    visible_text = "\n".join(visible)
    return sorted(
        {s for s in (ln.strip() for ln in hidden) if len(s) >= 12 and not s.startswith("#") and s not in visible_text}
    )


def visible_text(page: str) -> str:
    """An HTML page as a reader sees it: without styles, scripts and tags, entities decoded."""
    page = re.sub(r"<(style|script)\b.*?</\1>", "", page, flags=re.S | re.I)
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def feedback_leaks(page: str, secrets: list[str]) -> list[str]:
    """The hidden-test markers and lines of ``secrets`` (:func:`hidden_test_lines`) an HTML page shows."""
    text = visible_text(page)
    return [s for s in (*HIDDEN_TESTS, *secrets) if s in text]


AUTOGRADE_NOTICE = (
    "courselib autograde: plain nbgrader, NOT sandboxed: each notebook runs in its own kernel with the hidden "
    "tests, so student code can read them (use `courselib grade` for untrusted submissions); the feedback leaves "
    "the hidden tests out"
)


def autograde(
    lab: str,
    submissions_dir: str | os.PathLike,
    course_dir: str | os.PathLike | None = None,
    *,
    feedback: bool = True,
    log: Callable[[str], None] | None = None,
) -> list[str]:
    """Autograde every ``<student>/<lab>/<lab>.ipynb`` under ``submissions_dir`` with plain nbgrader.

    Returns the student ids that were graded. Students whose folder lacks the notebook are
    skipped here (``export_grades`` reports them as ``missing``).

    nbgrader runs each notebook with its hidden tests in one kernel, unsandboxed: for trusted notebooks
    (the labs' own tests, a comparison with :func:`courselib.grading.batch.grade`). ``feedback`` writes
    ``feedback/<student>/<lab>/<lab>.html`` with nbgrader's template, without the hidden tests
    (:func:`hide_hidden_tests`). Student code that read the hidden tests could still print them in a later
    cell: a feedback page that shows a hidden-test marker or line (:func:`feedback_leaks`) is deleted and
    named through ``log`` (default: printed), never handed out.
    """
    course = find_course_dir(course_dir)
    check_lab(lab, course)
    submissions_dir = Path(submissions_dir)
    if not submissions_dir.is_dir():
        raise GradingError(f"{submissions_dir} is not a folder")
    if not (course / "release" / lab).exists():
        release(lab, course)
    graded = []
    notebooks = lab_notebooks(lab, course)
    for student_dir in sorted(p for p in submissions_dir.iterdir() if p.is_dir()):
        folder = student_dir / lab
        if not any((folder / f"{nb}{NOTEBOOK_SUFFIX}").exists() for nb in notebooks):
            continue
        dest = course / "submitted" / student_dir.name / lab
        if dest.resolve() != folder.resolve():
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(folder, dest)
        graded.append(student_dir.name)
    say = log or print
    secrets = hidden_test_lines(lab, course) if feedback else []
    preprocessors = [f"--GenerateFeedback.preprocessors={p}" for p in FEEDBACK_PREPROCESSORS]
    for student in graded:
        nbgrader(["autograde", lab, "--create", "--force", f"--student={student}"], course)
        if feedback:
            nbgrader(["generate_feedback", lab, "--force", f"--student={student}", *preprocessors], course)
            for page in sorted((course / "feedback" / student / lab).glob("*.html")):
                found = feedback_leaks(page.read_text(errors="replace"), secrets)
                if found:
                    page.unlink()
                    say(
                        f"courselib autograde: WITHHELD the feedback of {student}: it showed {len(found)} hidden-test "
                        f"line(s), e.g. {found[0][:80]!r} (printed by the student's code?); {page} deleted"
                    )
    return graded


#: Instructor-side course settings beside ``nbgrader_config.py`` (never under ``source/``, so never released).
COURSE_SETTINGS = "course.toml"


def course_settings(course_dir: str | os.PathLike | None = None) -> dict:
    """The course's ``course.toml`` as a dict (empty when the file is absent).

    Per-lab tables ``[labs.<lab>]`` declare hooks, e.g.
    ``after_grading = "courselib.grading.leaderboard:lab_hook"``, and instructor-only settings such as
    a private test set (see :mod:`courselib.grading.leaderboard`).
    """
    path = find_course_dir(course_dir) / COURSE_SETTINGS
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise GradingError(f"{path} is not valid TOML: {exc}") from None


def lab_settings(lab: str, course_dir: str | os.PathLike | None = None) -> dict:
    """The ``[labs.<lab>]`` table of the course settings (empty when there is none)."""
    return course_settings(course_dir).get("labs", {}).get(lab, {})


def lab_hook(lab: str, course_dir: str | os.PathLike | None, name: str) -> Callable | None:
    """The callable a lab declares as ``name = "module:function"`` in ``course.toml``, or ``None``."""
    spec = lab_settings(lab, course_dir).get(name)
    if spec is None:
        return None
    module, _, attr = str(spec).partition(":")
    try:
        return getattr(import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise GradingError(f"course.toml: labs.{lab}.{name} = {spec!r} cannot be loaded: {exc}") from None
