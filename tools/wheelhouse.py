"""A wheelhouse for an offline install: the installed distributions of this venv, packed back into wheels.

What works offline here (and on CI): the pip cache holds almost nothing and a registry needs the network,
so the wheels come from the course venv itself. Each installed distribution's RECORD lists its files; they
are packed into a wheel with the distribution's own WHEEL tags (so pip accepts it for this Python and
platform only), and a fresh RECORD. Entry-point scripts are left out (pip writes them again). torch is
not packed: its CPU wheel is a file already (`/opt/wheels` here, or TORCH_WHEELS).

Only the dependency closure of what is asked for is packed, evaluated with the environment markers and
extras, so a missing dependency in courselib's metadata stays missing in the fresh venv (that is what
tests/test_wheel.py checks).

    .venv/bin/python tools/wheelhouse.py OUT_DIR "ondevice-ml-courselib[labs]" nbclient ipykernel
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import re
import sys
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

SKIP = {"torch"}  # comes as a wheel file


def closure(requirements: list[str]) -> dict[str, set[str]]:
    """{canonical name: extras} of every distribution needed, from this environment's metadata."""
    needed: dict[str, set[str]] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        new_extras = set(req.extras) - needed.get(name, set())
        if name in needed and not new_extras:
            continue
        needed.setdefault(name, set()).update(req.extras)  # torch too: its dependencies are packed
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{name} is needed but not installed in this venv") from None
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None:
                todo.append(sub)
                continue
            env = default_environment()
            for extra in [""] + sorted(needed[name]):
                env["extra"] = extra
                if sub.marker.evaluate(env):
                    todo.append(Requirement(str(sub).split(";")[0]))
                    break
    return needed


def _hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def repack(name: str, out: Path) -> Path:
    """Pack the installed distribution `name` into a wheel in `out`; returns its path."""
    dist = metadata.distribution(name)
    info_dir = next(Path(str(f)).parts[0] for f in dist.files if str(f).split("/")[0].endswith(".dist-info"))
    wheel_meta = dist.read_text("WHEEL") or ""
    tags = [t.strip() for t in re.findall(r"^Tag:\s*(.+)$", wheel_meta, re.M)] or ["py3-none-any"]
    parts = [[], [], []]
    for tag in tags:
        for i, piece in enumerate(tag.split("-")):
            if piece not in parts[i]:
                parts[i].append(piece)
    stem = info_dir.removesuffix(".dist-info")  # already escaped: name_with_underscores-version
    target = out / f"{stem}-{'-'.join('.'.join(p) for p in parts)}.whl"
    if target.exists():
        return target
    site = Path(dist.locate_file(""))
    data_dir = f"{stem}.data"
    entry_scripts = {ep.name for ep in dist.entry_points if ep.group in ("console_scripts", "gui_scripts")}
    records = []
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")  # two builds at once each write their own
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
        for f in dist.files:
            rel = str(f)
            if "__pycache__" in rel or rel.endswith(".pyc"):
                continue
            if rel.startswith(f"{info_dir}/") and rel.split("/")[-1] in (
                "RECORD",
                "INSTALLER",
                "REQUESTED",
                "direct_url.json",
            ):
                continue
            src = (site / rel).resolve()
            if not src.is_file():
                continue
            if rel.startswith("../"):
                prefix_rel = src.relative_to(Path(sys.prefix).resolve()).as_posix()
                if prefix_rel.startswith("bin/"):
                    if src.name in entry_scripts:
                        continue
                    arc = f"{data_dir}/scripts/{src.name}"
                else:
                    arc = f"{data_dir}/data/{prefix_rel}"
            else:
                arc = rel
            data = src.read_bytes()
            z.writestr(arc, data)
            records.append((arc, _hash(data), str(len(data))))
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerows(records)
        writer.writerow((f"{info_dir}/RECORD", "", ""))
        z.writestr(f"{info_dir}/RECORD", buf.getvalue())
    tmp.replace(target)
    return target


def build(out: Path, requirements: list[str], own: str = "ondevice-ml-courselib") -> list[Path]:
    """Repack the closure of `requirements` (minus torch and courselib itself) into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(n for n in closure(requirements) if n not in SKIP and n != canonicalize_name(own))
    return [repack(n, out) for n in names]


def main(argv: list[str]) -> int:
    out, *reqs = argv
    wheels = build(Path(out), reqs)
    print(f"{len(wheels)} wheels in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
