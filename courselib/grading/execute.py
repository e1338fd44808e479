"""nbgrader's ``Execute`` preprocessor with an output-size limit per cell (the clean room's executor).

nbclient keeps every output message of a cell in memory; a student's ``while True: print(...)``
would fill the grader's memory before the cell timeout. :class:`LimitedExecute` counts the bytes of
each cell's outputs; past ``max_output_bytes`` it drops further stream/display outputs of that cell
(error outputs are always kept), appends an ``OutputLimitExceeded`` error (the cell fails) and
interrupts the kernel. :mod:`courselib.grading.cleanroom` drives it cell by cell (``execute_cell``), so
the kernel stays alive for the hidden tests' calls afterwards.
"""

from __future__ import annotations

import asyncio
import json

from nbformat.notebooknode import NotebookNode
from nbgrader.preprocessors import Execute
from traitlets import Integer

OUTPUT_LIMIT_ENAME = "OutputLimitExceeded"


class LimitedExecute(Execute):
    max_output_bytes = Integer(1 << 20, help="largest total output of one cell, in bytes").tag(config=True)

    def output(self, outs, msg, display_id, cell_index):
        if getattr(self, "_limit_cell", None) != cell_index:
            self._limit_cell, self._limit_bytes, self._limit_hit = cell_index, 0, False
        if msg["msg_type"] == "error":
            return super().output(outs, msg, display_id, cell_index)
        self._limit_bytes += len(json.dumps(msg.get("content", {}), default=str))
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
