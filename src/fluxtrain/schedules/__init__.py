"""fluxtrain.schedules: ParameterSchedulers.jl 0.4.3 schedules, and the ``Scheduler`` rule.

Every schedule is an immutable object ``s`` with ``s(t)`` for ``t = 1, 2, ...`` and is
iterable (``zip(schedule, range(1, epochs + 1))``). See ``docs/schedules.md``.
"""
from ._base import Schedule, ScheduleBoundsError
from .decay import Exp, Inv, Poly, Step
from .cyclic import CosAnneal, Sin, SinDecay2, SinExp, Triangle, TriangleDecay2, TriangleExp
from .complex import (ComposedSchedule, Constant, Interpolator, Loop, OneCycle, Sequence,
                      Shifted, Stateful, next_, reset_)
from .scheduler import Scheduler, SchedulerState

SCHEDULES: dict[str, type] = {c.__name__: c for c in (
    Step, Exp, Poly, Inv, Triangle, TriangleDecay2, TriangleExp, Sin, SinDecay2, SinExp, CosAnneal,
    Sequence, Loop, Interpolator, Shifted, ComposedSchedule, OneCycle, Constant)}
"""Every schedule class by its ParameterSchedulers name (for parsers such as the CLI's
``--schedule "CosAnneal(l0=1e-4, l1=1e-2, period=10)"``)."""

__all__ = [
    "Schedule", "ScheduleBoundsError",
    "Step", "Exp", "Poly", "Inv",
    "Triangle", "TriangleDecay2", "TriangleExp", "Sin", "SinDecay2", "SinExp", "CosAnneal",
    "Sequence", "Loop", "Interpolator", "Shifted", "ComposedSchedule", "OneCycle", "Constant",
    "Stateful", "next_", "reset_",
    "Scheduler", "SchedulerState", "SCHEDULES",
]
