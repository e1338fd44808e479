"""Mutation testing of every lab: each plausible wrong answer in ``labs/mutants/<lab>.yml`` loses exactly the
points of the parts it breaks, graded by ``courselib grade`` (sandboxed kernel, every part judged by its hidden
tests in the clean room, feedback) in a scratch course; and no mutant's feedback holds a hidden test.

A mutant is a wrong answer that passes some visible tests, so its feedback is where a hidden test's message,
input or expected value would show: every page is scanned for the lab's hidden lines and hidden-only
constants (:func:`tests.test_feedback.secrets`). Mutants of different cells and parts share a submission
(``combine``), and the chunks of one bank share the lab's calibration. Plain nbgrader grades the banks with
``courselib mutants LAB`` (its default); tests/test_labs.py and tests/test_conformance.py keep the two
graders' scores equal.

How to add a mutant: CONTRIBUTING.md, "Labs: mutants". ``courselib mutants LAB --grader courselib`` prints the
same table.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import calibrate_once
from test_feedback import leaks, secrets, shown_text

from courselib import grading
from courselib.grading import mutants, sandbox
from courselib.grading.course import scratch_course

REPO = Path(__file__).resolve().parents[1]
COURSE = REPO / "labs"
LABS = grading.list_labs(COURSE)
MIN_MUTANTS = 10
#: Most submissions graded per test (each a group of mutants that share one notebook, ``mutants.combine_mutants``
#: over the whole bank), so that a lab's bank is graded in the fewest kernels; a bank is cut into chunks of even
#: size (a chunk pays ~10 s for its scratch course and fork server). The solution is not graded here:
#: tests/test_labs.py grades it with nbgrader (full marks) and every verdict is against full marks.
MAX_GROUPS_PER_TEST = 6


def _even_chunks(n: int) -> list[range]:
    count = -(-n // MAX_GROUPS_PER_TEST)
    size = -(-n // count)
    return [range(k, min(k + size, n)) for k in range(0, n, size)]


def _chunks():
    # one chunk of each lab in turn (the largest banks first), so that the two xdist workers grade different
    # labs and a lab's later chunks find its calibration made (conftest.calibrations, shared by the workers)
    banks = sorted(
        ((lab, mutants.combine_mutants(mutants.load_bank(lab, COURSE))) for lab in LABS), key=lambda b: -len(b[1])
    )
    per_lab = [
        [
            pytest.param(lab, [m["id"] for k in chunk for m in groups[k]], id=f"{lab}-{i}")
            for i, chunk in enumerate(_even_chunks(len(groups)))
        ]
        for lab, groups in banks
    ]
    for turn in range(max(len(c) for c in per_lab)):
        yield from (c[turn] for c in per_lab if turn < len(c))


@pytest.mark.parametrize("lab", LABS)
def test_every_lab_has_a_mutant_bank(lab):
    bank = mutants.load_bank(lab, COURSE)
    assert len(bank) >= MIN_MUTANTS, f"{lab}: {len(bank)} mutants, at least {MIN_MUTANTS} wanted"
    parts = {g for g, _ in grading.lab_parts(lab, COURSE)}
    broken = {g for m in bank for g in m["breaks"]}
    assert parts <= broken, f"{lab}: no mutant breaks {sorted(parts - broken)} (a part no wrong answer can fail)"


@pytest.fixture(scope="session")
def bank_state(tmp_path_factory, calibrations):
    """Per lab: the run's folder of its calibration (shared by its chunks and its no-leak test in
    tests/test_feedback.py, conftest.calibrations), and the lab's secrets (hidden lines, constants)."""
    root = tmp_path_factory.mktemp("mutant-banks")
    cache: dict = {}

    def get(lab):
        if lab not in cache:
            course = scratch_course(lab, root / f"secrets-{lab}", COURSE)
            found = secrets(lab, course)
            # what a mutant writes is the student's own text: a submission combining a mutant that writes
            # "gauss-newton" shows it in its feedback, where it is no leak
            own = "\n".join(
                m.get("source", "") + "\n".join(r["new"] for r in m.get("replace", []))
                for m in mutants.load_bank(lab, COURSE)
            )
            found = {k: [s for s in v if s not in own] for k, v in found.items()}
            calibrate_once(calibrations, lab, course)
            cache[lab] = (calibrations / lab, found)
        return cache[lab]

    return get


@pytest.mark.slow
@pytest.mark.skipif(not sandbox.available(), reason=f"no grading sandbox: {sandbox.unavailable_reason()}")
@pytest.mark.parametrize(("lab", "ids"), list(_chunks()))
def test_every_mutant_is_killed(lab, ids, bank_state):
    state, found = bank_state(lab)
    rows = mutants.run_bank(
        lab,
        COURSE,
        only=ids,
        solution=False,
        grader="courselib",
        combine=True,
        state_dir=state,
        feedback_check=lambda student, page: leaks(shown_text(page), found),
    )
    table = mutants.verdict_table(rows)
    assert [r["id"] for r in rows] == ids
    bad = [r["id"] for r in rows if r["verdict"] != "killed"]
    assert not bad, f"{lab}: mutants not killed (or killing other parts too): {bad}\n{table}"
    leaked = {r["id"]: r["leaks"][:5] for r in rows if r["leaks"]}
    assert not leaked, f"{lab}: hidden tests in the feedback of wrong answers: {leaked}"


def test_a_bank_that_does_not_apply_is_refused(tmp_path):
    course = tmp_path / "course"
    (course / "source").mkdir(parents=True)
    (course / "nbgrader_config.py").write_text((COURSE / "nbgrader_config.py").read_text())
    lab = "lab00_memory"
    src = COURSE / "source" / lab / f"{lab}.ipynb"
    (course / "source" / lab).mkdir()
    (course / "source" / lab / f"{lab}.ipynb").write_text(src.read_text())
    (course / "mutants").mkdir()
    bank = course / "mutants" / f"{lab}.yml"
    bank.write_text(
        f"lab: {lab}\nmutants:\n  - id: nope\n    description: d\n    cell: q1_code\n"
        "    replace: [{old: 'this text is not in the cell', new: 'x'}]\n    breaks: [q1_test]\n"
    )
    with pytest.raises(mutants.MutantError, match="occurs 0 times"):
        mutants.load_bank(lab, course)
    bank.write_text(
        f"lab: {lab}\nmutants:\n  - id: nope\n    description: d\n    cell: q1_test\n"
        "    source: 'pass'\n    breaks: [q1_test]\n"
    )
    with pytest.raises(mutants.MutantError, match="not a solution cell"):
        mutants.load_bank(lab, course)
    bank.write_text(
        f"lab: {lab}\nmutants:\n  - id: nope\n    description: d\n    cell: q1_code\n"
        "    source: 'pass'\n    breaks: [no_such_part]\n"
    )
    with pytest.raises(mutants.MutantError, match="not graded parts"):
        mutants.load_bank(lab, course)


def test_a_bank_is_graded_by_a_known_pipeline_only():
    with pytest.raises(mutants.MutantError, match="choose one of"):
        mutants.run_bank("lab00_memory", COURSE, grader="autograder-of-my-own")
