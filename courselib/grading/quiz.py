"""Concept-check question bank: load ``book/question_bank/questions.yml``, grade answers, render pages.

The bank holds multiple-choice, multiple-select and numeric questions, one set per chapter, with their
answers. :func:`grade` autogrades a student's answers (a mapping ``question id -> response``);
:func:`render_chapter` writes the MyST page of one chapter: the book's, with the questions only (the
concept checks are graded, so their answers are never published), or the instructor's answer key, with
each answer in a sphinx-exercise ``{solution}`` dropdown. The book's pages and the autograder read the same file.

Command line::

    courselib quiz render                      # regenerate book/question_bank/<chapter>.md (no answers)
    courselib quiz render --answer-key DIR     # the answer key, outside the book
    courselib quiz grade answers.yml           # score a YAML/JSON file of {id: response}
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml

__all__ = [
    "QUESTION_TYPES",
    "default_bank_path",
    "load_bank",
    "load_questions",
    "NUMBER_FORMAT",
    "AmbiguousNumber",
    "parse_number",
    "check_answer",
    "grade",
    "render_chapter",
    "write_pages",
    "explanation_fragments",
]

QUESTION_TYPES = ("multiple_choice", "multiple_select", "numeric")
_ID = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_LETTER = re.compile(r"^[a-z]$")

#: What the book's concept-check pages say about writing a number (the rules of :func:`parse_number`).
NUMBER_FORMAT = (
    "Write a number with a decimal point or a decimal comma (`0.3` and `0,3` are the same answer; `-12`, "
    "`2.5e-3`), and a large number without separators (`123456`). A comma followed by exactly three digits "
    "and nothing else (`1,234`) could be either, so such an answer is sent back unscored: write `1234` or "
    "`1.234`."
)

# Thousands groups: 1-3 leading digits (not a leading 0), then groups of exactly three ("1,234,567", "12,345.6").
_GROUPED = re.compile(r"^[+-]?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d*)?$")
# A decimal comma: digits, one comma, digits, nothing else ("0,7", "12,25").
_DECIMAL_COMMA = re.compile(r"^[+-]?\d+,\d+$")


class AmbiguousNumber(ValueError):
    """A numeric answer that reads as two different numbers (``"1,234"``: 1234 or 1.234)."""


def parse_number(text: str) -> float:
    """The number a student wrote, with a decimal point or a decimal comma.

    - Surrounding spaces and ``_`` between digits are ignored; ``"0.7"``, ``" 0.70 "``, ``"7"``, ``"-12"``,
      ``"2.5e-3"`` read as Python's ``float`` reads them.
    - A comma is a **decimal comma** when the answer is digits, one comma, digits and nothing else, and cannot
      be a thousands separator: ``"0,7"`` is 0.7, ``"12,25"`` is 12.25, ``"0,700"`` is 0.7 (a group never
      starts with 0).
    - Commas are **thousands separators** where they cannot be a decimal comma: several complete groups of
      three (``"1,234,567"``) or groups before a decimal point (``"1,234.5"``).
    - One comma followed by exactly three digits, after one to three digits that do not start with 0
      (``"1,234"``, ``"804,004"``), fits both readings: :class:`AmbiguousNumber` (a ``ValueError``) says so
      and asks for ``1234`` or ``1.234``. The book's concept-check pages state these rules
      (:data:`NUMBER_FORMAT`).

    Raises ``ValueError`` for anything else that is not a number (``"abc"``, ``"1,2,3"``, ``"1.234,5"``).
    """
    s = text.strip().replace("_", "")
    if "," in s:
        grouped, decimal = bool(_GROUPED.match(s)), bool(_DECIMAL_COMMA.match(s))
        if grouped and decimal:
            raise AmbiguousNumber(
                f"ambiguous number {text.strip()!r}: the comma can be a decimal comma or a thousands separator; "
                f"write {s.replace(',', '')} or {s.replace(',', '.')}"
            )
        if grouped:
            s = s.replace(",", "")
        elif decimal:
            s = s.replace(",", ".")
        else:
            raise ValueError(f"not a number: {text.strip()!r}")
    return float(s)


def default_bank_path() -> Path:
    """``book/question_bank/questions.yml`` of the repository this package sits in."""
    return Path(__file__).resolve().parents[2] / "book" / "question_bank" / "questions.yml"


def _validate(bank: Mapping) -> None:
    if not isinstance(bank, Mapping) or "questions" not in bank or "chapters" not in bank:
        raise ValueError("the bank must be a mapping with 'chapters' and 'questions'")
    chapters = bank["chapters"]
    seen = set()
    for i, q in enumerate(bank["questions"]):
        where = f"question #{i} ({q.get('id', '?') if isinstance(q, Mapping) else '?'})"
        if not isinstance(q, Mapping):
            raise ValueError(f"{where}: expected a mapping")
        for key in ("id", "chapter", "type", "prompt", "answer", "explanation"):
            if key not in q:
                raise ValueError(f"{where}: missing field {key!r}")
        if not isinstance(q["id"], str) or not _ID.match(q["id"]):
            raise ValueError(f"{where}: id must be lowercase letters, digits and '-'")
        if q["id"] in seen:
            raise ValueError(f"{where}: duplicate id")
        seen.add(q["id"])
        if q["chapter"] not in chapters:
            raise ValueError(f"{where}: unknown chapter {q['chapter']!r}; known: {sorted(chapters)}")
        qtype = q["type"]
        if qtype not in QUESTION_TYPES:
            raise ValueError(f"{where}: type must be one of {QUESTION_TYPES}, got {qtype!r}")
        if qtype == "numeric":
            if isinstance(q["answer"], bool) or not isinstance(q["answer"], (int, float)):
                raise ValueError(f"{where}: a numeric answer must be a number")
            tol = q.get("tolerance", 0)
            if isinstance(tol, bool) or not isinstance(tol, (int, float)) or tol < 0:
                raise ValueError(f"{where}: tolerance must be a number >= 0")
        else:
            choices = q.get("choices")
            if not isinstance(choices, Mapping) or len(choices) < 2:
                raise ValueError(f"{where}: needs at least two choices")
            if not all(isinstance(k, str) and _LETTER.match(k) for k in choices):
                raise ValueError(f"{where}: choice keys must be single lowercase letters")
            answers = q["answer"] if qtype == "multiple_select" else [q["answer"]]
            if qtype == "multiple_select" and (not isinstance(q["answer"], list) or not q["answer"]):
                raise ValueError(f"{where}: a multiple_select answer must be a non-empty list of letters")
            if any(a not in choices for a in answers):
                raise ValueError(f"{where}: answer {q['answer']!r} is not among the choices {sorted(choices)}")


def load_bank(path: str | Path | None = None) -> dict:
    """Read and validate the whole bank (``chapters`` and ``questions``)."""
    p = Path(path) if path is not None else default_bank_path()
    if not p.exists():
        raise FileNotFoundError(f"question bank not found: {p}")
    bank = yaml.safe_load(p.read_text(encoding="utf-8"))
    _validate(bank)
    return bank


def load_questions(path: str | Path | None = None, chapter: str | None = None) -> list[dict]:
    """The questions of the bank, optionally only those of one chapter (a key of ``chapters``)."""
    bank = load_bank(path)
    if chapter is not None and chapter not in bank["chapters"]:
        raise ValueError(f"unknown chapter {chapter!r}; known: {sorted(bank['chapters'])}")
    return [dict(q) for q in bank["questions"] if chapter is None or q["chapter"] == chapter]


def _letters(response) -> set[str]:
    if isinstance(response, str):
        items = re.split(r"[\s,;]+", response.strip())
    elif isinstance(response, Iterable):
        items = list(response)
    else:
        raise TypeError(f"expected letters, got {type(response).__name__}")
    out = set()
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"expected letters, got {item!r}")
        item = item.strip().strip(").").lower()
        if item:
            out.add(item)
    return out


def check_answer(question: Mapping, response) -> bool:
    """True when ``response`` answers ``question`` correctly.

    - multiple_choice: one letter, case and surrounding spaces/``)`` ignored (``"B"``, ``" b) "``);
    - multiple_select: the exact set of letters, as a list or a string (``"a, c"``, ``["c", "a"]``);
    - numeric: a number, or a string :func:`parse_number` reads (``"0.25"``, ``"0,25"``, ``"1,152.5"``),
      within the question's absolute ``tolerance`` of the answer (a relative 1e-9 is always allowed for float
      round-off). A string that is not a number is wrong.

    ``None`` (unanswered) is wrong. A response of the wrong kind raises ``TypeError``; an ambiguous number
    (``"1,234"``) raises :class:`AmbiguousNumber`, whose message says how to write it.
    """
    if response is None:
        return False
    qtype = question["type"]
    if qtype == "numeric":
        if isinstance(response, bool):
            raise TypeError("a numeric answer cannot be True/False")
        if isinstance(response, str):
            try:
                value = parse_number(response)
            except AmbiguousNumber:
                raise
            except ValueError:
                return False
        elif isinstance(response, (int, float)):
            value = float(response)
        else:
            raise TypeError(f"a numeric answer must be a number, got {type(response).__name__}")
        if not math.isfinite(value):
            return False
        target = float(question["answer"])
        tol = float(question.get("tolerance", 0)) + 1e-9 * max(1.0, abs(target))
        return abs(value - target) <= tol
    letters = _letters(response)
    if qtype == "multiple_choice":
        return len(letters) == 1 and letters == {question["answer"]}
    return letters == set(question["answer"])


def grade(
    answers: Mapping[str, object], *, chapter: str | None = None, path: str | Path | None = None, strict: bool = True
) -> dict:
    """Autograde ``answers`` (``{question id: response}``) against the bank.

    Parameters
    ----------
    answers : mapping
        Responses by question id; missing questions count as wrong.
    chapter : str, optional
        Grade only this chapter's questions (ids of other chapters are then ignored).
    path : path, optional
        Another bank file (default: the book's).
    strict : bool, default True
        Raise ``ValueError`` for ids that are not in the bank (typos), instead of ignoring them.

    Returns
    -------
    dict
        ``score`` (correct answers), ``total``, ``fraction``, ``results`` (``id -> bool``),
        ``feedback`` (``id -> explanation`` for the wrong ones) and ``invalid`` (``id -> message`` for the
        answers that could not be read, such as the ambiguous number ``"1,234"``: they score nothing, and
        their feedback is that message alone, without the explanation, so that the student can answer again,
        unambiguously).
    """
    if not isinstance(answers, Mapping):
        raise TypeError(f"answers must be a mapping of question id to response, got {type(answers).__name__}")
    questions = load_questions(path, chapter)
    if strict:
        known = {q["id"] for q in load_questions(path)}
        unknown = sorted(set(answers) - known)
        if unknown:
            raise ValueError(f"unknown question id(s): {unknown}")
    results, feedback, invalid = {}, {}, {}
    for q in questions:
        try:
            ok = check_answer(q, answers.get(q["id"]))
        except AmbiguousNumber as e:
            ok, invalid[q["id"]] = False, str(e)
        except TypeError:
            ok = False
        results[q["id"]] = ok
        if not ok:
            feedback[q["id"]] = invalid[q["id"]] if q["id"] in invalid else q["explanation"]
    score = sum(results.values())
    total = len(questions)
    return {
        "score": score,
        "total": total,
        "fraction": score / total if total else 0.0,
        "results": results,
        "feedback": feedback,
        "invalid": invalid,
    }


# ---------------------------------------------------------------------------------------------
# MyST pages
# ---------------------------------------------------------------------------------------------
_KIND = {
    "multiple_choice": "Multiple choice (one answer)",
    "multiple_select": "Multiple choice (select all that apply)",
    "numeric": "Numeric answer",
}


def _answer_text(q: Mapping) -> str:
    if q["type"] == "numeric":
        tol = q.get("tolerance", 0)
        return f"{q['answer']}" + (f" (accepted within $\\pm${tol})" if tol else "")
    if q["type"] == "multiple_select":
        return ", ".join(f"**{a}**" for a in q["answer"])
    return f"**{q['answer']}**"


def render_chapter(chapter: str, path: str | Path | None = None, *, answers: bool = False) -> str:
    """The MyST Markdown page of one chapter's questions.

    The book's pages carry the questions only (``answers=False``): the concept checks are graded, so their
    answers and explanations are never published. ``answers=True`` gives the instructor's answer key (each
    answer and its explanation in a sphinx-exercise solution dropdown), written outside the book by
    ``courselib quiz render --answer-key DIR``.
    """
    bank = load_bank(path)
    if chapter not in bank["chapters"]:
        raise ValueError(f"unknown chapter {chapter!r}; known: {sorted(bank['chapters'])}")
    info = bank["chapters"][chapter]
    if answers:
        about = "Answer key (instructors only: never publish it). Each answer and its explanation is in a dropdown."
    else:
        about = (
            "These questions are graded, so their answers are not published. Write your answers as "
            "`{question id: answer}` (a letter, a list of letters, or a number); your instructor's "
            "`courselib quiz grade` gives back the score and an explanation for each wrong answer. " + NUMBER_FORMAT
        )
    lines = [
        "<!-- Generated from book/question_bank/questions.yml by `courselib quiz render`. Do not edit by hand. -->",
        f"(qb-{chapter.replace('_', '-')}{'-key' if answers else ''})=",
        f"# Concept check: {info['title']}",
        "",
        f"Questions on the chapter *{info['title']}* (`{info['page']}`). {about}",
        "",
    ]
    for _n, q in enumerate((q for q in bank["questions"] if q["chapter"] == chapter), start=1):
        label = f"qb-{q['id']}"
        lines += [
            "```{exercise}",
            f":label: {label}",
            "",
            f"*{_KIND[q['type']]}* (id `{q['id']}`)",
            "",
            q["prompt"].strip(),
            "",
        ]
        if q["type"] != "numeric":
            for letter, text in q["choices"].items():
                lines.append(f"- **{letter})** {text}")
            lines.append("")
        lines += ["```", ""]
        if answers:
            lines += [
                f"```{{solution}} {label}",
                ":class: dropdown",
                "",
                f"Answer: {_answer_text(q)}. {q['explanation'].strip()}",
                "",
                "```",
                "",
            ]
    return "\n".join(lines).rstrip() + "\n"


def write_pages(
    path: str | Path | None = None, out_dir: str | Path | None = None, *, answers: bool = False
) -> list[Path]:
    """Write ``<chapter>.md`` for every chapter of the bank into ``out_dir`` (default: next to the bank, the
    book's pages, without answers); ``answers=True`` writes the answer key (give an ``out_dir`` outside the book)."""
    bank_path = Path(path) if path is not None else default_bank_path()
    out = Path(out_dir) if out_dir is not None else bank_path.parent
    if answers and out.resolve() == bank_path.parent.resolve():
        raise ValueError("the answer key must not be written into the book: give another folder")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for chapter in load_bank(bank_path)["chapters"]:
        p = out / f"{chapter}.md"
        p.write_text(render_chapter(chapter, bank_path, answers=answers), encoding="utf-8")
        written.append(p)
    return written


def explanation_fragments(path: str | Path | None = None) -> dict[str, str]:
    """{sentence: question id} for the plain-text sentences (40 characters or more, no math or markup) of
    every explanation: what a published page must not contain (``tools/edition.py`` scans for them)."""
    found = {}
    for q in load_bank(path)["questions"]:
        text = " ".join(q["explanation"].split())
        for frag in re.split(r"(?<=[.!?])\s+", text):
            if len(frag) >= 40 and not re.search(r"[$\\*`_\[\]{}]", frag):
                found.setdefault(frag, q["id"])
    return found


def read_answers(file: Path) -> dict:
    text = file.read_text(encoding="utf-8")
    data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected a mapping of question id to answer")
    return data
