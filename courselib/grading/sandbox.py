"""Run untrusted student code in a throw-away Linux sandbox (namespaces + rlimits, no Docker).

A sandboxed process is started as::

    unshare --mount --net --pid --fork --kill-child --mount-proc \\
        python -m courselib.grading.sandbox enter CONFIG.json -- CMD ...

and ``enter`` (still root, but already in its own mount, network and pid namespaces) then

1. hides whole directory trees behind empty read-only ``tmpfs`` mounts (the course directory with
   ``source/`` and the gradebook, the submissions folder, every other scratch directory, ``/tmp``,
   the repository's ``.git``/``tests``/``book`` ...);
2. bind-mounts back the few directories the kernel needs (the Python environment, the ``courselib``
   package) and the submission's own scratch directory (the only writable place);
3. remounts every other mount read-only;
4. sets resource limits (``RLIMIT_AS`` memory, ``RLIMIT_FSIZE`` file size, ``RLIMIT_NPROC``,
   ``RLIMIT_CPU`` as a backstop to the parent's wall clock), drops to an unprivileged uid/gid
   (``nobody``) with ``no_new_privs`` and an empty capability set, and ``exec``\\ s ``CMD``.

The new network namespace has only a ``lo`` interface that is down: any ``connect`` (127.0.0.1
included) fails with ``OSError`` inside the student's code. The new pid namespace with its own
``/proc`` hides every other process (``/proc/<ppid>/cwd`` would otherwise reveal the course folder).
A Jupyter kernel inside the sandbox talks to its client over ZeroMQ ``ipc://`` sockets that live in
the scratch directory (TCP loopback does not cross network namespaces).

Limits: this is not a security boundary against kernel exploits (the student shares the host
kernel), and it needs root or a kernel that allows unprivileged user namespaces; see
``book/appendix_grading.md``.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["SandboxConfig", "available", "command", "kernel_argv", "write_kernelspec"]

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 32, 4096, 16384
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
NOBODY = 65534


@dataclass
class SandboxConfig:
    """What the sandboxed process sees and may use.

    Parameters
    ----------
    work_dir : str
        The only writable directory (the submission's scratch folder); also the working directory.
    hide : list of str
        Directory trees replaced by an empty read-only tmpfs.
    keep : list of str
        Directories inside hidden trees that stay visible (read-only), e.g. the venv.
    memory_bytes : int or None
        ``RLIMIT_AS`` (address space) of the process and its children.
    file_bytes : int
        ``RLIMIT_FSIZE``: largest file the process may write.
    cpu_seconds : int or None
        ``RLIMIT_CPU`` backstop (the parent enforces the wall clock).
    nproc : int
        ``RLIMIT_NPROC`` (processes of the sandbox uid).
    uid, gid : int
        Unprivileged identity the command runs as.
    copy_in : list of str
        Files readable only before the hiding (e.g. the kernel connection file): copied into
        ``work_dir`` and the command line argument naming each is rewritten to the copy.
    env : dict
        Extra environment variables.
    """

    work_dir: str
    hide: list = field(default_factory=list)
    keep: list = field(default_factory=list)
    memory_bytes: int | None = 2 << 30
    file_bytes: int = 64 << 20
    cpu_seconds: int | None = None
    nproc: int = 512
    uid: int = NOBODY
    gid: int = NOBODY
    copy_in: list = field(default_factory=list)
    env: dict = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(json.dumps(asdict(self), indent=1))
        return path


def _unshare_prefix() -> list[str]:
    return ["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]


def command(config_path: str | os.PathLike, cmd: list[str]) -> list[str]:
    """The argv that runs ``cmd`` inside the sandbox described by ``config_path``."""
    return [
        *_unshare_prefix(),
        sys.executable,
        "-m",
        "courselib.grading.sandbox",
        "enter",
        str(config_path),
        "--",
        *cmd,
    ]


def kernel_argv(config_path: str | os.PathLike) -> list[str]:
    """A kernelspec ``argv`` that starts an IPython kernel inside the sandbox."""
    return [sys.executable, "-m", "courselib.grading.sandbox", "kernel", str(config_path), "{connection_file}"]


def write_kernelspec(jupyter_dir: str | os.PathLike, name: str, config_path: str | os.PathLike) -> Path:
    """Write ``jupyter_dir/kernels/<name>/kernel.json`` (put ``jupyter_dir`` on ``JUPYTER_PATH``)."""
    kdir = Path(jupyter_dir) / "kernels" / name
    kdir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": kernel_argv(config_path),
        "display_name": f"Python 3 (sandbox {name})",
        "language": "python",
        "metadata": {"debugger": False},
    }
    (kdir / "kernel.json").write_text(json.dumps(spec, indent=1))
    return kdir


_AVAILABLE: bool | None = None


def available() -> bool:
    """True when this machine can create the namespaces (root with ``unshare``), checked once."""
    global _AVAILABLE
    if _AVAILABLE is None:
        ok = shutil.which("unshare") is not None and os.geteuid() == 0
        if ok:
            try:
                ok = subprocess.run([*_unshare_prefix(), "true"], capture_output=True, timeout=30).returncode == 0
            except (OSError, subprocess.SubprocessError):
                ok = False
        _AVAILABLE = ok
    return _AVAILABLE


# --------------------------------------------------------------------------------------------
# inside the namespaces
_libc = None


def _mount(source, target, fstype, flags, data=None):
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)

    def enc(s):
        return None if s is None else os.fsencode(s)

    if _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} -> {target}: {os.strerror(err)}")


def _prctl(option, arg):
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    _libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0)


def _same_dir(path: str, st) -> bool:
    try:
        s = os.stat(path)
    except OSError:
        return False
    return (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino)


def _mountpoints() -> list[str]:
    out = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            mp = line.split()[4].encode().decode("unicode_escape")
            out.append(mp)
    return out


def _enter(config_path: str, cmd: list[str]) -> None:  # pragma: no cover - runs in the sandbox
    cfg = SandboxConfig(**json.loads(Path(config_path).read_text()))
    work = os.path.realpath(cfg.work_dir)
    # files that will be hidden: copy them into the work dir first
    for src in cfg.copy_in:
        dst = os.path.join(work, os.path.basename(src))
        shutil.copyfile(src, dst)
        os.chown(dst, cfg.uid, cfg.gid)
        cmd = [dst if a == src else a for a in cmd]
    keep = [os.path.realpath(k) for k in cfg.keep if os.path.isdir(k)] + [work]
    fds = {k: os.open(k, os.O_RDONLY | os.O_DIRECTORY) for k in keep}
    stats = {k: os.fstat(fd) for k, fd in fds.items()}
    _mount(None, "/", None, MS_REC | (1 << 18))  # make everything private
    for h in sorted({os.path.realpath(h) for h in cfg.hide}, key=len):
        if os.path.isdir(h) and not os.path.islink(h):
            _mount("tmpfs", h, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=755")
    for k in sorted(keep, key=len):
        if not _same_dir(k, stats[k]):
            os.makedirs(k, exist_ok=True)
            _mount(f"/proc/self/fd/{fds[k]}", k, None, MS_BIND | MS_REC)
    for mp in reversed(_mountpoints()):
        if mp == work or mp.startswith("/proc") or mp.startswith("/sys"):
            continue
        try:
            _mount(None, mp, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)
        except OSError:
            try:
                _mount(None, mp, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
            except OSError:
                pass
    for fd in fds.values():
        os.close(fd)
    try:  # a private, small, writable /dev/shm (joblib and multiprocessing want one)
        _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=64m,mode=1777")
    except OSError:
        pass
    os.chdir(work)
    env = {
        "PATH": os.path.dirname(sys.executable) + ":/usr/local/bin:/usr/bin:/bin",
        "HOME": work,
        "TMPDIR": work,
        "IPYTHONDIR": os.path.join(work, ".ipython"),
        "MPLCONFIGDIR": os.path.join(work, ".mpl"),
        "MPLBACKEND": "Agg",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "NUMBA_NUM_THREADS": "1",
        "JUPYTER_RUNTIME_DIR": work,
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        **cfg.env,
    }
    if cfg.memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (cfg.memory_bytes, cfg.memory_bytes))
    if cfg.cpu_seconds:
        resource.setrlimit(resource.RLIMIT_CPU, (cfg.cpu_seconds, cfg.cpu_seconds + 5))
    resource.setrlimit(resource.RLIMIT_FSIZE, (cfg.file_bytes, cfg.file_bytes))
    resource.setrlimit(resource.RLIMIT_NPROC, (cfg.nproc, cfg.nproc))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.setgroups([])
    os.setgid(cfg.gid)
    os.setuid(cfg.uid)  # drops every capability (uid 0 -> non-zero)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    # We are pid 1 of the new pid namespace: stay as a tiny init that reaps zombies, so that the
    # command is an ordinary process (pid 1 would ignore a SIGKILL sent from inside).
    child = os.fork()
    if child == 0:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        os.execve(cmd[0], cmd, env)
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(child, signal.SIGKILL))
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(0)
        except InterruptedError:
            continue
        if pid == child:
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


def _kernel(
    config_path: str, connection_file: str, extra: list[str] | None = None
) -> None:  # pragma: no cover - exec chain
    """Kernelspec entry point: die with the client, then enter the namespaces and start ipykernel."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    cfg = json.loads(Path(config_path).read_text())
    if connection_file not in cfg.get("copy_in", []):
        cfg["copy_in"] = [*cfg.get("copy_in", []), connection_file]
        config_path = config_path + ".kernel.json"
        Path(config_path).write_text(json.dumps(cfg))
    argv = command(
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
    os.execvp(argv[0], argv)


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - exec chain
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["enter"] and len(argv) >= 4 and argv[2] == "--":
        _enter(argv[1], argv[3:])
    elif argv[:1] == ["kernel"] and len(argv) >= 3:
        _kernel(argv[1], argv[2], argv[3:])
    else:
        sys.exit("usage: python -m courselib.grading.sandbox enter CONFIG -- CMD... | kernel CONFIG CONNECTION_FILE")


if __name__ == "__main__":  # pragma: no cover
    main()
