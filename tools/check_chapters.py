"""List what each chapter still lacks of the reader features in CONTRIBUTING.md (a checklist, not a test).

Usage: .venv/bin/python tools/check_chapters.py [book/chapter.md ...]   (default: every chapter in book/)

Checks, per chapter (a MyST notebook with a kernelspec): a "What you will learn" admonition, a Summary
section, exercises with solutions hidden behind a dropdown, a "paper vs this book" table, alt text on
every figure cell, a static stand-in after every explorer, a filtered bibliography, and {term} links
to the glossary. Exit status 0 always; the output is for people.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cells(text: str) -> list[str]:
    return re.findall(r"```\{code-cell\}[^\n]*\n(.*?)```", text, re.S)


def missing(path: Path) -> list[str]:
    text = path.read_text()
    out = []
    if not re.search(r"\{admonition\}\s*What you will learn", text, re.I):
        out.append('"What you will learn" admonition')
    if not re.search(r"^#+\s*(\d+(\.\d+)*\s*)?Summary", text, re.M | re.I):
        out.append("Summary section")
    n_ex = len(re.findall(r"\{exercise\}", text))
    sols = re.findall(r"[:`]{3,}\{solution\}[^\n]*\n((?::[^\n]*\n)*)", text)
    if not n_ex:
        out.append("exercises ({exercise} blocks)")
    elif len(sols) < n_ex:
        out.append(f"solutions for every exercise ({len(sols)} of {n_ex})")
    elif any(":class: dropdown" not in s for s in sols):
        out.append("solutions hidden (`:class: dropdown` on every {solution})")
    if not re.search(r"^#+.*paper\s+(vs\.?|versus)", text, re.M | re.I) and not re.search(
        r"^\|.*\bpaper\b.*\|", text, re.M | re.I
    ):
        out.append('"paper vs this book" table (our numbers from a cell, the paper\'s cited)')
    for i, src in enumerate(cells(text), 1):
        draws = re.search(r"plt\.|\.plot\(|imshow|subplots|_explorer\(|plot_\w+\(", src)
        if draws and "remove-output" not in src and "make_explorer" not in src and "alt:" not in src:
            first = next(
                (ln for ln in src.splitlines() if ln.strip() and not ln.startswith(("---", "mystnb", " "))), ""
            )
            out.append(f"alt text + caption on code cell {i} (draws a figure: {first.strip()[:60]!r})")
    for m in re.finditer(r"make_explorer\(", text):
        rest = text[m.end() :]
        nxt = re.search(r"```\{code-cell\}[^\n]*\n(.*?)```", rest, re.S)
        if not nxt or "alt:" not in nxt.group(1):
            out.append("static stand-in cell (with alt text) right after the explorer")
        head = text[: m.start()]
        cell_start = head.rfind("```{code-cell}")
        if "remove-output" not in text[cell_start : m.start()]:
            out.append("explorer cell tagged remove-output")
    if "{bibliography}" not in text:
        out.append("filtered {bibliography} at the end")
    if "{term}" not in text:
        out.append("{term} links to the glossary (first use of key terms)")
    return out


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or sorted((REPO / "book").glob("*.md"))
    for p in paths:
        if "kernelspec" not in p.read_text()[:600]:
            continue
        todo = missing(p)
        print(f"{p.relative_to(REPO) if p.is_absolute() else p}: " + ("complete" if not todo else ""))
        for t in todo:
            print(f"  - needs {t}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
