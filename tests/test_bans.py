"""courselib.grading.bans: a lab's stated bans, read from the submitted notebook in the clean room (issue 24)."""

from __future__ import annotations

import linecache

import pytest

from courselib.grading import bans


@pytest.fixture
def submission(monkeypatch):
    def set_cells(*cells):
        monkeypatch.setattr(bans, "submission_code", list(cells))

    return set_cells


def proxy(name):  # what the clean room binds a student's function to: no code of its own
    def f(*a, **k):
        raise RuntimeError("runs in the student's kernel")

    f.__name__ = name
    f.__courselib_remote__ = name
    return f


def test_the_definition_and_everything_it_reaches(submission):
    submission(
        "import courselib.binaryconnect as bc\n_k = bc.xnor_popcount_matmul\n",
        "def helper(a, b):\n    return _k(a, b, 8)\n",
        "def xnor_matmul(a, b):\n    return helper(a, b)\n",
        "def unrelated():\n    return bc.binary_conv2d\n",
    )
    used = bans.names_used(proxy("xnor_matmul"))
    assert {"xnor_popcount_matmul", "helper", "_k", "binaryconnect"} <= used
    assert "binary_conv2d" not in used  # a definition the function never reaches
    with pytest.raises(AssertionError, match="xnor_popcount_matmul"):
        bans.check_ban(proxy("xnor_matmul"), {"xnor_popcount_matmul"})


def test_aliases_imports_and_dynamic_lookups(submission):
    submission("from courselib.binaryconnect import xnor_popcount_matmul as fast\ndef f(a):\n    return fast(a)\n")
    assert "xnor_popcount_matmul" in bans.names_used(proxy("f"))
    submission(
        "import courselib.binaryconnect as bc\ndef f(a):\n    return getattr(bc, 'xnor_' + 'popcount_matmul')(a)\n"
    )
    assert bans.DYNAMIC in bans.names_used(proxy("f"))
    with pytest.raises(AssertionError, match="dynamic look-up"):
        bans.check_ban(proxy("f"), {"xnor_popcount_matmul"})
    submission("def f(m):\n    return getattr(m, 'weight')\n")  # a constant attribute name is not dynamic
    assert bans.DYNAMIC not in bans.names_used(proxy("f")) and "weight" in bans.names_used(proxy("f"))
    for dyn in ("globals()['g']()", "eval('g')()", "__import__('courselib').x", "vars(bc)['g']"):
        submission(f"def f():\n    return {dyn}\n")
        assert bans.DYNAMIC in bans.names_used(proxy("f")), dyn


def test_loops_in_the_function_and_its_helpers(submission):
    submission(
        "def count(x):\n    return sum(1 for b in bin(x) if b == '1')\n", "def dist(a, b):\n    return count(a ^ b)\n"
    )
    assert bans.loops_used(proxy("dist")) == ["GeneratorExp"]
    submission("def dist(a, b):\n    return (a ^ b).bit_count()\n")
    assert bans.loops_used(proxy("dist")) == []


def test_a_forged_source_changes_nothing(submission):
    """The kernel could serve any text for a function (a fake linecache entry, a replaced __code__): the clean
    room never asks it, it reads the submitted notebook."""
    submission(
        "def dist(a, b):\n    n = 0\n    while a or b:\n        n += (a ^ b) & 1\n        a >>= 1; b >>= 1\n    return n\n"
    )
    fake = proxy("dist")
    linecache.cache["<forged>"] = (30, None, ["def dist(a, b):\n", "    return (a ^ b).bit_count()\n"], "<forged>")
    fake.__code__ = fake.__code__.replace(co_filename="<forged>", co_firstlineno=1)
    assert bans.loops_used(fake) == ["While"]


def test_a_missing_definition_fails_and_outside_the_clean_room_the_source_is_read(submission):
    submission("x = 1\n")
    with pytest.raises(AssertionError, match="not found"):
        bans.names_used(proxy("dist"))

    def local(a):
        return sorted(a)

    submission()
    bans.submission_code = None
    assert "sorted" in bans.names_used(local)


def test_rebind_changes_the_callers_names_and_the_kernels_for_the_block():
    from courselib.grading import testing

    ns = {"X_val": 1, "__builtins__": __builtins__}
    code = (
        "from courselib.grading.testing import rebind, kernel_overrides\n"
        "with rebind(X_val=2, extra=3):\n"
        "    inside = (X_val, extra, dict(kernel_overrides))\n"
        "    try:\n"
        "        with rebind(X_val=4):\n"
        "            nested = (X_val, dict(kernel_overrides))\n"
        "            raise ValueError\n"
        "    except ValueError:\n"
        "        pass\n"
        "    after_nested = (X_val, dict(kernel_overrides))\n"
    )
    exec(code, ns)
    assert ns["inside"] == (2, 3, {"X_val": 2, "extra": 3})
    assert ns["nested"] == (4, {"X_val": 4, "extra": 3})
    assert ns["after_nested"] == (2, {"X_val": 2, "extra": 3})
    assert ns["X_val"] == 1 and "extra" not in ns and testing.kernel_overrides == {}
