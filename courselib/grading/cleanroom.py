"""The clean room: the trusted process that runs a submission once and judges every part by its hidden tests.

The student's code runs in a Jupyter kernel inside the sandbox (:mod:`courselib.grading.sandbox`). It
executes the student's notebook with the *release* version of every test cell (the visible tests only):
the hidden tests, their code and their expected values never enter that process. This module is the other
side, the trusted driver (``python -m courselib.grading.cleanroom grade SPEC.json RESULT.json``), which

1. starts the sandboxed kernel and, while it boots, runs the lab's instructor set-up cells in its own
   namespace (the *clean room*, where no student code ever runs);
2. executes the student's notebook in the kernel cell by cell (:class:`~courselib.grading.execute.LimitedExecute`:
   nbgrader's executor with its cell timeout, plus an output limit), keeping the outputs for the feedback;
3. judges every autograded part. A part in the **clean tier** is judged here: its test cell (visible, then
   visible and hidden tests) runs in the clean room, where each name the lab's solution cells define is
   bound to the student's value (fetched as plain data) or to a proxy of the student's function, whose
   calls go to the kernel over one channel (:class:`KernelSession`, :mod:`courselib.grading.kernel` on the
   other side). The student's process sees the *inputs* hidden tests pass to its functions, and nothing
   else; the verdict is the clean room's. A part in the **sealed tier** (a test that changes the
   environment, such as ``np.linalg.solve = None``, or whose answers cannot cross as plain data) is judged
   by a second, fresh sandboxed kernel that runs the notebook with the hidden tests in place, as nbgrader
   does (:func:`sealed_verdicts`); only pass or fail leaves it. Answers graded by hand wait for the
   instructor (``needs_manual_grade``);
4. writes the executed notebook (nbgrader's "autograded" notebook: visible tests only) and the HTML
   feedback (:mod:`courselib.grading.feedback`: no hidden test code, no expected value, no hidden input).

Everything that comes back from the student's process is bounded: the channel reads at most
``max_reply_bytes`` per answer before a deadline, :func:`courselib.grading.wire.plain_loads` decodes plain
data only with a budget of objects, the kernel's output during the clean room's calls is drained and
counted (past the output limit the submission is ``output-limit``), no ZeroMQ message larger than the
output limit is accepted, and a call past its time is a ``timeout`` of that part only: the kernel is
interrupted (or restarted and the notebook re-run) and the next part is judged.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import copy
import io
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

import nbformat
from IPython.core.inputtransformer2 import TransformerManager
from jupyter_client import BlockingKernelClient
from nbclient.exceptions import DeadKernelError
from nbclient.util import run_sync
from traitlets.config import Config

from . import bans, testing, wire
from .cells import parse_cell
from .execute import LimitedExecute, bounded_zmq_context, watch_oversize
from .feedback import FEEDBACK_MODES, coalesce_streams, failure_message, feedback_notebook, render_feedback

__all__ = [
    "solution_names",
    "KernelSession",
    "grade_notebook",
    "score_parts",
    "sealed_verdicts",
    "driver_args",
    "FEEDBACK_MODES",
    "TIERS",
]

#: How a part is judged: by its hidden tests in the clean room, by its hidden tests in a sealed second
#: kernel (nbgrader's way), or by the instructor.
TIERS = ("clean", "sealed", "manual")

#: Calls a student's function may make to the test's own functions (callbacks) per call.
CALLBACK_BUDGET = 1000

#: What a sync marker in the kernel's output starts with (:meth:`KernelSession.sync`).
SYNC_PREFIX = "courselib-sync-"

#: Seconds the kernel gets to answer again after an interrupt, before it is restarted.
INTERRUPT_GRACE = 5.0

#: Memory the driver may allocate beyond what it has mapped when it starts (its imports): an address-space
#: limit (``RLIMIT_AS``, soft: the kernels it starts lift it for themselves), so that nothing a submission
#: sends or prints makes the trusted process grow without bound.
DRIVER_MEMORY_BYTES = 2 << 30


def limit_driver(cpu_seconds: int) -> None:
    """Bound this driver: ``RLIMIT_AS`` at its current size plus :data:`DRIVER_MEMORY_BYTES`, and
    ``RLIMIT_CPU`` at ``cpu_seconds`` (the sandbox's own limits bound the student's processes)."""
    import resource

    size = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                size = int(line.split()[1]) << 10
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = size + DRIVER_MEMORY_BYTES
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard == resource.RLIM_INFINITY or cpu_seconds < hard:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, hard))


def solution_names(sources: list[str]) -> list[str]:
    """Top-level names bound by the given (solution) cell sources, in order of first binding."""
    names: list[str] = []

    def add(n):
        if n not in names:
            names.append(n)

    for src in sources:
        tree = parse_cell(src)
        for node in tree.body if tree is not None else []:
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
# the student's exceptions, and the ways a call can end
class CallTimeout(RuntimeError):
    """A call into the student's kernel did not answer within its time."""

    courselib_timeout = True


class KernelGone(RuntimeError):
    """The student's kernel (or the helper serving the clean room in it) stopped answering."""


def _student_exception(mro: list, message: str, name: str, hidden: bool) -> BaseException:
    for cls_name in mro:
        cls = getattr(builtins, str(cls_name), None)
        if isinstance(cls, type) and issubclass(cls, Exception) and cls is not Exception:
            exc = cls(message)
            break
    else:
        exc = RuntimeError(message)
    exc.courselib_student = name  # the message is the student's own
    exc.courselib_hidden = hidden  # raised while hidden tests ran: the message may repeat a hidden input
    return exc


# --------------------------------------------------------------------------------------------
class KernelSession:
    """The clean room's calls into the student's kernel, over one channel, each bounded.

    :meth:`start` asks the kernel to run :func:`courselib.grading.kernel.serve` and accepts its connection
    on a Unix socket in the sandbox's scratch folder; :meth:`request` sends one request and reads the
    answer with :attr:`max_reply` bytes and :attr:`call_timeout` seconds at most, answering the student's
    calls to the test's functions on the way (at most :data:`CALLBACK_BUDGET` per call). Meanwhile a thread
    drains the kernel's output (prints of the student's functions) and counts it against
    :attr:`output_limit`. A call past its time raises :class:`CallTimeout`; :meth:`recover` then interrupts
    the kernel, or restarts it (``restart``: re-runs the notebook in a new kernel) when it does not answer.
    """

    def __init__(self, km, work: Path, *, call_timeout: float, output_limit: int, max_reply: int, restart=None):
        self.km, self.work = km, Path(work)
        self.call_timeout, self.output_limit, self.max_reply = call_timeout, output_limit, max_reply
        self.restart = restart
        self.channel: wire.Channel | None = None
        self.kc = None
        self.number = 0
        self.calls = 0
        self.restarts = 0
        #: interrupts sent to the kernel now serving (``settle`` waits until it has received them all)
        self.interrupts = 0
        self.dead: str | None = None
        self.output_bytes = 0
        self.output_exceeded = False
        #: bytes the kernel wrote to standard error (nbgrader scores a test cell with any of it 0)
        self.stderr_bytes = 0
        self._tokens_seen: set[str] = set()
        self._disconnects = self._disconnects_seen = 0
        #: set while hidden tests run: a student's exception then shows its class only
        self.hidden = False
        #: proxies of the student's functions by name (what a returned name stands for)
        self.functions: dict[str, object] = {}
        self.resolve_class = wire.main_class_resolver({})
        #: the names a test has swapped for the course library's versions, sent with every call
        self.overrides = dict
        #: ``{function: [argument keys]}`` whose in-place changes come back (``None``: all of them, and
        #: :attr:`changed` records which did: the calibration learns the contract from the solution)
        self.mutable: dict | None = None
        self.changed: dict[str, set] = {}
        self._callbacks: list | None = None
        self._drain_stop = threading.Event()
        self._drain: threading.Thread | None = None

    # -- connection -----------------------------------------------------------------------------
    def start(self) -> bool:
        """Start the helper in the kernel and connect; ``False`` (and :attr:`dead` set) if it does not come."""
        address = str(self.work / ".courselib-cleanroom.sock")
        try:
            os.unlink(address)
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(address)
            os.chmod(address, 0o666)  # the kernel runs as another user
            listener.listen(1)
            listener.settimeout(self.call_timeout)
            if self.kc is None:
                self.kc = BlockingKernelClient(parent=self.km, context=bounded_zmq_context(self._max_message()))
                self.kc.load_connection_info(self.km.get_connection_info())
                self.kc.start_channels()
                kc = self.kc
                watch_oversize(kc.iopub_channel.socket, lambda: kc is self.kc and self._refused())
                self._drain_stop.clear()
                self._drain = threading.Thread(target=self._drain_output, daemon=True)
                self._drain.start()
            code = f"import courselib.grading.kernel as _courselib_kernel\n_courselib_kernel.serve({address!r})"
            self.kc.execute(code, silent=True, store_history=False, allow_stdin=False)
            conn, _ = listener.accept()
        except (OSError, TimeoutError) as exc:
            self.dead = f"the clean room's helper did not start in the kernel ({type(exc).__name__})"
            return False
        finally:
            listener.close()
            try:
                os.unlink(address)
            except OSError:
                pass
        self.channel = wire.Channel(conn)
        self.dead = None
        self.interrupts = 0
        return True

    def _refused(self) -> None:
        """The iopub connection dropped: a message over the size limit (more output than the limit at once),
        or the kernel went away; :meth:`_receive` tells which by whether the kernel is still alive."""
        self._disconnects += 1

    def _alive(self) -> bool:
        try:
            return bool(run_sync(self.km.is_alive)())
        except Exception:
            return False

    def _max_message(self) -> int:
        return max(4 * self.output_limit, 8 << 20)

    def _drain_output(self) -> None:
        """Read and count the kernel's output messages (never keep them) until :meth:`close`."""
        counted = ("stream", "display_data", "execute_result", "update_display_data", "error")
        while not self._drain_stop.is_set():
            try:
                msg = self.kc.iopub_channel.get_msg(timeout=0.2)
            except Exception:  # queue.Empty, or the channel closed
                continue
            if msg.get("msg_type") in counted:
                content = msg.get("content", {})
                self.output_bytes += len(json.dumps(content, default=str))
                if self.output_bytes > self.output_limit:
                    self.output_exceeded = True
                if msg.get("msg_type") == "stream":
                    text = str(content.get("text", ""))
                    if content.get("name") == "stderr":
                        self.stderr_bytes += len(text)
                    elif SYNC_PREFIX in text:
                        self._tokens_seen.update(t for t in text.split() if t.startswith(SYNC_PREFIX))

    def close(self) -> None:
        if self.channel is not None:
            try:
                self.channel.send(wire.dumps(("done", 0)), time.monotonic() + 1.0)
            except wire.ChannelError:
                pass
            self.channel.close()
            self.channel = None
        self._stop_client()

    def _stop_client(self) -> None:
        """Stop the output drain and the client's channels (a new kernel gets new ones in :meth:`start`)."""
        self._drain_stop.set()
        if self._drain is not None:
            self._drain.join(timeout=2.0)
            self._drain = None
        if self.kc is not None:
            try:
                self.kc.stop_channels()
            except Exception:
                pass
            self.kc = None

    # -- requests -------------------------------------------------------------------------------
    def request(self, kind: str, *args, name: str = "", handle_of: str = ""):
        """Send one request and return its rebuilt answer (raise the student's exception as the nearest
        builtin class, :class:`CallTimeout`, or :class:`KernelGone`)."""
        if self.dead or self.channel is None:
            raise KernelGone(f"the student's process is not running ({self.dead})")
        if self.output_exceeded:
            raise KernelGone("the student's code printed more than the output limit")
        self.number += 1
        number = self.number
        self.calls += 1
        callbacks: list = []
        payload = wire.dumps((kind, number, *args), callbacks)
        deadline = time.monotonic() + self.call_timeout
        self._callbacks, budget = callbacks or None, CALLBACK_BUDGET
        try:
            self.channel.send(payload, deadline)
            while True:
                msg = self._receive(deadline)
                if msg[0] == "callback":
                    budget -= 1
                    self._answer_callback(msg, budget)
                    continue
                if msg[1] != number:  # the late answer of a call that timed out before
                    continue
                break
        finally:
            self._callbacks = None
        if msg[0] == "raise":
            if not (len(msg) == 4 and isinstance(msg[2], list) and isinstance(msg[3], str)):
                raise KernelGone("bad reply from the student's process")
            raise _student_exception(msg[2], msg[3], name or "function", self.hidden)
        if msg[0] != "ok" or len(msg) != 3:
            raise KernelGone("bad reply from the student's process")
        try:
            return wire.rebuild(msg[2], self.resolve_class, self._resolve_global, 0, self._handle(name or handle_of))
        except (wire.WireError, ImportError, AttributeError, TypeError, ValueError) as exc:
            raise KernelGone(f"bad reply from the student's process: {exc}") from None

    def _receive(self, deadline: float):
        while True:
            if self._disconnects > self._disconnects_seen:
                self._disconnects_seen = self._disconnects
                if self._alive():  # the kernel is there: the connection dropped an oversized message
                    self.output_exceeded = True
            if self.output_exceeded:
                raise KernelGone("the student's code printed more than the output limit")
            if not self._alive():
                self.dead = "the student's kernel died"
                raise KernelGone(self.dead)
            if time.monotonic() >= deadline:
                raise CallTimeout(f"did not finish within {self.call_timeout:g} s")
            if not self.channel.poll(min(0.5, max(0.0, deadline - time.monotonic()))):
                continue
            try:
                data = self.channel.recv(self.max_reply, deadline)
                msg = wire.plain_loads(data)
            except wire.ChannelError as exc:
                if "in time" in str(exc):
                    raise CallTimeout(f"did not finish within {self.call_timeout:g} s") from None
                self.dead = str(exc)
                raise KernelGone(f"the student's process failed: {exc}") from None
            except wire.WireError as exc:
                raise KernelGone(f"bad reply from the student's process: {exc}") from None
            if not (isinstance(msg, tuple) and len(msg) >= 2 and msg[0] in ("ok", "raise", "callback")):
                raise KernelGone("bad reply from the student's process")
            return msg

    def _answer_callback(self, msg, budget: int) -> None:
        """Run a call the student's code made to one of the test's functions, here, and answer it."""
        try:
            if budget < 0:
                raise wire.WireError("too many calls to the test's functions")
            if not (len(msg) == 4 and type(msg[1]) is int and isinstance(msg[2], tuple) and isinstance(msg[3], dict)):
                raise wire.WireError("malformed callback")
            req = wire.rebuild((msg[2], msg[3]), self.resolve_class, self._resolve_global)
            fn = self._callbacks[msg[1]]
            answer = ("ok", wire.call_with_copyback(fn, tuple(req[0]), dict(req[1])))
        except BaseException:  # never the test's exception or its message: they may hold expected values
            answer = ("raise",)
        self.channel.send(wire.dumps(answer), time.monotonic() + self.call_timeout)

    def gradient(self, key, args, kwargs, wrt, name: str):
        """:func:`courselib.grading.testing.gradient` of the student's function ``key``, computed in the kernel."""
        value, grads = self.request("grad", key, args, kwargs, tuple(wrt), self.overrides(), rng_states(), name=name)
        return value, list(grads)

    def _handle(self, origin: str):
        """The proxy for a function the student's code returned (it stays in the kernel)."""

        def make(number: int):
            def handle(*a, **k):
                return self.call("handle", number, a, k, f"{origin}()")

            handle.__courselib_gradient__ = lambda a, k, w: self.gradient(number, a, k, w, f"{origin}()")
            return handle

        return make

    def _resolve_global(self, name: str):
        if name in self.functions:
            return self.functions[name]
        raise wire.WireError(f"the student's {name} cannot cross to the clean room")

    def call(self, kind: str, key, args, kwargs, name: str):
        """Call the student's function ``key`` (a name, or the number of a handle); apply the in-place
        changes to ``args``/``kwargs`` that its contract allows, and return its result."""
        result, changed_args, changed_kwargs = self.request(
            kind, key, args, kwargs, None, self.overrides(), rng_states(), name=name, handle_of=name
        )
        keys = {*changed_args, *changed_kwargs}
        if self.mutable is None:
            self.changed.setdefault(name, set()).update(str(k) for k in keys)
        else:
            allowed = set(self.mutable.get(name, ()))
            changed_args = {k: v for k, v in changed_args.items() if str(k) in allowed}
            changed_kwargs = {k: v for k, v in changed_kwargs.items() if str(k) in allowed}
        return wire.apply_copyback(args, kwargs, (result, changed_args, changed_kwargs))

    def function(self, name: str):
        """A proxy for the student's callable ``name``."""

        def proxy(*args, **kwargs):
            return self.call("call", name, args, kwargs, name)

        proxy.__name__ = proxy.__qualname__ = name
        setattr(proxy, wire.REMOTE_ATTR, name)
        proxy.__courselib_gradient__ = lambda a, k, w: self.gradient(name, a, k, w, name)
        self.functions[name] = proxy
        return proxy

    def sync(self, timeout: float = 5.0) -> None:
        """Wait until everything the kernel printed so far has been drained (counted, stderr included)."""
        token = f"{SYNC_PREFIX}{os.urandom(8).hex()}"
        try:
            self.request("sync", f"\n{token}\n")
        except (CallTimeout, KernelGone):
            return
        deadline = time.monotonic() + timeout
        while token not in self._tokens_seen and time.monotonic() < deadline:
            time.sleep(0.005)
        self._tokens_seen.discard(token)

    # -- after a timeout ------------------------------------------------------------------------
    def recover(self) -> bool:
        """After a :class:`CallTimeout` (or a broken channel): interrupt the kernel and wait for the helper; if it
        does not answer, start a new kernel that runs the notebook again (``restart()`` returns its manager).
        Returns whether the kernel serves calls again.

        The interrupt is a message that ipykernel turns into a ``SIGINT`` some time later, so the helper is
        asked to ``settle`` (answer once that signal has arrived): a late interrupt would otherwise stop the
        student's code in a later part's call, which would fail for no fault of its own."""
        if self._alive() and self.channel is not None:
            try:
                run_sync(self.km.interrupt_kernel)()
                self.interrupts += 1
            except Exception:
                pass
            saved, self.call_timeout = self.call_timeout, INTERRUPT_GRACE
            try:
                if self.request("settle", self.interrupts) >= self.interrupts:
                    return True
            except Exception:  # no answer, or the student's code broke the helper: a new kernel
                pass
            finally:
                self.call_timeout = saved
        if self.restart is None or self.output_exceeded:
            return False
        self.restarts += 1
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        self._stop_client()
        try:
            self.km = self.restart()
        except Exception as exc:
            self.dead = f"the kernel could not be restarted ({type(exc).__name__})"
            return False
        started = self.start()
        self._disconnects_seen = self._disconnects  # the old kernel's connection dropped: not an oversize
        return started


def rng_states() -> dict:
    """The clean room's global random generators, for the kernel to use during a call (one way only: what the
    student's code does to its generators never reaches the clean room's, so it cannot choose a test's draws)."""
    import random

    states = {"random": random.getstate()}
    np_random = sys.modules.get("numpy.random")
    if np_random is not None:
        states["numpy"] = np_random.get_state()
    torch = sys.modules.get("torch")
    if torch is not None:
        states["torch"] = torch.get_rng_state()
    return states


def nbgrader_grade(points: float, exc: BaseException | None, value, stderr: str) -> float:
    """A test cell's score as nbgrader computes it (:func:`nbgrader.utils.determine_grade`) from what the cell
    produced: 0 after an error or any output on standard error, the value of its last expression if that is a
    number (partial credit), else full marks."""
    from IPython.lib.pretty import pretty
    from nbgrader.utils import determine_grade

    outputs = []
    if stderr:
        outputs.append(nbformat.v4.new_output("stream", name="stderr", text=stderr))
    if exc is not None:
        outputs.append(nbformat.v4.new_output("error", ename=type(exc).__name__, evalue="", traceback=[]))
    elif value is not None:
        outputs.append(nbformat.v4.new_output("execute_result", data={"text/plain": pretty(value)}, execution_count=1))
    cell = nbformat.v4.new_code_cell(metadata={"nbgrader": {"grade": True, "solution": False, "points": points}})
    cell.outputs = outputs
    try:
        score, _ = determine_grade(cell)
    except ValueError:  # a partial credit above the part's points: nbgrader refuses the cell too
        return 0.0
    return float(score)


# --------------------------------------------------------------------------------------------
def _run_tests(spec: dict, ns: dict, session: KernelSession | None, names: list[str], tm, on_timeout) -> dict:
    """Run the clean tier's test cells in the clean room against the student's names; a verdict per part."""
    cells = spec["cells"]
    clean = {p["grade_id"] for p in spec["parts"] if p["tier"] == "clean"}
    points = {p["grade_id"]: float(p["points"]) for p in spec["parts"]}
    tests = [i for i, c in enumerate(cells) if c["kind"] == "test"]
    results: dict[str, dict] = {}
    bound: dict = {}
    values: list[
        str
    ] = []  # the student's values not fetched yet (a module whose class an instructor cell defines later)

    def bind_student_names():
        bound.clear()
        values.clear()
        if session is None or session.dead:
            return
        session.resolve_class = wire.main_class_resolver(ns)
        # a name a test cell rebinds (course_versions(binarize_det=...)) is rebound in the kernel for each
        # call too, so that the student's later parts use the course library's earlier ones there as well
        session.overrides = lambda: {
            **{n: ns[n] for n in bound if n in ns and ns[n] is not bound[n]},
            **testing.kernel_overrides,
        }
        try:
            kinds = session.request("kinds", names)
        except Exception:
            kinds = {}
        for name, kind in kinds.items() if isinstance(kinds, dict) else []:
            if kind == "callable" and name in names:
                bound[name] = session.function(name)
            elif kind == "value" and name in names:
                values.append(name)
        fetch_values()

    def fetch_values():
        for name in list(values):
            try:
                bound[name] = session.request("get", name, name=name)
                values.remove(name)
            except (CallTimeout, KernelGone):
                break
            except Exception:
                pass

    def run(src: str, label: str):
        """Run a cell as IPython would: (exception or None, the last expression's value, stderr text)."""
        err = io.StringIO()
        try:
            tree = ast.parse(tm.transform_cell(src))
            last = ast.Expression(tree.body.pop().value) if tree.body and isinstance(tree.body[-1], ast.Expr) else None
            with contextlib.redirect_stderr(err):
                exec(compile(tree, f"<{label}>", "exec"), ns)
                value = eval(compile(last, f"<{label}>", "eval"), ns) if last is not None else None
            return None, value, err.getvalue()
        except BaseException as exc:  # every failure is a failed test
            return exc, None, err.getvalue()

    bind_student_names()
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
            if values and session is not None:
                fetch_values()
            continue
        gid = cell["grade_id"]
        if gid not in clean:
            continue
        if session is not None:
            session.hidden = False
            stderr_before, calls_before = session.stderr_bytes, session.calls
        vis_exc, value, stderr = run(cell["release_source"], f"visible tests {gid}")
        for name in names:
            ns.pop(name, None)
        ns.update(bound)
        full_exc = None
        if vis_exc is None and cell["release_source"] != cell["source"]:
            if session is not None:
                session.hidden = True
            full_exc, value, stderr = run(cell["source"], f"tests {gid}")
            if session is not None:
                session.hidden = False
        exc = vis_exc or full_exc
        if session is not None and session.calls > calls_before and not isinstance(exc, CallTimeout):
            session.sync()  # what the student's code printed during the calls has been read
            if session.stderr_bytes > stderr_before:
                stderr += "(the student's code wrote to standard error)"
        score = nbgrader_grade(points[gid], exc, value, stderr)
        res = {"status": "passed" if score >= points[gid] else "partial" if score > 0 else "failed", "score": score}
        if exc is None and score < points[gid]:
            res["where"] = "hidden" if cell["release_source"] != cell["source"] else "visible"
            res["message"] = (
                "the tests wrote to standard error (nbgrader scores such a test 0)"
                if stderr
                else f"partial credit: {score:g} of {points[gid]:g} points"
            )
        if not cell["release_source"].strip():
            res["hidden_only"] = True
        if exc is not None:
            res["where"] = "visible" if vis_exc is not None else "hidden"
            if isinstance(exc, CallTimeout):
                res["status"] = "timeout"
                res["message"] = f"your code did not finish within {session.call_timeout:g} s" + (
                    " on a hidden input" if res["where"] == "hidden" else ""
                )
            elif res["where"] == "visible" or getattr(exc, "courselib_student", None):
                res["message"] = failure_message(exc, names, hidden=res["where"] == "hidden")
            # else: a hidden test's own message or exception is never shown (it is the hidden test's text and
            # may hold its inputs and expected values); the feedback says the hidden tests failed
            res["traceback"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]
        results[gid] = res
        if isinstance(exc, CallTimeout) and session is not None:
            on_timeout(gid)
            if session.recover():
                bind_student_names()
        elif isinstance(exc, KernelGone) and session is not None and not session.output_exceeded:
            # the channel is out of step (an answer over the size limit) or the kernel died in the call:
            # a fresh kernel that has run the notebook again judges the next parts
            if session.recover():
                bind_student_names()
    return results


# --------------------------------------------------------------------------------------------
def _executor(spec: dict, work: str, kernel_name: str) -> LimitedExecute:
    cfg = Config()
    ipc = spec.get("ipc") if work == spec["work"] else spec.get("sealed_ipc")
    if ipc:
        cfg.KernelManager.transport = "ipc"
        cfg.KernelManager.ip = ipc
    ep = LimitedExecute(
        config=cfg,
        kernel_name=kernel_name,
        timeout=spec["cell_timeout"],
        startup_timeout=spec["startup_timeout"],
        interrupt_on_timeout=True,
        allow_errors=True,
        raise_on_iopub_timeout=False,
        shutdown_kernel="immediate",
        max_output_bytes=spec["output_bytes"],
        extra_arguments=[] if ipc else ["--HistoryManager.enabled=False"],
    )
    # large enough for one flush of a print loop (ipykernel sends its buffer every 0.2 s), so the output limit
    # sees the flood and interrupts the cell; a single larger message is refused and flagged (watch_oversize)
    ep.max_message_bytes = max(4 * spec["output_bytes"], 64 << 20)
    ep.reset_execution_trackers()
    ep.resources = {"metadata": {"path": work}}
    ep.km = ep.create_kernel_manager()
    return ep


def _execute_all(ep: LimitedExecute, nb) -> bool:
    """Execute every code cell of ``nb`` in the executor's kernel; ``False`` if the kernel died."""
    ep.nb = nb
    try:
        for index, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                ep.execute_cell(cell, index, store_history=True)
    except DeadKernelError:
        return False
    return True


def _cell_flags(nb, ep=None) -> list[str]:
    flags = ["output-limit"] if ep is not None and ep.oversized else []
    for cell in nb.cells:
        enames = [o.get("ename", "") for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if "OutputLimitExceeded" in enames:  # a flood can also outlast the cell's time: the flood is the cause
            enames = [e for e in enames if e != "CellTimeoutError"]
        for ename, flag in (
            ("CellTimeoutError", "timeout"),
            ("MemoryError", "memory"),
            ("OutputLimitExceeded", "output-limit"),
            ("DeadKernelError", "crashed"),
        ):
            if ename in enames:
                flags.append(flag)
    return flags


def sealed_verdicts(spec: dict) -> dict:
    """Judge the sealed tier's parts nbgrader's way: a fresh sandboxed kernel runs the submission with the
    *source* version of every test cell (hidden tests in place); a part passes when its cell raised nothing.

    Only the verdicts leave: the executed notebook (which holds the hidden tests and whatever the student's
    code printed next to them) is dropped, and no message is kept (the student's code ran beside the hidden
    tests, so any text could carry them).
    """
    sealed = [p["grade_id"] for p in spec["parts"] if p["tier"] == "sealed"]
    if not sealed:
        return {}
    nb = nbformat.read(spec["notebook"], as_version=4)
    source = {c["grade_id"]: c["source"] for c in spec["cells"] if c["kind"] == "test"}
    for cell in nb.cells:
        gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if cell.cell_type == "code" and gid in source:
            cell.source = source[gid]
    ep = _executor(spec, spec["sealed_work"], spec.get("sealed_kernel_name") or spec["kernel_name"])
    try:
        ep.start_new_kernel(cwd=spec["sealed_work"])
        ep.start_new_kernel_client()
        alive = _execute_all(ep, nb)
    finally:
        try:
            ep._cleanup_kernel()
        except Exception:
            pass
    from nbgrader.utils import determine_grade

    verdicts = {}
    for cell in nb.cells:
        gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if gid not in sealed:
            continue
        errors = [o.get("ename", "") for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        ran = alive and cell.get("execution_count") is not None
        score = float(determine_grade(cell)[0] or 0.0) if ran else 0.0  # nbgrader's rule, on nbgrader's run
        points = float(cell.metadata["nbgrader"]["points"])
        status = "passed" if score >= points else "partial" if score > 0 else "failed"
        verdicts[gid] = {
            "status": "timeout" if "CellTimeoutError" in errors else status,
            "score": score,
            "where": "hidden",
        }
    return verdicts


def student_cells(nb) -> list[str]:
    """The source of every code cell the student wrote: the answer cells and any cell they added."""
    out = []
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader")
        if cell.cell_type == "code" and (not meta or meta.get("solution")):
            out.append(cell.source)
    return out


def score_parts(parts: list[dict], clean: dict, sealed: dict, crashed: bool, unanswered=(), deleted=()) -> dict:
    """Every part's verdict: ``status``, ``score`` (``None`` while it waits for a manual grade), ``points``,
    ``tier``, and ``where``/``message`` for a failure. Nothing the student's kernel reported about its own
    visible tests counts: a clean part's score is the clean room's verdict, a sealed part's the sealed run's."""
    out = {}
    for p in parts:
        gid, pts, tier = p["grade_id"], float(p["points"]), p["tier"]
        if gid in unanswered:  # an answer graded by hand, left as released: nbgrader scores it 0
            out[gid] = {"status": "failed", "score": 0.0, "points": pts, "tier": tier, "message": "not answered"}
            continue
        if tier == "manual" or gid in deleted:  # nbgrader leaves a deleted test cell to the instructor too
            out[gid] = {"status": "pending", "score": None, "points": pts, "tier": tier}
            continue
        verdict = (clean if tier == "clean" else sealed).get(gid, {})
        status = "failed" if crashed else verdict.get("status", "failed")
        score = float(verdict.get("score", pts if status == "passed" else 0.0)) if not crashed else 0.0
        v = {"status": status, "score": score, "points": pts, "tier": tier}
        for key in ("where", "message", "traceback", "hidden_only"):
            if key in verdict and status != "passed":
                v[key] = verdict[key]
        if crashed:
            v["message"] = "the kernel died while the notebook ran"
        out[gid] = v
    return out


def grade_notebook(spec: dict) -> dict:
    """Execute the submission in the sandboxed kernel once, judge every part, write the outputs.

    ``spec`` (JSON from :class:`courselib.grading.grader.Grader`): ``notebook`` (the submission with its
    locked cells restored from the release), ``cells`` (the source notebook's code cells classified as
    ``test`` / ``solution`` / ``instructor``, each test with its ``release_source``), ``parts`` (each with
    ``grade_id``, ``points`` and ``tier``), ``mutable`` (the copy-back contract, ``None`` to learn it),
    ``kernel_name``, ``work`` (the kernel's working directory), ``ipc``, ``sealed_work``/``sealed_ipc``/
    ``sealed_kernel_name`` (the sealed run's), ``cell_timeout``, ``startup_timeout``, ``output_bytes``,
    ``max_reply_bytes``, ``autograded`` and ``feedback_html`` (where to write them). Returns
    ``{"verdicts": {grade_id: verdict}, "flags": [...], "times": {...}, "calls": n, "changed": {...}}``.
    """
    times = {"start": time.monotonic()}
    nb = nbformat.read(spec["notebook"], as_version=4)
    flags: list[str] = []
    tm = TransformerManager()
    ns = {"__name__": "__main__", "__builtins__": builtins}
    cells = spec["cells"]
    names = solution_names([c["source"] for c in cells if c["kind"] == "solution"])
    first_test = min((i for i, c in enumerate(cells) if c["kind"] == "test"), default=len(cells))
    ep = _executor(spec, spec["work"], spec["kernel_name"])
    session = None
    timeouts: list[str] = []
    clean: dict = {}
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
        died = not _execute_all(ep, nb)
        if died:
            flags.append("crashed")
        times["executed"] = time.monotonic()
        setup.join()
        times["setup_joined"] = time.monotonic()
        # a dying kernel drops its sockets too, which the oversize monitor cannot tell from a refused message
        flags += _cell_flags(nb, None if died else ep)
        if "crashed" not in flags and any(p["tier"] == "clean" for p in spec["parts"]):

            def restart():  # a fresh kernel that has run the notebook again (outputs of the first run kept)
                ep._cleanup_kernel()
                ep.km = ep.create_kernel_manager()
                ep.start_new_kernel(cwd=spec["work"])
                ep.start_new_kernel_client()  # waits until the new kernel answers
                _execute_all(ep, copy.deepcopy(nb))
                return ep.km

            session = KernelSession(
                ep.km,
                Path(spec["work"]),
                call_timeout=spec["cell_timeout"],
                output_limit=spec["output_bytes"],
                max_reply=spec["max_reply_bytes"],
                restart=restart,
            )
            session.mutable = spec.get("mutable")
            session.start()
            bans.submission_code = student_cells(nb)  # stated bans are read from the submitted notebook
            testing.runner = spec.get("runner")  # students' programs run in a sandboxed runner
            clean = _run_tests(spec, ns, session, names, tm, timeouts.append)
            if session.output_exceeded:
                flags.append("output-limit")
        times["clean_room"] = time.monotonic()
    finally:
        testing.close_runner()
        if session is not None:
            session.close()
        try:
            ep._cleanup_kernel()
        except Exception:
            pass
    times["kernel_stopped"] = time.monotonic()
    sealed = sealed_verdicts(spec) if "crashed" not in flags else {}
    times["sealed"] = time.monotonic()
    verdicts = score_parts(
        spec["parts"], clean, sealed, "crashed" in flags, spec.get("unanswered", ()), spec.get("deleted", ())
    )
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        v = verdicts.get(meta.get("grade_id"))
        if v is not None and (meta.get("grade") or meta.get("task")):
            meta["points"] = v["points"]
            if v["score"] is not None:
                meta["score"] = v["score"]
    for key in ("autograded", "feedback_html"):
        if spec.get(key):
            Path(spec[key]).parent.mkdir(parents=True, exist_ok=True)
    coalesce_streams(nb)
    if spec.get("autograded"):
        nbformat.write(nb, spec["autograded"])
    if spec.get("feedback_html"):
        sources = {c["grade_id"]: c["source"] for c in cells if c["kind"] == "test"}
        fb = feedback_notebook(nb, verdicts, spec.get("feedback", "redacted"), sources)
        auto = [v for v in verdicts.values() if v["score"] is not None]
        total, top = sum(v["score"] for v in auto), sum(v["points"] for v in verdicts.values())
        Path(spec["feedback_html"]).write_text(render_feedback(fb, spec["lab"], total, top))
    times["feedback"] = time.monotonic()
    return {
        "verdicts": {g: {k: v for k, v in r.items() if k != "traceback"} for g, r in verdicts.items()},
        "flags": sorted(set(flags)),
        "times": times,
        "calls": session.calls if session else 0,
        "restarts": session.restarts if session else 0,
        "timeouts": timeouts,
        "deleted": list(spec.get("deleted", ())),
        "changed": {k: sorted(v) for k, v in session.changed.items()} if session else {},
    }


def driver_args(spec_path, result_path) -> list[str]:
    """The driver's arguments (module, then its ``main``'s): :func:`grade_notebook` on ``spec_path``,
    its result written to ``result_path``. A :class:`~courselib.grading.forkserver.ForkServer` runs them in
    a forked child, :func:`courselib.grading.forkserver.fresh_argv` in a fresh process."""
    return ["courselib.grading.cleanroom", "grade", str(spec_path), str(result_path)]


def main(argv=None) -> None:  # pragma: no cover - subprocess entry point
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["grade"] and len(argv) == 3:
        import resource

        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        spec = json.loads(Path(argv[1]).read_text())
        limit_driver(int(spec.get("driver_cpu_seconds", 3600)))
        res = grade_notebook(spec)
        res["times"]["written"] = time.monotonic()
        res["driver_maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        Path(argv[2]).write_text(json.dumps(res))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # everything is written and the kernel is stopped: skip the interpreter's slow teardown
    else:
        sys.exit("usage: python -m courselib.grading.cleanroom grade SPEC.json RESULT.json")


if __name__ == "__main__":  # pragma: no cover
    main()
