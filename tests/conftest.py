"""Shared fixtures: the real MNIST test set beside the repo, the venv's bin on PATH, seeds, the built book."""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from courselib.grading.batch import calibrate
from courselib.grading.mutants import keep_calibration, reuse_calibration

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"
HTML = REPO / "_build" / "html"

# nbgrader runs `alembic` by name: put this interpreter's bin first on PATH for every test.
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
# xdist runs two workers on two cores: every process a test starts (nbgrader's kernels, the book's, JupyterLab's)
# gets one thread per BLAS/OpenMP pool, so that two workers never keep more threads busy than there are cores
# (a spinning pool on a busy core slowed grading tests several-fold). Not numba's: tests set it to 2 themselves.
os.environ.update({k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
# No MPLBACKEND here: kernels started by the tests inherit the environment, and a forced Agg backend
# would stop notebooks from showing their figures inline.


@pytest.fixture
def shared_mnist() -> Path:
    """Path to ../shared/data/mnist (the real MNIST test set); skips the test when it is absent."""
    if not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("../shared/data/mnist is not present (CI and the course machines have it)")
    return SHARED_MNIST


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _torch_threads():
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def built_book():
    """Build the book once per test run, whichever module or xdist worker asks first.

    The build (lab releases, then tools/build_book.py with -W into the repository's `_build/html`) is
    serialized by a file lock and recorded with the run's id, so the modules that use it (test_book.py,
    test_browser.py) never inspect pages while a second build rewrites them.
    """
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid-{os.getpid()}"
    HTML.parent.mkdir(exist_ok=True)
    marker = HTML.parent / ".pytest_built_by"
    with open(HTML.parent / ".pytest_book.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and marker.read_text() == run_id and (HTML / "index.html").exists():
            return HTML
        marker.unlink(missing_ok=True)
        rel = subprocess.run(
            [str(Path(sys.executable).parent / "courselib"), "release"],
            cwd=REPO / "labs",
            capture_output=True,
            text=True,
        )
        assert rel.returncode == 0, "courselib release failed:\n" + rel.stdout[-2000:] + rel.stderr[-4000:]
        proc = subprocess.run(
            [sys.executable, str(REPO / "tools" / "build_book.py")], cwd=REPO, capture_output=True, text=True
        )
        log = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)
        assert proc.returncode == 0, (
            "book build failed:\n"
            + "\n".join(ln for ln in log.splitlines() if "WARNING" in ln or "ERROR" in ln or "Error" in ln)[-5000:]
            + log[-3000:]
        )
        marker.write_text(run_id)
    return HTML


@pytest.fixture(scope="session")
def calibrations(tmp_path_factory) -> Path:
    """One folder of ``courselib grade`` calibrations (``_calibration*.json``) per lab, shared by the xdist
    workers of this run (their base folders have one parent), so that the no-leak test of a lab and its mutant
    chunks grade the lab's solution for calibration once between them when they run one after the other.
    The cache key (source cells, limits, versions) decides reuse; a key that differs recalibrates. Without
    xdist the base folder is the run's own (its parent holds earlier runs, made by other code)."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "calibrations"


@pytest.fixture(scope="session", autouse=True)
def _program_cache(tmp_path_factory):
    """One folder of lowered ExecuTorch programs for the run (``COURSELIB_PROGRAM_CACHE``, read by
    courselib.deploy.export_executorch; the xdist workers share it as they share :func:`calibrations`), so that
    lab 7's reference programs are lowered once in the run, not once per graded submission and scratch course.
    Every process the tests start inherits it except the grading sandbox, whose environment is its own."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "programs"
    os.environ["COURSELIB_PROGRAM_CACHE"] = str(folder)
    yield folder
    os.environ.pop("COURSELIB_PROGRAM_CACHE", None)


def calibrate_once(calibrations: Path, lab: str, course: Path) -> None:
    """Give ``course`` the run's calibration of ``lab`` (default limits): made in ``course`` and published to
    ``calibrations / lab`` by the first test that asks, copied from there for the others. One worker calibrates
    while the others wait for it (two tests of a lab that start together would otherwise both grade its
    solution, lab 7's ~90 s each)."""
    calibrations.mkdir(parents=True, exist_ok=True)
    with open(calibrations / f".{lab}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if any((calibrations / lab).glob("_calibration*.json")):
            reuse_calibration(calibrations / lab, course, lab)
        else:
            calibrate(lab, course)
            keep_calibration(calibrations / lab, course, lab)
