"""The schedule protocol shared by every ParameterSchedulers-style schedule.

A schedule is a small immutable object ``s`` with ``s(t) -> value`` for the iteration
``t = 1, 2, 3, ...`` (1-based, as in ParameterSchedulers.jl). Iterating a schedule yields
``s(1), s(2), ...``: infinitely for most schedules, ``len(s)`` values for the finite ones
(:class:`Poly`, :class:`OneCycle`).

``t`` is normally a Python ``int`` and the value a Python ``float``. Inside a traced
computation (``jax.jit``, ``torch.compile``) ``t`` may be a traced 0-d integer array; the
formulas are then evaluated with the array's own namespace (``xp.cos``, ``xp.where``...),
so a :class:`~fluxtrain.schedules.Scheduler` rule can be jitted. That path is used only
for traced arrays: a concrete array ``t`` is converted to a Python number first.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Iterator

from .._backend import is_array, is_eager, namespace

__all__ = ["Schedule", "ScheduleBoundsError", "as_schedule"]


class ScheduleBoundsError(IndexError):
    """``t`` is past the end of a finite schedule (Julia's ``BoundsError``)."""


def _check_t(t: Any, owner: Any) -> Any:
    """Validate the iteration ``t``: a real number >= 1, or a traced 0-d array."""
    if isinstance(t, bool):
        raise TypeError(f"{_name(owner)}: t must be a number >= 1, got the bool {t!r}")
    if isinstance(t, numbers.Real):
        if isinstance(t, numbers.Integral):
            t = int(t)
        else:
            t = float(t)
            if not math.isfinite(t):
                raise ValueError(f"{_name(owner)}: t must be a finite number >= 1, got t = {t}")
        if t < 1:
            raise ValueError(
                f"{_name(owner)}: t must be >= 1 (iterations count from 1, as in "
                f"ParameterSchedulers.jl), got t = {t}")
        return t
    if is_array(t):
        if not is_eager(t):
            return t  # traced: no value checks, the formulas run on the array
        xp = namespace(t)
        if getattr(t, "ndim", 0) != 0:
            raise ValueError(f"{_name(owner)}: t must be a scalar, got an array of shape {tuple(t.shape)}")
        if xp.isdtype(t.dtype, "integral"):
            return _check_t(int(t), owner)
        if xp.isdtype(t.dtype, "real floating"):
            return _check_t(float(t), owner)
    raise TypeError(f"{_name(owner)}: t must be a number >= 1, got {type(t).__name__}")


def _name(owner: Any) -> str:
    return type(owner).__name__ if not isinstance(owner, str) else owner


def _is_traced(t: Any) -> bool:
    return not isinstance(t, numbers.Real)


class _ScalarMath:
    """``math`` for Python numbers, with the same names as :class:`_ArrayMath`."""

    sin = staticmethod(math.sin)
    cos = staticmethod(math.cos)
    asin = staticmethod(math.asin)

    @staticmethod
    def ceil(x):
        return math.ceil(x)

    @staticmethod
    def where(cond, a, b):
        return a if cond else b


class _ArrayMath:
    """The same operations on (traced) arrays, through the array's namespace."""

    def __init__(self, t: Any):
        self.xp = namespace(t)
        self.int_dtype = self.xp.asarray(0).dtype

    def sin(self, x):
        return self.xp.sin(x)

    def cos(self, x):
        return self.xp.cos(x)

    def asin(self, x):
        return self.xp.asin(x)

    def ceil(self, x):
        return self.xp.astype(self.xp.ceil(x), self.int_dtype)

    def where(self, cond, a, b):
        xp = self.xp
        a = a if is_array(a) else xp.asarray(a)
        b = b if is_array(b) else xp.asarray(b)
        return xp.where(cond, a, b)


_SCALAR = _ScalarMath()


def _math(t: Any):
    return _SCALAR if isinstance(t, numbers.Real) else _ArrayMath(t)


def _real(value: Any, name: str, owner: str) -> float:
    """A hyper-parameter as a Python float (values are float64, like Julia's default)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number, got {value!r}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{owner}: {name} must not be NaN")
    return value


def _count(value: Any, name: str, owner: str, *, minimum: int = 1) -> int:
    """An integer argument (a period, a number of steps) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")
    return value


class Schedule:
    """Base class of every schedule: ``s(t)`` for ``t >= 1`` and iteration from ``t = 1``.

    Subclasses are frozen dataclasses implementing ``_value(t)`` (``t`` already checked)
    and, when finite, ``__len__``.
    """

    __slots__ = ()

    def __call__(self, t: Any) -> Any:
        return self._value(_check_t(t, self))

    def _value(self, t: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def __iter__(self) -> Iterator[float]:
        n = len(self) if hasattr(type(self), "__len__") else None
        t = 1
        while n is None or t <= n:
            try:
                value = self(t)
            except ScheduleBoundsError:  # a finite schedule inside a composite one
                return
            yield value
            t += 1


def as_schedule(s: Any) -> Callable[[Any], Any]:
    """A number becomes :class:`Constant`; schedules and other callables pass unchanged."""
    if isinstance(s, numbers.Real) and not isinstance(s, bool):
        from .complex import Constant
        return Constant(s)
    if callable(s):
        return s
    raise TypeError(f"expected a schedule, a callable t -> value or a number, got {s!r}")
