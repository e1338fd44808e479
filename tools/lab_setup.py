"""Write the courselib check into the `setup` cell (the first code cell) of every lab source notebook.

Every lab starts with the same check, so that a student whose kernel lacks courselib (or has another
version) is told the one install command that works, pinned to this book's version, and how to keep or
choose a CPU build of torch. The lab's own imports and data loading stay below the check.

Run after changing the version (`courselib/__init__.py`) or the install command, and after adding a lab:

    .venv/bin/python tools/lab_setup.py          # rewrite the setup cells
    .venv/bin/python tools/lab_setup.py --check  # exit 1 if a setup cell is not up to date

Each notebook is read, changed and written in one go (other cells, metadata and outputs are left as they
are), so other people may edit other cells of the same notebooks meanwhile.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DIST_NAME = "ondevice-ml-courselib"
EXTRA = "labs"
BEGIN = "# --- check that courselib is installed (the same in every lab) ---"
END = "# --- end of the check ---"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def version() -> str:
    text = (REPO / "courselib" / "__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


def install_command(ver: str | None = None) -> str:
    """The one command a student runs (in a notebook cell it is prefixed with %)."""
    return f'pip install "{DIST_NAME}[{EXTRA}]=={ver or version()}"'


def cpu_torch_command() -> str:
    return f"pip install torch --index-url {CPU_INDEX}"


def check_block(ver: str) -> list[str]:
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


def new_source(source: str, ver: str) -> str:
    before, after = split_old(source.split("\n"))
    while after and not after[0].strip():
        after = after[1:]
    return "\n".join([*before, *check_block(ver), *after])


def setup_cell(nb: dict) -> dict | None:
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
            return cell if grade_id == "setup" else None
    return None


def lab_notebooks() -> list[Path]:
    return sorted((REPO / "labs" / "source").glob("*/*.ipynb"))


def update(path: Path, ver: str, check_only: bool) -> str:
    """'ok', 'updated', 'stale' or a problem; reads and writes the notebook in one go."""
    text = path.read_text()
    nb = json.loads(text)
    cell = setup_cell(nb)
    if cell is None:
        return "no setup cell (the first code cell must have nbgrader grade_id 'setup')"
    source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    wanted = new_source(source, ver)
    if wanted == source:
        return "ok"
    if check_only:
        return "stale"
    lines = wanted.split("\n")
    cell["source"] = [ln + "\n" for ln in lines[:-1]] + [lines[-1]]
    cell["outputs"] = []
    cell["execution_count"] = None
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + ("\n" if text.endswith("\n") else ""))
    return "updated"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="only report setup cells that are not up to date")
    args = ap.parse_args(argv)
    ver = version()
    bad = 0
    for path in lab_notebooks():
        status = update(path, ver, args.check)
        print(f"{path.relative_to(REPO)}: {status}")
        bad += status not in ("ok", "updated")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
