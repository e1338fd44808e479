"""The grading sandbox (:mod:`courselib.grading.sandbox`) on its own: bubblewrap's allow-list root,
identity, namespaces, the scratch tmpfs, cgroup memory and process limits, and its refusals.

Every test runs real processes through ``sandbox.command`` (the same path the grader's kernel takes).
Needs Debian's ``bubblewrap`` (``make sandbox`` installs it as root); the cgroup tests need a
writable memory (and pids) controller.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import courselib
from courselib.grading import batch, grader, sandbox

REPO = Path(__file__).resolve().parents[1]
PKG = Path(courselib.__file__).resolve().parent

pytestmark = [
    pytest.mark.skipif(not sandbox.available(), reason=f"no grading sandbox: {sandbox.unavailable_reason()}"),
    pytest.mark.xdist_group("grading"),
]
CGROUPS = "cgroup" in sandbox.memory_mechanism() if sandbox.available() else False
needs_cgroup = pytest.mark.skipif(not CGROUPS, reason="no writable cgroup memory controller (RLIMIT_AS fallback)")


def run(tmp_path: Path, code: str, *, timeout: int = 120, **cfg_kw) -> tuple[subprocess.CompletedProcess, Path]:
    """Run ``code`` with the venv's Python inside a sandbox whose scratch folder is ``tmp_path/work``."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (work / "given.txt").write_text("release file")
    for p in (work, work / "given.txt"):
        os.chown(p, sandbox.NOBODY, sandbox.NOBODY)
    kw = dict(
        work_dir=str(work),
        keep=grader.kept_paths(),
        hide=[str(tmp_path), str(REPO), "/tmp", "/root"],
        memory_bytes=512 << 20,
    )
    kw.update(cfg_kw)
    cfg = sandbox.SandboxConfig(**kw).save(tmp_path / "cfg.json")
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(code))
    proc = subprocess.run(
        sandbox.command(cfg, [sys.executable, "-c", script.read_text()]),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc, cfg


def last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.stdout.strip(), proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def decoys(tmp_path):
    """Secrets the sandbox must not show: a course copy next to the work dir, under /srv and /opt."""
    made = []
    for d in (tmp_path / "other-course", Path("/srv/courselib-decoy"), Path("/opt/courselib-decoy")):
        (d / "source").mkdir(parents=True, exist_ok=True)
        (d / "source" / "lab.ipynb").write_text("### BEGIN SOLUTION\nDECOY-7f3a\n### END SOLUTION\n")
        os.chmod(d / "source" / "lab.ipynb", 0o644)
        made.append(d)
    yield made
    import shutil

    for d in made[1:]:
        shutil.rmtree(d, ignore_errors=True)


PROBE = """
import ctypes, json, os, socket, sys
res = {}
def t(name, f):
    try:
        r = f()
        res[name] = "ok" if r is None else r
    except OSError as e:
        res[name] = type(e).__name__
res["root"] = sorted(os.listdir("/"))
res["work_main"] = sorted(os.listdir("/work/main")) if os.path.isdir("/work/main") else None
res["etc"] = sorted(os.listdir("/etc"))
res["passwd"] = open("/etc/passwd").read()
res["uid"] = [os.getuid(), os.geteuid(), os.getgid(), os.getegid(), os.getgroups()]
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
res["caps"] = [status["CapEff"].strip(), status["CapPrm"].strip(), status["CapBnd"].strip()]
res["no_new_privs"] = status["NoNewPrivs"].strip()
res["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
res["cmdlines"] = [open(f"/proc/{p}/cmdline", "rb").read().decode(errors="replace") for p in res["pids"]]
t("environ1", lambda: open("/proc/1/environ", "rb").read().decode(errors="replace"))
libc = ctypes.CDLL(None, use_errno=True)
res["ptrace1"] = libc.ptrace(16, 1, 0, 0)  # PTRACE_ATTACH to the sandbox's pid 1 (bwrap, same uid)
if res["ptrace1"] == 0:
    libc.ptrace(17, 1, 0, 0)  # detach again, or the reaper stays stopped
res["ptrace1_errno"] = ctypes.get_errno()
buf = ctypes.create_string_buffer(8)
iov = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 8)
res["vm_readv"] = libc.syscall(310, 1, iov, 1, iov, 1, 0)  # process_vm_readv of pid 1
res["unshare_user"] = libc.unshare(0x10000000)  # CLONE_NEWUSER: disabled inside
res["ifaces"] = sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:])
t("net_host", lambda: socket.create_connection(("127.0.0.1", PORT), timeout=3).close())
t("net_out", lambda: socket.create_connection(("1.1.1.1", 53), timeout=3).close())
for name, path in DECOYS.items():
    t(name, lambda p=path: open(p).read())
t("repo_git", lambda: os.listdir(REPO + "/.git"))
t("repo_labs", lambda: os.listdir(REPO + "/labs"))
t("write_usr", lambda: open("/usr/pwned", "w").close())
t("write_pkg", lambda: open(PKG + "/pwned.py", "w").close())
t("write_venv", lambda: open(sys.prefix + "/pwned", "w").close())
t("write_work", lambda: open("mine.txt", "w").write("x") and None)
t("write_given", lambda: open("given.txt", "a").write("x") and None)
t("write_tmp", lambda: open("/tmp/x", "w").write("x") and None)
t("write_shm", lambda: open("/dev/shm/x", "w").write("x") and None)
res["cwd"] = os.getcwd()
res["work_list"] = sorted(os.listdir("."))
import courselib, courselib.memory
res["courselib"] = courselib.__file__
res["hostname"] = os.uname().nodename
print(json.dumps(res))
"""


def test_allow_list_root_identity_namespaces(tmp_path, decoys):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    decoy_files = {f"decoy{i}": str(d / "source" / "lab.ipynb") for i, d in enumerate(decoys)}
    head = f"PORT = {port}\nDECOYS = {decoy_files!r}\nREPO = {str(REPO)!r}\nPKG = {str(PKG)!r}\n"
    try:
        proc, _ = run(tmp_path, head + PROBE)
    finally:
        listener.close()
    res = last_json(proc)
    # an empty root: the system, the Python installation's path, the repository's two bound folders
    assert set(res["root"]) <= {
        "usr",
        "bin",
        "sbin",
        "lib",
        "lib32",
        "lib64",
        "libx32",
        "etc",
        "proc",
        "dev",
        "tmp",
    } | {Path(p).parts[1] for p in grader.kept_paths()}, res["root"]
    assert "srv" not in res["root"] and "opt" not in res["root"] and "home" not in res["root"]
    assert res["work_main"] is None or set(res["work_main"]) <= {"courselib", ".venv"}, res["work_main"]
    assert "shadow" not in res["etc"] and "gshadow" not in res["etc"] and "hostname" not in res["etc"]
    assert [ln.split(":")[0] for ln in res["passwd"].splitlines()] == ["root", "nobody"]
    for name in decoy_files:
        assert res[name] == "FileNotFoundError", (name, res[name])
    assert res["repo_git"] == "FileNotFoundError" and res["repo_labs"] == "FileNotFoundError"
    # nobody, no capabilities, no new privileges, no nested user namespace
    assert res["uid"] == [65534, 65534, 65534, 65534, [65534]] or res["uid"][:4] == [65534] * 4
    assert res["caps"] == ["0000000000000000"] * 3 and res["no_new_privs"] == "1"
    assert res["unshare_user"] == -1
    # its own pid namespace: bwrap's reaper and the probe; nothing of the grader
    assert len(res["pids"]) <= 3 and res["ptrace1"] == -1 and res["ptrace1_errno"] == 1  # EPERM (seccomp)
    assert res["vm_readv"] == -1
    assert all(c.split("\0")[0] in ("/usr/bin/bwrap", sys.executable) for c in res["cmdlines"]), res["cmdlines"]
    assert not any("test_sandbox.py" in c or "-m\0pytest" in c for c in res["cmdlines"])
    assert "PYTEST" not in res["environ1"] and "COURSE" not in res["environ1"]
    # its own network namespace: only its own loopback, no host port, no outside
    assert res["ifaces"] == ["lo"] and res["net_host"] != "ok" and res["net_out"] != "ok"
    assert res["hostname"] == "sandbox"
    # writable: the scratch folder, /tmp, /dev/shm; never /usr, the package or the venv
    assert res["write_usr"] in ("OSError", "PermissionError") and res["write_pkg"] in ("OSError", "PermissionError")
    assert res["write_venv"] in ("OSError", "PermissionError")
    assert res["write_work"] == res["write_given"] == res["write_tmp"] == res["write_shm"] == "ok"
    assert res["cwd"] == str(tmp_path / "work") and "given.txt" in res["work_list"]
    # an editable install imports from the package directory, without the repository around it
    assert res["courselib"] == str(PKG / "__init__.py")
    # the student's writes stayed in the scratch tmpfs: the host folder is as it was, nothing left
    work = tmp_path / "work"
    assert sorted(p.name for p in work.iterdir()) == ["given.txt"]
    assert (work / "given.txt").read_text() == "release file"
    assert not (PKG / "pwned.py").exists()
    assert str(work) not in Path("/proc/self/mountinfo").read_text()


def test_disk_file_and_tmp_limits(tmp_path):
    proc, _ = run(
        tmp_path,
        """
        import json, os
        res = {}
        for path in ["big", "/tmp/big", "/dev/shm/big"]:
            try:
                with open(path, "wb") as f:
                    for _ in range(200):
                        f.write(b"x" * (1 << 20))
                res[path] = "ok"
            except OSError as e:
                res[path] = [e.errno, os.path.getsize(path) >> 20]
        n = 0
        try:
            for n in range(20000):
                with open(f"f{n}", "wb") as f:
                    f.write(b"y" * 4096)
        except OSError as e:
            res["many"] = [e.errno, n]
        print(json.dumps(res))
        """,
        file_bytes=16 << 20,
        disk_bytes=32 << 20,
        tmp_bytes=8 << 20,
    )
    res = last_json(proc)
    import errno

    assert res["big"] == [errno.EFBIG, 16]  # RLIMIT_FSIZE
    assert res["/tmp/big"][0] in (errno.ENOSPC, errno.EFBIG) and res["/tmp/big"][1] <= 8
    assert res["/dev/shm/big"][0] in (errno.ENOSPC, errno.EFBIG) and res["/dev/shm/big"][1] <= 8
    assert res["many"][0] == errno.ENOSPC and res["many"][1] < 32 * 256  # the 32 MiB scratch tmpfs is full
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["given.txt"]


@needs_cgroup
def test_resident_memory_limit_kills_and_is_reported(tmp_path):
    proc, cfg = run(
        tmp_path,
        """
        blocks = []
        for i in range(64):
            blocks.append(bytearray(32 << 20))  # touched: resident, not just reserved
            print(i, flush=True)
        print("survived")
        """,
        memory_bytes=256 << 20,
    )
    assert "survived" not in proc.stdout
    assert proc.returncode != 0
    steps = [int(s) for s in proc.stdout.split() if s.isdigit()]
    assert 3 <= max(steps) < 10  # killed between 128 and 320 MiB
    assert sandbox.oom_kills(cfg) == 1
    # the address space is not limited (the cgroup limits resident memory)
    proc, cfg = run(
        tmp_path,
        "import mmap, resource; m = mmap.mmap(-1, 4 << 30); print(resource.getrlimit(resource.RLIMIT_AS)[0])",
        memory_bytes=256 << 20,
    )
    assert proc.returncode == 0 and int(proc.stdout.split()[-1]) == -1
    assert sandbox.oom_kills(cfg) == 1  # unchanged: nothing was killed the second time
    assert not _leftover_groups()


@needs_cgroup
def test_fork_bomb_is_bounded_by_pids(tmp_path):
    proc, _ = run(
        tmp_path,
        """
        import os, time
        n = 0
        try:
            for _ in range(100000):  # bounded: the sandbox's pids.max stops it long before
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                n += 1
        except OSError as e:
            print("stopped", n, e.errno)
        """,
        nproc=64,
        timeout=60,
    )
    words = proc.stdout.split()
    assert words[0] == "stopped" and int(words[1]) < 64, proc.stdout + proc.stderr
    # the sleeping children died with the sandbox: its group is gone
    assert not _leftover_groups()


def _leftover_groups() -> list[str]:
    own = sandbox._own_cgroups()
    out = []
    for mp, fstype, _, opts in sandbox._mounts():
        for c in ("memory", "pids"):
            if fstype == "cgroup" and c in opts.split(",") and c in own:
                root = Path(mp) / own[c].lstrip("/")
                out += [
                    str(d)
                    for d in root.glob(f"{sandbox.CGROUP_PREFIX}*")
                    if d.name.removeprefix(sandbox.CGROUP_PREFIX).isdigit()
                    and int(d.name.removeprefix(sandbox.CGROUP_PREFIX)) != os.getpid()
                    and not sandbox._alive(int(d.name.removeprefix(sandbox.CGROUP_PREFIX)))
                ]
    return out


def test_refuses_to_bind_a_folder_that_holds_a_secret(tmp_path):
    proc, _ = run(tmp_path, "print('ran')", keep=[*grader.kept_paths(), str(REPO)], hide=[str(REPO / "labs")])
    assert proc.returncode != 0 and "ran" not in proc.stdout
    assert "refusing to bind" in proc.stderr and str(REPO / "labs") in proc.stderr


def test_kernelspec_interrupts_by_message(tmp_path):
    spec = json.loads((sandbox.write_kernelspec(tmp_path, "k", tmp_path / "c.json") / "kernel.json").read_text())
    assert spec["interrupt_mode"] == "message"
    assert spec["argv"][1:] == [sandbox._SELF, "kernel", str(tmp_path / "c.json"), "{connection_file}"]


def test_no_bubblewrap_refuses_and_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox, "_AVAILABLE", None)
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    assert not sandbox.available() and "bubblewrap" in sandbox.unavailable_reason()
    with pytest.raises(batch.GradingError, match="bubblewrap.*--no-sandbox"):
        batch.grade("lab01_binary_codes", tmp_path, REPO / "labs", progress=False)
    monkeypatch.setattr(sandbox, "_AVAILABLE", None)


def test_no_sandbox_is_an_explicit_loud_choice():
    from courselib.grading.cli import build_parser

    args = build_parser().parse_args(["grade", "lab01_binary_codes", "subs", "--no-sandbox"])
    assert args.no_sandbox is True
    assert build_parser().parse_args(["grade", "lab01_binary_codes", "subs"]).no_sandbox is False
    summary = {"results": {}, "graded_now": [], "reused": [], "workers": 1, "seconds": 0.0, "csv": "x.csv"}
    assert "UNISOLATED" not in batch.summary_table(summary)
    assert "UNISOLATED" in batch.summary_table({**summary, "sandboxed": False})


@needs_cgroup
def test_a_killed_supervisor_leaves_no_mount_and_no_cgroup(tmp_path):
    """A kernel manager that gives up waiting SIGKILLs the supervisor: its janitor still detaches the
    scratch tmpfs and removes the cgroup (the sandbox itself dies with its parent)."""
    import signal
    import time

    work = tmp_path / "work"
    work.mkdir()
    os.chown(work, sandbox.NOBODY, sandbox.NOBODY)
    cfg = sandbox.SandboxConfig(work_dir=str(work), keep=grader.kept_paths(), memory_bytes=256 << 20)
    proc = subprocess.Popen(sandbox.command(cfg.save(tmp_path / "cfg.json"), ["/bin/sleep", "60"]))
    name = f"{sandbox.CGROUP_PREFIX}{proc.pid}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and name not in Path("/proc/self/mountinfo").read_text():
        time.sleep(0.1)
    assert name in Path("/proc/self/mountinfo").read_text()
    time.sleep(1)  # bwrap is up
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (
        name in Path("/proc/self/mountinfo").read_text() or any(name in g for g in _all_groups())
    ):
        time.sleep(0.1)
    assert name not in Path("/proc/self/mountinfo").read_text()
    assert not any(name in g for g in _all_groups())
    assert json.loads((tmp_path / "cfg.json.status").read_text())["oom_kills"] == 0


def _all_groups() -> list[str]:
    own = sandbox._own_cgroups()
    out = []
    for mp, fstype, _, opts in sandbox._mounts():
        for c in ("memory", "pids"):
            if fstype == "cgroup" and c in opts.split(",") and c in own:
                out += [str(d) for d in (Path(mp) / own[c].lstrip("/")).glob(f"{sandbox.CGROUP_PREFIX}*")]
    return out
