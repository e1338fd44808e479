"""book/syllabus_map.yml: every concept of the syllabus is explained, implemented, tested and *graded*.

Each map entry names a MyST label, a courselib function, a pytest node, a lab part (``lab: "<lab>:<grade_id>"``
of a graded test cell) and a mutant (``mutant: <id>`` in ``labs/mutants/<lab>.yml``). The checks are real:

* coverage: every concept of the syllabus (``../shared/SYLLABUS.md``, copied below as ``SYLLABUS_CONCEPTS``)
  has an entry with a graded lab part, and the copy matches the syllabus file wherever that file is present;
* the cited test cell (visible and hidden tests of the source notebook) mentions the entry's courselib
  function, so the part exercises the concept and not something next to it;
* the entry's mutant, a recorded wrong answer for the concept, exists in the lab's bank and must make that
  part lose points (``tests/test_lab_mutants.py`` grades every mutant with nbgrader and proves it);
* removing an entry, its ``lab`` or its ``mutant`` makes the checks fail (the negative tests at the end).
"""

from __future__ import annotations

import ast
import copy
import importlib
import json
import re
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MAP_PATH = REPO / "book" / "syllabus_map.yml"
SYLLABUS = REPO.parent / "shared" / "SYLLABUS.md"
LABS = REPO / "labs"
MAP = yaml.safe_load(MAP_PATH.read_text())
FIELDS = ("section", "function", "lab", "test", "mutant")

# The syllabus' concepts, one key per bullet of ../shared/SYLLABUS.md (the bullet's words before its first
# ':', ';', ',', '(', '?' or dash), each with the phrases that name its concepts in the map. Every phrase must
# match (case-insensitive substring) the `concept` of exactly one map entry, and that entry must be graded.
# When the syllabus changes, test_the_copy_matches_the_syllabus fails until this copy is brought up to date.
SYLLABUS_CONCEPTS = {
    "0": {
        "Model development vs deployment": ["development vs deployment"],
        "Memory representation": ["Memory representation", "Binarizing cuts memory", "Packed bits: ceil"],
        "Binary codes make similarity search cheap": [
            "Hamming distance = popcount",
            # the chapter "Binary codes and Hamming search": packed codes, Hamming distances, k-NN, cost
            "Packing bits into bytes",
            "Hamming distance on packed codes",
            "Exact Hamming k-NN",
            "similarity search cheap",
        ],
        "Goals": ["Goals: inference speed"],
    },
    "1": {
        "Threshold binarization": ["Threshold binarization"],
        "Evaluate binary codes for retrieval": ["precision@k", "Hamming-ranking mAP"],
        "Iterative Quantization": [
            "zero-centring and PCA",
            "quantization loss",
            "B-step",
            "R-step",
            "alternating minimization",
            "Baselines: PCA-direct",
        ],
    },
    "2": {
        "Convolutions in binary networks": [
            "Convolutions in binary networks",
            "Runtime comparison",
            "Memory: packed binary",
        ],
        "A simple approach": ["Deterministic binarization"],
        "A better approach": ["Stochastic binarization", "straight-through estimator"],
    },
    "3": {
        "Many weights barely affect performance": ["Many weights barely matter"],
        "Optimal Brain Damage": ["Optimal Brain Damage: Taylor", "Second derivatives h_kk", "OBD procedure"],
        "Does this really save space/time": ["sparse (CSR) storage"],
        "Pruning Filters for Efficient ConvNets": [
            "rank the filters",
            "Removing filters",
            "multiply-accumulates",
            "Layer sensitivity",
        ],
    },
    "4": {
        "Why not train an efficient network to begin with": ["Student-teacher framework"],
        "Distillation loss": ["Matching representations"],
        "Soft targets with temperature": ["Soft targets with temperature"],
        "Creating an efficient network": ["Creating an efficient network"],
        "Applications": ["Distilling an ensemble"],
    },
}


def entries(the_map: dict) -> list[dict]:
    return [c for part in the_map["parts"] for c in part["concepts"]]


def in_syllabus(the_map: dict) -> list[bool]:
    """Per entry: does its map part belong to the syllabus (parts beyond it, e.g. deployment, are extensions)?"""
    return [p["part"].split(".")[0] in SYLLABUS_CONCEPTS for p in the_map["parts"] for _ in p["concepts"]]


def syllabus_bullets(text: str) -> dict[str, list[str]]:
    """``{part number: [bullet key, ...]}`` of the syllabus' Markdown (keys as in SYLLABUS_CONCEPTS)."""
    out: dict[str, list[str]] = {}
    part = None
    for line in text.splitlines():
        m = re.match(r"^## (\d+)\.\s", line)
        if m:
            part = m.group(1)
            out[part] = []
        elif part is not None and line.startswith("- "):
            words = re.sub(r"[*_`\"]", "", line[2:])
            out[part].append(re.split(r"\s*(?:[:;,(?]|\s—\s|\s-\s)", words, maxsplit=1)[0].strip())
    return out


def book_labels() -> set[str]:
    labels = set()
    for md in (REPO / "book").rglob("*.md"):
        labels |= set(re.findall(r"^\(([A-Za-z0-9_\-:.]+)\)=\s*$", md.read_text(), re.M))
    return labels


def resolve_function(path: str):
    module, _, attr = path.rpartition(".")
    obj = importlib.import_module(module)
    return getattr(obj, attr)


@cache
def lab_cells(lab: str) -> dict[str, dict]:
    """``{grade_id: cell}`` of the lab's source notebook (the instructor's, with the hidden tests)."""
    path = LABS / "source" / lab / f"{lab}.ipynb"
    if not path.exists():
        return {}
    nb = json.loads(path.read_text())
    return {c["metadata"]["nbgrader"]["grade_id"]: c for c in nb["cells"] if "nbgrader" in c["metadata"]}


@cache
def mutant_bank(lab: str) -> dict[str, dict]:
    path = LABS / "mutants" / f"{lab}.yml"
    if not path.exists():
        return {}
    return {m["id"]: m for m in yaml.safe_load(path.read_text()).get("mutants", [])}


def node_exists(node: str) -> bool:
    """Whether ``node`` (``path::name[::name]``, parametrization ids allowed) names a test that exists."""
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


def graded_part(entry: dict) -> tuple[str, str, dict] | None:
    """``(lab, grade_id, cell)`` when the entry's ``lab`` names a graded test cell, else None."""
    lab, _, grade_id = str(entry.get("lab", "")).partition(":")
    cell = lab_cells(lab).get(grade_id)
    if cell is None or not cell["metadata"]["nbgrader"].get("grade") or cell["cell_type"] != "code":
        return None
    return lab, grade_id, cell


def grading_problems(entry: dict) -> list[str]:
    """What keeps the entry from being a graded concept: lab part, function in its tests, mutant."""
    name = entry.get("concept", "?")[:60]
    missing = [f for f in FIELDS if not entry.get(f)]
    if missing:
        return [f"{name}: missing {missing}"]
    part = graded_part(entry)
    if part is None:
        return [f"{name}: {entry['lab']!r} is not a graded test cell of a lab"]
    lab, grade_id, cell = part
    problems = []
    function = entry["function"].rpartition(".")[2]
    if not re.search(rf"\b{re.escape(function)}\b", "".join(cell["source"])):
        problems.append(f"{name}: the tests of {lab}:{grade_id} never mention {function} (do they test the concept?)")
    mutant = mutant_bank(lab).get(entry["mutant"])
    if mutant is None:
        problems.append(f"{name}: no mutant {entry['mutant']!r} in labs/mutants/{lab}.yml")
    elif grade_id not in mutant.get("breaks", []):
        problems.append(f"{name}: mutant {entry['mutant']} does not break {grade_id} (breaks {mutant.get('breaks')})")
    return problems


def reference_problems(entry: dict) -> list[str]:
    """The book label, the function and the pytest node must exist."""
    name = entry.get("concept", "?")[:60]
    problems = []
    if entry.get("section") not in book_labels():
        problems.append(f"{name}: no MyST label ({entry.get('section')})= in book/")
    try:
        if not callable(resolve_function(entry.get("function", ""))):
            problems.append(f"{name}: {entry['function']} is not callable")
    except (ImportError, AttributeError, ValueError):
        problems.append(f"{name}: no function {entry.get('function')!r}")
    if not node_exists(str(entry.get("test", ""))):
        problems.append(f"{name}: no test {entry.get('test')}")
    return problems


def coverage_problems(the_map: dict, concepts: dict = SYLLABUS_CONCEPTS) -> list[str]:
    """Every concept phrase of the syllabus matches exactly one entry, and that entry is graded."""
    problems = []
    for part, bullets in concepts.items():
        for bullet, phrases in bullets.items():
            for phrase in phrases:
                hits = [e for e in entries(the_map) if phrase.lower() in e.get("concept", "").lower()]
                if len(hits) != 1:
                    problems.append(f"part {part}, {bullet!r}: {len(hits)} map entries match {phrase!r} (want 1)")
                elif e_problems := grading_problems(hits[0]):
                    problems.append(f"part {part}, {bullet!r} ({phrase!r}) is not graded: {e_problems[0]}")
    return problems


def map_problems(the_map: dict) -> list[str]:
    """Everything the map check rejects: syllabus coverage, and every entry (extensions too) graded."""
    return coverage_problems(the_map) + [p for e in entries(the_map) for p in grading_problems(e)]


def test_the_copy_matches_the_syllabus():
    if not SYLLABUS.exists():
        pytest.skip(
            f"{SYLLABUS} is absent (a clone without ../shared): the copy SYLLABUS_CONCEPTS and the map itself "
            "are the concept list here; the other tests still check every entry"
        )
    want = syllabus_bullets(SYLLABUS.read_text())
    have = {part: list(bullets) for part, bullets in SYLLABUS_CONCEPTS.items()}
    assert have == want, f"SYLLABUS_CONCEPTS is out of date with {SYLLABUS}:\n  copy:     {have}\n  syllabus: {want}"


def test_every_syllabus_concept_has_a_graded_lab_part():
    assert set(SYLLABUS_CONCEPTS) <= {p["part"].split(".")[0] for p in MAP["parts"]}, "a syllabus part has no map part"
    problems = coverage_problems(MAP)
    assert not problems, "\n".join(problems)


def test_every_entry_is_required_by_a_syllabus_concept():
    phrases = [p.lower() for bullets in SYLLABUS_CONCEPTS.values() for ps in bullets.values() for p in ps]
    orphans = [
        e["concept"]
        for e, syllabus in zip(entries(MAP), in_syllabus(MAP))
        if syllabus and not any(p in e["concept"].lower() for p in phrases)
    ]
    assert not orphans, f"map entries that no syllabus concept of SYLLABUS_CONCEPTS names: {orphans}"


@pytest.mark.parametrize("entry", entries(MAP), ids=[e["concept"][:40] for e in entries(MAP)])
def test_entry_is_graded_and_resolves(entry):
    assert not entry.get("pending"), f"{entry['concept']}: still pending (every concept needs its graded lab part)"
    problems = grading_problems(entry) + reference_problems(entry)
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------------------------
# The checks can fail: a map with one entry, one `lab` or one `mutant` less is rejected.
# ------------------------------------------------------------------------------------------------------
def _without(index: int, field: str | None = None) -> dict:
    the_map = copy.deepcopy(MAP)
    flat = [(p, i) for p in the_map["parts"] for i in range(len(p["concepts"]))]
    part, i = flat[index]
    if field is None:
        del part["concepts"][i]
    else:
        part["concepts"][i].pop(field)
    return the_map


@pytest.mark.parametrize("index", range(len(entries(MAP))), ids=[e["concept"][:40] for e in entries(MAP)])
def test_removing_an_entry_or_its_lab_or_mutant_fails_the_check(index):
    before = set(map_problems(MAP))
    # a whole entry is missed only where the syllabus asks for it; beyond the syllabus the map is its own list
    for field in (None, "lab", "mutant") if in_syllabus(MAP)[index] else ("lab", "mutant"):
        if field and not entries(MAP)[index].get(field):
            continue  # already missing: test_entry_is_graded_and_resolves reports it
        new = set(map_problems(_without(index, field))) - before
        assert new, f"the map check still passes without entry {index}'s {field or 'whole entry'}"


def test_the_checker_rejects_bad_references():
    entry = copy.deepcopy(entries(MAP)[0])
    assert grading_problems(entry) == []
    assert grading_problems({**entry, "lab": "lab00_memory:q1_code"}), "a solution cell is not a graded part"
    assert grading_problems({**entry, "lab": "lab99_none:q1_test"})
    assert grading_problems({**entry, "mutant": "no-such-mutant"})
    assert grading_problems({**entry, "function": "courselib.memory.no_such_function"}), "function not in the cell"
    other = next(m for m in mutant_bank("lab00_memory").values() if entry["lab"].partition(":")[2] not in m["breaks"])
    assert grading_problems({**entry, "mutant": other["id"]}), "a mutant that breaks another part"
    assert not node_exists("tests/test_memory.py::test_that_does_not_exist")
    assert node_exists("tests/test_memory.py::test_bytes_per_value_and_ratios")
    assert reference_problems({**entry, "function": "courselib.memory.no_such_function"})
    assert reference_problems({**entry, "section": "no-such-label"})
    assert "intro-memory" in book_labels() and "no-such-label" not in book_labels()
    bullets = syllabus_bullets("## 0. Why\n- **Goals**: speed\n  more\n- Memory (RAM): x\n## 1. Next\n- A, b\n")
    assert bullets == {"0": ["Goals", "Memory"], "1": ["A"]}
