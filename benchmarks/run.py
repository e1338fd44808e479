"""Run the benchmark scripts and print their tables.

Usage::

    .venv/bin/python benchmarks/run.py                 # every bench_*.py, full size
    .venv/bin/python benchmarks/run.py binary_codes    # one script
    .venv/bin/python benchmarks/run.py --quick book    # reduced sizes (a smoke test)

Each ``benchmarks/bench_<name>.py`` defines ``main(quick: bool = False)`` that prints Markdown tables.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def available() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {available()})")
    parser.add_argument("--quick", action="store_true", help="reduced sizes, for a smoke test")
    args = parser.parse_args(argv)
    names = args.names or available()
    unknown = [n for n in names if n not in available()]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; available: {available()}")
    from _common import machine_line

    print(machine_line() + "\n")
    for name in names:
        t0 = time.perf_counter()
        print(f"## {name}\n", flush=True)
        importlib.import_module(f"bench_{name}").main(quick=args.quick)
        print(f"({name}: {time.perf_counter() - t0:.0f} s)\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
