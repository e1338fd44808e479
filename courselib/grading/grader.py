"""Grading one submission: a scratch course, a sandboxed kernel, a tamper check, the clean room, feedback.

:class:`Grader` holds the read-only context of one run (the lab's source and release, the limits, the
sandbox settings); :meth:`Grader.grade_one` grades one :class:`Job` and returns a result dict. It is the
one code path for grading a submission, whichever scheduler calls it (:mod:`courselib.grading.batch`).
"""

from __future__ import annotations

import ctypes
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

from nbgrader.api import Gradebook

import courselib

from . import sandbox
from .course import NOTEBOOK_SUFFIX, lab_parts, nbgrader, nbgrader_env
from .intake import check_notebook

STATUSES = ("graded", "timeout", "memory", "output-limit", "crashed", "invalid-notebook", "tampered", "missing")
"""Submission statuses, in the order of precedence used when several apply."""

GRADER_VERSION = "courselib-grade-1"


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


def _course_config(root: Path, limits: Limits, work: Path | None) -> str:
    lines = [
        "c = get_config()  # noqa: F821",
        "c.CourseDirectory.course_id = 'ondevice-ml'",
        f"c.CourseDirectory.root = {str(root)!r}",
        f"c.CourseDirectory.db_url = {('sqlite:///' + str(root / 'gradebook.db'))!r}",
        "c.ClearSolutions.code_stub = {'python': '# YOUR CODE HERE\\nraise NotImplementedError()'}",
        f"c.Execute.timeout = {limits.cell_timeout}",
        "c.Execute.interrupt_on_timeout = True",
        "c.OverwriteCells.add_missing_cells = True",
        "c.OverwriteCells.missing_cell_notification = "
        "'This cell (id:{cell_id}) was missing from the submission; nbgrader restored it.\\n'",
        "c.Execute.startup_timeout = 120",
        "c.Execute.raise_on_iopub_timeout = False",
        f"c.LimitedExecute.max_output_bytes = {limits.output_kb * 1024}",
        "from courselib.grading.execute import LimitedExecute",
        "from nbgrader.preprocessors import IgnorePattern, LimitOutput, SaveAutoGrades, AssignLatePenalties, "
        "CheckCellMetadata",
        "from nbconvert.preprocessors import ClearMetadataPreprocessor",
        "c.Autograde.autograde_preprocessors = [LimitedExecute, IgnorePattern, ClearMetadataPreprocessor, "
        "LimitOutput, SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]",
    ]
    if work is not None:
        lines += [
            "c.Execute.kernel_name = 'courselib-sandbox'",
            "c.KernelManager.transport = 'ipc'",
            f"c.KernelManager.ip = {str(work / 'k')!r}",
        ]
    return "\n".join(lines) + "\n"


def _run(cmd: list[str], *, cwd, env, timeout: float) -> tuple[int | None, str]:
    """Run ``cmd`` in its own session; kill the whole session on timeout. Return (exit code or None, output)."""

    def preexec():
        os.setsid()
        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # die with the grading process

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


def _notebook_cells(nb: dict) -> list[dict]:
    """Source cells classified for the clean room: test / solution / instructor."""
    out = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        meta = cell.get("metadata", {}).get("nbgrader", {})
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if meta.get("grade"):
            out.append({"kind": "test", "grade_id": meta["grade_id"], "source": src})
        elif meta.get("solution"):
            out.append({"kind": "solution", "grade_id": meta.get("grade_id"), "source": src})
        elif meta.get("locked"):
            out.append({"kind": "instructor", "grade_id": meta.get("grade_id"), "source": src})
    return out


def _error_names(cell: dict) -> list[str]:
    return [o.get("ename", "") for o in cell.get("outputs", []) if o.get("output_type") == "error"]


class Job:
    def __init__(self, idx: int, student: str, notebook: Path | None, key: str):
        self.idx, self.student, self.notebook, self.key = idx, student, notebook, key


class Grader:
    """Shared, read-only context of one :func:`grade` run (workers only read it)."""

    def __init__(self, lab, course, limits, base, hide, feedback, sandboxed):
        self.lab, self.course, self.limits, self.base = lab, course, limits, base
        self.hide, self.keep, self.feedback, self.sandboxed = hide, kept_paths(), feedback, sandboxed
        self.source_nb = json.loads((course / "source" / lab / f"{lab}{NOTEBOOK_SUFFIX}").read_text())
        self.release_nb = json.loads((course / "release" / lab / f"{lab}{NOTEBOOK_SUFFIX}").read_text())
        self.cells = _notebook_cells(self.source_nb)
        self.parts = lab_parts(lab, course)
        self.release_extras = [
            p
            for p in (course / "release" / lab).iterdir()
            if p.name != f"{lab}{NOTEBOOK_SUFFIX}" and not p.name.startswith(".")
        ]
        self.template = base / "template"
        self.verifiable: set[str] = set()

    def env(self, jupyter_dir: Path | None = None, runtime: Path | None = None) -> dict:
        env = nbgrader_env()
        env["PYTHONHASHSEED"] = "0"
        env.pop("JUPYTER_CONFIG_DIR", None)
        if jupyter_dir is not None:
            env["JUPYTER_PATH"] = str(jupyter_dir)
        if runtime is not None:
            env["JUPYTER_RUNTIME_DIR"] = str(runtime)
        return env

    # ------------------------------------------------------------------ scratch set-up
    def make_template(self) -> None:
        t = self.template
        (t / "source").mkdir(parents=True)
        shutil.copytree(self.course / "source" / self.lab, t / "source" / self.lab)
        (t / "nbgrader_config.py").write_text(_course_config(t, self.limits, None))
        nbgrader(["generate_assignment", self.lab, "--force"], t)

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
        with both the release and the source version; nbgrader restores them from its checksums)."""

        def locked(cells):
            out = {}
            for cell in cells:
                meta = cell.get("metadata", {}).get("nbgrader", {})
                if meta.get("locked") or meta.get("grade"):
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

    def make_work(self, root: Path, notebook_bytes: bytes | None) -> Path:
        work = root / "work"
        work.mkdir(parents=True)
        for extra in self.release_extras:
            (shutil.copytree if extra.is_dir() else shutil.copy)(extra, work / extra.name)
        if notebook_bytes is not None:
            (work / f"{self.lab}{NOTEBOOK_SUFFIX}").write_bytes(notebook_bytes)
        if self.sandboxed:
            for dirpath, _dirnames, filenames in os.walk(work):
                for n in [dirpath, *[os.path.join(dirpath, f) for f in filenames]]:
                    os.chown(n, 65534, 65534)
        return work

    # ------------------------------------------------------------------ clean room
    def clean_room(self, root: Path, work: Path, student_cells: list[str]) -> dict[str, bool]:
        (work / "cells.json").write_text(json.dumps(student_cells))
        if self.sandboxed:
            os.chown(work / "cells.json", 65534, 65534)
        serve = [sys.executable, "-m", "courselib.grading.cleanroom", "serve", str(work / "cells.json")]
        if self.sandboxed:
            serve = sandbox.command(self.sandbox_config(work, root / "sandbox-serve.json"), serve)
        clean = root / "clean"
        clean.mkdir(exist_ok=True)
        for extra in self.release_extras:
            (shutil.copytree if extra.is_dir() else shutil.copy)(extra, clean / extra.name)
        spec = {
            "cells": self.cells,
            "student_argv": serve,
            "cwd": str(work),
            "startup_timeout": self.limits.notebook_timeout,
            "call_timeout": self.limits.cell_timeout,
        }
        (root / "clean-spec.json").write_text(json.dumps(spec))
        out = root / "clean-result.json"
        code, log = _run(
            [sys.executable, "-m", "courselib.grading.cleanroom", "check", str(root / "clean-spec.json"), str(out)],
            cwd=clean,
            env=self.env(),
            timeout=2 * self.limits.notebook_timeout + 60,
        )
        if code != 0 or not out.exists():
            return {}
        return json.loads(out.read_text())

    def calibrate(self) -> None:
        """Which parts the clean room can check: those the solution passes there."""
        root = self.base / "calibration"
        root.mkdir()
        work = self.make_work(root, None)
        last = max((i for i, c in enumerate(self.cells) if c["kind"] == "test"), default=len(self.cells))
        cells = [c["source"] for c in self.cells[:last] if c["kind"] != "test"]
        res = self.clean_room(root, work, cells)
        self.verifiable = {g for g, ok in res.items() if ok}

    # ------------------------------------------------------------------ one submission
    def grade_one(self, job: Job) -> dict:
        t0 = time.monotonic()
        result = {
            "student_id": job.student,
            "lab": self.lab,
            "key": job.key,
            "notes": [],
            "parts": {g: 0.0 for g, _ in self.parts},
        }
        if job.notebook is None:
            result.update(status="missing", notes=[f"no {self.lab}/{self.lab}{NOTEBOOK_SUFFIX}"])
            return self._finish(result, t0)
        data = job.notebook.read_bytes()
        why = check_notebook(data)
        if why:
            result.update(status="invalid-notebook", notes=[why])
            return self._finish(result, t0)
        root = self.base / f"s{job.idx}"
        course = root / "course"
        (course / "source").mkdir(parents=True)
        shutil.copytree(self.template / "source" / self.lab, course / "source" / self.lab)
        shutil.copy(self.template / "gradebook.db", course / "gradebook.db")
        work = self.make_work(root, data)
        jupyter = root / "jupyter"
        if self.sandboxed:
            sandbox.write_kernelspec(jupyter, "courselib-sandbox", self.sandbox_config(work, root / "sandbox.json"))
        (course / "nbgrader_config.py").write_text(
            _course_config(course, self.limits, work if self.sandboxed else None)
        )
        sub = course / "submitted" / job.student / self.lab
        sub.mkdir(parents=True)
        (sub / f"{self.lab}{NOTEBOOK_SUFFIX}").write_bytes(data)
        t1 = time.monotonic()
        code, log = _run(
            [
                sys.executable,
                "-m",
                "nbgrader",
                "autograde",
                self.lab,
                "--create",
                "--force",
                f"--student={job.student}",
            ],
            cwd=course,
            env=self.env(jupyter, work),
            timeout=self.limits.notebook_timeout,
        )
        auto_nb = course / "autograded" / job.student / self.lab / f"{self.lab}{NOTEBOOK_SUFFIX}"
        flags = []
        result["timing"] = {"autograde": round(time.monotonic() - t1, 2)}
        result["log"] = [
            ln
            for ln in log.splitlines()
            if ("[AutogradeApp | WARNING]" in ln or "ERROR" in ln) and "Attribute 'checksum'" not in ln
        ][-20:]
        if code is None:
            result.update(status="timeout", notes=[f"notebook exceeded {self.limits.notebook_timeout} s"])
            return self._finish(result, t0, root)
        if code != 0 or not auto_nb.exists():
            dead = "Kernel died" in log or "DeadKernelError" in log
            result.update(
                status="crashed",
                notes=[
                    "the kernel died" if dead else "nbgrader autograde failed",
                    log.strip().splitlines()[-1][:300] if log.strip() else "",
                ],
            )
            return self._finish(result, t0, root)
        changed = self.tampering(json.loads(data))
        if changed:
            flags.append("tampered")
            result["notes"].append("restored from the source: " + ", ".join(changed))
        auto = json.loads(auto_nb.read_text())
        student_cells, skipped = [], 0
        grade_idx = [i for i, c in enumerate(auto["cells"]) if c.get("metadata", {}).get("nbgrader", {}).get("grade")]
        last_grade = max(grade_idx, default=len(auto["cells"]))
        for i, cell in enumerate(auto["cells"]):
            if cell["cell_type"] != "code":
                continue
            meta = cell.get("metadata", {}).get("nbgrader", {})
            late_instructor = i > last_grade and meta.get("locked") and not meta.get("solution")
            enames = _error_names(cell)
            if "CellTimeoutError" in enames:
                flags.append("timeout")
            if "MemoryError" in enames:
                flags.append("memory")
            if "OutputLimitExceeded" in enames:
                flags.append("output-limit")
            if "DeadKernelError" in enames:
                flags.append("crashed")
            if meta.get("grade") or late_instructor:  # tests never reach the student's process
                continue
            if {"CellTimeoutError", "OutputLimitExceeded"} & set(enames):
                skipped += 1
                continue
            student_cells.append("".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"])
        with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
            nb_scores = {
                g: float(gb.find_grade(g, self.lab, self.lab, job.student).score or 0.0) for g, _ in self.parts
            }
        # nothing passed in the kernel: nothing to confirm (the final score is the smaller of the two)
        t1 = time.monotonic()
        clean = self.clean_room(root, work, student_cells) if any(nb_scores.values()) else {}
        result["timing"]["clean_room"] = round(time.monotonic() - t1, 2)
        for g, _pts in self.parts:
            score = nb_scores[g]
            if g in self.verifiable and not clean.get(g, False):
                if score > 0:
                    flags.append("tampered")
                    result["notes"].append(f"{g}: passed in the student's kernel, failed in the clean room")
                score = 0.0
            result["parts"][g] = score
        status = next((s for s in STATUSES if s in flags), "graded")
        result["status"] = status
        with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
            for g, _ in self.parts:
                gr = gb.find_grade(g, self.lab, self.lab, job.student)
                gr.auto_score = result["parts"][g]
            gb.db.commit()
        t1 = time.monotonic()
        if self.feedback:
            fcode, flog = _run(
                [
                    sys.executable,
                    "-m",
                    "nbgrader",
                    "generate_feedback",
                    self.lab,
                    "--force",
                    f"--student={job.student}",
                ],
                cwd=course,
                env=self.env(),
                timeout=300,
            )
            if fcode != 0:
                result["notes"].append("feedback failed")
            result["timing"]["feedback"] = round(time.monotonic() - t1, 2)
        result["scratch"] = str(course)
        return self._finish(result, t0, root)

    def _finish(self, result: dict, t0: float, root: Path | None = None) -> dict:
        result["score"] = float(sum(result["parts"].values()))
        result["max_score"] = float(sum(p for _, p in self.parts))
        result["seconds"] = round(time.monotonic() - t0, 2)
        result.setdefault("scratch", None)
        return result
