"""Notebook cells read as Python: IPython's syntax (``%magic``, ``!shell``) turned into Python, then parsed.

The grader reads cells it never runs in several places: the names a lab's solution cells bind
(:func:`courselib.grading.cleanroom.solution_names`), the imports the fork server preloads, the environment a
test changes, a stated ban checked on the submitted notebook. They all parse a cell the way IPython would
run it, with :func:`parse_cell`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from IPython.core.inputtransformer2 import TransformerManager

__all__ = ["parse_cell", "import_nodes"]

_TM = TransformerManager()


def parse_cell(source: str) -> ast.Module | None:
    """The cell as a Python module (IPython's syntax transformed), or ``None`` if it does not parse."""
    try:
        return ast.parse(_TM.transform_cell(source))
    except SyntaxError:
        return None


def import_nodes(sources: list[str]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every ``import`` and ``from ... import`` statement of the given cells, wherever it stands, in order."""
    for src in sources:
        tree = parse_cell(src)
        if tree is not None:
            yield from (n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)))
