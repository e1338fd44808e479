"""Submissions in: nbgrader's folder layout or an LMS download, student ids, notebook validity.

Everything a student uploaded is hostile input, read by the grader as root before any sandbox:

- a zip entry with an absolute path or ``..`` refuses the whole archive; symbolic links and other
  non-regular entries are never extracted; more than :data:`MAX_ZIP_ENTRIES` entries or
  :data:`MAX_ZIP_BYTES` uncompressed (a zip bomb) refuses it; an entry larger than
  :data:`MAX_NOTEBOOK_BYTES` is not extracted;
- in a folder, a notebook that is a symbolic link (or sits under one), is not a regular file or is
  larger than :data:`MAX_NOTEBOOK_BYTES` is never read: the student's entry becomes a small
  *refusal* placeholder, graded ``invalid-notebook`` with the reason (:func:`check_notebook`).
  A link could otherwise point at the solution notebook, another student's work or ``/dev/zero``;
- a notebook's work is bounded before any per-cell work: :func:`check_notebook` refuses more than
  :data:`MAX_NOTEBOOK_BYTES`, :data:`MAX_CELLS` cells, :data:`MAX_OUTPUTS` outputs or
  :data:`MAX_JSON_VALUES` JSON values before nbformat reads and validates it.

Which file belongs to which student is never guessed silently (:func:`collect_submissions`): a name
that fits no layout is listed in :attr:`Submissions.unmatched`, and two notebooks for one student stop
the run with an error that names both.
"""

from __future__ import annotations

import json
import os
import re
import stat
import zipfile
from pathlib import Path

from .course import NOTEBOOK_SUFFIX, GradingError

_STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,99}$")
MAX_NOTEBOOK_BYTES = 32 << 20
"""Largest notebook accepted (32 MiB: a lab notebook with its figures is well under 5 MiB)."""
MAX_CELLS = 5_000
"""Most cells a notebook may have (a lab has well under 100); more is refused before any per-cell work."""
MAX_OUTPUTS = 10_000
"""Most outputs, over all cells, a submitted notebook may carry (grading executes it afresh anyway)."""
MAX_JSON_VALUES = 500_000
"""Most JSON values (objects, arrays, strings, numbers) in a notebook: nbformat's work grows with them."""
MAX_ZIP_BYTES = 4 << 30
"""Largest total uncompressed size of an LMS zip."""
MAX_ZIP_ENTRIES = 100_000
_REFUSED_KEY = "courselib_intake_refused"

# Canvas "Download Submissions": <lastfirst>_[LATE_]<user id>_<submission id>_<original name>, where the
# original name of a resubmission may end in -1, -2 ... before its extension.
_CANVAS = re.compile(r"^(?P<name>[^_]+)_(?:(?P<late>[Ll][Aa][Tt][Ee])_)?(?P<id>\d+)_(?P<sub>\d+)_(?P<file>.+)$")
# Moodle "Download all submissions": <Full Name>_<participant id>_assignsubmission_<plugin>[_] as a folder
# holding the original files, or <Full Name>_<participant id>_assignsubmission_<plugin>_<original name>
# flattened (Moodle writes underscores of the full name as spaces, so the name holds none).
_MOODLE = re.compile(r"^(?P<name>[^_]+)_(?P<id>\d+)_assignsubmission_(?P<plugin>[a-z]+)(?:_(?P<file>.*))?$")
_LAYOUTS = {
    "folders": "folders <student>/<lab>/<lab>.ipynb",
    "flat": "flat <student>_<lab>.ipynb files",
    "canvas": "Canvas download names (student id = Canvas user id)",
    "moodle": "Moodle download names (student id = Moodle participant id)",
}


class Submissions(dict):
    """What :func:`collect_submissions` found: ``{student id: notebook path, or None when missing}``.

    A plain dict of the students, with two attributes: ``unmatched``, one line per file or folder that
    intake did not grade, naming it and saying why (``courselib grade`` prints them and lists them in its
    summary), and ``layouts``, the layouts recognised (``"folders"``, ``"flat"``, ``"canvas"``,
    ``"moodle"``).
    """

    def __init__(self, items=(), *, unmatched=(), layouts=()):
        super().__init__(items)
        self.unmatched = list(unmatched)
        self.layouts = list(layouts)

    def report(self) -> list[str]:
        """What intake found, as lines for the instructor: the layouts, then every file not graded."""
        kinds = ", ".join(_LAYOUTS[k] for k in self.layouts) or "nothing recognised"
        lines = [f"intake: {len(self)} student(s) from {kinds}"]
        if self.unmatched:
            lines.append(f"intake: {len(self.unmatched)} file(s) or folder(s) not graded:")
            lines += [f"  - {u}" for u in self.unmatched]
        return lines


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


def _unsafe(nb: Path, root: Path) -> str | None:
    """Why ``nb`` must not be read (a link on the way from ``root``, not a regular file, too large), or None."""
    p = nb
    while p != root and root in p.parents:
        if p.is_symlink():
            return f"{p.name} is a symbolic link"
        p = p.parent
    try:
        st = os.lstat(nb)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size > MAX_NOTEBOOK_BYTES:
        return f"{st.st_size} bytes, more than {MAX_NOTEBOOK_BYTES}"
    return None


def _entries(folder: Path) -> list[Path]:
    """The entries of ``folder``, sorted, without hidden files and macOS's ``__MACOSX`` (never submissions)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith((".", "__MACOSX")))


def _is_lab_file(name: str, lab: str) -> bool:
    """An LMS upload of the lab's notebook: ``<lab>.ipynb``, ``<lab>-<n>.ipynb`` (Canvas numbers a resubmitted
    file's name) or either after a prefix the student added (``jane_<lab>.ipynb``, ``Copy of <lab>.ipynb``)."""
    pattern = r"(?:.*[ _-])?" + re.escape(lab) + r"(?:-\d+)?" + re.escape(NOTEBOOK_SUFFIX)
    return re.fullmatch(pattern, name) is not None


def _parse_flat(name: str, lab: str) -> tuple[str, str, bool] | None:
    """``(layout, student id, is the lab's notebook)`` of a loose file's name, or None if it fits no layout."""
    m = _MOODLE.match(name)
    if m and m["file"]:
        return "moodle", m["id"], m["plugin"] == "file" and _is_lab_file(m["file"], lab)
    m = _CANVAS.match(name)
    if m:
        return "canvas", m["id"], _is_lab_file(m["file"], lab)
    suffix = f"_{lab}{NOTEBOOK_SUFFIX}"
    if name.endswith(suffix) and _STUDENT_ID.match(name[: -len(suffix)]):
        return "flat", name[: -len(suffix)], True
    return None


def collect_submissions(
    lab: str,
    submissions: str | os.PathLike,
    unpack_dir: str | os.PathLike | None = None,
    *,
    notebooks: list[str] | None = None,
) -> Submissions:
    """Map each student id to their notebook of ``lab`` (``None``: missing); list what fits no student.

    ``submissions`` is a folder or a ``.zip`` (an LMS download, unpacked safely into ``unpack_dir``,
    possibly under one top folder). Every entry of it is read as one of these layouts (they may mix):

    - nbgrader's folders ``<student>/<lab>/<lab>.ipynb`` (a student folder without that exact notebook
      is ``missing``; the notebooks it holds under other names are listed as unmatched);
    - flat files ``<student>_<lab>.ipynb``, matched by the lab's name at the *end*, so the student id
      may contain ``_``: ``s_1001_lab00_memory.ipynb`` is student ``s_1001``, ``mary_ann_lab00_memory.ipynb``
      student ``mary_ann``, next to ``mary_lab00_memory.ipynb``;
    - Canvas's *Download Submissions*: ``<lastfirst>_<user id>_<submission id>_<original name>``, or
      ``<lastfirst>_LATE_<user id>_<submission id>_<original name>`` for a late one, e.g.
      ``smithjane_LATE_123456_7890123_lab00_memory-1.ipynb``. The student id is the Canvas **user id**
      (``123456``: unique and stable, where two students can share a ``lastfirst``);
    - Moodle's *Download all submissions*: a folder ``<Full Name>_<participant id>_assignsubmission_file_``
      (newer Moodle drops the last ``_``) holding the original files, e.g.
      ``Jane Smith_4711_assignsubmission_file_/lab00_memory.ipynb``, or the flattened
      ``Jane Smith_4711_assignsubmission_file_lab00_memory.ipynb``. The student id is the Moodle
      **participant id** (``4711``, the grading worksheet's "Participant 4711"; a team submission gives
      the group's id).

    In both LMS layouts the student is known from the LMS's name, and the original name must end in
    ``<lab>.ipynb``, or ``<lab>-<n>.ipynb`` (Canvas's name for a resubmitted file), after nothing or
    after a space, ``_`` or ``-`` (``jane_lab00_memory.ipynb``): any other file is listed, not graded.

    Nothing is merged or dropped silently:

    - two notebooks that map to the same student (a student folder and a flat file, two Canvas
      resubmissions in one download, ...) raise :class:`~courselib.grading.course.GradingError` naming
      both files: which one counts is the instructor's decision, so remove the other and grade again;
    - a file or folder that fits no layout, or a file of a known student that is not the lab's notebook
      (a PDF next to it, ``Copy of lab00_memory.ipynb``, a Moodle online-text submission), is listed
      with the reason in the result's :attr:`Submissions.unmatched` (``courselib grade`` prints them
      and its summary lists them) and not graded; a student whose files are all unmatched is ``missing``.

    Hidden entries (names starting with ``.``) and macOS's ``__MACOSX`` folders are skipped unlisted.

    An assignment of several notebooks (``notebooks``, e.g. nbgrader's ``ps1``: ``["problem1", "problem2"]``)
    is read from nbgrader's folders only, ``<student>/<lab>/<notebook>.ipynb``: each student maps to a folder
    in ``unpack_dir`` holding a checked copy of each notebook they handed in (a refusal in place of one that
    must not be read, nothing for one they did not hand in), ``None`` if they handed in none.
    """
    submissions = Path(submissions)
    if submissions.is_file() and zipfile.is_zipfile(submissions):
        if unpack_dir is None:
            raise GradingError("a zip of submissions needs an unpack_dir")
        root = _safe_extract(submissions, Path(unpack_dir))
        entries = _entries(root)
        if (
            len(entries) == 1
            and entries[0].is_dir()
            and not (entries[0] / lab).is_dir()
            and not _MOODLE.match(entries[0].name)
        ):
            root = entries[0]
    elif submissions.is_dir():
        root = submissions
    else:
        raise GradingError(f"{submissions} is not a folder (or a zip of submissions)")
    if notebooks is not None and notebooks != [lab]:
        return _scan_folders(root, lab, notebooks, unpack_dir)
    return _scan(root, lab, unpack_dir)


def _scan_folders(root: Path, lab: str, notebooks: list[str], unpack_dir) -> Submissions:
    """The students of an assignment of several notebooks, from ``<student>/<lab>/<notebook>.ipynb`` folders."""
    if unpack_dir is None:
        raise GradingError("an assignment of several notebooks needs an unpack_dir for the checked copies")
    names = {f"{nb}{NOTEBOOK_SUFFIX}" for nb in notebooks}
    out, unmatched = Submissions(layouts=["folders"]), []
    for entry in _entries(root):
        rel = entry.relative_to(root).as_posix()
        if not entry.is_dir() or not _STUDENT_ID.match(entry.name):
            unmatched.append(
                f"{rel}: an assignment of several notebooks is read from folders <student>/{lab}/<notebook>.ipynb"
            )
            continue
        folder, copies = entry / lab, Path(unpack_dir) / "checked" / entry.name / lab
        handed_in = False
        if folder.is_dir() and not folder.is_symlink() and not entry.is_symlink():
            for f in _entries(folder):
                if f.name not in names:
                    if f.name.endswith(NOTEBOOK_SUFFIX):
                        unmatched.append(f"{f.relative_to(root).as_posix()}: not a notebook of {lab} ({sorted(names)})")
                    continue
                why = _unsafe(f, root)
                copies.mkdir(parents=True, exist_ok=True)
                (copies / f.name).write_bytes(f.read_bytes() if why is None else _refusal(why))
                handed_in = True
        elif folder.exists() or os.path.lexists(folder):
            copies.mkdir(parents=True, exist_ok=True)
            for name in names:  # a link in place of the folder: every notebook refused, none read
                (copies / name).write_bytes(_refusal(f"{lab} is a symbolic link"))
            handed_in = True
        out[entry.name] = copies if handed_in else None
    out.unmatched = unmatched
    return out


def _scan(root: Path, lab: str, unpack_dir) -> Submissions:
    nbname = f"{lab}{NOTEBOOK_SUFFIX}"
    found: dict[str, list[Path]] = {}  # student -> their notebooks of the lab (more than one: a collision)
    known: set[str] = set()  # every student seen, with or without a notebook
    unmatched: list[str] = []
    layouts: set[str] = set()

    def rel(p: Path) -> str:
        return p.relative_to(root).as_posix()

    for entry in _entries(root):
        name = entry.name
        if entry.is_dir():  # a link to a folder too: read as a student's, refused below
            m = _MOODLE.match(name)
            if m and not m["file"]:
                layouts.add("moodle")
                known.add(m["id"])
                if m["plugin"] != "file":
                    unmatched.append(f"{name}/: a Moodle {m['plugin']} submission, not a file")
                    continue
                for f in _entries(entry):
                    if not f.is_dir() and _is_lab_file(f.name, lab):
                        found.setdefault(m["id"], []).append(f)
                    else:
                        unmatched.append(f"{rel(f)}{'/' if f.is_dir() else ''}: not {nbname}")
                continue
            if _STUDENT_ID.match(name):
                layouts.add("folders")
                known.add(name)
                nb = entry / lab / nbname
                if os.path.lexists(nb):
                    found.setdefault(name, []).append(nb)
                else:
                    for d in (entry, entry / lab):
                        if d.is_dir() and not d.is_symlink() and not entry.is_symlink():
                            unmatched += [
                                f"{rel(f)}: not {lab}/{nbname}" for f in _entries(d) if f.name.endswith(NOTEBOOK_SUFFIX)
                            ]
                continue
            unmatched.append(f"{name}/: not a student id ({_STUDENT_ID.pattern}) or an LMS download folder")
            continue
        parsed = _parse_flat(name, lab)
        if parsed is None:
            unmatched.append(f"{name}: fits no layout (<student>_{nbname}, Canvas or Moodle download names)")
            continue
        layout, student, is_notebook = parsed
        layouts.add(layout)
        known.add(student)
        if is_notebook:
            found.setdefault(student, []).append(entry)
        else:
            unmatched.append(f"{name}: a file of student {student} ({layout}), not {nbname}")
    clashes = {s: ps for s, ps in found.items() if len(ps) > 1}
    if clashes:
        detail = "; ".join(f"student {s}: {', '.join(rel(p) for p in ps)}" for s, ps in sorted(clashes.items()))
        raise GradingError(
            f"{len(clashes)} student(s) have more than one notebook of {lab} in {root}: {detail}. "
            "Keep one notebook per student (remove or rename the others) and grade again"
        )
    out = Submissions(layouts=[k for k in _LAYOUTS if k in layouts])
    for student in sorted(known):
        nb = found.get(student, [None])[0]
        if nb is None:
            out[student] = None
            continue
        why = _unsafe(nb, root)
        if why is None:
            out[student] = nb
        elif unpack_dir is None:
            out[student] = None
            unmatched.append(f"{rel(nb)}: refused, not read ({why})")
        else:
            refused = Path(unpack_dir) / "refused" / student / lab / nb.name
            refused.parent.mkdir(parents=True, exist_ok=True)
            refused.write_bytes(_refusal(why))
            out[student] = refused
    out.unmatched = unmatched
    return out


def _more_values_than(obj, limit: int) -> bool:
    """Whether the parsed JSON ``obj`` holds more than ``limit`` values (stops counting at the limit)."""
    stack, n = [obj], 0
    while stack:
        o = stack.pop()
        n += 1
        if n > limit:
            return True
        if isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)
    return False


def check_notebook(data: bytes) -> str | None:
    """Why ``data`` is not a valid notebook (``None`` if it is one); also the reason intake refused it.

    The work is bounded before nbformat reads and validates the notebook cell by cell: more than
    :data:`MAX_NOTEBOOK_BYTES` bytes, :data:`MAX_CELLS` cells, :data:`MAX_OUTPUTS` outputs or
    :data:`MAX_JSON_VALUES` values is refused after one JSON parse and a count that stops at the limit
    (a 100 000-cell notebook would otherwise cost seconds of the grading process's CPU in nbformat's
    validation, before any limit of the sandbox applies).
    """
    if len(data) > MAX_NOTEBOOK_BYTES:
        return f"refused: {len(data)} bytes, more than {MAX_NOTEBOOK_BYTES}"
    try:
        text = data.decode("utf-8")
        raw = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        return f"not JSON: {exc}"[:300]
    except RecursionError:
        return "not JSON: nested too deeply"
    if isinstance(raw, dict) and set(raw) == {_REFUSED_KEY}:
        return f"refused at intake: {raw[_REFUSED_KEY]}"[:300]
    if not isinstance(raw, dict) or "cells" not in raw:
        return "JSON but not a notebook (no cells)"
    cells = raw["cells"]
    if isinstance(cells, list):
        if len(cells) > MAX_CELLS:
            return f"refused: {len(cells)} cells, more than {MAX_CELLS}"
        n_out = sum(len(c["outputs"]) for c in cells if isinstance(c, dict) and isinstance(c.get("outputs"), list))
        if n_out > MAX_OUTPUTS:
            return f"refused: {n_out} outputs, more than {MAX_OUTPUTS}"
    if _more_values_than(raw, MAX_JSON_VALUES):
        return f"refused: more than {MAX_JSON_VALUES} JSON values"
    import nbformat  # here: nbformat imports jsonschema's format checkers, seconds of CPU a folder scan never needs

    try:
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
    except Exception as exc:
        return f"invalid notebook: {exc}"[:300]
    return None
