"""Book and lab timings: clean build, no-change rebuild, each chapter's and lab solution's execution time.

``.venv/bin/python benchmarks/run.py book``. The clean build goes to a temporary folder with an empty
execution cache (so it really executes every chapter); the rebuild then reuses that cache. Then
``make book`` twice in the repository: the first brings ``_build`` up to date (a full build if it was
never built), the second, with nothing changed, is timed (budget 10 s: no lab release regenerated, no
chapter executed). Budgets (issue 16): every chapter <= 60 s, a clean build <= 5 minutes, measured with
nothing else running on the machine; the load average is printed beside the numbers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from _common import REPO, print_table
from nbclient import NotebookClient

BIN = Path(sys.executable).parent


def chapters() -> list[Path]:
    toc = (REPO / "_toc.yml").read_text()
    files = re.findall(r"file:\s*(book/\S+)", toc)
    out = []
    for f in files:
        p = REPO / (f + ".md")
        if p.exists() and "code-cell" in p.read_text():
            out.append(p)
    return out


def labs() -> list[Path]:
    return sorted((REPO / "labs" / "source").glob("*/*.ipynb"))


def execute(nb: nbformat.NotebookNode, cwd: Path) -> float:
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return time.perf_counter() - t0


def read_myst(path: Path) -> nbformat.NotebookNode:
    from myst_nb.core.read import read_myst_markdown_notebook

    return read_myst_markdown_notebook(path.read_text(), path=str(path))


def build(out: Path, config: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [
            str(BIN / "jupyter-book"),
            "build",
            str(REPO),
            "--path-output",
            str(out),
            "--config",
            str(config),
            "-W",
            "--keep-going",
            "-q",
        ],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    return time.perf_counter() - t0


def main(quick: bool = False) -> None:
    # the same single-threaded BLAS as tools/build_book.py (make book) gives every chapter's kernel
    os.environ.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    rows = []
    if not quick:
        tmp = Path(tempfile.mkdtemp(prefix="bench_book_"))
        try:
            cfg = tmp / "_config.yml"
            cfg.write_text(
                (REPO / "_config.yml")
                .read_text()
                .replace('cache: "_build/.jupyter_cache"', f'cache: "{tmp}/.jupyter_cache"')
                # jupyter-book resolves local extension folders against the config file's folder
                .replace("student_book: tools/", f"student_book: {REPO / 'tools'}/")
            )
            rows.append(["clean build (all chapters executed)", build(tmp, cfg)])
            rows.append(["rebuild with no change (cached)", build(tmp, cfg)])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["make", "-s", "book"], cwd=REPO, check=True, capture_output=True)
        t0 = time.perf_counter()
        subprocess.run(["make", "-s", "book"], cwd=REPO, check=True, capture_output=True)
        rows.append(["`make book` with nothing changed (labs, dist, book)", time.perf_counter() - t0])
        rows.append(["load average (1 min) at the end", os.getloadavg()[0]])
        print_table("Book build (jupyter-book build -W, seconds)", ["build", "seconds"], rows)
    rows = [[p.relative_to(REPO).as_posix(), execute(read_myst(p), p.parent)] for p in chapters()]
    print_table("Chapter execution time (nbclient, seconds; budget 60 s each)", ["chapter", "seconds"], rows)
    rows = [[p.relative_to(REPO).as_posix(), execute(nbformat.read(p, as_version=4), p.parent)] for p in labs()]
    print_table("Lab solution execution time (nbclient, seconds; budget 30 s each)", ["lab", "seconds"], rows)
