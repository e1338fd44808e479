"""The student's side of the clean room: the loop that answers its calls, inside the sandboxed kernel.

Once the student's notebook has run, the clean room (:mod:`courselib.grading.cleanroom`) sends the kernel
one execute request, ``import courselib.grading.kernel as k; k.serve(ADDRESS)``. :func:`serve` connects
to the Unix socket ``ADDRESS`` that the clean room listens on (in the sandbox's scratch folder, the only
folder both sides see) and answers requests until the clean room sends ``done`` or closes the socket:

- ``("kinds", names)``: for each name, whether the notebook defines it as a function (``"callable"``), a
  value or a model (``"value"``), or not at all (``"missing"``);
- ``("get", name)``: the value;
- ``("sync", token)``: flush what the student's code printed, then print ``token``: once the clean room reads
  the token in the kernel's output stream, it has read everything printed before it;
- ``("settle", n)``: answer once this process has received ``n`` interrupts since :func:`serve` started (the
  clean room interrupts a call past its time with a message that ipykernel turns into a ``SIGINT`` some time
  later: after this answer, no interrupt is still on its way to land in a later call);
- ``("call", name, args, kwargs, overrides, rng)`` and ``("handle", number, ...)``: call the student's
  function (or a function one of its calls returned) with the test's arguments, the names in ``overrides``
  bound to the course library's versions for the call and the global random generators set to the clean
  room's states ``rng`` (a test that seeds NumPy, ``random`` or torch before a call seeds it here too), and
  answer with the result and the arguments it changed in place (:func:`courselib.grading.wire.call_with_copyback`);
- ``("grad", name or number, args, kwargs, wrt, rng)``: the value of the call and the gradients of its sum
  with respect to the arguments ``wrt`` (:func:`courselib.grading.testing.local_gradient`);

each request numbered, and each answer ``("ok", number, value)`` or ``("raise", number, exception class
names, message)``. An interrupt stops the student's code only: while a frame is read or written it
waits (a frame half read would put the channel out of step), and between calls it is counted and dropped
(the call it was meant for has already answered); see :class:`Interrupts`. A function of the test's that
the student's code calls (a callback) is a request the other way, ``("callback", i, args, kwargs)``,
answered by the clean room on the same connection.

This module runs in the student's process, so nothing it sends is trusted: the clean room reads every
answer with a size limit and a deadline, decodes plain data only (:func:`courselib.grading.wire.plain_loads`)
and judges it with the hidden tests, which never reach this process. What comes the other way (the tests'
arguments and their callbacks' answers) is the clean room's own, so it is unpickled here as it is.
"""

from __future__ import annotations

import contextlib
import pickle
import signal
import socket
import time

from . import wire
from .testing import local_gradient

__all__ = ["serve", "Interrupts"]

#: Largest request the kernel accepts (the tests' arguments): the clean room is trusted, this only
#: stops a broken connection from allocating without bound.
MAX_REQUEST = 1 << 34

#: Longest a ``settle`` request waits for its interrupts (the clean room gives up much sooner and restarts the kernel).
SETTLE_LIMIT = 60.0


class Interrupts:
    """The ``SIGINT`` handler while :func:`serve` runs: it counts every interrupt and raises
    ``KeyboardInterrupt`` only inside the student's code (:meth:`in_call`), never while a frame of the
    channel is read or written (:meth:`channel_io`: raised after it, if the call is still running)."""

    def __init__(self):
        self.count = 0
        self.armed = False

    def __call__(self, signum, frame):
        self.count += 1
        if self.armed:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def in_call(self):
        """The student's code runs: an interrupt stops it."""
        self.armed = True
        try:
            yield
        finally:
            self.armed = False

    @contextlib.contextmanager
    def channel_io(self):
        """A callback's frames cross during a call: an interrupt waits until they have, then stops the call."""
        before, self.armed = self.count, False
        try:
            yield
        finally:
            self.armed = True
        if self.count > before:
            raise KeyboardInterrupt

    def settle(self, n: int, limit: float = SETTLE_LIMIT) -> int:
        """Wait until ``n`` interrupts have arrived (at most ``limit`` seconds); the number that have."""
        end = time.monotonic() + limit
        while self.count < n and time.monotonic() < end:
            time.sleep(0.005)
        return self.count


def _kind(value) -> str:
    torch = wire._torch()
    if torch is not None and isinstance(value, torch.nn.Module):  # a model is callable, but crosses by value
        return "value"
    return "callable" if callable(value) else "value"


def _exception(exc: BaseException, number: int) -> tuple:
    try:
        names = [c.__name__ for c in type(exc).__mro__ if c.__module__ == "builtins"]
        message = str(exc)[:2000]
    except BaseException:  # an exception whose str() raises
        names, message = ["RuntimeError"], "unprintable exception"
    return ("raise", number, names, message)


def set_rng(states: dict) -> None:
    """Set the global random generators to the clean room's states (those the clean room has imported)."""
    if "random" in states:
        import random

        random.setstate(states["random"])
    if "numpy" in states:
        import numpy as np

        np.random.set_state(states["numpy"])
    if "torch" in states:
        import torch

        torch.set_rng_state(states["torch"])


def serve(address: str, namespace: dict | None = None) -> None:
    """Answer the clean room's requests on the Unix socket ``address`` until it is done.

    ``namespace`` is the notebook's (default: the running IPython's ``user_ns``).
    """
    if namespace is None:
        namespace = get_ipython().user_ns  # noqa: F821 - defined in a Jupyter kernel
    ns = namespace
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(address)
    channel = wire.Channel(sock)
    handles: list = []
    resolve = wire.any_class_resolver(ns)

    def receive():
        return pickle.loads(channel.recv(MAX_REQUEST, float("inf")))  # the clean room's own bytes

    def callback(index: int):
        def stub(*args, **kwargs):
            message = wire.dumps(("callback", index, args, kwargs))
            with interrupts.channel_io():
                channel.send(message)
                answer = receive()
            if answer[0] != "ok":
                raise RuntimeError("a function of the test's failed")
            return wire.apply_copyback(args, kwargs, rebuild(answer[1]))

        return stub

    def rebuild(value):
        return wire.rebuild(value, resolve, ns.__getitem__, 0, callback)

    def by_name(function) -> bool:  # the student's own top-level functions travel by name
        return ns.get(getattr(function, "__qualname__", None)) is function

    interrupts = Interrupts()
    previous = signal.signal(signal.SIGINT, interrupts)
    try:
        _serve_loop(channel, ns, handles, receive, rebuild, by_name, interrupts)
    finally:
        signal.signal(signal.SIGINT, previous)


def _serve_loop(channel, ns, handles, receive, rebuild, by_name, interrupts: Interrupts) -> None:
    while True:
        try:
            request = rebuild(receive())
        except (wire.ChannelError, EOFError):
            return
        kind, number = request[0], request[1]
        if kind == "done":
            channel.close()
            return
        # "get" runs the student's code too (encoding a value may call its methods): an interrupt stops it
        student = kind in ("get", "call", "handle", "grad")
        try:
            with interrupts.in_call() if student else contextlib.nullcontext():
                out = _answer(request, ns, handles, interrupts)
                # a function the student's code returns stays here, as a handle the clean room can call
                reply = wire.dumps(("ok", number, out), handles, by_name)
        except BaseException as exc:  # the student's exception, or a value that cannot be encoded
            reply = pickle.dumps(_exception(exc, number), protocol=5)
        try:
            channel.send(reply)
        except wire.ChannelError:
            return


def _answer(request: tuple, ns: dict, handles: list, interrupts: Interrupts):
    kind = request[0]
    if kind == "kinds":
        return {n: _kind(ns[n]) if n in ns else "missing" for n in request[2]}
    if kind == "settle":
        return interrupts.settle(request[2])
    if kind == "get":
        return ns[request[2]]
    if kind == "sync":  # everything printed so far is sent before this marker (one ordered stream)
        import sys

        sys.stderr.flush()
        sys.stdout.write(request[2])
        sys.stdout.flush()
        return None
    if kind in ("call", "handle", "grad"):
        _, _, key, args, kwargs, extra, overrides, rng = request
        function = ns[key] if isinstance(key, str) else handles[key]
        missing = object()
        saved = {k: ns.get(k, missing) for k in overrides}
        ns.update(overrides)  # the names a test swapped for the course library's versions
        set_rng(rng)
        try:
            if kind == "grad":
                return local_gradient(function, args, kwargs, extra)
            return wire.call_with_copyback(function, args, kwargs)
        finally:
            for k, v in saved.items():
                if v is missing:
                    ns.pop(k, None)
                else:
                    ns[k] = v
    raise ValueError(f"unknown request {kind!r}")
