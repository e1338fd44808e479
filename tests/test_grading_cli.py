"""The ``courselib`` command imports only what a command needs: ``courselib --help``, ``courselib labs`` and a
refused unknown lab never import torch, ExecuTorch, Dask, numba, nbgrader or nbconvert (seconds of CPU each).
Deterministic: the modules a subprocess imported, listed at its exit, not a timing."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from courselib import grading

REPO = Path(__file__).resolve().parents[1]
HEAVY = {
    "torch",
    "executorch",
    "dask",
    "distributed",
    "numba",
    "nbgrader",
    "nbconvert",
    "nbformat",  # its jsonschema format checkers alone cost ~2 s of CPU
    "sqlalchemy",
    "sklearn",
    "scipy",
    "matplotlib",
}

# runs the console script's function and writes sorted(sys.modules) to argv[1] at exit, whatever the exit
PROBE = """
import atexit, json, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
from courselib.grading.cli import main
sys.exit(main(sys.argv[1:]))
"""


def imported_by(args: list[str], tmp_path: Path) -> tuple[set[str], subprocess.CompletedProcess]:
    out = tmp_path / "modules.json"
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(out), *args], cwd=REPO / "labs", capture_output=True, text=True, timeout=120
    )
    return {m.split(".")[0] for m in json.loads(out.read_text())}, proc


@pytest.mark.parametrize(
    "args, code, says",
    [
        (["--help"], 0, "usage: courselib"),
        (["labs"], 0, "lab00_memory: "),
        (["grade", "lab99", "."], 2, "unknown lab"),
        (["export", "lab99"], 2, "unknown lab"),
    ],
    ids=["help", "labs", "grade-unknown-lab", "export-unknown-lab"],
)
def test_light_commands_import_nothing_heavy(tmp_path, args, code, says):
    modules, proc = imported_by(args, tmp_path)
    assert proc.returncode == code, proc.stderr
    assert says in proc.stdout + proc.stderr
    assert modules & HEAVY == set(), sorted(modules & HEAVY)


def test_import_grading_is_lazy_and_complete(tmp_path):
    code = "import sys, courselib.grading as g; print(sorted(m for m in sys.modules if m.startswith('courselib')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(out) == ["courselib", "courselib.grading"]
    # every public name resolves, through the package and through `from ... import`
    for name in grading.__all__:
        assert getattr(grading, name) is not None
    from courselib.grading import Limits, collect_submissions, grade  # noqa: F401

    assert grading.batch.grade is grade and grading.Limits is grading.grader.Limits
    with pytest.raises(AttributeError):
        grading.no_such_thing  # noqa: B018


def test_grade_help_shows_the_graders_defaults(tmp_path):
    _, proc = imported_by(["grade", "--help"], tmp_path)
    d = grading.Limits()
    for text in (f"seconds per cell ({d.cell_timeout})", f"kernel memory, MiB ({d.memory_mb})"):
        assert text in " ".join(proc.stdout.split()), proc.stdout


def test_the_console_script_and_the_mutants_choices():
    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "courselib"]
    assert ep.value == "courselib.grading.cli:main"
    from courselib.grading import cli, mutants

    assert cli.GRADERS == mutants.GRADERS
