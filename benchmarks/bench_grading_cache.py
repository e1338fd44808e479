"""The clean room's program cache: ``courselib grade`` of lab 7 with and without it, side by side, one run.

``.venv/bin/python benchmarks/run.py grading_cache`` (full: lab 7, the deploying lab; ``--quick``: lab 0,
whose tests lower no program, so both columns should agree).

Lab 7's hidden and visible tests lower the same reference ExecuTorch programs for every submission in the
trusted driver; ``courselib grade`` keeps them in ``grades/.state/<lab>/programs``
(:func:`courselib.deploy.program_key`). Each column grades the lab's solution and its blank release in a new
course with one worker: the calibration (the solution graded once, as every submission is) and then the two
submissions. "off" sets ``COURSELIB_PROGRAM_CACHE`` to the empty string (no cache); "on" leaves the grader's
per-lab folder, which the calibration fills and the submissions then read. Printed: each submission's
phases (seconds, from its result's ``timing``), the whole run, and the programs kept.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from _common import machine_line, print_table
from bench_grading import PHASES, make_course, solution_notebook


def grade_once(lab: str, root: Path, cache: bool) -> dict:
    from courselib import grading
    from courselib.grading.gradebook import lab_state_dir

    course = make_course(root / "course", lab)
    blank = json.loads((course / "release" / lab / f"{lab}.ipynb").read_text())
    for student, nb in (("solution", solution_notebook(course, lab)), ("blank", blank)):
        d = root / "subs" / student / lab
        d.mkdir(parents=True)
        (d / f"{lab}.ipynb").write_text(json.dumps(nb))
    saved = os.environ.pop("COURSELIB_PROGRAM_CACHE", None)
    if not cache:
        os.environ["COURSELIB_PROGRAM_CACHE"] = ""
    try:
        t = time.monotonic()
        summary = grading.grade(lab, root / "subs", course, workers=1, progress=False)
        wall = time.monotonic() - t
    finally:
        os.environ.pop("COURSELIB_PROGRAM_CACHE", None)
        if saved is not None:
            os.environ["COURSELIB_PROGRAM_CACHE"] = saved
    res = summary["results"]
    assert res["solution"]["score"] == res["solution"]["max_score"] and res["blank"]["score"] == 0, res
    programs = len(list((lab_state_dir(course, lab) / "programs").glob("*.pte")))
    return {"wall": wall, "results": res, "programs": programs}


def main(quick: bool = False) -> None:
    lab = "lab00_memory" if quick else "lab07_deploy"
    print(machine_line(libraries=("torch", "executorch")))
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for cache in (False, True):
            runs[cache] = grade_once(lab, Path(tmp) / ("on" if cache else "off"), cache)
    rows = []
    for student in ("solution", "blank"):
        for phase in PHASES:
            off, on = (runs[c]["results"][student].get("timing", {}).get(phase, 0.0) for c in (False, True))
            rows.append([student, phase, round(off, 2), round(on, 2)])
    rows.append(["whole run", "calibration + both", round(runs[False]["wall"], 1), round(runs[True]["wall"], 1)])
    rows.append(["programs kept", "", runs[False]["programs"], runs[True]["programs"]])
    print_table(
        f"courselib grade {lab}, one worker: the program cache off and on (seconds)",
        ["submission", "phase", "cache off", "cache on"],
        rows,
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
