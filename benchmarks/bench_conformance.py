"""An nbgrader course of someone else's: `courselib grade` against plain `nbgrader autograde`, per submission.

``.venv/bin/python benchmarks/run.py conformance`` (``--quick``: 4 students instead of 12).

The conformance course (``tests/conformance/course``: ``ps1`` with two notebooks, an image and a CSV file;
``hw2`` with one; every kind of nbgrader cell) is built and released once. Then, for each student in turn and
each assignment, plain ``nbgrader autograde --student=S`` (no sandbox, one kernel with the hidden tests) and
``courselib grade`` on that student alone (``regrade=True``, 1 worker: the sandboxed kernel, the clean room or
the sealed run per part, HTML feedback, the gradebook), side by side, so that a slow spell of the machine hits
both. What a run pays once is paid before the timed loop: each assignment's calibration (``courselib tiers``)
and the fork server's start. The table gives the medians per submission and their ratio; the tests that both
graders agree part for part are in ``tests/test_conformance.py``.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, machine_line, print_table

sys.path.insert(0, str(REPO / "tests"))


def main(quick: bool = False) -> None:
    from conformance import harness

    from courselib import grading

    tmp = Path(tempfile.mkdtemp(prefix="bench-conformance-"))
    try:
        built = harness.build(tmp / "built")
        students = list(built.students)[: 4 if quick else None]
        course = harness.clone_course(built, tmp / "courselib")
        rows, totals = [], {}
        for assignment in built.assignments:
            grading.batch.calibrate(assignment, course)  # paid once per assignment, as in a real run
            one = tmp / "one" / assignment
            nb_times, cl_times = [], []
            for student in students:
                t0 = time.perf_counter()
                harness.run_nbgrader(["autograde", assignment, "--force", f"--student={student}"], built.course)
                nb_times.append(time.perf_counter() - t0)
                shutil.rmtree(one, ignore_errors=True)
                shutil.copytree(built.handins / student, one / student)
                t0 = time.perf_counter()
                grading.grade(assignment, one, course, workers=1, regrade=True, progress=False, log=lambda m: None)
                cl_times.append(time.perf_counter() - t0)
            nb_med, cl_med = statistics.median(nb_times), statistics.median(cl_times)
            totals[assignment] = (sum(nb_times), sum(cl_times))
            rows.append(
                [
                    f"{assignment} ({len(built.assignments[assignment])} notebook(s))",
                    len(students),
                    f"{nb_med:.2f}",
                    f"{cl_med:.2f}",
                    f"{cl_med / nb_med:.2f}",
                ]
            )
        print_table(
            "The conformance course, per submission (median, seconds), side by side",
            ["assignment", "students", "nbgrader autograde", "courselib grade", "ratio"],
            rows,
        )
        print(machine_line(num_threads=1))
        for assignment, (nb_total, cl_total) in totals.items():
            print(f"{assignment}: total {nb_total:.1f} s (nbgrader) vs {cl_total:.1f} s (courselib grade)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
