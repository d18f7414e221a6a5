"""JAX fast route for a whole ``update_``/``update`` step: the tree walk done in C.

The walker in :mod:`fluxtrain.optimise.interface` pairs state, model and gradient node by
node in Python and checks every array on the way, a few microseconds per array: at 1,000s
of arrays that costs more than the compiled JAX step itself. Here the three trees are
flattened by ``jax.tree.flatten`` (C++), and the pairing (which state Leaf, parameter and
gradient positions belong together) is looked up by the three tree structures. It is
worked out once per structure by the walker's own phase 1 (``_collect``), so every check
and error message stays the walker's.

A structure does not pin down everything, so each step still checks, mostly at C speed:

* the paired parameters and gradients are concrete JAX arrays (not tracers, not NumPy);
* their ``aval`` (shape, dtype, weak type) are those seen before: avals are interned, so
  this is an identity test per array; otherwise parameter and gradient avals must be
  equal and of the one dtype;
* their sharding objects are those seen before (also stable per output of a compiled
  program); otherwise each must equal the one placement;
* the paired state entries are Leafs, not tied, and no other Leaf appeared; frozen Leafs
  are skipped, as the walker skips them;
* the rules are of one type (rules themselves are read each step: ``adjust_`` works).

Whatever fails, or when the step is not one group (several dtypes, devices or rule
types) or the kernel declines (:func:`fluxtrain._backend.fast_jax.step` returns
``NotImplemented``), the route returns None and the walker does the step. Results are the
walker's bit for bit: the same kernel, the same commit (tests compare them).
"""
from __future__ import annotations

import operator
from itertools import repeat
from typing import Any

import jax

from . import fast, fast_scheduler
from .fast_jax import Store, _Tracer, _spec, _update_jax, step
from ..optimise.tree import Leaf, _key_of, children

_AVAL = operator.attrgetter("aval")
_SHARDING = operator.attrgetter("sharding")
_RULE = operator.attrgetter("rule")
_FROZEN = operator.attrgetter("frozen")
_TIE = operator.attrgetter("tie")
_STORE = operator.attrgetter("_store")
_AT = operator.attrgetter("_at")


def _raw_state(leaf: Leaf) -> Any:
    """The Leaf's state with the 0-d arrays a store shares between Leafs still shared (the
    group step passes each once); ``leaf.state`` hands out copies of those."""
    s = leaf._store
    return leaf._state if s is None else s.raw_state_of(leaf._at)


def _stop(node: Any) -> bool:
    return node is None or type(node) is Leaf


def _state_flattener():
    """``flatten(state)`` with Leafs and None as leaves: a pytree registry of only the
    containers ``setup`` builds (dict, list, tuple, NamedTuple), so that the whole walk is
    C++ (``is_leaf`` would call back into Python at every node). Falls back to
    ``is_leaf`` if jaxlib's registry type is not reachable."""
    try:
        from jax._src.lib import pytree
        reg = pytree.PyTreeRegistry(enable_none=False, enable_tuple=True, enable_namedtuple=True,
                                    enable_list=True, enable_dict=True)
        reg.flatten([None, (None,), {"a": None}])
        return reg.flatten
    except Exception:  # noqa: BLE001 - a jaxlib without it: the public, slower way
        return lambda s: jax.tree.flatten(s, is_leaf=_stop)


_flatten_state = _state_flattener()


class _NoRoute(Exception):
    """This structure cannot take the route (remembered: the walker does these steps)."""


class _Route:
    """The pairing for one (state, model, gradient) structure, and what was seen last."""

    __slots__ = ("s_pos", "x_pos", "g_pos", "n_state", "rule_type", "array_type", "dtype",
                 "where", "rebind", "parents", "x_avals", "g_avals", "x_sh", "g_sh", "keep")

    def __init__(self, s_pos, x_pos, g_pos, n_state, rule_type, array_type, dtype, where, rebind, parents,
                 lengths):
        # None: every flattened leaf, in order
        self.s_pos, self.x_pos, self.g_pos = (None if p == tuple(range(n)) else p
                                              for p, n in zip((s_pos, x_pos, g_pos), lengths))
        self.n_state = n_state
        self.rule_type, self.array_type, self.dtype, self.where = rule_type, array_type, dtype, where
        self.rebind, self.parents = rebind, parents
        self.x_avals = self.g_avals = self.x_sh = self.g_sh = None
        self.keep: list = []  # the sharding objects whose ids are remembered, kept alive

    def placed(self, xs: list, gs: list) -> bool:
        """Shapes, dtypes and placements as the walker would accept them, for one group."""
        xa, ga = list(map(_AVAL, xs)), list(map(_AVAL, gs))
        if xa != self.x_avals or ga != self.g_avals:  # identity first: interned avals
            if xa != ga or any(a.dtype != self.dtype for a in {id(a): a for a in xa}.values()):
                return False
            self.x_avals, self.g_avals = xa, ga
        if _one_device():
            return True
        xs_, gs_ = list(map(_SHARDING, xs)), list(map(_SHARDING, gs))
        xi, gi = list(map(id, xs_)), list(map(id, gs_))
        if xi != self.x_sh or gi != self.g_sh:
            w = self.where
            if not all(s is w or s == w for s in {id(s): s for s in xs_ + gs_}.values()):
                return False
            self.x_sh, self.g_sh, self.keep = xi, gi, xs_ + gs_
        return True


_ONE: list = []


def _one_device() -> bool:
    """Does this process see a single device (one CPU, no accelerator backend)? Then every
    array is on it and placements need no check."""
    if not _ONE:
        _ONE.append(jax.default_backend() == "cpu" and jax.device_count() == 1)
    return _ONE[0]


def _steady(route: _Route, held: Store, leaves: list, xs: list, gs: list) -> bool:
    """Does this step continue the last one exactly: its Leafs (attached to ``held``, in
    order) unfrozen and with the same rules, the model holding the store's parameters,
    and gradients of the avals and placements seen before? Then everything else was
    checked when the store was made (its parameters are the program's outputs)."""
    if (any(map(_FROZEN, leaves)) or len(xs) != len(held.xs) or not all(map(operator.is_, xs, held.xs))
            or set(map(type, gs)) != {route.array_type} or list(map(_AVAL, gs)) != held.g_avals
            or not (_one_device() or list(map(id, map(_SHARDING, gs))) == held.g_sh[0])):
        return False
    if all(map(operator.is_, map(_RULE, leaves), held.rules)):
        return True
    rules = list(map(_RULE, leaves))
    # new rule objects: a schedule's adjust_(state, ...) between steps. The same program
    # serves them if only float hyper-parameters changed (they are its arguments)
    try:
        spec, hyper = _spec(rules)
    except TypeError:  # unhashable hyper-parameters: the fuller path decides
        return False
    if spec is not held.plan.spec and spec != held.plan.spec:
        return False
    held.rules, held.hyper = rules, hyper  # (what the step runs with)
    return True


_ROUTES: dict[tuple, _Route | None] = {}
_ROUTES_MAX = 32


def update_tree(state: Any, model: Any, grad: Any, *, pure: bool):
    """``(state, model)`` after one step, as ``update``/``update_`` return them, or None
    when the walker must do this step."""
    gl, gtd = jax.tree.flatten(grad)
    if not gl or not isinstance(gl[0], jax.Array) or isinstance(gl[0], _Tracer):
        return None  # not concrete JAX arrays: nothing to gain here
    xl, xtd = jax.tree.flatten(model)
    sl, std = _flatten_state(state)
    # the rule type and the dtype are part of the key: another optimiser, or a model of
    # another dtype, of the same structure gets its own route, not the walker
    first = sl[0] if sl and sl[0] is not None else next((l for l in sl if l is not None), None)
    key = (std, xtd, gtd, type(getattr(first, "rule", None)), gl[0].dtype)
    route = _ROUTES.get(key, False)
    if route is False:
        try:
            route = _build(state, model, grad, sl, xl)
        except _NoRoute:
            route = None
        if len(_ROUTES) >= _ROUTES_MAX:
            del _ROUTES[next(iter(_ROUTES))]
        _ROUTES[key] = route
    if route is None:
        return None
    # (a position list that is every leaf in order is the flattened list itself: the tree
    # structures, the route's key, fix the lengths)
    leaves = sl if route.s_pos is None else list(map(sl.__getitem__, route.s_pos))
    xs = xl if route.x_pos is None else list(map(xl.__getitem__, route.x_pos))
    gs = gl if route.g_pos is None else list(map(gl.__getitem__, route.g_pos))
    n = len(xs)
    if len(sl) - sl.count(None) != route.n_state:
        return None  # a Leaf where the route has none
    # the last step's store is found through the Leafs themselves (not kept by the route):
    # several models of one structure each keep theirs, and a dropped model frees it
    store = not pure  # update_: the states stay in a Store
    held = leaves[0]._store if store and type(leaves[0]) is Leaf else None
    if held is not None and not (len(leaves) == held.n and all(map(operator.is_, map(_STORE, leaves), repeat(held)))
                                 and list(map(_AT, leaves)) == held.order):
        held = None  # the Leafs do not all read their states, in order, from one store
    active = None
    steady = held is not None and _steady(route, held, leaves, xs, gs)
    if steady:
        res = step(held.rules, None, xs, gs, inplace=True, store=True, held=held, steady=True)
    else:
        if set(map(type, leaves)) != {Leaf} or any(map(_TIE, leaves)):
            return None
        if set(map(type, xs)) != {route.array_type} or set(map(type, gs)) != {route.array_type}:
            return None
        if not route.placed(xs, gs):
            return None
        if any(map(_FROZEN, leaves)):  # the walker skips frozen Leafs
            active = [i for i, l in enumerate(leaves) if not l.frozen]
            if not active:
                return None
            leaves, xs, gs = [leaves[i] for i in active], [xs[i] for i in active], [gs[i] for i in active]
            store, held = False, None
        rules = list(map(_RULE, leaves))
        if set(map(type, rules)) != {route.rule_type}:
            return None
        res = step(rules, None if held is not None else list(map(_raw_state, leaves)), xs, gs,
                   inplace=not pure, store=store, held=held)
    if res is NotImplemented:
        return None
    new_states, new_xs = res
    # commit (nothing above changed anything the caller holds)
    if active is None:
        vals = new_xs
    else:
        vals = [None] * n
        for j, i in enumerate(active):
            vals[i] = new_xs[j]
    if pure:
        copies = {id(l): Leaf(l.rule, l.state, l.frozen, l.tie) for l in sl if l is not None}
        for l, st in zip(leaves, new_states):
            copies[id(l)].state = st
        return std.unflatten([None if l is None else copies[id(l)] for l in sl]), _unflatten(route, xtd, xl, vals)
    if type(new_states) is Store:
        if not steady:
            # what this step's gradients were accepted as (route.placed): a steady step
            # must match these, not the route's record, which another model of this
            # structure may set since
            new_states.g_avals, new_states.g_sh = route.g_avals, (route.g_sh, route.keep)
        if new_states is not held:  # a new store: the Leafs now read their states there
            for i, l in enumerate(leaves):
                l._store, l._at, l._state = new_states, i, None
    else:
        for l, st in zip(leaves, new_states):
            l.state = st
    if route.rebind == "paths":
        for parent, keys, idx, whole in route.parents:
            c = model
            for k in parent:
                c = c[k]
            if active is not None:
                for k, i in zip(keys, idx):
                    v = vals[i]
                    if v is not None:
                        c[k] = v
            elif whole:  # a list of trainable arrays only
                c[:] = map(vals.__getitem__, idx)
            elif type(c) is dict:
                c.update(zip(keys, map(vals.__getitem__, idx)))
            else:
                for k, i in zip(keys, idx):
                    c[k] = vals[i]
        return state, model
    if route.rebind == "unflatten":
        return state, _unflatten(route, xtd, xl, vals)
    from ..optimise.interface import _rebind
    return state, _rebind(state, model, {id(l): v for l, v in zip(leaves, new_xs)}, inplace=True)


def _unflatten(route: _Route, xtd, xl: list, vals: list):
    new = list(xl)
    for p, v in zip(range(len(xl)) if route.x_pos is None else route.x_pos, vals):
        if v is not None:
            new[p] = v
    return xtd.unflatten(new)


def _build(state, model, grad, sl, xl) -> _Route | None:
    """The pairing for this structure, from the walker's own phase 1 (which raises the
    walker's errors for bad input). None: not this time (nothing to update)."""
    from ..optimise.interface import _collect
    from .._backend import placement
    entries: list = []
    _collect(state, model, grad, (), entries)
    if not entries:
        return None
    s_at = {id(l): i for i, l in enumerate(sl) if type(l) is Leaf}
    if len(s_at) != len(sl) - sl.count(None):
        raise _NoRoute  # a Leaf twice, or something else in the state
    x_at: dict[int, int] = {}
    for i, a in enumerate(xl):
        x_at[id(a)] = -1 if id(a) in x_at else i  # -1: the same array twice
    g_at = {tuple(_key_of(k) for k in path): i for i, (path, _) in
            enumerate(jax.tree_util.tree_flatten_with_path(grad)[0])}
    s_pos, x_pos, g_pos = [], [], []
    first = entries[0]
    for leaf, x, g, path, where in entries:
        p = x_at.get(id(x), -1)
        q = g_at.get(tuple(path), -1)
        if (leaf.tie is not None or p < 0 or q < 0 or type(leaf.rule) is not type(first[0].rule)
                or type(x) is not type(first[1]) or x.dtype != first[1].dtype or where != first[4]):
            raise _NoRoute  # tied, not found by jax's flattening, or several groups
        s_pos.append(s_at[id(leaf)])
        x_pos.append(p)
        g_pos.append(q)
    x0 = first[1]
    if not isinstance(x0, jax.Array) or isinstance(x0, _Tracer):
        raise _NoRoute
    if fast.lookup_backend(("update_", type(first[0].rule)), "jax") not in (_update_jax, fast_scheduler.update):
        # only rules the JAX kernel traces, as for the walker: others (a user's rule) may
        # not behave the same when traced. A Scheduler is stepped as its rule of each step,
        # built on the host (``step`` checks that the kernel traces that rule)
        raise _NoRoute
    kinds: set = set()
    _kinds(model, kinds)
    if kinds and kinds <= {"dict", "list"}:
        rebind = "paths"
    elif not kinds & {"dict", "list"}:
        rebind = "unflatten"  # no container is changed in place: rebuild them all
    else:
        rebind = "walker"
    parents: dict[tuple, list] = {}
    if rebind == "paths":  # the parent container of each array, and its key there
        for i, (_, _, _, path, _) in enumerate(entries):
            parents.setdefault(tuple(path[:-1]), []).append((path[-1], i))
    plist = []
    for pp, items in parents.items():
        c = model
        for k in pp:
            c = c[k]
        keys = tuple(k for k, _ in items)
        # a list whose every item is updated, in order: one slice assignment
        whole = type(c) is list and keys == tuple(range(len(c)))
        plist.append((pp, keys, tuple(i for _, i in items), whole))
    return _Route(tuple(s_pos), tuple(x_pos), tuple(g_pos), len(s_at), type(first[0].rule), type(x0),
                  x0.dtype, placement(x0), rebind, tuple(plist), (len(sl), len(xl), len(g_at)))


def _kinds(x: Any, out: set) -> None:
    ch = children(x)
    if ch is not None:
        out.add(ch[0])
        for v in ch[2]:
            _kinds(v, out)


fast.register("update_tree", "jax")(update_tree)
