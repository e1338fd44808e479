"""What a student reads about a graded submission: the failure messages and the HTML feedback.

The feedback is the executed notebook (the student's cells and the *visible* tests, with the outputs
the student's kernel produced) with, under every graded cell, its verdict: points, pass or fail, how it
was checked, and a message that never holds hidden test code, an expected value or a hidden input
(:func:`failure_message`): a visible test's assertion message (the student can read that test), the
class of an exception the student's own code raised, and for a hidden test only *that* it failed (or timed
out, or met the student's exception): its own message is the hidden test's text and is never shown. It is rendered with nbgrader's own feedback template, so it looks like what
``nbgrader generate_feedback`` writes.
"""

from __future__ import annotations

import html
import importlib
import json
from pathlib import Path

import nbformat
from nbformat.notebooknode import NotebookNode
from traitlets.config import Config

__all__ = ["failure_message", "coalesce_streams", "feedback_notebook", "render_feedback", "FEEDBACK_MODES"]

#: Feedback modes a lab may choose in ``labs/course.toml`` (``[labs.<lab>] feedback = "full"``).
FEEDBACK_MODES = ("redacted", "full")

#: How each verdict's checking is described (the CSV's ``tier`` column has the same words).
TIER_NOTES = {
    "clean": "",
    "sealed": "checked in a sealed run: the hidden tests ran with your code in a fresh kernel, as nbgrader runs them",
    "manual": "graded by hand",
}


def failure_message(exc: BaseException, names=(), *, hidden: bool = False) -> str:
    """What a student may read about a failing test: the author's assertion message, or the student's
    own exception; never a traceback, and never the message of an exception raised by test code (it
    could hold an expected value). ``names`` are the lab's answer names (a missing one is said). With
    ``hidden``, a student's exception shows its class only: its message could repeat a hidden input.
    """
    student = getattr(exc, "courselib_student", None)
    if student:
        if hidden or getattr(exc, "courselib_hidden", False):
            return f"your {student} raised {type(exc).__name__} on a hidden input"
        text = str(exc).strip()
        return f"your {student} raised {type(exc).__name__}" + (f": {text[:500]}" if text else "")
    if getattr(exc, "courselib_timeout", None):
        return str(exc)
    if isinstance(exc, AssertionError):
        text = str(exc).strip()
        return text[:500] if text else "an assertion failed"
    if isinstance(exc, NameError) and getattr(exc, "name", None) in names:  # a missing answer of the student's
        return f"NameError: {exc.name!r} is not defined (its cell failed or was not run)"
    return f"the test raised {type(exc).__name__}"


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


def verdict_text(v: dict) -> tuple[str, bool]:
    """The line under a graded cell, and whether it counts as passed (green)."""
    points = float(v["points"])
    if v["status"] == "pending":
        return f"waiting for a grade: {points:g} points, graded by hand", True
    score = float(v.get("score") or 0.0)
    passed = v["status"] == "passed"
    text = f"{'passed' if passed else 'partial credit' if v['status'] == 'partial' else 'failed'}: {score:g} / {points:g} points"
    if not passed:
        where = v.get("where")
        if v["status"] == "timeout":
            text += " (time limit)"
        elif where == "visible":
            text += " (the visible tests above failed)"
        elif where == "hidden":
            text += (
                " (the hidden tests failed)"
                if v.get("hidden_only")
                else " (the visible tests passed; the hidden tests failed)"
            )
        if v.get("message"):
            text += f"\nmessage: {v['message']}"
    note = TIER_NOTES.get(v.get("tier", "clean"), "")
    if note and v["status"] != "pending":
        text += f"\nnote: {note}"
    return text, passed


def feedback_notebook(executed, verdicts: dict, mode: str, test_sources: dict) -> NotebookNode:
    """The notebook the feedback is rendered from: the executed notebook with, under every graded code
    cell, its verdict (:func:`verdict_text`); a graded Markdown cell (an answer graded by hand) gets its
    score in nbgrader's metadata only.

    ``mode="redacted"`` (default): a failing part shows whether its visible or its hidden tests failed and
    the message of :func:`failure_message`, never hidden test code, expected values or a traceback of hidden
    code. ``mode="full"``: the test cell shows its source version (``test_sources``, hidden tests included)
    and the clean room's traceback.
    """
    nb = nbformat.from_dict(json.loads(json.dumps(executed)))
    cells = []
    for cell in nb.cells:
        cells.append(cell)
        meta = cell.get("metadata", {}).get("nbgrader", {})
        v = verdicts.get(meta.get("grade_id")) if meta.get("grade") or meta.get("task") else None
        if v is None:
            continue
        meta["points"] = float(v["points"])
        meta["score"] = float(v["score"]) if v.get("score") is not None else 0.0  # nbgrader's template needs one
        if v.get("score") is None:  # waiting for the instructor: say so under the cell, whatever its kind
            cells.append(
                nbformat.v4.new_markdown_cell(
                    f"*Waiting for a grade by hand ({float(v['points']):g} points); the score above is 0 until then.*"
                )
            )
            continue
        if cell.cell_type != "code":  # Markdown answers and tasks graded already: nbgrader's template shows the score
            continue
        text, passed = verdict_text(v)
        if mode == "full":
            cell.source = test_sources.get(meta["grade_id"], cell.source)
            if v.get("traceback") and not passed:
                text += "\n\n" + v["traceback"]
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
    nb.cells = cells
    return nb


_EXPORTER = None


def render_feedback(nb: NotebookNode, lab: str, score: float, max_score: float) -> str:
    """HTML with nbgrader's own feedback template (what ``nbgrader generate_feedback`` writes)."""
    global _EXPORTER
    if _EXPORTER is None:
        from nbconvert.exporters import HTMLExporter
        from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor

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
