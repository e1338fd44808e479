"""Fast unit tests of the class-scale grader's pieces: limits, submissions, plain data, sandbox."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from courselib import grading
from courselib.grading import cleanroom, feedback, grader, intake, wire

REPO = Path(__file__).resolve().parents[1]
LAB = "lab01_binary_codes"


def test_limits_validate():
    assert grading.Limits().cell_timeout > 0
    for bad in ({"cell_timeout": 0}, {"memory_mb": -1}, {"notebook_timeout": 1.5}, {"output_kb": True}):
        with pytest.raises(ValueError, match="positive int"):
            grading.Limits(**bad)


def test_grade_rejects_bad_arguments(tmp_path):
    with pytest.raises(grading.GradingError, match="unknown lab"):
        grading.grade("lab99", tmp_path, REPO / "labs")
    with pytest.raises(ValueError, match="workers"):
        grading.grade(LAB, tmp_path, REPO / "labs", workers=0)


def test_cli_grade_reports_unknown_lab(capsys):
    from courselib.grading.cli import main

    assert main(["--course-dir", str(REPO / "labs"), "grade", "lab99", "."]) == 2
    assert "unknown lab" in capsys.readouterr().err


def test_collect_submissions_folder_and_zip(tmp_path):
    subs = tmp_path / "subs"
    (subs / "ann" / LAB).mkdir(parents=True)
    (subs / "ann" / LAB / f"{LAB}.ipynb").write_text("{}")
    (subs / "bob" / LAB).mkdir(parents=True)
    (subs / "bob" / LAB / "Copy of lab.ipynb").write_text("{}")  # a wrong name is never guessed
    (subs / ".hidden").mkdir()
    found = grading.collect_submissions(LAB, subs)
    assert found == {"ann": subs / "ann" / LAB / f"{LAB}.ipynb", "bob": None}
    # an LMS download: flat <student>_<file> names
    z = tmp_path / "lms.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr(f"cat_{LAB}.ipynb", "{}")
        zf.writestr("dan_notes.txt", "hi")
    found = grading.collect_submissions(LAB, z, tmp_path / "unz")
    assert set(found) == {"cat"} and found["cat"].name == f"cat_{LAB}.ipynb"
    assert [u.split(":")[0] for u in found.unmatched] == ["dan_notes.txt"]  # no student's notebook: listed
    # the folder layout inside a zip, under one top folder
    z2 = tmp_path / "tree.zip"
    with zipfile.ZipFile(z2, "w") as zf:
        zf.writestr(f"download/eve/{LAB}/{LAB}.ipynb", "{}")
    found = grading.collect_submissions(LAB, z2, tmp_path / "unz2")
    assert list(found) == ["eve"] and found["eve"].exists()
    z3 = tmp_path / "evil.zip"
    with zipfile.ZipFile(z3, "w") as zf:
        zf.writestr("../escape.ipynb", "{}")
    with pytest.raises(grading.GradingError, match="unsafe path"):
        grading.collect_submissions(LAB, z3, tmp_path / "unz3")
    with pytest.raises(grading.GradingError, match="not a folder"):
        grading.collect_submissions(LAB, tmp_path / "nowhere")


def test_check_notebook():
    good = (REPO / "labs" / "source" / LAB / f"{LAB}.ipynb").read_bytes()
    assert intake.check_notebook(good) is None
    assert "not JSON" in intake.check_notebook(b"{oops")
    assert "not JSON" in intake.check_notebook(b"\x89PNG\x00\xff")
    assert "no cells" in intake.check_notebook(b'{"a": 1}')
    assert "invalid notebook" in intake.check_notebook(b'{"cells": 3, "metadata": {}, "nbformat": 4}')


class AlwaysEqual:
    def __eq__(self, other):
        return True


class MyArray(np.ndarray):
    pass


def test_plain_unpickler_refuses_student_objects():
    for value in [
        np.arange(6).reshape(2, 3),
        np.float32(1.5),
        (1, 2.0, "s", None, b"b"),
        {"k": [np.int64(3)]},
        np.zeros(3, dtype=np.uint8),
        {1, 2},
        range(4),
    ]:
        out = wire.plain_loads(pickle.dumps(value, protocol=4))
        if isinstance(value, np.ndarray):
            assert np.array_equal(out, value) and out.dtype == value.dtype
        else:
            assert out == value

    for bad in [
        AlwaysEqual(),
        np.array([AlwaysEqual()], dtype=object),
        np.array([1, "a"], dtype=object),
        np.zeros(2).view(MyArray),
        np.ma.array([1, 2]),
        [AlwaysEqual()],
    ]:
        with pytest.raises(pickle.UnpicklingError):
            wire.plain_loads(pickle.dumps(bad))


# Pickles a student's kernel could send to make the clean room allocate or compute without bound: each must be
# refused before it costs anything (issue 24).
ALLOCATION_BOMBS = {
    "bytearray(n)": b"\x80\x04cbuiltins\nbytearray\nJ\x00\xca\x9a;\x85R.",
    "bytes(n)": b"\x80\x04cbuiltins\nbytes\nJ\x00\xca\x9a;\x85R.",
    "list(range(n))": b"\x80\x04cbuiltins\nlist\ncbuiltins\nrange\nJ\x00\xca\x9a;\x85R\x85R.",
    "tuple(range(n))": b"\x80\x04cbuiltins\ntuple\ncbuiltins\nrange\nJ\x00\xca\x9a;\x85R\x85R.",
    "ndarray(shape)": b"\x80\x04cnumpy\nndarray\nJ\x00\xca\x9a;\x85\x85R.",
    "_reconstruct(shape)": b"\x80\x04cnumpy._core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\x00\xca\x9a;\x85U\x01b\x87R.",
    "object scalar from bytes": b"\x80\x04cnumpy._core.multiarray\nscalar\ncnumpy\ndtype\nX\x01\x00\x00\x00O\x85RC\x08AAAAAAAA\x86R.",
    "os.system": b"\x80\x04cos\nsystem\nX\x04\x00\x00\x00true\x85R.",
}


@pytest.mark.parametrize("name", ALLOCATION_BOMBS)
def test_plain_loads_refuses_allocation_bombs(name):
    with pytest.raises(pickle.UnpicklingError):
        wire.plain_loads(ALLOCATION_BOMBS[name])


def test_shared_structure_is_walked_once_and_cycles_are_refused():
    x = []
    for _ in range(60):  # 2**60 paths through ~60 objects: each object visited once
        x = [x, x]
    data = pickle.dumps(x, protocol=5)
    assert len(data) < 400
    got = wire.rebuild(wire.plain_loads(data), None, None)
    assert got[0] is got[1]  # the sharing is kept, not expanded
    with pytest.raises(wire.WireError, match="more than 100 objects"):
        wire.plain_loads(pickle.dumps([[i] for i in range(200)]), max_nodes=100)
    loop = []
    loop.append(loop)
    with pytest.raises(wire.WireError, match="contains itself"):
        wire.rebuild(wire.plain_loads(pickle.dumps(loop)), None, None)


def test_solution_names():
    names = cleanroom.solution_names(
        [
            "def f(x):\n    return x\n",
            "A = 1\nb, (c, d) = 1, (2, 3)\nclass K:\n    pass\n",
            "%time e = 1\n",
            "def broken(:\n",
        ]
    )
    assert names == ["f", "A", "b", "c", "d", "K"]


@pytest.mark.slow  # autogrades a tampered submission with nbgrader: ~20 s
def test_tampering_detection(tmp_path):
    course = tmp_path / "course"
    (course / "source").mkdir(parents=True)
    (course / "nbgrader_config.py").write_text((REPO / "labs" / "nbgrader_config.py").read_text())
    import shutil

    shutil.copytree(REPO / "labs" / "source" / LAB, course / "source" / LAB)
    grading.release(LAB, course)
    g = grader.Grader(LAB, course, grading.Limits(), tmp_path, [], False, False)
    release = json.loads((course / "release" / LAB / f"{LAB}.ipynb").read_text())
    source = json.loads((course / "source" / LAB / f"{LAB}.ipynb").read_text())
    assert g.tampering(release) == [] and g.tampering(source) == []
    edited = json.loads(json.dumps(release))
    kept = []
    for cell in edited["cells"]:
        gid = cell["metadata"].get("nbgrader", {}).get("grade_id")
        if gid == "q2_test":
            cell["source"] = "pass"
        if gid == "q3_test":
            continue
        if gid == "q1_code":
            cell["source"] = "def fit_means(X):\n    return 0\n"  # a solution cell may change
        kept.append(cell)
    edited["cells"] = kept
    assert g.tampering(edited) == ["q2_test (edited)", "q3_test (deleted)"]

    # The release is what students hold: a source whose visible part changed after it was generated must not
    # be graded (visible tests of one version, hidden tests of another); hidden lines may change freely.
    src_path = course / "source" / LAB / f"{LAB}.ipynb"
    for cell in source["cells"]:
        if cell["metadata"].get("nbgrader", {}).get("grade_id") == "q2_test":
            text = "".join(cell["source"])
            hidden_at = text.index("### BEGIN HIDDEN TESTS")
            cell["source"] = (
                text[:hidden_at]
                + "### BEGIN HIDDEN TESTS\nassert True  # a new hidden check\n"
                + text[hidden_at + len("### BEGIN HIDDEN TESTS\n") :]
            )
    src_path.write_text(json.dumps(source))
    assert grader.stale_release_cells(source, release) == []
    grader.Grader(LAB, course, grading.Limits(), tmp_path, [], False, False)
    for cell in source["cells"]:
        gid = cell["metadata"].get("nbgrader", {}).get("grade_id")
        if gid in ("q2_test", "q3_test"):
            cell["source"] = "assert 1 == 1  # a new visible test\n" + "".join(cell["source"])
    src_path.write_text(json.dumps(source))
    assert grader.stale_release_cells(source, release) == ["q2_test", "q3_test"]
    with pytest.raises(grading.GradingError, match=f"courselib release {LAB}"):
        grader.Grader(LAB, course, grading.Limits(), tmp_path, [], False, False)


# The sandbox itself (allow-list root, namespaces, limits) is tested in tests/test_sandbox.py.


def test_coalesce_streams_joins_split_prints_only():
    """A print the kernel delivered in two messages is one output after grading (same feedback every run)."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print('a'); import sys; print('e', file=sys.stderr); print('b')")
    out = nbformat.v4.new_output
    cell.outputs = [
        out("stream", name="stdout", text="a"),
        out("stream", name="stdout", text="\n"),
        out("stream", name="stderr", text="e\n"),
        out("stream", name="stdout", text="b\n"),
        out("display_data", data={"text/plain": "x"}),
        out("stream", name="stdout", text="c"),
    ]
    nb.cells.append(cell)
    feedback.coalesce_streams(nb)
    got = [(o.output_type, o.get("name"), o.get("text")) for o in cell.outputs]
    assert got == [
        ("stream", "stdout", "a\n"),
        ("stream", "stderr", "e\n"),
        ("stream", "stdout", "b\n"),
        ("display_data", None, None),
        ("stream", "stdout", "c"),
    ]


@pytest.mark.slow  # releases lab 0 with nbgrader: ~10 s; the solution's runs are scripted
def test_calibration_never_seals_a_part_for_being_slow(tmp_path, monkeypatch):
    """A part the solution fails in the clean room moves to the sealed tier (judged in the student's kernel);
    a part whose call only ran out of time is calibrated again, never sealed: on a busy machine a sealed part
    would let tricks in the student's kernel decide its score."""
    from courselib.grading.course import scratch_course
    from courselib.grading.gradebook import lab_state_dir

    lab = "lab00_memory"
    course = scratch_course(lab, tmp_path, REPO / "labs")
    (tmp_path / "base").mkdir()
    g = grader.Grader(lab, course, grading.Limits(cell_timeout=5), tmp_path / "base", [], False, False)
    first = g.parts[0][0]
    runs: list[dict] = []

    def scripted(outcomes):
        def run_notebook(root, nb, *, tiers, mutable, feedback_html, autograded, **kw):
            status = outcomes[len(runs)]
            runs.append(dict(tiers))
            verdicts = {p: {"status": status if p == first else "passed", "where": "hidden"} for p, _ in g.parts}
            return 0, {"verdicts": verdicts, "changed": {}}, "", 1.0

        runs.clear()
        (lab_state_dir(course, lab) / "_calibration.json").unlink(missing_ok=True)
        g.tiers = {p: "clean" for p, _ in g.parts}
        monkeypatch.setattr(g, "run_notebook", run_notebook)

    scripted(["timeout", "passed"])  # slow once: calibrated again, every part stays clean
    g.calibrate()
    assert len(runs) == 2 and set(g.tiers.values()) == {"clean"}, (runs, g.tiers)

    scripted(["timeout", "timeout"])  # slow twice: the instructor is told to raise the limit; nothing is cached
    with pytest.raises(grading.GradingError, match=rf"did not finish {first} within the cell timeout \(5 s\)"):
        g.calibrate()
    assert len(runs) == 2 and not (lab_state_dir(course, lab) / "_calibration.json").exists()

    scripted(["failed", "passed"])  # fails in the clean room, passes in the sealed run: sealed
    g.calibrate()
    assert runs == [{p: "clean" for p, _ in g.parts}, {p: "sealed" if p == first else "clean" for p, _ in g.parts}]
    assert g.tiers[first] == "sealed" and "fails it in the clean room" in g.tier_reasons[first]


# ------------------------------------------------------------------------------------------------
# the channel between the clean room and the student's kernel under interrupts (CI found both races)
HELPER = """
import sys, time
from courselib.grading import kernel

def add(a, b):
    return a + b

def slow_add(a, b):
    time.sleep(1.0)
    return a + b

kernel.serve(sys.argv[1], {"add": add, "slow_add": slow_add})
"""


@pytest.fixture
def helper(tmp_path):
    """:func:`courselib.grading.kernel.serve` in a child process (as in a kernel: its main thread), connected."""
    import socket
    import subprocess
    import sys

    address = str(tmp_path / "s.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(1)
    listener.settimeout(60)
    proc = subprocess.Popen([sys.executable, "-c", HELPER, address], cwd=REPO)
    conn, _ = listener.accept()
    listener.close()
    yield proc, wire.Channel(conn)
    proc.kill()
    proc.wait()


def test_an_interrupt_never_leaves_a_frame_half_read(helper):
    """The interrupt lands while the helper reads a request: the request is still read whole and answered
    (before, the ``KeyboardInterrupt`` dropped the half it had read, and every later frame was out of step)."""
    import os
    import signal
    import time

    proc, channel = helper
    data = wire.dumps(("kinds", 1, ["add", "nothing"]))
    frame = len(data).to_bytes(4, "big") + data
    channel.sock.sendall(frame[:7])
    time.sleep(0.5)  # the helper is blocked in the middle of the frame
    os.kill(proc.pid, signal.SIGINT)
    time.sleep(0.5)
    channel.sock.sendall(frame[7:])
    answer = wire.plain_loads(channel.recv(1 << 20, time.monotonic() + 20))
    assert answer == ("ok", 1, {"add": "callable", "nothing": "missing"})
    assert proc.poll() is None


def test_a_late_interrupt_never_stops_a_later_call(helper):
    """ipykernel delivers the clean room's interrupt some time after it is sent. :meth:`KernelSession.recover`
    waits until the helper has received it, so it cannot land in the next part's call and fail it."""
    import os
    import signal
    import threading

    proc, channel = helper

    class DelayedInterrupts:  # what a kernel manager does with interrupt_mode "message", under load
        async def is_alive(self):
            return proc.poll() is None

        async def interrupt_kernel(self):
            threading.Timer(0.3, os.kill, (proc.pid, signal.SIGINT)).start()

    session = cleanroom.KernelSession(
        DelayedInterrupts(), REPO, call_timeout=20, output_limit=1 << 20, max_reply=1 << 20
    )
    session.channel = channel
    assert session.function("add")(2, 3) == 5
    assert session.recover()  # as after a bad reply: the call had answered, the kernel is idle
    assert session.function("slow_add")(2, 3) == 5  # runs 1 s: the interrupt would have landed in it
    assert session.interrupts == 1 and proc.poll() is None


def test_the_clean_room_driver_runs_one_thread(tmp_path, monkeypatch):
    """The driver and its fork server run the hidden tests' own computations beside the student's kernel: with
    the environment :meth:`Grader.env` gives them, torch and NumPy's BLAS use one thread (two workers on two
    cores with a thread pool each made lab 5's clean room three times slower)."""
    import subprocess
    import sys

    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(k, raising=False)  # as an instructor's shell has them: unset
    g = grader.Grader.__new__(grader.Grader)
    g.sandboxed = False
    probe = (
        "import torch, numpy\nfrom threadpoolctl import threadpool_info\n"
        "print(torch.get_num_threads(), max(p['num_threads'] for p in threadpool_info()))"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=g.env(), capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1"], out.stdout + out.stderr


@pytest.mark.slow  # exports two small programs and starts the runner twice: ~25 s
def test_one_runner_serves_a_submissions_programs(tmp_path, monkeypatch):
    """The clean room's runner: one process runs a submission's programs one after the other, each output equal
    to the runtime's in this process; a program that cannot load fails alone, and a runner that died is
    replaced for the next program."""
    import os
    import signal
    import sys

    import torch

    from courselib import deploy
    from courselib.grading import testing

    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, k)) for k in (3, 5)]
    x = torch.randn(5, 6)
    paths = [deploy.export_executorch(m, x, tmp_path / f"m{i}.pte") for i, m in enumerate(models)]
    local = [testing.run_program(p, x) for p in paths]  # no runner: this process
    for m, got in zip(models, local):
        assert got.shape == (5, m[-1].out_features) and np.allclose(got, m(x).detach().numpy(), atol=1e-5)

    monkeypatch.setattr(testing, "runner", {"argv_prefix": [sys.executable], "work": str(tmp_path), "timeout": 120})
    try:
        first = testing.run_program(paths[0], x)
        pid = testing._Runner.get().proc.pid
        with pytest.raises(AssertionError, match="could not be loaded"):
            testing.run_program(b"not a program", x)
        second = testing.run_program(paths[1].read_bytes(), x.numpy())
        assert testing._Runner.get().proc.pid == pid  # the same process ran all three
        assert first.shape == local[0].shape and np.array_equal(first, local[0])
        assert second.shape == local[1].shape and np.array_equal(second, local[1])
        os.kill(pid, signal.SIGKILL)  # a program that crashed the runtime ended the runner
        testing._Runner.get().proc.wait()
        again = testing.run_program(paths[0], x)
        assert testing._Runner.get().proc.pid != pid and np.array_equal(again, local[0])
    finally:
        testing.close_runner()


@pytest.mark.parametrize(
    ("runner_code", "message"),
    [
        ("import time; time.sleep(60)", "did not finish within 2 s"),  # never answers
        ("import sys; sys.stdout.buffer.write(b'\\xff' * 8); sys.stdout.flush(); sys.stdin.read()", "larger than"),
        (
            "import sys; sys.stdout.buffer.write(b'\\x00' * 7 + b'\\x04' + b'junk'); sys.stdout.flush()",
            "could not be read",
        ),
    ],
    ids=["silent", "huge-frame", "not-npy"],
)
def test_a_runner_costs_the_clean_room_bounded_time_and_memory(tmp_path, monkeypatch, runner_code, message):
    """Whatever the runner's process does (a program that took it over), the clean room waits at most the
    program's time, reads at most MAX_OUTPUT_BYTES, and accepts a plain .npy array only."""
    import sys
    import time

    from courselib.grading import testing

    argv = [sys.executable, "-c", runner_code]  # run_program appends "-m courselib.grading.testing": ignored
    monkeypatch.setattr(testing, "runner", {"argv_prefix": argv, "work": str(tmp_path), "timeout": 2})
    t0 = time.monotonic()
    try:
        with pytest.raises(AssertionError, match=message):
            testing.run_program(b"program", np.zeros((2, 3)))
    finally:
        testing.close_runner()
    assert time.monotonic() - t0 < 10


def test_a_restarted_kernels_first_cell_is_not_charged_for_the_old_kernels_exit(tmp_path):
    """The clean room restarts a kernel as ``grade_notebook``'s ``restart()`` does: stop it, start another,
    re-run the notebook. Stopping the old kernel drops its client's output connection, which the oversize
    monitor reports some time later; before, that late event marked the *new* kernel's first cell as over
    the output limit, which interrupted it and lost the cell's definitions (the 7011516 run's
    ``bomb_huge_reply`` lost q3 that way; each such cell also waited out its 30 s timeout)."""
    import time

    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    from courselib.grading.execute import OUTPUT_LIMIT_ENAME, LimitedExecute

    ep = LimitedExecute(timeout=30, kernel_name="python3", allow_errors=True, shutdown_kernel="immediate")
    ep.reset_execution_trackers()
    ep.resources = {"metadata": {"path": str(tmp_path)}}
    ep.km = ep.create_kernel_manager()
    ep.start_new_kernel(cwd=str(tmp_path))
    ep.start_new_kernel_client()
    try:
        ep._cleanup_kernel()  # the old kernel stops: its client's connection drops
        time.sleep(1.0)  # the monitor's late event arrives meanwhile
        ep.km = ep.create_kernel_manager()
        ep.start_new_kernel(cwd=str(tmp_path))
        ep.start_new_kernel_client()
        ep.nb = new_notebook(cells=[new_code_cell("x = 41\nprint('defined')"), new_code_cell("x + 1")])
        start = time.monotonic()
        for index, cell in enumerate(ep.nb.cells):
            ep.execute_cell(cell, index, store_history=True)
        outputs = [o for c in ep.nb.cells for o in c.outputs]
        assert not any(o.get("ename") == OUTPUT_LIMIT_ENAME for o in outputs), nbformat.writes(ep.nb)
        assert outputs[0]["text"] == "defined\n" and outputs[1]["data"]["text/plain"] == "42"
        assert time.monotonic() - start < 20 and not ep.oversized
    finally:
        ep._cleanup_kernel()


def test_the_driver_keeps_lowered_programs_per_lab_and_an_unsandboxed_kernel_never_sees_the_cache(
    tmp_path, monkeypatch
):
    """The clean room's driver (trusted) gets the lab's program folder, under the same variable that
    courselib.deploy reads; a grader without the sandbox, whose kernels inherit the driver's environment,
    gets none (the student's code could write programs the driver would then read)."""
    from courselib import deploy
    from courselib.grading.course import scratch_course
    from courselib.grading.gradebook import lab_state_dir

    monkeypatch.delenv(grader.PROGRAM_CACHE_ENV, raising=False)
    assert grader.PROGRAM_CACHE_ENV == deploy.PROGRAM_CACHE_ENV
    course = scratch_course(LAB, tmp_path, REPO / "labs")
    sandboxed = grader.Grader(LAB, course, grading.Limits(), tmp_path, [], False, True)
    assert sandboxed.env()[grader.PROGRAM_CACHE_ENV] == str(lab_state_dir(course, LAB) / "programs")
    monkeypatch.setenv(grader.PROGRAM_CACHE_ENV, str(tmp_path / "shared"))  # an instructor's own folder is kept
    assert sandboxed.env()[grader.PROGRAM_CACHE_ENV] == str(tmp_path / "shared")
    bare = grader.Grader(LAB, course, grading.Limits(), tmp_path, [], False, False)
    assert grader.PROGRAM_CACHE_ENV not in bare.env()
