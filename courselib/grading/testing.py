"""What a lab's tests need beyond calling the student's functions: gradients, and programs run on hidden inputs.

Under ``courselib grade`` a test cell runs in the clean room, where the student's functions are proxies
(:mod:`courselib.grading.cleanroom`): calling one runs it in the student's kernel and brings back plain values.
Two things a test may need do not fit that:

- the **gradient** of a student's function (a loss must be differentiable, with the right gradient):
  :func:`gradient` asks the student's kernel to differentiate there, and compares what comes back;
- names of the notebook bound to **other values for a call** (the course library's version of an earlier part,
  a validation set replaced by NaNs that a model trained on it would show): :func:`rebind` changes them in
  the test's namespace and, in the clean room, in the student's kernel for every call made meanwhile;
- a **program the student exported** (an ExecuTorch ``.pte``, an ONNX file) run on hidden inputs: it is
  untrusted code for a runtime, so :func:`run_program` runs it in a sandboxed process of its own (the
  clean room's runner: never the trusted process, never the student's kernel, which must not see the
  hidden inputs' answers), and only its outputs come back, as a plain array of bounded size. One runner
  serves a submission's programs one after the other (its start, importing the runtimes, costs seconds);
  a program that outlasts its time or breaks the runner ends it, and the next program gets a new one.

Outside the clean room (plain ``nbgrader autograde``, the student's own Jupyter) both run in the current
process, so a test cell means the same thing everywhere.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import select
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["gradient", "run_program", "rebind", "runner", "close_runner"]

#: Set by the clean room: ``{"argv_prefix": [...], "work": its scratch folder, "timeout": seconds}``, how to
#: start a sandboxed runner process (``None`` outside the clean room: programs run in this process). Each program and
#: its inputs go to the runner on its standard input, the outputs come back on its standard output
#: (:func:`serve`: one frame each way).
runner: dict | None = None

#: The runtimes by the one byte that names them in a request to the runner.
_SUFFIXES = {b"p": ".pte", b"o": ".onnx"}

#: Set by the clean room: names rebound for the calls into the student's kernel (:func:`rebind`).
kernel_overrides: dict = {}

#: Largest output a program may return to the clean room (bytes).
MAX_OUTPUT_BYTES = 64 << 20


@contextlib.contextmanager
def rebind(**names):
    """Inside the block, the notebook's ``names`` are bound to the given values: in the test's namespace, and in
    the clean room also in the student's kernel during every call made inside the block (so a student's function
    that reads the global ``X_val`` reads the test's value). The old bindings come back when the block ends,
    even after a failure."""
    g = sys._getframe(2).f_globals  # the test cell's namespace (contextmanager adds one frame)
    missing = object()
    saved = {k: g.get(k, missing) for k in names}
    outer = dict(kernel_overrides)
    g.update(names)
    kernel_overrides.update(names)
    try:
        yield
    finally:
        kernel_overrides.clear()
        kernel_overrides.update(outer)
        for k, v in saved.items():
            if v is missing:
                g.pop(k, None)
            else:
                g[k] = v


def local_gradient(fn, args: tuple, kwargs: dict, wrt: tuple[int, ...]):
    """``fn(*args, **kwargs)`` and the gradients of its sum with respect to the positional arguments ``wrt``
    (fresh leaf copies of them, so the caller's tensors are untouched): ``(value, [gradient or None, ...])``."""
    import torch

    args = list(args)
    for i in wrt:
        args[i] = torch.as_tensor(args[i]).detach().clone().requires_grad_(True)
    out = fn(*args, **kwargs)
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        return out, [None for _ in wrt]
    grads = torch.autograd.grad(out.sum(), [args[i] for i in wrt], allow_unused=True)
    return out.detach(), [None if g is None else g.detach() for g in grads]


def gradient(fn, *args, wrt=(0,), **kwargs):
    """The value of ``fn(*args, **kwargs)`` and the gradients of its sum with respect to the positional
    arguments listed in ``wrt``: ``(value, [gradient, ...])``, a gradient ``None`` where the value does not
    depend on that argument (or is not a tensor that requires grad).

    On a student's function in the clean room, the kernel differentiates (the function runs there) and the
    values come back; elsewhere it runs here. The caller's tensors are never modified.
    """
    wrt = tuple(int(i) for i in wrt)
    remote = getattr(fn, "__courselib_gradient__", None)
    if remote is not None:
        return remote(args, kwargs, wrt)
    return local_gradient(fn, args, kwargs, wrt)


def run_program(program, X, *, suffix: str = ".pte", timeout: float = 120.0) -> np.ndarray:
    """The outputs of a runtime program (``bytes`` or a path) on the inputs ``X`` (an array or tensor).

    In the clean room the program runs in a sandboxed runner process (:data:`runner`) with its own time
    limit, and its outputs come back as a plain ``float`` array of at most :data:`MAX_OUTPUT_BYTES`;
    elsewhere it runs in this process (:func:`courselib.deploy.load_program`). ``suffix`` names the runtime
    (``".pte"`` ExecuTorch, ``".onnx"`` ONNX Runtime).
    """
    if suffix not in _SUFFIXES.values():
        raise ValueError(f"suffix must be '.pte' or '.onnx', got {suffix!r}")
    data = Path(program).read_bytes() if isinstance(program, (str, os.PathLike)) else bytes(program)
    X = np.ascontiguousarray(np.asarray(X.detach().numpy() if hasattr(X, "detach") else X, dtype=np.float32))
    if runner is None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"program{suffix}"
            path.write_bytes(data)
            return _outputs(path, X)
    buf = io.BytesIO()
    np.save(buf, X, allow_pickle=False)
    kind = next(k for k, v in _SUFFIXES.items() if v == suffix)
    request = kind + _frame(data) + _frame(buf.getvalue())
    limit = min(timeout, runner.get("timeout", timeout))
    out = _Runner.get().run(request, time.monotonic() + limit, limit)
    try:
        got = np.load(io.BytesIO(out), allow_pickle=False)
    except ValueError:
        raise AssertionError("the runner's output could not be read") from None
    if got.dtype.kind not in "fiu":
        raise AssertionError("the program's output is not numeric")
    return got


def close_runner() -> None:
    """End the runner process, if one is running (the clean room calls it when a submission is judged)."""
    _Runner.close_current()


def _frame(data: bytes) -> bytes:
    return struct.pack("!Q", len(data)) + data


class _Runner:
    """The sandboxed runner process of the submission being judged, started at its first program."""

    _current: _Runner | None = None

    @classmethod
    def get(cls) -> _Runner:
        if cls._current is None or cls._current.proc.poll() is not None:
            cls.close_current()
            cls._current = cls()
        return cls._current

    @classmethod
    def close_current(cls) -> None:
        if cls._current is not None:
            cls._current.kill()
            cls._current = None

    def __init__(self):
        cmd = [*runner["argv_prefix"], "-m", "courselib.grading.testing"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        os.set_blocking(self.proc.stdin.fileno(), False)

    def kill(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        try:
            self.proc.kill()
        except OSError:
            pass
        self.proc.wait()

    def run(self, request: bytes, deadline: float, timeout: float) -> bytes:
        """Send one request and read its answer (at most :data:`MAX_OUTPUT_BYTES`) before ``deadline``."""
        win, rout = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        sent, got, want = 0, bytearray(), None
        while want is None or len(got) < 8 + want:
            left = deadline - time.monotonic()
            if left <= 0:
                _Runner.close_current()
                raise AssertionError(f"the program did not finish within {timeout:g} s")
            readable, writable, _ = select.select([rout], [win] if sent < len(request) else [], [], left)
            if writable:
                try:
                    sent += os.write(win, request[sent : sent + (1 << 20)])
                except BlockingIOError:
                    pass
                except OSError:  # the runner is gone: its output says why (nothing)
                    sent = len(request)
            if readable:
                chunk = os.read(rout, 1 << 20)
                if not chunk:
                    _Runner.close_current()
                    raise AssertionError("the program failed in the runtime (the runner stopped)")
                got += chunk
                if want is None and len(got) >= 8:
                    (want,) = struct.unpack("!Q", got[:8])
                    if want > MAX_OUTPUT_BYTES:
                        _Runner.close_current()
                        raise AssertionError("the program's output is larger than the runner's limit")
        if want == 0:
            raise AssertionError("the program failed in the runtime (it could not be loaded or run on these inputs)")
        return bytes(got[8 : 8 + want])


def _outputs(path: Path, X: np.ndarray) -> np.ndarray:
    try:  # an optional extra: imported when a program is run, not with every lab's tests
        deploy = importlib.import_module("courselib.deploy")
    except ImportError as exc:
        raise ImportError(
            f"run_program needs the deploy extra (pip install 'ondevice-ml-courselib[deploy]'): {exc}"
        ) from None
    program = deploy.load_program(path)
    return deploy.program_outputs(program, X, batch_size=min(len(X), program.batch_size or len(X)))


def _read_frame(f) -> bytes:
    head = f.read(8)
    if len(head) < 8:
        raise EOFError
    (n,) = struct.unpack("!Q", head)
    data = f.read(n)
    if len(data) < n:
        raise EOFError
    return data


def serve() -> int:  # pragma: no cover - the sandboxed runner
    """The runner: answer requests (a runtime's byte, the program, the inputs as ``.npy``) on standard input
    until it closes, each with the outputs as ``.npy`` (an empty frame: the program could not be run)."""
    answers = os.fdopen(os.dup(1), "wb")  # the protocol's own descriptor: what a runtime prints goes to stderr
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    while True:
        kind = requests.read(1)
        if not kind:
            return 0
        try:
            program, x = _read_frame(requests), _read_frame(requests)
        except EOFError:
            return 0
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"program{_SUFFIXES[kind]}"
                path.write_bytes(program)
                out = np.asarray(_outputs(path, np.load(io.BytesIO(x), allow_pickle=False)), dtype=np.float32)
            buf = io.BytesIO()
            np.save(buf, out, allow_pickle=False)
            answer = buf.getvalue()
        except Exception:
            answer = b""
        answers.write(_frame(answer))
        answers.flush()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(serve())
