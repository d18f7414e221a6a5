"""``Scheduler``'s group step, on every backend: the wrapped rule's own fast path.

``Scheduler.apply`` works one array at a time: it reads the array's step counter ``t``
(a wait for the device on a GPU, a blocking read for JAX), builds the rule of step ``t``,
applies it by the generic formulas and adds one to ``t``. At 1,000 JAX arrays a scheduled
Adam step took 30 times as long as Adam's. Here a group's counters are read in one
transfer, each distinct ``(rule, t)`` builds its rule once, exactly as ``apply`` builds it
(``rule_at``: the schedule evaluated on the host, in Python floats), and the arrays go to
the wrapped rule's group kernel (:func:`fluxtrain.optimise.interface.apply_group`), so a
scheduled Adam step costs an Adam step plus a little per array (a counter and a state
each; docs/performance.md has the numbers). Each backend registers, with the kernel, a
call that reads the counters and returns them with a function making the next ones
(``"scheduler_counters"`` in the fast registry), called once the wrapped rule's step has
succeeded: for ``update_`` a backend may advance the counters in place (torch does, as it
writes the moments in place), which must not happen before a refused value or a
``DomainError`` has had its chance to raise.

Each backend module registers :func:`update` for ``Scheduler``. JAX's whole-step route
(:mod:`fluxtrain._backend.fast_jax_tree`) compiles the step instead, with each Scheduler
replaced by :class:`AtStep`: the rule of the step, built on the host as here, traced with
the counter's ``t + 1`` (``update_``'s store keeps the counters' values on the host too, so
a steady scheduled step reads nothing back from the device).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

from . import fast, is_eager, namespace
from ..optimise.base import Rule


@dataclass(frozen=True)
class AtStep(Rule):
    """What a ``Scheduler`` does at one known step: ``rule`` (its ``rule_at(t)``, built on
    the host) applied to the inner state, and the counter advanced, as
    ``Scheduler.apply`` does eagerly. For compiled steps: ``rule``'s float hyper-parameters
    are then arguments of the program like any rule's, so the program does not change
    with ``t``."""

    rule: Rule

    @property
    def _scalar_state_independent(self) -> bool:  # the counter's t + 1, and rule's state
        return self.rule._scalar_state_independent

    def subrules(self) -> tuple:
        return (self.rule,)

    def apply(self, state: Any, x: Any, g: Any) -> tuple[Any, Any]:
        from ..schedules.scheduler import SchedulerState
        inner, delta = self.rule.apply(state.inner, x, g)
        return SchedulerState(state.t + 1, inner), delta


def at_steps(rules: list, steps: list[int]) -> tuple[list[AtStep], tuple[int, ...]]:
    """Each Scheduler of ``rules`` at its step: the distinct ``AtStep`` rules (equal ones
    once) and which of them each array uses. Raises what ``rule_at`` raises, before
    anything runs. One Scheduler at one step (the usual case) costs no loop per array."""
    n = len(rules)
    if rules.count(rules[0]) == n and steps.count(steps[0]) == n:
        return [AtStep(rules[0].rule_at(steps[0]))], (0,) * n
    made: dict[tuple, int] = {}
    uniq: list[AtStep] = []
    which = []
    for r, t in zip(rules, steps):
        j = made.get((id(r), t))
        if j is None:
            a = AtStep(r.rule_at(t))
            j = made[(id(r), t)] = next((k for k, u in enumerate(uniq) if u == a), len(uniq))
            if j == len(uniq):
                uniq.append(a)
        which.append(j)
    return uniq, tuple(which)


def update(rules: list, states: list, xs: list, gs: list, *, inplace: bool):
    """The ``("update_", Scheduler)`` kernel (see :mod:`fluxtrain._backend.fast`)."""
    from ..optimise.interface import _may_raise, apply_group
    from ..schedules.scheduler import SchedulerState
    ts = [s.t for s in states]
    if not all(is_eager(t) for t in {type(t): t for t in ts}.values()):
        return NotImplemented  # traced counters: Scheduler.apply traces the schedule
    xp = namespace(xs[0])
    steps, advance = fast.lookup("scheduler_counters", xp)(ts, inplace)  # registered with this kernel
    # every rule first: a constructor refusing a scheduled value raises before any write
    uniq, which = at_steps(rules, steps)
    n = len(xs)
    if len(uniq) == 1:  # one rule for every array (the usual case): no loop per array
        rule = uniq[0].rule
        res = apply_group(type(rule), [rule] * n, [s.inner for s in states], xs, gs, xp, inplace)
        return [(SchedulerState(t, st), delta) for t, (st, delta) in zip(advance(), res)]
    if inplace and _may_raise([a.rule for a in uniq]):
        inplace = False  # a later part's DomainError must not follow an earlier part's write
    parts = []
    for j, a in enumerate(uniq):
        idx = [i for i, w in enumerate(which) if w == j]
        parts.append((idx, apply_group(type(a.rule), [a.rule] * len(idx), [states[i].inner for i in idx],
                                       [xs[i] for i in idx], [gs[i] for i in idx], xp, inplace)))
    nxt = advance()
    out: list[Any] = [None] * n
    for idx, res in parts:
        for i, (st, delta) in zip(idx, res):
            out[i] = (SchedulerState(nxt[i], st), delta)
    return out


class MadeCounters:
    """Counters a backend made as 0-d views of one array, one element each (the last few
    groups): found again by identity and order, their values can be read, and for
    ``update_`` advanced, through that array in one call. An entry is a list
    ``[views, base, *facts]`` (what else the backend needs to trust it); one memo per
    group, not per counter: a weak reference per counter and step would cost more than
    the read it saves."""

    __slots__ = ("entries", "size")

    def __init__(self, size: int = 4) -> None:
        self.entries: list[list] = []
        self.size = size

    def add(self, views: list, base: Any, *facts: Any) -> None:
        if len(self.entries) >= self.size:
            del self.entries[0]
        self.entries.append([views, base, *facts])

    def find(self, ts: list) -> list | None:
        """The entry whose views are ``ts``, in order, or None."""
        for e in reversed(self.entries):
            views = e[0]
            if len(views) == len(ts) and all(map(operator.is_, ts, views)):
                return e
        return None


def register(backend: str, counters) -> None:
    """The kernel for ``backend``, with the backend's ``counters(ts, inplace)``: the
    counters as Python ints, and ``advance``, which returns ``t + 1`` for each as
    ``Scheduler.apply`` makes it (a distinct 0-d array each; with ``inplace``, the same
    arrays may be advanced in place). The kernel calls ``advance`` only once the wrapped
    rule's step has succeeded."""
    from ..schedules.scheduler import Scheduler
    fast.register(("update_", Scheduler), backend)(update)
    fast.register("scheduler_counters", backend)(counters)
