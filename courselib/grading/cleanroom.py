"""The clean room: one trusted process that executes a submission once and grades it with the hidden tests.

The student's code runs in exactly one process, a Jupyter kernel inside the sandbox
(:mod:`courselib.grading.sandbox`). It executes the student's notebook with the *release* version of
every test cell (the visible tests only): the hidden tests, their code and their expected values never
enter that process, so nothing the student's code can read (its working directory, its own kernel's
history, ``globals()``, ``/proc``) holds them. This module is the other side, the trusted driver
(``python -m courselib.grading.cleanroom grade SPEC.json``), which

1. starts the sandboxed kernel and, while it boots, runs the lab's instructor set-up cells in its own
   namespace (the *clean room*, where no student code ever runs);
2. executes the student's notebook in the kernel cell by cell (:class:`~courselib.grading.execute.LimitedExecute`:
   nbgrader's executor with its cell timeout, plus an output limit), keeping the outputs (the visible
   tests' results) for the feedback;
3. runs every graded test cell of the *source* notebook (visible and hidden tests) in the clean room.
   Each name the lab's solution cells define (``fit_means``, ``POPCOUNT8`` ...) is bound there to

   - a proxy function when the student's object is callable: calling it pickles the arguments, sends
     them to the kernel (a ``user_expressions`` request that calls a small helper the driver defines
     there after the student's cells ran), runs the student's function and sends the pickled result back;
   - the student's value otherwise;

   so the student's process sees the *inputs* hidden tests pass to its functions, and nothing else.
   Modules cross by value, arguments changed in place come back, functions a test passes are called
   back here, and names a test swaps for the course library's versions are swapped in the kernel for
   each call (:mod:`courselib.grading.wire`);
4. scores every part by the clean room's verdict, writes the executed notebook (nbgrader's
   "autograded" notebook: visible tests only) and the HTML feedback (:func:`feedback_notebook`: per
   test cell pass or fail, points and the author's message, no hidden test code).

Everything that comes back from the student's process goes through :class:`PlainUnpickler`, which
rebuilds only plain data: ``None``, ``bool``, ``int``, ``float``, ``complex``, ``str``, ``bytes``,
``tuple``, ``list``, ``dict``, ``set``, ``frozenset``, ``range``, ``slice``, numpy arrays/scalars
of those; torch tensors, modules and generators arrive as tagged plain parts and are rebuilt here by
:func:`courselib.grading.wire.rebuild` (modules only as library or instructor classes). An always-equal object, a
subclass of ``int`` or an array subclass cannot cross; a student exception comes back as the nearest
builtin exception class (``ValueError`` ...). So a test cell that passes in the clean room passed on
genuine values with genuine numpy and courselib.
"""

from __future__ import annotations

import ast
import base64
import builtins
import html
import importlib
import inspect
import io
import json
import linecache
import os
import pickle
import sys
import threading
import time
import traceback
from pathlib import Path

import nbformat
import numpy as np
from IPython.core.inputtransformer2 import TransformerManager
from nbclient.exceptions import DeadKernelError
from nbconvert.exporters import HTMLExporter
from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
from nbformat.notebooknode import NotebookNode
from traitlets.config import Config

from . import wire
from .execute import LimitedExecute

__all__ = [
    "PlainUnpickler",
    "plain_loads",
    "solution_names",
    "KernelProxy",
    "grade_notebook",
    "failure_message",
    "driver_args",
    "FEEDBACK_MODES",
]

#: Feedback modes a lab may choose in ``labs/course.toml`` (``[labs.<lab>] feedback = "full"``).
FEEDBACK_MODES = ("redacted", "full")

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
# the helper the driver defines in the student's kernel once the student's cells have run
KERNEL_HELPER = """
def __courselib_rpc__(_req_b64, _wire={}):
    import base64 as _b64, pickle as _pk

    if not _wire:  # the same encoding code as the clean room's (courselib.grading.wire)
        _wire["__name__"] = "__courselib_wire__"
        exec(compile(WIRE_SOURCE, "<courselib wire>", "exec"), _wire)
        _wire["handles"] = []
    _ns = get_ipython().user_ns

    def _callback(_i):  # a function of the test's: its calls run in the clean room
        def _stub(*_a, **_k):
            _msg = _b64.b64encode(_wire["dumps"](("callback", _i, _a, _k))).decode("ascii")
            _ans = _pk.loads(_b64.b64decode(get_ipython().kernel.raw_input(_msg)))
            if _ans[0] != "ok":
                raise RuntimeError("a function of the test's failed")
            return _wire["apply_copyback"](_a, _k, _rebuild(_pk.loads(_ans[1])))
        return _stub

    def _rebuild(_v):
        return _wire["rebuild"](_v, _wire["any_class_resolver"](_ns), _ns.__getitem__, 0, _callback)

    try:
        _req = _rebuild(_pk.loads(_b64.b64decode(_req_b64)))
        if _req[0] == "kinds":
            _torch = __import__("sys").modules.get("torch")  # a model is callable, but crosses by value
            _out = {_n: ("missing" if _n not in _ns else "value" if _torch and isinstance(_ns[_n], _torch.nn.Module)
                         else "callable" if callable(_ns[_n]) else "value") for _n in _req[1]}
        elif _req[0] == "get":
            _out = _ns[_req[1]]
        elif _req[0] in ("call", "handle"):
            _, _name, _args, _kwargs, _over = _req
            _fn = _ns[_name] if _req[0] == "call" else _wire["handles"][_name]
            _missing = object()
            _saved = {_k: _ns.get(_k, _missing) for _k in _over}
            _ns.update(_over)  # the names a test swapped for the course library's versions
            try:
                _out = _wire["call_with_copyback"](_fn, _args, _kwargs)
            finally:
                for _k, _v in _saved.items():
                    if _v is _missing:
                        _ns.pop(_k, None)
                    else:
                        _ns[_k] = _v
        elif _req[0] == "source":
            import inspect as _inspect
            _out = str(_inspect.getsource(_ns[_req[1]]))
        else:
            raise RuntimeError("bad request")
        # a function the student's code returns stays here, as a handle the clean room can call
        _rep = ("ok", _wire["dumps"](_out, _wire["handles"], lambda _f: _ns.get(_f.__qualname__) is _f))
    except BaseException as _e:
        try:
            _mro = [_c.__name__ for _c in type(_e).__mro__ if _c.__module__ == "builtins"]
            _msg = str(_e)[:2000]
        except BaseException:
            _mro, _msg = ["RuntimeError"], "unprintable exception"
        _rep = ("raise", _mro, _msg)
    return _b64.b64encode(_pk.dumps(_rep, protocol=4)).decode("ascii")
""".replace("WIRE_SOURCE", repr(inspect.getsource(wire)))


def _student_exception(mro: list, msg: str, name: str) -> BaseException:
    for cls_name in mro:
        cls = getattr(builtins, str(cls_name), None)
        if isinstance(cls, type) and issubclass(cls, Exception) and cls is not Exception:
            exc = cls(msg)
            break
    else:
        exc = RuntimeError(msg)
    exc.courselib_student = name  # the message is the student's own
    return exc


class KernelProxy:
    """Calls into the student's kernel: ``kinds`` / ``get`` / ``call`` requests as ``user_expressions``.

    One blocking client on the kernel's channels; a request that gets no reply within
    ``call_timeout`` seconds marks the kernel dead (every later request fails at once).
    """

    def __init__(self, km, call_timeout: float):
        self.km, self.call_timeout, self.dead = km, call_timeout, None
        self.kc = km.blocking_client()
        self.kc.start_channels()
        self.calls = 0
        #: the test's functions sent with the request under way (their calls come back as input requests)
        self.callbacks: list | None = None
        #: the proxies made by :meth:`function`, by the student's name (what a returned name stands for)
        self.functions: dict[str, object] = {}
        #: ``resolve_class`` for modules that come back (:func:`courselib.grading.wire.main_class_resolver`)
        self.resolve_class = wire.main_class_resolver({})
        #: the names a test has swapped for the course library's versions, sent with every call
        self.overrides = dict

    def _call(self, kind: str, key, args, kwargs, name: str):
        """Call the student's function ``key`` (a name, or the number of a handle) in the kernel; apply
        what it changed in its arguments to ``args`` / ``kwargs`` and return its result."""
        reply = self.request(kind, key, args, kwargs, self.overrides(), name=name)
        return wire.apply_copyback(args, kwargs, reply)

    def _handle(self, number: int):
        """A proxy for a function the student's code returned (it stays in the kernel)."""
        return lambda *args, **kwargs: self._call("handle", number, args, kwargs, "function")

    def _resolve_global(self, name: str):
        if name in self.functions:
            return self.functions[name]
        raise wire.WireError(f"the student's {name} cannot cross to the clean room")

    def _execute(self, code: str, expressions: dict | None = None) -> dict:
        msg_id = self.kc.execute(
            code, silent=True, store_history=False, user_expressions=expressions or {}, allow_stdin=True
        )
        deadline = time.monotonic() + self.call_timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the student's code did not answer in time")
            if self.callbacks:
                self._answer_callbacks()
            try:
                msg = self.kc.get_shell_msg(timeout=min(left, 0.02 if self.callbacks else 1.0))
            except Exception:  # queue.Empty
                if not self.km.is_alive():
                    raise EOFError("the student's kernel died") from None
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg["content"]

    def _answer_callbacks(self) -> None:
        """Run the calls the student's code made to the test's functions (input requests), here."""
        while True:
            try:
                msg = self.kc.get_stdin_msg(timeout=0.0)
            except Exception:  # queue.Empty
                return
            if msg["header"]["msg_type"] != "input_request":
                continue
            try:
                req = wire.rebuild(
                    plain_loads(base64.b64decode(msg["content"]["prompt"])),
                    self.resolve_class,
                    self._resolve_global,
                )
                if not (isinstance(req, tuple) and len(req) == 4 and req[0] == "callback" and type(req[1]) is int):
                    raise wire.WireError("malformed callback")
                fn = self.callbacks[req[1]]
                args, kwargs = tuple(req[2]), dict(req[3])
                answer = ("ok", wire.dumps(wire.call_with_copyback(fn, args, kwargs)))
            except BaseException:  # never the test's exception or its message: they may hold expected values
                answer = ("raise",)
            self.kc.input(base64.b64encode(pickle.dumps(answer, protocol=4)).decode("ascii"))

    def define_helper(self) -> bool:
        try:
            return self._execute(KERNEL_HELPER).get("status") == "ok"
        except (TimeoutError, EOFError) as exc:
            self.dead = str(exc)
            return False

    def request(self, *req, name: str = ""):
        if self.dead:
            raise RuntimeError(f"the student's process is not running ({self.dead})")
        if self.callbacks is not None:
            raise RuntimeError("a function of the test's called the student's code back (not supported)")
        self.calls += 1
        callbacks: list = []
        payload = base64.b64encode(wire.dumps(req, callbacks)).decode("ascii")
        self.callbacks = callbacks or None
        try:
            content = self._execute("", {"r": f"__courselib_rpc__({payload!r})"})
            res = content.get("user_expressions", {}).get("r", {})
            if res.get("status") != "ok":
                raise ValueError("the student's kernel could not run the request")
            text = ast.literal_eval(res["data"]["text/plain"])
            msg = PlainUnpickler(io.BytesIO(base64.b64decode(text))).load()
        except (TimeoutError, EOFError) as exc:
            self.dead = str(exc) or type(exc).__name__
            raise RuntimeError(f"the student's process failed: {self.dead}") from None
        except (ValueError, KeyError, SyntaxError, TypeError, pickle.UnpicklingError) as exc:
            raise RuntimeError(f"bad reply from the student's process: {type(exc).__name__}") from None
        finally:
            self.callbacks = None
        if msg[0] == "ok":
            try:
                return wire.rebuild(plain_loads(msg[1]), self.resolve_class, self._resolve_global, 0, self._handle)
            except (pickle.UnpicklingError, ImportError, AttributeError, TypeError, ValueError) as exc:
                raise RuntimeError(f"bad reply from the student's process: {exc}") from None
        if msg[0] == "raise":
            raise _student_exception(msg[1], msg[2], name)
        raise RuntimeError("bad reply")

    def function(self, name, source: str | None = None):
        """A proxy for the student's callable ``name``. With ``source`` (the student's own source text,
        as ``inspect.getsource`` gives it in the kernel), ``inspect.getsource(proxy)`` returns it, so
        tests that read the student's code (forbidden calls) read the student's code here too; the text
        is only registered in :mod:`linecache`, never compiled or run."""

        def proxy(*args, **kwargs):
            return self._call("call", name, args, kwargs, name)

        proxy.__name__ = proxy.__qualname__ = name
        setattr(proxy, wire.REMOTE_ATTR, name)
        self.functions[name] = proxy
        if source:
            fake = f"<student's {name}>"
            lines = source.splitlines(keepends=True)
            linecache.cache[fake] = (len(source), None, lines, fake)
            proxy.__code__ = proxy.__code__.replace(co_filename=fake, co_firstlineno=1)
        return proxy

    def close(self):
        try:
            self.kc.stop_channels()
        except Exception:
            pass


# --------------------------------------------------------------------------------------------
# what a failing test cell may show
def failure_message(exc: BaseException, names=()) -> str:
    """What a student may read about a failing test: the author's assertion message, or the student's
    own exception; never a traceback, and never the message of an exception raised by test code
    (it could hold an expected value). ``names`` are the lab's answer names (a missing one is said)."""
    student = getattr(exc, "courselib_student", None)
    if student:
        text = str(exc).strip()
        return f"your {student} raised {type(exc).__name__}" + (f": {text[:500]}" if text else "")
    if isinstance(exc, AssertionError):
        text = str(exc).strip()
        return text[:500] if text else "an assertion failed"
    if isinstance(exc, NameError) and getattr(exc, "name", None) in names:  # a missing answer of the student's
        return f"NameError: {exc.name!r} is not defined (its cell failed or was not run)"
    return f"the test raised {type(exc).__name__}"


def _cell_source(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _error_names(cell) -> list[str]:
    return [o.get("ename", "") for o in cell.get("outputs", []) if o.get("output_type") == "error"]


# --------------------------------------------------------------------------------------------
def _run_tests(spec: dict, ns: dict, proxy: KernelProxy | None, names: list[str], tm) -> dict:
    """Run the source test cells in the clean room against the student's names; per part the verdict."""
    cells = spec["cells"]
    tests = [i for i, c in enumerate(cells) if c["kind"] == "test"]
    results = {}
    bound = {}
    values = []  # the student's values not fetched yet (a module whose class an instructor cell defines later)

    def fetch_values():
        for name in list(values):
            try:
                bound[name] = proxy.request("get", name, name=name)
                values.remove(name)
            except Exception:
                pass

    if proxy is not None and not proxy.dead:
        proxy.resolve_class = wire.main_class_resolver(ns)
        # a name a test cell rebinds (course_versions(binarize_det=...)) is rebound in the kernel for each
        # call too, so that the student's later parts use the course library's earlier ones there as well
        proxy.overrides = lambda: {n: ns[n] for n in bound if n in ns and ns[n] is not bound[n]}
        try:
            kinds = proxy.request("kinds", names)
        except Exception:
            kinds = {}
        for name, kind in kinds.items():
            try:
                if kind == "callable":
                    try:
                        src = proxy.request("source", name, name=name)
                    except Exception:
                        src = None
                    bound[name] = proxy.function(name, src if isinstance(src, str) else None)
                elif kind == "value":
                    values.append(name)
            except Exception:
                pass
        fetch_values()

    def run(src: str, label: str):
        try:
            exec(compile(tm.transform_cell(src), f"<{label}>", "exec"), ns)
            return None
        except BaseException as exc:  # every failure is a failed test
            return exc

    if not tests:
        return results
    for cell in cells[tests[0] : tests[-1] + 1]:
        if cell["kind"] == "solution":
            continue
        for name in names:
            ns.pop(name, None)
        ns.update(bound)
        if cell["kind"] != "test":
            run(cell["source"], f"cell {cell.get('grade_id')}")
            if values:
                fetch_values()
            continue
        gid = cell["grade_id"]
        vis_exc = run(cell["release_source"], f"visible tests {gid}")
        for name in names:
            ns.pop(name, None)
        ns.update(bound)
        full_exc = vis_exc if cell["release_source"] == cell["source"] else run(cell["source"], f"tests {gid}")
        exc = vis_exc or full_exc
        res = {"visible": vis_exc is None, "passed": vis_exc is None and full_exc is None}
        if exc is not None:
            res["where"] = "visible" if vis_exc is not None else "hidden"
            res["message"] = failure_message(exc, names)
            res["traceback"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]
        results[gid] = res
    return results


def grade_notebook(spec: dict) -> dict:
    """Execute the submission in the sandboxed kernel once, grade it in the clean room, write the outputs.

    ``spec`` (JSON from :class:`courselib.grading.grader.Grader`): ``notebook`` (the submission with its
    locked cells restored from the release), ``cells`` (the source notebook's code cells classified as
    ``test`` / ``solution`` / ``instructor``, each test with its ``release_source``), ``kernel_name``,
    ``work`` (the kernel's working directory), ``ipc`` (prefix of its ZeroMQ ``ipc://`` sockets, or
    ``None`` for TCP), ``cell_timeout``, ``startup_timeout``, ``output_bytes``, ``out`` (folder for
    ``executed.ipynb``). Returns ``{"kernel": {grade_id: visible test passed in the kernel}, "clean":
    {grade_id: verdict}, "flags": [...], "times": {...}}``.
    """
    times = {"start": time.monotonic()}
    nb = nbformat.read(spec["notebook"], as_version=4)
    cfg = Config()
    if spec.get("ipc"):
        cfg.KernelManager.transport = "ipc"
        cfg.KernelManager.ip = spec["ipc"]
    ep = LimitedExecute(
        config=cfg,
        kernel_name=spec["kernel_name"],
        timeout=spec["cell_timeout"],
        startup_timeout=spec["startup_timeout"],
        interrupt_on_timeout=True,
        allow_errors=True,
        raise_on_iopub_timeout=False,
        shutdown_kernel="immediate",
        max_output_bytes=spec["output_bytes"],
        extra_arguments=[] if spec.get("ipc") else ["--HistoryManager.enabled=False"],
    )
    ep.nb = nb
    ep.reset_execution_trackers()
    ep.resources = {"metadata": {"path": spec["work"]}}
    ep.km = ep.create_kernel_manager()
    flags: list[str] = []
    tm = TransformerManager()
    ns = {"__name__": "__main__", "__builtins__": builtins}
    cells = spec["cells"]
    names = solution_names([c["source"] for c in cells if c["kind"] == "solution"])
    first_test = min((i for i, c in enumerate(cells) if c["kind"] == "test"), default=len(cells))
    proxy = None
    try:
        ep.start_new_kernel(cwd=spec["work"])
        times["kernel_launched"] = time.monotonic()

        def set_up():  # the instructor set-up runs in the clean room while the kernel boots and executes
            for cell in cells[:first_test]:
                if cell["kind"] == "instructor":
                    try:
                        exec(compile(tm.transform_cell(cell["source"]), f"<cell {cell.get('grade_id')}>", "exec"), ns)
                    except BaseException:  # a failing set-up fails the tests that need it
                        pass
            if spec.get("feedback_html"):  # load and compile the feedback template meanwhile too
                render_feedback(nbformat.v4.new_notebook(), spec["lab"], 0.0, 0.0)
            times["setup_cells"] = time.monotonic()

        setup = threading.Thread(target=set_up, daemon=True)
        setup.start()
        ep.start_new_kernel_client()
        times["kernel_ready"] = time.monotonic()
        try:
            for index, cell in enumerate(nb.cells):
                if cell.cell_type == "code":
                    ep.execute_cell(cell, index, store_history=True)
        except DeadKernelError:
            flags.append("crashed")
        times["executed"] = time.monotonic()
        setup.join()
        times["setup_joined"] = time.monotonic()
        if "crashed" not in flags:
            proxy = KernelProxy(ep.km, spec["cell_timeout"])
            if not proxy.define_helper():
                proxy.dead = proxy.dead or "the helper could not be defined"
        clean = _run_tests(spec, ns, proxy, names, tm) if "crashed" not in flags else {}
        times["clean_room"] = time.monotonic()
    finally:
        if proxy is not None:
            proxy.close()
        try:
            ep._cleanup_kernel()
        except Exception:
            pass
    times["kernel_stopped"] = time.monotonic()
    kernel = {}
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        enames = _error_names(cell)
        for ename, flag in (
            ("CellTimeoutError", "timeout"),
            ("MemoryError", "memory"),
            ("OutputLimitExceeded", "output-limit"),
            ("DeadKernelError", "crashed"),
        ):
            if ename in enames:
                flags.append(flag)
        if meta.get("grade") and cell.cell_type == "code":
            kernel[meta["grade_id"]] = cell.get("execution_count") is not None and not enames
    scores, notes, faked = score_parts(spec["parts"], spec.get("verifiable"), kernel, clean, "crashed" in flags)
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("grade") and meta.get("grade_id") in scores:
            meta["score"], meta["points"] = scores[meta["grade_id"]], float(dict(spec["parts"])[meta["grade_id"]])
    for key in ("autograded", "feedback_html"):
        if spec.get(key):
            Path(spec[key]).parent.mkdir(parents=True, exist_ok=True)
    coalesce_streams(nb)
    if spec.get("autograded"):
        nbformat.write(nb, spec["autograded"])
    if spec.get("feedback_html"):
        fb = feedback_notebook(nb, spec["parts"], scores, clean, kernel, spec.get("feedback", "redacted"), spec, notes)
        total, top = sum(scores.values()), sum(p for _, p in spec["parts"])
        Path(spec["feedback_html"]).write_text(render_feedback(fb, spec["lab"], total, top))
    times["feedback"] = time.monotonic()
    return {
        "kernel": kernel,
        "clean": {g: {k: v for k, v in r.items() if k != "traceback"} for g, r in clean.items()},
        "scores": scores,
        "notes": notes,
        "faked": faked,
        "flags": sorted(set(flags)),
        "times": times,
        "calls": proxy.calls if proxy else 0,
    }


def score_parts(parts, verifiable, kernel: dict, clean: dict, crashed: bool):
    """Part scores from the verdicts: on every part the clean room can check (``verifiable``; ``None``:
    all, for the calibration), its verdict (visible and hidden tests) and the visible tests' result in
    the kernel must both pass; on the others, the visible tests' result in the kernel. Returns
    ``(scores, notes, faked)``, ``faked`` the parts whose visible tests passed in the kernel but failed
    in the clean room (the student's code faked a pass)."""
    scores, notes, faked = {}, {}, []
    for gid, pts in parts:
        verdict = clean.get(gid, {})
        if crashed:
            scores[gid] = 0.0
        elif verifiable is None or gid in verifiable:
            # the clean room's verdict on every test, and the visible tests in the kernel too (they see
            # the student's real objects; failing there only ever costs the student)
            scores[gid] = float(pts) if verdict.get("passed") and (verifiable is None or kernel.get(gid)) else 0.0
            if kernel.get(gid) and not verdict.get("visible"):
                faked.append(gid)
        else:
            scores[gid] = float(pts) if kernel.get(gid) else 0.0
            notes[gid] = "scored by its visible tests only: the clean room cannot check this part"
    return scores, notes, faked


# --------------------------------------------------------------------------------------------
# feedback
def coalesce_streams(nb) -> None:
    """Join consecutive ``stream`` outputs of the same name in every cell, in place.

    How a kernel splits a cell's printing into messages depends on timing (``print("x")`` may arrive
    as ``"x"`` and ``"\\n"``); joined, the autograded notebook and the feedback are the same on every run
    and on every machine that grades the submission.
    """
    for cell in nb.cells:
        merged = []
        for out in cell.get("outputs", []):
            prev = merged[-1] if merged else None
            if (
                prev is not None
                and out.get("output_type") == "stream"
                and prev.get("output_type") == "stream"
                and prev.get("name") == out.get("name")
            ):
                prev["text"] = "".join(prev["text"]) + "".join(out["text"])
            else:
                merged.append(out)
        if "outputs" in cell:
            cell["outputs"] = merged


def feedback_notebook(
    executed, parts: list, scores: dict, clean: dict, kernel: dict, mode: str, spec: dict, notes: dict
) -> NotebookNode:
    """The notebook the feedback is rendered from: the executed notebook (visible tests and their
    outputs as the kernel produced them) with, under every test cell, its verdict, points and message.

    ``mode="redacted"`` (default): a failing part shows which tests failed (visible or hidden) and the
    message of :func:`failure_message`, never hidden test code, expected values or a traceback of
    hidden code. ``mode="full"``: the test cell shows its source version (hidden tests included) and
    the clean room's traceback.
    """
    nb = nbformat.from_dict(json.loads(json.dumps(executed)))
    points = dict(parts)
    source_tests = {c["grade_id"]: c["source"] for c in spec["cells"] if c["kind"] == "test"}
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if not (meta.get("grade") and meta.get("grade_id") in points):
            continue
        gid = meta["grade_id"]
        meta["score"], meta["points"] = float(scores.get(gid, 0.0)), float(points[gid])
        verdict = clean.get(gid, {})
        score = float(scores.get(gid, 0.0))
        passed = score >= points[gid] and bool(verdict.get("passed") or kernel.get(gid))
        text = f"{'passed' if passed else 'failed'}: {score:g} / {points[gid]:g} points"
        if not passed:
            where = verdict.get("where")
            if where == "visible" or (gid in kernel and not kernel[gid]):
                text += " (the visible tests above failed)"
            elif where == "hidden":
                text += " (the visible tests passed; the hidden tests failed)"
            if verdict.get("message"):
                text += f"\nmessage: {verdict['message']}"
        if notes.get(gid):
            text += f"\nnote: {notes[gid]}"
        if mode == "full":
            cell.source = source_tests.get(gid, cell.source)
            if verdict.get("traceback") and not passed:
                text += "\n\n" + verdict["traceback"]
        colour = "#2e7d32" if passed else "#c62828"
        cell.outputs.append(
            nbformat.v4.new_output(
                "display_data",
                data={
                    "text/plain": text,
                    "text/html": f'<pre style="color:{colour};font-weight:bold">{html.escape(text)}</pre>',
                },
            )
        )
    return nb


_EXPORTER = None


def render_feedback(nb: NotebookNode, lab: str, score: float, max_score: float) -> str:
    """HTML with nbgrader's own feedback template (what ``nbgrader generate_feedback`` writes)."""
    global _EXPORTER
    if _EXPORTER is None:
        root = Path(importlib.import_module("nbgrader").__file__).parent
        c = Config()
        c.HTMLExporter.template_name = "feedback"
        c.HTMLExporter.extra_template_basedirs = [str(root / "server_extensions" / "formgrader" / "templates")]
        c.HTMLExporter.extra_template_paths = [
            str(root / "server_extensions" / "formgrader" / "static" / "node_modules" / "bootstrap" / "dist" / "css")
        ]
        _EXPORTER = HTMLExporter(config=c)
        _EXPORTER.register_preprocessor(CSSHTMLHeaderPreprocessor(), enabled=True)
    resources = {"nbgrader": {"notebook": lab, "score": score, "max_score": max_score, "late_penalty": 0}}
    body, _ = _EXPORTER.from_notebook_node(nb, resources=resources)
    return body


def driver_args(spec_path, result_path) -> list[str]:
    """The driver's arguments (module, then its ``main``'s): :func:`grade_notebook` on ``spec_path``,
    its result written to ``result_path``. A :class:`~courselib.grading.forkserver.ForkServer` runs them in
    a forked child, :func:`courselib.grading.forkserver.fresh_argv` in a fresh process."""
    return ["courselib.grading.cleanroom", "grade", str(spec_path), str(result_path)]


def main(argv=None) -> None:  # pragma: no cover - subprocess entry point
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["grade"] and len(argv) == 3:
        spec = json.loads(Path(argv[1]).read_text())
        res = grade_notebook(spec)
        res["times"]["written"] = time.monotonic()
        Path(argv[2]).write_text(json.dumps(res))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # everything is written and the kernel is stopped: skip the interpreter's slow teardown
    else:
        sys.exit("usage: python -m courselib.grading.cleanroom grade SPEC.json RESULT.json")


if __name__ == "__main__":  # pragma: no cover
    main()
