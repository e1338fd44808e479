"""The book builds with -W from the README's command path, and the built pages hold executed output.

The `built_book` fixture (tests/conftest.py) builds into the repository's own `_build/` (the same place
`make book` writes), after generating the labs' student releases that the Labs page offers for download.
Executed outputs are cached in `_build/.jupyter_cache`, so a developer's second run re-executes only
changed chapters.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The content modules (the book's appendix): courselib's flat top-level modules; the grading layer is the
# courselib/grading/ subpackage and is not in the API reference.
CONTENT_MODULES = sorted(p.stem for p in (REPO / "courselib").glob("*.py") if not p.name.startswith("_"))
CONTENT_NAME = re.compile(rf"~?courselib\.(?:{'|'.join(CONTENT_MODULES)})(?:\.\w+)*\b")
ROLE = re.compile(r"\{(?:func|class|mod|meth|attr|data|obj|exc)\}`~?courselib\.[\w.]+`")


def page(html_root: Path, name: str) -> str:
    return (html_root / "book" / f"{name}.html").read_text()


def text_of(html: str) -> str:
    return re.sub(r"<[^>]+>", " ", html)


@pytest.mark.slow
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


@pytest.mark.slow
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


class _InlineCode(HTMLParser):
    """Collects every inline ``<code>`` outside code cells, with the link it sits in (if any)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.links: list[str | None] = []  # href of each open <a>
        self.pre = 0
        self.code: list[str] | None = None
        self.found: list[tuple[str, str | None]] = []  # (code text, href of the link around it)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a":
            self.links.append(a.get("href"))
        elif tag == "pre":
            self.pre += 1
        elif tag == "code" and not self.pre and self.code is None:
            self.code = []

    def handle_endtag(self, tag):
        if tag == "a" and self.links:
            self.links.pop()
        elif tag == "pre":
            self.pre = max(0, self.pre - 1)
        elif tag == "code" and self.code is not None:
            href = next((h for h in reversed(self.links) if h), None)
            self.found.append(("".join(self.code).strip(), href))
            self.code = None

    def handle_data(self, data):
        if self.code is not None:
            self.code.append(data)


def unlinked_courselib_names(html: str) -> list[str]:
    """Inline code naming a courselib content module or one of its objects that is not a link into the
    API reference (book/api/): a chapter reference a reader cannot follow."""
    parser = _InlineCode()
    parser.feed(html)
    return [
        text
        for text, href in parser.found
        if CONTENT_NAME.match(text) and not (href and re.match(r"(\.\./)*api/\w+\.html(#|$)", href))
    ]


def test_unlinked_names_are_found():
    plain = '<p>see <code class="docutils literal notranslate"><span class="pre">courselib.itq.ITQ</span></code></p>'
    linked = (
        '<p><a class="reference internal" href="api/itq.html#courselib.itq.ITQ" title="courselib.itq.ITQ">'
        '<code class="xref py py-class docutils literal notranslate"><span class="pre">courselib.itq.ITQ</span>'
        "</code></a></p>"
    )
    unresolved = (
        '<p><code class="xref py py-func docutils literal notranslate">courselib.memory.packed_bytes</code></p>'
    )
    in_cell = '<div class="highlight"><pre><code>courselib.itq.ITQ</code></pre></div>'
    not_content = "<p><code>courselib.grading.quiz.grade(answers)</code> and <code>courselib grade</code></p>"
    assert unlinked_courselib_names(plain) == ["courselib.itq.ITQ"]
    assert unlinked_courselib_names(linked) == []
    assert unlinked_courselib_names(unresolved) == ["courselib.memory.packed_bytes"]
    assert unlinked_courselib_names(in_cell + not_content) == []
    elsewhere = linked.replace("api/itq.html", "https://example.org/itq.html").replace("internal", "external")
    assert unlinked_courselib_names(elsewhere) == ["courselib.itq.ITQ"]


@pytest.mark.slow
@pytest.mark.xdist_group("book")
def test_chapter_references_to_courselib_are_api_links(built_book):
    """Every courselib name in a chapter's prose is a link to its entry in the API reference."""
    api = built_book / "book" / "api"
    for mod in CONTENT_MODULES:
        assert (api / f"{mod}.html").exists(), f"no API reference page for courselib.{mod}"
        assert f'id="module-courselib.{mod}"' in (api / f"{mod}.html").read_text(), mod
    problems, n_links = {}, 0
    for html_file in sorted((built_book / "book").rglob("*.html")):
        rel = html_file.relative_to(built_book / "book")
        if rel.parts[0] == "api" or not (REPO / "book" / rel).with_suffix(".md").exists():
            continue
        html = html_file.read_text()
        bad = unlinked_courselib_names(html)
        if bad:
            problems[rel.as_posix()] = bad
        roles = len(ROLE.findall((REPO / "book" / rel).with_suffix(".md").read_text()))
        links = len(re.findall(r'<a class="reference internal" href="(?:\.\./)*api/\w+\.html#', html))
        assert links >= roles, f"{rel}: {roles} courselib roles in the source but {links} API links in the page"
        n_links += links
    assert problems == {}, f"courselib names that are plain code, not API links: {problems}"
    assert n_links >= 20, f"only {n_links} links from the chapters into the API reference"


# --------------------------------------------------------------------------------------------------
# Every latency table names the machine it ran on (issue 23)
# --------------------------------------------------------------------------------------------------

#: A header or column that holds times: a time unit, a latency, a speed-up.
TIME_COLUMN = re.compile(r"(\b(ms|µs|us)\b|latency|speed-?up|\bfaster\b|\btime \(s\)|seconds\b)", re.I)


def timing_tables_without_machine(html: str) -> list[str]:
    """Tables with a time column that do not show *Measured on:* beside them, as short descriptions.

    A table is an HTML ``<table>`` (a chapter's Markdown table or a cell's displayed Markdown) or a
    pipe-separated header line printed by a cell. One printed by a cell needs the line in that cell's output;
    one written in the prose needs it before the next heading or table (the quoted benchmark's line).
    """
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    article = soup.find("article") or soup
    missing = []
    for cell in article.select("div.cell_output"):
        text = cell.get_text("\n")
        tables = [t.find("tr").get_text(" ") for t in cell.find_all("table") if t.find("tr")]
        tables += [ln for ln in text.splitlines() if ln.count("|") >= 2 and TIME_COLUMN.search(ln)]
        if any(TIME_COLUMN.search(t) for t in tables) and "Measured on:" not in text:
            missing.append("cell output: " + next(t for t in tables if TIME_COLUMN.search(t)).strip()[:100])
    for table in article.find_all("table"):
        if table.find_parent("div", class_="cell_output") or not table.find("tr"):
            continue
        head = table.find("tr").get_text(" ")
        if not TIME_COLUMN.search(head):
            continue
        node = table.parent if table.parent.name == "div" else table  # the theme wraps tables in a div
        after = []
        for sib in node.find_next_siblings():
            if sib.name in ("h1", "h2", "h3", "section") or sib.find("table") or "cell" in (sib.get("class") or []):
                break
            after.append(sib.get_text(" "))
        if "Measured on:" not in " ".join(after):
            missing.append("prose table: " + re.sub(r"\s+", " ", head).strip()[:100])
    return missing


def test_timing_table_check_finds_a_table_without_its_machine():
    cell = (
        '<div class="cell_output"><div class="output"><table><tr><th>model</th><th>{}</th></tr></table>{}</div></div>'
    )
    pre = '<div class="cell_output"><pre>n | float ms | binary ms\n10 | 1.0 | 0.2</pre>{}</div>'
    prose = "<div><table><tr><th>n</th><th>{}</th></tr></table></div><p>{}</p><h2>next</h2>"
    machine = "<p>Measured on: AMD EPYC (x86_64: avx2)</p>"
    ok = "<article>" + cell.format("latency (ms)", machine) + pre.format(machine) + prose.format("speed-up", machine)
    assert timing_tables_without_machine(ok) == []
    bad = "<article>" + cell.format("batch 64 ms", "") + pre.format("") + prose.format("speed-up", "") + "</article>"
    assert [m.split(":")[0] for m in timing_tables_without_machine(bad)] == ["cell output"] * 2 + ["prose table"]
    sizes = "<article>" + cell.format("bytes", "") + prose.format("accuracy %", "") + "</article>"
    assert timing_tables_without_machine(sizes) == []


@pytest.mark.slow
@pytest.mark.xdist_group("book")
def test_every_latency_table_names_its_machine(built_book):
    missing = {}
    for html_file in sorted((built_book / "book").glob("*.html")):
        found = timing_tables_without_machine(html_file.read_text())
        if found:
            missing[html_file.stem] = found
    assert not missing, f"latency tables without the machine they ran on (measure.machine): {missing}"
