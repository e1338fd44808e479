"""Sphinx extension (listed in _config.yml): what the built book carries for students besides its pages.

- Every chapter (a MyST notebook) is also written as a plain `.ipynb` to `_notebooks/<docname>.ipynb` in
  the built site, generated from the MyST source by jupytext and tools/myst_notebook.py: no outputs,
  roles and directives turned into Markdown, a first cell that checks courselib. The deploy workflow
  publishes `_notebooks/` as the `notebooks` branch of the public repository (with `binder/` there), the
  pattern of d2l's generated-notebook repositories, because Colab and Binder open `.ipynb` files from git.
- The Colab and Binder launch buttons of every chapter point at that notebook on that branch (the theme
  would point them at the `.md` source, which Colab cannot open and Binder shows as text).
- courselib's wheel and sdist (tools/build_dist.py) are copied to `_static/dist/` with an index page.
- Each lab's student release (labs/release/<lab>/) is zipped into `_build/lab_archives/` before the pages
  are read, so that the Labs page can offer archives.
- Every link to a notebook (`.ipynb`) in the built pages downloads it instead of showing its JSON
  (:func:`notebook_downloads`): each gets the `download` attribute, which browsers honour for a book served
  over http(s), and a copy of the notebook in a small script beside it, which a few lines of JavaScript in
  the page turn into the download when the book is read from disk (`file://`), where browsers ignore the
  `download` attribute and would open the file as JSON. A chapter's *Download .ipynb* button offers the
  chapter's generated notebook (the one Colab and Binder open), not the executed MyST source.
"""

from __future__ import annotations

import codecs
import html
import json
import re
import shutil
import sys
import zipfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

import latexcodec  # noqa: F401  (registers the 'ulatex' codec used for BibTeX text)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import build_dist  # noqa: E402
import lab_setup  # noqa: E402
import myst_notebook  # noqa: E402

ARCHIVES = REPO / "_build" / "lab_archives"
NOTEBOOKS = "_notebooks"  # folder of the built site that becomes the `notebooks` branch
ZIP_DATE = (2026, 1, 1, 0, 0, 0)  # fixed, so an unchanged lab gives a byte-identical archive


# ------------------------------------------------------------------------------------------ launch links


def repo_parts(repository_url: str) -> tuple[str, str]:
    parts = urlsplit(repository_url).path.strip("/").split("/")
    return parts[0], parts[1].removesuffix(".git")


def launch_urls(repository_url: str, branch: str, docname: str, binderhub: str, colab: str) -> dict[str, str]:
    """{"Binder": url, "Colab": url} for the generated notebook of `docname` on `branch`."""
    org, repo = repo_parts(repository_url)
    path = f"{docname}.ipynb"
    urls = {}
    if binderhub:
        urls["Binder"] = f"{binderhub.rstrip('/')}/v2/gh/{org}/{repo}/{branch}?urlpath=lab/tree/{path}"
    if colab:
        urls["Colab"] = f"{colab.rstrip('/')}/github/{org}/{repo}/blob/{branch}/{path}"
    return urls


def is_chapter(app, docname: str) -> bool:
    return "kernelspec" in app.env.metadata.get(docname, {})


def retarget_launch_buttons(app, pagename, templatename, context, doctree):
    if not is_chapter(app, pagename):
        return
    opts = app.config.html_theme_options
    launch = opts.get("launch_buttons", {})
    urls = launch_urls(
        opts.get("repository_url", ""),
        app.config.notebooks_branch,
        pagename,
        launch.get("binderhub_url", ""),
        launch.get("colab_url", ""),
    )

    notebook = context["pathto"](f"{NOTEBOOKS}/{pagename}.ipynb", 1)

    def walk(buttons):
        for b in buttons:
            if b.get("type") == "group":
                walk(b.get("buttons", []))
            elif b.get("text") in urls:
                b["url"] = urls[b["text"]]
            elif b.get("label") == "download-notebook-button":  # the theme's: the executed MyST source
                b["url"] = notebook

    walk(context.get("header_buttons", []))


# ----------------------------------------------------------------------------------------- lab archives


def _zip(target: Path, files: list[tuple[Path, str]]) -> None:
    tmp = target.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for path, arcname in sorted(files, key=lambda f: f[1]):
            info = zipfile.ZipInfo(arcname, ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, path.read_bytes())
    if target.exists() and target.read_bytes() == tmp.read_bytes():
        tmp.unlink()  # unchanged: keep the old file (and its time stamp, so Sphinx copies nothing again)
    else:
        tmp.replace(target)


def write_lab_archives(app) -> None:
    release = REPO / "labs" / "release"
    labs = sorted(p for p in release.iterdir() if p.is_dir()) if release.exists() else []
    if not labs:
        return
    ARCHIVES.mkdir(parents=True, exist_ok=True)
    everything = []
    for lab in labs:
        files = [(f, f"{lab.name}/{f.relative_to(lab).as_posix()}") for f in lab.rglob("*") if f.is_file()]
        files = [f for f in files if ".ipynb_checkpoints" not in f[1]]
        _zip(ARCHIVES / f"{lab.name}.zip", files)
        everything += files
    _zip(ARCHIVES / "all_labs.zip", everything)


# ------------------------------------------------------------------------------------ chapter notebooks


def _bibliography(app) -> dict:
    from pybtex.database import parse_file

    entries = {}
    for bib in app.config.bibtex_bibfiles:
        entries.update(parse_file(str(Path(app.srcdir) / bib)).entries)
    return entries


def _authors(entry) -> str:
    people = entry.persons.get("author") or entry.persons.get("editor") or []
    last = [_clean(" ".join(p.last_names)) for p in people]
    if len(last) >= 3:
        return f"{last[0]} et al."
    return " and ".join(last) or "Anonymous"


def _clean(text: str) -> str:
    """BibTeX text -> plain Unicode (accents decoded, braces dropped)."""
    try:
        text = codecs.decode(text or "", "ulatex")
    except ValueError:
        text = text or ""
    return re.sub(r"[{}]", "", text).replace("--", "-")


def _glue_values(app, docname: str) -> dict[str, object]:
    executed = Path(app.outdir).parent / "jupyter_execute" / f"{docname}.ipynb"
    values: dict[str, object] = {}
    if not executed.exists():
        return values
    for cell in json.loads(executed.read_text()).get("cells", []):
        for out in cell.get("outputs", []):
            name = out.get("metadata", {}).get("scrapbook", {}).get("name")
            if name and "text/plain" in out.get("data", {}):
                text = out["data"]["text/plain"]
                values[name] = "".join(text) if isinstance(text, list) else text
    return values


def resolver(app, docname: str, bib: dict) -> myst_notebook.Resolver:
    env = app.env
    labels = env.domaindata["std"]["labels"]
    anon = env.domaindata["std"]["anonlabels"]
    equations = env.domaindata.get("math", {}).get("objects", {})
    base = (app.config.html_baseurl or "").rstrip("/")
    glue = _glue_values(app, docname)

    def page_url(target_doc: str, anchor: str = "") -> str:
        rel = f"{target_doc}.html" + (f"#{anchor}" if anchor else "")
        if base:
            return f"{base}/{rel}"
        depth = docname.count("/") + 1  # the notebook sits at _notebooks/<docname>.ipynb
        return "../" * depth + rel

    def label(name: str):
        if name in labels:
            return labels[name]
        if name in anon:
            return (*anon[name], "")
        return None

    def number(doc: str, kind: str, node_id: str) -> str | None:
        num = env.toc_fignumbers.get(doc, {}).get(kind, {}).get(node_id)
        return ".".join(map(str, num)) if num else None

    def equation(name: str) -> str | None:
        if name not in equations:
            return None
        doc, num = equations[name][:2]
        return number(doc, "displaymath", f"equation-{name}") or str(num)

    def figure(name: str) -> str | None:
        found = label(name)
        return number(found[0], "figure", found[1]) if found else None

    def doc_title(doc: str) -> str | None:
        title = env.titles.get(doc)
        return title.astext() if title is not None else None

    def citation(key: str, textual: bool) -> str | None:
        entry = bib.get(key)
        if entry is None:
            return None
        year = entry.fields.get("year", "n.d.")
        return f"{_authors(entry)} ({year})" if textual else f"{_authors(entry)}, {year}"

    def reference(key: str) -> str | None:
        entry = bib.get(key)
        if entry is None:
            return None
        f = entry.fields
        venue = f.get("booktitle") or f.get("journal") or f.get("publisher") or f.get("howpublished") or ""
        link = f.get("url") or (f"https://doi.org/{f['doi']}" if f.get("doi") else "")
        text = f"{_authors(entry)} ({f.get('year', 'n.d.')}). {_clean(f.get('title', key))}."
        if venue:
            text += f" *{_clean(venue)}*."
        return text + (f" <{link}>" if link else "")

    return myst_notebook.Resolver(
        docname=docname,
        page_url=page_url,
        label=label,
        equation=equation,
        figure=figure,
        doc_title=doc_title,
        citation=citation,
        reference=reference,
        glue=lambda name: glue.get(name),
    )


def chapter_notebook(app, docname: str, bib: dict):
    """The generated notebook of one chapter (an nbformat NotebookNode)."""
    import jupytext
    import nbformat

    src = Path(app.env.doc2path(docname))
    nb = jupytext.read(src, fmt="md:myst")
    r = resolver(app, docname, bib)
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            text = myst_notebook.convert_markdown(cell.source, r).strip("\n")
            if text.strip():
                cells.append(nbformat.v4.new_markdown_cell(text))
        elif cell.cell_type == "code":
            tags = [t for t in cell.metadata.get("tags", []) if t]
            cells.append(nbformat.v4.new_code_cell(cell.source, metadata={"tags": tags} if tags else {}))
        else:
            cells.append(nbformat.v4.new_raw_cell(cell.source))
    page = r.page_url(docname, "")
    title = r.doc_title(docname) or docname
    intro = (
        f"*This notebook is the chapter [{title}]({page}) of the book "
        f"*{app.config.html_title}*, generated from the book's source. The book's page has the figures, "
        "numbered equations and references; here every cell runs, and the explorers' sliders are live.*\n\n"
        "Run the first code cell first: it checks that `courselib`, the book's library, is installed."
    )
    setup = "\n".join(lab_setup.check_block(lab_setup.version())).replace("This lab needs", "This notebook needs")
    setup += '\nprint("courselib", courselib.__version__, "ready")'
    out = nbformat.v4.new_notebook()
    out.cells = [nbformat.v4.new_markdown_cell(intro), nbformat.v4.new_code_cell(setup), *cells]
    out.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
    }
    for i, cell in enumerate(out.cells):  # stable ids: an unchanged chapter gives a byte-identical notebook
        cell["id"] = f"cell-{i}"
    return out


def notebook_branch_files(app) -> dict[str, str]:
    """README and Binder configuration written beside the notebooks (the `notebooks` branch's root)."""
    ver = lab_setup.version()
    binder = (
        "# Binder (repo2docker) installs this before opening the notebooks: the book's library at the book's\n"
        "# version, with the CPU build of torch (the extra index carries it; PyPI's Linux torch is the CUDA one).\n"
        f"--extra-index-url {lab_setup.CPU_INDEX}\n"
        f"ondevice-ml-courselib[labs]=={ver}\n"
    )
    readme = (
        f"# {app.config.html_title}: the chapters as notebooks\n\n"
        "Generated from the book's MyST sources by the deploy workflow; do not edit here. Open a chapter in\n"
        "Colab or Binder from the launch button of its page in the book. Locally:\n\n"
        f"```bash\n{lab_setup.install_command(ver)}\njupyter lab\n```\n"
    )
    return {"binder/requirements.txt": binder, "README.md": readme}


def write_notebooks(app) -> list[Path]:
    import nbformat

    out_dir = Path(app.outdir) / NOTEBOOKS
    bib = _bibliography(app)
    written = []
    for docname in sorted(app.env.found_docs):
        if not is_chapter(app, docname):
            continue
        nb = chapter_notebook(app, docname, bib)
        path = out_dir / f"{docname}.ipynb"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = nbformat.writes(nb) + "\n"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        written.append(path)
    for rel, text in notebook_branch_files(app).items():
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / rel).write_text(text)
    return written


# ------------------------------------------------------------------------------------ notebook downloads

NOTEBOOK_LINK = re.compile(r"<a\b[^>]*>", re.S)
ATTRIBUTE = re.compile(r"""([^\s=>]+)(?:\s*=\s*("[^"]*"|'[^']*'|[^\s>]+))?""")
OFFLINE_ATTR = "data-offline-notebook"
SCRIPT_ID = "notebook-downloads"
# A book read from disk: browsers ignore `download` on file:// links and show the notebook's JSON. A click
# on a notebook link then loads the notebook's copy (a script beside it: scripts load from file:// where
# fetch() is refused) and saves it through a blob: URL, which browsers do download.
DOWNLOAD_SCRIPT = (
    f'<script id="{SCRIPT_ID}">\n'
    "document.addEventListener('click', function (event) {\n"
    f"  var link = event.target.closest ? event.target.closest('a[{OFFLINE_ATTR}]') : null;\n"
    "  if (!link || window.location.protocol !== 'file:') { return; }\n"
    "  event.preventDefault();\n"
    f"  var src = link.getAttribute('{OFFLINE_ATTR}');\n"
    "  var script = document.createElement('script');\n"
    "  script.onload = function () {\n"
    "    var text = (window.courselibNotebooks || {})[decodeURIComponent(src.split('/').pop())];\n"
    "    var url = URL.createObjectURL(new Blob([text], {type: 'application/x-ipynb+json'}));\n"
    "    var save = document.createElement('a');\n"
    "    save.href = url;\n"
    "    save.download = link.getAttribute('download');\n"
    "    document.body.appendChild(save);\n"
    "    save.click();\n"
    "    save.remove();\n"
    "    setTimeout(function () { URL.revokeObjectURL(url); }, 60000);\n"
    "  };\n"
    "  script.src = src;\n"
    "  document.head.appendChild(script);\n"
    "});\n"
    "</script>\n"
)


def _is_local(href: str) -> bool:
    return not re.match(r"^([a-z][a-z0-9+.-]*:|//)", href, re.I)


def _download_link(tag: str, page: Path, sidecars: dict[Path, str]) -> str:
    """`tag` (an `<a ...>` of `page`) as a download, if it links to a notebook file of the built site."""
    attrs = [(n, v) for n, v in ATTRIBUTE.findall(tag[2:-1]) if n != "/"]
    href = next((v.strip("\"'") for n, v in attrs if n.lower() == "href"), "").split("#")[0].split("?")[0]
    if not href.endswith(".ipynb") or not _is_local(href):
        return tag
    target = (page.parent / unquote(html.unescape(href))).resolve()
    if not target.is_file():
        return tag
    sidecars[target.with_name(target.name + ".js")] = target.read_text(encoding="utf-8")
    kept = [n if not v else f"{n}={v}" for n, v in attrs if n.lower() not in ("download", OFFLINE_ATTR)]
    added = [f'download="{html.escape(target.name)}"', f'{OFFLINE_ATTR}="{href}.js"']
    return "<a " + " ".join(kept + added) + ">"


def notebook_downloads(outdir: Path) -> int:
    """Make every local `.ipynb` link of the built pages a download (see the module's docstring): the `download`
    attribute with the file's name, a copy `<notebook>.js` beside the notebook, and the page's click handler.
    Idempotent (Sphinx rewrites only changed pages); returns how many notebook links the pages hold."""
    sidecars: dict[Path, str] = {}
    links = 0
    for page in sorted(outdir.rglob("*.html")):
        rel = page.relative_to(outdir).parts
        if rel[0] in ("_static", "_sources", "_images") or any(part.startswith(".") for part in rel):
            continue
        old = page.read_text(encoding="utf-8")
        text = NOTEBOOK_LINK.sub(lambda m, page=page: _download_link(m.group(0), page, sidecars), old)
        links += text.count(f"{OFFLINE_ATTR}=")
        if f"{OFFLINE_ATTR}=" in text and f'id="{SCRIPT_ID}"' not in text:
            text = text.replace("</body>", DOWNLOAD_SCRIPT + "</body>", 1)
        if text != old:
            page.write_text(text, encoding="utf-8")
    for path, notebook in sidecars.items():
        key = json.dumps(path.name)
        body = f"(window.courselibNotebooks = window.courselibNotebooks || {{}})[{key}] = {json.dumps(notebook)};\n"
        if not path.exists() or path.read_text(encoding="utf-8") != body:
            path.write_text(body, encoding="utf-8")
    return links


# ------------------------------------------------------------------------------------------ the wheel


def write_dist(app) -> None:
    wheel, sdist = build_dist.ensure()
    target = Path(app.outdir) / "_static" / "dist"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    rows = []
    for p in (wheel, sdist):
        shutil.copy2(p, target / p.name)
        rows.append(f'<li><a href="{p.name}" download>{p.name}</a> ({p.stat().st_size:,} bytes)</li>')
    cmd = html.escape(lab_setup.install_command())
    (target / "index.html").write_text(
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>courselib downloads</title></head>"
        f"<body><h1>courselib {lab_setup.version()}</h1><p>The book's library as files, for a machine without "
        f"internet access. With a connection, install it with <code>{cmd}</code>.</p><ul>{''.join(rows)}</ul>"
        f'<p>Offline: <code>pip install "{wheel.name}[labs]"</code> (its dependencies must be available '
        "too).</p></body></html>\n"
    )


def finished(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    write_notebooks(app)
    write_dist(app)
    notebook_downloads(Path(app.outdir))


def setup(app):
    app.add_config_value("notebooks_branch", "notebooks", "html")
    app.connect("builder-inited", write_lab_archives)
    app.connect("html-page-context", retarget_launch_buttons, priority=600)
    app.connect("build-finished", finished)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
