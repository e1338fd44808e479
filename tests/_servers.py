"""Real servers for the grading tests, started on 127.0.0.1 by the tests themselves and stopped after.

- :class:`PostgresServer`: Debian's PostgreSQL (``/usr/lib/postgresql/<v>/bin``, installed by ``make test``
  as root), a private cluster in a temporary data directory (``initdb``/``pg_ctl``), run as the
  ``postgres`` system user when we are root (the server refuses to run as root).
- :class:`DaskCluster`: a ``dask scheduler`` and N ``dask worker`` processes (each with its nanny, in its own
  process group so a test can kill one "machine").
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class PostgresServer:
    def __init__(self):
        self.bindir = postgres_bindir()
        if self.bindir is None:
            raise RuntimeError("PostgreSQL server binaries not found (Debian's postgresql; make test installs it)")
        self.root = Path(tempfile.mkdtemp(prefix="pgtest-", dir="/tmp"))
        self.data, self.sock = self.root / "data", self.root / "sock"
        self.sock.mkdir()
        self.port = free_port()
        self.user = None
        if os.geteuid() == 0:
            self.user = pwd.getpwnam("postgres")
            os.chmod(self.root, 0o755)
            for p in (self.root, self.sock):
                os.chown(p, self.user.pw_uid, self.user.pw_gid)
        self._run([str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8"])
        self.start()
        self._run(
            [str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "gradebook"]
        )
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/gradebook"

    def _run(self, cmd, check=True):
        if self.user is not None:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, cwd=self.root)

    def start(self):
        opts = f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "start"]
        )

    def stop(self):
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"], check=False)

    def close(self):
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class DaskCluster:
    """``dask scheduler`` on 127.0.0.1 plus ``n`` single-threaded workers (each with its nanny)."""

    def __init__(self, n: int = 2, port: int | None = None):
        self.port = port or free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.scheduler = None
        self.workers: list[subprocess.Popen] = []
        self.logs = Path(tempfile.mkdtemp(prefix="dasktest-"))
        self.start_scheduler()
        for _ in range(n):
            self.add_worker()
        self.wait_for_workers(n)

    def _spawn(self, args, name):
        log = open(self.logs / f"{name}.log", "ab")
        return subprocess.Popen(
            [str(BIN / "dask"), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "DASK_DISTRIBUTED__ADMIN__LOG_LEVEL": "warning"},
        )

    def start_scheduler(self):
        self.scheduler = self._spawn(
            ["scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard"], "scheduler"
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"the Dask scheduler did not start: {(self.logs / 'scheduler.log').read_text()[-2000:]}")

    def add_worker(self):
        i = len(self.workers)
        w = self._spawn(
            [
                "worker",
                self.address,
                "--nthreads",
                "1",
                "--nworkers",
                "1",
                "--no-dashboard",
                "--host",
                "127.0.0.1",
                "--name",
                f"w{i}",
                "--death-timeout",
                "60",
            ],
            f"worker{i}",
        )
        self.workers.append(w)
        return w

    def n_workers(self) -> int:
        from distributed import Client

        with Client(self.address, timeout=30) as c:
            return len(c.scheduler_info()["workers"])

    def wait_for_workers(self, n: int, timeout: float = 120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.n_workers() >= n:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{n} Dask workers did not join within {timeout} s")

    @staticmethod
    def kill(proc: subprocess.Popen):
        """Kill a process and its whole process group (a worker with its nanny: a lost machine)."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def kill_scheduler(self):
        self.kill(self.scheduler)

    def close(self):
        for w in self.workers:
            self.kill(w)
        if self.scheduler is not None:
            self.kill(self.scheduler)
        shutil.rmtree(self.logs, ignore_errors=True)
