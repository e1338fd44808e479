"""Build courselib's sdist and wheel (distribution `ondevice-ml-courselib`) into _build/dist, offline.

The packaging community's two-step build, as `python -m build` does it: the sdist from the repository,
then the wheel from the unpacked sdist (so a file missing from the sdist breaks the wheel here, not on a
user's machine). It calls setuptools' PEP 517 hooks in the venv (no isolated build environment), so no
network is needed. `make book` runs it; the book's Sphinx extension (tools/student_book.py) copies the two
files into the built site at _static/dist/. The release workflow builds the same files with
`python -m build` and publishes them.

    .venv/bin/python tools/build_dist.py            # prints the two paths
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "_build" / "dist"
NORMALIZED = "ondevice_ml_courselib"


def version() -> str:
    text = (REPO / "courselib" / "__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


def _hook(hook: str, out: Path, cwd: Path) -> Path:
    code = f"import sys; from setuptools import build_meta as b; print(b.{hook}(sys.argv[1]))"
    proc = subprocess.run([sys.executable, "-c", code, str(out)], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"setuptools {hook} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return out / proc.stdout.strip().splitlines()[-1]


def sources_newer_than(path: Path) -> bool:
    mtime = path.stat().st_mtime
    files = [REPO / "pyproject.toml", REPO / "README.md", REPO / "LICENSE", *(REPO / "courselib").rglob("*.py")]
    return any(f.exists() and f.stat().st_mtime > mtime for f in files)


def current(out: Path = OUT) -> tuple[Path, Path] | None:
    """The built (wheel, sdist) of the current version, if they exist and are newer than the sources."""
    ver = version()
    wheel = out / f"{NORMALIZED}-{ver}-py3-none-any.whl"
    sdist = out / f"{NORMALIZED}-{ver}.tar.gz"
    if wheel.exists() and sdist.exists() and not sources_newer_than(min(wheel, sdist, key=lambda p: p.stat().st_mtime)):
        return wheel, sdist
    return None


def build(out: Path = OUT) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob(f"{NORMALIZED}-*.whl"), *out.glob(f"{NORMALIZED}-*.tar.gz")]:
        old.unlink()
    sdist = _hook("build_sdist", out, REPO)
    with tempfile.TemporaryDirectory(prefix="courselib-sdist-") as tmp:
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        (unpacked,) = Path(tmp).iterdir()
        wheel = _hook("build_wheel", out, unpacked)
    return wheel, sdist


def ensure(out: Path = OUT) -> tuple[Path, Path]:
    """Build unless the current version's files are already there and up to date."""
    return current(out) or build(out)


def main() -> int:
    force = "--force" in sys.argv[1:]
    wheel, sdist = build() if force else ensure()
    for p in (wheel, sdist):
        print(f"{p.relative_to(REPO)}  {p.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
