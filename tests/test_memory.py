"""courselib.memory: bytes per value measured on real arrays, packed sizes, popcount, model sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from courselib import memory
from courselib.models import MLP


def test_measured_bytes_match_dtypes(rng):
    rows = {r["representation"]: r for r in memory.measure_representations(rng.standard_normal(1001))}
    for name in ("int32", "float32", "float64", "bool"):
        assert rows[name]["nbytes"] == 1001 * np.dtype(memory.REPRESENTATIONS[name]).itemsize
    assert rows["packed bits"]["nbytes"] == math.ceil(1001 / 8) == memory.packed_bytes(1001)
    assert rows["bool"]["ratio_vs_float32"] == 4.0


def test_bytes_per_value_and_ratios():
    assert [memory.bytes_per_value(r) for r in memory.REPRESENTATIONS] == [4, 4, 8, 1, 0.125]
    assert memory.compression_ratio("float32", "bool") == 4
    assert memory.compression_ratio("float32", "packed bits") == 32
    assert memory.compression_ratio("float64", "packed bits") == 64
    with pytest.raises(ValueError, match="unknown representation"):
        memory.bytes_per_value("int4")


def test_popcount_and_hamming_against_numpy(rng):
    a = rng.integers(0, 2**63, size=100, dtype=np.uint64)
    b = rng.integers(0, 2**63, size=100, dtype=np.uint64)
    expected = np.bitwise_count(a ^ b)
    got = [memory.hamming_distance_int(int(x), int(y)) for x, y in zip(a, b)]
    np.testing.assert_array_equal(got, expected)
    assert memory.hamming_distance_int(0b1011, 0b0110) == 3
    with pytest.raises(ValueError):
        memory.popcount(-1)


def test_model_size_on_disk_packed_is_much_smaller():
    model = MLP(784, (512,))
    f32 = memory.model_size_on_disk(model, "float32")
    packed = memory.model_size_on_disk(model, "packed bits")
    n = sum(p.numel() for p in model.parameters())
    assert f32 >= 4 * n
    assert packed < f32 / 25  # large matrices approach the 32x limit
    with pytest.raises(ValueError):
        memory.model_size_on_disk(model, "int8")


def test_packed_bytes_is_exact_for_huge_counts():
    """ceil(n / 8) in integers: a float division rounds 2**60 + 1 bits down to 2**57 bytes."""
    assert memory.packed_bytes(2**60 + 1) == 2**57 + 1
    assert memory.packed_bytes(0) == 0 and memory.packed_bytes(7) == 1 and memory.packed_bytes(16) == 2
