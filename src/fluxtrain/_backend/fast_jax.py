"""JAX fast path: one jitted, buffer-donating XLA program per group of arrays.

Called eagerly, the generic rules dispatch one small XLA computation per operation and per
array (an Adam step on 1,000 arrays is ~20,000 dispatches, each allocating a new buffer).
Here the whole group's step (every array's ``rule.apply`` and ``x - delta``) is traced once
and compiled by ``jax.jit``; later steps with the same rules and shapes reuse it.

``update_``'s in-place contract means the old parameter and state buffers are not needed
after the step, so they are *donated* to XLA, which then writes the results in place (no
allocation, half the memory traffic). Consequence: after ``update_`` the previous JAX
arrays of the parameters and of the optimiser state are deleted; use the returned
``(state, model)`` (or the containers ``update_`` rebinds), as the contract says. ``update``
(pure) uses the same compiled program without donation and never invalidates its inputs.

Not used (generic path instead) when the arrays are tracers (a ``jax.jit`` of the user's
own, which compiles the generic path anyway), when a rule is not hashable (e.g. a traced
hyper-parameter), or when a ``ClipNorm(throw=True)`` in the group sees a non-finite norm
(so the generic path raises its ``DomainError`` before anything is modified).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from . import fast
from ..optimise.base import Masked, Replace


def _new_x(x, delta):
    if delta is None:
        return x
    if isinstance(delta, Replace):
        return delta.value
    if isinstance(delta, Masked):
        return jnp.where(delta.active, x - delta.delta, x)
    return x - delta


def _group_step(spec, etas, states, xs, gs):
    skeletons, which = spec
    rules = [_fill(sk, it) for sk, it in zip(skeletons, _chunks(spec, etas))]
    new_states, new_xs = [], []
    for j, s, x, g in zip(which, states, xs, gs):
        st, delta = rules[j].apply(s, x, g)
        new_states.append(st)
        new_xs.append(_new_x(x, delta))
    return new_states, new_xs


# Learning rates are passed as traced arguments, not baked into the compiled program, so
# that adjust_(state, eta) every step (a schedule) does not recompile. Everything else
# about a rule is static (it may select code paths: ClipNorm's p, AdamW's couple, ...).
_ETA = "<eta>"


def _split(rule, etas: list):
    """A hashable skeleton of ``rule`` with each float ``eta`` replaced by a marker (the
    values are appended to ``etas``)."""
    import copy
    eta = getattr(rule, "eta", None)
    opts = getattr(rule, "opts", None)
    inner = getattr(rule, "rule", None)
    if type(eta) is float or isinstance(opts, tuple) or hasattr(inner, "apply"):
        sk = copy.copy(rule)
        if type(eta) is float:
            etas.append(eta)
            object.__setattr__(sk, "eta", _ETA)
        if isinstance(opts, tuple):
            object.__setattr__(sk, "opts", tuple(_split(o, etas) for o in opts))
        if hasattr(inner, "apply"):
            object.__setattr__(sk, "rule", _split(inner, etas))
        return sk
    return rule


def _fill(sk, it):
    import copy
    eta = getattr(sk, "eta", None)
    opts = getattr(sk, "opts", None)
    inner = getattr(sk, "rule", None)
    if not (eta is _ETA or isinstance(opts, tuple) or hasattr(inner, "apply")):
        return sk
    r = copy.copy(sk)
    if eta is _ETA:
        object.__setattr__(r, "eta", next(it))
    if isinstance(opts, tuple):
        object.__setattr__(r, "opts", tuple(_fill(o, it) for o in opts))
    if hasattr(inner, "apply"):
        object.__setattr__(r, "rule", _fill(inner, it))
    return r


def _chunks(spec, etas):
    it = iter(etas)
    return [it] * len(spec[0])


_step_donated = jax.jit(_group_step, static_argnums=(0,), donate_argnums=(2, 3))
_step_pure = jax.jit(_group_step, static_argnums=(0,))


def _throws(rule) -> bool:
    """Does ``rule`` (or a rule inside it) raise on values (``ClipNorm(throw=True)``)?"""
    from ..optimise import ClipNorm
    if isinstance(rule, ClipNorm):
        return bool(rule.throw)
    inner = list(getattr(rule, "opts", ()) or ())
    sub = getattr(rule, "rule", None)
    if sub is not None:
        inner.append(sub)
    return any(_throws(r) for r in inner)


@jax.jit
def _all_finite_norms(gs):
    # any non-finite entry makes every p-norm non-finite (or NaN): a cheap, exact test
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in gs]))


def _spec(rules):
    """``((skeleton, ...), (index per array,)), etas``: the distinct rules (by identity,
    then equality) as skeletons without their learning rates, and those rates."""
    uniq: list = []
    ids: dict[int, int] = {}
    which = []
    for r in rules:
        j = ids.get(id(r))
        if j is None:
            for k, u in enumerate(uniq):
                if u == r:
                    j = k
                    break
            else:
                j = len(uniq)
                uniq.append(r)
            ids[id(r)] = j
        which.append(j)
    etas: list = []
    skeletons = tuple(_split(r, etas) for r in uniq)
    return (skeletons, tuple(which)), tuple(etas)


def _update_jax(rules, states, xs, gs, *, inplace):
    if not xs or any(isinstance(a, jax.core.Tracer) for a in xs) or any(isinstance(a, jax.core.Tracer) for a in gs):
        return NotImplemented  # inside the user's own jit: the generic path is compiled anyway
    try:
        spec, etas = _spec(rules)
        hash(spec)
    except TypeError:  # traced or unhashable hyper-parameters
        return NotImplemented
    if any(_throws(r) for r in spec[0]) and not bool(_all_finite_norms(list(gs))):
        return NotImplemented  # the generic path raises ClipNorm's DomainError
    donate = inplace
    if donate:
        # a buffer may be donated once, and never while it is also read as a gradient
        donated = [a for a in jax.tree.leaves((states, xs)) if isinstance(a, jax.Array)]
        ids = {id(a) for a in donated}
        if len(ids) != len(donated) or any(id(g) in ids for g in gs):
            donate = False
    fn = _step_donated if donate else _step_pure
    try:
        new_states, new_xs = fn(spec, etas, list(states), list(xs), list(gs))
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerBoolConversionError, TypeError):
        return NotImplemented  # a rule that cannot be traced: the generic path decides
    return [(s, Replace(x)) for s, x in zip(new_states, new_xs)]


def _register() -> None:
    from ..optimise import RULES
    for cls in RULES.values():
        fast.register(("update_", cls), "jax")(_update_jax)


_register()
