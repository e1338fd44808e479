"""Tests for courselib._validation: the declarative checks of scalar arguments that the content modules use."""

from collections.abc import Callable
from numbers import Integral, Real

import numpy as np
import pytest
import torch

from courselib._validation import Interval, InvalidParameterError, Options, check_params


@pytest.mark.parametrize(
    "value, ok",
    [(1, True), (np.int64(7), True), (0, False), (2.0, False), (True, False), ("3", False), (None, False)],
)
def test_integer_interval(value, ok):
    assert Interval(Integral, 1, None).is_satisfied_by(value) is ok


@pytest.mark.parametrize(
    "value, ok", [(0, True), (1, True), (0.5, True), (np.float32(0.25), True), (1.5, False), (-0.1, False)]
)
def test_real_interval_closed(value, ok):
    assert Interval(Real, 0, 1).is_satisfied_by(value) is ok


def test_open_bounds_nan_and_descriptions():
    assert not Interval(Real, 0, None, closed="neither").is_satisfied_by(0.0)
    assert not Interval(Real, 0, 1).is_satisfied_by(float("nan"))
    assert not Interval(Real, 0, 1, closed="right").is_satisfied_by(0)
    assert str(Interval(Integral, 1, None)) == "an integer >= 1"
    assert str(Interval(Real, 0, None, closed="neither")) == "a real number > 0"
    assert str(Interval(Real, 0, 1)) == "a real number in [0, 1]"
    assert str(Interval(Integral, 0, 9, closed="left")) == "an integer in [0, 9)"
    assert str(Options(("global", "layer"))) == "one of 'global', 'layer'"
    with pytest.raises(TypeError):
        Interval(int, 0, 1)


def test_options_compare_values_of_the_same_type_only():
    opts = Options(("sign", "real"))
    assert opts.is_satisfied_by("sign") and not opts.is_satisfied_by("mean")
    assert not opts.is_satisfied_by(torch.tensor([1.0, 2.0]))  # no elementwise ==
    assert not Options((1, 2)).is_satisfied_by(True)


@pytest.mark.parametrize(
    "params, constraints, message",
    [
        (dict(k=0), {"k": Interval(Integral, 1, None)}, "k must be an integer >= 1, got 0"),
        (
            dict(amount="half"),
            {"amount": Interval(Real, 0, 1)},
            "amount must be a real number in [0, 1], got 'half'",
        ),
        (
            dict(scope="row"),
            {"scope": Options(("global", "layer"))},
            "scope must be one of 'global', 'layer', got 'row'",
        ),
        (dict(g=1), {"g": [torch.Generator, None]}, "g must be a torch.Generator or None, got 1"),
        (dict(f=[1]), {"f": Callable}, "f must be a callable, got a list"),
        (dict(b="yes"), {"b": [bool, np.bool_]}, "b must be a bool or a numpy.bool, got 'yes'"),
        (
            dict(s=2),
            {"s": [Options(("glorot",)), Interval(Real, 0, 1)]},
            "s must be one of 'glorot' or a real number in [0, 1], got 2",
        ),
        (dict(conv=torch.nn.Linear(1, 1)), {"conv": torch.nn.Conv2d}, "conv must be a torch.nn.Conv2d, got a Linear"),
    ],
)
def test_messages_say_what_was_expected_and_what_came(params, constraints, message):
    with pytest.raises(InvalidParameterError) as err:
        check_params(params, constraints)
    assert str(err.value) == message


def test_error_is_a_value_error_and_a_type_error():
    assert issubclass(InvalidParameterError, ValueError) and issubclass(InvalidParameterError, TypeError)
    check_params(
        dict(k=3, g=None, s="glorot"),
        {"k": Interval(Integral, 1, 3), "g": [torch.Generator, None], "s": [Options(("glorot",)), Real]},
    )
