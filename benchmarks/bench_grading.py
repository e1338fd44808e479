"""Class-scale autograding: `courselib grade` against plain `nbgrader autograde`, per phase, on 2 workers.

``.venv/bin/python benchmarks/run.py grading`` (full: 8 lab-1 solution submissions; ``--quick``: 4).

1. **Side by side, interleaved.** For each submission in turn, plain ``nbgrader autograde`` (one
   student, in its own copy of the course, no sandbox, no feedback: the baseline of issue 14) and then
   ``courselib grade`` on the same notebook alone (``regrade=True``: sandboxed kernel, tamper check,
   clean room with the hidden tests, HTML feedback, merge into the gradebook, the CSV). The ratio is
   per submission; the median is the headline. What a run pays once is paid by a warm-up run and
   printed: the clean room's calibration (the lab's solution graded once per source notebook, then
   cached in ``grades/.state``) and the start of the fork server (:mod:`courselib.grading.forkserver`,
   kept for later runs in the same process).
2. **Per-phase profile** of those ``courselib grade`` runs (means, seconds): set-up (checks, scratch
   folder, the driver forked from the fork server), kernel start (the sandboxed kernel booting; the clean room's
   instructor set-up runs meanwhile), execution (the student's cells, once), clean room (the hidden
   tests calling the student's functions), feedback (kernel stop, notebooks, HTML), teardown (driver
   exit, result read), merge (the single writer), and the run's own overhead (collecting, the CSV).
3. **Parallel efficiency**: the whole batch with 1 and with 2 workers; efficiency = T1 / (2 x T2). The
   run with 2 workers starts a second fork server (the first one is reused), inside its time.

The machine has 2 cores shared with everything else running on it (the load average is printed), so
the numbers are an honest upper bound on the cost.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, machine_line, print_table

LAB = "lab01_binary_codes"
PHASES = ["setup", "kernel_start", "execution", "clean_room", "feedback", "teardown", "merge"]


def make_course(root: Path, lab: str = LAB) -> Path:
    from courselib.grading.course import scratch_course

    return scratch_course(lab, root, REPO / "labs")


def solution_notebook(course: Path, lab: str = LAB) -> dict:
    """The release with the source's solutions filled in: what a student who solved the lab hands in."""
    release = json.loads((course / "release" / lab / f"{lab}.ipynb").read_text())
    source = json.loads((course / "source" / lab / f"{lab}.ipynb").read_text())
    sols = {
        c["metadata"]["nbgrader"]["grade_id"]: c["source"]
        for c in source["cells"]
        if c["metadata"].get("nbgrader", {}).get("solution")
    }
    for cell in release["cells"]:
        gid = cell["metadata"].get("nbgrader", {}).get("grade_id")
        if gid in sols:
            cell["source"] = sols[gid]
    return release


def main(quick: bool = False) -> None:
    from courselib import grading
    from courselib.grading import sandbox

    n = 4 if quick else 8
    print(machine_line())
    print(f"sandbox available: {sandbox.available()}; load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ours, plain = make_course(tmp / "ours"), make_course(tmp / "plain")
        nb = solution_notebook(ours)
        singles, everyone = [], tmp / "all"
        for i in range(n):
            student = f"student{i:03d}"
            nb["metadata"]["bench_student"] = student  # distinct files, same answers
            for top in (tmp / "single" / student, everyone):
                d = top / student / LAB
                d.mkdir(parents=True)
                (d / f"{LAB}.ipynb").write_text(json.dumps(nb))
            singles.append((student, tmp / "single" / student))
        limits = grading.Limits(cell_timeout=120, notebook_timeout=600)
        warm = tmp / "warm"
        shutil.copytree(singles[0][1], warm)
        t = time.monotonic()
        grading.grade(LAB, warm, ours, workers=1, regrade=True, progress=False, limits=limits)
        calibration = time.monotonic() - t
        rows, profiles, overhead = [], [], []
        for student, sub in singles:
            t = time.monotonic()
            grading.autograde(LAB, sub, plain, feedback=False)
            t_plain = time.monotonic() - t
            load = os.getloadavg()[0]
            t = time.monotonic()
            s = grading.grade(LAB, sub, ours, workers=1, regrade=True, progress=False, limits=limits)
            t_ours = time.monotonic() - t
            r = s["results"][student]
            assert r["status"] == "graded" and r["score"] == r["max_score"], r
            profiles.append(r.get("timing", {}))
            overhead.append(t_ours - r["seconds"] - r.get("timing", {}).get("merge", 0.0))
            rows.append([student, round(t_plain, 2), round(t_ours, 2), round(t_ours / t_plain, 2), f"{load:.1f}"])
        ratios = [r[3] for r in rows]
        rows.append(
            [
                "median",
                round(statistics.median(r[1] for r in rows), 2),
                round(statistics.median(r[2] for r in rows), 2),
                round(statistics.median(ratios), 2),
                "",
            ]
        )
        print_table(
            f"{LAB}: plain nbgrader autograde vs courselib grade, per solution submission, interleaved",
            ["submission", "nbgrader autograde s", "courselib grade s", "ratio (goal <= 1.5)", "load"],
            rows,
        )
        print(
            f"warm-up run (the fork server's start and the clean room's calibration, reused afterwards): {calibration:.1f} s"
        )
        prow = [[p, round(statistics.mean(pr.get(p, 0.0) for pr in profiles), 2)] for p in PHASES]
        prow.append(["run overhead (collect, CSV)", round(statistics.mean(overhead), 2)])
        prow.append(["total", round(sum(r[1] for r in prow), 2)])
        print_table("courselib grade: per-phase profile (mean s per submission)", ["phase", "seconds"], prow)
        times, scores = {}, {}
        for workers in (1, 2):
            load = os.getloadavg()[0]
            s = grading.grade(LAB, everyone, ours, workers=workers, regrade=True, progress=False, limits=limits)
            times[workers] = (s["seconds"], load)
            scores[workers] = {k: r["score"] for k, r in s["results"].items()}
        assert scores[1] == scores[2], "grading must be deterministic"
    eff = times[1][0] / (2 * times[2][0])
    print_table(
        f"courselib grade {LAB}: {n} submissions, 1 vs 2 workers",
        ["workers", "wall s", "s / notebook", "load before", "speed-up"],
        [[w, round(t, 1), round(t / n, 2), f"{ld:.1f}", round(times[1][0] / t, 2)] for w, (t, ld) in times.items()],
    )
    print(
        f"median ratio courselib grade / nbgrader autograde: {statistics.median(ratios):.2f} (goal <= 1.5); "
        f"parallel efficiency with 2 workers: {eff:.0%} (goal >= 75%); load average after: {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
