"""Build the book's claims with the slowest kernels the libraries let you force (`make portability`).

The book asserts only facts that hold on any CPU (CONTRIBUTING.md, "Claims"). This check tries that promise
on the machine at hand by making it look like an older one: every chapter is executed again, in a separate
output folder and with its own execution cache, with

- ``ATEN_CPU_CAPABILITY=default``: PyTorch's ATen kernels without AVX2/AVX-512 (scalar code the compiler may
  auto-vectorize for the baseline x86-64 ISA);
- ``ONEDNN_MAX_CPU_ISA=SSE41``: oneDNN (PyTorch's convolutions and its x86 int8 backend) limited to SSE4.1;
- ``NPY_DISABLE_CPU_FEATURES``: NumPy's dispatched AVX2/AVX-512 loops turned off (the baseline stays);
- ``NUMBA_CPU_NAME=generic``: numba's kernels compiled for a generic x86-64 CPU (no AVX2, no POPCNT
  instruction selection beyond the baseline);
- ``FAISS_OPT_LEVEL=generic``: faiss's generic build where the wheel ships several.

It cannot change what a library decides inside its own dispatcher: XNNPACK (ExecuTorch) and ONNX Runtime's
MLAS pick their kernels from CPUID with no switch to cap them, and no software switch adds an instruction the
CPU lacks (AVX-512 VNNI on an AVX2 machine). So a pass here says the claims survive slower kernels and other
rounding; it does not prove them on every CPU, and a runtime choice that depends on instructions (ONNX
Runtime's int8 saturation without VNNI) must still be reasoned out, not simulated.

Usage: ``.venv/bin/python tools/portability.py [book/chapter.md ...]`` (default: the whole book). Prints one
line per chapter and exits non-zero if any chapter failed; the HTML goes to ``_build/portability``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "_build" / "portability"

#: The environment that forces the slow kernels (see the module docstring for what each one does).
SLOW_KERNELS = {
    "ATEN_CPU_CAPABILITY": "default",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "NPY_DISABLE_CPU_FEATURES": "AVX2 FMA3 AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL",
    "NUMBA_CPU_NAME": "generic",
    "FAISS_OPT_LEVEL": "generic",
}


def _toc(chapters: list[str]) -> str:
    lines = ["format: jb-book", "root: book/index", "chapters:"]
    lines += [f"  - file: {c.removesuffix('.md')}" for c in chapters]
    lines += [f"  - file: {p.relative_to(REPO).with_suffix('')}" for p in sorted((REPO / "book" / "api").glob("*.md"))]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    config = (REPO / "_config.yml").read_text()
    config = config.replace('cache: "_build/.jupyter_cache"', f'cache: "{OUT / ".jupyter_cache"}"')
    (OUT / "_config.yml").write_text(config)
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(REPO), "--path-output", str(OUT)]
    cmd += ["--config", str(OUT / "_config.yml"), "--keep-going"]
    if argv:
        (OUT / "_toc.yml").write_text(_toc(argv))
        cmd += ["--toc", str(OUT / "_toc.yml")]
    env = {
        **os.environ,
        **SLOW_KERNELS,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "tools"), os.environ.get("PYTHONPATH")])),
    }
    probe = subprocess.run(
        [sys.executable, "-c", "from courselib.measure import machine; print(machine(num_threads=1))"],
        env=env,
        capture_output=True,
        text=True,
    )
    print("forced:", " ".join(f"{k}={v}" for k, v in SLOW_KERNELS.items()))
    print(probe.stdout.strip() or probe.stderr.strip()[-500:])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    log = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)
    (OUT / "build.log").write_text(log)
    failed = sorted(set(re.findall(r"book/(\w+)\.md: Executing notebook failed", log)))
    for name, secs in re.findall(r"book/(\w+)\.md: Executed notebook in ([\d.]+) seconds", log):
        print(f"  {name}: executed in {float(secs):.0f} s")
    for name in failed:
        print(f"  {name}: FAILED (traceback in {OUT / '_build' / 'html' / 'reports'})")
    seconds = time.perf_counter() - t0
    ok = proc.returncode == 0 and not failed
    print(f"portability check {'passed' if ok else 'FAILED'} in {seconds:.0f} s; log: {OUT / 'build.log'}")
    (OUT / "result.json").write_text(json.dumps({"ok": ok, "seconds": round(seconds), "failed": failed}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
