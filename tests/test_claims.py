"""Every comparison a chapter states about its own numbers is checked when the book is built (issue 16).

Convention (CONTRIBUTING.md, "Claims"): right after the cell that computes the numbers, a hidden cell
(``tags: [remove-cell]``) holds one ``# claim: <text>`` comment per claim, followed by the ``assert`` that
backs it, so the build fails instead of printing a sentence its numbers no longer show. ``<text>`` is
copied from the chapter: a sentence or fragment of its prose, a caption or an alt text.

This test lists the claims per chapter (a claim deleted or added without updating ``CLAIMS`` fails) and
checks each claim cell: it contains an ``assert``, it follows a code cell, and each claim's text occurs in
the chapter outside the code. The assertions themselves run when the chapter executes (tests/test_book.py,
``make book``, ``tools/build_chapter.sh``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from myst_nb.core.read import read_myst_markdown_notebook

BOOK = Path(__file__).resolve().parents[1] / "book"

#: chapter -> number of ``# claim:`` lines in its hidden assertion cells
CLAIMS = {
    "binary_codes": 6,
    "binaryconnect": 4,
    "distillation": 1,
    "itq": 7,
    "pruning_filters": 18,
    "pruning_obd": 14,
    "putting_together": 13,
    "quantization": 15,
    "why_on_device": 2,
}


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def _prose(nb) -> str:
    """Markdown cells plus every caption and alt text of the chapter's code cells."""
    parts = [c.source for c in nb.cells if c.cell_type == "markdown"]
    for c in nb.cells:
        mystnb = c.metadata.get("mystnb", {})
        parts.append(str(mystnb.get("image", {}).get("alt", "")))
        parts.append(str(mystnb.get("figure", {}).get("caption", "")))
    return _normalize("\n".join(parts))


def claim_cells(path: Path) -> tuple[list[str], list[str]]:
    """The claims of a chapter and the problems found with them (empty if the convention is kept)."""
    nb = read_myst_markdown_notebook(path.read_text(), path=str(path))
    prose = _prose(nb)
    claims, problems = [], []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        texts = re.findall(r"^\s*# claim:\s*(.+?)\s*$", cell.source, flags=re.M)
        if not texts:
            continue
        claims.extend(texts)
        where = f"{path.name} cell {i} ({texts[0][:40]!r}...)"
        if "remove-cell" not in cell.metadata.get("tags", []):
            problems.append(f"{where}: a claim cell must be hidden (tags: [remove-cell])")
        if not any(isinstance(node, ast.Assert) for node in ast.walk(ast.parse(cell.source))):
            problems.append(f"{where}: no assert")
        if not any(c.cell_type == "code" for c in nb.cells[:i]):
            problems.append(f"{where}: no computation before the claim cell")
        for t in texts:
            if _normalize(t.rstrip(".")) not in prose:
                problems.append(f"{where}: claim text not found in the chapter's prose, captions or alt text: {t!r}")
    return claims, problems


def _chapters() -> list[Path]:
    return sorted(p for p in BOOK.glob("*.md") if "{code-cell}" in p.read_text())


@pytest.mark.parametrize("path", _chapters(), ids=lambda p: p.stem)
def test_claims_are_listed_and_backed_by_asserts(path):
    claims, problems = claim_cells(path)
    assert not problems, "\n".join(problems)
    assert len(claims) == CLAIMS.get(path.stem, 0), (
        f"{path.name} has {len(claims)} claims, CLAIMS says {CLAIMS.get(path.stem, 0)}: {claims}"
    )


def test_checker_finds_a_claim_without_assert_and_a_claim_not_in_the_text(tmp_path):
    chapter = tmp_path / "toy.md"
    chapter.write_text(
        "---\njupytext:\n  text_representation: {extension: .md, format_name: myst}\n"
        "kernelspec: {display_name: Python 3, language: python, name: python3}\n---\n"
        "# Toy\n\nA beats B by a wide margin.\n\n"
        "```{code-cell} ipython3\na, b = 2, 1\n```\n\n"
        "```{code-cell} ipython3\n:tags: [remove-cell]\n# claim: A beats B\nprint(a > b)\n```\n\n"
        "```{code-cell} ipython3\n:tags: [remove-cell]\n# claim: C beats D\nassert a > b\n```\n\n"
        "```{code-cell} ipython3\n# claim: A beats B by a wide margin\nassert a > 2 * b - 1\n```\n"
    )
    claims, problems = claim_cells(chapter)
    assert claims == ["A beats B", "C beats D", "A beats B by a wide margin"]
    assert len(problems) == 3
    assert "no assert" in problems[0]
    assert "not found" in problems[1] and "C beats D" in problems[1]
    assert "hidden" in problems[2]
