"""The clean-room driver's fork server (courselib.grading.forkserver): preload once, fork per submission."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from courselib.grading import cleanroom, forkserver, grader

TESTS = Path(__file__).resolve().parent


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(TESTS)
    env.update(extra)
    return env


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _pid_from(path: Path, within: float = 20.0) -> int:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{path} was never written")


@pytest.fixture
def server():
    s = forkserver.ForkServer(["import json", "import courselib_no_such_module"], _env())
    yield s
    s.close()


def test_preload_statements_are_the_cells_imports_once_each():
    cells = [
        "%matplotlib inline\nimport numpy as np\nfrom torch import nn\n",
        "def f():\n    import math\n    return math.pi\nimport numpy as np\n",
        "this is not python (",
        "from . import sibling\nx = 1\n",
    ]
    assert forkserver.preload_statements(cells) == ["import numpy as np", "from torch import nn", "import math"]


def test_a_child_runs_in_its_own_session_directory_environment_and_log(server, tmp_path):
    assert server.failed == ["import courselib_no_such_module"]  # reported, not fatal
    (tmp_path / "a").mkdir()
    out, log = tmp_path / "out.json", tmp_path / "log1"
    code = server.run(
        ["_forkchild", "env", "MARK", str(out)], cwd=tmp_path / "a", env=_env(MARK="one"), log=log, timeout=60
    )
    assert code == 0
    assert json.loads(out.read_text()) == {"value": "one", "cwd": str(tmp_path / "a"), "sid": True}
    assert log.read_text().splitlines() == ["to the log", "and its stderr"]
    # the next child does not see the first one's environment: each starts from the server's memory
    code = server.run(
        ["_forkchild", "env", "MARK", str(out)], cwd=tmp_path, env=_env(), log=tmp_path / "log2", timeout=60
    )
    assert code == 0 and json.loads(out.read_text())["value"] is None


def test_exit_codes_and_errors_come_back(server, tmp_path):
    assert server.run(["_forkchild", "exit", "3"], cwd=tmp_path, env=_env(), log=tmp_path / "l", timeout=60) == 3
    assert server.run(["_forkchild", "raise"], cwd=tmp_path, env=_env(), log=tmp_path / "l", timeout=60) == 1
    assert "ValueError: a driver error" in (tmp_path / "l").read_text()


def test_a_timeout_kills_the_child_and_its_session_and_the_server_goes_on(server, tmp_path):
    pidfile = tmp_path / "pid"
    t = time.monotonic()
    code = server.run(["_forkchild", "sleep", str(pidfile)], cwd=tmp_path, env=_env(), log=tmp_path / "l", timeout=3)
    assert code is None and time.monotonic() - t < 30
    assert _gone(_pid_from(pidfile))  # the grandchild (the kernel's place) went with it
    assert server.alive()
    assert server.run(["_forkchild", "exit", "0"], cwd=tmp_path, env=_env(), log=tmp_path / "l", timeout=60) == 0


def test_a_server_whose_grading_process_goes_away_kills_its_child(server, tmp_path):
    pidfile = tmp_path / "pid"
    errors = []

    def run():
        try:
            server.run(["_forkchild", "sleep", str(pidfile)], cwd=tmp_path, env=_env(), log=tmp_path / "l", timeout=300)
        except forkserver.ForkServerError as exc:
            errors.append(exc)

    th = threading.Thread(target=run)
    th.start()
    grandchild = _pid_from(pidfile)
    server._proc.stdin.close()  # what the grading process's death does to the pipe
    th.join(60)
    assert not th.is_alive() and errors, "the client must see the server exit"
    assert _gone(grandchild) and not server.alive()


def test_acquire_reuses_an_idle_server_and_keeps_at_most_max_idle(tmp_path):
    env = _env()
    forkserver.close_all()
    first = forkserver.acquire(["import json"], env)
    forkserver.release(first)
    assert forkserver.acquire(["import json"], env) is first  # same preload: reused
    others = [forkserver.acquire([f"import {m}"], env) for m in ("os", "sys")]
    for s in [first, *others]:
        forkserver.release(s)
    assert len(forkserver._IDLE) == forkserver.MAX_IDLE
    assert not first.alive(), "the oldest idle server beyond MAX_IDLE ends"
    forkserver.close_all()
    assert not any(s.alive() for s in others) and forkserver._IDLE == []


def test_the_grader_runs_the_same_driver_with_or_without_a_server(tmp_path, monkeypatch):
    """A driver forked from a server and a fresh driver process run the same command (here: on a spec
    that does not exist, so both fail the same way); without a server the grader starts a process."""
    g = object.__new__(grader.Grader)
    g.sandboxed = False
    g.limits, g.preload = grader.Limits(notebook_timeout=60), ["import json"]
    args = cleanroom.driver_args(tmp_path / "missing-spec.json", tmp_path / "result.json")
    served = g._drive(tmp_path, args, cwd=tmp_path, env=g.env())

    def no_server(*a, **k):
        raise forkserver.ForkServerError("no fork server here")

    monkeypatch.setattr(forkserver, "acquire", no_server)
    fresh = g._drive(tmp_path, args, cwd=tmp_path, env=g.env())
    assert served[0] == fresh[0] == 1
    assert "missing-spec.json" in served[1] and "missing-spec.json" in fresh[1]


def test_a_server_is_not_reused_once_courselib_has_changed(monkeypatch):
    env = _env()
    forkserver.close_all()
    monkeypatch.setattr(forkserver, "_courselib_stamp", lambda: 1)
    old = forkserver.acquire(["import json"], env)
    monkeypatch.setattr(forkserver, "_courselib_stamp", lambda: 2)  # an edit while it grades
    forkserver.release(old)
    again = forkserver.acquire(["import json"], env)
    assert again is not old, "a server that imported the old courselib must not grade with the new one"
    forkserver.release(again)
    assert forkserver.acquire(["import json"], env) is again
    forkserver.close_all()
