"""Every comparison a chapter states about its own numbers is checked when the book is built (issue 16).

Convention (CONTRIBUTING.md, "Claims"): right after the cell that computes the numbers, a hidden cell
(``tags: [remove-cell]``) holds one ``# claim: <text>`` comment per claim, followed by the ``assert`` that
backs it, so the build fails instead of printing a sentence its numbers no longer show. ``<text>`` is
copied from the chapter: a sentence or fragment of its prose, a caption or an alt text.

This test lists the claims per chapter (a claim deleted or added without updating ``CLAIMS`` fails) and
checks each claim cell: it contains an ``assert``, it follows a code cell, and each claim's text occurs in
the chapter outside the code. The assertions themselves run when the chapter executes (tests/test_book.py,
``make book``, ``tools/build_chapter.sh``).

Only facts that hold on any CPU are asserted (issue 23): sizes, counts, exact equalities, accuracies within a
tolerance. A time, a speed-up or the order of two kernels depends on the machine, so it is glued from the run
(its direction word computed) and never asserted: :func:`timing_asserts` follows every measured time through a
chapter's code and fails on any ``assert`` that reads one.
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

import pytest
from myst_nb.core.read import read_myst_markdown_notebook

BOOK = Path(__file__).resolve().parents[1] / "book"

#: chapter -> number of ``# claim:`` lines in its hidden assertion cells
CLAIMS = {
    "binary_codes": 6,
    "binaryconnect": 4,
    "deploying": 4,
    "distillation": 9,
    "itq": 7,
    "pruning_filters": 14,
    "pruning_obd": 13,
    "putting_together": 8,
    "quantization": 15,
    "why_on_device": 2,
}


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def _prose(nb) -> str:
    """Markdown cells plus every caption and alt text of the chapter's code cells."""
    parts = [c.source for c in nb.cells if c.cell_type == "markdown"]
    for c in nb.cells:
        mystnb = c.metadata.get("mystnb", {})
        parts.append(str(mystnb.get("image", {}).get("alt", "")))
        parts.append(str(mystnb.get("figure", {}).get("caption", "")))
    return _normalize("\n".join(parts))


def claim_cells(path: Path) -> tuple[list[str], list[str]]:
    """The claims of a chapter and the problems found with them (empty if the convention is kept)."""
    nb = read_myst_markdown_notebook(path.read_text(), path=str(path))
    prose = _prose(nb)
    claims, problems = [], []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        texts = re.findall(r"^\s*# claim:\s*(.+?)\s*$", cell.source, flags=re.M)
        if not texts:
            continue
        claims.extend(texts)
        where = f"{path.name} cell {i} ({texts[0][:40]!r}...)"
        if "remove-cell" not in cell.metadata.get("tags", []):
            problems.append(f"{where}: a claim cell must be hidden (tags: [remove-cell])")
        if not any(isinstance(node, ast.Assert) for node in ast.walk(ast.parse(cell.source))):
            problems.append(f"{where}: no assert")
        if not any(c.cell_type == "code" for c in nb.cells[:i]):
            problems.append(f"{where}: no computation before the claim cell")
        for t in texts:
            if _normalize(t.rstrip(".")) not in prose:
                problems.append(f"{where}: claim text not found in the chapter's prose, captions or alt text: {t!r}")
    return claims, problems


#: Calls that return measured times (courselib's timers, the standard library's clocks).
TIMERS = {
    "measure_latency",
    "compare_latency",
    "layer_times",
    "time_call",
    "time_calls",
    "program_latency",
    "perf_counter",
    "perf_counter_ns",
    "thread_time",
    "process_time",
    "monotonic",
    "timeit",
    "repeat",
}
#: Keys, attributes and string constants that name times (``row["latency_ms"]``, ``t.seconds``, a column
#: list with ``"latency_ms"`` in it).
TIME_KEY = re.compile(r"latency|seconds|(^|_)(ms|us|time|times|timing|speedup|speed_up)($|_)", re.I)
_MUTATORS = {"append", "extend", "update", "setdefault", "insert", "add"}
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)


def _called_name(node: ast.Call) -> str:
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _names(target: ast.AST) -> list[str]:
    return [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]


class _Taint:
    """Follows measured times through a chapter's code, statement by statement, cells in order.

    A value is a time when it comes from a timer (:data:`TIMERS`, or a function of the chapter that returns a
    time), from a key or attribute named like one (:data:`TIME_KEY`), or from a name that holds a time. A plain
    assignment replaces a name's state (``t = accuracy`` makes ``t`` clean again); storing a time into an item
    or appending it marks the container, and everything read from a marked container is a time: keep times
    in containers of their own. Comprehension and function variables are scoped.
    """

    def __init__(self):
        self.names: set[str] = set()
        self.functions: set[str] = set(TIMERS)
        self.found: list[ast.Assert] = []

    # -- expressions -----------------------------------------------------------------------------
    def reads_time(self, node: ast.AST | None) -> bool:
        if node is None:
            return False
        if isinstance(node, ast.Name):
            return node.id in self.names
        if isinstance(node, ast.Constant):
            return isinstance(node.value, str) and bool(TIME_KEY.search(node.value))
        if isinstance(node, ast.JoinedStr):  # an f-string is text: only what it formats can be a time
            return any(self.reads_time(v.value) for v in node.values if isinstance(v, ast.FormattedValue))
        if isinstance(node, ast.Call) and _called_name(node) in self.functions:
            return True
        if isinstance(node, ast.Subscript):
            key = node.slice
            return self.reads_time(node.value) or self.reads_time(key)
        if isinstance(node, ast.Attribute):
            return bool(TIME_KEY.search(node.attr)) or self.reads_time(node.value)
        if isinstance(node, _COMPREHENSIONS):
            return self._scoped(node)
        if isinstance(node, ast.Lambda):
            saved = set(self.names)
            self.names -= set(_names(node.args))
            try:
                return self.reads_time(node.body)
            finally:
                self.names = saved
        return any(self.reads_time(c) for c in ast.iter_child_nodes(node))

    def _scoped(self, node) -> bool:
        saved = set(self.names)
        try:
            hit = False
            for gen in node.generators:
                self._bind(gen.target, self.reads_time(gen.iter))
                hit |= any(self.reads_time(c) for c in gen.ifs)
            parts = [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
            return hit or any(self.reads_time(p) for p in parts)
        finally:
            self.names = saved

    # -- statements ------------------------------------------------------------------------------
    def _bind(self, target: ast.AST, is_time: bool) -> None:
        if isinstance(target, (ast.Name, ast.Tuple, ast.List, ast.Starred)):
            for n in _names(target):  # a plain name: its new value decides
                (self.names.add if is_time else self.names.discard)(n)
        elif is_time:  # x[k] = time, x.attr = time: the container x now holds a time (k is untouched)
            while isinstance(target, (ast.Subscript, ast.Attribute, ast.Starred)):
                target = target.value
            self.names.update(_names(target))

    def run(self, body: list[ast.stmt]) -> None:
        for node in body:
            self.stmt(node)

    def stmt(self, node: ast.stmt) -> None:
        if isinstance(node, ast.Assign):
            v = self.reads_time(node.value)
            for t in node.targets:
                self._bind(t, v)
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            self._bind(node.target, self.reads_time(node.value))
        elif isinstance(node, ast.AugAssign):
            if self.reads_time(node.value):
                self.names.update(_names(node.target))
        elif isinstance(node, ast.Expr):
            call = node.value
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr in _MUTATORS:
                if any(self.reads_time(a) for a in [*call.args, *(k.value for k in call.keywords)]):
                    self._bind(ast.Subscript(value=call.func.value, slice=ast.Constant(0)), True)
            self.reads_time(call)
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            for _ in range(2):  # twice: what the body marks reaches the next iteration
                self._bind(node.target, self.reads_time(node.iter))
                self.run(node.body)
            self.run(node.orelse)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            saved = set(self.names)
            self.names -= set(_names(node.args))
            self.run(node.body)
            returns = [r.value for r in ast.walk(node) if isinstance(r, ast.Return)]
            if any(self.reads_time(r) for r in returns):
                self.functions.add(node.name)
            self.names = saved
        elif isinstance(node, ast.Assert):
            if self.reads_time(node.test) and node not in self.found:
                self.found.append(node)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                if item.optional_vars is not None:
                    self._bind(item.optional_vars, self.reads_time(item.context_expr))
            self.run(node.body)
        elif isinstance(node, (ast.If, ast.While)):
            self.run(node.body)
            self.run(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                self.run(block)


def timing_asserts(sources: list[str]) -> list[str]:
    """The ``assert`` statements of a chapter's code cells that read a measured time (see :class:`_Taint`).

    ``sources`` are the code cells in order; the result lists ``"cell i: <assert>"`` for each offender.
    """
    taint = _Taint()
    found = []
    for i, src in enumerate(sources):
        lines = [ln for ln in src.splitlines() if not ln.lstrip().startswith(("%", "!"))]
        try:
            tree = ast.parse(textwrap.dedent("\n".join(lines)))
        except SyntaxError:
            continue
        taint.found = []
        taint.run(tree.body)
        found += [f"cell {i}: {ast.unparse(a)[:160]}" for a in taint.found]
    return found


def _code_cells(path: Path) -> list[str]:
    nb = read_myst_markdown_notebook(path.read_text(), path=str(path))
    return [c.source for c in nb.cells if c.cell_type == "code"]


def _chapters() -> list[Path]:
    return sorted(p for p in BOOK.glob("*.md") if "{code-cell}" in p.read_text())


@pytest.mark.parametrize("path", _chapters(), ids=lambda p: p.stem)
def test_claims_are_listed_and_backed_by_asserts(path):
    claims, problems = claim_cells(path)
    assert not problems, "\n".join(problems)
    assert len(claims) == CLAIMS.get(path.stem, 0), (
        f"{path.name} has {len(claims)} claims, CLAIMS says {CLAIMS.get(path.stem, 0)}: {claims}"
    )


def test_checker_finds_a_claim_without_assert_and_a_claim_not_in_the_text(tmp_path):
    chapter = tmp_path / "toy.md"
    chapter.write_text(
        "---\njupytext:\n  text_representation: {extension: .md, format_name: myst}\n"
        "kernelspec: {display_name: Python 3, language: python, name: python3}\n---\n"
        "# Toy\n\nA beats B by a wide margin.\n\n"
        "```{code-cell} ipython3\na, b = 2, 1\n```\n\n"
        "```{code-cell} ipython3\n:tags: [remove-cell]\n# claim: A beats B\nprint(a > b)\n```\n\n"
        "```{code-cell} ipython3\n:tags: [remove-cell]\n# claim: C beats D\nassert a > b\n```\n\n"
        "```{code-cell} ipython3\n# claim: A beats B by a wide margin\nassert a > 2 * b - 1\n```\n"
    )
    claims, problems = claim_cells(chapter)
    assert claims == ["A beats B", "C beats D", "A beats B by a wide margin"]
    assert len(problems) == 3
    assert "no assert" in problems[0]
    assert "not found" in problems[1] and "C beats D" in problems[1]
    assert "hidden" in problems[2]


@pytest.mark.parametrize("path", _chapters(), ids=lambda p: p.stem)
def test_no_build_time_assertion_reads_a_measured_time(path):
    """A time depends on the CPU, its features and its load: a chapter glues it, never asserts it."""
    found = timing_asserts(_code_cells(path))
    assert not found, (
        f"{path.name} asserts on measured times (glue the number and a computed direction word instead, "
        "CONTRIBUTING.md 'Claims'):\n" + "\n".join(found)
    )


PLANTED = {
    "direct": ("t = measure_latency(m, x)", "assert t < 0.01"),
    "via a table row": ("rows.append({'name': 'a', 'latency_ms': 3.0})\nr = rows[-1]", "assert r['latency_ms'] < 5"),
    "via a helper": ("def lat(n):\n    return R[n]['latency_ms'][64]", "assert lat('a') > lat('b')"),
    "via a ratio": (
        "speed = {k: time_call(f) for k, f in fns.items()}\nratio = speed['a'] / speed['b']",
        "assert ratio > 1.5",
    ),
    "via a clock": ("t0 = time.perf_counter()\nrun()\nelapsed = time.perf_counter() - t0", "assert elapsed < 60"),
    "via a loop": ("for name, t in compare_latency(models, x).items():\n    best = min(best, t)", "assert best > 0"),
    "via a mutation": ("out = []\nout.append(program_latency(p, x))\nfast = sorted(out)", "assert fast[0] < 1"),
    "via an item": ("d = {}\nfor k in keys:\n    d[k] = layer_times(m, x)['fc']", "assert d['a'] < d['b']"),
}


@pytest.mark.parametrize("case", PLANTED, ids=list(PLANTED))
def test_scan_finds_a_planted_timing_assertion(case):
    compute, check = PLANTED[case]
    assert timing_asserts([compute, "x = 1", check]) == [f"cell 2: {check}"]


def test_scan_lets_size_and_accuracy_assertions_through():
    cells = [
        "rows.append({'name': 'a', 'size_bytes': 10, 'accuracy': 0.9})\nt = time_call(f)\nt = 3",
        "size_ = {r['name']: r['size_bytes'] for r in rows}\nacc_ = {r['name']: r['accuracy'] for r in table}",
        "lat_ = {r['name']: r['latency_ms'] for r in table}\nglue('dir', 'faster' if lat_['a'] < lat_['b'] else 'slower')",
        "assert size_['a'] < size_['b'] and acc_['a'] > 0.5 and t == 3",
        "for r in rows:\n    assert r['accuracy'] > 0.5",
        "secs = {}\nfor k in names:\n    secs[(k, 1)] = time.perf_counter()\n    assert k != 'x'",
    ]
    assert timing_asserts(cells) == []
