"""The Scheduler group kernel (``fluxtrain._backend.fast_scheduler``): the wrapped rule's
fast path for every array of a step, with the numbers of the generic ``Scheduler.apply``
(which runs with the fast paths off) and its counters, on every eager backend."""
from __future__ import annotations

import numpy as np
import pytest

import fluxtrain as ft
from fluxtrain import ClipNorm, CosAnneal, DomainError, Exp, OptimiserChain, Scheduler, WeightDecay
from fluxtrain._backend import fast, fast_scheduler
from tests.util import HAVE_JAX, HAVE_TORCH

CASES = {
    "Adam": lambda: Scheduler(ft.Adam, eta=CosAnneal(l0=1e-2, l1=1e-4, period=3)),
    "Momentum": lambda: Scheduler(ft.Momentum, Exp(0.1, 0.7), rho=0.8),
    "chain": lambda: Scheduler(lambda eta: OptimiserChain(ClipNorm(0.5), WeightDecay(1e-2), ft.Adam(eta)),
                               eta=Exp(0.05, 0.9)),
}


@pytest.fixture
def kernel_calls(monkeypatch):
    """The steps the kernel completed (it may decline: the generic path then runs)."""
    calls = []
    real = fast_scheduler.update
    for name, have in (("numpy", True), ("torch", HAVE_TORCH), ("jax", HAVE_JAX)):
        if have:
            fast._load(name)  # each backend's kernels register when it is first used

    def counting(*a, **kw):
        out = real(*a, **kw)
        calls.append(out is not NotImplemented)
        return out
    for key, fn in list(fast._REGISTRY.items()):
        if fn is real:
            monkeypatch.setitem(fast._REGISTRY, key, counting)
    return calls


def _model(b, dtype):
    rng = np.random.default_rng(0)
    return {k: b.asarray(rng.standard_normal(shape), dtype) for k, shape in
            (("w", (3, 4)), ("b", (4,)), ("v", (5,)))}


def _grads(b, dtype, rng, bad=None):
    g = {k: rng.standard_normal(shape) for k, shape in (("w", (3, 4)), ("b", (4,)), ("v", (5,)))}
    if bad is not None:
        g[bad][0] = np.inf
    return {k: b.asarray(v, dtype) for k, v in g.items()}


def _run(b, rule, dtype, steps, late):
    """``steps`` update_ calls; the Leaf of ``v`` starts ``late`` steps after the others
    (its counter differs: the kernel builds one rule per distinct step)."""
    model = _model(b, dtype)
    state = ft.setup(rule, model)
    rng = np.random.default_rng(1)
    for t in range(steps):
        g = _grads(b, dtype, rng)
        if t < late:
            sub = {"w": model["w"], "b": model["b"]}
            sub_state = {"w": state["w"], "b": state["b"]}
            ft.update_(sub_state, sub, {"w": g["w"], "b": g["b"]})
            model.update(sub)
        else:
            state, model = ft.update_(state, model, g)
    return state, model


@pytest.mark.parametrize("late", [0, 2])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_equals_the_generic_path(eager_backend, case, dtype, late, kernel_calls):
    b = eager_backend
    fast_s, fast_m = _run(b, CASES[case](), dtype, 5, late)
    assert kernel_calls and all(kernel_calls)
    with fast.disabled():
        ref_s, ref_m = _run(b, CASES[case](), dtype, 5, late)
    tol = 1e-5 if dtype == "float32" else 1e-12
    for k in fast_m:
        got, want = b.to_numpy(fast_m[k]), b.to_numpy(ref_m[k])
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * 1e-2)
        t_fast, t_ref = fast_s[k].state.t, ref_s[k].state.t
        assert int(t_fast) == int(t_ref) == 6 - (late if k == "v" else 0)
        assert t_fast.dtype == t_ref.dtype and getattr(t_fast, "weak_type", None) == getattr(t_ref, "weak_type", None)
        for a, c in zip(_leaves(fast_s[k].state.inner), _leaves(ref_s[k].state.inner)):
            np.testing.assert_allclose(b.to_numpy(a), b.to_numpy(c), rtol=tol, atol=tol * 1e-2)


def _leaves(tree):
    if isinstance(tree, (tuple, list)):
        return [x for t in tree for x in _leaves(t)]
    return [] if tree is None else [tree]


@pytest.mark.parametrize("late", [0, 2])
def test_a_refused_step_writes_nothing(eager_backend, kernel_calls, late):
    """A non-finite norm raises Flux's DomainError and nothing is written: no array, and
    no counter (torch advances known counters in place, only once the step succeeded).
    With arrays at two different steps (two rules, two group kernels), the first would
    have been written in place."""
    b = eager_backend
    state, model = _run(b, CASES["chain"](), "float32", 3, late)
    before = {k: b.to_numpy(v).copy() for k, v in model.items()}
    counters = {k: int(state[k].state.t) for k in model}
    with pytest.raises(DomainError):
        ft.update_(state, model, _grads(b, "float32", np.random.default_rng(2), bad="v"))
    for k in model:
        np.testing.assert_array_equal(b.to_numpy(model[k]), before[k])
        assert int(state[k].state.t) == counters[k]


def test_counters_are_distinct_arrays(eager_backend, kernel_calls):
    """Each Leaf gets its own counter array (a user's jax.jit with donation refuses a
    state holding one buffer twice)."""
    b = eager_backend
    state, _ = _run(b, CASES["Adam"](), "float32", 2, 0)
    ts = [state[k].state.t for k in state]
    assert len({id(t) for t in ts}) == len(ts)
    assert all(kernel_calls)


@pytest.mark.parametrize("how", ["in place", "new memory", "new state"])
def test_a_counter_changed_by_the_user_is_read_again(eager_backend, kernel_calls, how):
    """Backends remember the counters they made (torch reads nothing back in a steady
    schedule); a counter the user changes, in place, by swapping its memory, or by giving
    the Leaf a new state, is the one the next step uses, as in the generic path."""
    b = eager_backend
    if how != "new state" and not b.mutable:
        pytest.skip("JAX arrays are immutable")
    if how == "new memory" and not hasattr(b.asarray(0), "data_ptr"):
        pytest.skip("only torch tensors take new memory in place (.data = ...)")
    from fluxtrain.schedules.scheduler import SchedulerState

    def run():
        state, model = _run(b, CASES["Adam"](), "float32", 2, 0)
        leaf = state["w"]
        if how == "in place":
            b.fill_(leaf.state.t, 7)
        elif how == "new memory":  # swapped without a version bump
            leaf.state.t.data = b.asarray(np.array(7, dtype=np.int64))
        else:
            leaf.state = SchedulerState(b.asarray(np.array(7)), leaf.state.inner)
        g = _grads(b, "float32", np.random.default_rng(3))
        return ft.update_(state, model, g)
    state, model = run()
    assert all(kernel_calls)
    with fast.disabled():
        ref_s, ref_m = run()
    assert int(state["w"].state.t) == 8 and int(state["b"].state.t) == 4
    for k in model:
        assert int(state[k].state.t) == int(ref_s[k].state.t)
        np.testing.assert_allclose(b.to_numpy(model[k]), b.to_numpy(ref_m[k]), rtol=1e-6)


def test_update_leaves_the_given_counters_alone(eager_backend, kernel_calls):
    """``update`` (pure) makes new counters, also where ``update_`` would advance the ones
    it made in place; ``update_`` keeps its counters distinct per Leaf."""
    b = eager_backend
    state, model = _run(b, CASES["Adam"](), "float32", 2, 0)
    before = {k: int(state[k].state.t) for k in state}
    g = _grads(b, "float32", np.random.default_rng(3))
    new_state, _ = ft.update(state, model, g)
    assert {k: int(state[k].state.t) for k in state} == before
    assert {k: int(new_state[k].state.t) for k in state} == {k: v + 1 for k, v in before.items()}
    state, _ = ft.update_(state, model, g)
    state, _ = ft.update_(state, model, g)
    assert {k: int(state[k].state.t) for k in state} == {k: v + 2 for k, v in before.items()}
    if b.mutable:
        b.fill_(state["w"].state.t, 1)
        assert int(state["b"].state.t) == before["b"] + 2  # one counter's change reaches no other
    assert all(kernel_calls)


def test_counters_of_different_dtypes_keep_them(eager_backend, kernel_calls):
    """Counters of one group that differ in dtype (a state built by hand) are advanced each
    in its own dtype, as ``Scheduler.apply`` does, with the generic path's numbers."""
    b = eager_backend
    from fluxtrain.schedules.scheduler import SchedulerState

    def run():
        state, model = _run(b, CASES["Adam"](), "float32", 1, 0)
        leaf = state["v"]
        leaf.state = SchedulerState(b.asarray(np.array(2, dtype=np.int32)), leaf.state.inner)
        rng = np.random.default_rng(4)
        for _ in range(2):
            state, model = ft.update_(state, model, _grads(b, "float32", rng))
        return state, model
    state, model = run()
    assert all(kernel_calls)
    with fast.disabled():
        ref_s, ref_m = run()
    for k in model:
        t, r = state[k].state.t, ref_s[k].state.t
        assert int(t) == int(r) and t.dtype == r.dtype
        np.testing.assert_allclose(b.to_numpy(model[k]), b.to_numpy(ref_m[k]), rtol=1e-6)
    assert int(state["v"].state.t) == 4 and int(state["w"].state.t) == 4
