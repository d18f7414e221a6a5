"""``train`` / ``trainstep``: Flux's ``train!`` doctest on PyTorch and JAX, and its rules."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from fluxtrain import (ArgumentError, Descent, DomainError, Momentum, Adam, gradient, setup, train,
                       trainstep, update_, withgradient)
from tests.util import HAVE_JAX, HAVE_TORCH, REFERENCE, reference_entries


# Flux's train! doctest (flux-semantics.md §6.4), also the JSON entry `Flux.train!`
DOCTEST = {"bias_after": [10.19], "weight_after": [[3.038, -2.057]],
           "momentum_state_weight": [[-2.018, 3.027]], "momentum_state_bias": [-10.09],
           "losses_per_step": [40.1, 38.7]}

if HAVE_TORCH:
    import torch
if HAVE_JAX:
    import jax
    import jax.numpy as jnp


def _reference() -> dict:
    """The doctest's numbers; when the JSON reference is present they must agree with it."""
    if REFERENCE.exists():
        (e,) = reference_entries("Flux.train!")
        for k, v in DOCTEST.items():
            assert e["expected"][k] == v, k
    return {"expected": DOCTEST}


# --------------------------------------------------------------------------------------
# The train! doctest: Dense(2 => 1, leakyrelu; init=ones), Momentum(0.1), two items.
# Python layout: weight (1, 2) as in Flux (out x in), x a vector of 2.
# --------------------------------------------------------------------------------------

def _dense_torch(dtype):
    lin = torch.nn.Linear(2, 1).to(dtype)
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.bias.zero_()
    x1, y1 = torch.tensor([0.2, -0.3], dtype=dtype), torch.tensor([0.4], dtype=dtype)

    def loss(m, x, y):
        return (torch.nn.functional.leaky_relu(m(x), 0.01) - y).abs().sum() * 100
    return lin, x1, y1, loss, lambda m: (m.weight, m.bias), lambda s: (s["weight"].state, s["bias"].state)


def _dense_jax(dtype):
    model = {"weight": jnp.ones((1, 2), dtype=dtype), "bias": jnp.zeros(1, dtype=dtype), "act": "leakyrelu"}
    x1, y1 = jnp.asarray([0.2, -0.3], dtype=dtype), jnp.asarray([0.4], dtype=dtype)

    def loss(m, x, y):
        z = m["weight"] @ x + m["bias"]
        return jnp.abs(jnp.where(z > 0, z, 0.01 * z) - y).sum() * 100
    return model, x1, y1, loss, lambda m: (m["weight"], m["bias"]), lambda s: (s["weight"].state, s["bias"].state)


LIBS = [pytest.param("torch", marks=pytest.mark.skipif(not HAVE_TORCH, reason="no torch")),
        pytest.param("jax", marks=pytest.mark.skipif(not HAVE_JAX, reason="no jax"))]


def _make(lib, dtype_name):
    if lib == "torch":
        return _dense_torch(getattr(torch, dtype_name))
    return _dense_jax(getattr(jnp, dtype_name))


def _np(x):
    from fluxtrain._backend import to_numpy
    return to_numpy(x)


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("dtype,rtol", [("float32", 1e-6), ("float64", 1e-12)])
def test_train_doctest(lib, dtype, rtol):
    exp = _reference()["expected"]
    model, x1, y1, loss, params, mom = _make(lib, dtype)
    state = setup(Momentum(0.1), model)
    out = train(loss, model, [(x1, y1), (x1, y1)], state, progress=False)
    assert isinstance(out, tuple) and len(out) == 2
    state, model = out
    w, b = params(model)
    vw, vb = mom(state)
    assert str(_np(b).dtype) == dtype
    np.testing.assert_allclose(_np(b), exp["bias_after"], rtol=rtol)
    np.testing.assert_allclose(_np(w), exp["weight_after"], rtol=rtol)
    np.testing.assert_allclose(_np(vw), exp["momentum_state_weight"], rtol=rtol)
    np.testing.assert_allclose(_np(vb), exp["momentum_state_bias"], rtol=rtol)


@pytest.mark.parametrize("lib", LIBS)
def test_trainstep_losses_and_hand_written_loop_agree(lib):
    exp = _reference()["expected"]
    # trainstep: losses 40.1 then 38.7
    model, x1, y1, loss, params, mom = _make(lib, "float64")
    state = setup(Momentum(0.1), model)
    losses = [float(trainstep(loss, model, (x1, y1), state)) for _ in range(2)]
    np.testing.assert_allclose(losses, exp["losses_per_step"], rtol=1e-12)
    np.testing.assert_allclose(_np(params(model)[0]), exp["weight_after"], rtol=1e-12)
    # the hand-written loop: withgradient + update_, the documented first-class path
    model2, x1, y1, loss, params, mom = _make(lib, "float64")
    state2 = setup(Momentum(0.1), model2)
    hand = []
    for x, y in [(x1, y1), (x1, y1)]:
        val, (g,) = withgradient(lambda m: loss(m, x, y), model2)
        state2, model2 = update_(state2, model2, g)
        hand.append(float(val))
    assert hand == losses
    for a, b in zip(params(model), params(model2)):
        np.testing.assert_array_equal(_np(a), _np(b))
    for a, b in zip(mom(state), mom(state2)):
        np.testing.assert_array_equal(_np(a), _np(b))


@pytest.mark.parametrize("lib", LIBS)
def test_nonfinite_loss_stops_with_last_good_values(lib):
    model, x1, y1, loss, params, mom = _make(lib, "float64")
    state = setup(Momentum(0.1), model)
    bad_x = x1 * float("nan")
    with pytest.raises(DomainError, match=r"^Loss is nan on data item 2, stopping training$") as ei:
        train(loss, model, [(x1, y1), (bad_x, y1), (x1, y1)], state, progress=False)
    # exactly one good step happened: weight 1 + [0.02, -0.03]
    model = ei.value.model
    np.testing.assert_allclose(_np(params(model)[0]), [[1.02, 0.97]], rtol=1e-12)
    np.testing.assert_allclose(_np(mom(ei.value.state)[0]), [[-0.02, 0.03]], rtol=1e-12)
    assert not np.isnan(_np(params(model)[1])).any()
    # trainstep: no exception, update skipped
    before = [_np(p).copy() for p in params(model)]
    val = trainstep(loss, model, (bad_x, y1), ei.value.state)
    assert math.isnan(float(val))
    for a, p in zip(before, params(model)):
        np.testing.assert_array_equal(a, _np(p))


@pytest.mark.parametrize("lib", LIBS)
def test_inf_loss_message(lib):
    model, x1, y1, loss, params, mom = _make(lib, "float64")
    with pytest.raises(DomainError, match=r"Loss is inf on data item 1"):
        train(lambda m, x: loss(m, x, y1) * float("inf"), model, [x1], setup(Descent(), model), progress=False)


@pytest.mark.parametrize("lib", LIBS)
def test_aux_output_and_non_tuple_batches(lib):
    model, x1, y1, loss, params, mom = _make(lib, "float64")
    state = setup(Momentum(0.1), model)
    seen = []

    def loss_aux(m, batch):  # a dict batch is passed whole, aux output ignored
        seen.append(sorted(batch))
        return loss(m, batch["x"], batch["y"]), {"note": "aux"}

    state, model = train(loss_aux, model, [{"x": x1, "y": y1}] * 2, state, progress=False)
    assert seen == [["x", "y"], ["x", "y"]]
    np.testing.assert_allclose(_np(params(model)[1]), [10.19], rtol=1e-12)
    val = trainstep(loss_aux, model, {"x": x1, "y": y1}, state)
    assert val[1] == {"note": "aux"}


@pytest.mark.parametrize("lib", LIBS)
def test_bare_rule_makes_temporary_state(lib):
    model, x1, y1, loss, params, mom = _make(lib, "float64")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Descent keeps no state: no warning
        train(loss, model, [(x1, y1)], Descent(0.1), progress=False)
    model, x1, y1, loss, params, mom = _make(lib, "float64")
    with pytest.warns(UserWarning, match="Momentum has state which will be discarded"):
        _, model = train(loss, model, [(x1, y1), (x1, y1)], Momentum(0.1), progress=False)
    np.testing.assert_allclose(_np(params(model)[1]), [10.19], rtol=1e-12)


def test_errors():
    model = {"w": np.ones(2)}
    with pytest.raises(ArgumentError, match="does not support callback"):
        train(lambda m, x: 0.0, model, [], setup(Descent(), model), cb=print)
    with pytest.raises(ArgumentError, match="setup"):
        trainstep(lambda m, x: 0.0, model, 1.0, Descent())
    with pytest.raises(ArgumentError, match="rule instance"):
        train(lambda m, x: 0.0, model, [], Descent)


@pytest.mark.skipif(not HAVE_JAX, reason="no jax")
def test_immutable_jax_model():
    model = (jnp.asarray([1.0, 2.0]),)  # a tuple: cannot change in place
    state = setup(Descent(0.5), model)
    with pytest.raises(ArgumentError, match="cannot be updated in place"):
        trainstep(lambda m, x: (m[0] * x).sum(), model, (jnp.ones(2),), state)
    np.testing.assert_array_equal(np.asarray(state[0].state if state[0].state is not None else 0), 0)
    state, new = train(lambda m, x: (m[0] * x).sum(), model, [(jnp.ones(2),)], state, progress=False)
    np.testing.assert_allclose(np.asarray(new[0]), [0.5, 1.5])
    assert new is not model  # a new tuple; the old arrays may have been donated to XLA


@pytest.mark.skipif(not HAVE_TORCH, reason="no torch")
def test_torch_module_trainmode_and_grad_untouched():
    m = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout(0.0), torch.nn.Linear(3, 1))
    m.eval()
    state = setup(Adam(0.01), m)
    x, y = torch.randn(4, 3), torch.randn(4, 1)
    before = [p.detach().clone() for p in m.parameters()]
    state, m2 = train(lambda m, x, y: ((m(x) - y) ** 2).mean(), m, [(x, y)] * 3, state, progress=False)
    assert m2 is m and m.training and m[1].training  # Flux 0.16.11: trainmode! persists
    assert all(p.grad is None for p in m.parameters())
    assert all(not torch.equal(a, p) for a, p in zip(before, m.parameters()))


@pytest.mark.skipif(not HAVE_TORCH, reason="no torch")
def test_progress_bar_without_tqdm(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name.startswith("tqdm"):
            raise ImportError("no tqdm")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    model, x1, y1, loss, params, mom = _make("torch", "float64")
    train(loss, model, [(x1, y1)], setup(Momentum(0.1), model), progress=True)
    np.testing.assert_allclose(_np(params(model)[1]), [0.1], rtol=1e-12)


@pytest.mark.skipif(not HAVE_TORCH, reason="no torch")
def test_progress_bar_runs(capsys):
    pytest.importorskip("tqdm")
    model, x1, y1, loss, params, mom = _make("torch", "float64")
    train(loss, model, [(x1, y1)] * 2, setup(Momentum(0.1), model), progress=True)
    np.testing.assert_allclose(_np(params(model)[1]), [10.19], rtol=1e-12)


def test_gradient_is_the_one_used():
    # guard: the loop's gradient is exactly gradient(): a quadratic bowl converges
    if not HAVE_TORCH:
        pytest.skip("no torch")
    w = {"w": torch.tensor([3.0, -2.0], dtype=torch.float64)}
    state = setup(Descent(0.25), w)
    target = torch.tensor([1.0, 1.0], dtype=torch.float64)
    for _ in range(60):
        state, w = train(lambda m, t: ((m["w"] - t) ** 2).sum(), w, [(target,)], state, progress=False)
    g = gradient(lambda m: ((m["w"] - target) ** 2).sum(), w)[0]["w"]
    assert float(g.abs().max()) < 1e-10


@pytest.mark.skipif(not HAVE_JAX, reason="no jax")
def test_equinox_model_trains_through_return_value():
    eqx = pytest.importorskip("equinox")
    lin = eqx.nn.Linear(2, 1, key=jax.random.key(0))
    x, y = jnp.asarray([[0.2, -0.3], [1.0, 0.5]]), jnp.asarray([[0.4], [0.1]])

    def loss(m, x, y):
        return jnp.mean((jax.vmap(m)(x) - y) ** 2)

    state = setup(Adam(0.05), lin)
    with pytest.raises(ArgumentError, match="cannot be updated in place"):
        trainstep(loss, lin, (x, y), state)
    first = float(loss(lin, x, y))
    model = lin
    for _ in range(30):
        state, model = train(loss, model, [(x, y)], state, progress=False)
    assert type(model) is type(lin)
    assert float(loss(model, x, y)) < first / 10


# --------------------------------------------------------------------------------------
# JAX: the compiled step (jit=True, the default) and its opt-out / eager fallback
# --------------------------------------------------------------------------------------

@pytest.mark.skipif(not HAVE_JAX, reason="needs jax")
def test_jax_jit_matches_eager_and_traces_once():
    _, x1, y1, loss, params, mom = _make("jax", "float64")
    calls = []

    def counted(m, x, y):
        calls.append(1)
        return loss(m, x, y), {"z": m["bias"] * 2}

    out = {}
    for jit in (True, False):
        calls.clear()
        model = _make("jax", "float64")[0]  # fresh arrays: update_ may reuse the old buffers
        state = setup(Momentum(0.1), model)
        state, model = train(counted, model, [(x1, y1)] * 5, state, progress=False, jit=jit)
        out[jit] = (params(model), mom(state), list(calls))
    np.testing.assert_allclose(_np(out[True][0][1]), _np(out[False][0][1]), rtol=1e-12)
    np.testing.assert_allclose(_np(out[True][1][0]), _np(out[False][1][0]), rtol=1e-12)
    assert len(out[False][2]) == 5   # opt-out: the loss runs (eagerly) at each step
    assert len(out[True][2]) == 2    # one eager step, then one trace, then compiled
    # a second call reuses the compiled step: no eager step, no new trace
    calls.clear()
    model = _make("jax", "float64")[0]
    train(counted, model, [(x1, y1)] * 3, setup(Momentum(0.1), model), progress=False)
    assert calls == []


@pytest.mark.skipif(not HAVE_JAX, reason="needs jax")
def test_jax_jit_nonfinite_and_untraceable_fallback():
    model, x1, y1, loss, params, mom = _make("jax", "float64")
    fresh = lambda: _make("jax", "float64")[0]  # noqa: E731 - update_ may reuse old buffers
    state = setup(Descent(0.1), model)

    def nan_third(m, x, y):
        return loss(m, x, y) * jnp.where(x[0] > 1, jnp.nan, 1.0)
    batches = [(x1, y1), (x1, y1), (x1 + 5, y1), (x1, y1)]
    with pytest.raises(DomainError, match="data item 3"):
        train(nan_third, model, batches, state, progress=False)

    def untraceable(m, x, y):  # float() of a traced value: cannot be compiled
        return loss(m, x, y) * (1.0 if float(x[0]) > 0 else 2.0)
    model = fresh()
    state = setup(Descent(0.1), model)
    with pytest.warns(UserWarning, match="could not be compiled with jax.jit"):
        _, m_jit = train(untraceable, model, [(x1, y1)] * 3, state, progress=False)
    model = fresh()
    state = setup(Descent(0.1), model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, m_eager = train(untraceable, model, [(x1, y1)] * 3, state, progress=False, jit=False)
    np.testing.assert_allclose(_np(params(m_jit)[0]), _np(params(m_eager)[0]), rtol=1e-12)

    def broken(m, x, y):  # a genuine error is re-raised, not hidden by the fallback
        return (m["weight"] @ jnp.ones(3)).sum()
    model = fresh()
    with pytest.raises(TypeError):
        train(broken, model, [(x1, y1)] * 2, setup(Descent(0.1), model), progress=False)
