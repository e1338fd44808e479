"""Build the HTML book into _build/html with warnings as errors, and record how long it took.

Called by `make book` (after the lab releases are generated). Executed notebook outputs are cached
in _build/.jupyter_cache, so a rebuild with nothing changed executes nothing. Lowered ExecuTorch programs are
kept in _build/programs (``COURSELIB_PROGRAM_CACHE``, unless already set; :func:`courselib.deploy.program_key`):
the deploying chapter lowers its reference and int8 programs once for its walk-through and its study, and a
rebuild after an edit lowers only the models that changed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    jb = Path(sys.executable).parent / "jupyter-book"
    log = REPO / "_build" / "build_times.json"
    history = json.loads(log.read_text()) if log.exists() else []
    cmd = [str(jb), "build", str(REPO), "-W", "--keep-going"]
    # Sphinx re-reads only changed pages, so warnings of an unchanged page are not shown again:
    # after a failed build, re-read everything (executed outputs still come from the cache).
    if history and not history[-1]["ok"]:
        cmd.append("--all")
    # One BLAS/OpenMP thread in every chapter's kernel: the chapters' matrices are small, and on a shared
    # 2-core machine BLAS threads that spin waiting for a core slowed small SVDs and products many times
    # (the chapters that time things fix torch's threads themselves).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.setdefault("COURSELIB_PROGRAM_CACHE", str(REPO / "_build" / "programs"))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env)
    seconds = time.perf_counter() - t0
    log.parent.mkdir(exist_ok=True)
    history.append({"seconds": round(seconds, 1), "ok": proc.returncode == 0, "time": time.time()})
    log.write_text(json.dumps(history[-20:], indent=1))
    print(f"book build {'succeeded' if proc.returncode == 0 else 'FAILED'} in {seconds:.1f} s")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
