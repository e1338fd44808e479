"""Regenerate constraints.txt (the exact pins `make` installs) from the current .venv."""

import subprocess
import sys
from pathlib import Path

HEADER = """# Exact pins for this course's machines (CPU only), used by the Makefile: pip install -c constraints.txt.
# pyproject.toml keeps ranges so Colab/Binder users keep their own torch. Regenerate with: make lock
# Hand-set pins (the rest is the resolved set of 'pip freeze'):
#   torch==2.13.0 (CPU wheel on disk), jupyter-book>=1.0.4,<2, nbgrader 0.9.x, nbval 0.11
"""

out = subprocess.run(
    [sys.executable, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True, check=True
).stdout
lines = [ln for ln in out.splitlines() if ln and not ln.startswith(("courselib", "-e "))]
lines = ["torch==2.13.0" if ln.startswith("torch==") else ln for ln in lines]
Path(__file__).resolve().parents[1].joinpath("constraints.txt").write_text(HEADER + "\n".join(lines) + "\n")
print(f"constraints.txt: {len(lines)} pins")
