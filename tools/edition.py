"""The student edition: what may be published, assembled from a build, and checked for answers.

This repository is the *instructor edition*: labs/source (solutions, hidden tests), labs/mutants,
labs/course.toml and the grading secrets. It stays private. `make` (the default target) builds the book
and assembles the *student edition* into _build/student/:

    html/        the book (with the chapter notebooks in html/_notebooks, courselib in html/_static/dist,
                 the lab downloads); the deploy workflow publishes this on GitHub Pages
    notebooks/   the generated chapter notebooks + binder/: the public `notebooks` branch (Colab, Binder)
    labs/        the student release of every lab (nbgrader generate_assignment)
    dist/        courselib's wheel and sdist

and then scans every file of it (inside archives, wheels and notebooks too) for nbgrader's solution and
hidden-test markers, for the solution code itself (every substantive line of a `### BEGIN SOLUTION`
or `### BEGIN HIDDEN TESTS` region of labs/source that is not also in the student release), and for the
answers of the graded concept checks (the sentences of their explanations in
book/question_bank/questions.yml). A hit fails `make` and tests/test_editions.py.

    .venv/bin/python tools/edition.py            # assemble _build/student and scan it
    .venv/bin/python tools/edition.py --scan-only PATH ...
"""

from __future__ import annotations

import argparse
import html
import io
import json
import re
import shutil
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from courselib.grading import quiz

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "_build"
STUDENT = BUILD / "student"
MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
NEVER_PUBLISHED = ("labs/source", "labs/mutants", "labs/course.toml")
TEXT_SUFFIXES = {".html", ".htm", ".ipynb", ".py", ".md", ".txt", ".js", ".json", ".yml", ".yaml", ".toml", ".cfg"}
TEXT_SUFFIXES |= {".csv", ".tex", ".rst", ".in", ".css"}
MIN_LINE = 24  # shorter lines (`return x`, `import numpy as np`) say nothing about an answer


def _source_text(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def normalize(line: str) -> str:
    return re.sub(r"\s+", " ", line).strip()


def split_regions(nb: dict) -> tuple[list[str], list[str]]:
    """(lines inside BEGIN/END SOLUTION and BEGIN/END HIDDEN TESTS, every other line) of a source notebook."""
    inside_lines, outside_lines = [], []
    for cell in nb.get("cells", []):
        inside = False
        for ln in _source_text(cell).split("\n"):
            if re.search(r"BEGIN (SOLUTION|HIDDEN TESTS)", ln):
                inside = True
            elif re.search(r"END (SOLUTION|HIDDEN TESTS)", ln):
                inside = False
            else:
                (inside_lines if inside else outside_lines).append(ln)
    return inside_lines, outside_lines


def solution_regions(nb: dict) -> list[str]:
    """The lines inside BEGIN/END SOLUTION and BEGIN/END HIDDEN TESTS of a source notebook."""
    return split_regions(nb)[0]


def substantive(line: str) -> bool:
    s = normalize(line)
    return len(s) >= MIN_LINE and not s.startswith("#") and not re.fullmatch(r"[\W_]+", s)


def library_text(root: Path = REPO / "courselib") -> str:
    """courselib's own code, line by line normalized: public by design (the wheel, the API pages)."""
    return "\n".join(normalize(ln) for f in sorted(root.rglob("*.py")) for ln in f.read_text().split("\n"))


def solution_lines(source_root: Path = REPO / "labs" / "source", library: str | None = None) -> dict[str, str]:
    """{normalized line: lab} for the substantive answer lines of every lab source.

    An answer line that the handed-out part of any lab also contains (a hint quoting a formula, an import,
    a visible test that repeats a hidden one) is left out: the student release is meant to carry it. So are
    lines that are also courselib code (pass `library=""` to keep them): the library is published anyway;
    `library_overlap()` lists them.
    """
    library = library_text() if library is None else library
    sources = {
        src.parent.name: split_regions(json.loads(src.read_text())) for src in sorted(source_root.glob("*/*.ipynb"))
    }
    public = "\n".join(normalize(ln) for _, outside in sources.values() for ln in outside)
    found: dict[str, str] = {}
    for lab, (inside, _) in sources.items():
        for ln in inside:
            line = normalize(ln)
            if substantive(ln) and line not in public and not (library and line in library):
                found.setdefault(line, lab)
    return found


def library_overlap() -> dict[str, str]:
    """Answer lines that courselib itself contains: a student can read them in the library."""
    every = solution_lines(library="")
    lib = library_text()
    return {ln: lab for ln, lab in every.items() if ln in lib}


def _html_text(text: str) -> str:
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", text, flags=re.S | re.I)
    return html.unescape(re.sub(r"<[^>]+>", "", text))


def _notebook_text(text: str) -> str:
    try:
        nb = json.loads(text)
    except ValueError:
        return text
    parts = []
    for cell in nb.get("cells", []):
        parts.append(_source_text(cell))
        for out in cell.get("outputs", []):
            for key in ("text", "traceback"):
                val = out.get(key)
                parts.append("".join(val) if isinstance(val, list) else str(val or ""))
            for val in out.get("data", {}).values():
                parts.append("".join(val) if isinstance(val, list) else str(val))
    return "\n".join(parts)


def texts(path: Path, data: bytes | None = None, name: str | None = None) -> Iterator[tuple[str, str]]:
    """(where, text) for a file and, recursively, for the members of an archive, wheel or sdist."""
    name = name or str(path)
    data = path.read_bytes() if data is None else data
    lower = name.lower()
    if lower.endswith((".zip", ".whl")):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for member in z.namelist():
                if not member.endswith("/"):
                    yield from texts(path, z.read(member), f"{name}!{member}")
        return
    if lower.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    yield from texts(path, tar.extractfile(member).read(), f"{name}!{member.name}")
        return
    suffix = Path(lower).suffix
    if suffix not in TEXT_SUFFIXES and b"\0" in data[:4096]:
        return  # binary (images, fonts, compiled files)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    if suffix in (".html", ".htm"):
        text = _html_text(text)
    elif suffix == ".ipynb":
        text = _notebook_text(text)
    yield name, text


def quiz_answers() -> dict[str, str]:
    """{sentence: question id} of the concept checks' explanations (courselib.grading.quiz)."""
    return quiz.explanation_fragments()


def scan(
    roots: list[Path], answers: dict[str, str] | None = None, quiz_lines: dict[str, str] | None = None
) -> list[str]:
    """Every marker, answer line and concept-check answer found under `roots` (files or folders), as
    readable problems."""
    answers = solution_lines() if answers is None else answers
    quiz_lines = quiz_answers() if quiz_lines is None else quiz_lines
    problems = []
    files = []
    for root in roots:
        files += [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for f in files:
        for where, text in texts(f):
            for marker in MARKERS:
                if marker in text:
                    problems.append(f"{where}: nbgrader marker {marker!r}")
            flat = "\n".join(normalize(ln) for ln in text.split("\n"))
            for line, lab in answers.items():
                if line in flat:
                    problems.append(f"{where}: solution code of {lab}: {line!r}")
            spaced = " ".join(text.split())
            for sentence, qid in quiz_lines.items():
                if sentence in spaced:
                    problems.append(f"{where}: the answer of concept check {qid}: {sentence!r}")
    return problems


def assemble(out: Path = STUDENT, site: Path = BUILD / "html") -> Path:
    """Copy what may be published from the build (`site`: the built book) into `out` (the student edition)."""
    if not (site / "index.html").exists():
        raise SystemExit("no built book in _build/html: run `make book` first")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copytree(site, out / "html", ignore=shutil.ignore_patterns(".buildinfo", ".doctrees"))
    notebooks = site / "_notebooks"
    if notebooks.exists():
        # the notebooks branch: the chapters' notebooks, not the copies the pages read from disk (student_book.py)
        shutil.copytree(notebooks, out / "notebooks", ignore=shutil.ignore_patterns("*.ipynb.js"))
    release = REPO / "labs" / "release"
    if release.exists():
        shutil.copytree(release, out / "labs", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    dist = BUILD / "dist"
    if dist.exists():
        shutil.copytree(dist, out / "dist")
    for rel in NEVER_PUBLISHED:  # nothing of the instructor edition, whatever the build copied
        assert not (out / rel).exists(), rel
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scan-only", nargs="*", type=Path, help="scan these paths instead of assembling")
    ap.add_argument("--site", type=Path, default=BUILD / "html", help="the built book (default _build/html)")
    ap.add_argument("--out", type=Path, default=STUDENT, help="where to assemble (default _build/student)")
    args = ap.parse_args(argv)
    roots = args.scan_only if args.scan_only else [assemble(args.out, args.site)]
    answers, quiz_lines = solution_lines(), quiz_answers()
    problems = scan(roots, answers, quiz_lines)
    n_files = sum(1 for r in roots for p in ([r] if r.is_file() else r.rglob("*")) if p.is_file())
    print(
        f"student edition scan: {n_files} files, {len(answers)} answer lines and {len(quiz_lines)} concept-check "
        f"answers looked for, {len(problems)} found"
    )
    overlap = library_overlap()
    if overlap:
        labs = sorted(set(overlap.values()))
        print(f"note: {len(overlap)} answer lines are also courselib code (public by design), in {', '.join(labs)}")
    for p in problems[:50]:
        print("  " + p)
    if not args.scan_only:
        print(f"student edition in {roots[0]}/ (html/, notebooks/, labs/, dist/)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
