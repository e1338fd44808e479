"""Mutation testing of the labs: every plausible wrong answer must lose the points of the part it breaks.

A lab's *mutant bank* ``labs/mutants/<lab>.yml`` (outside ``source/``: nbgrader releases everything under
``source/<lab>/``, and a mutant is a near-solution) lists mistakes real students make, each a literal edit
of one solution cell of the source notebook::

    lab: lab01_binary_codes
    mutants:
      - id: pack-big-endian
        description: packs bits most-significant first (np.packbits' default order)
        concept: packing bits into bytes        # optional: the syllabus concept it stands for
        cell: q2_code                           # grade_id of the solution cell it changes
        replace:                                # each `old` must occur exactly once in that cell
          - {old: 'bitorder="little"', new: 'bitorder="big"'}
        # or `source: |` with the whole new cell
        breaks: [q2_test]                       # exactly the graded parts that must lose points

:func:`run_bank` grades the solution and every mutant with nbgrader's autograder in a scratch copy of the
course (the real pipeline: release, autograde, gradebook) and gives each mutant a verdict: ``killed``
(every part in ``breaks`` lost points and no other part did), ``survived`` (a part in ``breaks`` kept its
points) or ``collateral`` (another part lost points too: the parts are not graded independently).
``courselib mutants LAB`` prints the table; ``tests/test_lab_mutants.py`` requires every mutant killed.
``courselib mutants LAB --grader courselib`` grades the same bank with ``courselib grade`` instead (the
sandboxed kernel, every part judged by its hidden tests in the clean room): the verdicts must be the same.

With ``combine=True`` mutants that edit different cells and break different parts share one submission (one
kernel run instead of several): a part outside every mutant's ``breaks`` that loses points sends the group's
mutants back to be graded one by one, so ``survived`` and ``collateral`` are found as before, except a
collateral loss on a part another mutant of the group breaks anyway (grade without ``combine`` to see those).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import yaml
from nbgrader.api import Gradebook, MissingEntry

from .batch import grade
from .course import NOTEBOOK_SUFFIX, GradingError, check_lab, find_course_dir, lab_parts, nbgrader, scratch_course
from .gradebook import lab_state_dir

__all__ = ["MutantError", "bank_path", "load_bank", "apply_mutant", "run_bank", "verdict_table"]

BANK_DIR = "mutants"
_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,60}$")
VERDICTS = ("killed", "survived", "collateral")
"""Verdicts of a mutant; the solution's own row is ``full-marks`` (or ``solution-loses-points``)."""


class MutantError(GradingError):
    """A mutant bank that does not fit its lab (unknown cell or part, an edit that does not apply)."""


def bank_path(lab: str, course_dir=None) -> Path:
    """``<course>/mutants/<lab>.yml``."""
    return find_course_dir(course_dir) / BANK_DIR / f"{lab}.yml"


def _source_notebook(lab: str, course: Path) -> dict:
    return json.loads((course / "source" / lab / f"{lab}{NOTEBOOK_SUFFIX}").read_text())


def _cells_by_id(nb: dict) -> dict[str, dict]:
    return {c["metadata"]["nbgrader"]["grade_id"]: c for c in nb["cells"] if "nbgrader" in c.get("metadata", {})}


def load_bank(lab: str, course_dir=None) -> list[dict]:
    """The lab's mutants, checked against its source notebook (ids, cells, parts, edits)."""
    course = find_course_dir(course_dir)
    check_lab(lab, course)
    path = bank_path(lab, course)
    if not path.exists():
        raise MutantError(f"{lab} has no mutant bank ({path})")
    bank = yaml.safe_load(path.read_text())
    if not isinstance(bank, dict) or bank.get("lab") != lab or not isinstance(bank.get("mutants"), list):
        raise MutantError(f"{path}: expected a mapping with `lab: {lab}` and a `mutants` list")
    nb = _source_notebook(lab, course)
    cells = _cells_by_id(nb)
    parts = {g for g, _ in lab_parts(lab, course)}
    seen = set()
    for m in bank["mutants"]:
        mid = m.get("id")
        if not isinstance(mid, str) or not _ID.match(mid) or mid in seen:
            raise MutantError(f"{path}: bad or repeated mutant id {mid!r} (kebab-case, unique)")
        seen.add(mid)
        for key in ("description", "cell", "breaks"):
            if not m.get(key):
                raise MutantError(f"{path}: mutant {mid} needs `{key}`")
        cell = cells.get(m["cell"])
        if cell is None or not cell["metadata"]["nbgrader"].get("solution"):
            raise MutantError(f"{path}: mutant {mid}: {m['cell']!r} is not a solution cell of {lab}")
        unknown = set(m["breaks"]) - parts
        if unknown:
            raise MutantError(f"{path}: mutant {mid}: {sorted(unknown)} are not graded parts of {lab}")
        if ("replace" in m) == ("source" in m):
            raise MutantError(f"{path}: mutant {mid} needs exactly one of `replace` or `source`")
        apply_mutant(nb, m)  # the edit must apply
    return bank["mutants"]


def apply_mutant(nb: dict, mutant: dict) -> dict:
    """A copy of the source notebook ``nb`` with ``mutant``'s edit applied to its cell."""
    out = copy.deepcopy(nb)
    cell = _cells_by_id(out)[mutant["cell"]]
    src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    if "source" in mutant:
        new = mutant["source"]
    else:
        new = src
        for edit in mutant["replace"]:
            n = new.count(edit["old"])
            if n != 1:
                raise MutantError(f"mutant {mutant['id']}: {edit['old']!r} occurs {n} times in {mutant['cell']}")
            new = new.replace(edit["old"], edit["new"])
    if new == src:
        raise MutantError(f"mutant {mutant['id']} does not change {mutant['cell']}")
    cell["source"] = new
    return out


#: The two pipelines a bank can be graded with: nbgrader's autograder, or ``courselib grade`` (sandboxed
#: kernel, clean room, hidden tests never in the student's process).
GRADERS = ("nbgrader", "courselib")


def combine_mutants(mutants: list[dict]) -> list[list[dict]]:
    """Groups of mutants that can share one submission: different cells, disjoint ``breaks`` (greedy)."""
    groups: list[list[dict]] = []
    for m in mutants:
        for g in groups:
            if all(m["cell"] != o["cell"] and not set(m["breaks"]) & set(o["breaks"]) for o in g):
                g.append(m)
                break
        else:
            groups.append([m])
    return groups


def run_bank(
    lab: str,
    course_dir=None,
    *,
    only=None,
    workdir=None,
    solution: bool = True,
    grader: str = "nbgrader",
    workers=1,
    combine: bool = False,
    state_dir=None,
    feedback_check=None,
) -> list[dict]:
    """Grade the solution and every mutant (or those in ``only``) of ``lab``; one verdict each.

    Returns a list of dicts ``{"id", "breaks", "lost", "verdict", "description"}``; with ``solution``
    (default) the first row is the solution itself (``id`` ``"solution"``, which must lose nothing).
    ``only`` and ``solution=False`` let a test suite grade a bank in chunks on several workers; ``combine``
    groups the mutants of ``only`` in that order (whole groups of :func:`combine_mutants`, listed one after the
    other, stay as many submissions).
    ``grader="courselib"`` grades with ``courselib grade`` (``workers`` in parallel) instead of plain
    nbgrader: the same verdicts there show that its grades agree with nbgrader's. ``combine`` grades
    mutants of different cells and parts in one submission (module docstring). ``state_dir`` keeps
    ``courselib grade``'s calibration of the lab between calls (chunks of one bank calibrate once).
    ``feedback_check(student, page_text)`` is called on every feedback page ``courselib grade`` writes
    (a mutant is a wrong answer that passes some visible tests: the page must hold no hidden test); what it
    returns is the row's ``"leaks"``.
    """
    if grader not in GRADERS:
        raise MutantError(f"grader {grader!r}: choose one of {list(GRADERS)}")
    course = find_course_dir(course_dir)
    mutants = load_bank(lab, course)
    if only:
        missing = set(only) - {m["id"] for m in mutants}
        if missing:
            raise MutantError(f"no mutants {sorted(missing)} in {lab}'s bank")
        by_id = {m["id"]: m for m in mutants}
        mutants = [by_id[i] for i in dict.fromkeys(only)]  # in the caller's order: it decides the grouping
    nb = _source_notebook(lab, course)
    parts = lab_parts(lab, course)
    full = dict(parts)
    leaks: dict[str, list] = {}

    def grade_students(students: dict) -> dict:
        tmp = Path(tempfile.mkdtemp(prefix=f"mutants-{lab}-", dir=workdir))
        try:
            scratch = scratch_course(lab, tmp, course)
            if grader == "nbgrader":
                return _nbgrader_scores(lab, scratch, students, parts)
            return _courselib_scores(
                lab, scratch, students, tmp / "submissions", workers, state_dir, feedback_check, leaks
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def lost(scores, student):
        return sorted(g for g in full if scores[student][g] < full[g])

    groups = combine_mutants(mutants) if combine else [[m] for m in mutants]
    students = {"solution": nb} if solution else {}
    for k, group in enumerate(groups):
        combined = nb
        for m in group:
            combined = apply_mutant(combined, m)
        students[f"g{k}-" + "+".join(m["id"] for m in group)[:80]] = combined
    scores = grade_students(students)
    got: dict[str, list] = {}
    again = []
    for (student, _), group in zip(list(students.items())[1 if solution else 0 :], groups, strict=True):
        lost_parts = lost(scores, student)
        outside = set(lost_parts) - {g for m in group for g in m["breaks"]}
        if len(group) > 1 and outside:  # a mutant of the group also broke another part: find which, one by one
            again += group
            continue
        for m in group:
            got[m["id"]] = [g for g in lost_parts if g in m["breaks"] or len(group) == 1 or g in outside]
            leaks[m["id"]] = leaks.get(student, [])
    if again:
        single = {f"m-{m['id']}": apply_mutant(nb, m) for m in again}
        scores_again = grade_students(single)
        for m in again:
            got[m["id"]] = lost(scores_again, f"m-{m['id']}")
            leaks[m["id"]] = leaks.get(f"m-{m['id']}", [])

    rows = []
    if solution:
        rows.append(
            {"id": "solution", "breaks": [], "lost": lost(scores, "solution"), "description": "the source's solution"}
        )
        rows[0]["verdict"] = "full-marks" if not rows[0]["lost"] else "solution-loses-points"
    for m in mutants:
        breaks = sorted(m["breaks"])
        if not set(breaks) <= set(got[m["id"]]):
            verdict = "survived"
        elif set(got[m["id"]]) - set(breaks):
            verdict = "collateral"
        else:
            verdict = "killed"
        row = {
            "id": m["id"],
            "breaks": breaks,
            "lost": got[m["id"]],
            "verdict": verdict,
            "description": m["description"],
        }
        if feedback_check is not None:
            row["leaks"] = leaks.get(m["id"], [])
        rows.append(row)
    return rows


def _nbgrader_scores(lab, scratch: Path, students: dict, parts) -> dict:
    for student, notebook in students.items():  # whole source notebooks: nbgrader puts the tests back
        dest = scratch / "submitted" / student / lab
        dest.mkdir(parents=True)
        (dest / f"{lab}{NOTEBOOK_SUFFIX}").write_text(json.dumps(notebook, indent=1))
    nbgrader(["autograde", lab, "--create", "--force"], scratch)
    scores = {}
    with Gradebook(f"sqlite:///{scratch / 'gradebook.db'}") as gb:
        for student in students:
            row = {}
            for g, _ in parts:
                try:
                    row[g] = float(gb.find_grade(g, lab, lab, student).score or 0.0)
                except MissingEntry:
                    row[g] = 0.0
            scores[student] = row
    return scores


def reuse_calibration(state_dir, course: Path, lab: str) -> None:
    """Copy calibrations of ``lab`` kept in ``state_dir`` (by :func:`keep_calibration`) into ``course``'s state, so
    that its next ``courselib grade`` reuses them when their key (source cells, limits, versions) matches (with
    the solution's graded notebook and feedback page beside them)."""
    cache = lab_state_dir(Path(course), lab)
    for f in Path(state_dir).glob("_calibration*"):
        cache.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, cache / f.name)


def keep_calibration(state_dir, course: Path, lab: str) -> None:
    """Publish ``course``'s calibrations of ``lab`` to ``state_dir``, atomically (another process may be reading)."""
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    for f in lab_state_dir(Path(course), lab).glob("_calibration*"):
        tmp = Path(state_dir) / f".{f.name}.{os.getpid()}.tmp"
        shutil.copy(f, tmp)
        os.replace(tmp, Path(state_dir) / f.name)


def _courselib_scores(
    lab, scratch: Path, students: dict, subs: Path, workers: int, state_dir=None, feedback_check=None, leaks=None
) -> dict:
    release = json.loads((scratch / "release" / lab / f"{lab}{NOTEBOOK_SUFFIX}").read_text())
    for student, notebook in students.items():  # what a student hands in: the release, answers filled in
        answers = {
            c["metadata"]["nbgrader"]["grade_id"]: c["source"]
            for c in notebook["cells"]
            if c.get("metadata", {}).get("nbgrader", {}).get("solution")
        }
        handed_in = copy.deepcopy(release)
        for cell in handed_in["cells"]:
            gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
            if gid in answers:
                cell["source"] = answers[gid]
        dest = subs / student / lab
        dest.mkdir(parents=True)
        (dest / f"{lab}{NOTEBOOK_SUFFIX}").write_text(json.dumps(handed_in, indent=1))
    if state_dir is not None:
        reuse_calibration(state_dir, scratch, lab)
    summary = grade(
        lab, subs, scratch, workers=workers, progress=False, feedback=feedback_check is not None, log=lambda msg: None
    )
    if state_dir is not None:
        keep_calibration(state_dir, scratch, lab)
    if feedback_check is not None and leaks is not None:
        for student in students:
            for page in sorted((scratch / "feedback" / student / lab).glob("*.html")):
                leaks.setdefault(student, []).extend(feedback_check(student, page.read_text(errors="replace")))
    return {student: dict(summary["results"][student]["parts"]) for student in students}


def verdict_table(rows: list[dict]) -> str:
    """A Markdown table of :func:`run_bank`'s rows."""
    lines = ["| mutant | must lose | lost | verdict |", "|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['id']} | {', '.join(r['breaks']) or '-'} | {', '.join(r['lost']) or '-'} | "
            f"{r['verdict'] if r['verdict'] in ('killed', 'full-marks') else r['verdict'].upper()} |"
        )
    return "\n".join(lines)
