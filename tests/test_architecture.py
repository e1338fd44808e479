"""The package shows its architecture: content modules (the book's appendix) never import the grading layer,
and every module's dependencies are readable off its header (imports at the top)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import courselib

PKG = Path(courselib.__file__).resolve().parent
CONTENT = sorted(p for p in PKG.glob("*.py"))
GRADING = sorted((PKG / "grading").glob("*.py"))


def _imports(tree: ast.AST):
    """(module name, node) of every import in ``tree``, relative imports resolved against courselib."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                yield "courselib." + (node.module or ""), node
            else:
                yield node.module or "", node


def _grading_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for name, node in _imports(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
        if name.startswith("courselib.grading") or (name == "courselib." and "grading" in names):
            out.append(f"{path.name}:{node.lineno}")
        elif name == "courselib" and "grading" in names:
            out.append(f"{path.name}:{node.lineno}")
    return out


def test_the_two_layers_exist():
    names = {p.stem for p in CONTENT}
    assert {"data", "training", "measure", "binary_codes", "itq", "binaryconnect", "pruning"} <= names
    assert {"course", "batch", "grader", "sandbox", "cleanroom", "leaderboard", "quiz", "cli"} <= {
        p.stem for p in GRADING
    }
    assert not names & {"sandbox", "cleanroom", "quiz", "cli", "grading"}, "instructor tooling in the content layer"


@pytest.mark.parametrize("path", CONTENT, ids=lambda p: p.name)
def test_content_never_imports_the_grading_layer(path):
    assert _grading_imports(path) == []


def test_the_boundary_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from .grading import batch\nfrom courselib import grading\nimport courselib.grading.quiz\n")
    assert len(_grading_imports(bad)) == 3


def _late_imports(path: Path) -> list[str]:
    """Imports of courselib modules inside functions or classes (dependencies hidden from the header)."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    out = []
    for name, node in _imports(tree):
        if id(node) not in top and name.startswith("courselib"):
            out.append(f"{path.name}:{node.lineno} {name}")
    return out


@pytest.mark.parametrize("path", CONTENT + GRADING, ids=lambda p: p.parent.name + "/" + p.name)
def test_courselib_imports_sit_at_the_top(path):
    assert _late_imports(path) == []


def test_the_cli_is_the_only_command_line():
    """One command (``courselib``, sub-commands): no module of the package runs as a script of its own,
    except the entry points the grader starts as processes of their own: the sandbox's supervisor, the clean
    room's driver and the sandboxed runner of students' programs (``testing.py``)."""
    allowed = {"sandbox.py", "cleanroom.py", "cli.py", "testing.py"}
    for path in CONTENT + GRADING:
        if path.name in allowed:
            continue
        text = path.read_text()
        assert '__name__ == "__main__"' not in text and "__main__.py" not in path.name, (
            f"{path.name} has its own command line"
        )
