"""What a grading worker does, on this machine or another: the one code path for a submission.

:func:`run_job` grades one :class:`~courselib.grading.grader.Job` with a prepared
:class:`~courselib.grading.grader.Grader` and returns a self-contained result (its files packed as
bytes, its scratch folder removed), so the single writer (:func:`courselib.grading.gradebook.merge_results`)
needs nothing from the machine that graded it. Two schedulers call it: :func:`schedule_local` (threads
of this process) and :func:`courselib.grading.cluster.schedule` (Dask workers).
"""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from .grader import AssignmentGrader, Job, new_result


def prepare_grader(grader: AssignmentGrader) -> AssignmentGrader:
    """Build the grader's template course and calibrate its clean room (once per process)."""
    grader.make_template()
    grader.calibrate()
    return grader


def pack_files(scratch_course: Path, student: str, lab: str) -> dict[str, bytes]:
    """The files a result brings back to the writer: its submitted, autograded and feedback folders."""
    files = {}
    for kind in ("submitted", "autograded", "feedback"):
        root = scratch_course / kind / student / lab
        if root.is_dir():
            for f in sorted(root.rglob("*")):
                if f.is_file() and not f.is_symlink():
                    files[str(f.relative_to(scratch_course))] = f.read_bytes()
    return files


def run_job(grader: AssignmentGrader, job: Job) -> dict:
    """Grade one submission, wherever this runs (a local thread or a Dask worker): the one code path.

    Returns the result with its files packed (``files``) and its scratch folder removed, so that the
    writer needs nothing from this machine. A grader error is a ``crashed`` result, never an exception.
    """
    t0 = time.monotonic()
    try:
        res = grader.grade_one(job)
    except Exception as exc:
        res = new_result(job.student, grader.lab, job.key, grader.parts, status="crashed")
        res["notes"] = [f"grader error: {exc!r}"[:300]]
        res["seconds"] = round(time.monotonic() - t0, 2)
    scratch = res.pop("scratch", None)
    scratches = [] if not scratch else [scratch] if isinstance(scratch, str) else list(scratch)
    res["files"] = {}
    for folder in scratches:  # one scratch course per notebook of the assignment
        res["files"].update(pack_files(Path(folder), job.student, grader.lab))
        shutil.rmtree(Path(folder).parent, ignore_errors=True)
    return res


def schedule_local(grader: AssignmentGrader, jobs: list[Job], workers: int):
    """Grade ``jobs`` on ``workers`` local threads; yield ``(job, result)`` as each finishes."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(run_job, grader, job): job for job in jobs}
        try:
            for fut in as_completed(futures):
                yield futures[fut], fut.result()
        finally:
            for f in futures:
                f.cancel()
