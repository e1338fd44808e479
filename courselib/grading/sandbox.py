"""Run untrusted student code in an allow-list sandbox: bubblewrap, cgroups, a private scratch disk.

A sandboxed process is started as::

    python .../courselib/grading/sandbox.py enter CONFIG.json -- CMD ...

``enter`` is a small supervisor that stays outside the sandbox (it runs as the grader, root):

1. it mounts a size-limited ``tmpfs`` over the submission's scratch directory (``work_dir``) and
   copies its files in, so that the student's writes never reach the host disk; the host sees the
   same directory (the kernel's ZeroMQ ``ipc://`` sockets live there) until the sandbox ends, then
   the mount is detached and the original directory is back;
2. it creates one cgroup per sandbox (cgroup v2, or the v1 ``memory`` and ``pids`` controllers)
   with a resident-memory limit and a process limit, as a child of its own cgroup; where no
   controller is writable it falls back to ``RLIMIT_AS`` (see :func:`memory_mechanism`);
3. it forks a child that joins the cgroup, sets ``RLIMIT_FSIZE``/``RLIMIT_CPU``/``RLIMIT_CORE``,
   drops to user ``nobody`` and ``exec``\\ s Debian's ``bwrap`` (bubblewrap, the sandbox behind
   Flatpak) with every namespace unshared (user, mount, pid, network, IPC, UTS, cgroup),
   ``--cap-drop ALL``, ``--die-with-parent``, ``--new-session``, ``--disable-userns`` and an *empty*
   root into which only the allow-list is bound read-only (:func:`bwrap_args`);
4. when the sandbox ends it records the cgroup's OOM kills in ``status_file`` (the grader reads
   them with :func:`oom_kills`), kills what is left in the cgroup, removes it and detaches the mount.

Nothing outside the allow-list exists inside: not the course, not the repository that contains
``courselib`` (only the package directory is bound), not other submissions, not ``/home``,
``/root``, ``/srv`` or ``/opt``. The network namespace has only its own loopback (no host port is
reachable); the pid namespace shows only the sandbox's own processes; the argument vector of
``bwrap`` is passed through a file descriptor (``--args``), so ``/proc/1/cmdline`` lists no bound path.

Limits: this is not a security boundary against kernel exploits (the student shares the host
kernel); see ``book/appendix_grading.md``.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = [
    "SandboxConfig",
    "SandboxUnavailable",
    "available",
    "bwrap_args",
    "command",
    "seccomp_filter",
    "kernel_argv",
    "memory_mechanism",
    "oom_kills",
    "sweep",
    "unavailable_reason",
    "write_kernelspec",
]

NOBODY = 65534
BWRAP_PACKAGE = "bubblewrap"
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
MNT_DETACH = 2
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18
CLONE_NEWNS = 0x00020000
CGROUP_PREFIX = "courselib-sbx-"
# /etc pieces a Python process needs (the loader's cache, time zone, fonts); not passwd or shadow:
# minimal passwd/group files naming only root and nobody are written into the sandbox instead.
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "alternatives", "fonts", "mime.types")
SYSTEM_DIRS = ("/usr",)
MERGED_USR = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


# The supervisor runs this file as a script: only the standard library, not the grading package.
_SELF = str(Path(__file__).resolve())


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot run here (no bubblewrap, or user namespaces are disabled)."""


@dataclass
class SandboxConfig:
    """What the sandboxed process sees and may use.

    Parameters
    ----------
    work_dir : str
        The submission's scratch folder: its working directory and the only writable place besides
        the private ``/tmp`` and ``/dev/shm``; a ``tmpfs`` of ``disk_bytes`` during the sandbox.
    keep : list of str
        The allow-list: directories bound read-only at the same path (the Python installation, the
        virtual environment, the ``courselib`` package directory, data folders).
    hide : list of str
        Paths that must never be visible: a ``keep`` entry that contains one of them is refused
        (binding the repository would expose ``labs/source`` and ``.git``).
    memory_bytes : int or None
        Resident-memory limit of the whole sandbox (cgroup), or ``RLIMIT_AS`` where no cgroup
        memory controller is writable.
    file_bytes : int
        ``RLIMIT_FSIZE``: the largest file the process may write.
    disk_bytes : int
        Size of the scratch ``tmpfs`` mounted over ``work_dir``.
    tmp_bytes : int
        Size of each of the private ``/tmp`` and ``/dev/shm``.
    cpu_seconds : int or None
        ``RLIMIT_CPU`` backstop (the parent enforces the wall clock).
    nproc : int
        Most processes and threads of the sandbox (cgroup ``pids.max``; ``RLIMIT_NPROC`` without it).
    uid, gid : int
        Unprivileged identity of the sandbox (``nobody``), inside and outside its user namespace.
    copy_in : list of str
        Host files copied into ``work_dir`` before the start; the command-line argument naming
        each is rewritten to the copy (e.g. the kernel's connection file).
    env : dict
        Extra environment variables (the environment is otherwise cleared).
    cgroup : bool
        Use a cgroup for memory and processes when one is writable.
    status_file : str or None
        Where the supervisor records ``{"oom_kills": n, ...}`` (outside the sandbox).
    """

    work_dir: str
    keep: list = field(default_factory=list)
    hide: list = field(default_factory=list)
    memory_bytes: int | None = 2 << 30
    file_bytes: int = 64 << 20
    disk_bytes: int = 512 << 20
    tmp_bytes: int = 64 << 20
    cpu_seconds: int | None = None
    nproc: int = 256
    uid: int = NOBODY
    gid: int = NOBODY
    copy_in: list = field(default_factory=list)
    env: dict = field(default_factory=dict)
    cgroup: bool = True
    status_file: str | None = None

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        if self.status_file is None:
            self.status_file = str(path) + ".status"
        path.write_text(json.dumps(asdict(self), indent=1))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> SandboxConfig:
        return cls(**json.loads(Path(path).read_text()))


def command(config_path: str | os.PathLike, cmd: list[str]) -> list[str]:
    """The argv that runs ``cmd`` inside the sandbox described by ``config_path``."""
    return [sys.executable, _SELF, "enter", str(config_path), "--", *cmd]


def kernel_argv(config_path: str | os.PathLike) -> list[str]:
    """A kernelspec ``argv`` that starts an IPython kernel inside the sandbox."""
    return [sys.executable, _SELF, "kernel", str(config_path), "{connection_file}"]


def write_kernelspec(jupyter_dir: str | os.PathLike, name: str, config_path: str | os.PathLike) -> Path:
    """Write ``jupyter_dir/kernels/<name>/kernel.json`` (put ``jupyter_dir`` on ``JUPYTER_PATH``).

    Interrupts travel as messages on the control channel (``interrupt_mode: message``): a signal
    sent to the supervisor would not reach a kernel in its own session and pid namespace.
    """
    kdir = Path(jupyter_dir) / "kernels" / name
    kdir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": kernel_argv(config_path),
        "display_name": f"Python 3 (sandbox {name})",
        "language": "python",
        "interrupt_mode": "message",
        "metadata": {"debugger": False},
    }
    (kdir / "kernel.json").write_text(json.dumps(spec, indent=1))
    return kdir


def oom_kills(config_path: str | os.PathLike) -> int:
    """Processes the memory limit killed in the sandboxes started with ``config_path`` (0 if none)."""
    try:
        cfg = json.loads(Path(config_path).read_text())
        status = json.loads(Path(cfg.get("status_file") or str(config_path) + ".status").read_text())
    except (OSError, ValueError):
        return 0
    return int(status.get("oom_kills", 0))


# --------------------------------------------------------------------------------------------
# availability
_AVAILABLE: str | None = None


def unavailable_reason() -> str | None:
    """Why the sandbox cannot run on this machine (``None`` when it can), checked once."""
    global _AVAILABLE
    if _AVAILABLE is None:
        why = ""
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            why = f"bwrap not found: install Debian's {BWRAP_PACKAGE} package (make sandbox, as root)"
        elif os.geteuid() != 0:
            why = "the grading sandbox needs the grader to run as root (it mounts the scratch tmpfs)"
        else:
            try:
                r = subprocess.run(
                    [bwrap, "--unshare-all", "--ro-bind", "/usr", "/usr", *_merged_usr(), "--", "/bin/true"],
                    capture_output=True,
                    timeout=30,
                    preexec_fn=_drop_to_nobody,
                )
                if r.returncode != 0:
                    why = f"bwrap cannot create namespaces here: {r.stderr.decode(errors='replace').strip()[:200]}"
            except (OSError, subprocess.SubprocessError) as exc:
                why = f"bwrap failed: {exc}"
        _AVAILABLE = why
    return _AVAILABLE or None


def available() -> bool:
    """True when bubblewrap can build the sandbox here (see :func:`unavailable_reason`)."""
    return unavailable_reason() is None


def _drop_to_nobody(uid: int = NOBODY, gid: int = NOBODY) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


# --------------------------------------------------------------------------------------------
# cgroups: one group per sandbox, a child of the supervisor's own group
def _mounts() -> list[tuple[str, str, str, str]]:
    """(mount point, fs type, source, super options) of every mount."""
    out = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, right = line.split(" - ", 1)
            mp = left.split()[4].encode().decode("unicode_escape")
            fstype, source, opts = (right.split() + ["", "", ""])[:3]
            out.append((mp, fstype, source, opts))
    return out


def _own_cgroups() -> dict[str, str]:
    """Controller (or ``""`` for cgroup v2) -> this process's cgroup path."""
    out = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            out[c] = path
    return out


class Cgroup:
    """One cgroup (v2) or a pair of v1 groups (``memory``, ``pids``) limiting one sandbox.

    Parameters
    ----------
    name : str
        Name of the group, created as a child of this process's own group.
    memory_bytes : int or None
        ``memory.max`` (v2) or ``memory.limit_in_bytes`` and ``memory.memsw.limit_in_bytes`` (v1).
    pids : int or None
        ``pids.max``.

    Raises ``OSError`` when no memory controller is writable.
    """

    def __init__(self, name: str, memory_bytes: int | None, pids: int | None):
        self.dirs: list[Path] = []
        self.version = 0
        self.memory_dir: Path | None = None
        self.pids = False
        own = _own_cgroups()
        mounts = _mounts()
        v1 = {
            c: Path(mp)
            for mp, fstype, _, opts in mounts
            if fstype == "cgroup"
            for c in ("memory", "pids")
            if c in opts.split(",")
        }
        v2 = next((Path(mp) for mp, fstype, _, _ in mounts if fstype == "cgroup2"), None)
        try:
            if "memory" in v1 and "memory" in own:
                self.version = 1
                mem = self._make(v1["memory"] / own["memory"].lstrip("/") / name)
                if memory_bytes:
                    (mem / "memory.limit_in_bytes").write_text(str(memory_bytes))
                    if (mem / "memory.memsw.limit_in_bytes").exists():
                        (mem / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
                self.memory_dir = mem
                if pids and "pids" in v1 and "pids" in own:
                    pdir = self._make(v1["pids"] / own["pids"].lstrip("/") / name)
                    (pdir / "pids.max").write_text(str(pids))
                    self.pids = True
            elif v2 is not None and "" in own:
                self.version = 2
                parent = v2 / own[""].lstrip("/")
                enabled = (parent / "cgroup.subtree_control").read_text().split()
                if "memory" not in enabled:
                    (parent / "cgroup.subtree_control").write_text("+memory +pids")
                d = self._make(parent / name)
                if memory_bytes:
                    (d / "memory.max").write_text(str(memory_bytes))
                    if (d / "memory.swap.max").exists():
                        (d / "memory.swap.max").write_text("0")
                self.memory_dir = d
                if pids and (d / "pids.max").exists():
                    (d / "pids.max").write_text(str(pids))
                    self.pids = True
            else:
                raise OSError("no cgroup memory controller mounted")
        except OSError:
            self.remove()
            raise

    def _make(self, d: Path) -> Path:
        d.mkdir()
        self.dirs.append(d)
        return d

    def join(self, pid: int) -> None:
        for d in self.dirs:
            (d / "cgroup.procs").write_text(str(pid))

    def oom_kills(self) -> int:
        if self.memory_dir is None:
            return 0
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            for line in (self.memory_dir / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except OSError:
            pass
        return 0

    def pids_in(self) -> list[int]:
        out = set()
        for d in self.dirs:
            try:
                out.update(int(p) for p in (d / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return sorted(out)

    def remove(self) -> None:
        """Kill what is left in the group and remove it."""
        for attempt in range(200):  # dying processes stay members until reaped: up to ~5 s
            for pid in self.pids_in():
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            for d in list(reversed(self.dirs)):
                try:
                    d.rmdir()
                    self.dirs.remove(d)
                except FileNotFoundError:
                    self.dirs.remove(d)
                except OSError:
                    pass
            if not self.dirs:
                return
            time.sleep(0.005 * min(attempt + 1, 5))


def memory_mechanism() -> str:
    """How sandboxes limit memory here: ``"cgroup v1 (memory, pids)"``, ``"cgroup v2 (...)"`` or
    ``"RLIMIT_AS (no writable cgroup memory controller)"`` -- probed by creating a group."""
    try:
        cg = Cgroup(f"{CGROUP_PREFIX}probe-{os.getpid()}", 64 << 20, 16)
    except OSError as exc:
        return f"RLIMIT_AS (no writable cgroup memory controller: {exc.strerror or exc})"
    kind = f"cgroup v{cg.version} (memory{', pids' if cg.pids else ''})"
    cg.remove()
    return kind


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep() -> None:
    """Remove cgroups and scratch mounts left by supervisors that were killed (``SIGKILL``)."""
    pat = re.compile(re.escape(CGROUP_PREFIX) + r"(?:probe-)?(\d+)$")
    for mp, fstype, source, _ in _mounts():
        m = pat.match(source)
        if fstype == "tmpfs" and m and not _alive(int(m.group(1))):
            _umount(mp)
    own = _own_cgroups()
    roots = []
    for mp, fstype, _, opts in _mounts():
        if fstype == "cgroup":
            for c in ("memory", "pids"):
                if c in opts.split(",") and c in own:
                    roots.append(Path(mp) / own[c].lstrip("/"))
        elif fstype == "cgroup2" and "" in own:
            roots.append(Path(mp) / own[""].lstrip("/"))
    for root in roots:
        try:
            children = list(root.iterdir())
        except OSError:
            continue
        for d in children:
            m = pat.match(d.name)
            if m and d.is_dir() and not _alive(int(m.group(1))):
                stale = Cgroup.__new__(Cgroup)
                stale.dirs = [d]
                stale.remove()


# --------------------------------------------------------------------------------------------
# the supervisor
_libc = None


def _c():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _prctl(option, arg):
    _c().prctl(option, ctypes.c_ulong(arg), 0, 0, 0)


def _mount_tmpfs(target: str, source: str, size: int, uid: int, gid: int) -> None:
    opts = f"size={size},nr_inodes=16384,mode=0755,uid={uid},gid={gid}"
    if _c().mount(source.encode(), target.encode(), b"tmpfs", ctypes.c_ulong(MS_NOSUID | MS_NODEV), opts.encode()):
        err = ctypes.get_errno()
        raise OSError(err, f"mount tmpfs on {target}: {os.strerror(err)}")


def _umount(target: str) -> None:
    _c().umount2(os.fsencode(target), MNT_DETACH)


def _mount_bind(source: str, target: str) -> None:
    if _c().mount(os.fsencode(source), os.fsencode(target), None, ctypes.c_ulong(MS_BIND | MS_REC), None):
        err = ctypes.get_errno()
        raise OSError(err, f"bind {source} -> {target}: {os.strerror(err)}")


def _reachable(paths: list[str]) -> None:
    """Make ``paths`` reachable by ``nobody`` in a private mount namespace of the calling process.

    bubblewrap runs unprivileged and must be able to walk to every directory it binds; a Python
    installation under ``/root`` (mode 0700) is not. Each such blocking ancestor is covered, in
    this process's own mount namespace only, by a ``tmpfs`` into which the paths below it are bound
    back; nothing else under it becomes visible (and bubblewrap binds only ``paths`` anyway).
    """
    if _c().unshare(CLONE_NEWNS):
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNS): {os.strerror(err)}")
    if _c().mount(None, b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None):
        err = ctypes.get_errno()
        raise OSError(err, f"make / private: {os.strerror(err)}")
    blocked = set()
    for p in paths:
        parts = Path(p).parts
        for i in range(2, len(parts)):
            anc = str(Path(*parts[:i]))
            if not os.stat(anc).st_mode & 0o001:
                blocked.add(anc)
                break
    for b in sorted(blocked, key=len):
        inner = [p for p in paths if _inside(p, b)]
        fds = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in inner}
        if _c().mount(b"tmpfs", os.fsencode(b), b"tmpfs", ctypes.c_ulong(MS_NOSUID | MS_NODEV), b"mode=0755"):
            err = ctypes.get_errno()
            raise OSError(err, f"mount tmpfs on {b}: {os.strerror(err)}")
        for p, fd in fds.items():
            os.makedirs(p, exist_ok=True)
            _mount_bind(f"/proc/self/fd/{fd}", p)
            os.close(fd)


def _merged_usr() -> list[str]:
    out = []
    for p in MERGED_USR:
        if os.path.islink(p):
            out += ["--symlink", os.readlink(p), p]
        elif os.path.isdir(p):
            out += ["--ro-bind", p, p]
    return out


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def bwrap_args(cfg: SandboxConfig, keep: list[str], data_fds: dict[str, int], env: dict) -> list[str]:
    """The bubblewrap options for ``cfg``: an empty root, the system's ``/usr`` and a few ``/etc``
    files, ``keep`` (the checked allow-list) read-only, the work dir writable, private ``/proc``,
    ``/dev``, ``/tmp`` and ``/dev/shm`` (``data_fds``: in-memory files such as ``/etc/passwd``)."""
    work = os.path.realpath(cfg.work_dir)
    args = [
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--uid",
        str(cfg.uid),
        "--gid",
        str(cfg.gid),
        "--hostname",
        "sandbox",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--clearenv",
    ]
    for k, v in env.items():
        args += ["--setenv", k, v]
    for d in SYSTEM_DIRS:
        args += ["--ro-bind", d, d]
    args += _merged_usr()
    for name in ETC_FILES:
        p = f"/etc/{name}"
        if os.path.exists(p):
            args += ["--ro-bind", p, p]
    for dest, fd in data_fds.items():
        args += ["--perms", "0644", "--ro-bind-data", str(fd), dest]
    args += ["--proc", "/proc", "--dev", "/dev"]
    args += ["--size", str(cfg.tmp_bytes), "--perms", "1777", "--tmpfs", "/tmp"]
    args += ["--size", str(cfg.tmp_bytes), "--perms", "1777", "--tmpfs", "/dev/shm"]
    for path in sorted(keep, key=len):
        args += ["--ro-bind", path, path]
    args += ["--bind", work, work, "--chdir", work]
    return args


def _allow_list(cfg: SandboxConfig) -> list[str]:
    hide = [os.path.realpath(h) for h in cfg.hide]
    keep = []
    for k in cfg.keep:
        k = os.path.realpath(k)
        if not os.path.isdir(k):
            continue
        bad = [h for h in hide if _inside(h, k)]
        if bad:
            raise SandboxUnavailable(f"refusing to bind {k}: it contains {bad[0]}, which must stay hidden")
        keep.append(k)
    return sorted(set(keep))


#: One thread for every numerical library: a grading worker is one core. The sandboxed kernel runs with these, and
#: so do the clean room's driver and its fork server (:meth:`courselib.grading.grader.Grader.env`), which run the
#: hidden tests' own computations (a reference training, say): with a thread pool per process, two workers on two
#: cores would have four or more threads spinning for two cores, and a part's calls would run out of time.
ONE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
}


def _sandbox_env(cfg: SandboxConfig, work: str) -> dict:
    return {
        "PATH": os.path.dirname(sys.executable) + ":/usr/local/bin:/usr/bin:/bin",
        "HOME": work,
        "TMPDIR": "/tmp",
        "USER": "nobody",
        "IPYTHONDIR": os.path.join(work, ".ipython"),
        "MPLCONFIGDIR": "/tmp/.mpl",
        "MPLBACKEND": "Agg",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "LANG": "C.UTF-8",
        **ONE_THREAD_ENV,
        "NUMBA_CACHE_DIR": "/tmp/.numba",
        "JUPYTER_RUNTIME_DIR": work,
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        **{str(k): str(v) for k, v in cfg.env.items()},
    }


# seccomp: system calls refused (EPERM) inside the sandbox, x86-64 numbers. Same uid inside the
# sandbox would otherwise allow ptrace/process_vm_readv of bubblewrap's pid 1; the others are kernel
# attack surface no notebook needs (Flatpak refuses most of the same).
SECCOMP_DENY_X86_64 = {
    "ptrace": 101,
    "personality": 135,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "perf_event_open": 298,
    "open_by_handle_at": 304,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "kcmp": 312,
    "bpf": 321,
    "userfaultfd": 323,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
}
AUDIT_ARCH_X86_64 = 0xC000003E


def seccomp_filter() -> bytes | None:
    """A classic-BPF seccomp program (``struct sock_filter[]``) refusing :data:`SECCOMP_DENY_X86_64`
    with ``EPERM`` and every non-x86-64 system call ABI; ``None`` on other machines (no filter)."""
    if platform.machine() != "x86_64":
        return None
    ld_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, deny = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    nrs = sorted(SECCOMP_DENY_X86_64.values())
    prog = [(ld_abs, 0, 0, 4), (jeq, 1, 0, AUDIT_ARCH_X86_64), (ret, 0, 0, deny), (ld_abs, 0, 0, 0)]
    n_deny = len(prog) + 1 + len(nrs) + 1  # index of the final deny
    prog.append((jge, n_deny - len(prog) - 1, 0, 0x40000000))  # the x32 ABI
    for nr in nrs:
        prog.append((jeq, n_deny - len(prog) - 1, 0, nr))
    prog += [(ret, 0, 0, allow), (ret, 0, 0, deny)]
    return b"".join(struct.pack("<HBBI", *ins) for ins in prog)


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _copy_tree(src: str, dst: str, uid: int, gid: int) -> None:
    for entry in os.scandir(src):
        s, d = entry.path, os.path.join(dst, entry.name)
        if entry.is_symlink():
            continue  # never follow a link out of the scratch folder
        if entry.is_dir():
            os.mkdir(d)
            _copy_tree(s, d, uid, gid)
        elif entry.is_file():
            shutil.copyfile(s, d)
        else:
            continue
        os.chown(d, uid, gid)


def _enter(config_path: str, cmd: list[str]) -> int:  # pragma: no cover - runs as the supervisor
    # the clean room's driver limits its own address space (a soft limit): not this sandbox's, which has its own
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
    cfg = SandboxConfig.load(config_path)
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        sys.exit(f"courselib sandbox: bwrap not found; install Debian's {BWRAP_PACKAGE} package")
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # the kernel manager died: clean up and go
    sweep()
    work = os.path.realpath(cfg.work_dir)
    for src in cfg.copy_in:  # e.g. the kernel connection file, mode 0600 root
        dst = os.path.join(work, os.path.basename(src))
        if os.path.realpath(src) != dst:
            shutil.copyfile(src, dst)
        os.chown(dst, cfg.uid, cfg.gid)
        cmd = [dst if a == src else a for a in cmd]
    keep = _allow_list(cfg)
    # the scratch folder becomes a size-limited tmpfs holding a copy of its files
    orig = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    _mount_tmpfs(work, f"{CGROUP_PREFIX}{os.getpid()}", cfg.disk_bytes, cfg.uid, cfg.gid)
    group = None
    child = None
    janitor_w = None
    try:
        _copy_tree(f"/proc/self/fd/{orig}", work, cfg.uid, cfg.gid)
        os.close(orig)
        if cfg.cgroup and cfg.memory_bytes:
            try:
                group = Cgroup(f"{CGROUP_PREFIX}{os.getpid()}", cfg.memory_bytes, cfg.nproc)
            except OSError:
                group = None
        janitor_w = _start_janitor(group, work, cfg.status_file)
        env = _sandbox_env(cfg, work)
        passwd = f"root:x:0:0::/:/bin/false\nnobody:x:{cfg.uid}:{cfg.gid}:nobody:{work}:/bin/false\n"
        group_txt = f"root:x:0:\nnogroup:x:{cfg.gid}:\n"
        data_fds = {
            "/etc/passwd": _memfd("passwd", passwd.encode()),
            "/etc/group": _memfd("group", group_txt.encode()),
            "/etc/nsswitch.conf": _memfd("nsswitch", b"passwd: files\ngroup: files\nhosts: files\n"),
        }
        args = bwrap_args(cfg, keep, data_fds, env)
        bpf = seccomp_filter()
        if bpf is not None:
            data_fds["seccomp"] = _memfd("seccomp", bpf)
            args += ["--seccomp", str(data_fds["seccomp"])]
        argfd = _memfd("bwrap-args", b"".join(os.fsencode(a) + b"\0" for a in args))
        for fd in [*data_fds.values(), argfd]:
            os.set_inheritable(fd, True)
        child = os.fork()
        if child == 0:
            try:
                if group is not None:
                    group.join(os.getpid())
                _reachable([*keep, work])
                if cfg.memory_bytes and (group is None or group.memory_dir is None):
                    resource.setrlimit(resource.RLIMIT_AS, (cfg.memory_bytes, cfg.memory_bytes))
                if cfg.cpu_seconds:
                    resource.setrlimit(resource.RLIMIT_CPU, (cfg.cpu_seconds, cfg.cpu_seconds + 5))
                resource.setrlimit(resource.RLIMIT_FSIZE, (cfg.file_bytes, cfg.file_bytes))
                nproc = 8 * cfg.nproc if group is not None and group.pids else cfg.nproc
                resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
                resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
                _drop_to_nobody(cfg.uid, cfg.gid)
                _prctl(PR_SET_NO_NEW_PRIVS, 1)
                _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
                os.execve(bwrap, [bwrap, "--args", str(argfd), "--", *cmd], env)
            except BaseException as exc:  # report, and never return into the supervisor
                os.write(2, f"courselib sandbox: {exc!r}\n".encode())
            os._exit(127)
        for fd in [*data_fds.values(), argfd]:
            os.close(fd)

        def stop(*_):
            if child:
                try:
                    os.kill(child, signal.SIGKILL)
                except OSError:
                    pass

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGHUP, stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # interrupts reach the kernel as messages
        while True:
            try:
                _, status = os.waitpid(child, 0)
                break
            except InterruptedError:
                continue
        code = os.waitstatus_to_exitcode(status)
        return code if code >= 0 else 128 - code
    finally:
        _record_status(cfg.status_file, group)
        if janitor_w is not None:
            os.write(janitor_w, b"s")
        if group is not None:
            group.remove()
        _umount(work)
        if janitor_w is not None:
            os.write(janitor_w, b"d")
            os.close(janitor_w)


def _record_status(status_file: str | None, group: Cgroup | None) -> None:
    if not status_file:
        return
    try:
        prev = json.loads(Path(status_file).read_text())
    except (OSError, ValueError):
        prev = {}
    kills = int(prev.get("oom_kills", 0)) + (group.oom_kills() if group is not None else 0)
    Path(status_file).write_text(
        json.dumps({"oom_kills": kills, "memory": f"cgroup v{group.version}" if group else "RLIMIT_AS"})
    )


def _start_janitor(group: Cgroup | None, work: str, status_file: str | None) -> int:  # pragma: no cover
    """Fork a process that cleans up after the supervisor if it is killed (``SIGKILL`` from a kernel
    manager that gave up waiting): it records the OOM kills, removes the cgroup and detaches the
    scratch mount. It waits on a pipe; the supervisor writes ``s`` (status recorded) and ``d`` (all
    cleaned) before it exits, so the janitor acts only on what was left undone. Returns the write end."""
    r, w = os.pipe()  # both ends close-on-exec: the sandbox never holds them
    if os.fork() != 0:
        os.close(r)
        return w
    try:
        os.close(w)
        os.setsid()  # out of the supervisor's process group: a killpg of it does not reach us
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        got = b""
        while True:
            try:
                chunk = os.read(r, 16)
            except InterruptedError:
                continue
            if not chunk:
                break
            got += chunk
        if b"d" not in got:
            if b"s" not in got:
                _record_status(status_file, group)
            if group is not None:
                group.remove()
            _umount(work)
    finally:
        os._exit(0)


def _kernel(config_path: str, connection_file: str, extra: list[str] | None = None) -> int:  # pragma: no cover
    """Kernelspec entry point: the connection file is copied in, then ipykernel starts sandboxed."""
    cfg = json.loads(Path(config_path).read_text())
    if connection_file not in cfg.get("copy_in", []):
        cfg["copy_in"] = [*cfg.get("copy_in", []), connection_file]
        cfg.setdefault("status_file", config_path + ".status")
        config_path = config_path + ".kernel.json"
        Path(config_path).write_text(json.dumps(cfg))
    return _enter(
        config_path,
        [
            sys.executable,
            "-m",
            "ipykernel_launcher",
            "-f",
            connection_file,
            "--HistoryManager.enabled=False",
            *(extra or []),
        ],
    )


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - exec chain
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["enter"] and len(argv) >= 4 and argv[2] == "--":
        sys.exit(_enter(argv[1], argv[3:]))
    elif argv[:1] == ["kernel"] and len(argv) >= 3:
        sys.exit(_kernel(argv[1], argv[2], argv[3:]))
    else:
        sys.exit("usage: python -m courselib.grading.sandbox enter CONFIG -- CMD... | kernel CONFIG CONNECTION_FILE")


if __name__ == "__main__":  # pragma: no cover
    main()
