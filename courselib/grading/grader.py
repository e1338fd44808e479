"""Grading one submission: tamper check, one sandboxed execution, every part judged by its hidden tests, feedback.

:class:`Grader` holds the read-only context of one run (the lab's source and release, the limits, the
sandbox settings, the feedback mode, each part's tier); :meth:`Grader.grade_one` grades one :class:`Job` and
returns a result dict. It is the one code path for grading a submission, whichever scheduler calls it
(:mod:`courselib.grading.worker`). The student's notebook runs once, in a sandboxed kernel, with the
*release* version of its test cells (visible tests only); the hidden tests run only in the trusted clean room
(:mod:`courselib.grading.cleanroom`), which calls the student's functions in that kernel, or, for a part in
the sealed tier, in a second sandboxed kernel whose only output is pass or fail.

Each part's tier (:data:`~courselib.grading.cleanroom.TIERS`) is decided once per lab (:meth:`Grader.calibrate`):
answers graded by hand are ``manual``; a test cell that changes the environment the student's code runs in
(:func:`environment_changes`) is ``sealed``; every other test cell is ``clean`` if the lab's solution passes it
there exactly as a submission is graded, else ``sealed``; a part the solution fails in both is an error of the
lab, reported before any submission is graded.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypedDict

import courselib

from . import forkserver, sandbox
from .cells import import_nodes, parse_cell
from .cleanroom import driver_args
from .course import (
    NOTEBOOK_SUFFIX,
    SOLUTION,
    GradingError,
    _split_hidden,
    lab_notebooks,
    lab_settings,
    nbgrader_env,
    notebook_parts,
    part_key,
)
from .feedback import FEEDBACK_MODES
from .gradebook import lab_state_dir
from .intake import check_notebook

#: courselib.deploy's program cache (``courselib.deploy.PROGRAM_CACHE_ENV``, named here so that grading does not
#: import the runtimes): a folder of lowered ExecuTorch programs.
PROGRAM_CACHE_ENV = "COURSELIB_PROGRAM_CACHE"

STATUSES = ("graded", "output-limit", "timeout", "memory", "crashed", "invalid-notebook", "tampered", "missing")
"""Submission statuses, in the order of precedence used when several apply (a flood of output can also make a
cell run out of time: the flood is reported)."""

GRADER_VERSION = "courselib-grade-3"

#: Largest answer the student's kernel may send to the clean room for one call (bytes).
MAX_REPLY_BYTES = 64 << 20


@dataclass(frozen=True)
class Limits:
    """Per-submission limits of :func:`grade`.

    Parameters
    ----------
    cell_timeout : int
        Seconds one cell may run (nbgrader's ``Execute.timeout``); the kernel is interrupted.
    notebook_timeout : int
        Seconds the whole autograding of one notebook may take; the sandbox is killed.
    memory_mb : int
        Address-space limit (``RLIMIT_AS``) of the student's kernel, in MiB.
    output_kb : int
        Largest output of one cell, in KiB (further output is dropped, the cell fails).
    file_mb : int
        Largest file the student's code may write (``RLIMIT_FSIZE``), in MiB.
    """

    cell_timeout: int = 120
    notebook_timeout: int = 900
    memory_mb: int = 3072
    output_kb: int = 1024
    file_mb: int = 64

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Limits.{name} must be a positive int, got {value!r}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hidden_paths(course: Path, extra: list[Path]) -> list[str]:
    """Paths the sandbox must never bind (it refuses an allow-list entry that contains one). The
    sandbox starts from an empty root, so these are a check on :func:`kept_paths`, not the isolation."""
    pkg = Path(courselib.__file__).resolve().parent
    hide = [
        course,
        *extra,
        Path(tempfile.gettempdir()),
        Path("/tmp"),
        Path("/var/tmp"),
        Path("/root"),
        Path("/home"),
        Path.home(),
    ]
    repo = pkg.parent
    if (repo / "pyproject.toml").exists() or (repo / ".git").exists():
        hide.append(repo)  # an editable install: hide the repository (.git holds every solution)
    return sorted({str(p.resolve()) for p in hide if p.exists()})


def kept_paths() -> list[str]:
    """The sandbox's allow-list (bound read-only): the Python installation, the virtual environment,
    the ``courselib`` package directory (not the repository around it) and ``$COURSELIB_DATA``."""
    keep = [Path(sys.prefix), Path(sys.base_prefix), Path(courselib.__file__).parent]
    if os.environ.get("COURSELIB_DATA"):
        keep.append(Path(os.environ["COURSELIB_DATA"]))
    return sorted({str(p.resolve()) for p in keep if p.is_dir()})


def _run(cmd: list[str], *, cwd, env, timeout: float) -> tuple[int | None, str]:
    """Run ``cmd`` in its own session; kill the whole session on timeout. Return (exit code or None, output)."""

    def preexec():
        os.setsid()
        forkserver.die_with_parent()

    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=preexec,
        text=True,
        errors="replace",
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        out, _ = proc.communicate()
        return None, out


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def stale_release_cells(nb: dict, release_nb: dict) -> list[str]:
    """The ``grade_id`` of every source cell the release does not hold as nbgrader would write it now.

    The grader runs the visible tests and locked cells of the *release* (what the students have) and the
    hidden tests of the *source*. If the source's visible part was edited after the release was generated,
    the two disagree and a grade would mix two versions of the lab: a test cell whose visible lines
    (the source without its hidden-test regions) differ from the release's, a locked cell whose text differs,
    or a graded cell missing from the release. Hidden-test lines may change freely (that is how an instructor
    fixes a hidden test mid-term). Solution cells are not compared (the release holds their stubs).
    """
    released = {}
    for cell in release_nb.get("cells", []):
        gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if gid:
            released[gid] = _source(cell)
    stale = []
    for cell in nb["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        gid = meta.get("grade_id")
        if not gid or (meta.get("solution") and not meta.get("locked")):
            continue
        if gid not in released:
            stale.append(gid)
        elif not meta.get("solution") and _split_hidden(_source(cell))[0] != released[gid]:
            stale.append(gid)
    return stale


def _notebook_cells(nb: dict, release_nb: dict | None = None) -> list[dict]:
    """Source cells classified for the clean room: test / solution / instructor; each test cell with
    its release version (the visible tests) as ``release_source``."""
    released = {}
    for cell in (release_nb or {}).get("cells", []):
        gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if gid:
            released[gid] = _source(cell)
    out = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        meta = cell.get("metadata", {}).get("nbgrader", {})
        src = _source(cell)
        if meta.get("grade") and not meta.get("solution"):
            gid = meta["grade_id"]
            out.append({"kind": "test", "grade_id": gid, "source": src, "release_source": released.get(gid, src)})
        elif meta.get("solution"):
            out.append({"kind": "solution", "grade_id": meta.get("grade_id"), "source": src})
        elif meta.get("locked"):
            out.append({"kind": "instructor", "grade_id": meta.get("grade_id"), "source": src})
    return out


_PATCHERS = {"setattr", "delattr", "patch", "monkeypatch", "setitem"}


def environment_changes(source: str, modules: set[str]) -> list[str]:
    """What a test cell changes in the environment the student's code runs in, as short descriptions.

    A test that assigns to (or deletes) an attribute of an imported module (``np.linalg.solve = None``),
    patches with ``setattr``/``unittest.mock``/``monkeypatch``, or edits ``sys.modules`` or ``builtins``
    changes what the student's function sees when it runs *in the same process*. In the clean room the
    change would stay on the clean room's side, so such a part is judged in the sealed tier. ``modules`` are
    the names bound by the notebook's imports (``np``, ``numpy``, ``linalg``...).
    """
    tree = parse_cell(source)
    if tree is None:
        return []
    found = []

    def root(node):
        while isinstance(node, (ast.Attribute, ast.Subscript)):
            node = node.value
        return node.id if isinstance(node, ast.Name) else None

    for node in ast.walk(tree):
        targets = []
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        for t in targets:
            if isinstance(t, (ast.Attribute, ast.Subscript)) and root(t) in modules | {
                "sys",
                "builtins",
                "__builtins__",
            }:
                found.append(f"line {node.lineno}: {ast.unparse(t)} changed")
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in _PATCHERS:
                found.append(f"line {node.lineno}: {name}(...)")
    return found


def imported_names(sources: list[str]) -> set[str]:
    """The names that ``import`` statements bind in the given cells (module aliases and imported names)."""
    return {(a.asname or a.name).split(".")[0] for node in import_nodes(sources) for a in node.names}


def restore_locked_cells(nb: dict, release_nb: dict) -> dict:
    """The notebook the student's kernel executes: the submission with every locked and test cell
    replaced by its *release* version (visible tests only), deleted ones put back after the cell that
    precedes them in the release, outputs cleared. The source version (hidden tests) is never used."""
    locked = {}
    order = []
    solutions = set()
    for cell in release_nb["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        gid = meta.get("grade_id")
        if not gid:
            continue
        order.append(gid)
        if meta.get("locked") or meta.get("grade"):
            locked[gid] = cell
        elif meta.get("solution"):
            solutions.add(gid)
    cells = []
    for cell in nb.get("cells", []):
        cell = json.loads(json.dumps(cell))
        meta = cell.get("metadata", {}).get("nbgrader", {})
        gid = meta.get("grade_id")
        if gid in locked:
            cell = json.loads(json.dumps(locked[gid]))
        elif gid not in solutions and "nbgrader" in cell.get("metadata", {}):
            del cell["metadata"]["nbgrader"]  # a grade_id the lab does not have: an ordinary cell
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
        cells.append(cell)
    for i, gid in enumerate(order):
        if gid not in locked or any(c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == gid for c in cells):
            continue
        at = 0
        for prev in reversed(order[:i]):
            idx = [j for j, c in enumerate(cells) if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == prev]
            if idx:
                at = idx[-1] + 1
                break
        cells.insert(at, json.loads(json.dumps(locked[gid])))
    out = json.loads(json.dumps(release_nb))
    out["cells"] = cells
    return out


class GradeResult(TypedDict, total=False):
    """What grading one submission produces: the one record every scheduler returns and the writer stores
    (``grades/.state/<lab>/<student>.json``; :func:`new_result` makes one).

    ``parts`` maps each part (:func:`~courselib.grading.course.lab_parts`' keys) to its score (0 while it waits
    for a grade by hand); ``part_status`` to ``passed`` / ``partial`` / ``failed`` / ``timeout`` / ``pending``;
    ``tiers`` to ``clean`` / ``sealed`` / ``manual``; ``pending`` lists the parts graded by hand that wait.
    ``scratch`` (the scratch courses) and ``files`` (their files, packed by the worker) are not stored.
    """

    student_id: str
    lab: str
    key: str
    status: str
    notes: list
    parts: dict
    part_status: dict
    tiers: dict
    pending: list
    score: float
    max_score: float
    seconds: float
    timing: dict
    proxy_calls: int
    driver_maxrss_mb: float | None
    notebooks: list
    sandbox: str
    worker: str
    scratch: object
    files: dict


def new_result(student: str, lab: str, key: str, parts, *, status: str = "graded", notes=()) -> GradeResult:
    """A :class:`GradeResult` with every part at 0 (``parts``: ``(key, points)`` pairs)."""
    parts = list(parts)
    return GradeResult(
        student_id=student,
        lab=lab,
        key=key,
        status=status,
        notes=list(notes),
        parts={g: 0.0 for g, _ in parts},
        part_status={},
        tiers={},
        pending=[],
        score=0.0,
        max_score=float(sum(p for _, p in parts)),
        seconds=0.0,
        scratch=None,
    )


class Job:
    """One student's submission of an assignment: its notebook (for a one-notebook lab) or its folder
    (``<student>/<assignment>/``, for an assignment of several notebooks), ``None`` when missing."""

    def __init__(self, idx: int, student: str, notebook: Path | None, key: str):
        self.idx, self.student, self.notebook, self.key = idx, student, notebook, key


class Grader:
    """Shared, read-only context of one :func:`grade` run for one notebook of an assignment (workers only read
    it): ``notebook`` is the notebook's name, ``lab`` by default (this course's labs are one notebook each)."""

    def __init__(self, lab, course, limits, base, hide, feedback, sandboxed, notebook: str | None = None):
        self.lab, self.course, self.limits, self.base = lab, course, limits, base
        self.notebook = notebook or lab
        self.hide, self.keep, self.feedback, self.sandboxed = hide, kept_paths(), feedback, sandboxed
        self.nbname = f"{self.notebook}{NOTEBOOK_SUFFIX}"
        self.source_nb = json.loads((course / "source" / lab / self.nbname).read_text())
        self.release_nb = json.loads((course / "release" / lab / self.nbname).read_text())
        stale = stale_release_cells(self.source_nb, self.release_nb)
        if stale:
            raise GradingError(
                f"{course / 'release' / lab / self.nbname} is older than its source: cells {', '.join(stale)} "
                "changed (or appeared) in source/ after the release was generated, so a grade would mix the "
                f"students' version with the new one. Run `courselib release {lab}` (nbgrader generate_assignment) "
                "and hand out the new version, or undo the change to the visible part (hidden tests may change)."
            )
        self.cells = _notebook_cells(self.source_nb, self.release_nb)
        self.preload = forkserver.preload_statements([c["source"] for c in self.cells if c["kind"] != "solution"])
        parts = notebook_parts(self.source_nb)
        self.parts = [(p["grade_id"], p["points"]) for p in parts]
        self.kinds = {p["grade_id"]: p["kind"] for p in parts}
        modules = imported_names([c["source"] for c in self.cells])
        #: why a part is sealed from the start (it changes the student's environment)
        self.env_changes = {
            c["grade_id"]: changes
            for c in self.cells
            if c["kind"] == "test" and (changes := environment_changes(c["source"], modules))
        }
        self.tiers = {
            g: "manual" if self.kinds.get(g) != "test" else "sealed" if g in self.env_changes else "clean"
            for g, _ in self.parts
        }
        #: the copy-back contract: which arguments each of the student's functions may change in place
        self.mutable: dict | None = None
        #: why a part is not in the clean tier (what calibration found), for the instructor
        self.tier_reasons = {g: "changes the environment: " + "; ".join(c) for g, c in self.env_changes.items()}
        self.feedback_mode = str(lab_settings(lab, course).get("feedback", "redacted"))
        if self.feedback_mode not in FEEDBACK_MODES:
            raise GradingError(
                f"course.toml: labs.{lab}.feedback = {self.feedback_mode!r}; choose one of {list(FEEDBACK_MODES)}"
            )
        notebooks = {f"{nb}{NOTEBOOK_SUFFIX}" for nb in lab_notebooks(lab, course)}
        self.release_extras = [
            p for p in (course / "release" / lab).iterdir() if p.name not in notebooks and not p.name.startswith(".")
        ]
        self.template = base / "template"

    def env(self, jupyter_dir: Path | None = None, runtime: Path | None = None) -> dict:
        """The environment of the clean room's driver and of its fork server: one thread per numerical library
        (:data:`~courselib.grading.sandbox.ONE_THREAD_ENV`, as in the kernel), fixed hash seed, and the lab's
        folder of lowered ExecuTorch programs (:data:`PROGRAM_CACHE_ENV`; one already set is kept), where the
        reference programs that the hidden tests export are lowered once for every submission. Only this
        trusted side writes there: the sandboxed kernel gets an environment of its own, and without the
        sandbox (where the student's code would inherit it) there is no cache."""
        env = nbgrader_env()
        env.update(sandbox.ONE_THREAD_ENV)
        env["PYTHONHASHSEED"] = "0"
        env.pop("JUPYTER_CONFIG_DIR", None)
        if self.sandboxed:
            env.setdefault(PROGRAM_CACHE_ENV, str(lab_state_dir(self.course, self.lab) / "programs"))
        else:
            env.pop(PROGRAM_CACHE_ENV, None)
        if jupyter_dir is not None:
            env["JUPYTER_PATH"] = str(jupyter_dir)
        if runtime is not None:
            env["JUPYTER_RUNTIME_DIR"] = str(runtime)
        return env

    # ------------------------------------------------------------------ scratch set-up
    def make_template(self) -> None:
        """The per-run template: the lab's release files (data the notebook reads) for every work folder."""
        t = self.template / "files"
        t.mkdir(parents=True, exist_ok=True)
        for extra in self.release_extras:
            (shutil.copytree if extra.is_dir() else shutil.copy)(extra, t / extra.name)

    def sandbox_config(self, work: Path, path: Path):
        cfg = sandbox.SandboxConfig(
            work_dir=str(work),
            hide=self.hide,
            keep=self.keep,
            memory_bytes=self.limits.memory_mb << 20,  # resident (cgroup), RLIMIT_AS without one
            file_bytes=self.limits.file_mb << 20,
            disk_bytes=max(8 * self.limits.file_mb, 256) << 20,  # the scratch tmpfs
            cpu_seconds=self.limits.notebook_timeout + 30,
        )
        cfg.save(path)
        return path

    def tampering(self, nb: dict) -> list[str]:
        """Locked cells of a submission that were edited, retyped or deleted (compared by grade_id
        with both the release and the source version; nbgrader restores them from its checksums, and so
        does :func:`restore_locked_cells`). Answer cells, graded by hand or not, are the student's to edit."""

        def locked(cells):
            out = {}
            for cell in cells:
                meta = cell.get("metadata", {}).get("nbgrader", {})
                if (meta.get("locked") or meta.get("grade")) and not meta.get("solution"):
                    src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
                    out[meta.get("grade_id")] = (cell["cell_type"], src.strip(), meta.get("points"))
            return out

        want = [locked(self.release_nb["cells"]), locked(self.source_nb["cells"])]
        got = {}
        for cell in nb.get("cells", []):
            meta = cell.get("metadata", {}).get("nbgrader", {})
            gid = meta.get("grade_id")
            if gid in want[0]:
                src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
                got.setdefault(gid, []).append((cell["cell_type"], src.strip(), meta.get("points")))
        changed = []
        for gid in want[0]:
            versions = got.get(gid, [])
            if not versions:
                changed.append(f"{gid} (deleted)")
            elif len(versions) > 1 or versions[0] not in (want[0][gid], want[1].get(gid)):
                changed.append(f"{gid} (edited)")
        return changed

    def unanswered(self, nb: dict) -> list[str]:
        """Answers graded by hand that the submission left exactly as released (nbgrader: 0, not pending)."""
        released = {
            c["metadata"]["nbgrader"]["grade_id"]: _source(c).strip()
            for c in self.release_nb["cells"]
            if c.get("metadata", {}).get("nbgrader", {}).get("solution")
        }
        out = []
        for cell in nb.get("cells", []):
            gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
            if self.kinds.get(gid) == "manual" and _source(cell).strip() == released.get(gid):
                out.append(gid)
        return out

    def deleted_tests(self, nb: dict) -> list[str]:
        """Autograded test cells of the release missing from the submission."""
        there = {c.get("metadata", {}).get("nbgrader", {}).get("grade_id") for c in nb.get("cells", [])}
        return [g for g, _ in self.parts if self.kinds.get(g) == "test" and g not in there]

    def make_work(self, root: Path, notebook_bytes: bytes | None) -> Path:
        work = root / "work"
        work.mkdir(parents=True)
        for extra in self.release_extras:
            (shutil.copytree if extra.is_dir() else shutil.copy)(extra, work / extra.name)
        if notebook_bytes is not None:
            (work / self.nbname).write_bytes(notebook_bytes)
        if self.sandboxed:
            for dirpath, _dirnames, filenames in os.walk(work):
                for n in [dirpath, *[os.path.join(dirpath, f) for f in filenames]]:
                    os.chown(n, 65534, 65534)
        return work

    # ------------------------------------------------------------------ one execution + the clean room
    def run_notebook(
        self,
        root: Path,
        nb: dict,
        *,
        tiers,
        mutable,
        feedback_html: Path | None,
        autograded: Path | None,
        unanswered: list[str] = (),
        deleted: list[str] = (),
    ):
        """Execute ``nb`` (locked cells already restored from the release) once in a sandboxed kernel and
        judge it (:func:`courselib.grading.cleanroom.grade_notebook`, in its own process), each part in its
        tier (``tiers``), with the copy-back contract ``mutable`` (``None``: learn it). ``unanswered``: answers
        graded by hand left as released (0, as nbgrader scores them); ``deleted``: test cells the submission
        deleted (waiting for a grade by hand, as nbgrader leaves them).

        Returns ``(exit code or None on timeout, result dict or None, log, seconds the process took)``.
        """
        data = json.dumps(nb).encode()
        work = self.make_work(root, data)
        (root / "restored.ipynb").write_bytes(data)  # the trusted copy the driver reads
        jupyter = root / "jupyter"
        runner_work = self.make_work(root / "runner", None)  # students' programs run on hidden inputs here
        runner = {"argv_prefix": [sys.executable], "work": str(runner_work), "timeout": self.limits.cell_timeout}
        if self.sandboxed:
            runner["argv_prefix"] = sandbox.command(
                self.sandbox_config(runner_work, root / "sandbox-runner.json"), [sys.executable]
            )
        kernel_name = sealed_kernel = "python3"
        sealed_work = None
        if any(t == "sealed" for t in tiers.values()):
            sealed_work = self.make_work(root / "sealed", data)
        if self.sandboxed:
            kernel_name, sealed_kernel = "courselib-sandbox", "courselib-sandbox-sealed"
            sandbox.write_kernelspec(jupyter, kernel_name, self.sandbox_config(work, root / "sandbox.json"))
            if sealed_work is not None:
                sandbox.write_kernelspec(
                    jupyter, sealed_kernel, self.sandbox_config(sealed_work, root / "sandbox-sealed.json")
                )
        clean = root / "clean"
        clean.mkdir(exist_ok=True)
        for extra in self.release_extras:
            (shutil.copytree if extra.is_dir() else shutil.copy)(extra, clean / extra.name)
        spec = {
            "lab": self.lab,
            "notebook": str(root / "restored.ipynb"),
            "cells": self.cells,
            "parts": [{"grade_id": g, "points": p, "tier": tiers[g]} for g, p in self.parts],
            "mutable": mutable,
            "kernel_name": kernel_name,
            "work": str(work),
            "ipc": str(work / "k") if self.sandboxed else None,
            "sealed_work": str(sealed_work) if sealed_work else None,
            "sealed_ipc": str(sealed_work / "k") if self.sandboxed and sealed_work else None,
            "sealed_kernel_name": sealed_kernel,
            "cell_timeout": self.limits.cell_timeout,
            "startup_timeout": min(120, self.limits.notebook_timeout),
            "output_bytes": self.limits.output_kb * 1024,
            "max_reply_bytes": MAX_REPLY_BYTES,
            "driver_cpu_seconds": 2 * self.limits.notebook_timeout + 60,
            "runner": runner,
            "unanswered": list(unanswered),
            "deleted": list(deleted),
            "feedback": self.feedback_mode,
            "feedback_html": str(feedback_html) if feedback_html else None,
            "autograded": str(autograded) if autograded else None,
        }
        (root / "spec.json").write_text(json.dumps(spec))
        out = root / "result.json"
        t = time.monotonic()
        code, log = self._drive(
            root,
            driver_args(root / "spec.json", out),
            cwd=clean,
            env=self.env(jupyter if self.sandboxed else None, work),
        )
        res = json.loads(out.read_text()) if code == 0 and out.exists() else None
        return code, res, log, time.monotonic() - t

    def _drive(self, root: Path, args: list[str], *, cwd: Path, env: dict) -> tuple[int | None, str]:
        """Run the driver: forked from a :mod:`~courselib.grading.forkserver` that has the driver's and
        the lab's imports done, or, where no server can start, as a fresh process. Returns (exit code,
        or ``None`` on timeout; its output)."""
        timeout = self.limits.notebook_timeout + 30
        base_env = self.env()
        try:
            server = forkserver.acquire(self.preload, base_env)
        except forkserver.ForkServerError:
            return _run(forkserver.fresh_argv(args), cwd=cwd, env=env, timeout=timeout)
        log = root / "driver.log"
        try:
            code = server.run(args, cwd=cwd, env=env, log=log, timeout=timeout)
        except forkserver.ForkServerError:  # the server died: this submission runs in a fresh process
            server.close()
            return _run(forkserver.fresh_argv(args), cwd=cwd, env=env, timeout=timeout)
        forkserver.release(server)
        return code, log.read_text(errors="replace") if log.exists() else ""

    def _calibration_key(self) -> str:
        return sha256(
            json.dumps(
                [
                    GRADER_VERSION,
                    courselib.__version__,
                    self.cells,
                    asdict(self.limits),
                    self.sandboxed,
                ],
                sort_keys=True,
            ).encode()
        )

    def solution_notebook(self) -> dict:
        """The release notebook with the source's solutions filled in, as a student who solved the lab hands it
        in: without nbgrader's solution delimiter lines (``course.SOLUTION``; what
        calibration grades, and whose feedback page it keeps)."""
        delimiters = {f"### {m}" for m in SOLUTION}
        solutions = {
            c["grade_id"]: "".join(ln for ln in c["source"].splitlines(True) if ln.strip() not in delimiters)
            for c in self.cells
            if c["kind"] == "solution"
        }
        nb = json.loads(json.dumps(self.release_nb))
        for cell in nb["cells"]:
            gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
            if gid in solutions:
                cell["source"] = solutions[gid]
        return restore_locked_cells(nb, self.release_nb)

    def calibrate(self) -> None:
        """Each part's tier and the copy-back contract, from the lab's solution graded exactly as a submission
        is (feedback included). A test part stays ``clean`` when the solution passes it in the clean room and
        moves to ``sealed`` otherwise; the solution must pass every sealed part in a sealed run. The contract
        is what the solution's functions change in place. Cached per source notebook, limits and courselib
        version in ``grades/.state/<lab>/_calibration.json``, beside the solution's graded notebook and
        feedback page (``_calibration.autograded.ipynb``, ``_calibration.feedback.html``: what a student who
        hands in the solution gets, for the instructor to read before releasing feedback); raises
        :class:`GradingError` when the solution fails a part in every tier (the lab is broken, not the
        submissions).
        """
        cache = lab_state_dir(self.course, self.lab) / (
            "_calibration.json" if self.notebook == self.lab else f"_calibration-{self.notebook}.json"
        )
        key = self._calibration_key()
        try:
            cached = json.loads(cache.read_text())
            if cached.get("key") == key:
                self.tiers, self.mutable = dict(cached["tiers"]), dict(cached["mutable"])
                self.tier_reasons = dict(cached.get("reasons", {}))
                return
        except (OSError, ValueError, KeyError, TypeError):
            pass
        tiers, mutable, res = dict(self.tiers), None, None
        slow = 0  # runs where the solution ran out of time: a busy machine, not a clean-room incompatibility
        for _attempt in range(3):  # again when parts moved to the sealed tier, or once when a call timed out
            root = self.base / "calibration"
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            feedback, autograded = root / "feedback.html", root / "autograded.ipynb"
            _code, res, log, _ = self.run_notebook(
                root,
                self.solution_notebook(),
                tiers=tiers,
                mutable=mutable,
                feedback_html=feedback,
                autograded=autograded,
            )
            if res is None:
                raise GradingError(f"{self.lab}: the lab's solution could not be graded: {log.strip()[-500:]}")
            failed = {g for g, v in res["verdicts"].items() if v["status"] not in ("passed", "pending")}
            timed_out = sorted(g for g in failed if res["verdicts"][g]["status"] == "timeout")
            if timed_out:  # never sealed for being slow: a sealed part is judged where the student's code runs
                slow += 1
                if slow > 1:
                    raise GradingError(
                        f"{self.lab}: the lab's solution did not finish {', '.join(timed_out)} within the cell "
                        f"timeout ({self.limits.cell_timeout} s) twice; raise cell_timeout in course.toml"
                    )
                continue
            if mutable is None:
                mutable = res.get("changed", {})
            moved = {g for g in failed if tiers[g] == "clean"}
            for g in moved:
                v = res["verdicts"][g]
                why = v.get("message") or v["status"]
                self.tier_reasons[g] = f"the solution fails it in the clean room ({v.get('where', '')} tests: {why})"
            broken = failed - moved
            if broken:
                raise GradingError(
                    f"{self.lab}: the lab's solution fails {', '.join(sorted(broken))} in every tier; fix the lab"
                )
            if not moved:
                break
            tiers.update(dict.fromkeys(moved, "sealed"))
        else:
            raise GradingError(f"{self.lab}: calibration did not settle: {sorted(failed)}")
        self.tiers, self.mutable = tiers, mutable
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            for made, suffix in ((autograded, ".autograded.ipynb"), (feedback, ".feedback.html")):
                if made.is_file():
                    shutil.copyfile(made, cache.with_name(cache.stem + suffix))
            tmp = cache.with_name(f".{os.getpid()}.calibration.tmp")
            tmp.write_text(json.dumps({"key": key, "tiers": tiers, "mutable": mutable, "reasons": self.tier_reasons}))
            os.replace(tmp, cache)
        except OSError:
            pass
        shutil.rmtree(self.base / "calibration", ignore_errors=True)

    # ------------------------------------------------------------------ one submission
    def grade_one(self, job: Job) -> GradeResult:
        t0 = time.monotonic()
        result = new_result(job.student, self.lab, job.key, self.parts)
        if job.notebook is None:
            result.update(status="missing", notes=[f"no {self.lab}/{self.nbname}"])
            return self._finish(result, t0)
        data = job.notebook.read_bytes()
        why = check_notebook(data)
        if why:
            result.update(status="invalid-notebook", notes=[why])
            return self._finish(result, t0)
        root = self.base / (f"s{job.idx}" if self.notebook == self.lab else f"s{job.idx}-{self.notebook}")
        course = root / "course"  # the layout the writer copies: submitted/, autograded/, feedback/
        nbname = self.nbname
        sub = course / "submitted" / job.student / self.lab
        sub.mkdir(parents=True)
        (sub / nbname).write_bytes(data)
        nb = json.loads(data)
        flags = []
        changed = self.tampering(nb)
        if changed:
            flags.append("tampered")
            result["notes"].append("restored from the release: " + ", ".join(changed))
        feedback = course / "feedback" / job.student / self.lab / f"{self.notebook}.html" if self.feedback else None
        code, res, log, took = self.run_notebook(
            root,
            restore_locked_cells(nb, self.release_nb),
            tiers=self.tiers,
            mutable=self.mutable,
            feedback_html=feedback,
            autograded=course / "autograded" / job.student / self.lab / nbname,
            unanswered=self.unanswered(nb),
            deleted=self.deleted_tests(nb),
        )
        result["scratch"] = str(course)
        if code is None:
            result.update(status="timeout", notes=[f"notebook exceeded {self.limits.notebook_timeout} s"])
            return self._finish(result, t0)
        if res is None:
            last = log.strip().splitlines()[-1][:300] if log.strip() else ""
            result.update(status="crashed", notes=["the grader's clean room failed", last])
            return self._finish(result, t0)
        flags += res["flags"]
        verdicts = res["verdicts"]
        oom = self.sandboxed and any(sandbox.oom_kills(root / f) for f in ("sandbox.json", "sandbox-sealed.json"))
        if oom:  # the cgroup's memory limit killed a kernel
            flags.append("memory")
            result["notes"].append(f"the kernel exceeded {self.limits.memory_mb} MiB of resident memory")
            verdicts = {g: {**v, "score": 0.0 if v["score"] is not None else None} for g, v in verdicts.items()}
        if "crashed" in res["flags"]:
            result["notes"].append("the kernel died")
        for gid in res.get("timeouts", []):
            result["notes"].append(f"{gid}: a call did not finish in {self.limits.cell_timeout} s (timeout)")
        if res.get("restarts"):
            result["notes"].append(
                f"the kernel was restarted {res['restarts']} time(s), the notebook run again (a call timed out or broke its channel)"
            )
        for gid in res.get("deleted", []):
            result["notes"].append(f"{gid}: the test cell was deleted; it waits for a grade by hand")
        result["parts"] = {g: float(verdicts[g]["score"] or 0.0) for g, _ in self.parts}
        result["part_status"] = {g: verdicts[g]["status"] for g, _ in self.parts}
        result["tiers"] = {g: verdicts[g]["tier"] for g, _ in self.parts}
        result["pending"] = [g for g, _ in self.parts if verdicts[g]["status"] == "pending"]
        result["status"] = next((s for s in STATUSES if s in flags), "graded")
        tm = res["times"]
        t_end = time.monotonic()
        result["timing"] = {
            "setup": round(tm["start"] - t0, 3),
            "kernel_start": round(tm["kernel_ready"] - tm["start"], 3),
            "execution": round(tm.get("executed", tm["kernel_ready"]) - tm["kernel_ready"], 3),
            "clean_room": round(tm.get("clean_room", tm["kernel_stopped"]) - tm.get("executed", tm["kernel_ready"]), 3),
            "feedback": round(tm["feedback"] - tm.get("clean_room", tm["kernel_stopped"]), 3),
            "teardown": round(t_end - tm["feedback"], 3),  # result written, the driver's exit
        }
        result["proxy_calls"] = res.get("calls", 0)
        result["driver_maxrss_mb"] = res.get("driver_maxrss_mb")
        return self._finish(result, t0)

    def _finish(self, result: dict, t0: float, root: Path | None = None) -> dict:
        result["score"] = float(sum(result["parts"].values()))
        result["max_score"] = float(sum(p for _, p in self.parts))
        result["seconds"] = round(time.monotonic() - t0, 2)
        result.setdefault("scratch", None)
        return result


class AssignmentGrader:
    """Grading one assignment: one :class:`Grader` per notebook, each notebook graded on its own as nbgrader
    does (its own kernel, its own clean room), the results joined into one per student. This course's labs
    are one notebook each (``source/<lab>/<lab>.ipynb``); nbgrader's ``ps1`` has ``problem1.ipynb`` and
    ``problem2.ipynb``, whose parts are named ``problem1:<grade_id>`` (:func:`~courselib.grading.course.part_key`)
    and whose submissions are folders ``<student>/ps1/``. A notebook missing from a submission scores 0 on
    every part, as nbgrader records it; the submission is ``missing`` only when every notebook is.
    """

    def __init__(self, lab, course, limits, base, hide, feedback, sandboxed):
        self.lab, self.course, self.limits, self.base = lab, course, limits, base
        self.feedback, self.sandboxed = feedback, sandboxed
        self.notebooks = lab_notebooks(lab, course)
        self.graders = {nb: Grader(lab, course, limits, base, hide, feedback, sandboxed, nb) for nb in self.notebooks}
        self.parts = [(self.key(nb, g), p) for nb, gr in self.graders.items() for g, p in gr.parts]

    @property
    def single(self) -> bool:
        return self.notebooks == [self.lab]

    def key(self, notebook: str, grade_id: str) -> str:
        return part_key(self.lab, notebook, grade_id, self.notebooks)

    def _joined(self, attr: str) -> dict:
        return {self.key(nb, g): v for nb, gr in self.graders.items() for g, v in getattr(gr, attr).items()}

    @property
    def tiers(self) -> dict:
        return self._joined("tiers")

    @property
    def tier_reasons(self) -> dict:
        return self._joined("tier_reasons")

    def make_template(self) -> None:
        for gr in self.graders.values():
            gr.make_template()

    def calibrate(self) -> None:
        for gr in self.graders.values():
            gr.calibrate()

    def grade_one(self, job: Job) -> GradeResult:
        if self.single:
            return self.graders[self.lab].grade_one(job)
        t0 = time.monotonic()
        results = {}
        for nb, gr in self.graders.items():
            path = job.notebook / gr.nbname if job.notebook is not None else None
            results[nb] = gr.grade_one(Job(job.idx, job.student, path if path and path.is_file() else None, job.key))
        present = [r for r in results.values() if r["status"] != "missing"]
        out = new_result(
            job.student,
            self.lab,
            job.key,
            self.parts,
            status=next((s for s in STATUSES if any(r["status"] == s for r in present)), "graded")
            if present
            else "missing",
            notes=[f"{nb}: {n}" for nb, r in results.items() for n in r["notes"]],
        )
        out["parts"] = {self.key(nb, g): v for nb, r in results.items() for g, v in r["parts"].items()}
        out["scratch"] = [r["scratch"] for r in results.values() if r.get("scratch")]
        for field in ("part_status", "tiers"):
            out[field] = {self.key(nb, g): v for nb, r in results.items() for g, v in r.get(field, {}).items()}
        out["pending"] = [self.key(nb, g) for nb, r in results.items() for g in r.get("pending", [])]
        timings = [r["timing"] for r in results.values() if "timing" in r]
        if timings:
            out["timing"] = {k: round(sum(t.get(k, 0.0) for t in timings), 3) for k in timings[0]}
        out["proxy_calls"] = sum(r.get("proxy_calls", 0) for r in results.values())
        out["driver_maxrss_mb"] = max((r.get("driver_maxrss_mb") or 0 for r in results.values()), default=None)
        out["score"] = float(sum(out["parts"].values()))
        out["seconds"] = round(time.monotonic() - t0, 2)
        return out
