"""Declarative checks of scalar arguments (private), after scikit-learn's ``_parameter_constraints``.

A function states what each argument may be and checks them all in one call::

    check_params(dict(k=k, n_bits=n_bits), {"k": Interval(Integral, 1, None), "n_bits": Interval(Integral, 1, 64)})

A constraint is a class (``bool``, ``dict``, ``torch.Generator``, ``collections.abc.Callable``: an
``isinstance`` check), ``None``, an :class:`Interval` or an :class:`Options`; a list of constraints accepts a
value that satisfies any one of them. A value that satisfies none raises :class:`InvalidParameterError`,
whose message says what was expected and what came::

    k must be an integer >= 1, got 0
    amount must be a real number in [0, 1], got 'half'
    scope must be one of 'global', 'layer', got 'row'

Integers and real numbers include NumPy's scalars, never ``True``/``False``. Checks that depend on the data
(``k`` at most the database size) stay next to the data, with their own message.
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Integral, Real

__all__ = ["InvalidParameterError", "Interval", "Options", "check_params"]


class InvalidParameterError(ValueError, TypeError):
    """An argument of the wrong type or value; a ``ValueError`` and a ``TypeError`` (as in scikit-learn), so
    code that catches either keeps working whichever of the two the argument got wrong."""


class Interval:
    """Numbers of ``type`` (``numbers.Integral`` or ``numbers.Real``) between ``left`` and ``right``.

    ``None`` leaves a side open-ended; ``closed`` is ``"both"``, ``"left"``, ``"right"`` or ``"neither"``
    (whether the bounds themselves are allowed). NaN is in no interval.
    """

    def __init__(self, type, left, right, *, closed: str = "both"):
        if type not in (Integral, Real):
            raise TypeError(f"Interval type must be numbers.Integral or numbers.Real, got {type!r}")
        if closed not in ("both", "left", "right", "neither"):
            raise ValueError(f"closed must be 'both', 'left', 'right' or 'neither', got {closed!r}")
        self.type, self.left, self.right, self.closed = type, left, right, closed

    def is_satisfied_by(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, self.type):
            return False
        left_ok = self.left is None or (value >= self.left if self.closed in ("both", "left") else value > self.left)
        right_ok = self.right is None or (
            value <= self.right if self.closed in ("both", "right") else value < self.right
        )
        return bool(left_ok and right_ok)

    def __str__(self) -> str:
        kind = "an integer" if self.type is Integral else "a real number"
        low = ">=" if self.closed in ("both", "left") else ">"
        high = "<=" if self.closed in ("both", "right") else "<"
        if self.left is None and self.right is None:
            return kind
        if self.right is None:
            return f"{kind} {low} {self.left}"
        if self.left is None:
            return f"{kind} {high} {self.right}"
        brackets = ("[" if low == ">=" else "(") + f"{self.left}, {self.right}" + ("]" if high == "<=" else ")")
        return f"{kind} in {brackets}"


class Options:
    """One of the given values (strings, usually): ``Options(("global", "layer"))``."""

    def __init__(self, values):
        self.values = tuple(values)

    def is_satisfied_by(self, value) -> bool:
        return any(type(value) is type(v) and value == v for v in self.values)

    def __str__(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


def _satisfies(value, constraint) -> bool:
    if constraint is None:
        return value is None
    if isinstance(constraint, (Interval, Options)):
        return constraint.is_satisfied_by(value)
    return isinstance(value, constraint)


def _describe(constraint) -> str:
    if constraint is None:
        return "None"
    if constraint is Callable:
        return "a callable"
    if isinstance(constraint, type):
        return "a " + _class_name(constraint)
    return str(constraint)


def _class_name(cls: type) -> str:
    """``dict``, ``torch.Tensor``, ``torch.nn.Conv2d``, ``numpy.bool``: the name a user writes."""
    module = cls.__module__
    if module == "builtins":
        return cls.__qualname__
    module = "torch.nn" if module.startswith("torch.nn.modules.") else module.split(".")[0]
    return f"{module}.{cls.__qualname__}"


def _shown(value) -> str:
    """How a wrong value is quoted in a message: numbers and strings as written, anything else by its type."""
    if value is None or isinstance(value, (bool, Real, str)):
        return repr(value)
    return f"a {type(value).__name__}"


def check_params(params: dict, constraints: dict) -> None:
    """Check every ``params[name]`` against ``constraints[name]`` (one constraint or a list of them).

    Raises
    ------
    InvalidParameterError
        For the first argument that satisfies none of its constraints.
    """
    for name, constraint in constraints.items():
        options = constraint if isinstance(constraint, list) else [constraint]
        value = params[name]
        if not any(_satisfies(value, c) for c in options):
            expected = " or ".join(_describe(c) for c in options)
            raise InvalidParameterError(f"{name} must be {expected}, got {_shown(value)}")
