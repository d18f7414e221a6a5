"""The JAX group step (``fluxtrain._backend.fast_jax``): shared 0-d state, input and output
de-duplication, donation safety, plan reuse, and the ``_scalar_state_independent``
declaration of every rule (which the sharing relies on).

Fast results are compared with the generic path (``fast.disabled()``); XLA contracts
``a*b + c`` into FMAs, so they agree to a few ulps (float64 here: rtol 1e-12).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import fluxtrain as ft
from fluxtrain._backend import fast
from fluxtrain.optimise import RULES, Rule
from fluxtrain.optimise.base import scalar
from tests.optimise.rules_list import ALL_RULES, map_hyper, rid

jax = pytest.importorskip("jax")
jnp = jax.numpy


# ------------------------------------------------------------------ the declaration

def _instances():
    special = {
        "OptimiserChain": [ft.OptimiserChain(ft.AccumGrad(2), ft.RAdam()),
                           ft.OptimiserChain(ft.ClipNorm(1.0), ft.WeightDecay(), ft.Adam())],
        "AccumGrad": [ft.AccumGrad(3)],
        "MixedPrecision": [ft.MixedPrecision("float64", ft.NAdam())],
        "RMSProp": [ft.RMSProp(), ft.RMSProp(centred=True)],
    }
    return [r for name, cls in RULES.items() for r in (special[name] if name in special else [cls()])]


def _zero_d(state) -> list:
    """The 0-d array entries of a rule state, in order."""
    out = []
    for leaf in jax.tree.leaves(state):
        if len(np.shape(leaf)) == 0:
            out.append(np.asarray(leaf))
    return out


def _check_declaration(rule, backend) -> None:
    """A rule declaring ``_scalar_state_independent`` must produce the same 0-d state from
    the same state whatever ``x`` and ``g`` are (several steps, so counters wrap)."""
    if not rule._scalar_state_independent:
        return
    rng = np.random.default_rng(0)
    xa, xb = (backend.asarray(rng.standard_normal(5), "float32") for _ in range(2))
    apply = (lambda s, x, g: rule.apply(s, x, g))
    if backend.jit:
        apply = jax.jit(apply)
    sa = sb = rule.init(xa)
    for _ in range(4):
        ga, gb = (backend.asarray(rng.standard_normal(5) * 3, "float32") for _ in range(2))
        sa, _ = apply(sa, xa, ga)
        sb, _ = apply(sb, xb, gb)
        za, zb = _zero_d(sa), _zero_d(sb)
        assert len(za) == len(zb)
        for a, b in zip(za, zb):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), \
                f"{rule!r} declares _scalar_state_independent but its 0-d state depends on x or g"


@pytest.mark.parametrize("rule", _instances(), ids=lambda r: repr(r)[:50])
def test_scalar_state_declaration_holds(rule, backend):
    assert isinstance(rule._scalar_state_independent, bool)
    _check_declaration(rule, backend)


@dataclass(frozen=True)
class _GradSum(Rule):
    """A (user) rule whose 0-d state is the sum of the gradient: never shareable."""

    eta: float = 0.1

    def init(self, x):
        return scalar(x, 0.0)

    def apply(self, state, x, g):
        return state + ft.optimise.base.namespace(g).sum(g), g * self.eta


@dataclass(frozen=True)
class _Liar(_GradSum):
    _scalar_state_independent = True


def test_declaration_check_catches_a_false_claim():
    from tests.util import Backend
    _check_declaration(_GradSum(), Backend("numpy"))  # not claimed: nothing to check
    with pytest.raises(AssertionError, match="depends on x or g"):
        _check_declaration(_Liar(), Backend("numpy"))


def test_default_and_composites():
    assert Rule._scalar_state_independent is False
    assert ft.OptimiserChain(ft.ClipNorm(), ft.Adam())._scalar_state_independent
    assert not ft.OptimiserChain(ft.Adam(), _GradSum())._scalar_state_independent
    assert not ft.MixedPrecision(_GradSum())._scalar_state_independent


# ------------------------------------------------------------------ fast vs generic

def _steps(rule, model, grads, *, disabled=False, pure=False):
    state = ft.setup(rule, model)
    for g in grads:
        f = ft.update if pure else ft.update_
        if disabled:
            with fast.disabled():
                state, model = f(state, model, g)
        else:
            state, model = f(state, model, g)
    return state, model


def _same(a, b):
    fa, fb = ft.flatten_state(a[0]), ft.flatten_state(b[0])
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_allclose(np.asarray(fa[k]), np.asarray(fb[k]), rtol=1e-12, atol=1e-300)
    for x, y in zip(jax.tree.leaves(a[1]), jax.tree.leaves(b[1])):
        assert x.dtype == y.dtype
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-12)


def _raw(leaf):
    """A Leaf's state as the group step keeps it (0-d arrays shared between Leafs)."""
    from fluxtrain._backend.fast_jax_tree import _raw_state
    return _raw_state(leaf)


def _model(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return {f"p{i}": jnp.asarray(rng.standard_normal(s)) for i, s in enumerate(shapes)}


def _grads(model, steps, seed=1):
    rng = np.random.default_rng(seed)
    return [{k: jnp.asarray(rng.standard_normal(v.shape)) for k, v in model.items()} for _ in range(steps)]


SHAPES = [(4,), (3, 2), (), (), (5,), (1,)]


@pytest.mark.parametrize("rule", [
    ft.Adam(0.01), ft.RAdam(0.01), ft.OptimiserChain(ft.AccumGrad(2), ft.NAdam(0.01)),
    ft.OptimiserChain(ft.ClipNorm(1.0), ft.WeightDecay(), ft.AdamW(0.01, lambda_=0.1)),
    ft.OptimiserChain(_GradSum(), ft.Momentum(0.01)), ft.MixedPrecision("float64", ft.Adam(0.01)),
], ids=lambda r: repr(r)[:40])
@pytest.mark.parametrize("pure", [False, True], ids=["update_", "update"])
def test_matches_generic_and_shares_scalars(rule, pure):
    """0-d parameters (whose whole state is 0-d) and a rule with g-dependent 0-d state
    must not be merged; the rest share their 0-d state after the first step, inside the
    store ``update_`` keeps. What ``Leaf.state`` hands out never holds one array in two
    Leafs (a donating ``jax.jit`` would refuse the tree), and ``update`` never shares."""
    grads = _grads(_model(SHAPES), 5)
    fast_res = _steps(rule, _model(SHAPES), grads, pure=pure)
    _same(fast_res, _steps(rule, _model(SHAPES), grads, disabled=True, pure=pure))
    state = fast_res[0]
    public = [a for a in jax.tree.leaves(state) if a.ndim == 0]
    assert len({id(a) for a in public}) == len(public)
    if rule._scalar_state_independent and not isinstance(rule, ft.MixedPrecision) and not pure:
        big = [jax.tree.leaves(_raw(state[k])) for k, s in zip(state, SHAPES) if s != ()]
        zs = [[a for a in leaves if a.ndim == 0] for leaves in big]
        assert zs[0] and all(len(z) == len(zs[0]) for z in zs)
        for z in zs[1:]:
            assert all(a is b for a, b in zip(z, zs[0]))  # one array, held by every Leaf
        scal = [jax.tree.leaves(_raw(state[k])) for k, s in zip(state, SHAPES) if s == ()]
        assert not any(a is b for a, b in zip(scal[0], scal[1]))  # 0-d params: own m, v


def test_frozen_leaf_keeps_its_own_scalars():
    """A Leaf frozen for a while has another beta^t: not merged, not donated by others."""
    rule = ft.Adam(0.05)
    m1, m2 = _model([(3,), (3,), (2,)]), _model([(3,), (3,), (2,)])
    s1, s2 = ft.setup(rule, m1), ft.setup(rule, m2)
    grads = _grads(m1, 6)
    for i, g in enumerate(grads):
        for s in (s1, s2):
            (ft.freeze_ if i == 2 else ft.thaw_)(s["p1"])
        s1, m1 = ft.update_(s1, m1, g)
        with fast.disabled():
            s2, m2 = ft.update_(s2, m2, g)
    _same((s1, m1), (s2, m2))
    assert _raw(s1["p0"])[2][0] is _raw(s1["p2"])[2][0]
    assert _raw(s1["p1"])[2][0] is not _raw(s1["p0"])[2][0]


def test_shared_scalars_of_skipped_leaves_stay_alive():
    """Leafs share beta^t; a step that updates only some of them must not donate it."""
    rule = ft.Adam(0.05)
    m1, m2 = _model([(3,), (3,), (2,)]), _model([(3,), (3,), (2,)])
    s1, s2 = ft.setup(rule, m1), ft.setup(rule, m2)
    g = _grads(m1, 3)
    s1, m1 = ft.update_(s1, m1, g[0])
    with fast.disabled():
        s2, m2 = ft.update_(s2, m2, g[0])
    shared = _raw(s1["p2"])[2][0]
    assert _raw(s1["p0"])[2][0] is shared
    part = {"p0": g[1]["p0"], "p1": None, "p2": None}  # p0 alone reads the shared arrays
    s1, m1 = ft.update_(s1, m1, part)
    with fast.disabled():
        s2, m2 = ft.update_(s2, m2, part)
    assert not shared.is_deleted() and _raw(s1["p2"])[2][0] is shared
    s1, m1 = ft.update_(s1, m1, g[2])
    with fast.disabled():
        s2, m2 = ft.update_(s2, m2, g[2])
    _same((s1, m1), (s2, m2))


def test_repeated_and_aliased_inputs():
    """One gradient array for several parameters, and a parameter that is its own
    gradient: read once, never donated; the other buffers are donated."""
    w = jnp.linspace(-1.0, 1.0, 5)
    shared_g = jnp.full((5,), 0.5)
    model = {"a": jnp.ones(5), "b": jnp.zeros(5), "w": w}
    ref = dict(model)
    g = {"a": shared_g, "b": shared_g, "w": w}
    s1, s2 = ft.setup(ft.Momentum(0.1), model), ft.setup(ft.Momentum(0.1), ref)
    old_a = model["a"]
    with fast.disabled():
        s2, ref = ft.update(s2, ref, g)
    s1, model = ft.update_(s1, model, g)
    assert not shared_g.is_deleted() and not w.is_deleted()
    assert old_a.is_deleted()
    _same((s1, model), (s2, ref))


def test_same_structure_other_shapes():
    """The cached plan is keyed by structure and identities, not shapes: a model whose
    arrays change from vectors to 0-d (where sharing is not allowed) must still be right."""
    rule = ft.Adam(0.01)
    for shapes in ([(2,), (3,)], [(), ()], [(4,), (4,)]):
        grads = _grads(_model(shapes), 3)
        _same(_steps(rule, _model(shapes), grads), _steps(rule, _model(shapes), grads, disabled=True))


@pytest.mark.parametrize("rule", ALL_RULES, ids=rid)
def test_float_hyperparameters_are_program_arguments(rule, monkeypatch):
    """Every float hyper-parameter (learning rate, betas, epsilon, decay, clipping bound, ...)
    is an argument of the compiled step: new values every step (a schedule of any of them)
    compile nothing new, and the numbers stay the generic path's."""
    from fluxtrain._backend import fast_jax
    traces = []
    orig = fast_jax._traced
    monkeypatch.setattr(fast_jax, "_traced", lambda *a: traces.append(1) or orig(*a))
    monkeypatch.setattr(fast_jax, "_PLANS", {})  # no program compiled by another test
    monkeypatch.setattr(fast_jax, "_LAST", {})

    def run(disabled):
        model = _model([(4,), (3, 2), (5,)], seed=2)
        state = ft.setup(rule, model)
        leaves = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, ft.Leaf))
        for i, g in enumerate(_grads(model, 4, seed=3)):
            r = map_hyper(rule, lambda v: v * (1.0 - 0.1 * i))
            for leaf in leaves:
                leaf.rule = r
            if disabled:
                with fast.disabled():
                    state, model = ft.update_(state, model, g)
            else:
                state, model = ft.update_(state, model, g)
            if i == 0:
                first = len(traces)
        return (state, model), first

    res, first = run(False)
    assert first >= 1 and len(traces) == first  # compiled at the first step only
    _same(res, run(True)[0])


def test_traced_once(monkeypatch):
    """Fresh Leafs are merged by value before the first compile: one trace serves every
    step (the learning rate changes too)."""
    from fluxtrain._backend import fast_jax
    traces = []
    orig = fast_jax._fill
    monkeypatch.setattr(fast_jax, "_fill", lambda sk, it: traces.append(type(sk).__name__) or orig(sk, it))
    model = _model([(7,), (2, 3), (9,), (1,)], seed=5)
    state = ft.setup(ft.NAdam(0.02, (0.8, 0.95)), model)
    for i, g in enumerate(_grads(model, 5, seed=6)):
        ft.adjust_(state, 0.02 / (i + 1))
        state, model = ft.update_(state, model, g)
    assert traces == ["NAdam"]


def test_clipnorm_step_uses_the_prechecked_norms(monkeypatch):
    """The pre-check computes each ClipNorm(throw)'s norm once; the compiled step takes them
    as inputs instead of reading the gradients again (the rule's own norm is not traced
    there), and the result is the generic path's."""
    calls = []
    orig = ft.ClipNorm.norm
    monkeypatch.setattr(ft.ClipNorm, "norm", lambda self, g: calls.append(g.shape) or orig(self, g))
    model = {"a": jnp.linspace(-1.0, 2.0, 7, dtype=jnp.float32), "b": jnp.ones((2, 3), jnp.float32)}
    grad = {"a": jnp.linspace(3.0, -4.0, 7, dtype=jnp.float32), "b": jnp.full((2, 3), 0.5, jnp.float32)}
    rule = ft.OptimiserChain(ft.ClipNorm(1.2345), ft.WeightDecay(0.1), ft.Adam(0.1))  # clips "a" only
    state, new = ft.update(ft.setup(rule, model), model, grad)
    assert sorted(calls) == [(2, 3), (7,)]  # the pre-check's trace, nothing more
    with fast.disabled():
        _, ref = ft.update(ft.setup(rule, model), model, grad)
    for k in model:
        np.testing.assert_allclose(np.asarray(new[k]), np.asarray(ref[k]), rtol=1e-6)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_clipnorm_throw_checks_before_donating(bad):
    model = {"a": jnp.ones(3), "b": jnp.ones(2)}
    state = ft.setup(ft.OptimiserChain(ft.ClipNorm(1.0), ft.Adam()), model)
    state, model = ft.update_(state, model, {"a": jnp.ones(3), "b": jnp.ones(2)})
    old = dict(model)
    with pytest.raises(ft.DomainError):
        ft.update_(state, model, {"a": jnp.ones(3), "b": jnp.array([1.0, bad])})
    assert not any(a.is_deleted() for a in old.values())
    assert all(a is old[k] for k, a in model.items())


@pytest.mark.parametrize("case", ["overflowing-norm", "late-clip", "p1-norm"])
def test_clipnorm_throw_sees_the_norm_the_rule_computes(case):
    """Finite gradients whose 2-norm overflows float32, a ClipNorm(throw) that sees an
    intermediate value (after WeightDecay), and other p: the same DomainError as the generic
    path, with the model and state intact (nothing donated)."""
    big = np.float32(3e19)  # finite, but big*big overflows float32
    if case == "overflowing-norm":
        rule, bad = ft.OptimiserChain(ft.ClipNorm(1.0), ft.Adam()), jnp.array([1.0, big], jnp.float32)
    elif case == "late-clip":
        rule, bad = ft.OptimiserChain(ft.WeightDecay(0.0), ft.ClipNorm(1.0), ft.Adam()), jnp.array([1.0, big], jnp.float32)
    else:
        rule, bad = ft.OptimiserChain(ft.ClipNorm(1.0, 1.0), ft.Adam()), jnp.array([3e38, 3e38], jnp.float32)
    model = {"a": jnp.ones(3, jnp.float32), "b": jnp.ones(2, jnp.float32)}
    state = ft.setup(rule, model)
    state, model = ft.update_(state, model, {"a": jnp.ones(3, jnp.float32), "b": jnp.ones(2, jnp.float32)})
    old = dict(model)
    with pytest.raises(ft.DomainError, match="norm"):
        ft.update_(state, model, {"a": jnp.ones(3, jnp.float32), "b": bad})
    assert not any(a.is_deleted() for a in old.values())
    assert all(a is old[k] for k, a in model.items())
    # and the finite case still takes the fast path
    from fluxtrain._backend import fast_jax
    g = {"a": jnp.ones(3, jnp.float32), "b": jnp.ones(2, jnp.float32)}
    res = fast_jax._update_jax([state[k].rule for k in ("a", "b")], [state[k].state for k in ("a", "b")],
                               [model[k] for k in ("a", "b")], [g[k] for k in ("a", "b")], inplace=False)
    assert (res is NotImplemented) == (case == "late-clip")


def test_tracers_fall_back():
    from fluxtrain._backend import fast_jax
    rule = ft.Adam()
    x = jnp.ones(3)
    st = rule.init(x)

    @jax.jit
    def f(x, g):
        assert fast_jax._update_jax([rule], [st], [x], [g], inplace=False) is NotImplemented
        return x

    f(x, x)


def test_plan_reuse_checks_identities():
    """The last plan is reused only while the same leaves are the same objects: a step
    whose gradients alias each other or a parameter must not reuse a plan that donates."""
    m1, m2 = _model([(4,), (4,), (4,)]), _model([(4,), (4,), (4,)])
    s1, s2 = ft.setup(ft.Adam(0.05), m1), ft.setup(ft.Adam(0.05), m2)
    grads = _grads(m1, 4)

    def both(g1, g2):
        nonlocal s1, m1, s2, m2
        s1, m1 = ft.update_(s1, m1, g1)
        with fast.disabled():
            s2, m2 = ft.update_(s2, m2, g2)

    both(grads[0], grads[0])
    both(grads[1], grads[1])  # the cached plan
    one = grads[2]["p0"]
    both({"p0": one, "p1": one, "p2": m1["p2"]}, {"p0": one, "p1": one, "p2": m2["p2"]})
    assert not one.is_deleted()
    both(grads[3], grads[3])
    _same((s1, m1), (s2, m2))


def test_hyperparameter_arrays_are_made_per_value():
    """A schedule changes one hyper-parameter a step: only that value gets a new device
    array (each is a copy to the device); values equal as floats but not bit for bit
    (0.0 and -0.0) get their own."""
    from fluxtrain._backend import fast_jax
    a = fast_jax._arg_arrays((0.001, 0.9, 0.999, 1e-8))
    b = fast_jax._arg_arrays((0.002, 0.9, 0.999, 1e-8))
    assert a[0] is not b[0] and all(x is y for x, y in zip(a[1:], b[1:]))
    assert a[0].weak_type and a[0].dtype == jnp.asarray(0.001).dtype and float(a[0]) == float(jnp.asarray(0.001))
    z, nz = fast_jax._arg_arrays((0.0,))[0], fast_jax._arg_arrays((-0.0,))[0]
    assert np.signbit(np.asarray(nz)) and not np.signbit(np.asarray(z))


@dataclass(frozen=True)
class _Shrink(Rule):
    """A user's rule whose float field selects code with a Python ``if``."""

    eta: float = 0.1
    decay: float = 0.0

    def apply(self, state, x, g):
        if self.decay > 0:  # concrete only while ``decay`` is a constant of the program
            g = g * (1 - self.decay)
        return state, g * self.eta


def test_users_rule_in_a_chain_keeps_its_fields_constant(monkeypatch):
    """Inside a chain a user's rule is traced with its ``eta`` as an argument and its other
    fields as constants (a Python ``if`` on them works): compiled once, the generic
    numbers."""
    from fluxtrain._backend import fast_jax
    traces = []
    orig = fast_jax._traced
    monkeypatch.setattr(fast_jax, "_traced", lambda *a: traces.append(1) or orig(*a))
    monkeypatch.setattr(fast_jax, "_PLANS", {})
    monkeypatch.setattr(fast_jax, "_LAST", {})
    rule = ft.OptimiserChain(_Shrink(0.1, 0.5), ft.Adam(0.01))
    grads = _grads(_model(SHAPES), 3)
    fast_res = _steps(rule, _model(SHAPES), grads)
    assert len(traces) == 1
    _same(fast_res, _steps(rule, _model(SHAPES), grads, disabled=True))


def test_models_of_one_structure_with_and_without_0d_parameters():
    """Two models of one tree structure, one with a 0-d parameter where the other has a
    vector, stepped in turn: each keeps its own compiled program (which leaves are 0-d is
    part of a plan), so neither step falls back to the generic path."""
    from fluxtrain._backend import fast_jax_tree
    calls = []
    real = fast_jax_tree.step

    def counting(*a, **kw):
        out = real(*a, **kw)
        calls.append(out is not NotImplemented)
        return out
    models = [[jnp.ones(()), jnp.ones(3)], [jnp.ones(2), jnp.ones(3)]]
    states = [ft.setup(ft.Momentum(0.1), m) for m in models]
    try:
        fast_jax_tree.step = counting
        for _ in range(3):
            for m, s in zip(models, states):
                ft.update(s, m, [jnp.ones_like(a) for a in m])
    finally:
        fast_jax_tree.step = real
    assert len(calls) == 6 and all(calls)
