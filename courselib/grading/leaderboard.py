"""The compression challenge's grading side (lab 6): score submissions, write the leaderboard.

The submission format and the published score formula are content (:mod:`courselib.challenge`, which
students import); measuring and ranking the class is instructor tooling and lives here.
:func:`score_in_runtime` scores one folder *in the runtime*: the grader loads the safe submission
(safetensors plus an allow-listed JSON architecture), builds the ExecuTorch program itself (XNNPACK; int8 through
PT2E for the ``"int8"`` runtime) and measures accuracy, the program's size on disk and its latency there, one
thread (:func:`runtime_stats`, :mod:`courselib.deploy`); it never loads a program file a student wrote.
:func:`grade_challenge` scores every student of a submissions folder (``<student>/<lab>/submission/``) and :func:`write_leaderboard` writes the CSV and a self-contained
HTML page. :func:`lab_hook` is what the lab declares in ``labs/course.toml`` so that ``courselib grade``
writes the leaderboard after grading the notebooks.
"""

from __future__ import annotations

import csv
import html
import json
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from .. import deploy
from .._challenge_format import JSON_NAME, WEIGHTS_NAME
from ..challenge import (
    FORMAT,
    LATENCY_BATCH,
    MARGIN,
    ChallengeError,
    calibration_data,
    load_submission,
    record_score,
    reference_arch,
    result_template,
    save_submission,
    train_reference,
)
from .private_set import private_test_set

__all__ = ["grade_challenge", "write_leaderboard", "lab_hook", "runtime_stats", "score_in_runtime"]


# --------------------------------------------------------------------------------------------------
# measurement in the runtime: the ExecuTorch program the grader builds itself
# --------------------------------------------------------------------------------------------------
def _float_model(folder: Path, meta: dict) -> nn.Module:
    """The float model of a validated submission, loaded again by the safe loader from a grader-written JSON.

    The JSON is written here from the validated fields (runtime forced to float32); the weights file goes
    through the same validating safetensors loader. Nothing a student wrote is executed or unpickled.
    """
    with tempfile.TemporaryDirectory() as tmp:
        desc = {"format": FORMAT, "arch": meta["arch"], "arch_kwargs": meta["arch_kwargs"], "runtime": "float32"}
        (Path(tmp) / JSON_NAME).write_text(json.dumps(desc))
        shutil.copyfile(folder / WEIGHTS_NAME, Path(tmp) / WEIGHTS_NAME, follow_symlinks=False)
        model, _ = load_submission(tmp)
    return model


def runtime_stats(
    model: nn.Module, X_test, y_test, *, int8: bool = False, latency_batch: int = LATENCY_BATCH, repeats: int = 20
) -> dict:
    """Accuracy, program size and latency of ``model`` as an ExecuTorch program (XNNPACK) built here.

    ``int8``: PT2E static quantization calibrated on :func:`courselib.challenge.calibration_data` (the
    submission's ``"int8"`` runtime). Size: bytes of the ``.pte`` file; latency: median seconds of a batch of
    ``latency_batch`` test images in the runtime, one thread (:func:`courselib.deploy.program_latency`);
    accuracy: from the runtime's outputs on every test image.
    """
    with tempfile.TemporaryDirectory() as tmp:
        x = torch.as_tensor(X_test[:latency_batch]).float()
        path = deploy.export_executorch(
            model,
            x,
            Path(tmp) / "model.pte",
            quantize="static" if int8 else None,
            calibration_X=calibration_data() if int8 else None,
        )
        prog = deploy.load_program(path)
        return {
            "accuracy": deploy.program_accuracy(prog, X_test, y_test),
            "size_bytes": deploy.program_bytes(path),
            "latency_s": deploy.program_latency(prog, x, repeats=repeats),
        }


def _reference_runtime_stats(reference, X_test, y_test, latency_batch, repeats) -> dict:
    if isinstance(reference, dict):
        return reference
    if not isinstance(reference, nn.Module):
        raise TypeError(f"reference must be an nn.Module or a dict of its stats, got {type(reference).__name__}")
    arch, kw = reference_arch()
    with tempfile.TemporaryDirectory() as tmp:  # measured exactly like a submission: saved, loaded, built
        save_submission(reference, tmp, arch, kw)
        model, _ = load_submission(tmp)
    return runtime_stats(model, X_test, y_test, latency_batch=latency_batch, repeats=repeats)


def score_in_runtime(
    folder, X_test, y_test, reference, *, margin: float = MARGIN, latency_batch: int = LATENCY_BATCH, repeats: int = 20
) -> dict:
    """Load one submission safely, build its ExecuTorch program, measure it there and score it.

    Like :func:`courselib.challenge.score_submission`, but size and latency are those of the program the grader
    builds from the submission (never a program file a student wrote): ``size_bytes`` is the ``.pte``,
    ``latency_ms`` its median latency in the runtime on a batch of ``latency_batch`` images, one thread.
    ``reference`` is a module (measured the same way now) or its stats from :func:`runtime_stats`.
    """
    folder = Path(folder)
    ref = _reference_runtime_stats(reference, X_test, y_test, latency_batch, repeats)
    out = result_template(ref)
    try:
        _, meta = load_submission(folder)
        model = _float_model(folder, meta)
    except ChallengeError as err:
        out.update(status=err.status, note=err.message)
        return out
    try:
        st = runtime_stats(
            model, X_test, y_test, int8=meta["runtime"] == "int8", latency_batch=latency_batch, repeats=repeats
        )
    except Exception as err:  # a model the runtime cannot take is the submission's problem, reported
        out.update(status="invalid-model", note=f"the model does not run in ExecuTorch: {err}"[:300])
        return out
    note = f"{meta['arch']} {meta['arch_kwargs']} runtime={meta['runtime']} (ExecuTorch/XNNPACK program)"
    return record_score(out, st["accuracy"], st["size_bytes"], st["latency_s"], ref, margin, note)


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
    ref = _reference_runtime_stats(reference, X_test, y_test, latency_batch, repeats)
    submissions = Path(submissions)
    if students is None:
        students = sorted(p.name for p in submissions.iterdir() if p.is_dir() and not p.name.startswith("."))
    rows = []
    for student in students:
        res = score_in_runtime(
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
            f"{lat:.3f} ms per batch of {latency_batch} (ExecuTorch program, 1 thread). A submission scores 0 below "
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
