"""Declared analysis options: one mechanism, one set of messages, checked once before any model loads.

Every analysis declares its options as a table ``{name: Option(default, constraint, doc)}``, in
the spirit of scikit-learn's ``_parameter_constraints``. :func:`validate` merges a user's
options into the defaults, refuses unknown names and values that break a constraint with the
same message everywhere, and returns the normalised options (what the cache key is built from)::

    OPTIONS = {
        "folds": Option(5, Integer(2), "outer cross-validation folds"),
        "pooling": Option(["mean"], ListOf(OneOf("mean", "last"), scalar=True), "pooling of sequence features"),
        "max_examples": Option(20000, Nullable(Integer(1)), "total cap on examples; null: no cap"),
    }

Booleans are never integers and integers are never booleans (``True`` is not a fold count).
Values arrive as JSON from the command line, so ``null``, ``true`` and lists work; the Python
spellings ``None``, ``True`` and ``False`` given as text get a message that names the JSON one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from numbers import Integral
from numbers import Real as RealNumber
from typing import Any


class OptionError(ValueError):
    """An analysis option is unknown or has a value its constraint refuses."""


class Constraint:
    """A rule for one option value: :meth:`convert` returns the normalised value or raises ValueError."""

    description = "a value"

    def convert(self, value: Any) -> Any:
        """The normalised value; ValueError when the constraint refuses it."""
        raise NotImplementedError


@dataclass(frozen=True)
class Integer(Constraint):
    """An integer ``low <= value <= high`` (either bound may be None); never a bool."""

    low: int | None = None
    high: int | None = None

    @property
    def description(self) -> str:  # type: ignore[override]
        """What an accepted value is, with its bounds, e.g. ``an integer >= 1``."""
        if self.low is not None and self.high is not None:
            return f"an integer in [{self.low}, {self.high}]"
        if self.low is not None:
            return f"an integer >= {self.low}"
        if self.high is not None:
            return f"an integer <= {self.high}"
        return "an integer"

    def convert(self, value: Any) -> int:
        """The value as an ``int``; ValueError for a bool, a non-integer or a value out of bounds."""
        if isinstance(value, bool) or not isinstance(value, Integral):
            raise ValueError
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise ValueError
        return int(value)


@dataclass(frozen=True)
class Real(Constraint):
    """A finite number in an interval; ``closed`` says which ends belong to it ("both", "left", "right", "neither")."""

    low: float | None = None
    high: float | None = None
    closed: str = "both"

    @property
    def description(self) -> str:  # type: ignore[override]
        """What an accepted value is, with its interval, e.g. ``a number in (0, 1)``."""
        if self.low is None and self.high is None:
            return "a finite number"
        left = "[" if self.closed in ("both", "left") and self.low is not None else "("
        right = "]" if self.closed in ("both", "right") and self.high is not None else ")"
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"a number in {left}{low}, {high}{right}"

    def convert(self, value: Any) -> float:
        """The value as a ``float``; ValueError for a bool, a non-finite number or one outside the interval."""
        if isinstance(value, bool) or not isinstance(value, RealNumber) or not math.isfinite(value):
            raise ValueError
        low_ok = self.low is None or (value >= self.low if self.closed in ("both", "left") else value > self.low)
        high_ok = self.high is None or (value <= self.high if self.closed in ("both", "right") else value < self.high)
        if not (low_ok and high_ok):
            raise ValueError
        return float(value)


@dataclass(frozen=True)
class Boolean(Constraint):
    """``true`` or ``false`` (never 0/1)."""

    description = "true or false"

    def convert(self, value: Any) -> bool:
        """The value itself; ValueError unless it is a bool."""
        if not isinstance(value, bool):
            raise ValueError
        return value


@dataclass(frozen=True)
class Text(Constraint):
    """Any non-empty string."""

    description = "a non-empty text"

    def convert(self, value: Any) -> str:
        """The value itself; ValueError unless it is a non-empty string."""
        if not isinstance(value, str) or not value:
            raise ValueError
        return value


class OneOf(Constraint):
    """One of the listed values (compared with ``==``; bools never match numbers)."""

    def __init__(self, *choices: Any):
        self.choices = choices
        self.description = "one of " + ", ".join(repr(c) for c in choices)

    def convert(self, value: Any) -> Any:
        """The value itself; ValueError unless it equals one of the choices (of the same type)."""
        for choice in self.choices:
            if type(choice) is type(value) and choice == value:
                return value
        raise ValueError


class Nullable(Constraint):
    """``None`` (JSON ``null``) or a value of the inner constraint."""

    def __init__(self, inner: Constraint):
        self.inner = inner
        self.description = f"null or {inner.description}"

    def convert(self, value: Any) -> Any:
        """None for None, else the value as the inner constraint converts it."""
        return None if value is None else self.inner.convert(value)


class ListOf(Constraint):
    """A list of values of the inner constraint, at least ``min_len`` long; with ``scalar=True`` a
    single value stands for a one-element list; ``increasing=True`` asks for strictly increasing items."""

    def __init__(self, inner: Constraint, min_len: int = 1, scalar: bool = False, increasing: bool = False):
        self.inner, self.min_len, self.scalar, self.increasing = inner, min_len, scalar, increasing
        order = ", strictly increasing" if increasing else ""
        self.description = f"a list of {inner.description} ({min_len} or more{order})"

    def convert(self, value: Any) -> list[Any]:
        """The list of converted items; ValueError when it is too short, not increasing as asked, or an item is refused."""
        if self.scalar and not isinstance(value, (list, tuple)):
            value = [value]
        if not isinstance(value, (list, tuple)) or len(value) < self.min_len:
            raise ValueError
        items = [self.inner.convert(v) for v in value]
        if self.increasing and any(b <= a for a, b in zip(items, items[1:])):
            raise ValueError
        return items


class AnyOf(Constraint):
    """A value that satisfies any of the constraints (tried in order)."""

    def __init__(self, *constraints: Constraint):
        self.constraints = constraints
        self.description = " or ".join(c.description for c in constraints)

    def convert(self, value: Any) -> Any:
        """The value as the first constraint that accepts it converts it; ValueError when none does."""
        for constraint in self.constraints:
            try:
                return constraint.convert(value)
            except ValueError:
                continue
        raise ValueError


@dataclass(frozen=True)
class Function(Constraint):
    """A Python callable (notebook use only: it cannot come from the command line)."""

    description = "a function"

    def convert(self, value: Any) -> Any:
        """The value itself; ValueError unless it is callable."""
        if not callable(value):
            raise ValueError
        return value


@dataclass(frozen=True)
class Option:
    """One declared option: its default, the constraint a value must meet, and what it means."""

    default: Any
    constraint: Constraint
    doc: str = ""


@dataclass(frozen=True)
class OptionTable:
    """An analysis's declared options and, optionally, a check across options (``check(options) -> options``)."""

    options: Mapping[str, Option]
    check: Callable[[dict[str, Any]], dict[str, Any]] | None = field(default=None, compare=False)

    def defaults(self) -> dict[str, Any]:
        """The default value of every option."""
        return {name: option.default for name, option in self.options.items()}


_PYTHON_SPELLINGS = {"None": "null", "True": "true", "False": "false", "none": "null"}


def validate(analysis: str, table: OptionTable, given: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults of ``table`` updated with ``given``, every value checked and normalised.

    Raises :class:`OptionError` naming the analysis, the option, the value, what it must be
    and the default; an unknown option lists the known ones.
    """
    given = dict(given or {})
    unknown = sorted(set(given) - set(table.options))
    if unknown:
        raise OptionError(f"{analysis}: unknown option(s) {unknown}; its options are {sorted(table.options)}")
    out: dict[str, Any] = {}
    for name, option in table.options.items():
        value = given.get(name, option.default)
        try:
            out[name] = option.constraint.convert(value)
        except ValueError:
            hint = ""
            if isinstance(value, str) and value in _PYTHON_SPELLINGS:
                hint = f"; on the command line write {_PYTHON_SPELLINGS[value]} (JSON), not {value}"
            raise OptionError(
                f"{analysis}: option {name}={value!r} must be {option.constraint.description} "
                f"(default {option.default!r}){hint}"
            ) from None
    if table.check is not None:
        try:
            out = table.check(out)
        except ValueError as err:
            raise OptionError(f"{analysis}: {err}") from None
    return out


def describe(table: OptionTable) -> list[dict[str, Any]]:
    """One record per option (name, default, constraint, doc): for help texts and the docs."""
    return [{"option": name, "default": o.default, "allowed": o.constraint.description, "doc": o.doc}
            for name, o in table.options.items()]
