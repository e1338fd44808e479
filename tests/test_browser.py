"""The built book as a reader gets it: every page checked in a real, offline, headless Chromium.

What is checked (issue 9), page by page in `_build/html`:

- the page loads with no console errors, and every resource it loads is a local file (the browser runs
  with every host name unresolvable and a dead proxy, so anything fetched from the network fails);
- no page references an outside script or stylesheet, no widget manager or require.js (also checked
  without a browser, on the HTML files), and no empty widget area is left where an explorer was;
- MathJax (served from `_static/mathjax`, installed by pip) has typeset every formula, with no TeX error,
  and no raw `$...$`, `$$`, `{math}` or `{cite}` text is left in the prose;
- every image has loaded and carries alt text that describes it (not a file name);
- the search page finds a term; chapter pages carry launch buttons (Binder, Colab); every lab in
  `labs/source` is offered for download as its student release;
- every link to a notebook (`a[href$=".ipynb"]`) on this site carries the `download` attribute and the copy
  tools/student_book.py writes for a book read from disk (links to `.ipynb` elsewhere are only the Colab and
  Binder launch buttons); clicking a lab's `.ipynb` on the Labs page and a chapter's *.ipynb* download button,
  from `file://`, saves the notebook and does not open its JSON;
- every internal link and #anchor resolves (a static check on the HTML files);
- a full-page screenshot of every page is written to `_build/screenshots/<page>.png` for review, and
  `_build/screenshots/report.txt` says how many pages were checked (`make test` prints it).

The book is built by the same fixture as tests/test_book.py (`built_book` in tests/conftest.py) and both modules share the
xdist group "book", so with `pytest -n 2 --dist loadgroup` they run one after the other in one worker and
the second build is a no-change rebuild (executed outputs come from the jupyter-cache). To check an
already-built book without building, set BOOK_HTML=/path/to/_build/html.

Chromium: Debian's `chromium` and `chromium-driver` (`make test` installs them with apt-get when it runs as
root). Without them the browser tests are skipped with the reason; the static checks still run.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
SEARCH_TERM = "quantization"
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("book")]

# --------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def html_root(request) -> Path:
    override = os.environ.get("BOOK_HTML")
    if override:
        root = Path(override)
        assert (root / "index.html").exists(), f"BOOK_HTML={override} holds no built book"
        return root
    return request.getfixturevalue("built_book")


def book_pages(root: Path) -> list[Path]:
    """Every HTML page a reader can open (not Sphinx's assets, and not the root redirect)."""
    pages = []
    for p in sorted(root.rglob("*.html")):
        rel = p.relative_to(root).as_posix()
        if rel.split("/")[0] in ("_static", "_sources", "_downloads", "_images"):
            continue
        if any(part.startswith(".") for part in rel.split("/")):
            continue  # a stale page of an earlier build (e.g. a .pytest_cache README), not part of the book
        if rel.startswith("book/") and not (REPO / rel).with_suffix(".md").exists():
            continue  # a page whose source was removed since an earlier build into the same _build
        if rel == "index.html" and 'http-equiv="Refresh"' in p.read_text()[:2000]:
            continue  # jupyter-book's redirect to book/index.html
        pages.append(p)
    return pages


def source_of(root: Path, page: Path) -> Path | None:
    """The MyST source of a built page (book/foo.html -> book/foo.md), if there is one."""
    src = REPO / page.relative_to(root).with_suffix(".md")
    return src if src.exists() else None


def is_chapter(src: Path | None) -> bool:
    return src is not None and "kernelspec" in src.read_text()[:600]


def shot_name(root: Path, page: Path) -> str:
    return page.relative_to(root).with_suffix("").as_posix().replace("/", "__") + ".png"


EXTERNAL = re.compile(r"^(https?:)?//", re.I)
TAG_ATTRS = re.compile(r"<(script|link|img|iframe|source|video|audio)\b([^>]*)>", re.I | re.S)
ATTR = re.compile(r"""\b(src|href)\s*=\s*["']([^"']*)["']""", re.I)


def outside_references(text: str) -> list[str]:
    """Scripts, stylesheets, images, frames that a page would fetch from another host."""
    found = []
    for tag, attrs in TAG_ATTRS.findall(text):
        if tag.lower() == "link" and not re.search(
            r"""rel\s*=\s*["'][^"']*(stylesheet|preload|icon|modulepreload)""", attrs, re.I
        ):
            continue  # <link rel="canonical"/"next"> is not fetched
        for _, url in ATTR.findall(attrs):
            if EXTERNAL.match(url.strip()):
                found.append(f"<{tag} {url}>")
    return found


# ------------------------------------------------------------------------------------- static checks


def test_no_page_references_an_outside_script_or_stylesheet(html_root):
    problems = {}
    for page in book_pages(html_root):
        text = page.read_text()
        bad = outside_references(text)
        # a widget manager or require.js, even from a local path (the inert widget-state JSON is fine)
        bad += [
            src
            for src in re.findall(r"""<script\b[^>]*\bsrc\s*=\s*["']([^"']+)""", text, re.I)
            if re.search(r"require(\.min)?\.js|embed-amd|html-manager|jupyter-widgets", src)
        ]
        if bad:
            problems[page.relative_to(html_root).as_posix()] = bad
    assert not problems, f"pages that need the network: {problems}"
    mathjax = html_root / "_static" / "mathjax" / "tex-chtml.js"
    assert mathjax.exists(), "MathJax is not served from _static/mathjax (sphinx-mathjax-offline in _config.yml)"


def test_every_internal_link_and_anchor_resolves(html_root):
    ids_cache: dict[Path, set[str]] = {}

    def ids_of(p: Path) -> set[str]:
        if p not in ids_cache:
            ids_cache[p] = set(re.findall(r"""\bid\s*=\s*["']([^"']+)["']""", p.read_text()))
        return ids_cache[p]

    broken = []
    for page in book_pages(html_root):
        for href in re.findall(r"""<a\b[^>]*\bhref\s*=\s*["']([^"']*)["']""", page.read_text(), re.I):
            href = html.unescape(href)
            if not href or EXTERNAL.match(href) or re.match(r"^[a-z][a-z0-9+.-]*:", href, re.I):
                continue  # external (not fetched offline), mailto:, javascript:
            parts = urlsplit(href)
            target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            where = f"{page.relative_to(html_root).as_posix()} -> {href}"
            if not target.exists():
                broken.append(where + " (no such file)")
            elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in ids_of(target):
                broken.append(where + " (no such anchor)")
    assert not broken, "broken internal links:\n" + "\n".join(broken)


def explorer_calls() -> list[tuple[str, str]]:
    """(chapter, callback name) for every make_explorer(...) call in the book's chapters."""
    calls = []
    for src in sorted((REPO / "book").glob("*.md")):
        for m in re.finditer(r"make_explorer\(\s*(lambda[^:]*:\s*)?([A-Za-z_][\w.]*)", src.read_text()):
            calls.append((src.name, m.group(2).split(".")[-1]))
    return calls


@pytest.mark.xdist_group("explorers")
def test_every_explorer_callback_is_driven_by_a_unit_test():
    """CONTRIBUTING: the callback lives in courselib and a unit test calls it for a few values."""
    tests_text = "\n".join(p.read_text() for p in (REPO / "tests").glob("test_*.py") if p.name != "test_browser.py")
    lib_text = "\n".join(p.read_text() for p in (REPO / "courselib").glob("*.py"))
    problems = []
    for chapter, name in explorer_calls():
        if not re.search(rf"^def {re.escape(name)}\(", lib_text, re.M):
            problems.append(f"book/{chapter}: explorer callback {name!r} is not a courselib function")
        elif not re.search(rf"\b{re.escape(name)}\(", tests_text):
            problems.append(f"book/{chapter}: no test in tests/ calls the explorer callback {name}()")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------ browser checks


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip(
            f"headless Chromium not installed ({CHROMIUM}, {CHROMEDRIVER} missing): run `make test` as "
            "root (it runs apt-get install chromium chromium-driver) or install them by hand"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager must not try to download anything
    profile = tempfile.mkdtemp(prefix="book-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
        # no network: every host name fails to resolve and any proxied request goes nowhere
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--proxy-server=http://127.0.0.1:9",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


WAIT_FOR_MATH = """
const done = arguments[arguments.length - 1];
if (!window.MathJax || !MathJax.startup || !MathJax.startup.promise) { done("none"); return; }
MathJax.startup.promise.then(() => done("typeset"), (e) => done("error: " + e));
"""

PAGE_STATE = r"""
const art = document.querySelector("article") || document.body;
const math = [...art.querySelectorAll(".math")];
const prose = art.cloneNode(true);
prose.querySelectorAll("pre, code, script, style, mjx-container, .cell_input, .highlight, .math")
     .forEach(e => e.remove());
return {
  mathTotal: math.length,
  mathUntypeset: math.filter(e => !e.querySelector("mjx-container")).map(e => e.textContent.slice(0, 80)),
  mathErrors: [...art.querySelectorAll("mjx-merror")].map(e => e.getAttribute("data-mjx-error") || e.textContent),
  prose: prose.textContent,
  images: [...document.images].map(i => ({src: i.getAttribute("src"), alt: i.getAttribute("alt"),
                                           ok: i.complete && i.naturalWidth > 0})),
  resources: performance.getEntriesByType("resource").map(r => r.name),
  widgetViews: document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length,
  emptyWidgetAreas: [...document.querySelectorAll(".jupyter-widgets, .widget-area, .jp-OutputArea-output")]
      .filter(e => !e.textContent.trim() && !e.querySelector("img, svg, canvas")).length,
  launch: [...document.querySelectorAll(".dropdown-launch-buttons a")].map(a => a.href),
  downloads: [...document.querySelectorAll("a.download, a[download]")].map(a => a.getAttribute("href")),
  notebookLinks: [...document.querySelectorAll('a[href$=".ipynb"]')].map(a => ({
      href: a.getAttribute("href"), download: a.getAttribute("download"),
      offline: a.getAttribute("data-offline-notebook")})),
  height: Math.max(document.body.scrollHeight, document.documentElement.scrollHeight),
};
"""

RAW_MARKUP = [
    (re.compile(r"\$\$"), "raw $$"),
    (re.compile(r"(?<![\w$])\$[^$\s][^$\n]{0,200}?(?<!\s)\$(?![\w$])"), "raw $...$"),
    (re.compile(r"\{(math|eq|cite|cite:[pt]|ref|numref|term|doc|download|glue:\w*)\}"), "unrendered MyST role"),
    (re.compile(r"\\(frac|begin\{|end\{|mathbf|sum_|operatorname|left\(|right\))"), "raw TeX command"),
    (re.compile(r"^\s*:::?\s*\{", re.M), "unrendered directive"),
]

LAUNCH_HOSTS = {"mybinder.org", "colab.research.google.com"}

FILE_NAME_ALT = re.compile(r"(^|/)[\w.\-]+\.(png|jpe?g|svg|gif|webp)$", re.I)


def alt_problem(alt: str | None) -> str | None:
    if alt is None or not alt.strip():
        return "no alt text"
    alt = alt.strip()
    if FILE_NAME_ALT.search(alt) or "_images/" in alt or "jupyter_execute" in alt:
        return f"alt text is a file name ({alt!r})"
    if len(alt.split()) < 2:
        return f"alt text does not describe the image ({alt!r})"
    return None


def severe_console_messages(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def test_every_page_in_a_real_browser(html_root, browser):
    pages = book_pages(html_root)
    shots = html_root.parent / "screenshots"
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    problems: list[str] = []
    stats = {"pages": 0, "formulas": 0, "images": 0, "chapters_with_launch_buttons": 0, "notebook_links": 0}
    offered: dict[str, Path] = {}

    for page in pages:
        name = page.relative_to(html_root).as_posix()
        src = source_of(html_root, page)
        bad = problems.append
        browser.set_window_size(1280, 900)
        browser.get(page.as_uri())
        math_state = browser.execute_async_script(WAIT_FOR_MATH)
        state = browser.execute_script(PAGE_STATE)
        stats["pages"] += 1
        # console and network
        for msg in severe_console_messages(browser):
            bad(f"{name}: console error: {msg}")
        for url in state["resources"]:
            if not url.startswith("file:"):
                bad(f"{name}: fetched from the network: {url}")
        # math
        if math_state.startswith("error"):
            bad(f"{name}: MathJax failed: {math_state}")
        if state["mathTotal"] and math_state != "typeset":
            bad(f"{name}: {state['mathTotal']} formulas but MathJax did not load ({math_state})")
        for tex in state["mathUntypeset"]:
            bad(f"{name}: formula left untypeset: {tex!r}")
        for err in state["mathErrors"]:
            bad(f"{name}: MathJax TeX error: {err!r}")
        stats["formulas"] += state["mathTotal"]
        for rx, what in RAW_MARKUP:
            for m in rx.finditer(state["prose"]):
                ctx = state["prose"][max(0, m.start() - 40) : m.end() + 40].replace("\n", " ")
                bad(f"{name}: {what} in the text: ...{ctx}...")
        # images
        for img in state["images"]:
            if not img["ok"]:
                bad(f"{name}: image did not load: {img['src']}")
            why = alt_problem(img["alt"])
            if why:
                bad(f"{name}: image {img['src']}: {why}")
        stats["images"] += len(state["images"])
        # widgets: no widget-view placeholders (they would be empty without a manager), no empty areas
        if state["widgetViews"]:
            bad(
                f"{name}: {state['widgetViews']} ipywidgets view(s) in the HTML (tag the explorer cell "
                "remove-output and follow it with a static stand-in)"
            )
        if state["emptyWidgetAreas"]:
            bad(f"{name}: {state['emptyWidgetAreas']} empty output/widget area(s)")
        if src is not None and "make_explorer(" in src.read_text() and not state["images"]:
            bad(f"{name}: has an explorer but no static stand-in figure")
        # launch buttons on chapters (executable MyST notebooks)
        if is_chapter(src):
            hosts = {urlsplit(u).netloc for u in state["launch"]}
            if not {"mybinder.org", "colab.research.google.com"} <= hosts:
                bad(f"{name}: chapter without Binder and Colab launch buttons (found {sorted(hosts)})")
            else:
                stats["chapters_with_launch_buttons"] += 1
        for href in state["downloads"]:
            if href and href.endswith(".ipynb"):
                offered[Path(unquote(href)).stem] = (page.parent / unquote(href)).resolve()
        # every notebook link downloads: from a server (`download`) and from disk (the copy beside it)
        for link in state["notebookLinks"]:
            href = link["href"]
            if EXTERNAL.match(href) or href.startswith(("http:", "https:")):
                if urlsplit(href).netloc not in LAUNCH_HOSTS:
                    bad(f"{name}: a link to a notebook elsewhere that is no launch button: {href}")
                continue
            stats["notebook_links"] += 1
            if link["download"] is None:
                bad(f"{name}: the notebook link {href} has no download attribute (it would open as JSON)")
            elif not link["offline"] or not (page.parent / unquote(link["offline"])).is_file():
                bad(f"{name}: the notebook link {href} has no copy for a book read from disk ({link['offline']})")
        # screenshot of the whole page
        browser.set_window_size(1280, min(int(state["height"]) + 20, 16000))
        time.sleep(0.2)
        browser.save_screenshot(str(shots / shot_name(html_root, page)))

    # every lab is offered for download, as its student release
    labs = sorted(p.name for p in (REPO / "labs" / "source").iterdir() if p.is_dir())
    for lab in labs:
        if lab not in offered:
            problems.append(f"no page offers {lab}.ipynb for download (add it to book/labs.md)")
        elif not offered[lab].exists():
            problems.append(f"{lab}.ipynb download link points to a missing file")
        else:
            nb = offered[lab].read_text()
            if "BEGIN SOLUTION" in nb or "BEGIN HIDDEN TESTS" in nb or "NotImplementedError" not in nb:
                problems.append(f"{lab}.ipynb offered for download is not the student release")

    report = (
        f"browser test: {stats['pages']} pages checked in headless Chromium (offline); "
        f"{stats['formulas']} formulas typeset, {stats['images']} images, "
        f"{stats['chapters_with_launch_buttons']} chapters with launch buttons, "
        f"{sum(lab in offered for lab in labs)}/{len(labs)} labs offered for download, "
        f"{stats['notebook_links']} notebook links that download; {len(problems)} problems; "
        f"screenshots in {shots.relative_to(REPO) if shots.is_relative_to(REPO) else shots}/"
    )
    (shots / "report.txt").write_text(report + "\n" + "\n".join(problems) + ("\n" if problems else ""))
    (shots / "report.json").write_text(json.dumps({"stats": stats, "problems": problems}, indent=1))
    print(report)
    assert stats["pages"] >= 3
    assert not problems, report + "\n" + "\n".join(problems)


def test_search_page_finds_a_term(html_root, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.set_window_size(1280, 900)
    browser.get((html_root / "search.html").as_uri() + f"?q={SEARCH_TERM}")
    WebDriverWait(browser, 30).until(
        lambda d: (
            d.find_elements(By.CSS_SELECTOR, "#search-results ul.search li")
            or "did not match any" in d.find_element(By.ID, "search-results").text
        )
    )
    hits = browser.find_elements(By.CSS_SELECTOR, "#search-results ul.search li")
    assert hits, f"searching for {SEARCH_TERM!r} found nothing"
    assert any("book/" in h.find_element(By.TAG_NAME, "a").get_attribute("href") for h in hits)
    assert not severe_console_messages(browser)
    shots = html_root.parent / "screenshots"
    shots.mkdir(exist_ok=True)
    browser.save_screenshot(str(shots / "search_results.png"))


SAVE_ON_CLICK = """
const done = arguments[arguments.length - 1];
const link = document.querySelector(arguments[0]);
if (!link) { done("no link " + arguments[0]); return; }
link.click();  // the dropdown's items are hidden until it opens: a click event is what a reader's click sends
setTimeout(() => done("clicked"), 500);
"""


def test_notebook_links_download_from_a_book_read_from_disk(html_root, browser, tmp_path):
    """A lab's `.ipynb` on the Labs page and a chapter's *.ipynb* download button, clicked in a page opened from
    file://: the browser saves the notebook (the very file the link names) and stays on the page."""
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    labs_page = html_root / "book" / "labs.html"
    chapter = next(p for p in sorted((html_root / "book").glob("*.html")) if is_chapter(source_of(html_root, p)))
    lab = sorted(p.name for p in (REPO / "labs" / "source").iterdir() if p.is_dir())[0]
    cases = [
        (labs_page, f'a[href$="/{lab}.ipynb"]', f"{lab}.ipynb"),
        (chapter, "a.btn-download-notebook-button", f"{chapter.stem}.ipynb"),
    ]
    saved = []
    try:
        for page, selector, name in cases:
            browser.get(page.as_uri())
            href = browser.execute_script("return document.querySelector(arguments[0]).getAttribute('href')", selector)
            assert browser.execute_async_script(SAVE_ON_CLICK, selector) == "clicked"
            deadline = time.time() + 30
            while time.time() < deadline and not (downloads / name).exists():
                time.sleep(0.2)
            assert (downloads / name).exists(), (
                f"{page.name}: clicking {href} saved nothing ({list(downloads.iterdir())})"
            )
            assert browser.current_url == page.as_uri(), f"{page.name}: the click opened {browser.current_url}"
            assert (downloads / name).read_bytes() == (page.parent / unquote(href)).read_bytes()
            nb = json.loads((downloads / name).read_text())
            assert nb["cells"] and "nbformat" in nb
            saved.append(f"{page.name}: {name}")
        assert not severe_console_messages(browser)
    finally:
        browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "default"})
    chapter_nb = json.loads((downloads / f"{chapter.stem}.ipynb").read_text())
    assert "import courselib" in "".join("".join(c["source"]) for c in chapter_nb["cells"])  # the generated notebook
    print("notebook downloads from disk: " + "; ".join(saved))
