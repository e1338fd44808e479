"""The ``courselib`` command: the instructor's entry point to the lab pipeline.

Run it from the ``labs/`` course directory (or the repository root)::

    courselib release [LAB ...]            # student versions into labs/release/
    courselib autograde LAB SUBMISSIONS    # nbgrader autograde + feedback for <student>/<LAB>/<LAB>.ipynb
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
    p = sub.add_parser("export", help="export grades of a lab to grades/LAB.csv")
    p.add_argument("lab")
    p.set_defaults(func=_cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except grading.GradingError as exc:
        print(f"courselib: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
