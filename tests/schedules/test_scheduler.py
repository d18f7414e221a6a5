"""The Scheduler rule and the epoch loop with adjust_."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

import fluxtrain as ft
from fluxtrain import (Adam, ClipGrad, CosAnneal, Descent, Exp, Momentum, OptimiserChain, Scheduler,
                       adjust_, setup, update, update_)
from tests.util import HAVE_JAX, assert_close
from fluxtrain._backend import fast


def _numpy(b, x):
    return b.to_numpy(x).copy()


def test_descent_steps_match_a_hand_loop_with_changing_eta(eager_backend):
    b = eager_backend
    eta = Exp(0.1, 0.5)
    x = b.asarray([1.0, -2.0, 3.0])
    g = b.asarray([0.5, 1.0, -2.0])
    state = setup(Scheduler(Descent, eta=eta), x)
    expected = np.array([1.0, -2.0, 3.0])
    for t in range(1, 6):
        state, x = update_(state, x, g)
        expected = expected - eta(t) * np.array([0.5, 1.0, -2.0])
        np.testing.assert_array_equal(b.to_numpy(x), expected)
    assert int(state.state.t) == 6


@pytest.mark.parametrize("fast_paths", [True, False])
def test_adam_momenta_are_kept_across_steps(eager_backend, fast_paths):
    b = eager_backend
    eta = CosAnneal(l0=1e-3, l1=1e-1, period=4)
    grads = [[0.3, -1.0], [0.1, 0.4], [-0.7, 0.2], [0.5, 0.5], [1.0, -0.1], [0.0, 0.3]]
    x = b.asarray([1.0, 2.0], "float32")
    sched = setup(Scheduler(Adam, eta=eta), x)
    # reference: a plain Adam whose eta is adjusted before each step keeps its momenta
    y = b.asarray([1.0, 2.0], "float32")
    plain = setup(Adam(eta(1)), y)
    for t, g in enumerate(grads, start=1):
        adjust_(plain, eta(t))
        # a Scheduler's arrays go to the wrapped rule's kernel, as plain Adam's do: like
        # with like, both with the fast paths on, or both without
        with contextlib.nullcontext() if fast_paths else fast.disabled():
            plain, y = update_(plain, y, b.asarray(g, "float32"))
            sched, x = update_(sched, x, b.asarray(g, "float32"))
        np.testing.assert_array_equal(b.to_numpy(x), b.to_numpy(y))
        assert str(b.to_numpy(x).dtype) == "float32"
    m, v = sched.state.inner[0], sched.state.inner[1]
    np.testing.assert_array_equal(b.to_numpy(m), b.to_numpy(plain.state[0]))
    np.testing.assert_array_equal(b.to_numpy(v), b.to_numpy(plain.state[1]))
    assert np.all(b.to_numpy(m) != 0)
    # a fresh Adam at the last eta would give a different step: the momenta matter
    fresh = Adam(eta(len(grads))).apply(Adam(eta(1)).init(x), x, b.asarray(grads[-1], "float32"))[1]
    last = Scheduler(Adam, eta=eta).apply(sched.state, x, b.asarray(grads[-1], "float32"))[1]
    assert not np.allclose(b.to_numpy(fresh), b.to_numpy(last))


def test_positional_and_several_schedules_momentum():
    # ParameterSchedulers' "advanced usage" test: eta and rho both scheduled
    seta, srho = Exp(0.1, 0.5), Exp(0.9, 0.9)
    model = {"W": np.ones((4, 3), dtype=np.float32), "b": np.ones(4, dtype=np.float32)}
    grad = {"W": np.full((4, 3), 0.5, dtype=np.float32), "b": np.ones(4, dtype=np.float32)}
    for rule in (Scheduler(Momentum, eta=seta, rho=srho), Scheduler(Momentum, seta, srho)):
        state = setup(rule, model)
        m = {k: v.copy() for k, v in model.items()}
        v = {k: np.zeros_like(a) for k, a in model.items()}
        for t in range(1, 8):
            new_state, new_m = update(state, m, grad)
            for k in m:
                T = np.float32
                v[k] = T(srho(t)) * v[k] + T(seta(t)) * grad[k]
                np.testing.assert_array_equal(new_m[k], m[k] - v[k])
            state, m = new_state, new_m


def test_inside_optimiser_chain_and_per_leaf_counters():
    eta = Exp(0.2, 0.8)
    model = {"a": np.array([1.0, 2.0]), "b": np.array([[3.0]])}
    state = setup(OptimiserChain(ClipGrad(0.5), Scheduler(Descent, eta=eta)), model)
    ref = {k: v.copy() for k, v in model.items()}
    for t in range(1, 5):
        grad = {"a": np.array([1.0, -0.25]), "b": np.array([[2.0]])}
        state, model = update_(state, model, grad)
        for k in ref:
            ref[k] = ref[k] - eta(t) * np.clip(grad[k], -0.5, 0.5)
            np.testing.assert_array_equal(model[k], ref[k])
    # each parameter array keeps its own step counter
    assert int(state["a"].state[1].t) == 5 and int(state["b"].state[1].t) == 5
    # a gradient only for "a" advances only its counter
    state, model = update_(state, model, {"a": np.array([0.0, 0.0]), "b": None})
    assert int(state["a"].state[1].t) == 6 and int(state["b"].state[1].t) == 5


def test_constants_rule_at_repr_and_errors():
    s = Scheduler(Adam, eta=Exp(0.1, 0.5), beta=(0.8, 0.99))
    assert s.rule_at(3) == Adam(eta=0.025, beta=(0.8, 0.99))
    assert repr(s) == "Scheduler(Adam, eta=Exp(start=0.1, decay=0.5), beta=(0.8, 0.99))"
    with pytest.raises(TypeError, match="class"):
        Scheduler(Descent(0.1), eta=Exp(0.1, 0.5))
    with pytest.raises(TypeError, match="at least one schedule"):
        Scheduler(Descent)
    with pytest.raises(ft.DomainError):
        Scheduler(Descent, eta=-0.1)
    with pytest.raises(TypeError):
        Scheduler(Descent, etaa=Exp(0.1, 0.5))


@pytest.mark.skipif(not HAVE_JAX, reason="JAX is not installed")
def test_jitted_update_matches_eager():
    import jax
    import jax.numpy as jnp
    rule = OptimiserChain(ClipGrad(1.0), Scheduler(Adam, eta=CosAnneal(l0=0.01, l1=0.1, period=3)))
    model = {"w": jnp.array([1.0, 2.0]), "b": jnp.array([0.5], dtype=jnp.float32)}
    grad = {"w": jnp.array([0.3, -2.0]), "b": jnp.array([0.7], dtype=jnp.float32)}
    s1, m1 = setup(rule, model), model
    s2, m2 = setup(rule, model), model
    step = jax.jit(update)
    for _ in range(5):
        s1, m1 = step(s1, m1, grad)
        s2, m2 = update(s2, m2, grad)
    for k in model:
        assert_close(m1[k], np.asarray(m2[k]), rtol=1e-6 if k == "b" else 1e-12)
        assert m1[k].dtype == model[k].dtype
    assert int(s1["w"].state[1].t) == 6
    # the step counter is traced: later steps reuse the compiled update
    traced = []

    def eta(t):
        if isinstance(t, jax.core.Tracer):
            traced.append(t)
        return 0.1 * 0.5 ** (t - 1)
    rule = Scheduler(Descent, eta=eta)
    s, m = setup(rule, {"w": jnp.array([1.0, 2.0])}), {"w": jnp.array([1.0, 2.0])}
    for _ in range(4):
        s, m = step(s, m, {"w": jnp.array([1.0, 1.0])})
    assert len(traced) == 1
    assert_close(m["w"], np.array([1.0, 2.0]) - (0.1 + 0.05 + 0.025 + 0.0125), rtol=1e-14)


def test_epoch_loop_with_adjust(eager_backend):
    b = eager_backend
    schedule = Exp(0.1, 0.5)
    X = b.asarray(np.arange(12.0).reshape(6, 2))
    w = b.asarray([1.0, -1.0])
    state = setup(Descent(), w)
    loader = ft.DataLoader(X, batchsize=2)
    expected = np.array([1.0, -1.0])
    Xn = np.arange(12.0).reshape(6, 2)
    epochs = 4
    seen = []
    for eta, epoch in zip(schedule, range(1, epochs + 1)):
        adjust_(state, eta)
        seen.append(state.rule.eta)
        for xb in loader:
            grad = xb.sum(0) * 0.01          # any gradient; the step uses this epoch's eta
            state, w = update_(state, w, grad)
        for k in range(3):
            expected = expected - eta * Xn[2 * k:2 * k + 2].sum(0) * 0.01
    assert seen == [0.1, 0.05, 0.025, 0.0125]
    np.testing.assert_allclose(b.to_numpy(w), expected, rtol=1e-14)


def test_state_round_trip_resumes_the_step_counter(eager_backend, tmp_path):
    b = eager_backend
    rule = OptimiserChain(ClipGrad(1.0), Scheduler(Adam, eta=Exp(0.1, 0.5)))
    grads = [b.asarray(g) for g in ([1.0, -1.0], [0.5, 2.0], [0.25, -0.5], [-1.0, 0.1])]
    x = b.asarray([1.0, 2.0])
    state = setup(rule, x)
    for g in grads[:2]:
        state, x = update_(state, x, g)
    ft.optimise.save_state(tmp_path / "s.npz", state)
    resumed = ft.optimise.load_state(tmp_path / "s.npz", setup(rule, b.asarray([0.0, 0.0])))
    assert int(resumed.state[1].t) == 3
    y = b.asarray(b.to_numpy(x).copy())
    for g in grads[2:]:
        state, x = update_(state, x, g)
        resumed, y = update_(resumed, y, g)
    np.testing.assert_array_equal(b.to_numpy(x), b.to_numpy(y))


def test_a_scheduled_clipnorm_error_leaves_other_groups_unwritten():
    """Two groups, the first updated in place by a kernel, the second a Scheduler whose
    ClipNorm(throw=True) raises: the walker must see the ClipNorm inside the Scheduler and
    compute every group before writing any, so the first stays as it was."""
    from fluxtrain import Adam, ClipNorm, DomainError, OptimiserChain
    from fluxtrain.schedules import Exp
    a, b = np.ones(4, np.float32), np.ones(3, np.float32)
    model = {"a": a, "b": b}
    sched = Scheduler(lambda eta: OptimiserChain(ClipNorm(1.0), Descent(eta)), eta=Exp(0.1, 0.5))
    state = {"a": setup(Adam(0.1), {"a": a})["a"], "b": setup(sched, {"b": b})["b"]}
    with pytest.raises(DomainError):
        update_(state, model, {"a": np.ones(4, np.float32), "b": np.array([1.0, np.inf, 1.0], np.float32)})
    np.testing.assert_array_equal(model["a"], np.ones(4, np.float32))
    np.testing.assert_array_equal(model["b"], np.ones(3, np.float32))
