"""book/syllabus_map.yml: every filled-in entry points at a real label, function, lab question and test."""

from __future__ import annotations

import ast
import importlib
import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MAP = yaml.safe_load((REPO / "book" / "syllabus_map.yml").read_text())
ENTRIES = [(part["part"], c) for part in MAP["parts"] for c in part["concepts"]]
FIELDS = ("section", "function", "lab", "test")


def book_labels() -> set[str]:
    labels = set()
    for md in (REPO / "book").rglob("*.md"):
        labels |= set(re.findall(r"^\(([A-Za-z0-9_\-:.]+)\)=\s*$", md.read_text(), re.M))
    return labels


def resolve_function(path: str):
    module, _, attr = path.rpartition(".")
    obj = importlib.import_module(module)
    return getattr(obj, attr)


def lab_grade_ids(lab: str) -> set[str]:
    nb = json.loads((REPO / "labs" / "source" / lab / f"{lab}.ipynb").read_text())
    return {
        c["metadata"]["nbgrader"]["grade_id"] for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade")
    }


def test_node_exists(node: str) -> bool:
    path, *names = node.split("::")
    file = REPO / path
    if not file.exists():
        return False
    tree = ast.parse(file.read_text())
    scope = tree.body
    for name in names:
        name = name.split("[")[0]
        found = [n for n in scope if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name]
        if not found:
            return False
        scope = found[0].body
    return True


test_node_exists.__test__ = False  # a helper, not a test


def test_part_zero_is_complete():
    part0 = [c for p, c in ENTRIES if p.startswith("0.")]
    assert part0 and all(not c.get("pending") and all(c.get(f) for f in FIELDS) for c in part0)


def test_every_syllabus_part_is_in_the_map():
    parts = {p.split(".")[0] for p, _ in ENTRIES}
    assert parts == {"0", "1", "2", "3", "4"}


@pytest.mark.parametrize(
    "part, entry",
    [e for e in ENTRIES if not e[1].get("pending")],
    ids=[c["concept"][:40] for _, c in ENTRIES if not c.get("pending")],
)
def test_entry_resolves(part, entry):
    missing = [f for f in FIELDS if not entry.get(f)]
    assert not missing, f"{entry['concept']}: missing {missing} (mark it pending: true until it lands)"
    assert entry["section"] in book_labels(), f"no MyST label ({entry['section']})= in book/"
    assert callable(resolve_function(entry["function"]))
    lab, _, grade_id = entry["lab"].partition(":")
    assert grade_id in lab_grade_ids(lab), f"{lab} has no graded cell {grade_id}"
    assert test_node_exists(entry["test"]), f"no test {entry['test']}"


def test_the_checker_rejects_bad_references():
    assert not test_node_exists("tests/test_memory.py::test_that_does_not_exist")
    assert test_node_exists("tests/test_memory.py::test_bytes_per_value_and_ratios")
    with pytest.raises((ImportError, AttributeError)):
        resolve_function("courselib.memory.no_such_function")
    assert "intro-memory" in book_labels() and "no-such-label" not in book_labels()
