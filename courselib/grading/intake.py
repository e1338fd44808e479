"""Submissions in: nbgrader's folder layout or an LMS zip, student ids, notebook validity."""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import nbformat

from .course import NOTEBOOK_SUFFIX, GradingError

_STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,99}$")


def _safe_extract(zpath: Path, dest: Path) -> Path:
    with zipfile.ZipFile(zpath) as zf:
        for info in zf.infolist():
            name = info.filename
            if name.startswith("/") or ".." in Path(name).parts:
                raise GradingError(f"unsafe path {name!r} in {zpath}")
        zf.extractall(dest)
    return dest


def collect_submissions(
    lab: str, submissions: str | os.PathLike, unpack_dir: str | os.PathLike | None = None
) -> dict[str, Path | None]:
    """Map each student id to their notebook ``<student>/<lab>/<lab>.ipynb`` (``None``: missing).

    ``submissions`` is nbgrader's folder layout, or a ``.zip`` (an LMS download): either that
    layout inside the archive (possibly under one top folder), or flat files named
    ``<student>_<lab>.ipynb`` / ``<student>_<anything>`` (nbgrader ``zip_collect`` style; a
    student's file counts only if its name ends with ``<lab>.ipynb``). Nothing else is guessed:
    a student folder without the expected notebook name is ``missing``.
    """
    submissions = Path(submissions)
    if submissions.is_file() and zipfile.is_zipfile(submissions):
        if unpack_dir is None:
            raise GradingError("a zip of submissions needs an unpack_dir")
        root = _safe_extract(submissions, Path(unpack_dir))
        entries = [p for p in root.iterdir() if not p.name.startswith((".", "__MACOSX"))]
        if len(entries) == 1 and entries[0].is_dir() and not (entries[0] / lab).is_dir():
            root = entries[0]
        files = [p for p in root.iterdir() if p.is_file()]
        if files and not any(p.is_dir() and (p / lab).is_dir() for p in root.iterdir()):
            out: dict[str, Path | None] = {}
            for f in sorted(files):
                student = f.name.split("_", 1)[0]
                if not _STUDENT_ID.match(student):
                    continue
                good = f.name == f"{student}_{lab}{NOTEBOOK_SUFFIX}" or f.name.endswith(f"_{lab}{NOTEBOOK_SUFFIX}")
                if good:
                    out[student] = f
                else:
                    out.setdefault(student, None)
            return out
        submissions = root
    if not submissions.is_dir():
        raise GradingError(f"{submissions} is not a folder (or a zip of submissions)")
    out = {}
    for d in sorted(p for p in submissions.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not _STUDENT_ID.match(d.name):
            continue
        nb = d / lab / f"{lab}{NOTEBOOK_SUFFIX}"
        out[d.name] = nb if nb.is_file() else None
    return out


def check_notebook(data: bytes) -> str | None:
    """Why ``data`` is not a valid notebook (``None`` if it is one)."""
    try:
        text = data.decode("utf-8")
        raw = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        return f"not JSON: {exc}"[:300]
    if not isinstance(raw, dict) or "cells" not in raw:
        return "JSON but not a notebook (no cells)"
    try:
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
    except Exception as exc:
        return f"invalid notebook: {exc}"[:300]
    return None
