"""Write what every lab shares into its source notebook: the setup cell, the validate paragraph, the summary.

Every lab is changed in one read-modify-write of its notebook (other cells, metadata and outputs are left as
they are, so other people may edit other cells of the same notebooks meanwhile):

1. **The setup cell** (the first code cell, grade_id `setup`) starts with the same check, so that a student
   whose kernel lacks courselib (or has another version) is told the one install command that works, pinned
   to this book's version, and how to keep or choose a CPU build of torch; the check ends by starting
   `courselib.labcheck.track()`, which notes the cells the kernel runs. The lab's own imports and data
   loading stay below the check.
2. **The validate paragraph** of the introduction (the first Markdown cell): what *validate* means without
   nbgrader (restart the kernel and run all cells; the summary reports), in place of any older sentence that
   told students to press nbgrader's Validate button, which the documented install does not have.
3. **The summary** (the last two cells, grade_ids `labcheck_text` and `labcheck`, locked): a heading and a
   cell that calls `courselib.labcheck.summary` with every graded part, its points, and the cell ids and
   fingerprints of its visible test cell and its blank answer cells *as nbgrader releases them* (hidden
   tests removed, solutions replaced by the stub of labs/nbgrader_config.py). Regenerated whenever a test
   cell changes, so the fingerprints always match the release.

Run after changing the version (`courselib/__init__.py`) or the install command, after changing a test or
answer cell, and after adding a lab:

    .venv/bin/python tools/lab_setup.py          # rewrite what is stale, print what changed per lab
    .venv/bin/python tools/lab_setup.py --check  # exit 1 if any lab is not up to date
    .venv/bin/python tools/lab_setup.py PATH...  # only these notebooks (e.g. copies in a scratch course)

Standard library only (and courselib.labcheck, itself standard library only): the release workflow runs
`--check` with a bare Python.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from courselib import labcheck  # noqa: E402  (standard library only)

DIST_NAME = "ondevice-ml-courselib"
EXTRA = "labs"
BEGIN = "# --- check that courselib is installed (the same in every lab) ---"
END = "# --- end of the check ---"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TRACK = [
    "from courselib import labcheck",
    "",
    "labcheck.track()  # notes which cells run and how: the lab's last cell reports it",
]
# nbgrader's delimiters (ClearSolutions / ClearHiddenTests defaults) and this course's code stub
# (labs/nbgrader_config.py, ClearSolutions.code_stub; tests/test_labcheck.py keeps them equal)
SOLUTION = ("BEGIN SOLUTION", "END SOLUTION")
HIDDEN = ("BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
SUMMARY_IDS = ("labcheck_text", "labcheck")  # grade_ids (and cell ids) of the two summary cells
VALIDATE_HEAD = "**Validate before you hand in.**"
# the sentence that sent students to nbgrader's Validate button, in any of the labs' wordings
OLD_VALIDATE = re.compile(
    r"Before\s+you\s+(?:submit|hand\s+in),\s+(?:restart\s+the\s+kernel\s+and\s+)?press\s+(?:nbgrader's\s+)?"
    r"\*\*Validate\*\*.*?(?:as\s+the\s+grader\s+will|in\s+order)\.",
    re.S,
)
LEFTOVER_VALIDATE = re.compile(r"\*\*Validate\*\*|Validate\s+button|Assignments\*?\s+(?:tab|>)", re.I)


def version() -> str:
    text = (REPO / "courselib" / "__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


def install_command(ver: str | None = None) -> str:
    """The one command a student runs (in a notebook cell it is prefixed with %)."""
    return f'pip install "{DIST_NAME}[{EXTRA}]=={ver or version()}"'


def cpu_torch_command() -> str:
    return f"pip install torch --index-url {CPU_INDEX}"


def check_block(ver: str, track: bool = False) -> list[str]:
    """The check's lines; with `track`, it ends by starting courselib.labcheck's tracker (labs only)."""
    major_minor = ".".join(ver.split(".")[:2])
    return [
        BEGIN,
        f'COURSELIB_VERSION = "{ver}"  # the version this book and its labs were released with',
        "try:",
        "    import courselib",
        "except ImportError:",
        "    courselib = None",
        f'if courselib is None or not courselib.__version__.startswith("{major_minor}."):',
        '    found = "is not installed" if courselib is None else f"is version {courselib.__version__}"',
        "    raise ImportError(",
        '        f"This lab needs courselib {COURSELIB_VERSION}; in this kernel it {found}. Run this in a cell,\\n"',
        '        "then restart the kernel (Kernel > Restart Kernel) and run this cell again:\\n\\n"',
        f"        '    %{install_command(ver)}\\n\\n'",
        '        "torch: on Colab keep Colab\'s own torch (the command above leaves an installed torch alone).\\n"',
        '        "On a laptop without a GPU, first install the CPU build of torch (about 200 MB instead of\\n"',
        '        "several GB), in the same environment:\\n\\n"',
        f"        '    %{cpu_torch_command()}'",
        "    ) from None",
        *(TRACK if track else []),
        END,
    ]


def split_old(lines: list[str]) -> tuple[list[str], list[str]]:
    """(lines to keep before the check, lines to keep after it) of an existing setup cell."""
    if BEGIN in lines and END in lines:
        return lines[: lines.index(BEGIN)], lines[lines.index(END) + 1 :]
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() == "try:")
        exc = next(i for i, ln in enumerate(lines) if i > start and ln.startswith("except ImportError"))
    except StopIteration:  # no old check: put the check first
        return [], lines
    end = exc + 1
    while end < len(lines) and (lines[end].startswith((" ", "\t")) or not lines[end].strip()):
        end += 1
    # imports that sat inside the old `try:` (besides courselib itself) move below the check
    moved = [ln.strip() for ln in lines[start + 1 : exc] if ln.strip() and ln.strip() != "import courselib"]
    before = [ln for ln in lines[:start] if not ln.startswith("# Setup: this lab needs courselib")]
    return before, moved + lines[end:]


def new_source(source: str, ver: str, track: bool = True) -> str:
    before, after = split_old(source.split("\n"))
    while after and not after[0].strip():
        after = after[1:]
    return "\n".join([*before, *check_block(ver, track), *after])


def setup_cell(nb: dict) -> dict | None:
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
            return cell if grade_id == "setup" else None
    return None


def lab_notebooks() -> list[Path]:
    return sorted((REPO / "labs" / "source").glob("*/*.ipynb"))


# --------------------------------------------------------------------------------- what nbgrader releases


def _text(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _set_text(cell: dict, text: str) -> None:
    lines = text.split("\n")
    cell["source"] = [ln + "\n" for ln in lines[:-1]] + [lines[-1]] if text else []


def released_source(source: str) -> str:
    """A cell's source as `nbgrader generate_assignment` writes it into the student version: every hidden-test
    region (markers included) removed, every solution region replaced by the code stub at its indentation."""
    out, inside = [], None
    for line in source.split("\n"):
        if inside is None and SOLUTION[0] in line:
            indent = re.match(r"\s*", line).group(0)
            out += [indent + stub for stub in CODE_STUB.split("\n")]
            inside = SOLUTION[1]
        elif inside is None and HIDDEN[0] in line:
            inside = HIDDEN[1]
        elif inside is not None:
            if inside in line:
                inside = None
        else:
            out.append(line)
    return "\n".join(out)


def _meta(cell: dict) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def parts(nb: dict) -> list[tuple]:
    """Every graded part of a source notebook, in order, as courselib.labcheck.summary takes it:
    `(grade_id, points, (test cell id, fingerprint), [(answer grade_id, cell id, fingerprint), ...])`, each
    fingerprint of the cell as released; the answers are the solution cells since the previous graded cell."""
    out, answers = [], []
    for cell in nb["cells"]:
        meta = _meta(cell)
        if meta.get("solution") and not meta.get("grade"):
            answers.append((meta["grade_id"], cell.get("id"), labcheck.fingerprint(released_source(_text(cell)))))
        elif meta.get("grade") and cell["cell_type"] == "code":
            test = (cell.get("id"), labcheck.fingerprint(released_source(_text(cell))))
            points = meta.get("points", 0)
            out.append((meta["grade_id"], int(points) if float(points).is_integer() else points, test, answers))
            answers = []
    return out


def other_cells(nb: dict) -> list[str]:
    """The fingerprints, as released, of the code cells that are neither answers nor tests (the setup, helpers,
    demonstrations): the summary tells them from an edited answer in a notebook app that sends no cell ids."""
    return [
        labcheck.fingerprint(released_source(_text(c)))
        for c in nb["cells"]
        if c["cell_type"] == "code"
        and not (_meta(c).get("solution") or _meta(c).get("grade") or _meta(c).get("grade_id") in SUMMARY_IDS)
    ]


# ------------------------------------------------------------------------------------ the generated cells


def validate_paragraph(lab: str) -> str:
    """The introduction's paragraph on validating, without nbgrader (wrapped like the labs' Markdown, never
    at a `>`: a line starting with one would be a quote)."""
    text = (
        f"{VALIDATE_HEAD} Restart the kernel and run every cell from the top, as the grader does: "
        "*Kernel > Restart Kernel and Run All Cells* in JupyterLab or Jupyter Notebook, *Runtime > Restart "
        "session and run all* in Colab. The last cell, *Where you are*, then lists every graded part with its "
        "points and whether its visible tests passed, failed (with their message) or did not run, and the answers "
        f"that still raise `NotImplementedError`; it checks that the notebook file is named `{lab}.ipynb` and "
        "small enough for the grader. JupyterLab carries on past a cell that fails; if your notebook app stops "
        "at the first failing cell instead (Colab's *Run all* does), fix that cell, or run the cells after it "
        "(*Runtime > Run cell and below*), and the last cell reports what ran."
    )
    return _wrap(text)


def _wrap(text: str) -> str:
    """`text` filled to the labs' 110 columns, never breaking at a ` > ` (a line starting with `>` is a quote)."""
    wrapped = textwrap.fill(text.replace(" > ", "\0"), width=110, break_long_words=False, break_on_hyphens=False)
    return wrapped.replace("\0", " > ")


_BLOCK_MARKUP = re.compile(r"^(?:\s{4}|[-*+>|#]\s|\d+[.)]\s|```|\$\$|<)")


def new_intro(source: str, lab: str) -> str:
    """The introduction with its validate paragraph up to date (an older Validate sentence removed)."""
    paragraph = validate_paragraph(lab)
    blocks = source.split("\n\n")
    for i, block in enumerate(blocks):
        if block.startswith(VALIDATE_HEAD):
            blocks[i] = paragraph
            return "\n\n".join(blocks)
    for i, block in enumerate(blocks):
        m = OLD_VALIDATE.search(block)
        if m:
            before, after = block[: m.start()].rstrip(" "), block[m.end() :].lstrip(" ")
            at_line_start = not before or before.endswith("\n")
            if not after:
                rest = before.rstrip()
            elif after.startswith("\n"):
                rest = before + (after[1:] if at_line_start else after)
            else:
                rest = before + ("" if at_line_start else " ") + after
            if not any(_BLOCK_MARKUP.match(ln) for ln in rest.split("\n")):  # plain prose: fill it again
                rest = _wrap(" ".join(ln.strip() for ln in rest.split("\n")))
            blocks[i : i + 1] = [rest, paragraph] if rest.strip() else [paragraph]
            return "\n\n".join(blocks)
    return source.rstrip("\n") + "\n\n" + paragraph


def summary_cells(lab: str, nb: dict) -> list[dict]:
    """The lab's last two cells: a heading, and the cell that prints where the lab stands."""
    rows = "\n".join(f"        {part!r}," for part in parts(nb))
    others = textwrap.fill(
        ", ".join(repr(f) for f in other_cells(nb)), width=110, initial_indent=" " * 8, subsequent_indent=" " * 8
    )
    code = (
        "# Where you are: every graded part, its points and whether its visible tests passed in this kernel, and\n"
        "# the notebook file you hand in. A part is (part, points, its test cell, its answer cells), a cell is\n"
        "# (cell id, fingerprint of its source as released): an edited copy of a test cell does not count.\n"
        "from courselib import labcheck\n"
        "\n"
        "labcheck.summary(\n"
        f"    {lab!r},\n"
        "    [\n"
        f"{rows}\n"
        "    ],\n"
        "    others=[  # the lab's other code cells (setup, helpers, demonstrations)\n"
        f"{others},\n"
        "    ],\n"
        ")"
    )
    text = (
        "## Where you are\n\n"
        "The cell below lists every graded part with its points and whether its visible tests passed in this "
        "kernel, and checks the file you hand in. *Kernel > Restart Kernel and Run All Cells* (Colab: *Runtime > "
        "Restart session and run all*) runs it last, after every part: that is how you validate the lab."
    )
    cells = []
    for gid, cell_type, source in ((SUMMARY_IDS[0], "markdown", text), (SUMMARY_IDS[1], "code", code)):
        cell = {"cell_type": cell_type, "id": gid.replace("_", "-"), "metadata": {}, "source": []}
        cell["metadata"]["nbgrader"] = {
            "grade": False,
            "grade_id": gid,
            "locked": True,
            "schema_version": 3,
            "solution": False,
            "task": False,
        }
        if cell_type == "code":
            cell["execution_count"], cell["outputs"] = None, []
        _set_text(cell, source)
        cells.append(cell)
    if "id" not in nb["cells"][0]:  # nbformat 4.4: no cell ids
        for cell in cells:
            del cell["id"]
    return cells


# ------------------------------------------------------------------------------------------------- update


def problems(nb: dict) -> list[str]:
    """What stops the summary from telling parts apart (reported, never fixed silently)."""
    out = []
    ids = [c.get("id") for c in nb["cells"] if c.get("id")]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        out.append(f"cell ids used twice: {', '.join(dup)}")
    fps = [p[2][1] for p in parts(nb)]
    if len(fps) != len(set(fps)):
        out.append("two graded test cells have the same visible tests")
    return out


def updated(nb: dict, lab: str, ver: str) -> list[str]:
    """Bring `nb` (a parsed source notebook) up to date in place; the names of what changed."""
    changed = []
    cell = setup_cell(nb)
    source = _text(cell)
    wanted = new_source(source, ver)
    if wanted != source:
        _set_text(cell, wanted)
        cell["outputs"], cell["execution_count"] = [], None
        changed.append("setup cell")
    intro = next(c for c in nb["cells"] if c["cell_type"] == "markdown")
    source = _text(intro)
    wanted = new_intro(source, lab)
    if wanted != source:
        _set_text(intro, wanted)
        changed.append("validate paragraph")
    kept = [c for c in nb["cells"] if _meta(c).get("grade_id") not in SUMMARY_IDS]
    wanted = kept + summary_cells(lab, {**nb, "cells": kept})
    if nb["cells"] != wanted:  # missing, stale, or not the last two cells
        nb["cells"] = wanted
        changed.append("summary cells")
    return changed


def update(path: Path, ver: str, check_only: bool) -> str:
    """'ok', 'updated: ...', 'stale: ...' or a problem; reads and writes the notebook in one go."""
    text = path.read_text()
    nb = json.loads(text)
    if setup_cell(nb) is None:
        return "no setup cell (the first code cell must have nbgrader grade_id 'setup')"
    if not any(c["cell_type"] == "markdown" for c in nb["cells"]):
        return "no introduction (a Markdown cell)"
    trouble = problems(nb)
    if trouble:
        return "; ".join(trouble)
    lab = path.stem
    changed = updated(nb, lab, ver)
    intro = _text(next(c for c in nb["cells"] if c["cell_type"] == "markdown"))
    if LEFTOVER_VALIDATE.search(intro.replace(validate_paragraph(lab), "")):
        return "the introduction still sends students to nbgrader's Validate button: reword that sentence"
    if not changed:
        return "ok"
    if check_only:
        return "stale: " + ", ".join(changed)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + ("\n" if text.endswith("\n") else ""))
    return "updated: " + ", ".join(changed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="only report labs that are not up to date")
    ap.add_argument("notebooks", nargs="*", type=Path, help="lab notebooks (default: every labs/source/*/*.ipynb)")
    args = ap.parse_args(argv)
    ver = version()
    bad = 0
    for path in args.notebooks or lab_notebooks():
        status = update(path, ver, args.check)
        shown = path.resolve().relative_to(REPO) if path.resolve().is_relative_to(REPO) else path
        print(f"{shown}: {status}")
        bad += not (status == "ok" or status.startswith("updated"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
