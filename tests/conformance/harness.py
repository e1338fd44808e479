"""The conformance suite's harness: build the course and its submissions, grade them, read scores per part.

The conformance course (``tests/conformance/course``) uses every kind of nbgrader cell and the idioms
real courses use; ``tests/conformance/submissions.yml`` defines its students as edits of the release
notebooks. Plain ``nbgrader autograde`` is the ground truth: any grader of the course must give every
part the score nbgrader gives it.

API (every score table is a plain dict keyed by ``(student, assignment, notebook, grade_id)``):

- :func:`build` -> :class:`Built`: a scratch copy of the course with every assignment released by
  ``nbgrader generate_assignment`` and every student's submission in ``submitted/`` (nbgrader's layout)
  and in a hand-in folder outside the course (``<tmp>/submissions``, the layout ``courselib grade`` takes).
- :func:`course_parts` -> ``{(assignment, notebook, grade_id): Part}``: the graded parts of the source.
- :func:`nbgrader_scores` -> score table: runs plain ``nbgrader autograde`` then :func:`read_gradebook`.
- :func:`read_gradebook` -> score table: each grade of nbgrader's gradebook (any grader that records
  into it, ``courselib grade`` too) as ``{"score", "max", "needs_manual_grade", "auto_score",
  "manual_score"}``.
- :func:`expected_scores` -> ``{key: {"score", "needs_manual_grade"}}``: the outcomes submissions.yml
  states; :func:`check_expected` lists where a score table differs from them.
- :func:`compare` -> the parts where a grader's table differs from nbgrader's.
- :func:`hidden_fragments` / :func:`find_leaks`: what of a source's hidden tests must never reach a student.
- :func:`clone_course`: a second copy of the released course (no submissions) for another grader;
  :func:`score_table`: a score table as text; ``python tests/conformance/harness.py NEW_FOLDER`` builds,
  grades with nbgrader and prints it.

nbgrader is run here directly (``python -m nbgrader``, the venv's ``bin`` first on ``PATH`` because it
runs ``alembic`` by name), not through courselib, so the ground truth does not depend on the code it checks.
"""

from __future__ import annotations

import ast
import copy
import html
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
COURSE = HERE / "course"
SUBMISSIONS = HERE / "submissions.yml"
NOTEBOOK_SUFFIX = ".ipynb"
HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
#: Every hidden assertion message of the course starts with this, so a leaked message is easy to spot.
HIDDEN_MESSAGE_TAG = "hidden check:"
#: Shorter lines of a hidden region (``finally:``, ``try:``) say nothing about the tests.
MIN_FRAGMENT = 16

Key = tuple[str, str, str, str]  # (student, assignment, notebook, grade_id)


class NbgraderFailed(RuntimeError):
    """``python -m nbgrader`` exited with an error."""


def run_nbgrader(args: list[str], course_dir: str | os.PathLike, *, timeout: float = 600) -> str:
    """Run ``python -m nbgrader ARGS`` in ``course_dir``; return its output, raise :class:`NbgraderFailed`."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONHASHSEED", "0")
    proc = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args],
        cwd=course_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise NbgraderFailed(f"nbgrader {' '.join(args)} failed (exit {proc.returncode}):\n{out[-4000:]}")
    return out


# ------------------------------------------------------------------------------------------ the course
def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _meta(cell: dict) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def assignments(course_dir: str | os.PathLike = COURSE) -> dict[str, list[str]]:
    """``{assignment: [notebook names without .ipynb, sorted]}`` of the course's ``source/``."""
    src = Path(course_dir) / "source"
    return {
        a.name: sorted(p.stem for p in a.glob(f"*{NOTEBOOK_SUFFIX}"))
        for a in sorted(src.iterdir())
        if a.is_dir() and any(a.glob(f"*{NOTEBOOK_SUFFIX}"))
    }


@dataclass(frozen=True)
class Part:
    """A graded cell of the source: ``kind`` is ``tests`` (autograded test cell), ``manual`` (manually
    graded answer, code or Markdown) or ``task``; ``hidden`` is ``"none"``, ``"some"`` or ``"all"``
    (how much of a test cell is in hidden-test regions)."""

    points: float
    kind: str
    cell_type: str
    hidden: str = "none"


def course_parts(course_dir: str | os.PathLike = COURSE) -> dict[tuple[str, str, str], Part]:
    """Every graded cell of the source notebooks, ``{(assignment, notebook, grade_id): Part}``, in order."""
    out = {}
    for assignment, notebooks in assignments(course_dir).items():
        for name in notebooks:
            nb = json.loads((Path(course_dir) / "source" / assignment / f"{name}{NOTEBOOK_SUFFIX}").read_text())
            for cell in nb["cells"]:
                m = _meta(cell)
                if not (m.get("grade") or m.get("task")):
                    continue
                kind = "task" if m.get("task") else "manual" if m.get("solution") else "tests"
                src = _source(cell)
                hidden = "none"
                if HIDDEN_BEGIN in src:
                    outside = _strip_hidden(src)
                    rest = [ln for ln in outside.splitlines() if ln.strip() and not ln.strip().startswith("#")]
                    hidden = "some" if rest else "all"
                out[(assignment, name, m["grade_id"])] = Part(float(m["points"]), kind, cell["cell_type"], hidden)
    return out


def _strip_hidden(src: str) -> str:
    return re.sub(rf"{re.escape(HIDDEN_BEGIN)}.*?{re.escape(HIDDEN_END)}\n?", "", src, flags=re.S)


# ------------------------------------------------------------------------------------------ students
def load_students(path: str | os.PathLike = SUBMISSIONS) -> dict[str, dict]:
    """The ``students`` table of submissions.yml: ``{student: spec}``."""
    data = yaml.safe_load(Path(path).read_text())
    students = data["students"]
    for name, spec in students.items():
        unknown = set(spec) - {"base", "answers", "delete", "missing", "expect"}
        if unknown or spec.get("base") not in ("solution", "blank"):
            raise ValueError(f"submissions.yml: student {name}: bad spec (keys {sorted(spec)})")
    return students


def solution_sources(source_nb: dict) -> dict[str, str]:
    """``{grade_id: source}`` of the answer cells (``solution: true``) of a source notebook."""
    return {_meta(c)["grade_id"]: _source(c) for c in source_nb["cells"] if _meta(c).get("solution")}


def student_notebook(release_nb: dict, source_nb: dict, spec: dict, nb_path: str) -> dict:
    """The notebook ``spec`` hands in for ``nb_path`` (``<assignment>/<notebook>``), made from the release."""
    nb = copy.deepcopy(release_nb)
    answers = dict(solution_sources(source_nb)) if spec["base"] == "solution" else {}
    answers.update((spec.get("answers") or {}).get(nb_path, {}))
    deleted = set((spec.get("delete") or {}).get(nb_path, []))
    seen, cells = set(), []
    for cell in nb["cells"]:
        gid = _meta(cell).get("grade_id")
        if gid in deleted:
            seen.add(gid)
            continue
        if gid in answers:
            cell["source"] = answers[gid].rstrip("\n")
            seen.add(gid)
        cells.append(cell)
    named = set((spec.get("answers") or {}).get(nb_path, {})) | deleted
    if named - seen:
        raise ValueError(f"{nb_path}: no cells {sorted(named - seen)} in the release")
    nb["cells"] = cells
    return nb


@dataclass
class Built:
    """A scratch conformance course, released, with every student's submission in place."""

    root: Path  # the scratch folder
    course: Path  # root/course: source/, release/, submitted/<student>/<assignment>/, gradebook.db
    handins: Path  # root/submissions/<student>/<assignment>/: the same files, outside the course
    students: dict[str, dict]  # submissions.yml
    assignments: dict[str, list[str]]  # {assignment: [notebook, ...]}
    parts: dict[tuple[str, str, str], Part] = field(default_factory=dict)

    def keys(self) -> list[Key]:
        """Every (student, assignment, notebook, grade_id) of the course, students in file order."""
        return [(s, *k) for s in self.students for k in self.parts]


def build(tmp_path: str | os.PathLike, students: dict[str, dict] | None = None) -> Built:
    """Copy the course to ``tmp_path/course``, release every assignment (``nbgrader generate_assignment
    --force``), and write each student's submission (release files, edited notebooks) both into the course's
    ``submitted/<student>/<assignment>/`` and into ``tmp_path/submissions/<student>/<assignment>/``."""
    root = Path(tmp_path)
    course = root / "course"
    shutil.copytree(COURSE, course, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    students = load_students() if students is None else students
    asg = assignments(course)
    for assignment in asg:
        run_nbgrader(["generate_assignment", assignment, "--force"], course)
    handins = root / "submissions"
    for student, spec in students.items():
        missing = set(spec.get("missing") or [])
        for assignment, notebooks in asg.items():
            release = course / "release" / assignment
            dest = handins / student / assignment
            shutil.copytree(release, dest)
            for name in notebooks:
                nb_path = f"{assignment}/{name}"
                target = dest / f"{name}{NOTEBOOK_SUFFIX}"
                if nb_path in missing:
                    target.unlink()
                    continue
                source_nb = json.loads((course / "source" / assignment / f"{name}{NOTEBOOK_SUFFIX}").read_text())
                release_nb = json.loads(target.read_text())
                target.write_text(json.dumps(student_notebook(release_nb, source_nb, spec, nb_path), indent=1))
            shutil.copytree(dest, course / "submitted" / student / assignment)
    return Built(root, course, handins, students, asg, course_parts(course))


def clone_course(built: Built, dest: str | os.PathLike) -> Path:
    """A copy of the built course as it was after the release (config, source, release and a gradebook
    that knows the assignments but holds no submissions): a second course for another grader to grade the
    same hand-ins (``built.handins``) in."""
    from nbgrader.api import Gradebook

    dest = Path(dest)
    dest.mkdir(parents=True)
    for name in ("nbgrader_config.py", "source", "release", "gradebook.db"):
        src = built.course / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    with Gradebook("sqlite:///" + str(dest.resolve() / "gradebook.db")) as gb:
        for assignment in gb.assignments:
            for student in [s.student.id for s in assignment.submissions]:
                gb.remove_submission(assignment.name, student)
    return dest


# ------------------------------------------------------------------------------------------ scores
def read_gradebook(course_dir: str | os.PathLike) -> dict[Key, dict]:
    """Every grade of the course's gradebook (``<course>/gradebook.db``), per part:
    ``{(student, assignment, notebook, grade_id): {"score", "max", "needs_manual_grade", "auto_score",
    "manual_score"}}``. A submission's every notebook and part is there (nbgrader creates them all)."""
    from nbgrader.api import Gradebook

    url = "sqlite:///" + str(Path(course_dir).resolve() / "gradebook.db")
    out: dict[Key, dict] = {}
    with Gradebook(url) as gb:
        for assignment in gb.assignments:
            for sub in assignment.submissions:
                for nb in sub.notebooks:
                    for grade in nb.grades:
                        out[(sub.student.id, assignment.name, nb.name, grade.name)] = {
                            "score": float(grade.score),
                            "max": float(grade.max_score),
                            "needs_manual_grade": bool(grade.needs_manual_grade),
                            "auto_score": grade.auto_score,
                            "manual_score": grade.manual_score,
                        }
    return out


def nbgrader_scores(course_dir: str | os.PathLike, assignment_ids: list[str] | None = None) -> dict[Key, dict]:
    """Grade every submission in ``submitted/`` with plain ``nbgrader autograde <assignment> --force``
    (all students of an assignment in one run) and return :func:`read_gradebook`."""
    for assignment in assignment_ids or list(assignments(course_dir)):
        run_nbgrader(["autograde", assignment, "--force"], course_dir, timeout=900)
    return read_gradebook(course_dir)


def expected_scores(built: Built) -> dict[Key, dict]:
    """What submissions.yml says nbgrader gives each part: ``{key: {"score", "needs_manual_grade"}}``
    (the base's rule, then the student's ``expect`` overrides)."""
    out = {}
    for student, spec in built.students.items():
        expect = {tuple(k.split("/")): v for k, v in (spec.get("expect") or {}).items()}
        unknown = set(expect) - set(built.parts)
        if unknown:
            raise ValueError(f"submissions.yml: {student} expects unknown parts {sorted(unknown)}")
        for pkey, part in built.parts.items():
            if pkey in expect:
                value = expect[pkey]
            elif part.kind == "task":
                value = "manual"
            elif part.kind == "manual":
                value = "manual" if spec["base"] == "solution" else 0
            else:
                value = part.points if spec["base"] == "solution" else 0
            if value == "manual":
                out[(student, *pkey)] = {"score": 0.0, "needs_manual_grade": True}
            else:
                out[(student, *pkey)] = {"score": float(value), "needs_manual_grade": False}
    return out


def check_expected(scores: dict[Key, dict], expected: dict[Key, dict]) -> list[str]:
    """The parts whose score or pending state differs from ``expected`` (one line each)."""
    problems = []
    for key, want in expected.items():
        got = scores.get(key)
        if got is None:
            problems.append(f"{'/'.join(key)}: no grade (expected {_fmt(want)})")
        elif got["score"] != want["score"] or got["needs_manual_grade"] != want["needs_manual_grade"]:
            problems.append(f"{'/'.join(key)}: got {_fmt(got)}, expected {_fmt(want)}")
    return problems


def _fmt(g: dict | None) -> str:
    if g is None:
        return "no grade"
    return f"{g['score']:g}" + (" pending manual grading" if g["needs_manual_grade"] else "")


def compare(truth: dict[Key, dict], other: dict[Key, dict], refused: dict[str, str] | None = None) -> list[dict]:
    """Where ``other`` (a grader's score table) differs from ``truth`` (nbgrader's), part by part.

    ``refused`` maps an assignment the grader would not grade to its error message. Returns one dict per
    disagreeing part: ``{"key", "nbgrader", "other", "why"}`` (``other`` is ``None`` when it has no grade).
    """
    refused = refused or {}
    out = []
    for key in sorted(truth):
        want, got = truth[key], other.get(key)
        if key[1] in refused:
            out.append({"key": key, "nbgrader": want, "other": None, "why": f"refused: {refused[key[1]]}"})
        elif got is None:
            out.append({"key": key, "nbgrader": want, "other": None, "why": "no grade recorded"})
        elif got["score"] != want["score"] or got["needs_manual_grade"] != want["needs_manual_grade"]:
            out.append({"key": key, "nbgrader": want, "other": got, "why": f"{_fmt(got)} != nbgrader {_fmt(want)}"})
    for key in sorted(set(other) - set(truth)):
        out.append({"key": key, "nbgrader": None, "other": other[key], "why": "graded, but nbgrader has no grade"})
    return out


def format_disagreements(rows: list[dict], limit: int = 200) -> str:
    """One line per disagreeing part; the parts of a refused assignment as one line."""
    lines, refused = [], {}
    for r in rows:
        if r["why"].startswith("refused: "):
            refused.setdefault(r["key"][1], [r["why"], 0])[1] += 1
        else:
            lines.append(f"{'/'.join(r['key'])}: {r['why']}")
    out = [f"{a}: every part ({n}) {why}" for a, (why, n) in sorted(refused.items())]
    out += lines[:limit]
    if len(lines) > limit:
        out.append(f"... and {len(lines) - limit} more")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ leaks
def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def hidden_fragments(course_dir: str | os.PathLike = COURSE) -> dict[str, list[str]]:
    """``{assignment: [fragment, ...]}``: what of the source's hidden-test regions no student may see.

    The fragments are each line of a hidden region (whitespace-normalized, at least
    :data:`MIN_FRAGMENT` characters, not a comment) that is not also a line of the assignment's released
    notebooks, and the literal text of every string in a hidden region (the assertion messages, which
    name expected values: ``f"... should be {want}"`` gives ``... should be``), at least 8 characters.
    """
    out: dict[str, list[str]] = {}
    course_dir = Path(course_dir)
    for assignment, notebooks in assignments(course_dir).items():
        frags: list[str] = []
        released: set[str] = set()
        release_dir = course_dir / "release" / assignment
        for name in notebooks:
            rel = release_dir / f"{name}{NOTEBOOK_SUFFIX}"
            if rel.exists():
                for cell in json.loads(rel.read_text())["cells"]:
                    released.update(_norm(ln) for ln in _source(cell).splitlines())
        for name in notebooks:
            nb = json.loads((course_dir / "source" / assignment / f"{name}{NOTEBOOK_SUFFIX}").read_text())
            for cell in nb["cells"]:
                for region in re.findall(
                    rf"{re.escape(HIDDEN_BEGIN)}\n(.*?){re.escape(HIDDEN_END)}", _source(cell), flags=re.S
                ):
                    for ln in region.splitlines():
                        n = _norm(ln)
                        if len(n) >= MIN_FRAGMENT and not n.startswith("#") and n not in released:
                            frags.append(n)
                    try:
                        tree = ast.parse(region)
                    except SyntaxError:
                        continue
                    for node in ast.walk(tree):
                        if isinstance(node, ast.Constant) and isinstance(node.value, str):
                            n = _norm(node.value)
                            if len(n) >= 8 and not any(n in r for r in released):
                                frags.append(n)
        out[assignment] = sorted(set(frags))
    return out


def html_text(page: str) -> str:
    """The text of an HTML page as a reader sees it (tags dropped, entities decoded, whitespace normalized):
    nbconvert splits highlighted code into many spans, so code lines are searched in this."""
    page = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.S | re.I)
    return _norm(html.unescape(re.sub(r"<[^>]+>", "", page)))


def find_leaks(page: str, fragments: list[str]) -> list[str]:
    """The fragments (and the :data:`HIDDEN_MESSAGE_TAG`) found in an HTML page's text."""
    text = html_text(page)
    hits = [f for f in fragments if f in text]
    if HIDDEN_MESSAGE_TAG in text and HIDDEN_MESSAGE_TAG not in hits:
        hits.append(HIDDEN_MESSAGE_TAG)
    return hits


# ------------------------------------------------------------------------------------------ by hand
def score_table(scores: dict[Key, dict], built: Built) -> str:
    """A plain-text table of a score table: one row per student, one column per part (``M``: pending
    manual grading, ``-``: no grade)."""
    cols = list(built.parts)
    width = max(len(s) for s in built.students) + 2
    lines = [" " * width + " ".join(gid for _, _, gid in cols)]
    for student in built.students:
        cells = []
        for pkey in cols:
            g = scores.get((student, *pkey))
            text = "-" if g is None else "M" if g["needs_manual_grade"] else f"{g['score']:g}"
            cells.append(text.center(len(pkey[2])))
        lines.append(student.ljust(width) + " ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python tests/conformance/harness.py DIR``: build the course in DIR (a new folder), grade it with
    plain nbgrader and print nbgrader's score per student and part, and whether it matches submissions.yml."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python tests/conformance/harness.py NEW_FOLDER", file=sys.stderr)
        return 2
    built = build(argv[0])
    scores = nbgrader_scores(built.course)
    print(score_table(scores, built))
    problems = check_expected(scores, expected_scores(built))
    print("\n".join(problems) if problems else "every part as submissions.yml expects")
    print(f"course: {built.course}\nhand-ins: {built.handins}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
