"""The ``courselib`` command: the instructor's entry point to the lab pipeline.

Run it from the ``labs/`` course directory (or the repository root)::

    courselib release [LAB ...]            # student versions into labs/release/
    courselib grade LAB SUBMISSIONS [--workers N]
                                           # class scale: parallel, sandboxed, limited, tamper-proof,
                                           # resumable autograding + feedback + grades/LAB.csv
    courselib autograde LAB SUBMISSIONS    # plain nbgrader autograde + feedback (trusted notebooks only)
    courselib export LAB                   # labs/grades/LAB.csv
    courselib labs                         # list the labs
"""

from __future__ import annotations

import argparse
import sys

from . import grading


def _cmd_labs(args) -> int:
    for lab in grading.list_labs(args.course_dir):
        parts = grading.lab_parts(lab, args.course_dir)
        print(f"{lab}: {len(parts)} graded parts, {sum(p for _, p in parts):g} points")
    return 0


def _cmd_release(args) -> int:
    labs = args.labs or grading.list_labs(args.course_dir)
    for lab in labs:
        out = grading.release(lab, args.course_dir)
        print(f"released {lab} -> {out}")
    return 0


def _cmd_autograde(args) -> int:
    graded = grading.autograde(args.lab, args.submissions, args.course_dir)
    print(f"autograded {len(graded)} submission(s) of {args.lab}")
    out = grading.export_grades(args.lab, args.course_dir)
    print(f"grades written to {out}")
    return 0


def _cmd_grade(args) -> int:
    limits = grading.Limits(
        cell_timeout=args.cell_timeout,
        notebook_timeout=args.notebook_timeout,
        memory_mb=args.memory_mb,
        output_kb=args.output_kb,
    )
    summary = grading.grade(
        args.lab,
        args.submissions,
        args.course_dir,
        workers=args.workers,
        limits=limits,
        feedback=not args.no_feedback,
        regrade=args.regrade,
        progress=not args.quiet,
    )
    print(grading.summary_table(summary))
    if summary.get("leaderboard"):
        print(f"leaderboard: {summary['leaderboard']} (and .csv)")
    return 0


def _cmd_export(args) -> int:
    out = grading.export_grades(args.lab, args.course_dir)
    print(f"grades written to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="courselib", description="On-device ML course tools (nbgrader pipeline).")
    parser.add_argument("--course-dir", default=None, help="the nbgrader course folder (default: ./ or ./labs)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("labs", help="list the labs and their points").set_defaults(func=_cmd_labs)
    p = sub.add_parser("release", help="generate student versions (all labs by default)")
    p.add_argument("labs", nargs="*")
    p.set_defaults(func=_cmd_release)
    p = sub.add_parser("autograde", help="autograde a folder <student>/<lab>/<lab>.ipynb and export grades")
    p.add_argument("lab")
    p.add_argument("submissions")
    p.set_defaults(func=_cmd_autograde)
    p = sub.add_parser("grade", help="grade a folder (or LMS zip) of submissions: parallel, sandboxed, resumable")
    p.add_argument("lab")
    p.add_argument("submissions", help="<student>/<lab>/<lab>.ipynb folders, or a zip of them")
    p.add_argument("--workers", type=int, default=2, help="parallel submissions (default 2)")
    d = grading.Limits()
    p.add_argument("--cell-timeout", type=int, default=d.cell_timeout, help=f"seconds per cell ({d.cell_timeout})")
    p.add_argument(
        "--notebook-timeout", type=int, default=d.notebook_timeout, help=f"seconds per notebook ({d.notebook_timeout})"
    )
    p.add_argument("--memory-mb", type=int, default=d.memory_mb, help=f"kernel memory, MiB ({d.memory_mb})")
    p.add_argument("--output-kb", type=int, default=d.output_kb, help=f"output per cell, KiB ({d.output_kb})")
    p.add_argument("--no-feedback", action="store_true", help="skip the HTML feedback")
    p.add_argument("--regrade", action="store_true", help="grade again even unchanged submissions")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_grade)
    p = sub.add_parser("export", help="export grades of a lab to grades/LAB.csv")
    p.add_argument("lab")
    p.set_defaults(func=_cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (grading.GradingError, ValueError) as exc:
        print(f"courselib: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
