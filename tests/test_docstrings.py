"""courselib's docstrings are the book's appendix: their examples run, and the equations they cite exist.

- Every ``>>>`` example in a courselib module (content modules and the grading layer) runs as a doctest
  (ELLIPSIS and NORMALIZE_WHITESPACE on), one test per module, so a wrong example names its module.
- Every book equation a module cites -- ``book Eq. ``itq-loss````, ``book equation ``binary-codes-hamming````,
  ``book equations ``a``, ``b````, ``Eq. ``bc-sign````, ``:eq:`intro-ratio``` or a bare hyphenated label after
  ``Eq.`` in a comment -- is a label in book/: a ``(label)=`` target or a ``$$ (label)`` / ``:label:``
  equation. The checker is tested on a made-up label too, so it cannot pass by finding nothing.
"""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "courselib"

# Modules with examples, found from the files (not by importing), so a module that fails to import fails
# its test here instead of dropping out of the list.
MODULES = sorted(
    ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
    for p in PKG.rglob("*.py")
    if ">>>" in p.read_text()
)

# A citation: "Eq." or "equation(s)", then one or more ``label``s joined by commas / "and" (line breaks
# and "#:" comment prefixes allowed in between); or the Sphinx role :eq:`label`; or, in a comment, a bare
# hyphenated label such as "Eq. itq-b-step". Paper equation numbers ("paper Eq. 3") are not labels.
_SEP = r"(?:\s|#:?)*"
_LABEL = r"``([a-z][a-z0-9_]*(?:-[a-z0-9_]+)*)``"
CITE = re.compile(rf"(?:\b[Ee]q\.|\b[Ee]quations?){_SEP}({_LABEL}(?:{_SEP}(?:,|and|or){_SEP}{_LABEL})*)")
CITE_ROLE = re.compile(r":eq:`([^`]+)`")
CITE_BARE = re.compile(r"\bEq\.\s+([a-z][a-z0-9]*(?:-[a-z0-9]+)+)\b")
BOOK_LABEL = re.compile(r"^\(([A-Za-z0-9_-]+)\)=|\$\$\s*\(([A-Za-z0-9_-]+)\)|:label:\s*([A-Za-z0-9_-]+)", re.M)


def cited_labels(text: str) -> set[str]:
    """Every book label that ``text`` (a module's source) cites as an equation."""
    labels: set[str] = set()
    for m in CITE.finditer(text):
        labels.update(re.findall(_LABEL, m.group(1)))
    labels.update(CITE_ROLE.findall(text))
    labels.update(CITE_BARE.findall(text))
    return labels


def book_labels(book: Path) -> set[str]:
    """Every ``(label)=`` target and numbered-equation label in the book's MyST sources."""
    found: set[str] = set()
    for md in book.rglob("*.md"):
        for m in BOOK_LABEL.finditer(md.read_text()):
            found.add(next(g for g in m.groups() if g))
    return found


def missing_labels(sources: list[Path], labels: set[str]) -> dict[str, list[str]]:
    """Labels cited in ``sources`` that are not in ``labels``: {file name: [label, ...]}."""
    missing = {}
    for src in sources:
        gone = sorted(cited_labels(src.read_text()) - labels)
        if gone:
            missing[src.name] = gone
    return missing


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, name)
    tests = [t for t in tests if t.examples]
    assert tests, f"{name} has '>>>' in its source but doctest finds no example (not in a docstring?)"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    for t in tests:
        runner.run(t, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}:\n" + "".join(report)


def test_cited_equation_labels_exist():
    labels = book_labels(REPO / "book")
    sources = sorted(PKG.rglob("*.py"))
    cited = set().union(*(cited_labels(p.read_text()) for p in sources))
    assert len(cited) >= 10, f"the citation pattern found only {sorted(cited)}: is it still matching?"
    assert missing_labels(sources, labels) == {}, "docstrings cite equation labels that no book page defines"


def test_label_checker_catches_a_made_up_label(tmp_path):
    labels = book_labels(REPO / "book")
    assert "itq-loss" in labels and "bc-sign" in labels
    src = tmp_path / "fake_module.py"
    src.write_text(
        '"""Loss of the fake method (book Eq. ``itq-loss``; paper Eq. 2), its update (book equations\n'
        '``bc-sign`` and ``no-such-equation-xyz``), :eq:`made-up-role-label`."""\n'
        "x = 1  # Eq. made-up-comment-label\n"
    )
    assert cited_labels(src.read_text()) == {
        "itq-loss",
        "bc-sign",
        "no-such-equation-xyz",
        "made-up-role-label",
        "made-up-comment-label",
    }
    assert missing_labels([src], labels) == {
        "fake_module.py": ["made-up-comment-label", "made-up-role-label", "no-such-equation-xyz"]
    }
