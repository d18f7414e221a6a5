"""Decay schedules (ParameterSchedulers.jl 0.4.3 ``decay.jl``): Step, Exp, Poly, Inv."""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Union

from ._base import Schedule, ScheduleBoundsError, _count, _is_traced, _real

__all__ = ["Step", "Exp", "Poly", "Inv"]


@dataclass(frozen=True)
class Step(Schedule):
    """Step decay: multiply by ``decay`` after each block of ``step_sizes`` iterations.

    ``Step(start, decay, step_sizes)`` — ParameterSchedulers' ``Step``::

        s(t) = start * decay^i,   i = #{k : step_sizes[1] + ... + step_sizes[k] < t}

    An integer ``step_sizes`` repeats forever (``s(t) = start * decay^floor((t-1)/n)``);
    a sequence of sizes decays once per block and stays at ``start * decay^len`` after
    the last block.

    Example:
        >>> from fluxtrain import Step
        >>> s = Step(1.0, 0.5, 2)
        >>> [s(t) for t in range(1, 7)]
        [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
        >>> [Step(1.0, 0.1, [1, 2])(t) for t in range(1, 6)]
        [1.0, 0.1, 0.1, 0.010000000000000002, 0.010000000000000002]
    """

    start: float
    decay: float
    step_sizes: Union[int, tuple[int, ...]]

    def __post_init__(self):
        object.__setattr__(self, "start", _real(self.start, "start", "Step"))
        object.__setattr__(self, "decay", _real(self.decay, "decay", "Step"))
        if isinstance(self.step_sizes, numbers.Integral) and not isinstance(self.step_sizes, bool):
            object.__setattr__(self, "step_sizes", _count(self.step_sizes, "step_sizes", "Step"))
        else:
            try:
                sizes = tuple(_count(n, "each of step_sizes", "Step") for n in self.step_sizes)
            except TypeError as e:
                if "iterable" not in str(e):
                    raise
                raise TypeError(f"Step: step_sizes must be an integer or a sequence of integers, "
                                f"got {self.step_sizes!r}") from None
            if not sizes:
                raise ValueError("Step: step_sizes must not be empty")
            object.__setattr__(self, "step_sizes", sizes)

    def _value(self, t):
        if isinstance(self.step_sizes, int):
            i = -((-t) // self.step_sizes) - 1  # blocks fully passed: ceil(t/n) - 1
        else:
            i, acc = 0, 0
            for n in self.step_sizes:
                acc += n
                if _is_traced(t):
                    i = i + (t > acc)
                elif t > acc:
                    i += 1
                else:
                    break
        return self.start * self.decay ** i


@dataclass(frozen=True)
class Exp(Schedule):
    """Exponential decay: ``s(t) = start * decay^(t - 1)``.

    Example:
        >>> from fluxtrain import Exp
        >>> [Exp(1.0, 0.5)(t) for t in (1, 2, 3)]
        [1.0, 0.5, 0.25]
    """

    start: float
    decay: float

    def __post_init__(self):
        object.__setattr__(self, "start", _real(self.start, "start", "Exp"))
        object.__setattr__(self, "decay", _real(self.decay, "decay", "Exp"))

    def _value(self, t):
        return self.start * self.decay ** (t - 1)


@dataclass(frozen=True)
class Poly(Schedule):
    """Polynomial decay over ``max_iter`` iterations (a finite schedule)::

        s(t) = start * (1 - (t - 1) / max_iter)^degree,   1 <= t <= max_iter

    ``t > max_iter`` raises :class:`ScheduleBoundsError` (an ``IndexError``; Julia's
    ``BoundsError``), and iteration stops after ``max_iter`` values; ``len(s) == max_iter``.
    (ParameterSchedulers' docstring writes ``start / (...)^degree``; its code, followed
    here, multiplies.)

    Example:
        >>> from fluxtrain import Poly
        >>> list(Poly(1.0, 2, 4))
        [1.0, 0.5625, 0.25, 0.0625]
    """

    start: float
    degree: int
    max_iter: int

    def __post_init__(self):
        object.__setattr__(self, "start", _real(self.start, "start", "Poly"))
        object.__setattr__(self, "degree", _count(self.degree, "degree", "Poly", minimum=0))
        object.__setattr__(self, "max_iter", _count(self.max_iter, "max_iter", "Poly"))

    def __len__(self) -> int:
        return self.max_iter

    def _value(self, t):
        if not _is_traced(t) and t > self.max_iter:
            raise ScheduleBoundsError(f"Poly: t = {t} is past max_iter = {self.max_iter}")
        return self.start * (1 - (t - 1) / self.max_iter) ** self.degree


@dataclass(frozen=True)
class Inv(Schedule):
    """Inverse decay: ``s(t) = start / (1 + (t - 1) * decay)^degree``.

    Example:
        >>> from fluxtrain import Inv
        >>> [Inv(1.0, 0.5, 2)(t) for t in (1, 2, 3)]
        [1.0, 0.4444444444444444, 0.25]
    """

    start: float
    decay: float
    degree: int

    def __post_init__(self):
        object.__setattr__(self, "start", _real(self.start, "start", "Inv"))
        object.__setattr__(self, "decay", _real(self.decay, "decay", "Inv"))
        object.__setattr__(self, "degree", _count(self.degree, "degree", "Inv", minimum=0))

    def _value(self, t):
        return self.start / (1 + (t - 1) * self.decay) ** self.degree
