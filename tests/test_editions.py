"""What students get (issue 18): one install command, chapter notebooks behind the launch buttons, a
student edition with no answers in it, lab downloads that work from disk, explorers that start where their
static figures are.

Fast tests check the tools on small hand-made inputs (each also shows that the check can fail). The
tests marked `slow` use the built book (the same fixture as tests/test_book.py; set BOOK_HTML to check an
already-built book) and assemble and scan the student edition (tools/edition.py).
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import sys
import zipfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from courselib.grading import quiz

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import edition  # noqa: E402
import lab_setup  # noqa: E402
import myst_notebook  # noqa: E402
import student_book  # noqa: E402

LABS = sorted(p.name for p in (REPO / "labs" / "source").iterdir() if p.is_dir())


def chapters() -> list[Path]:
    return [p for p in sorted((REPO / "book").glob("*.md")) if "kernelspec" in p.read_text()[:600]]


# ------------------------------------------------------------------------------- the install command


def test_one_install_command_everywhere():
    cmd = lab_setup.install_command()
    assert cmd == f'pip install "ondevice-ml-courselib[labs]=={lab_setup.version()}"'
    import courselib

    assert courselib.__version__ == lab_setup.version()
    for doc in ("README.md", "book/labs.md"):
        text = (REPO / doc).read_text()
        assert cmd in text, f"{doc} does not show the install command {cmd!r}"
        assert "git+https" not in text and "courselib @" not in text, f"{doc} still names the old git install"
    assert lab_setup.cpu_torch_command() in (REPO / "book" / "labs.md").read_text()


def test_every_lab_setup_cell_checks_courselib_and_names_the_command():
    assert lab_setup.main(["--check"]) == 0, "run .venv/bin/python tools/lab_setup.py"
    for src in sorted((REPO / "labs" / "source").glob("*/*.ipynb")):
        cell = lab_setup.setup_cell(json.loads(src.read_text()))
        assert cell is not None, f"{src.name}: the first code cell is not the locked `setup` cell"
        assert cell["metadata"]["nbgrader"].get("locked") is True
        text = "".join(cell["source"])
        assert f"%{lab_setup.install_command()}" in text and lab_setup.CPU_INDEX in text
        assert "make test" not in text and "apt-get" not in text


def test_setup_check_fails_without_courselib_and_passes_with_it(tmp_path):
    """Run the generated check in a fresh interpreter: with courselib hidden, with a wrong version, and as is."""
    code = "\n".join(lab_setup.check_block(lab_setup.version()))
    fake = tmp_path / "fake"
    (fake / "courselib").mkdir(parents=True)
    (fake / "courselib" / "__init__.py").write_text('__version__ = "0.0.1"\n')
    import subprocess

    def run(extra_path: str | None, hide: bool):
        prelude = "import sys\n"
        if hide:
            prelude += "sys.modules['courselib'] = None\n"  # import courselib -> ImportError
        if extra_path:
            prelude += f"sys.path.insert(0, {extra_path!r})\n"
        return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, cwd=tmp_path)

    missing = run(None, hide=True)
    assert missing.returncode != 0 and "is not installed" in missing.stderr
    assert lab_setup.install_command() in missing.stderr and lab_setup.CPU_INDEX in missing.stderr
    wrong = run(str(fake), hide=False)
    assert wrong.returncode != 0 and "is version 0.0.1" in wrong.stderr
    ok = run(None, hide=False)
    assert ok.returncode == 0, ok.stderr


def test_lab_setup_rewrites_an_old_setup_cell_and_keeps_the_rest():
    old = (
        "# Setup: this lab needs courselib (the course's library).\n"
        "try:\n    import courselib\n    from courselib.data import load_dataset\n"
        "except ImportError:\n    raise ImportError(\n        'old advice: make test'\n    ) from None\n"
        "import numpy as np\nX = load_dataset('digits', 'train')"
    )
    new = lab_setup.new_source(old, "9.9.0")
    assert "make test" not in new and 'COURSELIB_VERSION = "9.9.0"' in new
    assert new.endswith(
        "from courselib.data import load_dataset\nimport numpy as np\nX = load_dataset('digits', 'train')"
    )
    assert lab_setup.new_source(new, "9.9.0") == new  # idempotent
    assert '"9.9.1"' in lab_setup.new_source(new, "9.9.1")


def test_distribution_metadata():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["name"] == "ondevice-ml-courselib" and project["dynamic"] == ["version"]
    core = {re.split(r"[<>=!~;\[ ]", d)[0].lower() for d in project["dependencies"]}
    # every third-party module the labs import is a core dependency or in the `labs` extra
    extras = project["optional-dependencies"]
    labs_extra = {re.split(r"[<>=!~;\[ ]", d)[0].lower() for d in extras["labs"]}
    if "ondevice-ml-courselib" in labs_extra:
        inner = re.search(r"\[(.*)\]", next(d for d in extras["labs"] if d.startswith("ondevice-ml-courselib")))
        for e in inner.group(1).split(","):
            labs_extra |= {re.split(r"[<>=!~;\[ ]", d)[0].lower() for d in extras[e.strip()]}
    module_to_dist = {"sklearn": "scikit-learn", "yaml": "pyyaml"}
    stdlib = set(sys.stdlib_module_names) | {"courselib", "IPython", "ipywidgets"}
    for src in sorted((REPO / "labs" / "source").glob("*/*.ipynb")):
        code = "\n".join("".join(c["source"]) for c in json.loads(src.read_text())["cells"] if c["cell_type"] == "code")
        for mod in set(re.findall(r"^\s*(?:from|import)\s+([A-Za-z_]\w*)", code, re.M)) - stdlib:
            dist = module_to_dist.get(mod, mod).lower().replace("_", "-")
            assert dist in core | labs_extra, f"{src.name} imports {mod}, which a student install would lack"


# --------------------------------------------------------------------------- MyST -> Jupyter notebook

MYST_SAMPLE = """(sec-x)=
# A chapter

:::{admonition} What you will learn
:class: tip
- the loss of {cite}`paper2011` and {cite:t}`paper2011`, see {ref}`sec-y` and {eq}`eq-loss`
- a {term}`binary code <binary code>`, {math}`x^2`, `code {x}` stays, {func}`courselib.itq.fit`
:::

$$
Q = \\lVert B \\rVert
$$ (eq-loss)

```{exercise} By hand
:label: ex-1

Show {math}`R^\\top R = I`.
```

````{solution} ex-1
:class: dropdown

Use the SVD:
```python
U, S, Vt = svd(M)
```
````

% a comment
The value is {glue:text}`acc:.2f`.

```{bibliography}
:filter: docname in docnames
```
"""


def sample_resolver():
    return myst_notebook.Resolver(
        docname="book/x",
        page_url=lambda d, a="": f"https://book.example/{d}.html" + (f"#{a}" if a else ""),
        label=lambda n: ("book/y", "sec-y", "The other section") if n == "sec-y" else None,
        equation=lambda n: "3.1" if n == "eq-loss" else None,
        citation=lambda k, textual: (
            ("Gong and Lazebnik (2011)" if textual else "Gong and Lazebnik, 2011") if k == "paper2011" else None
        ),
        reference=lambda k: "Gong and Lazebnik (2011). Iterative quantization." if k == "paper2011" else None,
        glue=lambda n: "0.91234" if n == "acc" else None,
    )


def test_myst_roles_and_directives_become_markdown():
    out = myst_notebook.convert_markdown(MYST_SAMPLE, sample_resolver())
    assert myst_notebook.leftover_markup(out) == [], out
    assert "(Gong and Lazebnik, 2011) and Gong and Lazebnik (2011)" in out
    assert "[The other section](https://book.example/book/y.html#sec-y)" in out and "Eq. (3.1)" in out
    assert "\\tag{3.1}\n$$" in out and "$x^2$" in out and "`code {x}` stays" in out
    assert "> **What you will learn**" in out and "> **Exercise: By hand**" in out
    assert "<details><summary>Solution</summary>" in out and "U, S, Vt = svd(M)" in out
    assert "a comment" not in out and "(sec-x)=" not in out
    assert "The value is 0.91." in out
    assert "- Gong and Lazebnik (2011). Iterative quantization." in out
    # the check itself sees raw MyST
    assert myst_notebook.leftover_markup(MYST_SAMPLE)


def test_launch_urls_point_at_the_notebooks_branch():
    urls = student_book.launch_urls(
        "https://github.com/org/book",
        "notebooks",
        "book/itq",
        "https://mybinder.org",
        "https://colab.research.google.com",
    )
    assert urls["Colab"] == "https://colab.research.google.com/github/org/book/blob/notebooks/book/itq.ipynb"
    assert urls["Binder"] == "https://mybinder.org/v2/gh/org/book/notebooks?urlpath=lab/tree/book/itq.ipynb"


# ----------------------------------------------------------------------------------------- the scan


def test_scan_finds_markers_and_solution_code_anywhere(tmp_path):
    answers = edition.solution_lines()
    for lab in LABS:
        assert lab in answers.values(), f"no substantive solution line found in {lab}: the scan would be blind"
    line, lab = next(iter(answers.items()))
    (tmp_path / "page.html").write_text(f"<pre><span>{line.replace(' ', '</span> <span>')}</span></pre>")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(
            "lab/lab.ipynb", json.dumps({"cells": [{"cell_type": "code", "source": ["### BEGIN HIDDEN TESTS\n"]}]})
        )
    (tmp_path / "archive.zip").write_bytes(buf.getvalue())
    (tmp_path / "clean.html").write_text("<p>nothing to see</p>")
    # the instructor sources themselves are full of both, lab by lab
    for lab in LABS:
        found = edition.scan([REPO / "labs" / "source" / lab], answers)
        assert any("BEGIN SOLUTION" in p for p in found) and any(f"solution code of {lab}" in p for p in found), lab
    problems = edition.scan([tmp_path], answers)
    assert any("page.html" in p and "solution code" in p for p in problems), problems
    assert any("archive.zip!lab/lab.ipynb" in p and "BEGIN HIDDEN TESTS" in p for p in problems), problems
    assert not any("clean.html" in p for p in problems)


def test_scan_finds_concept_check_answers(tmp_path):
    """The graded concept checks: an explanation or the answer key anywhere in the edition is a leak."""
    frags = edition.quiz_answers()
    sentence, qid = next(iter(frags.items()))
    words = sentence.split()
    (tmp_path / "page.html").write_text(
        f"<p>Answer: <strong>b</strong>. {' '.join(words[:3])}\n{' '.join(words[3:])}</p>"
    )
    key = tmp_path / "key"
    quiz.write_pages(out_dir=key, answers=True)
    (tmp_path / "clean.html").write_text("<p>nothing to see</p>")
    problems = edition.scan([tmp_path], {}, frags)
    assert any("page.html" in p and f"concept check {qid}" in p for p in problems), problems
    assert any("key/itq.md" in p and "concept check itq-" in p for p in problems), problems  # the answer key
    assert not any("clean.html" in p for p in problems)
    # the book's own pages (questions only) pass
    assert edition.scan(sorted((REPO / "book" / "question_bank").glob("*.md")), {}, frags) == []


def test_wheel_and_sdist_hold_no_answers(tmp_path):
    import build_dist

    wheel, sdist = build_dist.build(tmp_path)
    assert wheel.name == f"ondevice_ml_courselib-{lab_setup.version()}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("courselib/grading/") for n in names)
    assert not any(n.startswith(("labs/", "tests/")) for n in names)
    import tarfile

    members = tarfile.open(sdist).getnames()
    assert not any("/labs/" in m or "/tests/" in m for m in members), [m for m in members if "/tests/" in m][:3]
    assert edition.scan([wheel, sdist]) == []


# ------------------------------------------------------------------------------------------ explorers


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and ast.unparse(n.func).split(".")[-1] == name.split(".")[-1]
    ]


def _start_value(node: ast.expr):
    """The value an ipywidgets control starts at, as `interactive` builds it (None: cannot tell)."""
    import ipywidgets as widgets

    if isinstance(node, ast.Call) and "value" in {k.arg for k in node.keywords}:
        return ast.literal_eval(next(k.value for k in node.keywords if k.arg == "value"))
    try:
        abbrev = ast.literal_eval(node)
    except ValueError:
        return None
    w = widgets.interactive(lambda **kw: None, x=abbrev)
    return w.kwargs["x"]


def explorer_starts() -> list[tuple[str, str, object, object]]:
    """(chapter, control, explorer start value, static figure value) for every explorer control."""
    rows = []
    for src in chapters():
        text = src.read_text()
        cells = re.findall(r"```\{code-cell\}[^\n]*\n(.*?)\n```", text, re.S)
        for i, cell in enumerate(cells):
            body = "\n".join(ln for ln in cell.split("\n") if not ln.startswith(":"))
            body = re.sub(r"^---\n.*?\n---\n", "", body, flags=re.S)
            if "make_explorer(" not in body:
                continue
            call = _calls(ast.parse(body), "make_explorer")[0]
            target = call.args[0]
            if isinstance(target, ast.Lambda):  # lambda a, b: f(x, a, b, k=1): map each parameter to f's slot
                inner = target.body
                params = [a.arg for a in target.args.args]
                slots = {}
                for pos, arg in enumerate(inner.args):
                    if isinstance(arg, ast.Name) and arg.id in params:
                        slots[arg.id] = pos
                for kw in inner.keywords:
                    if isinstance(kw.value, ast.Name) and kw.value.id in params:
                        slots[kw.value.id] = kw.arg
                callee = ast.unparse(inner.func)
            else:
                callee, slots = ast.unparse(target), None
            later = "\n".join(re.sub(r"^---\n.*?\n---\n", "", c, flags=re.S) for c in cells[i + 1 : i + 3])
            later = "\n".join(ln for ln in later.split("\n") if not ln.startswith(":"))
            static = next(iter(_calls(ast.parse(later), callee)), None)
            for kw in call.keywords:
                start = _start_value(kw.value)
                if static is None:
                    fig = "no static call"
                else:
                    slot = slots.get(kw.arg, kw.arg) if slots is not None else kw.arg
                    if isinstance(slot, int):
                        fig = ast.literal_eval(static.args[slot]) if slot < len(static.args) else "missing"
                    else:
                        node = next((k.value for k in static.keywords if k.arg == slot), None)
                        fig = ast.literal_eval(node) if node is not None else "missing"
                rows.append((src.name, kw.arg, start, fig))
    return rows


def test_explorers_start_where_their_static_figures_are():
    rows = explorer_starts()
    assert len({r[0] for r in rows}) >= 5, rows
    bad = [
        f"book/{ch}: control {name} starts at {start!r} but the static stand-in uses {fig!r}"
        for ch, name, start, fig in rows
        if not (start == fig or (isinstance(start, float) and isinstance(fig, float) and abs(start - fig) < 1e-9))
    ]
    assert not bad, "\n".join(bad)


def test_explorer_start_values_are_computed_like_ipywidgets():
    # (1, 8, 1) starts in the middle (4); a list starts at its first item; a widget at its value
    assert _start_value(ast.parse("(1, 8, 1)", mode="eval").body) == 4
    assert _start_value(ast.parse("[16, 8]", mode="eval").body) == 16
    assert _start_value(ast.parse("widgets.IntSlider(value=3, min=0, max=9)", mode="eval").body) == 3
    assert _start_value(ast.parse("(0, len(X) - 1)", mode="eval").body) is None


# ------------------------------------------------------------------------------ the built book (slow)


@pytest.fixture(scope="module")
def html_root(request) -> Path:
    override = os.environ.get("BOOK_HTML")
    if override:
        return Path(override)
    return request.getfixturevalue("built_book")


def launch_links(page_html: str) -> dict[str, str]:
    block = re.search(r"dropdown-launch-buttons.*?</ul>", page_html, re.S)
    links = re.findall(r'href="([^"]+)"', block.group(0)) if block else []
    return {urlsplit(u).netloc: u.replace("&amp;", "&") for u in links}


def notebook_of(url: str, branch: str) -> str:
    """The path inside the notebooks branch that a Colab or Binder link opens."""
    parts = urlsplit(url)
    if parts.netloc == "colab.research.google.com":
        return parts.path.split(f"/blob/{branch}/", 1)[1]
    assert f"/{branch}" in parts.path, url
    return parse_qs(parts.query)["urlpath"][0].removeprefix("lab/tree/")


@pytest.mark.slow
@pytest.mark.xdist_group("book")
def test_every_chapter_launches_a_notebook_the_build_produced(html_root):
    branch = "notebooks"
    checked = 0
    for src in chapters():
        page = html_root / "book" / f"{src.stem}.html"
        if not page.exists() and os.environ.get("BOOK_HTML"):
            continue  # a partial build (tools/build_chapter.sh)
        links = launch_links(page.read_text())
        assert {"mybinder.org", "colab.research.google.com"} <= set(links), f"{page.name}: {links}"
        for host, url in links.items():
            if host not in ("mybinder.org", "colab.research.google.com"):
                continue
            rel = notebook_of(url, branch)
            assert rel == f"book/{src.stem}.ipynb", url
            nb_path = html_root / student_book.NOTEBOOKS / rel
            assert nb_path.exists(), f"{url} opens {rel}, which the build did not produce"
            nb = json.loads(nb_path.read_text())
            assert nb["metadata"]["kernelspec"]["name"] == "python3"
            for cell in nb["cells"]:
                if cell["cell_type"] == "code":
                    assert cell["outputs"] == [] and cell["execution_count"] is None
                else:
                    left = myst_notebook.leftover_markup("".join(cell["source"]))
                    assert not left, f"{rel}: MyST left in a Markdown cell: {left}"
            code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
            assert "import courselib" in code and lab_setup.install_command() in code
        checked += 1
    assert checked >= 1
    binder = (html_root / student_book.NOTEBOOKS / "binder" / "requirements.txt").read_text()
    assert f"ondevice-ml-courselib[labs]=={lab_setup.version()}" in binder


@pytest.mark.slow
@pytest.mark.xdist_group("book")
def test_the_book_ships_the_wheel_and_lab_archives(html_root):
    dist = html_root / "_static" / "dist"
    wheel = dist / f"ondevice_ml_courselib-{lab_setup.version()}-py3-none-any.whl"
    assert wheel.exists() and (dist / f"ondevice_ml_courselib-{lab_setup.version()}.tar.gz").exists()
    assert "courselib/__init__.py" in zipfile.ZipFile(wheel).namelist()
    labs_page = html_root / "book" / "labs.html"
    if not labs_page.exists():
        pytest.skip("partial build without the Labs page")
    text = labs_page.read_text()
    for lab in LABS:
        m = re.search(
            rf'<a[^>]*\bdownload\b[^>]*href="([^"]*/{lab}\.zip)"|<a[^>]*href="([^"]*/{lab}\.zip)"[^>]*\bdownload\b',
            text,
        )
        assert m, f"the Labs page offers no archive of {lab}"
        archive = (labs_page.parent / (m.group(1) or m.group(2))).resolve()
        names = zipfile.ZipFile(archive).namelist()
        assert f"{lab}/{lab}.ipynb" in names, names


@pytest.mark.slow
@pytest.mark.xdist_group("book")
def test_student_edition_has_no_answers(html_root, tmp_path):
    out = edition.assemble(tmp_path / "student", site=html_root)
    for rel in edition.NEVER_PUBLISHED:
        assert not (out / rel).exists()
    assert (out / "labs").exists() and (out / "notebooks").exists() and list((out / "dist").glob("*.whl"))
    problems = edition.scan([out])
    assert problems == [], "\n".join(problems[:40])


@pytest.mark.slow
@pytest.mark.xdist_group("book")
def test_lab_archive_downloads_from_a_book_read_from_disk(html_root, tmp_path):
    """Clicking a lab's archive on the Labs page, opened from file://, saves the file (it does not navigate)."""
    chromium = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    chromedriver = Path(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    if not chromium.exists() or not chromedriver.exists():
        pytest.skip(f"headless Chromium not installed ({chromium}, {chromedriver}): `make test` as root installs it")
    labs_page = html_root / "book" / "labs.html"
    if not labs_page.exists():
        pytest.skip("partial build without the Labs page")
    import time

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    os.environ.setdefault("SE_OFFLINE", "true")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(chromium)
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'p'}",
    ):
        opts.add_argument(arg)
    opts.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(options=opts, service=Service(str(chromedriver)))
    try:
        driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        lab = LABS[0]
        driver.get(labs_page.as_uri())
        link = next(
            a
            for a in driver.find_elements(By.CSS_SELECTOR, "a[download]")
            if a.get_attribute("href").endswith(f"/{lab}.zip")
        )
        link.click()
        deadline = time.time() + 30
        while time.time() < deadline and not (downloads / f"{lab}.zip").exists():
            time.sleep(0.2)
        assert (downloads / f"{lab}.zip").exists(), f"clicking {lab}.zip saved nothing: {list(downloads.iterdir())}"
        assert driver.current_url == labs_page.as_uri(), f"the click navigated to {driver.current_url}"
        nb = json.loads(zipfile.ZipFile(downloads / f"{lab}.zip").read(f"{lab}/{lab}.ipynb"))
        assert any("raise NotImplementedError()" in "".join(c["source"]) for c in nb["cells"])
    finally:
        driver.quit()


def test_glue_values_come_from_the_executed_chapter(tmp_path):
    """{glue:text} in a generated notebook shows the value the executed chapter glued, formatted as asked."""
    from types import SimpleNamespace

    executed = tmp_path / "jupyter_execute" / "book" / "ch.ipynb"
    executed.parent.mkdir(parents=True)
    out = {"output_type": "display_data", "metadata": {"scrapbook": {"name": "acc"}}, "data": {"text/plain": "0.98765"}}
    executed.write_text(json.dumps({"cells": [{"cell_type": "code", "source": "", "outputs": [out]}]}))
    app = SimpleNamespace(outdir=str(tmp_path / "html"))
    values = student_book._glue_values(app, "book/ch")
    assert values == {"acc": "0.98765"}
    r = myst_notebook.Resolver(glue=values.get)
    assert myst_notebook.convert_markdown("accuracy {glue:text}`acc:.1%`, {glue:text}`missing`", r) == (
        "accuracy 98.8%, `missing`"
    )


def test_notebook_links_become_downloads_with_a_copy_for_file_urls(tmp_path):
    """tools/student_book.notebook_downloads on a hand-made site: local notebook links get `download` and a copy
    beside the notebook (read by the page's script when the book is opened from disk); launch links, other
    links and links to missing files are left alone; a second pass changes nothing."""
    site = tmp_path / "html"
    (site / "_downloads" / "abc").mkdir(parents=True)
    (site / "book").mkdir()
    nb_text = json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5, "x": "</script> é"})
    (site / "_downloads" / "abc" / "lab 0.ipynb").write_text(nb_text)
    page = site / "book" / "labs.html"
    page.write_text(
        "<html><body>"
        '<a class="reference download internal" download="" href="../_downloads/abc/lab%200.ipynb">lab</a> '
        '<a href="https://colab.research.google.com/github/o/r/blob/notebooks/book/itq.ipynb" target="_blank">C</a> '
        '<a href="../_downloads/abc/gone.ipynb">gone</a> <a href="itq.html">chapter</a>'
        "</body></html>"
    )
    plain = site / "book" / "plain.html"
    plain.write_text('<html><body><a href="itq.html">x</a></body></html>')
    assert student_book.notebook_downloads(site) == 1
    html = page.read_text()
    assert (
        '<a class="reference download internal" href="../_downloads/abc/lab%200.ipynb" download="lab 0.ipynb" '
        'data-offline-notebook="../_downloads/abc/lab%200.ipynb.js">' in html
    )
    assert (
        '<a href="https://colab.research.google.com/github/o/r/blob/notebooks/book/itq.ipynb" target="_blank">' in html
    )
    assert '<a href="../_downloads/abc/gone.ipynb">' in html
    assert html.count(f'id="{student_book.SCRIPT_ID}"') == 1 and html.index("<script") > html.index("</a>")
    assert student_book.SCRIPT_ID not in plain.read_text()
    sidecar = (site / "_downloads" / "abc" / "lab 0.ipynb.js").read_text()
    prefix = '(window.courselibNotebooks = window.courselibNotebooks || {})["lab 0.ipynb.js"] = '
    assert sidecar.startswith(prefix) and json.loads(sidecar[len(prefix) :].rstrip().rstrip(";")) == nb_text
    assert student_book.notebook_downloads(site) == 1 and page.read_text() == html  # idempotent
