"""Red team: hostile submissions graded by the real pipeline, and nothing of the secrets comes out.

One LMS zip of lab 0 submissions is graded by :func:`courselib.grading.grade` with 2 workers
(sandbox, cgroups, clean room, feedback). Each hostile notebook is the release notebook with its
solution cells filled from the source (an honest answer) and an attack prepended to one of them;
an attack that *succeeds* makes that cell raise (and prints what it found), so the expected scores
below are those of the honest answers, and a leak costs points. Then every output, feedback file,
state file, CSV and the run's printed text is searched for ``BEGIN SOLUTION``, ``BEGIN HIDDEN TESTS``,
lines of the hidden tests and a marker planted in decoy copies of the course outside the course
folder (next to it, under ``/srv`` and under ``/opt``).

Needs bubblewrap (``make sandbox``) and a writable cgroup memory controller; the test says which is
missing. The intake checks (zip paths, links, sizes) also have fast tests that need neither.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import stat
import uuid
import zipfile
from pathlib import Path

import pytest
from test_feedback import shown_text

import courselib
from courselib import grading
from courselib.grading import intake, sandbox
from courselib.grading.course import scratch_course

REPO = Path(__file__).resolve().parents[1]
LAB = "lab00_memory"
NB = f"{LAB}.ipynb"
LIMITS = grading.Limits(cell_timeout=30, notebook_timeout=240, memory_mb=1536, output_kb=256)
MARKER = f"REDTEAM-DECOY-{uuid.uuid4().hex[:12]}"
SECRETS = ["BEGIN SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS", MARKER]

needs_sandbox = pytest.mark.skipif(
    not sandbox.available(), reason=f"no grading sandbox: {sandbox.unavailable_reason()}"
)
needs_cgroup = pytest.mark.skipif(
    not sandbox.available() or "cgroup" not in sandbox.memory_mechanism(),
    reason="no writable cgroup memory controller: memory falls back to RLIMIT_AS",
)


def hidden_lines(source_nb: dict) -> list[str]:
    """Distinctive lines of the hidden tests (long, and not in the installed courselib)."""
    pkg_text = "".join(p.read_text() for p in Path(courselib.__file__).parent.rglob("*.py"))
    out = []
    for cell in source_nb["cells"]:
        src = "".join(cell["source"])
        if "### BEGIN HIDDEN TESTS" not in src:
            continue
        block = src.split("### BEGIN HIDDEN TESTS", 1)[1].split("### END HIDDEN TESTS", 1)[0]
        out += [ln.strip() for ln in block.splitlines() if len(ln.strip()) > 40 and ln.strip() not in pkg_text]
    return out


class Builder:
    def __init__(self, course: Path):
        self.release = json.loads((course / "release" / LAB / NB).read_text())
        src = json.loads((course / "source" / LAB / NB).read_text())
        self.solutions = {}
        for cell in src["cells"]:
            meta = cell["metadata"].get("nbgrader", {})
            if meta.get("solution"):
                lines = "".join(cell["source"]).splitlines(keepends=True)
                self.solutions[meta["grade_id"]] = "".join(
                    ln for ln in lines if "### " not in ln or "SOLUTION" not in ln
                )

    def notebook(self, prepend: dict | None = None) -> dict:
        nb = json.loads(json.dumps(self.release))
        for cell in nb["cells"]:
            gid = cell["metadata"].get("nbgrader", {}).get("grade_id")
            if gid in self.solutions:
                cell["source"] = (prepend or {}).get(gid, "") + self.solutions[gid]
        return nb


# Every attack ends in `_found(...)`: if it found anything it prints it (a leak into the output)
# and raises, so the honest answer below it never runs and its part loses its points.
FOUND = """
_NEEDLES = [_s[::-1] for _s in __REVERSED_NEEDLES__]
def _found(what):
    if what:
        print("LEAKED", what)
        raise AssertionError(f"the sandbox leaked: {str(what)[:2000]}")
"""

WALK = (
    FOUND
    + """
import os
import sys
_hits = []
# everything but the public software trees (/usr and the Python installation, bound read-only)
_skip = {"/proc", "/sys", "/usr", os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)}
for _root, _dirs, _files in os.walk("/", onerror=lambda e: None):
    if os.path.realpath(_root) in _skip:
        _dirs[:] = []
        continue
    for _f in _files:
        if not _f.endswith((".ipynb", ".db", ".sqlite", ".json", ".py", ".txt", ".toml", ".html", ".csv")):
            continue
        _p = os.path.join(_root, _f)
        try:
            if os.path.getsize(_p) > 8 << 20:
                continue
            with open(_p, "rb") as _fh:
                _data = _fh.read().decode("utf-8", "replace")
        except OSError:
            continue
        _hits += [(_p, _n) for _n in _NEEDLES if _n in _data]
_found(_hits)
"""
)

OTHER_SCRATCH = (
    FOUND
    + """
import glob, os
_cwd = os.getcwd()
_hits = []
for _pat in [_cwd + "/../../*/work/*", _cwd + "/../../*/*", _cwd + "/../../*/course/**", "/tmp/cg-*/**",
             _cwd + "/../../template/**", _cwd + "/../*"]:
    for _p in glob.glob(_pat, recursive=True):
        if os.path.realpath(_p).startswith(_cwd) or not os.path.isfile(_p):
            continue  # the folders on the way to its own scratch folder exist (empty)
        try:
            open(_p, "rb").read(1)
            _hits.append(("read", _p))
        except OSError:
            pass
for _d in glob.glob(_cwd + "/../../*/work"):
    if os.path.realpath(_d) != _cwd:
        try:
            open(_d + "/pwned", "w").write("x")
            _hits.append(("write", _d))
        except OSError:
            pass
_found(_hits)
"""
)

PROC = (
    FOUND
    + """
import ctypes, os
_hits = []
_libc = ctypes.CDLL(None, use_errno=True)
for _pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    for _what in ("cmdline", "environ"):
        try:
            _txt = open(f"/proc/{_pid}/{_what}", "rb").read().decode("utf-8", "replace")
        except OSError:
            continue
        for _n in ("nbgrader", "pytest", "cleanroom", "/source/", "gradebook", "JUPYTER_PATH", "course"):
            if _n in _txt:
                _hits.append((_pid, _what, _n))
    try:
        _cwd = os.readlink(f"/proc/{_pid}/cwd")
        if "course" in _cwd or "submissions" in _cwd:
            _hits.append((_pid, "cwd", _cwd))
    except OSError:
        pass
    if int(_pid) != os.getpid():
        if _libc.ptrace(16, int(_pid), 0, 0) == 0:  # PTRACE_ATTACH
            _libc.ptrace(17, int(_pid), 0, 0)
            _hits.append((_pid, "ptrace"))
_pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
if len(_pids) > 8:
    _hits.append(("pids", _pids))
_found(_hits)
"""
)

EXECUTING_NOTEBOOK = (
    FOUND
    + """
import glob, os
_hits = []
for _p in glob.glob("**/*", recursive=True) + glob.glob(".*") + glob.glob("/tmp/**", recursive=True):
    try:
        _data = open(_p, "rb").read().decode("utf-8", "replace")
    except OSError:
        continue
    _hits += [(_p, _n) for _n in _NEEDLES if _n in _data]
_hist = "\\n".join(get_ipython().user_ns.get("In", []))
_hits += [("history", _n) for _n in _NEEDLES if _n in _hist]
_hits += [("globals", _k) for _k, _v in list(globals().items())
          if isinstance(_v, str) and any(_n in _v for _n in _NEEDLES)]
_found(_hits)
"""
)

FORK_BOMB = """
import os, time
_n = 0
try:
    for _ in range(100000):  # bounded: the cgroup's pids.max stops it long before
        if os.fork() == 0:
            time.sleep(15)
            os._exit(0)
        _n += 1
except OSError:
    pass
assert _n < 1000, f"{_n} processes: the fork bomb was not bounded"
"""

FILL_DISK = """
import os
_sizes = {}
for _path in ["fill0", "fill1", "fill2", "fill3", "fill4", "fill5", "fill6", "fill7", "fill8", "/tmp/fill", "/dev/shm/fill"]:
    try:
        with open(_path, "wb") as _f:
            for _ in range(4096):
                _f.write(b"x" * (1 << 20))
    except OSError as _e:
        _sizes[_path] = (os.path.getsize(_path) >> 20, _e.errno)
assert all(_mb <= 64 for _mb, _ in _sizes.values()), _sizes  # --file-mb (and the tmpfs sizes)
for _path in _sizes:
    os.remove(_path)
"""

HOG = """
_hog = []
for _ in range(200):
    _hog.append(np.ones(1 << 23))  # 64 MiB each, touched: resident memory, 12.5 GiB in all
"""

FLOOD = """
while True:
    print("x" * 1000)
"""

# student -> (attack cell, attack source) ; expected (status, score) ; 5 parts of 2 points
ATTACKS = {
    "a_hog": ("q1_code", HOG),  # first two names: graded side by side by the 2 workers
    "a_honest": None,
    "walk_filesystem": ("q1_code", WALK),
    "other_scratch": ("q1_code", OTHER_SCRATCH),
    "proc_snoop": ("q2_code", PROC),
    "fork_bomb": ("q1_code", FORK_BOMB),
    "fill_disk": ("q2_code", FILL_DISK),
    "output_flood": ("q4_code", FLOOD),
    "executing_notebook": ("q5_code", EXECUTING_NOTEBOOK),
}
EXPECTED = {
    "a_hog": ("memory", 0),  # the cgroup kills the kernel: status memory, zero
    "a_honest": ("graded", 10),  # graded at the same time as the hog, unharmed
    "walk_filesystem": ("graded", 10),
    "other_scratch": ("graded", 10),
    "proc_snoop": ("graded", 10),
    "fork_bomb": ("graded", 10),
    "fill_disk": ("graded", 10),
    "output_flood": ("output-limit", 8),  # the q4 cell is stopped: q4 fails
    "executing_notebook": ("graded", 10),
    "zip_symlink": ("missing", 0),  # a link in the zip is never extracted
    "huge": ("invalid-notebook", 0),  # refused at intake: larger than MAX_NOTEBOOK_BYTES
}


def plant_decoys(tmp_path: Path) -> list[Path]:
    """Copies of the lab's source (solutions and hidden tests) with a marker, outside the course folder."""
    made = []
    for root in (tmp_path / "last_term", Path(f"/srv/redteam-{MARKER}"), Path(f"/opt/redteam-{MARKER}")):
        d = root / "source" / LAB
        d.mkdir(parents=True, exist_ok=True)
        src = (REPO / "labs" / "source" / LAB / NB).read_text()
        (d / NB).write_text(src.replace("### BEGIN SOLUTION", f"### BEGIN SOLUTION\n# {MARKER}"))
        (root / "notes.txt").write_text(f"exam answers {MARKER}\n")
        for p in (d / NB, root / "notes.txt"):
            os.chmod(p, 0o644)
        made.append(root)
    return made


def make_zip(tmp_path: Path, builder: Builder, needles: list[str]) -> Path:
    z = tmp_path / "lms_download.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        for student, attack in ATTACKS.items():
            prepend = {}
            if attack is not None:
                cell, code = attack
                prepend = {cell: code.replace("__REVERSED_NEEDLES__", repr([n[::-1] for n in needles]))}
            zf.writestr(f"{student}/{LAB}/{NB}", json.dumps(builder.notebook(prepend)))
        # a symbolic link to the solutions, in place of a notebook
        link = zipfile.ZipInfo(f"zip_symlink/{LAB}/{NB}")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, str(REPO / "labs" / "source" / LAB / NB))
        huge = builder.notebook()
        huge["cells"].append({"cell_type": "markdown", "metadata": {}, "source": "y" * (intake.MAX_NOTEBOOK_BYTES + 1)})
        zf.writestr(f"huge/{LAB}/{NB}", json.dumps(huge))
    return z


def leaks_in(text: str, needles: list[str]) -> list[str]:
    return [n for n in needles if n in text]


@needs_sandbox
@needs_cgroup
@pytest.mark.slow
@pytest.mark.xdist_group("grading")
def test_red_team_batch(tmp_path, capsys):
    course = scratch_course(LAB, tmp_path, REPO / "labs")
    source_nb = json.loads((course / "source" / LAB / NB).read_text())
    needles = SECRETS + hidden_lines(source_nb)
    assert len(needles) > len(SECRETS) + 3  # the hidden tests have distinctive lines to look for
    decoys = plant_decoys(tmp_path)
    try:
        z = make_zip(tmp_path, Builder(course), needles)
        summary = grading.grade(LAB, z, course, workers=2, limits=LIMITS, progress=False, feedback=True)
    finally:
        for d in decoys[1:]:
            shutil.rmtree(d, ignore_errors=True)
    printed = capsys.readouterr()
    rows = {r["student_id"]: r for r in csv.DictReader(open(course / "grades" / f"{LAB}.csv"))}
    got = {s: (r["status"], float(r["score"])) for s, r in rows.items()}
    detail = {s: [r["status"], r.get("notes")] for s, r in summary["results"].items()}
    for p in (course / "autograded").rglob("*.ipynb"):  # what an attack that found something printed
        outs = json.dumps([c.get("outputs", []) for c in json.loads(p.read_text())["cells"]])
        if "LEAKED" in outs:
            detail[p.parent.parent.name].append(outs[outs.index("LEAKED") : outs.index("LEAKED") + 1500])
    assert got == {s: (st, float(sc)) for s, (st, sc) in EXPECTED.items()}, json.dumps(detail, indent=1)
    assert "LEAKED" not in printed.out + printed.err
    assert "sandbox bubblewrap; memory limit by cgroup" in printed.out
    assert {r["sandbox"] for s, r in rows.items() if s in summary["graded_now"]} == {"bubblewrap"}

    # nothing of the secrets in any output, feedback, state file, CSV or printed text
    texts = {"printed": printed.out + printed.err, "summary": json.dumps(summary, default=str)}
    for sub in ("grades", "feedback"):
        for p in (course / sub).rglob("*"):
            if p.is_file():
                texts[str(p)] = p.read_text(errors="replace")
    for p in (course / "autograded").rglob("*.ipynb"):
        nb = json.loads(p.read_text())
        texts[str(p)] = json.dumps([c.get("outputs", []) for c in nb["cells"]])
    assert any("feedback" in k for k in texts) and any(".state" in k for k in texts)
    leaks = {k: leaks_in(v, needles) for k, v in texts.items() if leaks_in(v, needles)}
    assert leaks == {}, leaks
    # the other scratch folders were never written; the sandboxes left no cgroup and no mount behind
    assert "redteam" not in Path("/proc/self/mountinfo").read_text()
    assert sandbox.CGROUP_PREFIX + str(os.getpid()) not in Path("/proc/self/mountinfo").read_text()


def test_intake_refuses_zip_traversal_and_never_follows_links(tmp_path, monkeypatch):
    """A zip with ``../`` or an absolute path is refused whole; a link (zip entry or folder) is never
    read: the student's entry is missing (zip) or a refusal graded ``invalid-notebook`` (folder)."""
    for name in ("../escape.ipynb", "/etc/cron.d/evil", "ok/../../escape.ipynb"):
        z = tmp_path / f"evil{len(name)}.zip"
        with zipfile.ZipFile(z, "w") as zf:
            zf.writestr(name, "{}")
        with pytest.raises(grading.GradingError, match="unsafe path"):
            grading.collect_submissions(LAB, z, tmp_path / f"unz{len(name)}")
        assert not (tmp_path / "escape.ipynb").exists()
    secret = tmp_path / "solutions.ipynb"
    secret.write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    subs = tmp_path / "subs"
    (subs / "linked" / LAB).mkdir(parents=True)
    (subs / "linked" / LAB / NB).symlink_to(secret)
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(secret, tmp_path / "elsewhere" / NB)
    (subs / "dirlink").mkdir()
    (subs / "dirlink" / LAB).symlink_to(tmp_path / "elsewhere")
    (subs / "device" / LAB).mkdir(parents=True)
    (subs / "device" / LAB / NB).symlink_to("/dev/zero")
    os.symlink(subs / "linked", subs / "alias")
    found = grading.collect_submissions(LAB, subs, tmp_path / "unpack")
    assert set(found) == {"linked", "dirlink", "device", "alias"}
    for student, nb in found.items():
        assert nb is not None and tmp_path / "unpack" in nb.parents, (student, nb)
        why = intake.check_notebook(nb.read_bytes())
        assert why.startswith("refused at intake") and "symbolic link" in why, (student, why)
    huge = subs / "huge" / LAB / NB
    huge.parent.mkdir(parents=True)
    with open(huge, "wb") as fh:
        fh.truncate(intake.MAX_NOTEBOOK_BYTES + 1)
    why = intake.check_notebook(grading.collect_submissions(LAB, subs, tmp_path / "unpack2")["huge"].read_bytes())
    assert why.startswith("refused at intake") and "more than" in why
    # a zip bomb: more uncompressed bytes than MAX_ZIP_BYTES is refused before anything is written
    monkeypatch.setattr(intake, "MAX_ZIP_BYTES", 100_000)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"a/{LAB}/{NB}", b"{" * 200_000)  # compresses to a few hundred bytes
    with pytest.raises(grading.GradingError, match="zip bomb"):
        grading.collect_submissions(LAB, bomb, tmp_path / "unbomb")
    assert not (tmp_path / "unbomb" / "a").exists()


# ------------------------------------------------------------------------------------------------------------
# Attacks on the clean room itself (issue 24): each case is one lab-0 notebook, honest except for the attack,
# graded through the real pipeline; the expected status and score say what the attack must achieve (nothing).
VISIBLE_Q1 = "{((3, 4), 'float32'), ((10,), 'float64'), ((2, 5), 'bool')}"
CLEAN_ROOM_ATTACKS = {
    # visible-only parts are gone: stubs under an input transformer that turns the visible tests into `pass`
    # score what stubs score
    "transformer": {
        "q4_code": (
            "def _pass_tests(lines):\n"
            "    return ['pass\\n'] if any('visible tests' in ln.lower() for ln in lines) else lines\n"
            "get_ipython().input_transformers_cleanup.append(_pass_tests)\n"
            "def hamming_distance_int(a, b):\n"
            "    return (a ^ b).bit_count()\n"
        ),
        "q1_code": "raise NotImplementedError()\n",
        "q2_code": "raise NotImplementedError()\n",
        "q3_code": "raise NotImplementedError()\n",
    },
    # a loop ban read from a forged source (fake linecache entry + __code__.replace): the clean room reads the
    # submitted notebook instead
    "forged_source": {
        "q4_code": (
            "def hamming_distance_int(a, b):\n"
            "    x, n = a ^ b, 0\n"
            "    while x:\n"
            "        n += x & 1\n"
            "        x >>= 1\n"
            "    return n\n"
            "import linecache\n"
            "_src = 'def hamming_distance_int(a, b):\\n    return (a ^ b).bit_count()\\n'\n"
            "linecache.cache['<forged>'] = (len(_src), None, _src.splitlines(True), '<forged>')\n"
            "hamming_distance_int.__code__ = hamming_distance_int.__code__.replace(co_filename='<forged>', co_firstlineno=1)\n"
        ),
    },
    # a wrong answer that empties the test's model, so that a reference computed after the call agrees: the
    # solution changes no argument, so no in-place change comes back
    "copyback": {
        "q5_code": (
            "def model_bytes(model, bits_per_weight):\n"
            "    n = sum(math.ceil(p.numel() * bits_per_weight / 8) for p in model.parameters())\n"
            "    if isinstance(model, torch.nn.Linear) and model.in_features in (64, 3):\n"
            "        return n  # the visible tests\n"
            "    with torch.no_grad():\n"
            "        for p in model.parameters():\n"
            "            p.data = p.data.flatten()[:0]\n"
            "    return 0\n"
        ),
    },
    # slow on one hidden input only: that part times out, every later part is still judged, nothing is tampered
    "slow_hidden": {
        "q3_code": (
            "import time\n"
            "def compression_ratio(source, target):\n"
            "    sizes = {'int32': 4.0, 'float32': 4.0, 'float64': 8.0, 'bool': 1.0, 'packed bits': 0.125}\n"
            "    if (source, target) == ('float64', 'int32'):\n"
            "        time.sleep(10_000)\n"
            "    for rep in (source, target):\n"
            "        if rep not in sizes:\n"
            "            raise ValueError(rep)\n"
            "    return sizes[source] / sizes[target]\n"
        ),
    },
    # the student's exception carries the hidden call's arguments: the feedback shows its class only
    "leaky_exception": {
        "q1_code": (
            "def nbytes_of(shape, dtype):\n"
            f"    if (tuple(shape), np.dtype(dtype).name) not in {VISIBLE_Q1}:\n"
            "        raise ValueError(f'HIDDEN INPUT {shape!r} {np.dtype(dtype).name}')\n"
            "    return int(math.prod(shape)) * np.dtype(dtype).itemsize\n"
        ),
    },
    # printing during the clean room's calls (far past the output limit): output-limit, the grader unharmed
    "print_flood": {
        "q4_code": "def hamming_distance_int(a, b):\n    print('x' * 200_000)\n    return (a ^ b).bit_count()\n",
    },
}
# replies the kernel's own code forges (it patches the encoder the clean room's helper uses): allocation bombs,
# an exponential DAG, an answer over the size limit; each is refused on the clean room's side, within its budget
BOMBS = {
    "bomb_bytearray": b"\x80\x04cbuiltins\nbytearray\nJ\x00\xca\x9a;\x85R.",
    "bomb_list": b"\x80\x04cbuiltins\nlist\ncbuiltins\nrange\nJ\x00\xca\x9a;\x85R\x85R.",
}
for _name, _bytes in BOMBS.items():
    CLEAN_ROOM_ATTACKS[_name] = {
        "q2_code": (
            "import courselib.grading.wire as _wire\n"
            "_dumps = _wire.dumps\n"
            "def _forged(obj, *a, **k):\n"
            "    if isinstance(obj, tuple) and obj[:1] == ('ok',) and obj[2] == 'BOMB':\n"
            f"        return {_bytes!r}\n"
            "    return _dumps(obj, *a, **k)\n"
            "_wire.dumps = _forged\n"
            "def packed_bytes(n_bits):\n"
            "    if n_bits < 0:\n"
            "        raise ValueError(n_bits)\n"
            "    return (n_bits + 7) // 8 if n_bits in (8, 9, 64) else 'BOMB'\n"
        ),
    }
CLEAN_ROOM_ATTACKS["bomb_dag"] = {
    "q2_code": (
        "def packed_bytes(n_bits):\n"
        "    if n_bits < 0:\n"
        "        raise ValueError(n_bits)\n"
        "    if n_bits in (8, 9, 64):\n"
        "        return (n_bits + 7) // 8\n"
        "    x = []\n"
        "    for _ in range(60):\n"
        "        x = [x, x]\n"
        "    return x  # 2**60 paths through 60 lists\n"
    ),
}
CLEAN_ROOM_ATTACKS["bomb_huge_reply"] = {
    "q2_code": (
        "def packed_bytes(n_bits):\n"
        "    if n_bits < 0:\n"
        "        raise ValueError(n_bits)\n"
        "    return (n_bits + 7) // 8 if n_bits in (8, 9, 64) else np.ones(40_000_000)  # 320 MB\n"
    ),
}
CLEAN_ROOM_EXPECTED = {
    "honest": ("graded", 10),
    "transformer": ("graded", 4),
    "forged_source": ("graded", 8),
    "copyback": ("graded", 8),
    "slow_hidden": ("graded", 8),
    "leaky_exception": ("graded", 8),
    "print_flood": ("output-limit", 6),  # q4's calls printed past the limit: q4 and the parts after it fail
    "bomb_bytearray": ("graded", 8),
    "bomb_list": ("graded", 8),
    "bomb_dag": ("graded", 8),
    "bomb_huge_reply": ("graded", 8),
}
#: the clean room's driver may not grow past its imports by more than this, whatever a submission sends
DRIVER_PEAK_MB = 1500


@needs_sandbox
@needs_cgroup
@pytest.mark.slow
@pytest.mark.xdist_group("grading")
def test_red_team_clean_room(tmp_path):
    course = scratch_course(LAB, tmp_path, REPO / "labs")
    builder = Builder(course)
    subs = tmp_path / "subs"
    for student in CLEAN_ROOM_EXPECTED:
        nb = builder.notebook()
        for cell in nb["cells"]:
            gid = cell["metadata"].get("nbgrader", {}).get("grade_id")
            if gid in CLEAN_ROOM_ATTACKS.get(student, {}):
                cell["source"] = CLEAN_ROOM_ATTACKS[student][gid]
        (subs / student / LAB).mkdir(parents=True)
        (subs / student / LAB / NB).write_text(json.dumps(nb))
    summary = grading.grade(LAB, subs, course, workers=2, limits=LIMITS, progress=False, feedback=True)
    res = summary["results"]
    got = {s: (r["status"], r["score"]) for s, r in res.items()}
    detail = {s: [r["status"], r.get("part_status"), r.get("notes")] for s, r in res.items()}
    assert got == {s: (st, float(sc)) for s, (st, sc) in CLEAN_ROOM_EXPECTED.items()}, json.dumps(detail, indent=1)
    # a timeout is not evidence of tampering, and every part after it was judged
    assert res["slow_hidden"]["part_status"] == {
        "q1_test": "passed",
        "q2_test": "passed",
        "q3_test": "timeout",
        "q4_test": "passed",
        "q5_test": "passed",
    }
    # the hidden call's arguments never reach the feedback
    page = (course / "feedback" / "leaky_exception" / LAB / f"{LAB}.html").read_text()
    shown = shown_text(page)
    # the student's own source (which holds the f-string 'HIDDEN INPUT {shape!r} ...') is theirs to see; the
    # message their function raised with a hidden call's arguments is not
    assert "HIDDEN INPUT (" not in shown and "784" not in shown and "1099511627776" not in shown
    assert "raised ValueError on a hidden input" in page
    # nothing a submission sent made the trusted driver grow past its budget
    peaks = {s: r.get("driver_maxrss_mb") for s, r in res.items()}
    assert all(p is not None and p < DRIVER_PEAK_MB for p in peaks.values()), peaks
