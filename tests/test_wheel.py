"""The built wheel, as a student installs it: into a fresh venv, offline, then every lab's solution runs.

Set-up (module fixture, a few minutes):

1. the wheel is built the way `make book` builds it (tools/build_dist.py: sdist, then the wheel from it);
2. a wheelhouse is packed from the course venv (tools/wheelhouse.py: the dependency closure of
   `ondevice-ml-courselib[labs]` plus nbclient and ipykernel, each installed distribution repacked as a
   wheel; torch's CPU wheel is a file already, in /opt/wheels or TORCH_WHEELS). It is cached in
   _build/wheelhouse;
3. `python -m venv` makes a fresh venv (no system site-packages, its own pip from ensurepip) and pip
   installs the requirement of the students' command, `ondevice-ml-courselib[labs]==<version>`, there
   with `--no-index --find-links` (the built wheel's folder, the wheelhouse, the torch wheel): pip resolves
   courselib's declared dependencies against the wheelhouse and nothing else. When `unshare` can make a network namespace
   (root), the install and the labs run with no network at all (only loopback, for the kernels).

Then each lab's source notebook (the solution, without its hidden tests: those run only where the
instructor grades) runs in that venv with nbclient, from a temporary copy of its folder, so
`import courselib` can only find the installed wheel. A lab that needs a dependency the
wheel does not declare fails here with ModuleNotFoundError.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import build_dist  # noqa: E402
import lab_setup  # noqa: E402
import wheelhouse  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("wheel")]
LABS = sorted(p.name for p in (REPO / "labs" / "source").iterdir() if p.is_dir())
TORCH_WHEELS = Path(os.environ.get("TORCH_WHEELS", "/opt/wheels"))
WHEELHOUSE = REPO / "_build" / "wheelhouse"
EXTRA_TOOLS = ["nbclient", "ipykernel"]  # what runs the notebooks, not part of the student install

RUN_NOTEBOOK = r"""
import sys, time, nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
t0 = time.perf_counter()
NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": "."}}).execute()
for cell in nb.cells:  # the lab's summary (courselib.labcheck), as the student's Run All shows it
    if cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") == "labcheck":
        print("".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stdout"))
import courselib
print(f"ran {sys.argv[1]} in {time.perf_counter() - t0:.1f} s with courselib {courselib.__version__} from {courselib.__file__}")
"""


def without_hidden_tests(nb: dict) -> dict:
    """The solution as a student who solved the lab has it: answers and visible tests, no hidden tests.

    Hidden tests run only in the instructor's grading environment (they may use courselib.grading and its
    private data), never in a student's install.
    """
    for cell in nb["cells"]:
        lines, hidden = [], False
        for ln in "".join(cell["source"]).split("\n"):
            if "### BEGIN HIDDEN TESTS" in ln:
                hidden = True
            elif "### END HIDDEN TESTS" in ln:
                hidden = False
            elif not hidden:
                lines.append(ln)
        cell["source"] = "\n".join(lines)
    return nb


def student_requirement() -> str:
    """The requirement of the one documented install command, `pip install "<this>"`."""
    cmd = lab_setup.install_command()
    assert cmd.startswith("pip install ")
    return cmd.removeprefix("pip install ").strip('"')


def offline_prefix() -> list[str]:
    """A command prefix that runs without any network (a new network namespace with only loopback up)."""
    if shutil.which("unshare") and shutil.which("ip"):
        probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
        if probe.returncode == 0:
            return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "offline"]
    return []


def clean_env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV", "JUPYTER"))}
    env.update(
        PIP_CONFIG_FILE=os.devnull,  # not this machine's pip.conf (its extra indexes and find-links)
        PIP_NO_INDEX="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        VIRTUAL_ENV=str(venv),
        MPLBACKEND="Agg",
    )
    return env


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    torch_wheels = sorted(TORCH_WHEELS.glob("torch-*-cp311-*.whl"))
    if not torch_wheels:
        pytest.skip(f"no CPU torch wheel in {TORCH_WHEELS} (set TORCH_WHEELS to a folder holding one)")
    tmp = tmp_path_factory.mktemp("wheel")
    wheel, _ = build_dist.build(tmp / "dist")
    wheelhouse.build(WHEELHOUSE, ["ondevice-ml-courselib[labs]", *EXTRA_TOOLS])
    venv = tmp / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    env = clean_env(venv)
    cmd = [
        *offline_prefix(),
        str(py),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-index",
        "--find-links",
        str(WHEELHOUSE),
        "--find-links",
        str(TORCH_WHEELS),
        "--find-links",
        str(wheel.parent),
        "-c",
        str(REPO / "constraints.txt"),
        student_requirement(),  # exactly what the labs' first cell tells a student to install
        *EXTRA_TOOLS,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp)
    assert proc.returncode == 0, "offline install failed:\n" + proc.stdout[-3000:] + proc.stderr[-5000:]
    return py, env, tmp


def test_the_wheel_installs_offline_with_what_every_lab_needs(fresh_venv):
    py, env, tmp = fresh_venv
    code = (
        "import courselib, torch, safetensors, sklearn, scipy, numba, executorch, onnxruntime, ipywidgets\n"
        "print(courselib.__version__, courselib.__file__, torch.__version__)"
    )
    out = subprocess.run([*offline_prefix(), str(py), "-c", code], env=env, capture_output=True, text=True, cwd=tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    version, path, torch_version = out.stdout.split()
    assert version == lab_setup.version()
    assert Path(path).is_relative_to(tmp / "venv"), f"courselib imported from {path}, not the fresh venv"
    assert torch_version.endswith("+cpu")
    check = subprocess.run([str(py), "-m", "pip", "check"], env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # the student install is the wheel's metadata only: nothing of the instructor tooling's extras
    freeze = subprocess.run([str(py), "-m", "pip", "freeze"], env=env, capture_output=True, text=True).stdout.lower()
    for name in ("nbgrader", "jupyter-book", "pytest", "faiss-cpu"):
        assert f"{name}==" not in freeze, f"{name} came into the student venv"
    # the setup cell of a lab passes there
    cell = "\n".join(lab_setup.check_block(lab_setup.version())) + "\nprint('setup ok')"
    ok = subprocess.run([str(py), "-c", cell], env=env, capture_output=True, text=True, cwd=tmp)
    assert ok.stdout.strip() == "setup ok", ok.stderr


@pytest.mark.parametrize("lab", LABS)
def test_lab_solution_runs_in_the_fresh_venv(fresh_venv, lab, tmp_path):
    py, env, _ = fresh_venv
    work = tmp_path / lab
    shutil.copytree(REPO / "labs" / "source" / lab, work, ignore=shutil.ignore_patterns("submission", ".ipynb_*"))
    nb_path = work / f"{lab}.ipynb"
    nb_path.write_text(json.dumps(without_hidden_tests(json.loads(nb_path.read_text()))))
    (work / "run_notebook.py").write_text(RUN_NOTEBOOK)
    proc = subprocess.run(
        [*offline_prefix(), str(py), "run_notebook.py", f"{lab}.ipynb"],
        env=env,
        capture_output=True,
        text=True,
        cwd=work,
        timeout=1200,
    )
    assert proc.returncode == 0, f"{lab} failed in the fresh venv:\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}"
    print(proc.stdout.strip().splitlines()[-1])
    assert str(work) not in proc.stdout.split(" from ")[-1]
    nb = json.loads((work / f"{lab}.ipynb").read_text())
    assert nb["cells"], lab
    n = len(lab_setup.parts(nb))
    if any(c["metadata"].get("nbgrader", {}).get("grade_id") == "labcheck" for c in nb["cells"]):
        # the summary recognises every visible test cell (fingerprints as released) and sees them all pass
        assert f"the visible tests pass in {n} of {n} graded parts" in proc.stdout, proc.stdout[-3000:]
