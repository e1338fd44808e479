"""Clean-room re-check of autograded test cells: the tests run where no student code ever ran.

Under plain nbgrader the hidden tests run in the student's own kernel, after the student's code, so
the student can fake a pass: return an object whose ``__eq__`` is always true, monkeypatch
``np.allclose`` or ``courselib``, register an IPython input transformer that rewrites the test
cells, silence ``showtraceback`` ... This module re-runs every graded test cell of the *source*
notebook in a fresh Python process (the *clean room*) that executes only instructor code. Each name
the lab's solution cells define (``fit_means``, ``POPCOUNT8`` ...) is bound in the clean room to

- a proxy function when the student's object is callable: calling it pickles the arguments, sends
  them to the student's process (a sandboxed server that ran the student's cells and never sees a
  test), runs the student's function there and sends the result back;
- the student's value otherwise.

Everything that comes back from the student's process goes through :class:`PlainUnpickler`, which
rebuilds only plain data: ``None``, ``bool``, ``int``, ``float``, ``complex``, ``str``, ``bytes``,
``tuple``, ``list``, ``dict``, ``set``, ``frozenset``, ``range``, ``slice`` and numpy arrays/scalars
of those. An always-equal object, a subclass of ``int`` or an array subclass cannot cross; a student
exception comes back as the nearest builtin exception class (``ValueError`` ...). So a test cell that
passes in the clean room passed on genuine values with genuine numpy and courselib.
"""

from __future__ import annotations

import ast
import builtins
import ctypes
import importlib
import io
import json
import os
import pickle
import select
import struct
import subprocess
import sys
import time
import traceback

import numpy as np
from IPython.core.inputtransformer2 import TransformerManager
from IPython.core.interactiveshell import InteractiveShell

__all__ = ["PlainUnpickler", "plain_loads", "solution_names", "StudentProxy", "run_clean_room"]

_SAFE_BUILTINS = {
    "set",
    "frozenset",
    "range",
    "slice",
    "complex",
    "bytearray",
    "list",
    "dict",
    "tuple",
    "int",
    "float",
    "bool",
    "str",
    "bytes",
}
_SAFE_NUMPY = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.numeric", "_frombuffer"),
}


class PlainUnpickler(pickle.Unpickler):
    """Unpickle only plain data (builtins containers and numbers, numpy arrays and scalars).

    Object arrays are refused too: their elements could be arbitrary student objects.
    """

    def find_class(self, module, name):
        if module == "builtins" and name in _SAFE_BUILTINS:
            return getattr(builtins, name)
        if (module, name) in _SAFE_NUMPY:
            return getattr(importlib.import_module(module), name)
        if module.startswith("numpy") and name.endswith("DType"):  # numpy >= 2 dtype classes
            obj = getattr(importlib.import_module(module), name)
            if isinstance(obj, type) and issubclass(obj, np.dtype):
                return obj
        raise pickle.UnpicklingError(f"{module}.{name} is not plain data")


def _check_plain(obj, depth=0):
    if depth > 50:
        raise pickle.UnpicklingError("nested too deeply")
    if isinstance(obj, np.ndarray):
        if type(obj) is not np.ndarray or obj.dtype.hasobject:
            raise pickle.UnpicklingError("object or subclassed arrays are not plain data")
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            _check_plain(v, depth + 1)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, depth + 1)
            _check_plain(v, depth + 1)
    return obj


def plain_loads(data: bytes):
    """Load a pickle made of plain data only (see :class:`PlainUnpickler`); raise otherwise."""
    return _check_plain(PlainUnpickler(io.BytesIO(data)).load())


def solution_names(sources: list[str]) -> list[str]:
    """Top-level names bound by the given (solution) cell sources, in order of first binding."""
    tm = TransformerManager()
    names: list[str] = []

    def add(n):
        if n not in names:
            names.append(n)

    for src in sources:
        try:
            tree = ast.parse(tm.transform_cell(src))
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    for sub in ast.walk(t):
                        if isinstance(sub, ast.Name):
                            add(sub.id)
    return names


# --------------------------------------------------------------------------------------------
# wire format: 4-byte big-endian length + pickle
def _send(fh, obj) -> None:
    data = pickle.dumps(obj, protocol=4)
    fh.write(struct.pack(">I", len(data)) + data)
    fh.flush()


def _recv_raw(fd: int, deadline: float, limit: int = 256 << 20) -> bytes:
    def read_exact(n):
        buf = b""
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the student's code did not answer in time")
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                continue
            chunk = os.read(fd, n - len(buf))
            if not chunk:
                raise EOFError("the student's process ended")
            buf += chunk
        return buf

    (n,) = struct.unpack(">I", read_exact(4))
    if n > limit:
        raise ValueError(f"reply of {n} bytes exceeds the {limit}-byte limit")
    return read_exact(n)


def serve(cells_path: str) -> None:  # pragma: no cover - runs inside the sandbox
    """Student side: run the student's cells in an IPython shell, then answer proxy requests."""
    proto_in = os.fdopen(os.dup(0), "rb", buffering=0)
    proto_out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    shell = InteractiveShell.instance()
    for src in json.loads(open(cells_path).read()):
        try:
            shell.run_cell(src, silent=True)
        except BaseException:
            pass
    ns = shell.user_ns
    _send(proto_out, ("ready",))

    def read_exact(n):
        buf = b""
        while len(buf) < n:
            chunk = proto_in.read(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    while True:
        try:
            (n,) = struct.unpack(">I", read_exact(4))
            req = pickle.loads(read_exact(n))
        except Exception:
            return
        try:
            if req[0] == "kinds":
                out = {}
                for name in req[1]:
                    if name not in ns:
                        out[name] = "missing"
                    else:
                        out[name] = "callable" if callable(ns[name]) else "value"
                reply = ("ok", pickle.dumps(out))
            elif req[0] == "get":
                reply = ("ok", pickle.dumps(ns[req[1]], protocol=4))
            elif req[0] == "call":
                _, name, args, kwargs = req
                reply = ("ok", pickle.dumps(ns[name](*args, **kwargs), protocol=4))
            else:
                reply = ("raise", ["RuntimeError"], f"bad request {req[0]!r}")
        except BaseException as exc:
            try:
                mro = [c.__name__ for c in type(exc).__mro__ if c.__module__ == "builtins"]
                msg = str(exc)[:2000]
            except BaseException:
                mro, msg = ["RuntimeError"], "unprintable exception"
            reply = ("raise", mro, msg)
        try:
            _send(proto_out, reply)
        except BaseException:
            return


def _die_with_parent():  # pragma: no cover - runs in the child
    os.setsid()
    ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL


class StudentProxy:
    """Client of :func:`serve`: a student process in the sandbox, reached over pipes."""

    def __init__(self, argv: list[str], *, startup_timeout: float, call_timeout: float, env=None, cwd=None):
        self.call_timeout, self.startup_timeout = call_timeout, startup_timeout
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            preexec_fn=_die_with_parent,
        )
        self.dead = None  # None: not ready yet

    def wait_ready(self):
        if self.dead is not None:
            return
        self.dead = False
        startup_timeout = self.startup_timeout
        try:
            msg = self._reply(startup_timeout)
            if msg != ("ready",):
                raise EOFError("bad handshake")
        except (EOFError, TimeoutError, ValueError, pickle.UnpicklingError, struct.error) as exc:
            self.close()
            self.dead = str(exc) or type(exc).__name__

    def _reply(self, timeout):
        raw = _recv_raw(self.proc.stdout.fileno(), time.monotonic() + timeout)
        return PlainUnpickler(io.BytesIO(raw)).load()

    def request(self, *req):
        self.wait_ready()
        if self.dead:
            raise RuntimeError(f"the student's process is not running ({self.dead})")
        try:
            _send(self.proc.stdin, req)
            msg = self._reply(self.call_timeout)
        except (OSError, EOFError, TimeoutError, ValueError, pickle.UnpicklingError, struct.error) as exc:
            self.close()
            self.dead = str(exc) or type(exc).__name__
            raise RuntimeError(f"the student's process failed: {self.dead}") from None
        if msg[0] == "ok":
            return plain_loads(msg[1])
        if msg[0] == "raise":
            for name in msg[1]:
                cls = getattr(builtins, str(name), None)
                if isinstance(cls, type) and issubclass(cls, Exception) and cls is not Exception:
                    raise cls(msg[2])
            raise RuntimeError(msg[2])
        raise RuntimeError("bad reply")

    def function(self, name):
        def proxy(*args, **kwargs):
            return self.request("call", name, args, kwargs)

        proxy.__name__ = name
        return proxy

    def close(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except OSError:
                pass
        self.proc.wait()


def _debug():
    if os.environ.get("COURSELIB_CLEANROOM_DEBUG"):
        traceback.print_exc()


def run_clean_room(spec_path: str) -> dict:
    """Clean side: run the source notebook's instructor cells, return ``{grade_id: passed}``.

    ``spec_path`` is a JSON file with ``cells`` (``[{"source", "grade_id", "kind"}]`` where kind is
    ``"test"``, ``"instructor"`` or ``"solution"``), ``student_argv`` (the command that starts
    :func:`serve` in the sandbox), ``startup_timeout`` and ``call_timeout``.
    """
    spec = json.loads(open(spec_path).read())
    names = solution_names([c["source"] for c in spec["cells"] if c["kind"] == "solution"])
    student = StudentProxy(
        spec["student_argv"],
        startup_timeout=spec["startup_timeout"],
        call_timeout=spec["call_timeout"],
        cwd=spec.get("cwd"),
    )
    tm = TransformerManager()
    ns = {"__name__": "__main__", "__builtins__": builtins}
    results = {}
    cells = spec["cells"]
    first_test = min((i for i, c in enumerate(cells) if c["kind"] == "test"), default=len(cells))
    last_test = max((i for i, c in enumerate(cells) if c["kind"] == "test"), default=-1)

    def run(cell):
        try:
            exec(compile(tm.transform_cell(cell["source"]), f"<cell {cell.get('grade_id')}>", "exec"), ns)
            return True
        except BaseException:
            _debug()
            return False

    for cell in cells[:first_test]:  # instructor set-up runs while the student's process starts
        if cell["kind"] == "instructor":
            run(cell)
    student.wait_ready()
    bound = {}
    try:
        kinds = student.request("kinds", names) if not student.dead else {}
        for name, kind in kinds.items():
            try:
                if kind == "callable":
                    bound[name] = student.function(name)
                elif kind == "value":
                    bound[name] = student.request("get", name)
            except Exception:
                _debug()
    except Exception:
        _debug()
    for cell in cells[first_test : last_test + 1]:
        if cell["kind"] == "solution":
            continue
        for name in names:
            ns.pop(name, None)
        ns.update(bound)
        ok = run(cell)
        if cell["kind"] == "test":
            results[cell["grade_id"]] = ok
    student.close()
    return results


def main(argv=None) -> None:  # pragma: no cover - subprocess entry points
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        serve(argv[1])
    elif argv[:1] == ["check"]:
        res = run_clean_room(argv[1])
        with open(argv[2], "w") as fh:
            json.dump(res, fh)
    else:
        sys.exit("usage: python -m courselib.grading.cleanroom serve CELLS.json | check SPEC.json OUT.json")


if __name__ == "__main__":  # pragma: no cover
    main()
