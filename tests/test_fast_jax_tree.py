"""The JAX whole-step route (``fluxtrain._backend.fast_jax_tree``): it must give exactly
what the walker gives (same kernel, same commit: bit for bit), take the route where it
should, and leave every case it cannot vouch for to the walker, including each thing a
tree structure does not pin down (shapes, dtypes, frozen or replaced Leafs, tracers).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pytest

import fluxtrain as ft
from fluxtrain import DimensionMismatch, DomainError
from fluxtrain._backend import fast
from tests.util import without_fast

jax = pytest.importorskip("jax")
jnp = jax.numpy
FT = pytest.importorskip("fluxtrain._backend.fast_jax_tree")

_KEY = ("update_tree", "jax")


class Pair(NamedTuple):
    w: object
    b: object


@pytest.fixture
def routed(monkeypatch):
    """Counts the steps the route completes (its call of the group kernel)."""
    calls = []
    real = FT.step

    def counting(*a, **kw):
        out = real(*a, **kw)
        if out is not NotImplemented:
            calls.append(1)
        return out
    monkeypatch.setattr(FT, "step", counting)
    FT._ROUTES.clear()
    return calls


def _walker_only():
    return without_fast(_KEY)


def _arr(rng, *shape, dtype="float32"):
    return jnp.asarray(rng.standard_normal(shape).astype(dtype))


def _models():
    def flat(rng):
        return [_arr(rng, 3) for _ in range(5)]

    def nested(rng):  # non-trainable leaves of every sort, in place containers only
        return {"enc": {"w": _arr(rng, 2, 3), "b": _arr(rng, 3), "n": 3, "ids": jnp.arange(4)},
                "dec": [_arr(rng, 3, 2), None, "name", _arr(rng, 2)], "z": _arr(rng, 1)}

    def tuples(rng):  # immutable containers only: a new model is returned
        return (Pair(_arr(rng, 2, 2), _arr(rng, 2)), (_arr(rng, 4),))

    def mixed(rng):  # a dict (changed in place) holding tuples (rebuilt)
        return {"a": (_arr(rng, 2), _arr(rng, 3)), "b": [_arr(rng, 2)]}

    def array(rng):  # the model is one array: the new one is returned
        return _arr(rng, 4)

    return {"flat": flat, "nested": nested, "tuples": tuples, "mixed": mixed, "array": array}


def _grads(model, rng):
    return jax.tree.map(lambda x: _arr(rng, *x.shape) if getattr(x, "dtype", None) == jnp.float32 else None,
                        model)


def _same(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        if hasattr(x, "dtype"):
            assert x.dtype == y.dtype and np.asarray(x).tobytes() == np.asarray(y).tobytes()
        else:
            assert x == y


def _two_runs(rule, n=3, size=3, seed=0):
    """Equal models and states for a routed run and a walker-only run."""
    rng = np.random.default_rng(seed)
    ma = [_arr(rng, size) for _ in range(n)]
    mb = [a + 0 for a in ma]
    return rng, ma, mb, ft.setup(rule, ma), ft.setup(rule, mb)


def _step_both(sa, ma, sb, mb, g):
    """One update_ routed (a) and one by the walker (b), with equal gradients."""
    ft.update_(sa, ma, g)
    with _walker_only():
        ft.update_(sb, mb, jax.tree.map(lambda a: a + 0, g))


def _scheduled():
    from fluxtrain.schedules import CosAnneal, Exp
    return {
        "adam-cos": ft.Scheduler(ft.Adam, eta=CosAnneal(l0=1e-2, l1=1e-4, period=3)),
        "momentum-exp": ft.Scheduler(ft.Momentum, Exp(0.1, 0.5)),
        "chain": ft.Scheduler(lambda eta: ft.OptimiserChain(ft.ClipNorm(1.0), ft.WeightDecay(0.1), ft.Adam(eta)),
                              Exp(0.01, 0.5)),
        "beta": ft.Scheduler(ft.Adam, beta=lambda t: (0.9, 0.99 - 0.001 * t)),  # not a learning rate
    }


RULES = {"Adam": ft.Adam(0.01), "Chain": ft.OptimiserChain(ft.ClipNorm(1.0), ft.WeightDecay(0.01), ft.Adam(0.01)),
         "Momentum": ft.Momentum(0.05), "Lion": ft.Lion(0.01),
         **{f"Scheduler-{k}": r for k, r in _scheduled().items()}}


@pytest.mark.parametrize("rule", list(RULES.values()), ids=list(RULES))
@pytest.mark.parametrize("name", list(_models()))
@pytest.mark.parametrize("pure", [False, True])
def test_route_equals_walker(name, rule, pure, routed):
    """The walker's numbers and states, bit for bit (dtype and weak type included). A
    Scheduler takes the route as its rule of each step, built on the host, and its
    counters are the walker's too."""
    make = _models()[name]
    ma, mb = make(np.random.default_rng(0)), make(np.random.default_rng(0))
    sa, sb = ft.setup(rule, ma), ft.setup(rule, mb)
    rng = np.random.default_rng(1)
    for _ in range(3):
        g = _grads(ma, rng)
        gb = jax.tree.map(lambda a: a + 0, g)  # own arrays: donation must not touch the other run's
        before = ma
        if pure:
            sa2, ma2 = ft.update(sa, ma, g)
            _same(ma, before)  # pure: inputs still readable, unchanged
            sa, ma = sa2, ma2
        else:
            sa, ma2 = ft.update_(sa, ma, g)
            if name in ("flat", "nested", "mixed"):
                assert ma2 is ma  # the user's mutable root was changed in place
            ma = ma2
        with _walker_only():
            sb, mb = (ft.update if pure else ft.update_)(sb, mb, gb)
    _same(ma, mb)
    _same(_leaf_states(sa), _leaf_states(sb))
    for la, lb in zip(jax.tree.leaves(_leaf_states(sa)), jax.tree.leaves(_leaf_states(sb))):
        assert la.weak_type == lb.weak_type
    if isinstance(rule, ft.Scheduler):
        assert all(int(l.state.t) == 4 for l in jax.tree.leaves(sa, is_leaf=lambda x: isinstance(x, ft.Leaf)))
    assert len(routed) == 3  # the first step builds the route (the walker's phase 1), then takes it


def test_in_place_containers(routed):
    rng = np.random.default_rng(0)
    m = _models()["nested"](rng)
    inner, dec = m["enc"], m["dec"]
    s = ft.setup(ft.Adam(), m)
    for _ in range(2):
        g = _grads(m, rng)
        old_w = m["enc"]["w"]
        _, out = ft.update_(s, m, g)
        assert out is m and m["enc"] is inner and m["dec"] is dec
        assert m["enc"]["w"] is not old_w and m["enc"]["n"] == 3 and m["dec"][2] == "name"
    assert len(routed) == 2


def _step_pair(rule=None):
    rng = np.random.default_rng(0)
    m = [_arr(rng, 3) for _ in range(4)]
    s = ft.setup(rule or ft.Adam(0.01), m)
    ft.update_(s, m, [_arr(rng, 3) for _ in range(4)])  # builds the route
    return m, s, rng


def _snapshot(m, s):
    return [np.asarray(a).copy() for a in m], [np.asarray(a).copy() for a in jax.tree.leaves(s)]


def test_wrong_shape_with_same_structure_raises_and_changes_nothing(routed):
    m, s, rng = _step_pair()
    before = _snapshot(m, s)
    bad = [_arr(rng, 3), _arr(rng, 3), _arr(rng, 1), _arr(rng, 3)]  # (1,) would broadcast
    with pytest.raises(DimensionMismatch, match=r"\[2\].*shape"):
        ft.update_(s, m, bad)
    after = _snapshot(m, s)
    assert all((a == b).all() for a, b in zip(before[0] + before[1], after[0] + after[1]))
    assert len(routed) == 1


def test_other_dtype_gradient_is_converted_as_the_walker_does(routed):
    m, s, rng = _step_pair()
    m2, s2 = [a + 0 for a in m], jax.tree.map(lambda a: a + 0, s)  # equal values, own arrays
    g = [_arr(rng, 3, dtype="float16") for _ in range(4)]
    ft.update_(s, m, g)
    with _walker_only():
        ft.update_(s2, m2, [a + 0 for a in g])
    _same(m, m2)
    assert all(a.dtype == jnp.float32 for a in m)


def test_frozen_leaves_are_skipped_and_thawed_ones_resume(routed):
    m, s, rng = _step_pair()
    ft.freeze_(s[1])
    w1 = np.asarray(m[1]).copy()
    w0 = np.asarray(m[0]).copy()
    ft.update_(s, m, [_arr(rng, 3) for _ in range(4)])
    assert (np.asarray(m[1]) == w1).all() and not (np.asarray(m[0]) == w0).all()
    assert len(routed) == 2
    ft.thaw_(s[1])
    ft.update_(s, m, [_arr(rng, 3) for _ in range(4)])
    assert not (np.asarray(m[1]) == w1).all()
    ft.freeze_(s)
    w = _snapshot(m, s)
    ft.update_(s, m, [_arr(rng, 3) for _ in range(4)])  # all frozen: nothing to do
    assert all((a == b).all() for a, b in zip(w[0], _snapshot(m, s)[0]))


def test_adjust_between_steps_is_seen(routed):
    rng, ma, mb, sa, sb = _two_runs(ft.Descent(0.1))
    for eta in (0.1, 0.5, 0.05):
        ft.adjust_(sa, eta)
        ft.adjust_(sb, eta)
        _step_both(sa, ma, sb, mb, [_arr(rng, 3) for _ in range(3)])
    _same(ma, mb)
    assert len(routed) == 3


def test_replaced_or_removed_leaves_go_to_the_walker(routed):
    m, s, rng = _step_pair()
    s[2] = ft.setup(ft.Descent(0.1), [m[2]])[0]  # another rule type: two groups
    w2 = np.asarray(m[2]).copy()
    g = [_arr(rng, 3) for _ in range(4)]
    ft.update_(s, m, g)
    np.testing.assert_array_equal(np.asarray(m[2]), w2 - np.float32(0.1) * np.asarray(g[2]))
    s[3] = None  # not trained any more
    w3 = np.asarray(m[3]).copy()
    ft.update_(s, m, [_arr(rng, 3) for _ in range(4)])
    np.testing.assert_array_equal(np.asarray(m[3]), w3)
    assert len(routed) == 1


def test_tied_and_mixed_dtype_models_take_the_walker(routed):
    rng = np.random.default_rng(0)
    w = _arr(rng, 3)
    w0 = np.asarray(w).copy()
    tied = {"a": w, "b": w}
    s = ft.setup(ft.Descent(0.5), tied)
    ft.update_(s, tied, {"a": jnp.ones(3), "b": jnp.ones(3)})  # gradients summed: 0.5 * 2
    np.testing.assert_allclose(np.asarray(tied["a"]), w0 - 1.0, rtol=1e-6)
    assert tied["a"] is tied["b"]
    mixed = [_arr(rng, 3), _arr(rng, 3, dtype="float16")]
    s = ft.setup(ft.Adam(), mixed)
    ft.update_(s, mixed, [_arr(rng, 3), _arr(rng, 3, dtype="float16")])
    assert mixed[1].dtype == jnp.float16
    assert routed == []


def test_tracers_and_other_libraries_take_the_walker(routed):
    m, s, rng = _step_pair()
    n0 = len(routed)

    @jax.jit
    def f(s, m, g):
        return ft.update(s, m, g)
    s2, m2 = f(s, m, [_arr(rng, 3) for _ in range(4)])
    assert len(routed) == n0 and len(m2) == 4
    xs = [np.ones(3, np.float32)]
    sn = ft.setup(ft.Adam(), xs)
    ft.update_(sn, xs, [np.ones(3, np.float32)])
    assert len(routed) == n0 and xs[0][0] < 1


def test_clipnorm_throw_raises_before_anything_changes(routed):
    m, s, rng = _step_pair(ft.OptimiserChain(ft.ClipNorm(1.0, throw=True), ft.Adam(0.01)))
    before = _snapshot(m, s)
    g = [_arr(rng, 3) for _ in range(4)]
    g[3] = g[3].at[0].set(jnp.inf)
    with pytest.raises(DomainError):
        ft.update_(s, m, g)
    after = _snapshot(m, s)
    assert all((a == b).all() for a, b in zip(before[0] + before[1], after[0] + after[1]))


def test_new_shapes_with_the_same_structure(routed):
    for seed, n in enumerate((3, 5, 3)):
        rng, ma, mb, sa, sb = _two_runs(ft.Adam(0.1), 2, n, seed)
        for _ in range(2):
            _step_both(sa, ma, sb, mb, [_arr(rng, n) for _ in range(2)])
        _same(ma, mb)
    assert len(routed) == 6  # one route for the structure; shapes are checked each step


def test_missing_gradient_subtrees():
    rng = np.random.default_rng(0)
    ma = {"a": [_arr(rng, 2), _arr(rng, 2)], "b": _arr(rng, 3)}
    mb = jax.tree.map(lambda a: a + 0, ma)
    sa, sb = ft.setup(ft.Momentum(0.1), ma), ft.setup(ft.Momentum(0.1), mb)
    for _ in range(3):
        _step_both(sa, ma, sb, mb, {"a": None, "b": _arr(rng, 3)})
    _same(ma, mb)


@pytest.mark.skipif(len(jax.devices()) < 2, reason="needs two JAX devices")
def test_placement_change_is_seen(routed):
    d0, d1 = jax.devices()[:2]
    m, s, rng = _step_pair()
    g = [jax.device_put(_arr(rng, 3), d0) for _ in range(4)]
    g[1] = jax.device_put(g[1], d1)
    m[1] = jax.device_put(m[1], d0)
    with pytest.raises(ValueError, match="gradient is on"):
        ft.update_(s, m, g)


# ------------------------------------------------------------------ steps chained by identity

def test_state_replaced_between_steps_is_seen(routed):
    """Consecutive steps reuse the last outputs by identity (fast_jax.Store); a state or
    parameter changed in between must be read again."""
    rng, ma, mb, sa, sb = _two_runs(ft.Adam(0.1))
    for t in range(5):
        if t == 2:  # new momenta (equal structure) and a new parameter array
            for s in (sa, sb):
                m, v, b = s[0].state
                s[0].state = (m * 0.5, v + 1.0, b)
            ma[1] = ma[1] * 2.0
            mb[1] = mb[1] * 2.0
        _step_both(sa, ma, sb, mb, [_arr(rng, 3) for _ in range(3)])
    _same(ma, mb)
    assert len(routed) == 5


def test_gradient_that_is_a_parameter(routed):
    """A gradient array that is also a parameter (or a state array) must not be donated:
    the identity shortcut sees it and the plan passes it once, undonated."""
    rng, ma, mb, sa, sb = _two_runs(ft.Momentum(0.1), 2)
    for t in range(4):
        ga = [_arr(rng, 3), ma[0]] if t == 2 else [_arr(rng, 3), _arr(rng, 3)]
        gb = [ga[0] + 0, mb[0]] if t == 2 else [a + 0 for a in ga]
        ft.update_(sa, ma, ga)
        with _walker_only():
            ft.update_(sb, mb, gb)
    _same(ma, mb)


def test_memo_does_not_keep_a_dropped_model_alive(routed):
    import gc
    import weakref
    rng = np.random.default_rng(0)
    m = [_arr(rng, 3) for _ in range(2)]
    s = ft.setup(ft.Adam(), m)
    for _ in range(3):
        ft.update_(s, m, [_arr(rng, 3) for _ in range(2)])
    assert len(routed) == 3 and all(l._store is not None for l in s)  # held by a store
    refs = [weakref.ref(a) for a in m + [s[0].state[0]]]
    del m, s
    gc.collect()
    assert all(r() is None for r in refs)


@dataclass(frozen=True)
class _Halve(ft.Rule):
    """A user's rule: no registered JAX kernel."""

    eta: float = 0.5

    def apply(self, state, x, g):
        return state, self.eta * g


def test_rules_without_a_jax_kernel_take_the_walker(routed):
    """A user's rule, directly or as what a Scheduler builds, is not traced by the route
    (it may not behave the same when traced): the walker steps it."""
    from fluxtrain.schedules import Exp
    for rule in (_Halve(), ft.Scheduler(_Halve, Exp(0.5, 0.5))):
        rng, ma, mb, sa, sb = _two_runs(rule)
        for _ in range(2):
            _step_both(sa, ma, sb, mb, [_arr(rng, 3) for _ in range(3)])
        _same(ma, mb)
        _same(_leaf_states(sa), _leaf_states(sb))
    assert routed == []


def test_scheduler_clipnorm_throw_raises_before_anything_changes(routed):
    """A ClipNorm(throw=true) inside a Scheduler sees the raw gradient: the route's
    pre-check finds the non-finite norm and the walker raises, before any parameter,
    moment or step counter changes."""
    from fluxtrain.schedules import Exp
    m = [jnp.ones(3), jnp.ones(2)]
    rule = ft.Scheduler(lambda eta: ft.OptimiserChain(ft.ClipNorm(1.0), ft.Momentum(eta)), eta=Exp(0.1, 0.5))
    s = ft.setup(rule, m)
    for _ in range(2):
        ft.update_(s, m, [jnp.ones(3), jnp.ones(2)])
    assert len(routed) == 2
    before = [np.asarray(a).copy() for a in m]
    states = jax.tree.map(np.asarray, _leaf_states(s))
    with pytest.raises(DomainError):
        ft.update_(s, m, [jnp.ones(3), jnp.array([1.0, jnp.inf])])
    assert all((np.asarray(a) == b).all() for a, b in zip(m, before))
    _same(jax.tree.map(np.asarray, _leaf_states(s)), states)
    assert [int(l.state.t) for l in s] == [3, 3] and len(routed) == 2
    ft.update_(s, m, [jnp.ones(3), jnp.ones(2)])  # and steps on from there
    assert [int(l.state.t) for l in s] == [4, 4] and len(routed) == 3


# ------------------------------------------------------------ states held by the step's store

def _leaf_states(s):
    return jax.tree.map(lambda l: l.state, s, is_leaf=lambda x: isinstance(x, ft.Leaf))


def test_steady_steps_touch_no_leaf(routed):
    """From the second route step on, the Leafs read their states from one store, which
    each step updates in place; what they read is the walker's state, and a read is
    built once per step."""
    rng, ma, mb, sa, sb = _two_runs(ft.Adam(0.01), n=4)
    stores = []
    for _ in range(4):
        _step_both(sa, ma, sb, mb, [_arr(rng, 3) for _ in range(4)])
        stores.append(sa[0]._store)
        assert all(l._store is stores[-1] and l._state is None for l in sa)
        assert sa[2].state is sa[2].state  # built once, then the same tuple
        _same(_leaf_states(sa), _leaf_states(sb))
    assert stores[0] is not None and all(st is stores[0] for st in stores)
    _same(ma, mb)
    assert len(routed) == 4


def test_reordered_leaves_are_read_by_position(routed):
    """Leafs moved between places of the same structure still read their own states."""
    rng, ma, mb, sa, sb = _two_runs(ft.Adam(0.01), n=3)
    for t in range(4):
        if t == 2:
            for s in (sa, sb):
                s[0], s[2] = s[2], s[0]
        _step_both(sa, ma, sb, mb, [_arr(rng, 3) for _ in range(3)])
    _same(ma, mb)
    _same(_leaf_states(sa), _leaf_states(sb))
    assert len(routed) == 4


def test_two_models_of_one_structure_alternate(routed):
    """Two models share a route; each keeps its own store, updated in place."""
    rng, ma, mb, sa, sb = _two_runs(ft.Momentum(0.05), n=3)
    _, mc, md, sc, sd = _two_runs(ft.Momentum(0.05), n=3, seed=5)
    kept = []
    for t in range(4):
        _step_both(sa, ma, sb, mb, [_arr(rng, 3) for _ in range(3)])
        _step_both(sc, mc, sd, md, [_arr(rng, 3) for _ in range(3)])
        kept.append((sa[0]._store, sc[0]._store))
    # each model keeps its own store, updated in place (steady steps), though they alternate
    assert all(k == kept[1] for k in kept[1:]) and kept[1][0] is not kept[1][1]
    _same(ma, mb)
    _same(mc, md)
    _same(_leaf_states(sa), _leaf_states(sb))
    _same(_leaf_states(sc), _leaf_states(sd))
    assert len(routed) == 8


def test_walker_steps_between_route_steps(routed):
    """A step by the walker reads the held states and writes plain ones (the store is
    broken); the route then starts a new store."""
    rng, ma, mb, sa, sb = _two_runs(ft.Adam(0.01), n=3)
    for t in range(5):
        if t == 2:
            with _walker_only():
                g = [_arr(rng, 3) for _ in range(3)]
                ft.update_(sa, ma, g)
                ft.update_(sb, mb, [a + 0 for a in g])
            assert all(l._store is None for l in sa)
        _step_both(sa, ma, sb, mb, [_arr(rng, 3) for _ in range(3)])
    _same(ma, mb)
    _same(_leaf_states(sa), _leaf_states(sb))


def test_held_leaves_copy_pickle_and_jit_as_plain_ones(routed):
    import copy
    import pickle
    m, s, rng = _step_pair()
    ft.update_(s, m, [_arr(rng, 3) for _ in range(4)])
    assert s[0]._store is not None
    for c in (copy.copy(s[0]), copy.deepcopy(s[0]), pickle.loads(pickle.dumps(s[0]))):
        assert type(c) is ft.Leaf and c._store is None and c.rule == s[0].rule
        _same(c.state, s[0].state)
    g = [_arr(rng, 3) for _ in range(4)]
    s2, m2 = jax.jit(ft.update)(s, m, g)  # the Leafs' pytree flattening reads the store
    with _walker_only():
        s3, m3 = ft.update(s, m, g)
    assert all(l._store is None for l in s2)
    _same(m2, m3)
    _same(_leaf_states(s2), _leaf_states(s3))


def test_dropped_model_is_freed_without_the_cycle_collector(routed):
    """Leafs point at their store, the store at no Leaf: dropping the model and state
    frees their arrays at once (no reference cycle)."""
    import gc
    import weakref
    rng = np.random.default_rng(0)
    m = [_arr(rng, 3) for _ in range(2)]
    s = ft.setup(ft.Adam(), m)
    for _ in range(3):
        ft.update_(s, m, [_arr(rng, 3) for _ in range(2)])
    gc.collect()
    refs = [weakref.ref(a) for a in m + [s[0].state[0], s[1].state[1]]] + [weakref.ref(s[0]._store)]
    gc.disable()
    try:
        del m, s
        assert all(r() is None for r in refs)
    finally:
        gc.enable()


def test_parameter_replaced_between_steps_is_seen(routed):
    """Only the model changes (the Leafs stay attached): the step must read the new array."""
    rng, ma, mb, sa, sb = _two_runs(ft.Adam(0.1))
    for t in range(5):
        if t in (2, 3):
            ma[1] = ma[1] * 2.0
            mb[1] = mb[1] * 2.0
        _step_both(sa, ma, sb, mb, [_arr(rng, 3) for _ in range(3)])
    _same(ma, mb)
    _same(_leaf_states(sa), _leaf_states(sb))
    assert len(routed) == 5


def test_steady_step_checks_its_own_gradient_shapes(routed):
    """The avals a steady step accepts are those its own store was made with, not the
    last ones the route saw (here from another model's pure step of the same structure)."""
    m, s, rng = _step_pair()
    ft.update_(s, m, [_arr(rng, 3) for _ in range(4)])  # a store, steady from here
    other = [_arr(rng, 1) for _ in range(4)]
    ft.update(ft.setup(ft.Adam(0.01), other), other, [_arr(rng, 1) for _ in range(4)])
    ft.update_(s, m, [_arr(rng, 3) for _ in range(4)])  # steady: keeps its store's record
    before = _snapshot(m, s)
    with pytest.raises(DimensionMismatch, match="shape"):
        ft.update_(s, m, [_arr(rng, 1) for _ in range(4)])  # (1,) would broadcast
    after = _snapshot(m, s)
    assert all((a == b).all() for a, b in zip(before[0] + before[1], after[0] + after[1]))


@pytest.mark.parametrize("how", ["update_", "update", "frozen", "copied"])
def test_state_from_the_fast_path_can_be_donated_to_a_users_jit(how, routed):
    """The group step shares 0-d state (beta^t) between Leafs internally; a state tree
    handed out must not hold one buffer twice, or a donating ``jax.jit`` refuses it."""
    rng = np.random.default_rng(0)
    m = [_arr(rng, 3) for _ in range(3)]
    s = ft.setup(ft.Adam(), m)
    for t in range(3):
        g = [_arr(rng, 3) for _ in range(3)]
        if how == "update":
            s, m = ft.update(s, m, g)
        else:
            if how == "frozen" and t == 2:
                ft.freeze_(s[0])  # a step of the others alone: plain states, not a store
            s, m = ft.update_(s, m, g)
    ft.thaw_(s)
    if how == "copied":  # a state copied by the user: plain Leafs, plain arrays
        s = jax.tree.map(jnp.copy, s)
    zs = [a for a in jax.tree.leaves(s) if a.ndim == 0]
    assert len({id(a) for a in zs}) == len(zs)
    gs = [[_arr(rng, 3) for _ in range(3)] for _ in range(2)]
    se, me = s, m
    for g in gs:  # the expected values, by the pure update without jit or donation
        se, me = ft.update(se, me, g)
    me = [np.asarray(a).copy() for a in me]
    f = jax.jit(ft.update, donate_argnums=(0, 1))
    for g in gs:
        s, m = f(s, m, g)
    for a, b in zip(m, me):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-6)
    assert len(routed) >= 3


def test_another_rule_on_the_same_structure_takes_its_own_route(routed):
    """Routes are kept per tree structure *and* rule type: a second optimiser on a model
    of the same structure must not be left to the walker."""
    rng, ma, mb, sa, sb = _two_runs(ft.Adam(0.01))
    _, mc, md, sc, sd = _two_runs(ft.Momentum(0.05), seed=3)
    for _ in range(2):
        _step_both(sa, ma, sb, mb, [_arr(rng, 3) for _ in range(3)])
    for _ in range(2):
        _step_both(sc, mc, sd, md, [_arr(rng, 3) for _ in range(3)])
    _same(ma, mb)
    _same(mc, md)
    assert len(routed) == 4


def test_another_dtype_on_the_same_structure_takes_its_own_route(routed):
    """Routes are kept per dtype too: a float64 model of a float32 model's structure must
    not be left to the walker (the route of one dtype refuses the other's arrays)."""
    for dtype in (jnp.float32, jnp.float64, jnp.float32):
        rng, ma, mb, sa, sb = _two_runs(ft.Adam(0.01))
        ma, mb = [a.astype(dtype) for a in ma], [a.astype(dtype) for a in mb]
        sa, sb = ft.setup(ft.Adam(0.01), ma), ft.setup(ft.Adam(0.01), mb)
        for _ in range(2):
            _step_both(sa, ma, sb, mb, [_arr(rng, 3).astype(dtype) for _ in range(3)])
        _same(ma, mb)
        assert ma[0].dtype == dtype and all(l._store is not None for l in sa)
    assert len(routed) == 6


def _zero_d(store):
    return [a for a in store.pool if a.ndim == 0]


def test_store_donates_its_0d_state_and_hands_out_copies(routed):
    """A store passes its 0-d state (Adam's beta^t, shared by the Leafs) back donated, so
    the program writes it in place (on a GPU a new buffer each step would make XLA update
    every kernel's recorded launch); what Leaf.state handed out are copies, which survive
    the next step."""
    rng, ma, mb, sa, sb = _two_runs(ft.Adam(0.01), n=4)
    _step_both(sa, ma, sb, mb, [_arr(rng, 3) for _ in range(4)])
    store = sa[0]._store
    zd = _zero_d(store)
    assert len(zd) == 2  # one beta^t pair for the four Leafs
    read = [l.state for l in sa]
    _step_both(sa, ma, sb, mb, [_arr(rng, 3) for _ in range(4)])
    assert sa[0]._store is store and all(a.is_deleted() for a in zd)
    assert not any(a.is_deleted() for st in read for a in st[2])
    _same(_leaf_states(sa), _leaf_states(sb))
    _same(ma, mb)


def test_leaves_taken_from_a_store_leave_the_others_readable(routed):
    """Some Leafs of a store stepped in a new state tree: the 0-d state they still share
    with the Leafs left behind is copied before it is donated."""
    rng, ma, mb, sa, sb = _two_runs(ft.Adam(0.01), n=3)
    for _ in range(2):
        _step_both(sa, ma, sb, mb, [_arr(rng, 3) for _ in range(3)])
    left, before = sa[2], jax.tree.map(np.asarray, sb[2].state)  # (left's own, unread)
    sub_a, sub_ma, sub_b, sub_mb = sa[:2], ma[:2], sb[:2], mb[:2]
    _step_both(sub_a, sub_ma, sub_b, sub_mb, [_arr(rng, 3) for _ in range(2)])
    assert sub_a[0]._store is not left._store
    _same(jax.tree.map(np.asarray, left.state), before)
    _same(_leaf_states(sub_a), _leaf_states(sub_b))
    assert len(routed) == 3


@pytest.mark.parametrize("change", ["eta", "beta", "p"])
def test_schedule_adjusting_hyperparameters_keeps_the_store(change, routed, monkeypatch):
    """adjust_(state, ...) before every step (a schedule) makes new rule objects; the steps
    stay steady and the store goes on in place while only float hyper-parameters change
    (they are the program's arguments). A change of what selects code (ClipNorm's p)
    starts a new store. Either way the walker's numbers."""
    steady = []
    real = FT._steady
    monkeypatch.setattr(FT, "_steady", lambda *a: steady.append(real(*a)) or steady[-1])
    rule = ft.OptimiserChain(ft.ClipNorm(10.0), ft.Adam(0.01))
    rng, ma, mb, sa, sb = _two_runs(rule, n=3)
    stores = []
    for t, eta in enumerate((0.01, 0.02, 0.005, 0.001)):
        kw = {"eta": {"eta": eta}, "beta": {"beta": (0.9, 0.99 - 0.01 * t)}, "p": {"p": 2.0 - 0.5 * t}}[change]
        ft.adjust_(sa, **kw)
        ft.adjust_(sb, **kw)
        _step_both(sa, ma, sb, mb, [_arr(rng, 3) for _ in range(3)])
        stores.append(sa[0]._store)
        _same(_leaf_states(sa), _leaf_states(sb))
    _same(ma, mb)
    assert len(routed) == 4
    assert (len(set(map(id, stores))) == 1) == (change != "p")
    assert steady == [change != "p"] * 3  # (the first step makes the store)


# ------------------------------------------------------------ Scheduler through the route

def test_scheduled_steady_steps_read_no_counter(routed, monkeypatch):
    """The store keeps a Scheduler group's counters on the host as well: only the step
    that makes the store reads them from the device, and later steps are steady."""
    fj = pytest.importorskip("fluxtrain._backend.fast_jax")
    reads, steady = [], []
    real_read, real_steady = fj._steps_of, FT._steady
    monkeypatch.setattr(fj, "_steps_of", lambda st: reads.append(1) or real_read(st))
    monkeypatch.setattr(FT, "_steady", lambda *a: steady.append(real_steady(*a)) or steady[-1])
    rng, ma, mb, sa, sb = _two_runs(_scheduled()["adam-cos"], n=4)
    stores = []
    for _ in range(5):
        _step_both(sa, ma, sb, mb, [_arr(rng, 3) for _ in range(4)])
        stores.append(sa[0]._store)
    assert len(reads) == 1 and steady == [True] * 4
    assert stores[0] is not None and all(st is stores[0] for st in stores)
    assert stores[0].steps == [6] * 4
    _same(_leaf_states(sa), _leaf_states(sb))
    _same(ma, mb)


def test_scheduled_leaves_at_different_steps(routed):
    """A Leaf reset to a fresh state (its counter back at 1) leaves its store; the next
    step reads every counter and builds one rule per distinct step, as the walker does."""
    rule = _scheduled()["adam-cos"]
    rng, ma, mb, sa, sb = _two_runs(rule, n=3)
    for _ in range(2):
        _step_both(sa, ma, sb, mb, [_arr(rng, 3) for _ in range(3)])
    sa[1].state = rule.init(ma[1])
    sb[1].state = rule.init(mb[1])
    for _ in range(3):
        _step_both(sa, ma, sb, mb, [_arr(rng, 3) for _ in range(3)])
    assert [int(l.state.t) for l in sa] == [6, 4, 6]
    _same(_leaf_states(sa), _leaf_states(sb))
    _same(ma, mb)
    assert len(routed) == 5


def test_scheduled_value_refused_changes_nothing(routed):
    """A schedule whose value the rule refuses (here a negative learning rate at step 3)
    raises the walker's DomainError; nothing is written and the counters stay."""
    rule = ft.Scheduler(ft.Descent, lambda t: 0.25 - 0.1 * t)
    rng, ma, mb, sa, sb = _two_runs(rule, n=2)
    for _ in range(2):
        _step_both(sa, ma, sb, mb, [_arr(rng, 3) for _ in range(2)])
    before = [np.asarray(a).copy() for a in ma]
    with pytest.raises(DomainError, match="learning rate"):
        ft.update_(sa, ma, [_arr(rng, 3) for _ in range(2)])
    assert all((np.asarray(a) == b).all() for a, b in zip(ma, before))
    assert [int(l.state.t) for l in sa] == [3, 3] and len(routed) == 2
