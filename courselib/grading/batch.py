"""Class-scale grading (``courselib grade LAB SUBMISSIONS``): parallel, isolated, limited, resumable.

Every submission is graded by :meth:`courselib.grading.grader.Grader.grade_one` in its own scratch course
with its kernel in a sandbox (:mod:`courselib.grading.sandbox`), under time, memory and output limits,
re-checked in a clean room (:mod:`courselib.grading.cleanroom`), then merged into the course gradebook
by one writer (:func:`courselib.grading.gradebook.merge_results`). Labs may declare a hook run after
grading (``labs/course.toml``; the compression challenge writes its leaderboard that way).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from . import sandbox
from .cluster import make_context
from .cluster import schedule as cluster_schedule
from .course import NOTEBOOK_SUFFIX, GradingError, check_lab, find_course_dir, lab_hook, lab_notebooks, release
from .gradebook import ensure_assignment, export_grades, lab_state_dir, load_states, merge_results
from .grader import GRADER_VERSION, STATUSES, AssignmentGrader, Job, Limits, hidden_paths, sha256
from .intake import collect_submissions
from .worker import prepare_grader, schedule_local


def _remove_stale_scratch() -> None:
    """Scratch folders ``cg-<pid>-*`` left behind by grading runs that were killed."""
    for d in Path(tempfile.gettempdir()).glob("cg-*-*"):
        try:
            pid = int(d.name.split("-")[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            pass


UNSANDBOXED_WARNING = (
    "courselib grade: WARNING: --no-sandbox: student code runs UNISOLATED, as the grader's user, "
    "with the course, the solutions and the network in reach"
)


def grade(
    lab: str,
    submissions: str | os.PathLike,
    course_dir: str | os.PathLike | None = None,
    *,
    workers: int = 1,
    limits: Limits | None = None,
    feedback: bool = True,
    regrade: bool = False,
    sandboxed: bool = True,
    progress: bool = True,
    log=None,
    cluster: str | None = None,
    db: str | None = None,
) -> dict:
    """Autograde every submission of ``lab`` in parallel, isolated, limited and resumable.

    Each submission is graded by ``nbgrader autograde`` in its own scratch course, with its kernel
    inside :mod:`courselib.grading.sandbox` (no view of the course, the submissions or the network; limits
    of ``limits``), then every graded test cell is re-run in a clean room (:mod:`courselib.grading.cleanroom`):
    a part scores only if it passes there too (on parts the solution passes there). One writer merges
    the results into the course's gradebook and ``grades/.state/<lab>/<student>.json``; a submission
    whose notebook and settings are unchanged since its last grading is not graded again (so an
    interrupted run resumes), unless ``regrade``.

    ``cluster`` sends one task per submission to Dask workers instead of local threads
    (``"local:N"`` starts N worker processes on this machine, ``"tcp://host:8786"`` uses a running
    scheduler; :mod:`courselib.grading.cluster`): each worker grades exactly as the local path does and
    the results come back to this process, the one writer. ``db`` is the gradebook's URL (e.g.
    ``postgresql://...``; default the course config's, :func:`courselib.grading.gradebook.db_url`).

    ``sandboxed=False`` (``courselib grade --no-sandbox``) runs student code unisolated: an explicit
    choice, printed at the start and in :func:`summary_table`, recorded in every student's state file
    (``"sandbox": "none (--no-sandbox)"``) and part of the settings hash (so a sandboxed run regrades).
    Without bubblewrap, grading refuses and says which package to install.

    Returns a summary dict: ``{"csv": Path, "results": {student: result}, "graded_now": [...],
    "reused": [...], "counts": {status: n}, "seconds": float, "workers": int, "unmatched": [...]}``
    (``unmatched``: the files intake gave to no student, :attr:`courselib.grading.intake.Submissions.unmatched`).
    """
    course = find_course_dir(course_dir)
    check_lab(lab, course)
    limits = limits or Limits()
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    if sandboxed is None:  # older callers: None meant "whatever the machine offers"; now it means the sandbox
        sandboxed = True
    if sandboxed and not sandbox.available():
        raise GradingError(
            f"cannot grade: {sandbox.unavailable_reason()}. Student code runs only inside the sandbox; "
            "`courselib grade --no-sandbox` (grade(..., sandboxed=False)) runs it unisolated, as an explicit choice"
        )
    say = log or (lambda msg: print(msg, flush=True))
    if sandboxed:
        say(f"courselib grade: sandbox bubblewrap; memory limit by {sandbox.memory_mechanism()}")
    else:
        say(UNSANDBOXED_WARNING)
    t_start = time.monotonic()
    ensure_assignment(lab, course, db=db)
    notebooks = lab_notebooks(lab, course)
    source_sha = sha256(b"".join((course / "source" / lab / f"{nb}{NOTEBOOK_SUFFIX}").read_bytes() for nb in notebooks))
    settings = json.dumps(
        {"v": GRADER_VERSION, "limits": asdict(limits), "source": source_sha, "sandboxed": sandboxed}, sort_keys=True
    )
    state_dir = lab_state_dir(course, lab)
    state_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_scratch()
    base = Path(tempfile.mkdtemp(prefix=f"cg-{os.getpid()}-"))
    try:
        os.chmod(base, 0o755)
        subs = collect_submissions(lab, submissions, base / "unzipped", notebooks=notebooks)
        for line in subs.report():  # every file intake could not give to a student, by name
            say(line)
        states = load_states(course, lab)
        jobs, reused = [], []
        for idx, (student, nb) in enumerate(sorted(subs.items())):
            key = sha256(settings.encode() + b"\0" + _submission_bytes(nb, notebooks))
            if not regrade and states.get(student, {}).get("key") == key:
                reused.append(student)
            else:
                jobs.append(Job(idx, student, nb, key))
        sub_path = Path(submissions).resolve()
        extra_hide = [sub_path if sub_path.is_dir() else sub_path.parent, base]
        grader = AssignmentGrader(lab, course, limits, base, hidden_paths(course, extra_hide), feedback, sandboxed)
        results = {s: states[s] for s in reused}
        if reused:  # the gradebook may lag behind the state files if a run was killed: re-merge (idempotent)
            merge_results(course, lab, grader.parts, [states[s] for s in reused], state_dir, db=db)
        if jobs:
            if cluster is None:
                grader = prepare_grader(grader)
                scheduled = schedule_local(grader, jobs, workers)
            else:
                scheduled = cluster_schedule(
                    make_context(lab, course, limits, feedback, sandboxed), jobs, cluster, log=say
                )
            bar = None
            if progress:
                bar = tqdm(total=len(jobs), desc=f"grading {lab}", unit="nb", file=sys.stdout, ascii=True)
            try:
                for job, res in scheduled:
                    if not res.get("parts"):  # a task that never returned (it killed its workers)
                        res["parts"] = {g: 0.0 for g, _ in grader.parts}
                        res["max_score"] = float(sum(p for _, p in grader.parts))
                    res["sandbox"] = "bubblewrap" if sandboxed else "none (--no-sandbox)"
                    t_merge = time.monotonic()
                    merge_results(course, lab, grader.parts, [res], state_dir, db=db)
                    res.setdefault("timing", {})["merge"] = round(time.monotonic() - t_merge, 3)  # after the state
                    res.pop("files", None)
                    results[job.student] = res
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix_str(f"{job.student}: {res['status']} {res['score']:g}")
            finally:
                scheduled.close()
                if bar is not None:
                    bar.close()
        out = export_grades(lab, course, db=db)
        hook = lab_hook(lab, course, "after_grading")
        leaderboard = hook(lab=lab, course=course, submissions=subs, scratch=base) if hook else None
        counts = {s: sum(1 for r in results.values() if r["status"] == s) for s in STATUSES}
        return {
            "csv": out,
            "results": results,
            "graded_now": sorted(j.student for j in jobs),
            "reused": sorted(reused),
            "counts": counts,
            "seconds": time.monotonic() - t_start,
            "workers": workers,
            "cluster": cluster,
            "tiers": dict(grader.tiers),
            "parts": [g for g, _ in grader.parts],
            "leaderboard": leaderboard,
            "sandboxed": sandboxed,
            "unmatched": subs.unmatched,
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _submission_bytes(found: Path | None, notebooks: list[str]) -> bytes:
    """What a submission's grading key hashes: its notebook, or every notebook of its folder, in order."""
    if found is None:
        return b"<missing>"
    if found.is_dir():
        return b"\0".join(
            (found / f"{nb}{NOTEBOOK_SUFFIX}").read_bytes() if (found / f"{nb}{NOTEBOOK_SUFFIX}").is_file() else b"-"
            for nb in notebooks
        )
    return found.read_bytes()


def calibrate(
    lab: str, course_dir: str | os.PathLike | None = None, *, limits: Limits | None = None, sandboxed: bool = True
) -> dict:
    """Grade the lab's solution the way every submission is graded and say how each part will be judged.

    Returns ``{"tiers": {grade_id: "clean" | "sealed" | "manual"}, "reasons": {grade_id: why}, "parts":
    [(grade_id, points)]}``: ``clean`` parts are judged by their hidden tests in the clean room, ``sealed``
    ones in a sealed second kernel with the hidden tests in place (the reason says why: a test that changes
    the environment, or one the solution fails in the clean room, with its message), ``manual`` ones by hand.
    Raises :class:`GradingError` when the solution fails a part in every tier. The result is cached with the
    lab's grading state, so the next :func:`grade` starts without calibrating again.
    """
    course = find_course_dir(course_dir)
    check_lab(lab, course)
    if sandboxed and not sandbox.available():
        raise GradingError(f"cannot calibrate: {sandbox.unavailable_reason()}")
    if not all((course / "release" / lab / f"{nb}{NOTEBOOK_SUFFIX}").exists() for nb in lab_notebooks(lab, course)):
        release(lab, course)
    base = Path(tempfile.mkdtemp(prefix=f"cg-{os.getpid()}-"))
    try:
        os.chmod(base, 0o755)
        grader = AssignmentGrader(lab, course, limits or Limits(), base, hidden_paths(course, [base]), False, sandboxed)
        prepare_grader(grader)
        return {"tiers": dict(grader.tiers), "reasons": dict(grader.tier_reasons), "parts": list(grader.parts)}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def summary_table(summary: dict) -> str:
    """A Markdown table of a :func:`grade` summary: counts per status, mean score, time."""
    results = summary["results"]
    lines = ["| status | students | mean score |", "|---|---:|---:|"]
    for status in STATUSES:
        rs = [r for r in results.values() if r["status"] == status]
        if rs:
            lines.append(f"| {status} | {len(rs)} | {sum(r['score'] for r in rs) / len(rs):.2f} |")
    lines.append(
        f"| **all** | {len(results)} | {(sum(r['score'] for r in results.values()) / max(len(results), 1)):.2f} |"
    )
    lines.append("")
    lines.append(
        f"graded now: {len(summary['graded_now'])}, reused from an earlier run: {len(summary['reused'])}, "
        f"{summary['workers']} worker(s), {summary['seconds']:.1f} s; grades: {summary['csv']}"
    )
    if "tiers" in summary:
        by = {t: [g for g in summary["parts"] if summary["tiers"].get(g) == t] for t in ("clean", "sealed", "manual")}
        lines.append(
            f"parts judged by their hidden tests in the clean room: {len(by['clean'])} of {len(summary['parts'])}"
            + (f"; in a sealed run (nbgrader's way): {', '.join(by['sealed'])}" if by["sealed"] else "")
            + (f"; graded by hand: {', '.join(by['manual'])}" if by["manual"] else "")
        )
    if summary.get("unmatched"):
        lines.append(f"not graded (no student's {NOTEBOOK_SUFFIX} of the lab): {len(summary['unmatched'])} file(s)")
        lines += [f"  - {u}" for u in summary["unmatched"]]
    if not summary.get("sandboxed", True):
        lines.append(UNSANDBOXED_WARNING)
    return "\n".join(lines)
