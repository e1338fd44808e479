"""Shared fixtures: the real MNIST test set beside the repo, the venv's bin on PATH, seeds."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"

# nbgrader runs `alembic` by name: put this interpreter's bin first on PATH for every test.
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
# No MPLBACKEND here: kernels started by the tests inherit the environment, and a forced Agg backend
# would stop notebooks from showing their figures inline.


@pytest.fixture
def shared_mnist() -> Path:
    """Path to ../shared/data/mnist (the real MNIST test set); skips the test when it is absent."""
    if not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("../shared/data/mnist is not present (CI and the course machines have it)")
    return SHARED_MNIST


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _torch_threads():
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
