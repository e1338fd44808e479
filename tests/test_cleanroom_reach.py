"""Which parts of each lab the clean room checks with their hidden tests (the rest: visible tests only).

The grading appendix ("Parts the clean room cannot check") names the parts that stay outside and why;
this test calibrates every lab's solution through the real path (sandboxed kernel, clean room) and
checks the list is exactly that, so a change that loses a part, or gains one, updates the appendix too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from courselib import grading
from courselib.grading import sandbox
from courselib.grading.course import scratch_course
from courselib.grading.grader import Grader, Limits, hidden_paths

REPO = Path(__file__).resolve().parents[1]
LABS = grading.list_labs(REPO / "labs")

#: Parts scored by their visible tests only, and why (book/appendix_grading.md).
VISIBLE_ONLY = {
    "lab03_binaryconnect": {"q3_test", "q5_test"},  # gradient through SignSTE; hooks on the training loop
    "lab05_distillation": {"q1_test", "q2_test", "q3_test"},  # gradients through the student's losses
    "lab06_challenge": {"q3_test", "q4_test"},  # hooks on compress's training; the result's files
    "lab07_deploy": {"q1_test", "q2_test", "q3_test", "q4_test", "q6_test"},  # .pte files, ExecuTorch objects
}


@pytest.mark.slow
@pytest.mark.parametrize("lab", LABS)
def test_the_clean_room_checks_every_part_it_can(lab, tmp_path):
    course = scratch_course(lab, tmp_path, REPO / "labs")
    base = tmp_path / "scratch"
    base.mkdir()
    limits = Limits(cell_timeout=300, notebook_timeout=900, memory_mb=4096, output_kb=1024)
    grader = Grader(lab, course, limits, base, hidden_paths(course, [base]), False, sandbox.available())
    grader.make_template()
    grader.calibrate()
    parts = {g for g, _ in grader.parts}
    assert grader.verifiable <= parts
    cached = json.loads((course / "grades" / ".state" / lab / "_calibration.json").read_text())
    assert set(cached["verifiable"]) == grader.verifiable
    assert parts - grader.verifiable == VISIBLE_ONLY.get(lab, set()), (
        f"{lab}: parts scored by their visible tests only: {sorted(parts - grader.verifiable)} "
        f"(expected {sorted(VISIBLE_ONLY.get(lab, set()))}; update book/appendix_grading.md with this list)"
    )
