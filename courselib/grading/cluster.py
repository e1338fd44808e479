"""Grading across machines on Dask: one task per submission, the same code path as a local run.

``courselib grade LAB SUBMISSIONS --cluster tcp://SCHEDULER:8786`` (or ``--cluster local:N`` for N
worker processes on this machine) sends each submission to a Dask worker
(:mod:`distributed`; the same code runs on a laptop's ``LocalCluster``, on Kubernetes through
``dask-kubernetes`` and on Slurm/PBS through ``dask-jobqueue``). A task carries a plain
:class:`GradingContext` (the lab's source and release files, the limits) and the notebook's bytes; the
worker rebuilds the grader once per process in its own temporary folder and calls
:func:`courselib.grading.worker.run_job`, exactly as a local thread does. Results come back to the
calling process, the single writer, which merges them into the gradebook as they arrive.

Faults: a worker that dies mid-task (its process or its machine) has its tasks re-run elsewhere by the
scheduler; a submission that kills every worker it lands on (three times, Dask's
``distributed.scheduler.allowed-failures``) is graded ``crashed``. A scheduler that goes away ends the
run with :class:`~courselib.grading.course.GradingError`: what was merged before is kept (state files),
so the same command, once a scheduler is back, grades only what is missing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .course import NOTEBOOK_SUFFIX, GradingError
from .grader import AssignmentGrader, GradeResult, Job, Limits, hidden_paths, new_result
from .worker import prepare_grader, run_job

__all__ = ["GradingContext", "make_context", "grade_task", "connect", "schedule"]

#: Seconds to wait for a scheduler (and, for ``local:N``, for its workers) before giving up.
CONNECT_TIMEOUT = 60


@dataclass(frozen=True)
class GradingContext:
    """Everything a worker needs to grade submissions of one lab, as plain data (it travels with tasks).

    ``files`` maps paths relative to a course folder (``nbgrader_config.py``, ``source/<lab>/...``,
    ``release/<lab>/...``) to their bytes; ``digest`` identifies the context (a worker caches one grader
    per digest).
    """

    lab: str
    files: dict
    limits: Limits
    feedback: bool
    sandboxed: bool
    digest: str


def make_context(lab: str, course: Path, limits: Limits, feedback: bool, sandboxed: bool) -> GradingContext:
    """The :class:`GradingContext` of ``lab`` in ``course`` (its source and release folders, the config)."""
    files = {"nbgrader_config.py": (course / "nbgrader_config.py").read_bytes()}
    for kind in ("source", "release"):
        root = course / kind / lab
        for f in sorted(root.rglob("*")):
            if f.is_file() and not f.is_symlink() and ".ipynb_checkpoints" not in f.parts:
                files[str(f.relative_to(course))] = f.read_bytes()
    h = hashlib.sha256(repr((lab, limits, feedback, sandboxed)).encode())
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name])
    return GradingContext(lab, files, limits, feedback, sandboxed, h.hexdigest())


_GRADERS: dict[str, AssignmentGrader] = {}  # one prepared grader per context, per worker process


def _worker_grader(ctx: GradingContext) -> AssignmentGrader:
    grader = _GRADERS.get(ctx.digest)
    if grader is None:
        base = Path(tempfile.mkdtemp(prefix=f"cg-{os.getpid()}-"))  # removed by the next run if we die
        os.chmod(base, 0o755)
        course = base / "course"
        for rel, data in ctx.files.items():
            dest = course / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        grader = AssignmentGrader(
            ctx.lab, course, ctx.limits, base, hidden_paths(course, [base]), ctx.feedback, ctx.sandboxed
        )
        _GRADERS[ctx.digest] = grader = prepare_grader(grader)
    return grader


def grade_task(ctx: GradingContext, idx: int, student: str, notebook: bytes | dict | None, key: str) -> dict:
    """The Dask task: grade one submission on this worker: ``notebook``'s bytes, or ``{file name: bytes}`` of
    an assignment of several notebooks, ``None`` if missing."""
    grader = _worker_grader(ctx)
    path = None
    if notebook is not None:
        incoming = grader.base / "incoming"
        incoming.mkdir(exist_ok=True)
        if isinstance(notebook, dict):
            path = incoming / f"{idx}-{student}"
            path.mkdir()
            for name, data in notebook.items():
                if Path(name).name != name or not name.endswith(NOTEBOOK_SUFFIX):
                    raise GradingError(f"a submission file named {name!r}")
                (path / name).write_bytes(data)
        else:
            path = incoming / f"{idx}-{student}{NOTEBOOK_SUFFIX}"
            path.write_bytes(notebook)
    try:
        res = run_job(grader, Job(idx, student, path, key))
    finally:
        if path is not None and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path is not None:
            path.unlink(missing_ok=True)
    res["worker"] = os.uname().nodename + f":{os.getpid()}"
    return res


def _distributed():
    """The ``distributed`` package, imported on first use: it is the optional ``cluster`` extra, and
    ``courselib.grading`` must work on a machine that only grades locally."""
    try:
        import distributed
        import distributed.client
        import distributed.comm.core
        import distributed.scheduler
    except ImportError:
        raise GradingError("grading on a cluster needs Dask: pip install 'ondevice-ml-courselib[cluster]'") from None
    return distributed


def connect(cluster: str):
    """A client for ``cluster``: ``"local:N"`` starts N single-threaded worker processes on 127.0.0.1,
    anything else is a scheduler address (``tcp://host:8786``). Returns ``(client, local_cluster_or_None)``."""
    dd = _distributed()
    if cluster.startswith("local:"):
        try:
            n = int(cluster.split(":", 1)[1])
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"--cluster local:N needs a positive number of workers, got {cluster!r}")
        local = dd.LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        return dd.Client(local, timeout=CONNECT_TIMEOUT), local
    try:
        return dd.Client(cluster, timeout=CONNECT_TIMEOUT), None
    except (OSError, TimeoutError) as exc:
        raise GradingError(f"no Dask scheduler at {cluster}: {exc}") from None


def _crashed(grader_ctx: GradingContext, job: Job, note: str) -> GradeResult:
    """The result of a task that never returned (the writer fills in the lab's parts at 0)."""
    res = new_result(job.student, grader_ctx.lab, job.key, [], status="crashed", notes=[note])
    res["files"] = {}
    return res


def _submission_files(found: Path | None) -> bytes | dict | None:
    """What a task carries of a submission: its notebook's bytes, or a folder's notebooks by name."""
    if found is None:
        return None
    if found.is_dir():
        return {f.name: f.read_bytes() for f in sorted(found.glob(f"*{NOTEBOOK_SUFFIX}"))}
    return found.read_bytes()


def schedule(ctx: GradingContext, jobs: list[Job], cluster: str, *, log=None):
    """Grade ``jobs`` on the Dask cluster ``cluster``; yield ``(job, result)`` as each finishes.

    A job whose task killed its workers every time it ran is yielded ``crashed`` (``parts`` ``None``:
    the writer fills in zeros). Losing the scheduler raises :class:`GradingError`.
    """
    say = log or (lambda msg: None)
    dd = _distributed()
    lost_scheduler = (dd.comm.core.CommClosedError, dd.client.FutureCancelledError, OSError, TimeoutError)
    client, local = connect(cluster)
    try:
        n_workers = len(client.scheduler_info().get("workers", {}))
        say(f"courselib grade: {len(jobs)} submission(s) on Dask {client.scheduler.address} ({n_workers} workers)")
        futures = {}
        for job in jobs:
            data = _submission_files(job.notebook)
            fut = client.submit(
                grade_task,
                ctx,
                job.idx,
                job.student,
                data,
                job.key,
                key=f"grade-{ctx.lab}-{job.student}-{job.key[:16]}",
            )
            futures[fut] = job
        try:
            for fut in dd.as_completed(futures):
                job = futures[fut]
                try:
                    res = fut.result()
                except dd.scheduler.KilledWorker:
                    res = _crashed(ctx, job, "the submission killed every grading worker it ran on")
                yield job, res
        except lost_scheduler as exc:
            raise GradingError(
                f"lost the Dask scheduler {cluster} ({exc!r}); what was graded is kept: "
                "run the same command again once the scheduler is back"
            ) from None
        finally:
            for fut in futures:
                fut.cancel()
    finally:
        deadline = time.monotonic() + 10
        try:
            client.close(timeout=max(1, deadline - time.monotonic()))
        except Exception:  # a dead scheduler cannot be told goodbye
            pass
        if local is not None:
            local.close()
