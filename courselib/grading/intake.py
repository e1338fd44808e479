"""Submissions in: nbgrader's folder layout or an LMS zip, student ids, notebook validity.

Everything a student uploaded is hostile input, read by the grader as root before any sandbox:

- a zip entry with an absolute path or ``..`` refuses the whole archive; symbolic links and other
  non-regular entries are never extracted; more than :data:`MAX_ZIP_ENTRIES` entries or
  :data:`MAX_ZIP_BYTES` uncompressed (a zip bomb) refuses it; an entry larger than
  :data:`MAX_NOTEBOOK_BYTES` is not extracted;
- in a folder, a notebook that is a symbolic link (or sits under one), is not a regular file or is
  larger than :data:`MAX_NOTEBOOK_BYTES` is never read: the student's entry becomes a small
  *refusal* placeholder, graded ``invalid-notebook`` with the reason (:func:`check_notebook`).
  A link could otherwise point at the solution notebook, another student's work or ``/dev/zero``.
"""

from __future__ import annotations

import json
import os
import re
import stat
import zipfile
from pathlib import Path

import nbformat

from .course import NOTEBOOK_SUFFIX, GradingError

_STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,99}$")
MAX_NOTEBOOK_BYTES = 32 << 20
"""Largest notebook accepted (32 MiB: a lab notebook with its figures is well under 5 MiB)."""
MAX_ZIP_BYTES = 4 << 30
"""Largest total uncompressed size of an LMS zip."""
MAX_ZIP_ENTRIES = 100_000
_REFUSED_KEY = "courselib_intake_refused"


def _refusal(reason: str) -> bytes:
    return json.dumps({_REFUSED_KEY: reason}).encode()


def _safe_extract(zpath: Path, dest: Path) -> Path:
    with zipfile.ZipFile(zpath) as zf:
        infos = zf.infolist()
        if len(infos) > MAX_ZIP_ENTRIES:
            raise GradingError(f"{zpath} holds {len(infos)} entries (more than {MAX_ZIP_ENTRIES})")
        if sum(i.file_size for i in infos) > MAX_ZIP_BYTES:
            raise GradingError(f"{zpath} unpacks to more than {MAX_ZIP_BYTES >> 30} GiB (a zip bomb?)")
        for info in infos:
            name = info.filename
            if name.startswith("/") or ".." in Path(name).parts or "\0" in name:
                raise GradingError(f"unsafe path {name!r} in {zpath}")
        dest.mkdir(parents=True, exist_ok=True)
        for info in infos:
            mode = info.external_attr >> 16
            target = dest / info.filename
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # symbolic links, devices, fifos: never created
                continue
            if info.file_size > MAX_NOTEBOOK_BYTES:
                if target.name.endswith(NOTEBOOK_SUFFIX):
                    target.write_bytes(_refusal(f"{info.file_size} bytes, more than {MAX_NOTEBOOK_BYTES}"))
                continue
            try:
                dst = open(target, "xb")  # "x": never through an existing file or link (first entry wins)
            except (FileExistsError, IsADirectoryError):
                continue
            with zf.open(info) as src, dst:
                dst.write(src.read(MAX_NOTEBOOK_BYTES + 1))
    return dest


def _folder_entry(nb: Path, student: str, lab: str, unpack_dir: Path | None) -> Path | None:
    """``nb`` if it is safe to read, else a refusal placeholder under ``unpack_dir`` (or ``None``)."""
    why = None
    for p in (nb.parent.parent, nb.parent, nb):
        if p.is_symlink():
            why = f"{p.name} is a symbolic link"
            break
    if why is None:
        try:
            st = os.lstat(nb)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            why = "not a regular file"
        elif st.st_size > MAX_NOTEBOOK_BYTES:
            why = f"{st.st_size} bytes, more than {MAX_NOTEBOOK_BYTES}"
    if why is None:
        return nb
    if unpack_dir is None:
        return None
    out = Path(unpack_dir) / "refused" / student / lab / nb.name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(_refusal(why))
    return out


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
    for d in sorted(p for p in submissions.iterdir() if p.is_dir() and not p.name.startswith(".")):  # links too
        if not _STUDENT_ID.match(d.name):
            continue
        nb = d / lab / f"{lab}{NOTEBOOK_SUFFIX}"
        out[d.name] = _folder_entry(nb, d.name, lab, unpack_dir) if os.path.lexists(nb) else None
    return out


def check_notebook(data: bytes) -> str | None:
    """Why ``data`` is not a valid notebook (``None`` if it is one); also the reason intake refused it."""
    if len(data) > MAX_NOTEBOOK_BYTES:
        return f"refused: {len(data)} bytes, more than {MAX_NOTEBOOK_BYTES}"
    try:
        text = data.decode("utf-8")
        raw = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        return f"not JSON: {exc}"[:300]
    if isinstance(raw, dict) and set(raw) == {_REFUSED_KEY}:
        return f"refused at intake: {raw[_REFUSED_KEY]}"[:300]
    if not isinstance(raw, dict) or "cells" not in raw:
        return "JSON but not a notebook (no cells)"
    try:
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
    except Exception as exc:
        return f"invalid notebook: {exc}"[:300]
    return None
