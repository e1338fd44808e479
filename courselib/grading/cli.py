"""The ``courselib`` command: the instructor's one entry point (run it from ``labs/`` or the repository root).

::

    courselib labs                          # list the labs and their points
    courselib release [LAB ...]             # student versions into labs/release/
    courselib grade LAB SUBMISSIONS [--workers N]
                                            # class scale: parallel, sandboxed, limited, tamper-proof,
                                            # resumable autograding + feedback + grades/LAB.csv (+ lab hooks)
                                            # [--cluster tcp://SCHED:8786 | local:N] [--db postgresql://...]
    courselib autograde LAB SUBMISSIONS     # plain nbgrader autograde, unsandboxed (trusted notebooks only),
                                            # feedback without the hidden tests
    courselib export LAB [--db URL]         # labs/grades/LAB.csv
    courselib tiers LAB                     # how each part is judged: clean room, sealed run, by hand
    courselib leaderboard SUBMISSIONS OUT   # score the compression challenge, write the leaderboard
    courselib mutants LAB [--only ID ...] [--grader courselib]   # every wrong answer must lose points
    courselib quiz render|grade ...         # the concept-check question bank
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import grading
from . import course

# Each command imports what it runs when it runs, as an attribute of the lazy package (``grading.batch``,
# ``grading.leaderboard`` ...): ``courselib --help`` and ``courselib labs`` import only this module and
# ``course``, never nbgrader, torch, ExecuTorch or Dask (``tests/test_grading_cli.py`` checks it).
LIMIT_FIELDS = ("cell_timeout", "notebook_timeout", "memory_mb", "output_kb")
GRADERS = ("nbgrader", "courselib")
"""``courselib mutants --grader`` choices: :data:`courselib.grading.mutants.GRADERS` (a test keeps them equal)."""


class _LimitDefault:
    """The default of one field of :class:`~courselib.grading.grader.Limits`, read when the help is shown."""

    def __init__(self, field: str):
        self.field = field

    def __str__(self) -> str:
        return str(getattr(grading.grader.Limits(), self.field))


def _cmd_labs(args) -> int:
    for lab in course.list_labs(args.course_dir):
        parts = course.lab_parts(lab, args.course_dir)
        print(f"{lab}: {len(parts)} graded parts, {sum(p for _, p in parts):g} points")
    return 0


def _cmd_tiers(args) -> int:
    course.check_lab(args.lab, course.find_course_dir(args.course_dir))  # before importing the grader
    report = grading.batch.calibrate(args.lab, args.course_dir, sandboxed=not args.no_sandbox)
    print(f"{args.lab}: how each part is judged (the lab's solution graded as every submission is)")
    for gid, points in report["parts"]:
        tier = report["tiers"][gid]
        why = report["reasons"].get(gid, "")
        print(f"  {gid:<24} {points:>5g} pts  {tier:<7}" + (f"  {why}" if why else ""))
    state = grading.gradebook.lab_state_dir(course.find_course_dir(args.course_dir), args.lab)
    for page in sorted(state.glob("_calibration*.feedback.html")):
        print(f"the solution's feedback page (what a student who hands it in gets): {page}")
    return 0


def _cmd_release(args) -> int:
    for lab in args.labs or course.list_labs(args.course_dir):
        print(f"released {lab} -> {course.release(lab, args.course_dir)}")
    return 0


def _cmd_autograde(args) -> int:
    print(course.AUTOGRADE_NOTICE, flush=True)
    graded = course.autograde(args.lab, args.submissions, args.course_dir)
    print(f"autograded {len(graded)} submission(s) of {args.lab}")
    print(f"grades written to {grading.gradebook.export_grades(args.lab, args.course_dir)}")
    return 0


def _cmd_grade(args) -> int:
    course.check_lab(args.lab, course.find_course_dir(args.course_dir))  # before importing the grader
    given = {f: getattr(args, f) for f in LIMIT_FIELDS if not isinstance(getattr(args, f), _LimitDefault)}
    limits = grading.grader.Limits(**given)
    summary = grading.batch.grade(
        args.lab,
        args.submissions,
        args.course_dir,
        workers=args.workers,
        limits=limits,
        feedback=not args.no_feedback,
        regrade=args.regrade,
        progress=not args.quiet,
        cluster=args.cluster,
        db=args.db,
        sandboxed=not args.no_sandbox,
    )
    print(grading.batch.summary_table(summary))
    if summary.get("leaderboard"):
        print(f"leaderboard: {summary['leaderboard']} (and .csv)")
    return 0


def _cmd_export(args) -> int:
    course.check_lab(args.lab, course.find_course_dir(args.course_dir))
    print(f"grades written to {grading.gradebook.export_grades(args.lab, args.course_dir, db=args.db)}")
    return 0


def _cmd_leaderboard(args) -> int:
    board = grading.leaderboard
    rows = board.grade_challenge(args.submissions, args.out_dir, lab=args.lab)
    for r in rows:
        print(f"{r['student_id']}: {r['status']} score={board.format_cell('score', r['score']) or '-'}")
    return 0


def _cmd_mutants(args) -> int:
    course.check_lab(args.lab, course.find_course_dir(args.course_dir))
    rows = grading.mutants.run_bank(args.lab, args.course_dir, only=args.only, grader=args.grader, workers=args.workers)
    print(grading.mutants.verdict_table(rows))
    bad = [r for r in rows if r["verdict"] not in ("killed", "full-marks")]
    print(f"{args.lab}: {len(rows) - 1} mutants, {len(rows) - 1 - len(bad)} killed, {len(bad)} not")
    return 1 if bad else 0


def _cmd_quiz(args) -> int:
    quiz = grading.quiz
    if args.quiz_command == "render":
        for p in quiz.write_pages(args.bank, args.answer_key, answers=args.answer_key is not None):
            print(p)
        return 0
    res = quiz.grade(quiz.read_answers(Path(args.answers)), chapter=args.chapter, path=args.bank)
    for qid, ok in res["results"].items():
        if qid in res["invalid"]:  # an ambiguous number ("1,234"): unscored, the student writes it again
            print(f"UNREAD {qid}: {res['invalid'][qid]}")
        else:
            print(f"{'ok   ' if ok else 'WRONG'} {qid}")
    print(f"score: {res['score']}/{res['total']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="courselib", description="On-device ML course tools (instructors).")
    parser.add_argument("--course-dir", default=None, help="the nbgrader course folder (default: ./ or ./labs)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("labs", help="list the labs and their points").set_defaults(func=_cmd_labs)
    p = sub.add_parser(
        "tiers",
        help="grade the lab's solution as a submission and say how each part is judged "
        "(clean room, sealed run, by hand) and why",
    )
    p.add_argument("lab")
    p.add_argument("--no-sandbox", action="store_true", help="run the solution unsandboxed (trusted code)")
    p.set_defaults(func=_cmd_tiers)
    p = sub.add_parser("release", help="generate student versions (all labs by default)")
    p.add_argument("labs", nargs="*")
    p.set_defaults(func=_cmd_release)
    p = sub.add_parser(
        "autograde",
        help="plain nbgrader, unsandboxed (trusted notebooks): autograde <student>/<lab>/<lab>.ipynb, export grades",
    )
    p.add_argument("lab")
    p.add_argument("submissions")
    p.set_defaults(func=_cmd_autograde)
    p = sub.add_parser("grade", help="grade a folder (or LMS zip) of submissions: parallel, sandboxed, resumable")
    p.add_argument("lab")
    p.add_argument(
        "submissions",
        help="<student>/<lab>/<lab>.ipynb folders or <student>_<lab>.ipynb files, or an LMS zip (Canvas, Moodle)",
    )
    p.add_argument("--workers", type=int, default=2, help="parallel submissions (default 2)")
    d = {f: _LimitDefault(f) for f in LIMIT_FIELDS}  # the grader's own defaults, read only by `grade --help`
    p.add_argument("--cell-timeout", type=int, default=d["cell_timeout"], help="seconds per cell (%(default)s)")
    p.add_argument(
        "--notebook-timeout", type=int, default=d["notebook_timeout"], help="seconds per notebook (%(default)s)"
    )
    p.add_argument("--memory-mb", type=int, default=d["memory_mb"], help="kernel memory, MiB (%(default)s)")
    p.add_argument("--output-kb", type=int, default=d["output_kb"], help="output per cell, KiB (%(default)s)")
    p.add_argument("--no-feedback", action="store_true", help="skip the HTML feedback")
    p.add_argument("--regrade", action="store_true", help="grade again even unchanged submissions")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--cluster",
        default=None,
        help="grade on Dask: tcp://SCHEDULER:8786, or local:N for N worker processes here (default: threads)",
    )
    p.add_argument("--db", default=None, help="gradebook URL, e.g. postgresql://user@host/db (default: the course's)")
    p.add_argument(
        "--no-sandbox",
        action="store_true",
        help="run student code UNISOLATED (no bubblewrap); reported loudly and recorded in the state files",
    )
    p.set_defaults(func=_cmd_grade)
    p = sub.add_parser("export", help="export grades of a lab to grades/LAB.csv")
    p.add_argument("lab")
    p.add_argument("--db", default=None, help="gradebook URL (default: the course's)")
    p.set_defaults(func=_cmd_export)
    p = sub.add_parser("leaderboard", help="score compression-challenge submissions and write the leaderboard")
    p.add_argument("submissions", help="a folder <student>/<lab>/submission/")
    p.add_argument("out_dir")
    p.add_argument("--lab", default="lab06_challenge")
    p.set_defaults(func=_cmd_leaderboard)
    p = sub.add_parser("mutants", help="mutation-test a lab with its bank labs/mutants/LAB.yml")
    p.add_argument("lab")
    p.add_argument("--only", nargs="*", default=None, help="mutant ids (default: all)")
    p.add_argument(
        "--grader", choices=GRADERS, default="nbgrader", help="grade with nbgrader (default) or courselib grade"
    )
    p.add_argument("--workers", type=int, default=2, help="parallel submissions with --grader courselib")
    p.set_defaults(func=_cmd_mutants)
    p = sub.add_parser("quiz", help="the concept-check question bank")
    qsub = p.add_subparsers(dest="quiz_command", required=True)
    q = qsub.add_parser("render", help="regenerate the MyST pages from questions.yml")
    q.add_argument("--bank", default=None)
    q.add_argument("--answer-key", default=None, metavar="DIR", help="write the answer key into DIR (not the book)")
    q = qsub.add_parser("grade", help="grade a YAML/JSON file of {question id: answer}")
    q.add_argument("answers")
    q.add_argument("--chapter", default=None)
    q.add_argument("--bank", default=None)
    p.set_defaults(func=_cmd_quiz)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (course.GradingError, ValueError) as exc:
        print(f"courselib: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
