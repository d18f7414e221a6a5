"""Cyclic schedules (ParameterSchedulers.jl 0.4.3 ``cyclic.jl``).

Every cyclic schedule has two constructor forms, as in ParameterSchedulers 0.4.3:

* **keywords, by endpoints**: ``Triangle(l0=0.1, l1=1.0, period=10)``: the values run
  between ``l0`` and ``l1`` (``range = |l0 - l1|``, ``offset = min(l0, l1)``);
* **positional, by range and offset**: ``Triangle(range, offset, period)``: the values run
  between ``offset`` and ``offset + range``.

So ``CosAnneal(1e-4, 1e-2, 10)`` runs between 0.01 and 0.0101, not between 1e-4 and 1e-2
(Flux's guide still shows the removed ``Cos(λ0, λ1, period)``; write
``CosAnneal(l0=1e-4, l1=1e-2, period=10)``). The fields stored (and shown by ``repr``) are
always ``range`` and ``offset``. The deprecated Julia keywords ``λ0``/``λ1`` are not accepted.

With ``g(t)`` the cycle function of each schedule, the value is ``range * g(t) + offset``:

* triangle wave ``tri(t) = (2/π)·|asin(sin(π(t-1)/period))|``: 0 at t = 1, 1 + period,
  1 + 2 period, ...; peak 1 at t = 1 + period/2;
* sine wave ``sin(t) = |sin(π(t-1)/period)|``;
* cosine annealing ``(1 + cos(π t̂/period))/2`` with ``t̂ = (t-1) mod period`` (with
  restarts) or ``t̂ = t - 1`` (without).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional

from ._base import Schedule, _count, _math, _real

__all__ = ["Triangle", "TriangleDecay2", "TriangleExp", "Sin", "SinDecay2", "SinExp", "CosAnneal"]

_TWO_OVER_PI = 2 / math.pi


def _tri(t, period, m):
    return _TWO_OVER_PI * abs(m.asin(m.sin(math.pi * (t - 1) / period)))


def _sin(t, period, m):
    return abs(m.sin(math.pi * (t - 1) / period))


def _set(obj, **fields):
    for k, v in fields.items():
        object.__setattr__(obj, k, v)


def _endpoints(owner: str, range_, offset, l0, l1, period) -> tuple[float, float, int]:
    """(range, offset, period) from either the endpoints (l0, l1) or (range, offset)."""
    if l0 is not None or l1 is not None:
        if range_ is not None or offset is not None:
            raise TypeError(
                f"{owner}: give either the endpoints l0=, l1= (keywords) or the positional "
                f"(range, offset), not both")
        if l0 is None or l1 is None:
            raise TypeError(f"{owner}: the keyword form needs both l0= and l1=")
        l0, l1 = _real(l0, "l0", owner), _real(l1, "l1", owner)
        range_, offset = abs(l0 - l1), min(l0, l1)
    elif range_ is None or offset is None:
        raise TypeError(
            f"{owner}: missing arguments; call {owner}(l0=..., l1=..., period=...) or "
            f"{owner}(range, offset, period)")
    if period is None:
        raise TypeError(f"{owner}: period is required")
    return (_real(range_, "range", owner), _real(offset, "offset", owner),
            _count(period, "period", owner))


@dataclass(frozen=True, init=False)
class _Wave(Schedule):
    """``amplitude(t) * wave(t) + offset``. Each public class sets ``_wave`` (``_tri`` or
    ``_sin``); the amplitude is the constant ``range`` here and decays in the two bases
    below. The constructor takes the endpoints or (range, offset), see the module doc."""

    range: float
    offset: float
    period: int

    def __init__(self, range: Optional[float] = None, offset: Optional[float] = None,
                 period: Optional[int] = None, *, l0: Optional[float] = None,
                 l1: Optional[float] = None):
        r, o, p = _endpoints(type(self).__name__, range, offset, l0, l1, period)
        _set(self, range=r, offset=o, period=p)

    _wave: ClassVar[Callable[[Any, int, Any], Any]]

    def _amplitude(self, t, m):
        return self.range

    def _value(self, t):
        m = _math(t)
        return self._amplitude(t, m) * self._wave(t, self.period, m) + self.offset


@dataclass(frozen=True, init=False)
class _HalvingWave(_Wave):
    """Amplitude ``range * 0.5^(ceil(t/period) - 1)``: halved every period."""

    def _amplitude(self, t, m):
        return self.range * 0.5 ** (m.ceil(t / self.period) - 1)


@dataclass(frozen=True, init=False)
class _ExpWave(_Wave):
    """Amplitude ``range * decay^(t - 1)``, with a fourth field ``decay``."""

    decay: float

    def __init__(self, range: Optional[float] = None, offset: Optional[float] = None,
                 period: Optional[int] = None, decay: Optional[float] = None, *,
                 l0: Optional[float] = None, l1: Optional[float] = None):
        super().__init__(range, offset, period, l0=l0, l1=l1)
        owner = type(self).__name__
        if decay is None:
            raise TypeError(f"{owner}: decay is required")
        _set(self, decay=_real(decay, "decay", owner))

    def _amplitude(self, t, m):
        return self.range * self.decay ** (t - 1)


@dataclass(frozen=True, init=False)
class Triangle(_Wave):
    """Triangle wave between ``offset`` and ``offset + range``::

        s(t) = range * (2/π) * |asin(sin(π (t - 1) / period))| + offset

    It is ``offset`` at t = 1, 1 + period, 1 + 2 period, ... and peaks at ``offset + range``
    half way, at t = 1 + period/2.

    ``Triangle(l0=..., l1=..., period=...)`` or ``Triangle(range, offset, period)``.

    Example:
        >>> from fluxtrain import Triangle
        >>> s = Triangle(l0=0.0, l1=1.0, period=4)
        >>> [round(s(t), 12) for t in range(1, 6)]
        [0.0, 0.5, 1.0, 0.5, 0.0]
    """

    _wave = staticmethod(_tri)


@dataclass(frozen=True, init=False)
class TriangleDecay2(_HalvingWave):
    """Triangle wave whose amplitude halves every period::

        s(t) = range * tri(t) / 2^floor((t - 1) / period) + offset

    (ParameterSchedulers builds it as ``ComposedSchedule(Triangle, (Interpolator(Exp(range,
    1/2), period), offset, period))``, i.e. ``range * 0.5^(ceil(t/period) - 1)``; the same
    numbers.)

    Example:
        >>> from fluxtrain import TriangleDecay2
        >>> s = TriangleDecay2(l0=0.0, l1=1.0, period=2)
        >>> [round(s(t), 12) for t in range(1, 6)]
        [0.0, 1.0, 0.0, 0.5, 0.0]
    """

    _wave = staticmethod(_tri)


@dataclass(frozen=True, init=False)
class TriangleExp(_ExpWave):
    """Triangle wave with an exponentially decaying amplitude::

        s(t) = range * decay^(t - 1) * tri(t) + offset

    ``TriangleExp(l0=..., l1=..., period=..., decay=...)`` or
    ``TriangleExp(range, offset, period, decay)``.

    Example:
        >>> from fluxtrain import TriangleExp
        >>> s = TriangleExp(l0=0.0, l1=1.0, period=2, decay=0.5)
        >>> [round(s(t), 12) for t in range(1, 5)]
        [0.0, 0.5, 0.0, 0.125]
    """

    _wave = staticmethod(_tri)


@dataclass(frozen=True, init=False)
class Sin(_Wave):
    """Rectified sine wave::

        s(t) = range * |sin(π (t - 1) / period)| + offset

    ``offset`` at t = 1, 1 + period, ...; peak ``offset + range`` at t = 1 + period/2.

    Example:
        >>> from fluxtrain import Sin
        >>> s = Sin(l0=0.0, l1=1.0, period=2)
        >>> [round(s(t), 12) for t in range(1, 5)]
        [0.0, 1.0, 0.0, 1.0]
    """

    _wave = staticmethod(_sin)


@dataclass(frozen=True, init=False)
class SinDecay2(_HalvingWave):
    """Rectified sine wave whose amplitude halves every period::

        s(t) = range * |sin(π (t - 1) / period)| / 2^floor((t - 1) / period) + offset

    Example:
        >>> from fluxtrain import SinDecay2
        >>> s = SinDecay2(l0=0.0, l1=1.0, period=2)
        >>> [round(s(t), 12) for t in range(1, 5)]
        [0.0, 1.0, 0.0, 0.5]
    """

    _wave = staticmethod(_sin)


@dataclass(frozen=True, init=False)
class SinExp(_ExpWave):
    """Rectified sine wave with an exponentially decaying amplitude::

        s(t) = range * decay^(t - 1) * |sin(π (t - 1) / period)| + offset

    Example:
        >>> from fluxtrain import SinExp
        >>> s = SinExp(l0=0.0, l1=1.0, period=2, decay=0.5)
        >>> [round(s(t), 12) for t in range(1, 5)]
        [0.0, 0.5, 0.0, 0.125]
    """

    _wave = staticmethod(_sin)


@dataclass(frozen=True, init=False)
class CosAnneal(Schedule):
    """Cosine annealing (SGDR, arXiv:1608.03983), with or without warm restarts::

        t̂ = (t - 1) mod period   if restart else   t - 1
        s(t) = range * (1 + cos(π t̂ / period)) / 2 + offset

    It starts at ``offset + range = max(l0, l1)`` at t = 1 and falls towards
    ``offset = min(l0, l1)``; with ``restart=True`` it jumps back up every ``period``
    steps, without it it rises again after ``period`` (a cosine of period ``2 period``).

    ``CosAnneal(l0=..., l1=..., period=..., restart=True)`` (keywords, by endpoints) or
    ``CosAnneal(range, offset, period, restart=True)`` (positional). Note the positional
    pitfall: ``CosAnneal(1e-4, 1e-2, 10)`` means range 1e-4, offset 1e-2.

    Example:
        >>> from fluxtrain import CosAnneal
        >>> s = CosAnneal(l0=0.0, l1=1.0, period=4)
        >>> [round(s(t), 12) for t in range(1, 7)]
        [1.0, 0.853553390593, 0.5, 0.146446609407, 1.0, 0.853553390593]
    """

    range: float
    offset: float
    period: int
    restart: bool

    def __init__(self, range: Optional[float] = None, offset: Optional[float] = None,
                 period: Optional[int] = None, restart: bool = True, *,
                 l0: Optional[float] = None, l1: Optional[float] = None):
        r, o, p = _endpoints("CosAnneal", range, offset, l0, l1, period)
        if not isinstance(restart, bool):
            raise TypeError(f"CosAnneal: restart must be True or False, got {restart!r}")
        _set(self, range=r, offset=o, period=p, restart=restart)

    def _value(self, t):
        m = _math(t)
        th = (t - 1) % self.period if self.restart else t - 1
        return self.range * (1 + m.cos(math.pi * th / self.period)) / 2 + self.offset
