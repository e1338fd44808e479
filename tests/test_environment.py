"""The set-up files agree with each other: environment.yml vs pyproject.toml, constraints pins, CI script."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch"}  # PyPI name -> conda-forge name


def pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def conda_dependencies(env: dict) -> dict[str, SpecifierSet]:
    deps = {}
    for item in env["dependencies"]:
        if isinstance(item, str):
            m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", item)
            name, spec = m.group(1).lower(), m.group(2).replace(" ", "")
            if name in ("python", "pip"):
                continue
            deps[name] = SpecifierSet(spec)
    return deps


def compare(py_deps: list[str], env: dict) -> list[str]:
    """Differences between pyproject's dependencies and environment.yml's conda section."""
    conda = conda_dependencies(env)
    problems = []
    wanted = {}
    for line in py_deps:
        req = Requirement(line)
        wanted[CONDA_NAMES.get(req.name.lower(), req.name.lower())] = req.specifier
    for name, spec in wanted.items():
        if name not in conda:
            problems.append(f"{name} is in pyproject.toml but not in environment.yml")
        elif conda[name] != spec:
            problems.append(f"{name}: pyproject says '{spec}', environment.yml says '{conda[name]}'")
    for name in conda:
        if name not in wanted:
            problems.append(f"{name} is in environment.yml but not in pyproject.toml")
    return problems


def test_environment_matches_pyproject():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert compare(pyproject()["project"]["dependencies"], env) == []
    assert "python=3.11" in env["dependencies"] and "conda-forge" in env["channels"]
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    extras = set(pyproject()["project"]["optional-dependencies"])
    assert any(all(e in p for e in extras) for p in pip_section), (
        "the pip section installs the package with every extra"
    )


def test_compare_catches_disagreements():
    env = {"dependencies": ["python=3.11", "numpy>=1.26", "pandas"]}
    problems = compare(["numpy>=2", "torch>=2.2"], env)
    assert any("numpy" in p for p in problems)
    assert any("pytorch is in pyproject" in p for p in problems)
    assert any("pandas is in environment.yml" in p for p in problems)


def test_constraints_pin_what_the_course_machines_need():
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower()] = version
    assert pins["torch"] == "2.13.0"
    assert pins["jupyter-book"].startswith("1.")
    assert pins["nbgrader"].startswith("0.9.")
    assert pins["nbval"].startswith("0.11")
    for name in ("faiss-cpu", "numba", "ipywidgets", "pytest-xdist", "scikit-learn", "numpy"):
        assert name in pins, name
    # the package metadata keeps ranges: no exact torch pin there
    assert not any(d.replace(" ", "").startswith("torch==") for d in pyproject()["project"]["dependencies"])


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in readme and "make book" in readme
    assert re.search(r"^make test$", ci, re.M)


def test_makefile_targets_are_phony():
    mk = (REPO / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:(.*)$", mk, re.M).group(1).split()
    assert {"book", "test"} <= set(phony)


def test_book_excludes_venv_and_build_products():
    cfg = yaml.safe_load((REPO / "_config.yml").read_text())
    pats = " ".join(cfg["exclude_patterns"])
    for folder in (".venv", "labs", "tests", "benchmarks", "_build"):
        assert folder in pats


def test_xdist_groups_keep_their_tests_on_one_worker(tmp_path):
    """`make test` runs `pytest -n 2 --dist loadgroup`: the tests of one xdist_group (the book build, the
    grading runs, the cluster) must share one worker, or a second worker waits for the book's lock and
    builds nothing (pytest 9.2 broke this silently; pyproject.toml keeps pytest below it)."""
    (tmp_path / "test_groups.py").write_text(
        "import pytest\n\n"
        + "".join(f'@pytest.mark.xdist_group("g")\ndef test_grouped_{i}():\n    pass\n\n' for i in range(3))
        + "".join(f"def test_free_{i}():\n    pass\n\n" for i in range(6))
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-n",
            "2",
            "--dist",
            "loadgroup",
            "-v",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            "-o",
            "addopts=",
            str(tmp_path / "test_groups.py"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ran = re.findall(r"\[(gw\d)\].*PASSED \S*::(test_\w+)(@\w+)?", proc.stdout)
    assert len(ran) == 9, proc.stdout[-3000:]
    grouped = {(worker, suffix) for worker, name, suffix in ran if name.startswith("test_grouped")}
    assert grouped and all(suffix == "@g" for _, suffix in grouped), f"no group suffix: {grouped}"
    assert len({worker for worker, _ in grouped}) == 1, f"one group ran on several workers: {grouped}"
