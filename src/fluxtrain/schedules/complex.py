"""Schedules built from other schedules (ParameterSchedulers.jl 0.4.3 ``complex.jl``):
Constant, Sequence, Loop, Interpolator, Shifted, ComposedSchedule, OneCycle, and the
mutable iterator Stateful with ``next_``/``reset_``.

Wherever a schedule is expected, any callable ``t -> value`` works too (as any function
works in ParameterSchedulers), and in :class:`Sequence`/:class:`ComposedSchedule` a plain
number means :class:`Constant`.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Union

from ._base import (Schedule, ScheduleBoundsError, _check_t, _count, _is_traced, _math,
                    _real, as_schedule)

__all__ = ["Constant", "Sequence", "Loop", "Interpolator", "Shifted", "ComposedSchedule",
           "OneCycle", "Stateful", "next_", "reset_"]


@dataclass(frozen=True)
class Constant(Schedule):
    """The same value at every step: ``s(t) = value`` (kept as given: an integer stays
    an integer, as in ParameterSchedulers).

    Example:
        >>> from fluxtrain import Constant
        >>> Constant(0.1)(1000)
        0.1
    """

    value: Any

    def _value(self, t):
        return self.value


@dataclass(frozen=True, init=False)
class Sequence(Schedule):
    """Schedules one after another: ``schedules[k]`` runs for ``step_sizes[k]`` steps.

    ``Sequence(schedules, step_sizes)`` or ``Sequence([(schedule1, n1), (schedule2, n2),
    ...])`` (Julia's ``Sequence(s1 => n1, s2 => n2)``). Each stage restarts its own clock::

        s(t) = schedules[k](t - (n_1 + ... + n_{k-1}))   for  n_1+...+n_{k-1} < t <= n_1+...+n_k

    After the last stage's steps, the last schedule keeps going on its own clock (as
    ParameterSchedulers' iterator and tests do). Numbers are taken as :class:`Constant`.
    (ParameterSchedulers' generator form for an infinite sequence is not provided.)

    Example:
        >>> from fluxtrain import Exp, Sequence
        >>> s = Sequence([(1.0, 2), (Exp(0.5, 0.5), 3)])
        >>> [s(t) for t in range(1, 8)]
        [1.0, 1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125]
    """

    schedules: tuple
    step_sizes: tuple

    def __init__(self, schedules: Iterable[Any], step_sizes: Optional[Iterable[int]] = None):
        if step_sizes is None:
            try:
                pairs = [tuple(p) for p in schedules]
            except TypeError:
                raise TypeError("Sequence: without step_sizes, pass (schedule, nsteps) pairs") from None
            if any(len(p) != 2 for p in pairs):
                raise TypeError("Sequence: without step_sizes, pass (schedule, nsteps) pairs")
            schedules, step_sizes = [p[0] for p in pairs], [p[1] for p in pairs]
        scheds = tuple(as_schedule(s) for s in schedules)
        sizes = tuple(_count(n, "each of step_sizes", "Sequence") for n in step_sizes)
        if not scheds:
            raise ValueError("Sequence: needs at least one schedule")
        if len(scheds) != len(sizes):
            raise ValueError(f"Sequence: got {len(scheds)} schedules but {len(sizes)} step sizes")
        object.__setattr__(self, "schedules", scheds)
        object.__setattr__(self, "step_sizes", sizes)

    def _value(self, t):
        starts = [0]
        for n in self.step_sizes[:-1]:
            starts.append(starts[-1] + n)
        if not _is_traced(t):
            for s, n, t0 in zip(self.schedules, self.step_sizes, starts):
                if t <= t0 + n:
                    return s(t - t0)
            return self.schedules[-1](t - starts[-1])
        m = _math(t)
        out = self.schedules[-1](t - starts[-1])
        for s, n, t0 in reversed(list(zip(self.schedules[:-1], self.step_sizes[:-1], starts[:-1]))):
            out = m.where(t <= t0 + n, s(t - t0), out)
        return out


@dataclass(frozen=True)
class Loop(Schedule):
    """Repeat ``f`` every ``period`` steps: ``s(t) = f(mod1(t, period))``, where
    ``mod1(t, p) = (t - 1) mod p + 1`` takes values 1..p.

    Example:
        >>> from fluxtrain import Exp, Loop
        >>> s = Loop(Exp(1.0, 0.5), 3)
        >>> [s(t) for t in range(1, 8)]
        [1.0, 0.5, 0.25, 1.0, 0.5, 0.25, 1.0]
    """

    f: Callable[[Any], Any]
    period: int

    def __post_init__(self):
        object.__setattr__(self, "f", as_schedule(self.f))
        object.__setattr__(self, "period", _count(self.period, "period", "Loop"))

    def _value(self, t):
        return self.f((t - 1) % self.period + 1)


def _ceil_int(x):
    return _math(x).ceil(x)


@dataclass(frozen=True)
class Interpolator(Schedule):
    """Rescale time: ``s(t) = schedule(ceil_fn(t / rate))``, ``ceil_fn`` defaulting to
    the ceiling as an integer.

    Use it to write a schedule in epochs and step it per batch: with ``rate =
    batches_per_epoch``, steps 1..rate all see epoch 1, and so on. ``t`` may be any
    positive real here (e.g. a continuous time with ``ceil_fn=lambda x: x``); the
    wrapped schedule checks the value it receives.

    Example:
        >>> from fluxtrain import Step, Interpolator
        >>> s = Interpolator(Step(1.0, 0.5, 1), 3)   # halve once per 3 steps
        >>> [s(t) for t in range(1, 8)]
        [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]
    """

    schedule: Callable[[Any], Any]
    rate: float
    ceil_fn: Optional[Callable[[Any], Any]] = None

    def __post_init__(self):
        object.__setattr__(self, "schedule", as_schedule(self.schedule))
        rate = self.rate
        if isinstance(rate, numbers.Integral) and not isinstance(rate, bool):
            rate = int(rate)
        else:
            rate = _real(rate, "rate", "Interpolator")
        if not rate > 0 or not math.isfinite(rate):
            raise ValueError(f"Interpolator: rate must be positive and finite, got {rate}")
        object.__setattr__(self, "rate", rate)

    def __call__(self, t):
        if isinstance(t, numbers.Real) and not isinstance(t, bool) and 0 < t < 1:
            return self._value(t)  # sub-step times are allowed here
        return self._value(_check_t(t, self))

    def _value(self, t):
        f = self.ceil_fn if self.ceil_fn is not None else _ceil_int
        return self.schedule(f(t / self.rate))


@dataclass(frozen=True)
class Shifted(Schedule):
    """Start ``schedule`` at step ``offset``: ``s(t) = schedule(t - 1 + offset)``, so
    ``s(1) == schedule(offset)``.

    Example:
        >>> from fluxtrain import Exp, Shifted
        >>> s = Shifted(Exp(1.0, 0.5), 3)
        >>> [s(t) for t in (1, 2)]
        [0.25, 0.125]
    """

    schedule: Callable[[Any], Any]
    offset: int

    def __post_init__(self):
        object.__setattr__(self, "schedule", as_schedule(self.schedule))
        if isinstance(self.offset, bool) or not isinstance(self.offset, numbers.Integral):
            raise TypeError(f"Shifted: offset must be an integer, got {self.offset!r}")
        object.__setattr__(self, "offset", int(self.offset))

    def _value(self, t):
        return self.schedule(t - 1 + self.offset)


def _unchecked(cls, values: Mapping[str, Any]):
    """An instance of a frozen dataclass schedule with traced fields (no validation)."""
    obj = object.__new__(cls)
    for k, v in values.items():
        object.__setattr__(obj, k, v)
    return obj


@dataclass(frozen=True)
class ComposedSchedule(Schedule):
    """A schedule whose own parameters are schedules::

        s(t) = compose_fn(schedule, [p(t) for p in parameters])(t)

    ``parameters`` is a tuple (the positional constructor arguments of ``schedule``'s
    type, as in ParameterSchedulers) or a dict (fields to replace, a Python extension);
    numbers are constants. Without ``compose_fn`` the new schedule is
    ``type(schedule)(*values)`` (tuple) or ``dataclasses.replace(schedule, **values)``
    (dict). Julia's argument order ``ComposedSchedule([compose_fn,] schedule, parameters)``
    becomes ``ComposedSchedule(schedule, parameters, compose_fn=None)``.

    Example (cosine annealing whose peak halves every period):
        >>> from fluxtrain import Step, CosAnneal, ComposedSchedule
        >>> base = CosAnneal(1.0, 0.0, 4)
        >>> s = ComposedSchedule(base, (Step(1.0, 0.5, 4), 0.0, 4))
        >>> [round(s(t), 6) for t in (1, 3, 5, 9)]
        [1.0, 0.5, 0.5, 0.25]
    """

    schedule: Any
    parameters: Union[tuple, Mapping[str, Any]]
    compose_fn: Optional[Callable[[Any, Any], Any]] = None

    def __post_init__(self):
        p = self.parameters
        if isinstance(p, Mapping):
            p = tuple((k, as_schedule(v)) for k, v in p.items())  # hashable, keeps order
            object.__setattr__(self, "parameters", _FrozenDict(p))
        elif isinstance(p, (tuple, list)):
            object.__setattr__(self, "parameters", tuple(as_schedule(v) for v in p))
        else:
            raise TypeError("ComposedSchedule: parameters must be a tuple or a dict of "
                            f"schedules/numbers, got {type(p).__name__}")

    def _value(self, t):
        p = self.parameters
        traced = _is_traced(t)
        if isinstance(p, _FrozenDict):
            values = {k: s(t) for k, s in p.items()}
            if self.compose_fn is not None:
                new = self.compose_fn(self.schedule, values)
            elif traced and dataclasses.is_dataclass(self.schedule):
                new = _unchecked(type(self.schedule), {**_fields(self.schedule), **values})
            else:
                new = dataclasses.replace(self.schedule, **values)
        else:
            values = [s(t) for s in p]
            if self.compose_fn is not None:
                new = self.compose_fn(self.schedule, values)
            elif traced and dataclasses.is_dataclass(self.schedule):
                names = [f.name for f in dataclasses.fields(self.schedule)]
                new = _unchecked(type(self.schedule), {**_fields(self.schedule),
                                                       **dict(zip(names, values))})
            else:
                new = type(self.schedule)(*values)
        return new(t) if not isinstance(new, Schedule) else new._value(t)


def _fields(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


class _FrozenDict(dict):
    """A read-only, hashable dict (for the frozen ComposedSchedule)."""

    def __init__(self, items):
        super().__init__(items)

    def __hash__(self):  # type: ignore[override]
        return hash(tuple(self.items()))

    def _readonly(self, *a, **k):
        raise TypeError("ComposedSchedule.parameters is read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly


@dataclass(frozen=True)
class OneCycle(Schedule):
    """The one-cycle policy (Smith & Topin, arXiv:1708.07120), a finite schedule of
    ``nsteps`` steps: a cosine warm-up from ``startval`` to ``maxval`` over
    ``w = ceil(percent_start * nsteps)`` steps, then a cosine anneal to ``endval`` over
    ``d = nsteps - w`` steps::

        t <= w:  |startval - maxval| * (1 + cos(π (t + w - 1) / w)) / 2 + min(startval, maxval)
        t >  w:  |maxval - endval|   * (1 + cos(π (t - w - 1) / d)) / 2 + min(maxval, endval)

    Defaults ``startval = maxval / 25``, ``endval = maxval / 1e5``, ``percent_start =
    0.25``. It equals ``startval`` at t = 1 and ``maxval`` at t = w + 1; ``t > nsteps``
    raises :class:`ScheduleBoundsError` (Julia's ``BoundsError``) and iteration stops
    after ``nsteps`` values.

    Example:
        >>> from fluxtrain import OneCycle
        >>> s = OneCycle(8, 1.0, startval=0.0, endval=0.0)
        >>> [round(v, 6) for v in s]
        [0.0, 0.5, 1.0, 0.933013, 0.75, 0.5, 0.25, 0.066987]
    """

    nsteps: int
    maxval: float
    startval: Optional[float] = None
    endval: Optional[float] = None
    percent_start: float = 0.25

    def __post_init__(self):
        object.__setattr__(self, "nsteps", _count(self.nsteps, "nsteps", "OneCycle"))
        maxval = _real(self.maxval, "maxval", "OneCycle")
        object.__setattr__(self, "maxval", maxval)
        start = maxval / 25 if self.startval is None else _real(self.startval, "startval", "OneCycle")
        end = maxval / 1e5 if self.endval is None else _real(self.endval, "endval", "OneCycle")
        object.__setattr__(self, "startval", start)
        object.__setattr__(self, "endval", end)
        pct = _real(self.percent_start, "percent_start", "OneCycle")
        if not 0 <= pct <= 1:
            raise ValueError(f"OneCycle: percent_start must be in [0, 1], got {pct}")
        object.__setattr__(self, "percent_start", pct)

    def __len__(self) -> int:
        return self.nsteps

    @property
    def warmup(self) -> int:
        """The number of warm-up steps, ``ceil(percent_start * nsteps)``."""
        return math.ceil(self.nsteps * self.percent_start)

    def _up(self, t, w, m):
        a, b = self.startval, self.maxval
        return abs(a - b) * (1 + m.cos(math.pi * (t + w - 1) / w)) / 2 + min(a, b)

    def _down(self, t, w, d, m):
        a, b = self.maxval, self.endval
        return abs(a - b) * (1 + m.cos(math.pi * (t - w - 1) / d)) / 2 + min(a, b)

    def _value(self, t):
        w = self.warmup
        d = self.nsteps - w
        m = _math(t)
        if not _is_traced(t):
            if t > self.nsteps:
                raise ScheduleBoundsError(f"OneCycle: t = {t} is past nsteps = {self.nsteps}")
            return self._up(t, w, m) if t <= w else self._down(t, w, d, m)
        if w == 0:
            return self._down(t, w, d, m)
        if d == 0:
            return self._up(t, w, m)
        return m.where(t <= w, self._up(t, w, m), self._down(t, w, d, m))


class Stateful:
    """A mutable iterator over a schedule (ParameterSchedulers' unexported ``Stateful``).

    ``next_(it)`` returns ``schedule(it.state)`` and then advances ``it.state`` by one if
    ``advance(it.state)`` is true (``advance`` defaults to always true); ``reset_(it)``
    sets the state back to 1. ``next(it)`` works too, and ``state_dict()`` /
    ``load_state_dict()`` save and restore the position for checkpoints.

    Combined with :func:`~fluxtrain.train.plateau` as ``advance``, this gives PyTorch's
    ``ReduceLROnPlateau``.

    Example:
        >>> from fluxtrain import Exp, Stateful, next_, reset_
        >>> it = Stateful(Exp(1.0, 0.5))
        >>> next_(it), next_(it), next_(it)
        (1.0, 0.5, 0.25)
        >>> next_(reset_(it))
        1.0
    """

    __slots__ = ("schedule", "state", "advance")

    def __init__(self, schedule: Callable[[Any], Any], advance: Optional[Callable[[int], bool]] = None):
        self.schedule = as_schedule(schedule)
        self.state = 1
        self.advance = advance

    def __repr__(self) -> str:
        return f"Stateful({self.schedule!r}, state={self.state})"

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next_(self)
        except ScheduleBoundsError:
            raise StopIteration from None

    def state_dict(self) -> dict:
        return {"state": self.state}

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        self.state = _count(int(d["state"]), "state", "Stateful")


def next_(it: Stateful) -> Any:
    """Julia's ``next!``: the value at the current state, then advance (if ``advance``
    says so). See :class:`Stateful`."""
    if not isinstance(it, Stateful):
        raise TypeError(f"next_ expects a Stateful schedule, got {type(it).__name__}")
    value = it.schedule(it.state)
    if it.advance is None or it.advance(it.state):
        it.state += 1
    return value


def reset_(it: Stateful) -> Stateful:
    """Julia's ``reset!``: put a :class:`Stateful` back at step 1; returns it."""
    if not isinstance(it, Stateful):
        raise TypeError(f"reset_ expects a Stateful schedule, got {type(it).__name__}")
    it.state = 1
    return it
