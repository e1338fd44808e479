"""The compression challenge's grading side (lab 6): score submissions, write the leaderboard.

The submission format and the published score formula are content (:mod:`courselib.challenge`, which
students import); measuring and ranking the class is instructor tooling and lives here.
:func:`score_submission` scores one folder, :func:`grade_challenge` scores every student of a submissions
folder (``<student>/<lab>/submission/``) and :func:`write_leaderboard` writes the CSV and a self-contained
HTML page. :func:`lab_hook` is what the lab declares in ``labs/course.toml`` so that ``courselib grade``
writes the leaderboard after grading the notebooks.
"""

from __future__ import annotations

import csv
import html
from pathlib import Path

from ..challenge import (
    LATENCY_BATCH,
    MARGIN,
    reference_stats,
    score_submission,
    train_reference,
)
from .private_set import private_test_set

__all__ = ["grade_challenge", "write_leaderboard", "lab_hook"]


def grade_challenge(
    submissions,
    out_dir,
    *,
    lab: str = "lab06_challenge",
    folder_name: str = "submission",
    X_test=None,
    y_test=None,
    reference=None,
    margin: float = MARGIN,
    latency_batch: int = LATENCY_BATCH,
    repeats: int = 20,
    students=None,
    course_dir=None,
) -> list[dict]:
    """Score every ``<submissions>/<student>/<lab>/<folder_name>/`` and write the leaderboard.

    Writes ``<out_dir>/<lab>_leaderboard.csv`` and ``<out_dir>/<lab>_leaderboard.html``
    (:func:`write_leaderboard`). Runs in the grader's own process: loading is safe by design
    (:func:`load_submission`), and every submission is timed in the same process as the reference.

    Parameters
    ----------
    submissions : path
        nbgrader's layout ``<student>/<lab>/...``.
    out_dir : path
    X_test, y_test : arrays, optional
        The private test set; default :func:`courselib.grading.private_set.private_test_set` of ``lab``
        (the course settings' ``test_seed`` or ``test_set``; without one, grading refuses).
    reference : nn.Module, optional
        Default :func:`train_reference` ``()``.
    students : iterable of str, optional
        Score these ids (a missing folder is ``missing``); default every student folder.
    course_dir : path, optional
        The course whose ``course.toml`` declares the private test set (default: found as usual).

    Returns
    -------
    list of dict
        One row per student (``student_id`` plus the :func:`score_submission` fields), best first.
    """
    if X_test is None or y_test is None:
        X_test, y_test = private_test_set(lab, course_dir)
    if reference is None:
        reference = train_reference()
    ref = reference_stats(reference, X_test, y_test, latency_batch, repeats)
    submissions = Path(submissions)
    if students is None:
        students = sorted(p.name for p in submissions.iterdir() if p.is_dir() and not p.name.startswith("."))
    rows = []
    for student in students:
        res = score_submission(
            submissions / student / lab / folder_name,
            X_test,
            y_test,
            ref,
            margin=margin,
            latency_batch=latency_batch,
            repeats=repeats,
        )
        rows.append({"student_id": student, **res})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_leaderboard(
        rows,
        out_dir / f"{lab}_leaderboard.csv",
        out_dir / f"{lab}_leaderboard.html",
        reference=ref,
        margin=margin,
        latency_batch=latency_batch,
    )
    return _ranked(rows)


# --------------------------------------------------------------------------------------------------
# leaderboard
# --------------------------------------------------------------------------------------------------
_COLUMNS = ("rank", "student_id", "status", "score", "accuracy", "size_bytes", "latency_ms", "note")


def _ranked(results):
    return sorted(results, key=lambda r: (r.get("score") is None, -(r.get("score") or 0.0), str(r.get("student_id"))))


def format_cell(key, value):
    if value is None:
        return ""
    if key == "score":
        return f"{value:.3f}"
    if key == "accuracy":
        return f"{value:.4f}"
    if key == "latency_ms":
        return f"{value:.3f}"
    return str(value)


def write_leaderboard(
    results,
    csv_path,
    html_path,
    *,
    reference: dict | None = None,
    margin: float = MARGIN,
    latency_batch: int = LATENCY_BATCH,
    title: str = "Compression challenge leaderboard",
):
    """Write the ranked results as CSV and as a self-contained HTML page (inline CSS, no scripts).

    Parameters
    ----------
    results : list of dict
        Rows with ``student_id``, ``status``, ``score``, ``accuracy``, ``size_bytes``, ``latency_ms``,
        ``note`` (as returned by :func:`score_submission` plus ``student_id``).
    csv_path, html_path : path
    reference : dict, optional
        Reference stats shown above the table (``accuracy``, ``size_bytes``, ``latency_s`` or ``latency_ms``).

    Returns
    -------
    (Path, Path)
    """
    rows = _ranked(list(results))
    for r in rows:
        if "student_id" not in r or "status" not in r:
            raise ValueError(f"every result needs student_id and status, got keys {sorted(r)}")
    csv_path, html_path = Path(csv_path), Path(html_path)
    table = []
    rank = 0
    for r in rows:
        if r.get("score") is not None:
            rank += 1
        table.append({"rank": rank if r.get("score") is not None else "", **{k: r.get(k) for k in _COLUMNS[1:]}})
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=_COLUMNS)
        w.writeheader()
        for t in table:
            w.writerow({k: format_cell(k, t[k]) for k in _COLUMNS})
    esc = html.escape
    ref_line = ""
    if reference:
        lat = reference.get("latency_ms", 1e3 * reference["latency_s"] if "latency_s" in reference else None)
        ref_line = (
            f"<p>Reference: accuracy {reference['accuracy']:.4f}, {reference['size_bytes']:,} bytes, "
            f"{lat:.3f} ms per batch of {latency_batch} (1 torch thread). A submission scores 0 below "
            f"accuracy {reference['accuracy'] - margin:.4f} (margin {margin}).</p>"
        )
    head = "".join(f"<th>{esc(c)}</th>" for c in _COLUMNS)
    body = "\n".join(
        f'<tr class="{esc(str(t["status"]))}">'
        + "".join(f"<td>{esc(format_cell(c, t[c]))}</td>" for c in _COLUMNS)
        + "</tr>"
        for t in table
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #999;padding:.3em .6em;text-align:right}}th{{background:#eee}}
td:nth-child(2),td:nth-child(3),td:nth-child(8){{text-align:left}}tr.scored td:nth-child(4){{font-weight:bold}}
tr.invalid-model,tr.too-large,tr.missing{{color:#777}}</style></head>
<body><h1>{esc(title)}</h1>
<p>score = 0 if accuracy &lt; reference accuracy &minus; margin, else
sqrt((reference size / size) &times; (reference latency / latency)); higher is better.</p>
{ref_line}
<table><thead><tr>{head}</tr></thead><tbody>
{body}
</tbody></table></body></html>
"""
    html_path.write_text(page, encoding="utf-8")
    return csv_path, html_path


def lab_hook(*, lab: str, course: Path, submissions: dict[str, Path | None], scratch: Path) -> Path:
    """Score every student's ``<student>/<lab>/submission/`` with :func:`courselib.challenge.grade_challenge`.

    ``submissions`` maps student ids to their notebooks (from :func:`collect_submissions`); the model folder sits
    beside the notebook. Loading a submission never unpickles or runs student code (safetensors plus an
    allow-listed architecture), so this runs in the grader's own process, every model timed in the same
    process as the reference. Writes ``grades/<lab>_leaderboard.csv`` and ``.html``; returns the HTML path.
    A student whose submission folder is absent or refused gets a status and no score on the board.
    """
    roots = {nb.parent.parent.parent for nb in submissions.values() if nb is not None}
    # nbgrader's layout shares one root; flat zip files carry no model folder (every row is then missing)
    root = roots.pop() if len(roots) == 1 else scratch / "no-model-folders"
    root.mkdir(parents=True, exist_ok=True)
    grade_challenge(root, course / "grades", lab=lab, students=sorted(submissions), course_dir=course)
    return course / "grades" / f"{lab}_leaderboard.html"
