"""The book builds with -W from the README's command path, and the built pages hold executed output.

The `built_book` fixture (tests/conftest.py) builds into the repository's own `_build/` (the same place
`make book` writes), after generating the labs' student releases that the Labs page offers for download.
Executed outputs are cached in `_build/.jupyter_cache`, so a developer's second run re-executes only
changed chapters.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def page(html_root: Path, name: str) -> str:
    return (html_root / "book" / f"{name}.html").read_text()


def text_of(html: str) -> str:
    return re.sub(r"<[^>]+>", " ", html)


@pytest.mark.xdist_group("book")
def test_index_and_intro_chapter(built_book):
    assert (built_book / "index.html").exists()
    intro = page(built_book, "why_on_device")
    text = text_of(intro)
    # executed output: the measured table of representations and the model sizes
    assert re.search(r"packed bits\s+125,000\s+0\.125\s+32\.00", text)
    assert re.search(r"float32 file:\s+[\d,]+ bytes", text)
    assert "Traceback" not in text and "Error" not in text.replace("ErrorBars", "")
    # a figure with descriptive alt text and a numbered equation
    imgs = re.findall(r"<img[^>]*>", intro)
    assert imgs and all('alt="' in i for i in imgs)
    assert any("Bar chart" in i for i in imgs)
    assert 'id="equation-intro-ratio"' in intro


@pytest.mark.xdist_group("book")
def test_every_toc_page_is_built_and_labs_are_downloadable(built_book):
    toc = (REPO / "_toc.yml").read_text()
    for f in re.findall(r"file:\s*(book/\S+)", toc):
        assert (built_book / (f + ".html")).exists(), f
    labs_page = page(built_book, "labs")
    for lab in sorted(p.name for p in (REPO / "labs" / "source").iterdir() if p.is_dir()):
        if f"{lab}.ipynb" in (REPO / "book" / "labs.md").read_text():
            assert re.search(rf'href="[^"]*_downloads/[^"]*/{lab}\.ipynb"', labs_page), lab
            offered = next((built_book / "_downloads").rglob(f"{lab}.ipynb")).read_text()
            assert "BEGIN SOLUTION" not in offered and "raise NotImplementedError()" in offered, (
                "the Labs page must offer the student release, not the solution"
            )
