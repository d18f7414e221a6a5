"""Parity: Flux reference vectors, torch.optim trajectories (float64, rtol 1e-10), optax."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

import fluxtrain as ft

RNG = np.random.default_rng(42)
X0 = RNG.standard_normal((4, 5))
GRADS = [RNG.standard_normal((4, 5)) for _ in range(100)]

VECTORS = pathlib.Path(__file__).resolve().parents[3] / "shared" / "reference" / "flux-vectors.json"


def _vectors():
    if not VECTORS.exists():
        return []
    return [e for e in json.loads(VECTORS.read_text()) if e["fn"].startswith("Optimisers.")]


def _ours(rule, grads=GRADS, x0=X0):
    x = x0.copy()
    s = ft.setup(rule, x)
    out = []
    for g in grads:
        ft.update_(s, x, g)
        out.append(x.copy())
    return np.array(out)


# ---------------------------------------------------------------- Flux reference vectors

def _check_vector(e):
    setup, exp = e["setup"], e["expected"]
    rule = setup["rule"]
    if e["fn"] == "Optimisers.adjust!":
        m = {"vec": np.zeros(2, np.float32)}
        s = ft.setup(ft.Nesterov(), m)
        ft.update_(s, m, {"vec": np.array([16, 88])})
        np.testing.assert_allclose(s["vec"].state, exp["velocity_after_update"], rtol=1e-6)
        assert s["vec"].state.dtype == np.float32
        ft.adjust_(s, 0.123)
        assert s["vec"].rule == ft.Nesterov(0.123, 0.9)
        np.testing.assert_allclose(s["vec"].state, exp["velocity_after_adjust"], rtol=1e-6)
        return
    if rule.startswith("OptimiserChain(AccumGrad(2)"):
        m = {"x": np.array([1.0], np.float32), "y": np.array([2.0], np.float32)}
        s = ft.setup(ft.OptimiserChain(ft.AccumGrad(2), ft.WeightDecay(0.01), ft.Descent(0.1)), m)
        ft.update_(s, m, {"x": np.array([33]), "y": np.array([0])})
        for k in "xy":
            np.testing.assert_allclose(m[k], exp["after_first"][k], rtol=1e-6)
        ft.update_(s, m, {"x": np.array([0]), "y": np.array([444])})
        for k in "xy":
            assert m[k].dtype == np.float32
            np.testing.assert_allclose(m[k], exp["after_second"][k], rtol=1e-6)
        return
    if "freeze" in setup:
        from collections import namedtuple
        NT = namedtuple("NT", "x y")
        m = NT(x=(np.array([1.0]), 2.0), y=np.array([3.0]))
        s = ft.setup(ft.Momentum(), m)
        ft.freeze_(s.x)
        ft.update_(s, m, NT(x=(np.array([np.pi]), 10 * np.pi), y=np.array([100 * np.pi])))
        np.testing.assert_array_equal(m.x[0], exp["model_after"]["x"][0])
        assert m.x[1] == exp["model_after"]["x"][1]
        np.testing.assert_array_equal(m.y, exp["model_after"]["y"])
        return
    rules = {"Adam()": ft.Adam(), "Momentum()": ft.Momentum(), "Descent()": ft.Descent()}
    r = rules[rule.split()[0]]
    x = np.array(json.loads(setup["model"].split("]")[0] + "]"), dtype=np.float64)
    s = ft.setup(r, x)
    for i, g in enumerate(setup["grads"], 1):
        ft.update_(s, x, np.array(g, np.float64))
        np.testing.assert_allclose(x, exp[f"after_step_{i}"], rtol=e.get("rtol", 1e-12))


@pytest.mark.parametrize("entry", _vectors(), ids=lambda e: e["setup"]["rule"][:30])
def test_flux_vectors(entry):
    _check_vector(entry)


def test_flux_vector_count():
    if not VECTORS.exists():
        pytest.skip("no reference vectors")
    assert len(_vectors()) >= 6


# ---------------------------------------------------------------- torch.optim

def _torch(make, steps=100, x0=X0, grads=GRADS):
    import torch
    p = torch.nn.Parameter(torch.tensor(x0.copy(), dtype=torch.float64))
    opt = make([p])
    out = []
    for g in grads[:steps]:
        p.grad = torch.tensor(g)
        opt.step()
        out.append(p.detach().numpy().copy())
    return np.array(out)


def _torch_cases():
    import torch.optim as O
    return [
        ("Adam", ft.Adam(0.01, (0.8, 0.99), 1e-8), lambda p: O.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-8)),
        ("AdamW", ft.AdamW(0.01, (0.9, 0.999), 0.1), lambda p: O.AdamW(p, lr=0.01, weight_decay=0.1)),
        ("Momentum", ft.Momentum(0.01, 0.9), lambda p: O.SGD(p, lr=0.01, momentum=0.9)),
        ("Nesterov", ft.Nesterov(0.01, 0.9), lambda p: O.SGD(p, lr=0.01, momentum=0.9, nesterov=True)),
        ("RMSProp", ft.RMSProp(0.01, 0.9), lambda p: O.RMSprop(p, lr=0.01, alpha=0.9, eps=1e-8)),
        ("RMSProp-centred", ft.RMSProp(0.01, 0.9, centred=True),
         lambda p: O.RMSprop(p, lr=0.01, alpha=0.9, eps=1e-8, centered=True)),
        ("AdaGrad", ft.AdaGrad(0.1, 1e-8),
         lambda p: O.Adagrad(p, lr=0.1, initial_accumulator_value=1e-8, eps=1e-8)),
        ("AdaDelta", ft.AdaDelta(0.9, 1e-6), lambda p: O.Adadelta(p, lr=1.0, rho=0.9, eps=1e-6)),
        ("Descent", ft.Descent(), lambda p: O.SGD(p, lr=ft.Descent().eta)),
        # Flux's Rprop defaults are Float32 literals; use float64 values for the comparison
        ("Rprop", ft.Rprop(0.01, (0.5, 1.2), (1e-6, 50.0)),
         lambda p: O.Rprop(p, lr=0.01, etas=(0.5, 1.2), step_sizes=(1e-6, 50.0))),
    ]


@pytest.mark.parametrize("case", range(10))
def test_torch_trajectories(case):
    pytest.importorskip("torch")
    name, rule, make = _torch_cases()[case]
    np.testing.assert_allclose(_ours(rule), _torch(make), rtol=1e-10, atol=1e-14, err_msg=name)


def test_adamax_vs_torch_with_eps_placement_accounted():
    """torch: u = max(b2*u, |g| + eps), delta = lr/(1-b1^t) * m/u; Flux: u = max(b2*u, |g|),
    delta = eta/(1-b1^t) * m/(u + eps). With eps = 0 they are the same rule."""
    import torch.optim as O
    ours = _ours(ft.AdaMax(0.01, (0.9, 0.999), 0.0))
    theirs = _torch(lambda p: O.Adamax(p, lr=0.01, eps=0.0))
    np.testing.assert_allclose(ours, theirs, rtol=1e-10)
    # with the default eps the two differ, but only at the eps scale
    d = _ours(ft.AdaMax(0.01)) - _torch(lambda p: O.Adamax(p, lr=0.01, eps=1e-8))
    assert 0 < np.abs(d).max() < 1e-8


# ---------------------------------------------------------------- optax

def _optax(tx, steps=100):
    import jax
    import jax.numpy as jnp
    import optax

    @jax.jit
    def step(g, st, p):
        u, st = tx.update(g, st, p)
        return st, optax.apply_updates(p, u)

    p = jnp.asarray(X0)
    st = tx.init(p)
    out = []
    for g in GRADS[:steps]:
        st, p = step(jnp.asarray(g), st, p)
        out.append(np.asarray(p))
    return np.array(out)


def _optax_cases():
    import optax
    b1, b2 = 0.9, 0.999
    return [
        ("adam", ft.Adam(0.01), optax.adam(0.01, eps=1e-8), 1e-10),
        ("adabelief", ft.AdaBelief(0.01), optax.adabelief(0.01, eps=1e-16, eps_root=1e-16), 1e-10),
        ("rmsprop", ft.RMSProp(0.01, 0.9), optax.rmsprop(0.01, decay=0.9, eps=1e-8, eps_in_sqrt=False), 1e-10),
        ("rmsprop-centred", ft.RMSProp(0.01, 0.9, centred=True),
         optax.rmsprop(0.01, decay=0.9, eps=1e-8, eps_in_sqrt=False, centered=True), 1e-10),
        ("sgd-momentum", ft.Momentum(0.01, 0.9), optax.sgd(0.01, momentum=0.9), 1e-10),
        # optax puts eps inside the sqrt (g/sqrt(acc + eps)); with eps = 0 both are g/sqrt(acc)
        ("adagrad", ft.AdaGrad(0.1, 0.0), optax.adagrad(0.1, initial_accumulator_value=0.0, eps=0.0), 1e-10),
        # Optimisers' Lion weights: optax b2 = 1 - beta2, b1 = beta1*(1-beta2)/beta2 (see Lion's docstring)
        ("lion", ft.Lion(0.001, (b1, b2)), optax.lion(0.001, b1=b1 * (1 - b2) / b2, b2=1 - b2, weight_decay=0.0), 1e-10),
        ("radam", ft.RAdam(0.01), optax.radam(0.01, threshold=4.0), 1e-10),
        ("adamw", ft.AdamW(0.01, (0.9, 0.999), 0.1), optax.adamw(0.01, weight_decay=0.1), 1e-10),
    ]


@pytest.mark.parametrize("case", range(9))
def test_optax_trajectories(case):
    pytest.importorskip("optax")
    name, rule, tx, rtol = _optax_cases()[case]
    np.testing.assert_allclose(_ours(rule), _optax(tx), rtol=rtol, atol=1e-13, err_msg=name)
