"""``Scheduler``'s group step, on every backend: the wrapped rule's own fast path.

``Scheduler.apply`` works one array at a time: it reads the array's step counter ``t``
(a wait for the device on a GPU, a blocking read for JAX), builds the rule of step ``t``,
applies it by the generic formulas and adds one to ``t``. At 1,000 JAX arrays a scheduled
Adam step took 30 times as long as Adam's. Here a group's counters are read in one
transfer, each distinct ``(rule, t)`` builds its rule once, exactly as ``apply`` builds it
(``rule_at``: the schedule evaluated on the host, in Python floats), and the arrays go to
the wrapped rule's group kernel (:func:`fluxtrain.optimise.interface.apply_group`), so a
scheduled Adam step costs an Adam step plus a little per array (a counter and a state
each; docs/performance.md has the numbers). Where the backend has one
(``"scheduler_counters"`` in the fast registry), a single call reads the counters and makes
the new ones.

Each backend module registers :func:`update` for ``Scheduler`` (JAX: for the walker only;
the whole-step route traces rules, and would evaluate schedules on the device).
"""
from __future__ import annotations

from typing import Any

from . import fast, is_eager, namespace


def _counters(ts: list, xp) -> tuple[list[int], list]:
    """The counters as Python ints, and ``t + 1`` for each as ``Scheduler.apply`` makes it
    (a 0-d array each): in one call where the backend has one."""
    both = fast.lookup("scheduler_counters", xp)
    if both is not None:
        return both(ts)
    return [int(t) for t in ts], [xp.asarray(t + 1) for t in ts]


def update(rules: list, states: list, xs: list, gs: list, *, inplace: bool):
    """The ``("update_", Scheduler)`` kernel (see :mod:`fluxtrain._backend.fast`)."""
    from ..optimise.interface import _may_raise, apply_group
    from ..schedules.scheduler import SchedulerState
    ts = [s.t for s in states]
    if not all(is_eager(t) for t in {type(t): t for t in ts}.values()):
        return NotImplemented  # traced counters: Scheduler.apply traces the schedule
    xp = namespace(xs[0])
    steps, nxt = _counters(ts, xp)
    at: dict[tuple, list[int]] = {}
    for i, (r, t) in enumerate(zip(rules, steps)):
        at.setdefault((id(r), t), []).append(i)
    # every rule first: a constructor refusing a scheduled value raises before any write
    built = [(rules[idx[0]].rule_at(t), idx) for (_, t), idx in at.items()]
    if inplace and len(built) > 1 and _may_raise([r for r, _ in built]):
        inplace = False  # a later part's DomainError must not follow an earlier part's write
    out: list[Any] = [None] * len(xs)
    for rule, idx in built:
        res = apply_group(type(rule), [rule] * len(idx), [states[i].inner for i in idx],
                          [xs[i] for i in idx], [gs[i] for i in idx], xp, inplace)
        for i, (st, delta) in zip(idx, res):
            out[i] = (SchedulerState(nxt[i], st), delta)
    return out


def register(backend: str) -> None:
    from ..schedules.scheduler import Scheduler
    fast.register(("update_", Scheduler), backend)(update)
