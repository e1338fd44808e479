"""Class-scale autograding: wall time per notebook and parallel efficiency of `courselib grade`.

``.venv/bin/python benchmarks/run.py grading`` (full: 20 submissions of lab 1; quick: 6). The same
batch (correct, partly correct and blank notebooks made from the release) is graded from scratch
with 1 and with 2 workers (``regrade=True``, HTML feedback on, sandbox and clean room on), side by
side in one run. Parallel efficiency = T(1 worker) / (2 x T(2 workers)). "CPU s / notebook" is the
CPU time of all grading processes (nbgrader, kernels, clean room, feedback) per submission and
"cores used" = CPU time / wall time: when other jobs share the cores, 2 workers cannot get 2 cores
and the efficiency drops for that reason alone. The machine has 2 cores
shared with everything else running on it, so the numbers are an honest lower bound.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import tempfile
from pathlib import Path

from _common import REPO, machine_line, print_table

LAB = "lab01_binary_codes"


def make_batch(tmp: Path, n: int) -> tuple[Path, Path]:
    from courselib import grading

    course = tmp / "course"
    (course / "source").mkdir(parents=True)
    shutil.copy(REPO / "labs" / "nbgrader_config.py", course)
    shutil.copytree(REPO / "labs" / "source" / LAB, course / "source" / LAB)
    release = json.loads((grading.release(LAB, course) / f"{LAB}.ipynb").read_text())
    source = json.loads((course / "source" / LAB / f"{LAB}.ipynb").read_text())
    sols = {
        c["metadata"]["nbgrader"]["grade_id"]: c["source"]
        for c in source["cells"]
        if c["metadata"].get("nbgrader", {}).get("solution")
    }
    subs = tmp / "submissions"
    for i in range(n):
        nb = json.loads(json.dumps(release))
        kind = i % 4  # 0, 1: correct; 2: first half answered; 3: blank
        for cell in nb["cells"]:
            gid = cell["metadata"].get("nbgrader", {}).get("grade_id")
            if gid in sols and (kind in (0, 1) or (kind == 2 and gid < "q4")):
                cell["source"] = sols[gid]
        d = subs / f"student{i:03d}" / LAB
        d.mkdir(parents=True)
        (d / f"{LAB}.ipynb").write_text(json.dumps(nb))
    return course, subs


def main(quick: bool = False) -> None:
    from courselib import grading
    from courselib.grading import sandbox

    n = 6 if quick else 20
    print(machine_line())
    print(f"sandbox available: {sandbox.available()}; load average before: {os.getloadavg()[0]:.2f}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        course, subs = make_batch(Path(tmp), n)
        times = {}
        scores = {}
        for workers in (1, 2):
            load0 = os.getloadavg()[0]
            ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            s = grading.grade(
                LAB,
                subs,
                course,
                workers=workers,
                regrade=True,
                progress=False,
                limits=grading.Limits(cell_timeout=60, notebook_timeout=300),
            )
            times[workers] = s["seconds"]
            scores[workers] = {k: r["score"] for k, r in s["results"].items()}
            ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
            counts = {k: v for k, v in s["counts"].items() if v}
            rows.append(
                [
                    workers,
                    n,
                    round(s["seconds"], 1),
                    round(s["seconds"] / n, 2),
                    round(cpu / n, 2),
                    round(cpu / s["seconds"], 2),
                    f"{load0:.1f}",
                    json.dumps(counts).replace('"', ""),
                ]
            )
        assert scores[1] == scores[2], "grading must be deterministic"
    eff = times[1] / (2 * times[2])
    for r in rows:
        r.append(round(times[1] / times[r[0]], 2))
    print_table(
        f"courselib grade {LAB}: {n} submissions (sandbox + clean room + feedback)",
        [
            "workers",
            "submissions",
            "wall s",
            "wall s / notebook",
            "CPU s / notebook",
            "cores used",
            "load before",
            "statuses",
            "speed-up",
        ],
        rows,
    )
    print(f"parallel efficiency with 2 workers: {eff:.0%} (goal >= 75%); load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
