"""Grading on Dask: submissions per minute for 1, 2 and 4 worker processes, and the scheduler's cost per task.

``.venv/bin/python benchmarks/run.py cluster`` (full: 12 lab-0 solution submissions per run; quick: 4).
Each run grades the same submissions in a fresh scratch course with ``courselib grade --cluster local:N``
(N single-threaded Dask worker processes on 127.0.0.1, each with the sandbox and clean room on). The
first submission a worker grades also pays for building its grader (template course, clean-room
calibration), so the table reports the throughput with that start-up included, as an instructor sees it.
This machine has 2 cores: past 2 workers, throughput cannot rise (the ceiling is the core count), and 4
workers show the cost of oversubscription. The scheduler's own overhead per task is measured on an
empty task (submit + result round trip through a scheduler on this machine).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from _common import REPO, print_table, time_call

from courselib import grading
from courselib.grading.course import scratch_course

LAB = "lab00_memory"


def _course(root: Path) -> Path:
    return scratch_course(LAB, root, REPO / "labs", release_lab=False)


def _submissions(root: Path, n: int) -> Path:
    nb = (REPO / "labs" / "source" / LAB / f"{LAB}.ipynb").read_text()
    subs = root / "subs"
    for i in range(n):
        d = subs / f"s{i:03d}" / LAB
        d.mkdir(parents=True)
        (d / f"{LAB}.ipynb").write_text(nb)
    return subs


def _noop(x):
    return x


def scheduler_overhead(n_tasks: int) -> float:
    """Median seconds per empty task through a local scheduler (submit, run, result)."""
    from distributed import Client, LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as lc:
        with Client(lc) as client:
            # one warm-up round trip, then the median of n_tasks (pure=False: every call is a new task)
            return time_call(lambda: client.submit(_noop, 0, pure=False).result(), repeats=n_tasks, warmup=1)


def main(quick: bool = False) -> None:
    n_subs = 4 if quick else 12
    rows = []
    ref_rate = None
    for n_workers in (1, 2, 4):
        tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
        try:
            course = _course(tmp)
            subs = _submissions(tmp, n_subs)
            grading.release(LAB, course)
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            summary = grading.grade(LAB, subs, course, cluster=f"local:{n_workers}", progress=False, log=lambda m: None)
            seconds = time.perf_counter() - t0
            ok = sum(1 for r in summary["results"].values() if r["score"] == r["max_score"])
            rate = 60.0 * n_subs / seconds
            ref_rate = ref_rate or rate
            rows.append(
                [n_workers, n_subs, round(seconds, 1), round(rate, 2), round(rate / ref_rate, 2), ok, round(load, 2)]
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print_table(
        f"courselib grade {LAB} --cluster local:N ({n_subs} solution submissions; {os.cpu_count()} cores)",
        ["workers", "submissions", "wall s", "submissions/min", "speed-up", "full marks", "load before"],
        rows,
    )
    per_task = scheduler_overhead(50 if quick else 200)
    print_table(
        "Dask scheduler overhead (empty task, local scheduler, median)",
        ["tasks", "ms per task"],
        [[50 if quick else 200, round(per_task * 1000, 2)]],
    )
    print(json.dumps({"ceiling": f"{os.cpu_count()} cores: throughput stops rising past {os.cpu_count()} workers"}))
