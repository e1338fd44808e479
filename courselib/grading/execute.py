"""nbgrader's ``Execute`` preprocessor with an output-size limit per cell (the clean room's executor).

nbclient keeps every output message of a cell in memory; a student's ``while True: print(...)``
would fill the grader's memory before the cell timeout. :class:`LimitedExecute` counts the bytes of
each cell's outputs; past ``max_output_bytes`` it drops further stream/display outputs of that cell
(error outputs are always kept), appends an ``OutputLimitExceeded`` error (the cell fails) and
interrupts the kernel. :mod:`courselib.grading.cleanroom` drives it cell by cell (``execute_cell``), so
the kernel stays alive for the hidden tests' calls afterwards.

Counting happens after a message arrives, so a single message must be bounded too: the executor's client
uses a ZeroMQ context whose sockets refuse messages over ``max_message_bytes`` (:func:`bounded_zmq_context`),
and a cell that printed more than that in one piece loses the output and fails like any cell over the limit.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid

import zmq
import zmq.asyncio
from nbformat.notebooknode import NotebookNode
from nbgrader.preprocessors import Execute
from traitlets import Integer

OUTPUT_LIMIT_ENAME = "OutputLimitExceeded"


def bounded_zmq_context(max_message: int, asyncio: bool = False) -> zmq.Context:
    """A ZeroMQ context whose sockets refuse any message over ``max_message`` bytes: what the student's
    kernel prints reaches the grader as messages, and one huge print must not be one huge allocation."""
    ctx = zmq.asyncio.Context() if asyncio else zmq.Context()
    ctx.setsockopt(zmq.MAXMSGSIZE, int(max_message))
    return ctx


def watch_oversize(sock, on_oversize) -> threading.Thread:
    """Call ``on_oversize()`` when ``sock`` (a client socket on a :func:`bounded_zmq_context`) drops its peer.

    ZeroMQ disconnects a peer that sends a message over the socket's ``MAXMSGSIZE`` (and reconnects): the
    message is never read into memory, and this monitor is how the grader learns that it was there.
    """
    addr = f"inproc://courselib-monitor-{uuid.uuid4().hex}"
    sock.monitor(addr, zmq.EVENT_DISCONNECTED)
    ctx = sock.context

    def run():
        pair = zmq.Context.shadow(ctx.underlying).socket(zmq.PAIR)
        pair.connect(addr)
        try:
            while True:
                frames = pair.recv_multipart()
                event = int.from_bytes(frames[0][:2], "little")
                if event == zmq.EVENT_MONITOR_STOPPED:
                    return
                if event & zmq.EVENT_DISCONNECTED:
                    on_oversize()
        except zmq.ZMQError:  # the context was terminated
            return
        finally:
            pair.close(linger=0)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


class LimitedExecute(Execute):
    max_output_bytes = Integer(1 << 20, help="largest total output of one cell, in bytes").tag(config=True)
    max_message_bytes = Integer(8 << 20, help="largest single message from the kernel, in bytes").tag(config=True)

    def create_kernel_manager(self):
        km = super().create_kernel_manager()
        make, limit = km.client, self.max_message_bytes

        def client(**kwargs):  # nbclient's client, on a context that refuses oversized messages
            kwargs.setdefault("context", bounded_zmq_context(limit, asyncio=True))
            return make(**kwargs)

        km.client = client
        return km

    #: set when a message over ``max_message_bytes`` was refused (:func:`watch_oversize`)
    oversized = False

    def start_new_kernel_client(self):
        kc = super().start_new_kernel_client()
        self.oversized = False
        watch_oversize(kc.iopub_channel.socket, lambda: self._refused(kc))
        return kc

    def _refused(self, kc) -> None:
        """A message was refused on ``kc``'s output channel. Only the current client counts: a kernel
        stopped for a restart drops the old client's connection too, and that event may arrive late."""
        if kc is self.kc:
            self.oversized = True

    def output(self, outs, msg, display_id, cell_index):
        if getattr(self, "_limit_cell", None) != cell_index:
            self._limit_cell, self._limit_bytes, self._limit_hit = cell_index, 0, False
        if msg["msg_type"] == "error":
            return super().output(outs, msg, display_id, cell_index)
        self._limit_bytes += len(json.dumps(msg.get("content", {}), default=str))
        if self.oversized:  # a message over the size limit was refused while this cell ran
            self.oversized, self._limit_bytes = False, self.max_output_bytes + 1
        if self._limit_bytes <= self.max_output_bytes:
            return super().output(outs, msg, display_id, cell_index)
        if not self._limit_hit:
            self._limit_hit = True
            outs.append(
                NotebookNode(
                    output_type="error",
                    ename=OUTPUT_LIMIT_ENAME,
                    evalue=f"cell output exceeded {self.max_output_bytes} bytes",
                    traceback=[
                        f"{OUTPUT_LIMIT_ENAME}: cell output exceeded "
                        f"{self.max_output_bytes} bytes; the kernel was interrupted"
                    ],
                )
            )
            try:
                asyncio.ensure_future(self.km.interrupt_kernel())
            except Exception:
                pass
        return None
