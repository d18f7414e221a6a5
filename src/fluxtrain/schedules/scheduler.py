"""``Scheduler``: an optimisation rule whose hyper-parameters follow schedules
(ParameterSchedulers.jl's ``Scheduler``)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

from .._backend import device_of, is_eager, namespace
from ..optimise.base import Rule

__all__ = ["Scheduler", "SchedulerState"]


class SchedulerState(NamedTuple):
    """Per-array state of a :class:`Scheduler`: the step ``t`` (a 0-d integer array on the
    parameter's backend and device, starting at 1) and the wrapped rule's state."""

    t: Any
    inner: Any


def _value(s: Any, t: Any) -> Any:
    return s(t) if callable(s) else s


@dataclass(frozen=True, init=False, repr=False)
class Scheduler(Rule):
    """Schedule any hyper-parameters of a rule, per optimiser step.

    ``Scheduler(constructor, *schedules, **named_schedules)``: at step ``t`` the rule
    ``constructor(*[s(t) for s in schedules], **{k: s(t) for k, s in named})`` is built
    and applied. Each schedule is any callable ``t -> value`` (a fluxtrain schedule, or a
    function); a value that is not callable is passed unchanged at every step (e.g.
    ``beta=(0.9, 0.99)``). ``constructor`` is a rule class such as ``Descent`` or ``Adam``
    (note: the class, not an instance), or any function returning a rule.

    As in ParameterSchedulers, every parameter array's state carries its own step counter
    ``t`` (starting at 1 and incremented by each ``update``), next to the wrapped rule's
    state, so momenta and other state are kept while the hyper-parameters change. The
    counter counts optimiser steps, not epochs: for a schedule written in epochs, wrap it
    in ``Interpolator(schedule, batches_per_epoch)``, or use the epoch loop with
    ``adjust_`` instead (see docs/schedules.md).

    The counter is a 0-d integer array so that the state can be saved with the rest and
    passed through ``jax.jit``; eagerly, the hyper-parameters are Python floats computed
    from ``int(t)``.

    Example:
        >>> import numpy as np
        >>> from fluxtrain import Descent, Exp, setup, update_
        >>> x = np.array([1.0, 2.0])
        >>> state = setup(Scheduler(Descent, eta=Exp(0.1, 0.5)), x)
        >>> for _ in range(3):
        ...     _ = update_(state, x, np.array([1.0, 1.0]))   # steps of 0.1, 0.05, 0.025
        >>> x.round(6).tolist()
        [0.825, 1.825]
    """

    constructor: Callable[..., Rule]
    schedules: tuple
    named: tuple

    def __init__(self, constructor: Callable[..., Rule], *schedules: Any, **named: Any):
        if not callable(constructor):
            raise TypeError("Scheduler: the first argument must be a rule constructor such as "
                            f"Descent or Adam (the class itself), got {constructor!r}")
        if isinstance(constructor, Rule):
            raise TypeError(f"Scheduler: pass the rule's class ({type(constructor).__name__}), "
                            f"not an instance ({constructor!r})")
        if not schedules and not named:
            raise TypeError("Scheduler: give at least one schedule, e.g. Scheduler(Descent, eta=Exp(0.1, 0.9))")
        object.__setattr__(self, "constructor", constructor)
        object.__setattr__(self, "schedules", tuple(schedules))
        object.__setattr__(self, "named", tuple(named.items()))
        super().__post_init__()
        self.rule_at(1)  # fail now, not at the first update, on a bad constructor call

    def __repr__(self) -> str:
        name = getattr(self.constructor, "__name__", repr(self.constructor))
        args = [repr(s) for s in self.schedules] + [f"{k}={v!r}" for k, v in self.named]
        return f"Scheduler({', '.join([name, *args])})"

    def rule_at(self, t: Any) -> Rule:
        """The rule used at step ``t`` (``t >= 1``)."""
        rule = self.constructor(*[_value(s, t) for s in self.schedules],
                                **{k: _value(s, t) for k, s in self.named})
        if not isinstance(rule, Rule):
            raise TypeError(f"Scheduler: the constructor returned {type(rule).__name__}, not a rule")
        return rule

    def subrules(self) -> tuple:
        # the rule of step 1 stands for every step: schedules change hyper-parameters, not
        # which rules run (so the walker sees a ClipNorm(throw=True) inside, for one)
        return (self.rule_at(1),)

    def _traced_rule(self, t: Any) -> Rule:
        # Under jit the hyper-parameters are traced 0-d arrays: set the fields directly,
        # since constructors validate values (eta >= 0) that cannot be read while tracing.
        cls = self.constructor
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            return self.rule_at(t)
        base = self.rule_at(1)
        names = [f.name for f in dataclasses.fields(cls)]
        values = {f: getattr(base, f) for f in names}
        values.update(zip(names, [_value(s, t) for s in self.schedules]))
        values.update({k: _value(s, t) for k, s in self.named})
        rule = object.__new__(cls)
        for k, v in values.items():
            object.__setattr__(rule, k, v)
        return rule

    def init(self, x: Any) -> SchedulerState:
        xp = namespace(x)
        t = xp.asarray(1, device=device_of(x))  # the backend's default integer dtype
        return SchedulerState(t, self.rule_at(1).init(x))

    def apply(self, state: SchedulerState, x: Any, g: Any) -> tuple[SchedulerState, Any]:
        t = state.t
        rule = self.rule_at(int(t)) if is_eager(t) else self._traced_rule(t)
        inner, delta = rule.apply(state.inner, x, g)
        return SchedulerState(namespace(t).asarray(t + 1), inner), delta
