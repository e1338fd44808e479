"""The clean-room driver's fork server: import once, fork once per submission.

Each submission's trusted driver (:func:`courselib.grading.cleanroom.grade_notebook`) needs nbclient,
nbconvert and nbgrader, the compiled feedback template and the lab's own imports (numpy, torch, numba,
``courselib``'s content modules, ExecuTorch for lab 7). A fresh Python process pays several seconds
of CPU for that at every submission, on the same cores the student's sandboxed kernel needs at the
same time, so two grading workers slow each other down.

A :class:`ForkServer` is one trusted process that does this start-up once: it imports the driver,
renders an empty feedback page (so the templates are compiled) and runs the import statements of the
lab's instructor and test cells (:func:`preload_statements`). Then, for each submission, it forks a
child that starts with all of that in memory and nothing else shared: its own copy of the server's
memory, a new session (the grader kills it and its kernel as one group on a timeout), its own log file,
working directory and environment. The child runs exactly the command a fresh driver process would
run (:func:`courselib.grading.cleanroom.driver_args`) and exits; the server only forks and
reaps. No student code runs in the server or in its children: they are the clean room, and the
student's code stays in the sandboxed kernel each child starts.

Servers are kept between runs of :func:`courselib.grading.grade` in one process (at most
:data:`MAX_IDLE` idle ones, keyed by what they preloaded and by the courselib source they imported) and
end when the grading process ends: a server exits when its command pipe closes, and kills its running
child first. Where a server cannot start, :class:`~courselib.grading.grader.Grader` starts a fresh
driver process per submission instead.

Protocol (JSON lines on the server's stdin and stdout): the first request is ``{"preload": [...]}``,
answered by ``{"ready": true, "failed": [...]}``; each later request ``{"argv", "cwd", "env", "log"}``
is answered by ``{"pid": PID}`` when the child starts and ``{"exit": CODE}`` when it ends (a negative
code is the signal that ended it, as for :class:`subprocess.Popen`).
"""

from __future__ import annotations

import ast
import atexit
import ctypes
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from nbformat.v4 import new_notebook

import courselib

from . import cleanroom
from .cells import import_nodes

__all__ = [
    "ForkServer",
    "ForkServerError",
    "preload_statements",
    "fresh_argv",
    "acquire",
    "release",
    "close_all",
    "MAX_IDLE",
]

MAX_IDLE = 2
"""Idle servers kept for later runs in this process (each holds the lab's libraries in memory)."""

_PR_SET_PDEATHSIG = 1

#: ``python -c BOOT MODULE ARGS...``: import ``MODULE`` and call its ``main(ARGS)``, without running
#: ``courselib/grading/__init__.py`` (the schedulers, the gradebook, Dask: nothing a driver uses) and
#: without ``rfc3987_syntax``, an optional IRI checker of ``jsonschema`` that builds a grammar at import
#: (nbformat never validates IRIs). Both are most of a driver's start-up.
BOOT = """
import importlib, importlib.util, sys, types
_spec = importlib.util.find_spec("courselib.grading")
_pkg = types.ModuleType("courselib.grading")
_pkg.__path__ = list(_spec.submodule_search_locations)
sys.modules["courselib.grading"] = _pkg
sys.modules.setdefault("rfc3987_syntax", None)
importlib.import_module(sys.argv[1]).main(sys.argv[2:])
"""


def fresh_argv(args: list[str]) -> list[str]:
    """The command that runs ``args`` (a module, then its ``main``'s arguments) in a fresh process."""
    return [sys.executable, "-c", BOOT, *args]


class ForkServerError(RuntimeError):
    """The server could not start, or it died: the caller runs a fresh driver process instead."""


def die_with_parent() -> None:
    """``prctl(PR_SET_PDEATHSIG, SIGKILL)``: this process is killed when the one that started it ends."""
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def preload_statements(sources: list[str]) -> list[str]:
    """Every import statement in the given (trusted, instructor-written) cell sources, once each, in order.

    Only ``import`` and ``from ... import`` statements, wherever they stand in a cell (a test that imports
    inside a function too); the cells themselves never run in the server.
    """
    out: list[str] = []
    for node in import_nodes(sources):
        if not getattr(node, "level", 0):
            stmt = ast.unparse(node)
            if stmt not in out:
                out.append(stmt)
    return out


# ---------------------------------------------------------------------------------------- the server
_REPLIES = 1  # the server's private copy of its stdout (fd 1 itself goes to /dev/null: imports may print)


def _reply(msg: dict) -> None:
    os.write(_REPLIES, (json.dumps(msg) + "\n").encode())


def _child(req: dict) -> None:
    """In the forked child: a fresh session, the request's log, directory and environment, then the driver."""
    code = 1
    try:
        os.setsid()
        die_with_parent()
        log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        os.close(_REPLIES)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        # the driver ends with os._exit(0) once its result is written
        importlib.import_module(req["argv"][0]).main(req["argv"][1:])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _wait(pid: int, commands) -> int:
    """Reap ``pid``; if the command pipe closes meanwhile (the grading process died), kill its group."""
    try:
        exited = os.pidfd_open(pid)  # readable when the child ends (Linux >= 5.3)
    except (AttributeError, OSError):
        exited = None
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            ready, _, _ = select.select([commands] + ([exited] if exited is not None else []), [], [], 0.2)
            if commands in ready and not os.read(commands, 1 << 16):  # EOF; no request comes while busy
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
                os.waitpid(pid, 0)
                os._exit(0)
    finally:
        if exited is not None:
            os.close(exited)


def serve() -> None:
    """The server's loop (``python -c BOOT courselib.grading.forkserver serve``): preload, then fork per request."""
    global _REPLIES
    commands = sys.stdin.fileno()
    reader = os.fdopen(os.dup(commands), "rb", buffering=0)
    _REPLIES = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    first = json.loads(_readline_fd(reader))
    cleanroom.render_feedback(new_notebook(), "preload", 0.0, 0.0)  # compile the feedback templates once
    failed = []
    for stmt in first.get("preload", []):
        try:
            exec(compile(stmt, "<preload>", "exec"), {"__name__": "__preload__"})
        except BaseException:  # an import the lab's own cells will fail on too
            failed.append(stmt)
    _reply({"ready": True, "failed": failed})
    while True:
        line = _readline_fd(reader)
        if not line:
            return
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            reader.close()
            _child(req)
        _reply({"pid": pid})
        _reply({"exit": _wait(pid, commands)})


def _readline_fd(f) -> bytes:
    """One line from an unbuffered file (never reads past it, so select() on the fd stays truthful)."""
    buf = bytearray()
    while True:
        b = f.read(1)
        if not b:
            return bytes(buf)
        buf += b
        if b == b"\n":
            return bytes(buf)


def main(argv: list[str]) -> None:  # pragma: no cover - subprocess entry point
    if argv != ["serve"]:
        sys.exit("usage: python -c BOOT courselib.grading.forkserver serve")
    sys.stdout.flush()
    serve()
    os._exit(0)


# ---------------------------------------------------------------------------------------- the client
class ForkServer:
    """A running fork server (see the module's docstring), used by one grading thread at a time.

    Parameters
    ----------
    preload : list of str
        Import statements to run once in the server (:func:`preload_statements`).
    env : dict
        The server's environment (``PYTHONHASHSEED`` and other start-up settings are fixed by it; each
        request brings the environment its child runs with).
    start_timeout : float
        Seconds the server may take to import everything.
    """

    def __init__(self, preload: list[str], env: dict, start_timeout: float = 300.0):
        self.preload = list(preload)
        self.pool_key: tuple | None = None
        self._buf = b""
        try:
            self._proc = subprocess.Popen(
                fresh_argv(["courselib.grading.forkserver", "serve"]),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
                cwd="/",
            )
        except OSError as exc:
            raise ForkServerError(f"cannot start the fork server: {exc}") from None
        self._send({"preload": self.preload})
        ready = self._recv(time.monotonic() + start_timeout)
        if not ready.get("ready"):
            self.close()
            raise ForkServerError(f"the fork server did not start: {ready}")
        self.failed = ready.get("failed", [])

    def alive(self) -> bool:
        return self._proc.poll() is None

    def _send(self, msg: dict) -> None:
        try:
            self._proc.stdin.write((json.dumps(msg) + "\n").encode())
            self._proc.stdin.flush()
        except (OSError, ValueError) as exc:
            raise ForkServerError(f"the fork server is gone: {exc}") from None

    def _recv(self, deadline: float) -> dict:
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise ForkServerError("the fork server exited")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def run(self, argv: list[str], *, cwd, env: dict, log, timeout: float) -> int | None:
        """Run module ``argv[0]``'s ``main(argv[1:])`` in a forked child (in ``cwd`` with ``env``,
        output to ``log``); return its exit code, or ``None`` if it ran past ``timeout`` seconds (its whole
        session, the kernel included, is then killed)."""
        self._send({"argv": list(argv), "cwd": str(cwd), "env": dict(env), "log": str(log)})
        t0 = time.monotonic()
        try:
            pid = self._recv(t0 + 60)["pid"]
        except TimeoutError:
            self.close()
            raise ForkServerError("the fork server did not fork") from None
        try:
            return self._recv(t0 + timeout)["exit"]
        except TimeoutError:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                self._recv(time.monotonic() + 60)  # the server reaps it
            except (TimeoutError, ForkServerError):
                self.close()
            return None

    def close(self) -> None:
        """End the server (it kills a running child first)."""
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc.stdout.close()


_IDLE: list[tuple[tuple, ForkServer]] = []
_LOCK = threading.Lock()


def _courselib_stamp() -> int:
    """The newest modification time of courselib's own modules: a server that imported an older version
    is not reused (an instructor who edits courselib between two runs in one session grades with the edit)."""
    root = Path(courselib.__file__).resolve().parent
    return max((f.stat().st_mtime_ns for f in root.rglob("*.py")), default=0)


def _key(preload: list[str], env: dict) -> tuple:
    return (sys.executable, tuple(preload), env.get("PYTHONHASHSEED"), env.get("PATH"), _courselib_stamp())


def acquire(preload: list[str], env: dict) -> ForkServer:
    """An idle server that preloaded ``preload`` (started now if there is none); :func:`release` it after."""
    key = _key(preload, env)
    with _LOCK:
        for i, (k, server) in enumerate(_IDLE):
            if k == key:
                del _IDLE[i]
                if server.alive():
                    return server
                server.close()
                break
    server = ForkServer(preload, env)
    server.pool_key = key  # what it imported: kept even if courselib changes while it grades
    return server


def release(server: ForkServer) -> None:
    """Give ``server`` back for later use (the oldest idle servers beyond :data:`MAX_IDLE` end)."""
    if not server.alive():
        server.close()
        return
    with _LOCK:
        _IDLE.append((server.pool_key, server))
        extra = _IDLE[:-MAX_IDLE] if len(_IDLE) > MAX_IDLE else []
        del _IDLE[: len(extra)]
    for _, s in extra:
        s.close()


@atexit.register
def close_all() -> None:
    """End every idle server (at exit; their pipes closing would end them too)."""
    with _LOCK:
        servers = [s for _, s in _IDLE]
        _IDLE.clear()
    for s in servers:
        s.close()
