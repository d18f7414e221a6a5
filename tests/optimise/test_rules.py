"""Generic tests over every rule and backend, constructors, old names."""
from __future__ import annotations


import numpy as np
import pytest

import fluxtrain as ft
from fluxtrain.optimise import RULES
from tests.optimise.rules_list import ALL_RULES, CONVERGE, map_hyper, rid

RNG = np.random.default_rng(0)
X0 = {"w": RNG.standard_normal((3, 4)), "b": RNG.standard_normal(4)}
GS = [{k: RNG.standard_normal(v.shape) for k, v in X0.items()} for _ in range(4)]


def _run(backend, rule, dtype, steps=4):
    model = {k: backend.asarray(v.copy(), dtype) for k, v in X0.items()}
    state = ft.setup(rule, model)
    step = lambda s, m, g: ft.update(s, m, g)  # noqa: E731
    if backend.jit:
        import jax
        step = jax.jit(step)
    for g in GS[:steps]:
        state, model = step(state, model, {k: backend.asarray(v, dtype) for k, v in g.items()})
    return state, model


@pytest.mark.parametrize("rule", ALL_RULES, ids=rid)
def test_every_backend_same_numbers_and_dtype(backend, rule):
    ref = _run(type(backend)("numpy"), rule, "float32")[1]
    state, model = _run(backend, rule, "float32")
    for k in model:
        assert str(backend.to_numpy(model[k]).dtype) == "float32"
        np.testing.assert_allclose(backend.to_numpy(model[k]), ref[k], rtol=2e-6, atol=1e-7)
    for _, leaf in ft.optimise.tree.leaves(state):
        for a in ft.optimise.io._state_arrays(leaf.state, ()):
            dt = str(np.asarray(backend.to_numpy(a[1])).dtype)
            assert dt in ("float32", "int32", "float64" if isinstance(rule, ft.MixedPrecision) else "float32")


@pytest.mark.parametrize("rule", ALL_RULES, ids=rid)
def test_update_and_update_in_place_agree(eager_backend, rule):
    b = eager_backend
    s1, m1 = _run(b, rule, "float64")
    model = {k: b.asarray(v.copy()) for k, v in X0.items()}
    state = ft.setup(rule, model)
    orig = dict(model)
    for g in GS:
        gg = {k: b.asarray(v) for k, v in g.items()}
        state, model = ft.update_(state, model, gg)
    for k in model:
        np.testing.assert_array_equal(b.to_numpy(model[k]), b.to_numpy(m1[k]))
        if b.lib != "jax":  # written in place, not rebound
            assert model[k] is orig[k]
        assert not np.array_equal(b.to_numpy(model[k]), X0[k])


def test_update_does_not_mutate(eager_backend):
    b = eager_backend
    model = {k: b.asarray(v.copy()) for k, v in X0.items()}
    state = ft.setup(ft.Adam(), model)
    copies = {k: b.to_numpy(v).copy() for k, v in model.items()}
    m_state = b.to_numpy(state["w"].state[0]).copy()
    s2, m2 = ft.update(state, model, {k: b.asarray(v) for k, v in GS[0].items()})
    for k in model:
        np.testing.assert_array_equal(b.to_numpy(model[k]), copies[k])
        assert not np.array_equal(b.to_numpy(m2[k]), copies[k])
    np.testing.assert_array_equal(b.to_numpy(state["w"].state[0]), m_state)
    assert s2["w"] is not state["w"]


@pytest.mark.parametrize("rule", [r for r in ALL_RULES if type(r).__name__ in CONVERGE], ids=rid)
def test_converges_on_quadratic(rule):
    rule = rule.adjust(CONVERGE[type(rule).__name__])
    x = np.array([2.0, -3.0, 1.5])
    state = ft.setup(rule, x)
    for _ in range(500):
        state, x = ft.update_(state, x, 2 * x)  # loss = sum(x**2), starting at 15.25
    assert np.sum(x ** 2) < 1e-2, (rule, x)


def test_descent_default_is_float32_point_one():
    assert ft.Descent().eta == 0.10000000149011612
    x = np.array([1.0, -2.0])
    ft.update_(ft.setup(ft.Descent(), x), x, np.array([0.5, -1.0]))
    np.testing.assert_array_equal(x, [0.9499999992549419, -1.8999999985098839])


def test_constructors_positional_and_keyword():
    a = ft.Adam(0.01, (0.8, 0.99), 1e-7)
    assert a == ft.Adam(eta=0.01, beta=(0.8, 0.99), epsilon=1e-7)
    assert ft.Adam(beta=[0.8, 0.99]).beta == (0.8, 0.99)
    assert ft.RMSProp(0.1, centered=True).centred
    assert ft.AdamW(0.1, (0.9, 0.99), 0.5).lambda_ == 0.5
    assert ft.WeightDecay().lambda_ == 5e-4 and ft.AdamW().lambda_ == 0.0
    assert ft.AdaBelief().epsilon == 1e-16
    assert ft.OAdam().beta == (0.5, 0.9)
    assert ft.Rprop().ell == (0.5, float(np.float32(1.2)))
    for name, cls in RULES.items():
        if name not in ("AccumGrad", "MixedPrecision", "OptimiserChain"):
            assert isinstance(cls(), ft.Rule)


@pytest.mark.parametrize("cls", [c for c in RULES.values() if "eta" in c.__dataclass_fields__])
def test_negative_eta_raises(cls):
    with pytest.raises(ft.DomainError, match="learning rate"):
        cls(-0.1)


def test_composite_constructor_errors():
    with pytest.raises(ft.ArgumentError):
        ft.AccumGrad(0)
    with pytest.raises(ft.ArgumentError):
        ft.OptimiserChain(ft.Adam(), "Descent")
    with pytest.raises(ft.ArgumentError):
        ft.adjust(ft.setup(ft.RMSProp(), np.zeros(2)), centred=True)


@pytest.mark.parametrize("old,new", sorted(ft.OLD_NAMES.items()))
def test_old_names_warn_and_build_new_rule(old, new):
    with pytest.warns(FutureWarning, match=f"use `{new}`"):
        r = getattr(ft, old)() if old != "ClipValue" else getattr(ft, old)(1.0)
    assert type(r).__name__ == new
    assert getattr(ft.optimise, old) is getattr(ft, old)


def test_hyper_parameters_cast_to_float32():
    # float32 eta: 0.1 rounds to 0.1f0, so Descent(0.1) and Descent(0.1f0) agree in float32
    x = np.ones(3, np.float32)
    _, y = ft.update(ft.setup(ft.Descent(0.1), x), x, np.full(3, 3.0, np.float32))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, np.float32(1) - np.float32(3) * np.float32(0.1))


def test_float16_epsilon_clamped():
    x = np.ones(2, np.float16)
    s = ft.setup(ft.Adam(), x)
    _, y = ft.update(s, x, np.zeros(2, np.float16))
    assert y.dtype == np.float16 and np.all(np.isfinite(y))


def test_adjust_keeps_state_and_adjust_in_place():
    x = {"vec": np.zeros(2, np.float32)}
    s = ft.setup(ft.Nesterov(), x)
    ft.update_(s, x, {"vec": np.array([16, 88])})
    np.testing.assert_allclose(s["vec"].state, [-0.016, -0.088], rtol=1e-6)
    s2 = ft.adjust(s, 0.123)
    assert s2["vec"].rule == ft.Nesterov(0.123, 0.9) and s["vec"].rule == ft.Nesterov()
    ft.adjust_(s, 0.123)
    assert s["vec"].rule == ft.Nesterov(0.123, 0.9)
    np.testing.assert_allclose(s["vec"].state, [-0.016, -0.088], rtol=1e-6)
    ft.adjust_(s, rho=0.5, nonsense=3)
    assert s["vec"].rule == ft.Nesterov(0.123, 0.5)
    c = ft.adjust(ft.OptimiserChain(ft.WeightDecay(), ft.Adam()), 0.5, **{"lambda": 0.1})
    assert c.opts[0].lambda_ == 0.1 and c.opts[1].eta == 0.5
    assert ft.adjust(ft.MixedPrecision(ft.Adam()), 0.3).rule.eta == 0.3


def test_adjust_shares_one_new_rule_and_is_all_or_nothing():
    x = {"a": np.zeros(1), "b": np.zeros(2), "c": np.zeros(3)}
    s = ft.setup(ft.Adam(), x)
    s["a"] = ft.setup(ft.RMSProp(), x["a"])
    ft.adjust_(s, 0.5)
    assert s["b"].rule is s["c"].rule and s["b"].rule == ft.Adam(0.5)  # one rule, as setup made
    assert s["a"].rule == ft.RMSProp(0.5)
    s2 = ft.adjust(s, 0.25)
    assert s2["b"].rule is s2["c"].rule and s["b"].rule.eta == 0.5
    before = {k: l.rule for k, l in s.items()}
    with pytest.raises(ft.ArgumentError):  # RMSProp cannot change `centred`: nothing changes
        ft.adjust(s, 0.1, centred=True)
    with pytest.raises(ft.ArgumentError):
        ft.adjust_(s, 0.1, centred=True)
    assert all(s[k].rule is r for k, r in before.items())


def test_float32_follows_julia_float32_arithmetic_exactly():
    """Hyper-parameters and scalar sub-expressions are rounded to Float32 as Julia's
    `T(o.eta)`, `1 - β[1]` (in T) do; compare with an explicit float32 re-computation."""
    f = np.float32
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal(50).astype(f)
    gs = [rng.standard_normal(50).astype(f) for _ in range(5)]
    # Adam
    x = x0.copy()
    s = ft.setup(ft.Adam(), x)
    m = np.zeros(50, f); v = np.zeros(50, f); bt1, bt2 = f(0.9), f(0.999)
    b1, b2, eta, eps = f(0.9), f(0.999), f(0.001), f(1e-8)
    xr = x0.copy()
    for g in gs:
        ft.update_(s, x, g)
        m = b1 * m + (f(1) - b1) * g
        v = b2 * v + (f(1) - b2) * (g * g)
        xr = xr - m / (f(1) - bt1) / (np.sqrt(v / (f(1) - bt2)) + eps) * eta
        bt1, bt2 = bt1 * b1, bt2 * b2
        np.testing.assert_array_equal(x, xr)
    # Nesterov: -ρ^2 and (1+ρ)η are Float32 products
    x = x0.copy()
    s = ft.setup(ft.Nesterov(0.01, 0.9), x)
    vel = np.zeros(50, f); rho, eta = f(0.9), f(0.01)
    xr = x0.copy()
    for g in gs:
        ft.update_(s, x, g)
        d = -(rho * rho) * vel + ((f(1) + rho) * eta) * g
        vel = rho * vel - eta * g
        xr = xr - d
        np.testing.assert_array_equal(x, xr)


@pytest.mark.parametrize("mod", ["interface", "composite", "rules_basic", "rules_adaptive"])
def test_docstring_examples(mod):
    import doctest
    import importlib
    res = doctest.testmod(importlib.import_module(f"fluxtrain.optimise.{mod}"))
    assert res.failed == 0 and res.attempted > 0


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_array_hyper_parameters_equal_python_floats(dtype):
    """0-d array hyper-parameters (what a schedule gives under jax.jit) are cast to the
    parameter dtype and give the same numbers as Python floats."""
    x0 = np.linspace(-1, 1, 5).astype(dtype)
    g = np.linspace(0.3, -0.2, 5).astype(dtype)
    for make in (lambda e: ft.Adam(e), lambda e: ft.Nesterov(e), lambda e: ft.RAdam(e),
                 lambda e: ft.AdamW(e, (0.9, 0.999), 0.1), lambda e: ft.Descent(e)):
        a, b = x0.copy(), x0.copy()
        sa, sb = ft.setup(make(0.01), a), ft.setup(make(np.asarray(0.01)), b)
        for _ in range(3):
            ft.update_(sa, a, g)
            ft.update_(sb, b, g)
        assert b.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(a, b)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # RAdam's float16 constants
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("rule", ALL_RULES, ids=rid)
def test_every_float_hyper_parameter_as_an_array_equals_python_floats(rule, dtype):
    """Every float hyper-parameter of every rule (beta, epsilon, rho, lambda_, bounds, not
    only eta) may be a 0-d array, as the JAX fast path passes them to its compiled step and
    a Scheduler under jax.jit makes them: the numbers are those of Python floats, bit for
    bit, because every scalar operation on the host is one rounded operation on values
    already in the parameter dtype."""
    x0 = np.linspace(-1, 1, 5).astype(dtype)
    g = np.linspace(0.3, -0.2, 5).astype(dtype)
    a, b = x0.copy(), x0.copy()
    sa, sb = ft.setup(rule, a), ft.setup(map_hyper(rule, np.asarray), b)
    for _ in range(3):
        ft.update_(sa, a, g)
        ft.update_(sb, b, g)
    assert b.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(a, b)
