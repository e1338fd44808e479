"""Bans a lab states ("without a loop over bits", "without courselib's kernel"), checked on code the student wrote.

A lab's test cells call :func:`names_used` or :func:`loops_used` on one of the student's functions. Under
``courselib grade`` they run in the clean room, where that function is a proxy: the code is read from the
*submitted notebook* in the trusted process (:data:`submission_code`, set by the clean room before the tests
run), never from what the student's kernel serves, so a forged ``inspect.getsource`` or a fake ``linecache``
entry changes nothing. The function's definition is read together with every top-level definition, assignment
and import of the student's cells that it reaches, transitively: an alias bound in another cell
(``_f = bc.xnor_popcount_matmul``), a helper function, an ``import ... as`` all count. Dynamic look-ups that
could reach any name (``getattr`` with a computed name, ``globals()``, ``vars()``, ``eval``, ``exec``,
``__import__``, ``importlib``, ``__dict__``) are reported as :data:`DYNAMIC`.

Elsewhere (plain ``nbgrader autograde``, the student's own Jupyter) the source comes from
``inspect.getsource`` of the function, which is what a student sees when checking their own work.
"""

from __future__ import annotations

import ast
import inspect
import textwrap

from .cells import parse_cell

__all__ = ["names_used", "loops_used", "check_ban", "submission_code", "DYNAMIC"]

#: The source of every cell the student wrote (solution cells and added cells), set by the clean room for
#: the submission it grades; ``None`` outside the clean room.
submission_code: list[str] | None = None

#: The name :func:`names_used` reports for a dynamic look-up (it could reach any banned name).
DYNAMIC = "<dynamic look-up>"

_DYNAMIC_CALLS = {"getattr", "globals", "vars", "eval", "exec", "compile", "__import__", "locals"}
_LOOPS = (ast.For, ast.AsyncFor, ast.While, ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)


def _parse(source: str) -> list[ast.stmt]:
    tree = parse_cell(source)
    return tree.body if tree is not None else []


def _bound(stmt: ast.stmt) -> set[str]:
    """Names a top-level statement binds."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {stmt.name}
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in stmt.names}
    targets = []
    if isinstance(stmt, ast.Assign):
        targets = stmt.targets
    elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign)):
        targets = [stmt.target]
    return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}


def _referenced(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _closure(name: str) -> list[ast.AST]:
    """The student's top-level statements that define ``name`` and everything they reach."""
    stmts = [s for src in submission_code or [] for s in _parse(src)]
    todo, seen, out = [name], set(), []
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        for s in stmts:
            if n in _bound(s) and s not in out:
                out.append(s)
                todo.extend(_referenced(s) - seen)
    return out


def _nodes(function) -> list[ast.AST]:
    remote = getattr(function, "__courselib_remote__", None)
    if submission_code is not None:
        name = remote or getattr(function, "__name__", None)
        found = _closure(name) if isinstance(name, str) else []
        if not found:
            raise AssertionError(f"the definition of {name!r} was not found in your notebook's cells")
        return found
    return [ast.parse(textwrap.dedent(inspect.getsource(function)))]


def names_used(*functions) -> set[str]:
    """Every name, attribute, imported module and string constant the code of ``functions`` mentions, with
    the definitions it reaches (module docstring), plus :data:`DYNAMIC` if it looks names up dynamically."""
    used: set[str] = set()
    for fn in functions:
        for tree in _nodes(fn):
            for n in ast.walk(tree):
                if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in _DYNAMIC_CALLS:
                    constant = n.func.id == "getattr" and len(n.args) >= 2 and isinstance(n.args[1], ast.Constant)
                    if not constant:  # getattr(m, "name") names what it reads; getattr(m, x) could read anything
                        used.add(DYNAMIC)
                if isinstance(n, ast.Name):
                    used.add(n.id)
                elif isinstance(n, ast.Attribute):
                    used.add(n.attr)
                    if n.attr in ("__dict__", "import_module", "__getattribute__"):
                        used.add(DYNAMIC)
                elif isinstance(n, (ast.Import, ast.ImportFrom)):
                    used |= {part for a in n.names for part in a.name.split(".")}
                    used |= {a.asname for a in n.names if a.asname}
                    used |= set((getattr(n, "module", None) or "").split("."))
                    if any(a.name.split(".")[0] == "importlib" for a in n.names) or (
                        getattr(n, "module", "") or ""
                    ).startswith("importlib"):
                        used.add(DYNAMIC)
                elif isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.isidentifier():
                    used.add(n.value)
    return used


def loops_used(function) -> list[str]:
    """The kinds of loop (``For``, ``While``, ``ListComp``...) in the code of ``function`` and what it reaches."""
    return sorted({type(n).__name__ for tree in _nodes(function) for n in ast.walk(tree) if isinstance(n, _LOOPS)})


def check_ban(function, banned, *, what: str = "") -> None:
    """Raise ``AssertionError`` if the code of ``function`` (with what it reaches) uses a name of ``banned`` or
    looks names up dynamically; the message names what was found, and ``what`` the rule ("do not call
    courselib's kernel here")."""
    used = names_used(function)
    found = sorted(used & set(banned))
    if DYNAMIC in used:
        found.append("a dynamic look-up (getattr with a computed name, globals(), eval, importlib...)")
    name = getattr(function, "__name__", "this function")
    assert not found, f"{name} uses {', '.join(found)}" + (f": {what}" if what else "")
