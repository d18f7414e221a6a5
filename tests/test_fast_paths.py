"""Every optimiser fast path (``fluxtrain._backend.fast_*``) against the generic array-API
path (``fast.disabled()``): parameters and full state after multi-step trajectories, in
float32 and float64, in place (``update_``) and pure (``update``), plus the fallbacks.

Tolerances: the NumPy numba kernels, torch's numba route and torch's exact foreach
sequences are bit for bit; torch's fused Adam/AdamW (bias correction folded into lr/eps)
and JAX's jitted group step (XLA contracts a*b+c into FMAs) agree to a few ulps per step.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import fluxtrain as ft
from fluxtrain._backend import fast

HAVE_NUMBA = importlib.util.find_spec("numba") is not None

RULES = {
    "Adam": lambda: ft.Adam(0.01),
    "AdamW": lambda: ft.AdamW(0.01, (0.9, 0.999), 0.1),
    "AdamW-decoupled": lambda: ft.AdamW(0.01, (0.8, 0.99), 0.01, couple=False),
    "Momentum": lambda: ft.Momentum(0.05, 0.8),
    "Lion": lambda: ft.Lion(0.01, (0.9, 0.99)),
    "Chain-Clip-WD-Adam": lambda: ft.OptimiserChain(ft.ClipNorm(1.0), ft.WeightDecay(0.01), ft.Adam(0.01)),
    "Chain-WD-Lion": lambda: ft.OptimiserChain(ft.WeightDecay(0.1), ft.Lion(0.01)),
    "Chain-Clip-Momentum": lambda: ft.OptimiserChain(ft.ClipNorm(0.5), ft.Momentum(0.05)),
}
SHAPES = {"w": (7, 5), "b": (5,), "big": (3000,), "s": ()}


def _exact(lib: str, name: str) -> bool:
    if lib == "numpy":
        return True
    if lib == "torch":
        return "Adam" not in name
    return False


def _check(a, b, lib, name, dtype):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    if _exact(lib, name):
        np.testing.assert_array_equal(a, b)
    else:
        rtol = 2e-5 if dtype == "float32" else 1e-12
        scale = float(np.max(np.abs(b))) if b.size else 0.0
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)


def _model(backend, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return {k: backend.asarray(rng.standard_normal(s), dtype) for k, s in SHAPES.items()}


def _grads(backend, dtype, steps, seed=1):
    rng = np.random.default_rng(seed)
    return [{k: backend.asarray(rng.standard_normal(s) * (3 if i % 3 == 0 else 0.3), dtype)
             for k, s in SHAPES.items()} for i in range(steps)]


def _flat(state):
    return ft.flatten_state(state)


def _trajectory(backend, rule, dtype, pure, steps=6, disabled=False):
    model = _model(backend, dtype)
    state = ft.setup(rule, model)
    for g in _grads(backend, dtype, steps):
        if disabled:
            with fast.disabled():
                state, model = (ft.update if pure else ft.update_)(state, model, g)
        else:
            state, model = (ft.update if pure else ft.update_)(state, model, g)
    return state, model


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(RULES))
@pytest.mark.parametrize("pure", [False, True], ids=["update_", "update"])
def test_fast_matches_generic(eager_backend, name, dtype, pure):
    """Parameters and every state array after 6 steps, fast vs generic."""
    rule = RULES[name]()
    s1, m1 = _trajectory(eager_backend, rule, dtype, pure)
    s2, m2 = _trajectory(eager_backend, rule, dtype, pure, disabled=True)
    lib = eager_backend.lib
    for k in SHAPES:
        _check(eager_backend.to_numpy(m1[k]), eager_backend.to_numpy(m2[k]), lib, name, dtype)
    f1, f2 = _flat(s1), _flat(s2)
    assert f1.keys() == f2.keys()
    for k in f1:
        _check(f1[k], f2[k], lib, name, dtype)


def _kernel_result(backend, rule, dtype):
    """Call the registered kernel directly (the walker would silently fall back)."""
    model = _model(backend, dtype)
    state = ft.setup(rule, model)
    g = _grads(backend, dtype, 1)[0]
    kernel = fast.lookup(("update_", type(rule)), backend.xp)
    assert kernel is not None, f"no fast path registered for {type(rule).__name__} on {backend.lib}"
    keys = list(SHAPES)
    return kernel([rule] * len(keys), [state[k].state for k in keys], [model[k] for k in keys],
                  [g[k] for k in keys], inplace=True)


@pytest.mark.parametrize("name", list(RULES))
def test_kernel_is_really_used(eager_backend, name):
    """The fast path must not fall back on its own supported cases (float32)."""
    if eager_backend.lib == "numpy" and not HAVE_NUMBA:
        pytest.skip("the NumPy fast path needs numba")
    if eager_backend.lib == "torch" and not HAVE_NUMBA and name.startswith("Chain") and "Adam" not in name:
        pytest.skip("torch's Momentum/Lion chains need numba")
    res = _kernel_result(eager_backend, RULES[name](), "float32")
    assert res is not NotImplemented
    assert len(res) == len(SHAPES)


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed")
@pytest.mark.parametrize("name", ["Adam", "AdamW-decoupled", "Momentum", "Lion", "Chain-Clip-WD-Adam"])
@pytest.mark.parametrize("chunk", [1 << 16, 7], ids=["chunk64k", "chunk7"])
def test_numba_parallel_kernels(monkeypatch, name, chunk):
    """The multi-threaded kernels (used for large groups) equal the generic path too, also
    when arrays are cut into many pieces (chunk 7: pieces end mid-array, sizes not multiples)."""
    from fluxtrain._backend import fast_numpy
    from tests.util import Backend
    monkeypatch.setattr(fast_numpy, "PARALLEL_MIN", 1)
    monkeypatch.setattr(fast_numpy, "CHUNK", chunk)
    b = Backend("numpy")
    for dtype in ("float32", "float64"):
        s1, m1 = _trajectory(b, RULES[name](), dtype, pure=False)
        s2, m2 = _trajectory(b, RULES[name](), dtype, pure=False, disabled=True)
        for k in SHAPES:
            np.testing.assert_array_equal(m1[k], m2[k])
        f1, f2 = _flat(s1), _flat(s2)
        for k in f1:
            np.testing.assert_array_equal(f1[k], f2[k])


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed")
@pytest.mark.parametrize("name", ["Momentum", "Lion", "Chain-WD-Lion"])
def test_torch_parameters_take_the_numba_route(monkeypatch, name):
    """nn.Parameter weights with plain-tensor state use the numba kernels, not a fallback."""
    torch = pytest.importorskip("torch")
    from fluxtrain._backend import fast_torch

    def boom(*a, **k):
        raise AssertionError("fell back to the foreach path")
    monkeypatch.setattr(fast_torch, "_momentum_foreach", boom)
    monkeypatch.setattr(fast_torch, "_lion_foreach", boom)
    rng = np.random.default_rng(0)
    model = {k: torch.nn.Parameter(torch.tensor(rng.standard_normal(s), dtype=torch.float32))
             for k, s in SHAPES.items()}
    ref = {k: v.detach().clone() for k, v in model.items()}
    s1, s2 = ft.setup(RULES[name](), model), ft.setup(RULES[name](), ref)
    for g in _grads(__import__("tests.util", fromlist=["Backend"]).Backend("torch"), "float32", 3):
        ft.update_(s1, model, g)
        with fast.disabled():
            ft.update_(s2, ref, g)
    for k in SHAPES:
        np.testing.assert_array_equal(model[k].detach().numpy(), ref[k].numpy())


def test_numpy_without_numba_falls_back(monkeypatch):
    """With numba missing, the NumPy kernels return NotImplemented and the generic path runs."""
    from fluxtrain._backend import fast_numpy
    monkeypatch.setattr(fast_numpy, "_KERNELS", False)
    from tests.util import Backend
    b = Backend("numpy")
    assert _kernel_result(b, ft.Adam(), "float32") is NotImplemented
    s1, m1 = _trajectory(b, ft.Adam(), "float32", pure=False)
    s2, m2 = _trajectory(b, ft.Adam(), "float32", pure=False, disabled=True)
    for k in SHAPES:
        np.testing.assert_array_equal(m1[k], m2[k])


def test_torch_without_numba_uses_exact_foreach(monkeypatch):
    pytest.importorskip("torch")
    from fluxtrain._backend import fast_numpy
    monkeypatch.setattr(fast_numpy, "_KERNELS", False)
    from tests.util import Backend
    b = Backend("torch")
    for name in ("Momentum", "Lion"):
        assert _kernel_result(b, RULES[name](), "float32") is not NotImplemented
        for dtype in ("float32", "float64"):
            s1, m1 = _trajectory(b, RULES[name](), dtype, pure=False)
            s2, m2 = _trajectory(b, RULES[name](), dtype, pure=False, disabled=True)
            for k in SHAPES:
                np.testing.assert_array_equal(b.to_numpy(m1[k]), b.to_numpy(m2[k]))


def test_pure_update_does_not_mutate(eager_backend):
    for name in ("Adam", "Lion", "Chain-Clip-Momentum"):
        rule = RULES[name]()
        model = _model(eager_backend, "float32")
        state = ft.setup(rule, model)
        g = _grads(eager_backend, "float32", 1)[0]
        ft.update_(state, model, g)  # a non-trivial state first
        before_m = {k: eager_backend.to_numpy(v).copy() for k, v in model.items()}
        before_s = {k: v.copy() for k, v in _flat(state).items()}
        new_state, new_model = ft.update(state, model, g)
        for k in SHAPES:
            np.testing.assert_array_equal(eager_backend.to_numpy(model[k]), before_m[k])
            assert not np.array_equal(eager_backend.to_numpy(new_model[k]), before_m[k]) or k == "s"
        after = _flat(state)
        for k in before_s:
            np.testing.assert_array_equal(after[k], before_s[k])


def test_mixed_hyperparameters_and_lagging_state(eager_backend):
    """One group, several Adam variants and beta^t values (a Leaf frozen for some steps)."""
    dtype = "float32"

    def run(disabled):
        model = _model(eager_backend, dtype)
        state = ft.setup(ft.Adam(0.01), model)
        ft.adjust_(state["b"], 0.1)
        ft.adjust_(state["w"], beta=(0.8, 0.95))
        for i, g in enumerate(_grads(eager_backend, dtype, 6)):
            if i == 1:
                ft.freeze_(state["big"])
            if i == 3:
                ft.thaw_(state["big"])
            if disabled:
                with fast.disabled():
                    state, model = ft.update_(state, model, g)
            else:
                state, model = ft.update_(state, model, g)
        return state, model

    (s1, m1), (s2, m2) = run(False), run(True)
    for k in SHAPES:
        _check(eager_backend.to_numpy(m1[k]), eager_backend.to_numpy(m2[k]), eager_backend.lib, "Adam", dtype)


@pytest.mark.parametrize("rule", [ft.Adam(0.01), ft.OptimiserChain(ft.ClipNorm(1.0), ft.Adam(0.01))],
                         ids=["Adam", "Chain"])
def test_one_rule_with_lagging_state(eager_backend, rule, monkeypatch):
    """One rule object for every array (as setup makes it) but beta^t values that differ (a
    Leaf frozen for some steps): the bulk checks of the fused path, then its general
    grouping, against the generic path."""
    dtype = "float32"
    bulk = []
    if eager_backend.lib == "torch":
        from fluxtrain._backend import fast_torch
        real = fast_torch._all_like
        monkeypatch.setattr(fast_torch, "_all_like", lambda *a: bulk.append(1) or real(*a))

    def run(disabled):
        model = _model(eager_backend, dtype)
        state = ft.setup(rule, model)
        for i, g in enumerate(_grads(eager_backend, dtype, 5)):
            if i == 1:
                ft.freeze_(state["w"])
            if i == 3:
                ft.thaw_(state["w"])
            with fast.disabled() if disabled else contextlib.nullcontext():
                state, model = ft.update_(state, model, g)
        return state, model

    (s1, m1), (s2, m2) = run(False), run(True)
    for k in SHAPES:
        _check(eager_backend.to_numpy(m1[k]), eager_backend.to_numpy(m2[k]), eager_backend.lib, "Adam", dtype)
    bt = {k: (s1[k].state if isinstance(rule, ft.Adam) else s1[k].state[-1])[2] for k in SHAPES}
    lagging, others = bt.pop("w"), list(bt.values())
    assert all(float(b[0]) == float(others[0][0]) for b in others) and float(lagging[0]) != float(others[0][0])
    assert bulk or eager_backend.lib != "torch"  # torch: the fused path's bulk checks ran


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("lagging", [False, True], ids=["one-group", "lagging"])
def test_torch_fused_adam_knows_beta_t_without_reading_it(dtype, lagging, monkeypatch):
    """The fused Adam path reads the beta^t tensors on a Leaf's first step only (on a GPU each
    read waits for the device): the host values it keeps for the tensors it makes equal
    theirs bit for bit, a tensor changed in place is read again, and results stay the
    generic path's (the one-group branch, and the per-array one with a lagging Leaf)."""
    torch = pytest.importorskip("torch")
    from tests.util import Backend
    from fluxtrain._backend import fast_torch
    b = Backend("torch")
    reads = []
    real_item = torch.Tensor.item

    def run(disabled):
        model = _model(b, dtype)
        state = ft.setup(ft.Adam(0.01), model)
        for i, g in enumerate(_grads(b, dtype, 6)):
            if lagging and i == 1:
                ft.freeze_(state["w"])
            if lagging and i == 3:
                ft.thaw_(state["w"])
            if i == 4:  # written in place (as a checkpoint loaded into the state would be)
                for t in {id(state[k].state[2][1]): state[k].state[2][1] for k in SHAPES}.values():
                    t.mul_(0.5)  # once per tensor: the fused path's Leafs share theirs
                for t in {id(state[k].state[2][0]): state[k].state[2][0] for k in SHAPES}.values():
                    t.data = t * 0.5  # new memory, no version bump
            if i >= 1 and not disabled:
                reads.clear()
                monkeypatch.setattr(torch.Tensor, "item", lambda t: reads.append(t) or real_item(t))
            with fast.disabled() if disabled else contextlib.nullcontext():
                state, model = ft.update_(state, model, g)
            monkeypatch.setattr(torch.Tensor, "item", real_item)
            if not disabled and i >= 1:
                # steps after the first read nothing, except after the in-place write
                assert bool(reads) == (i == 4), (i, len(reads))
            if not disabled:
                for k in SHAPES:
                    for t in state[k].state[2]:
                        e = fast_torch._BT_HOST[id(t)]
                        assert e[0]() is t and e[3] == t.item()
        return model, state

    (m1, s1), (m2, s2) = run(False), run(True)
    for k in SHAPES:
        _check(b.to_numpy(m1[k]), b.to_numpy(m2[k]), "torch", "Adam", dtype)
        # the fused path's beta^t tensors (made from the kept host values on the CPU) hold
        # the generic path's bt * beta bit for bit
        for t1, t2 in zip(s1[k].state[2], s2[k].state[2]):
            assert t1.dtype == t2.dtype and t1.item() == t2.item()


def test_torch_fused_adam_under_inference_mode():
    """beta^t tensors made under torch.inference_mode keep no version counter: not
    remembered, read again next step; results as the generic path's."""
    torch = pytest.importorskip("torch")
    from tests.util import Backend
    b = Backend("torch")

    def run(disabled):
        model = _model(b, "float32")
        state = ft.setup(ft.Adam(0.01), model)
        for i, g in enumerate(_grads(b, "float32", 4)):
            with torch.inference_mode() if i % 2 else contextlib.nullcontext():
                with fast.disabled() if disabled else contextlib.nullcontext():
                    state, model = ft.update_(state, model, g)
        return model

    m1, m2 = run(False), run(True)
    for k in SHAPES:
        _check(b.to_numpy(m1[k]), b.to_numpy(m2[k]), "torch", "Adam", "float32")


@pytest.mark.parametrize("name", ["Chain-Clip-WD-Adam", "Chain-Clip-Momentum"])
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # NumPy's, as in the rule
@pytest.mark.parametrize("bad_value", [np.inf, 3e19], ids=["inf", "overflowing-norm"])
def test_clipnorm_error_leaves_everything_untouched(eager_backend, name, bad_value):
    """inf, or finite entries whose sqrt(sum(g*g)) overflows float32 (torch's own norm
    would not): the generic path's DomainError, nothing modified."""
    rule = RULES[name]()
    model = _model(eager_backend, "float32")
    state = ft.setup(rule, model)
    g = _grads(eager_backend, "float32", 1)[0]
    bad = dict(g)
    bad["b"] = eager_backend.asarray([1.0, bad_value, 0.0, 0.0, 0.0], "float32")
    _assert_error_changes_nothing(eager_backend, state, model, bad)


def _assert_error_changes_nothing(backend, state, model, bad):
    """``update_(state, model, bad)`` raises DomainError; returns the model's values before."""
    before = {k: backend.to_numpy(v).copy() for k, v in model.items()}
    before_s = {k: v.copy() for k, v in _flat(state).items()}
    with pytest.raises(ft.DomainError):
        ft.update_(state, model, bad)
    for k in model:
        np.testing.assert_array_equal(backend.to_numpy(model[k]), before[k])
    for k, v in _flat(state).items():
        np.testing.assert_array_equal(v, before_s[k])
    return before


def test_numpy_noncontiguous_and_readonly_fall_back():
    x = np.asfortranarray(np.arange(12.0).reshape(3, 4))   # not C-contiguous
    y = np.arange(5.0)
    model = {"x": x, "y": y}
    ref = {k: v.copy() for k, v in model.items()}
    g = {"x": np.ones((3, 4)), "y": np.ones(5)}
    s1 = ft.setup(ft.Adam(0.1), model)
    s2 = ft.setup(ft.Adam(0.1), ref)
    ft.update_(s1, model, g)
    with fast.disabled():
        ft.update_(s2, ref, g)
    assert model["x"] is x  # still written in place
    np.testing.assert_array_equal(x, ref["x"])
    np.testing.assert_array_equal(y, ref["y"])


@pytest.mark.parametrize("numba", [True, False], ids=["numba", "foreach"])
def test_torch_strided_views_and_gradients_are_handled(monkeypatch, numba):
    """The numba route works on raw memory and the foreach route refuses some layouts: a
    non-contiguous parameter, state or gradient, or a tensor with torch's lazy negation bit,
    must give the generic path's numbers on both."""
    torch = pytest.importorskip("torch")
    from fluxtrain._backend import fast_numpy
    if not numba:
        monkeypatch.setattr(fast_numpy, "_KERNELS", False)
    elif not HAVE_NUMBA:
        pytest.skip("numba is not installed")
    base = torch.arange(24.0).reshape(4, 6)
    model = {"t": base.t(), "c": torch.arange(5.0)}            # "t" is a strided view
    ref = {k: v.clone() for k, v in model.items()}
    grads = [{"t": torch.ones(4, 6).t() * (i + 1), "c": torch.linspace(-1, 1, 10)[::2]}  # strided grads
             for i in range(3)]
    neg_grads = [dict(g, c=torch._neg_view(-g["c"].contiguous())) for g in grads]
    for rule in (ft.Momentum(0.1), ft.Lion(0.1), ft.Adam(0.1), ft.AdamW(0.1, lambda_=0.1),
                 ft.OptimiserChain(ft.ClipNorm(1.0), ft.Adam(0.1))):
        # (torch's fused Adam agrees to rounding; the others bit for bit)
        tol = dict(rtol=1e-5, atol=1e-6) if "Adam" in repr(rule) and not numba else dict(rtol=0, atol=0)
        for gl in (grads, neg_grads):
            m1, m2 = {k: v.clone() for k, v in model.items()}, {k: v.clone() for k, v in ref.items()}
            m1["t"] = base.clone().t()  # strided again
            s1, s2 = ft.setup(rule, m1), ft.setup(rule, m2)
            if not isinstance(s1["c"].state, tuple):
                s1["c"].state = torch._neg_view(-s1["c"].state)  # same values, negation bit set
            for g in gl:
                ft.update_(s1, m1, g)
                with fast.disabled():
                    ft.update_(s2, m2, g)
            for k in model:
                torch.testing.assert_close(m1[k], m2[k], **tol)
                for a, b in zip(_tensors(s1[k].state), _tensors(s2[k].state)):
                    torch.testing.assert_close(a.resolve_neg(), b, **tol)


def _tensors(tree) -> list:
    """The arrays of a (nested tuple) optimiser state."""
    if isinstance(tree, tuple):
        return [t for sub in tree for t in _tensors(sub)]
    return [] if tree is None else [tree]


def test_float16_uses_generic(eager_backend):
    model = {"w": eager_backend.asarray(np.linspace(-1, 1, 10), "float16")}
    g = {"w": eager_backend.asarray(np.ones(10), "float16")}
    kernel = fast.lookup(("update_", ft.Adam), eager_backend.xp)
    if kernel is None:
        pytest.skip("no kernel")
    state = ft.setup(ft.Adam(), model)
    res = kernel([ft.Adam()], [state["w"].state], [model["w"]], [g["w"]], inplace=False)
    if eager_backend.lib != "jax":  # JAX's jitted generic step handles any dtype
        assert res is NotImplemented


def test_torch_module_grad_and_version_counter():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    ref = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    ref.load_state_dict(net.state_dict())
    x = torch.randn(16, 4)
    for rule, name in ((ft.Lion(0.01), "Lion"), (ft.Adam(0.01), "Adam")):
        s1, s2 = ft.setup(rule, net), ft.setup(rule, ref)
        for _ in range(3):
            for m in (net, ref):
                m.zero_grad()
                m(x).pow(2).mean().backward()
            v0 = net[0].weight._version
            ft.update_(s1, net)
            assert net[0].weight._version > v0  # autograd sees the in-place write
            with fast.disabled():
                ft.update_(s2, ref)
        for p, q in zip(net.parameters(), ref.parameters()):
            _check(p.detach().numpy(), q.detach().numpy(), "torch", name, "float32")


def test_jax_update__donates_but_update_does_not():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    model = {"w": jnp.ones((100,), jnp.float32), "b": jnp.zeros((3,), jnp.float32)}
    g = {"w": jnp.full((100,), 0.5, jnp.float32), "b": jnp.ones((3,), jnp.float32)}
    state = ft.setup(ft.Adam(), model)
    new_state, new_model = ft.update(state, model, g)
    assert float(model["w"][0]) == 1.0  # inputs of the pure update stay alive and unchanged
    old_w = model["w"]
    state, model = ft.update_(state, model, g)
    np.testing.assert_allclose(np.asarray(model["w"]), np.asarray(new_model["w"]), rtol=1e-6)
    assert old_w.is_deleted()  # donated: the in-place contract
    state, model = ft.update_(state, model, g)  # the rebound arrays keep working
    assert np.isfinite(np.asarray(model["w"])).all()


def test_jax_gradient_aliasing_parameter_is_not_donated():
    pytest.importorskip("jax")
    import jax.numpy as jnp
    w = jnp.ones((10,), jnp.float32)
    model = [w]
    state = ft.setup(ft.Momentum(0.1), model)
    state, model = ft.update_(state, model, [w])  # the gradient is the parameter itself
    assert not w.is_deleted()
    np.testing.assert_allclose(np.asarray(model[0]), 0.9, rtol=1e-6)


def _fast_loss_matches_generic(fast_call, loss, logits, y, dtype: str, agg: str):
    """``fast_call(ŷ)`` (a torch loss through its kernel) equals ``loss`` on the generic path,
    value and gradient; returns both values."""
    import torch
    tdt = getattr(torch, dtype)
    a = torch.tensor(logits, dtype=tdt, requires_grad=True)
    b = torch.tensor(logits, dtype=tdt, requires_grad=True)
    out = fast_call(a)
    assert out is not None
    with fast.disabled():
        ref = loss(b, y, agg=agg)
    assert out.dtype == ref.dtype == tdt and out.shape == ref.shape
    rtol = 1e-6 if dtype == "float32" else 1e-13
    np.testing.assert_allclose(out.item(), ref.item(), rtol=rtol)
    out.backward()
    ref.backward()
    np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=rtol,
                               atol=10 * rtol * float(b.grad.abs().max()))
    return out, ref


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("agg", ["mean", "sum"])
def test_torch_logitcrossentropy_kernel(dtype, agg):
    """The fused F.cross_entropy kernel equals the generic formula, value and gradient."""
    torch = pytest.importorskip("torch")
    kernel = fast.lookup("logitcrossentropy", __import__("fluxtrain._backend", fromlist=["namespace"])
                         .namespace(torch.zeros(1)))
    assert kernel is not None
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((17, 5)) * 3
    probs = rng.random((17, 5))
    probs /= probs.sum(1, keepdims=True)
    for target in (probs, np.eye(5)[rng.integers(0, 5, 17)]):
        y = torch.tensor(target, dtype=getattr(torch, dtype))
        out, _ = _fast_loss_matches_generic(lambda a: kernel(a, y, -1, agg), ft.logitcrossentropy,
                                            logits, y, dtype, agg)
        assert out.shape == ()
    # unsupported inputs fall back (None): bool rows without a True, 3-D, other axis, callable agg, NaN
    x = torch.zeros((3, 4))
    assert kernel(x, torch.zeros((3, 4), dtype=torch.bool), -1, "mean", True) is None
    assert kernel(torch.zeros((2, 3, 4)), torch.zeros((2, 3, 4)), -1, "mean") is None
    assert kernel(x, torch.zeros((3, 4)), 0, "mean") is None
    assert kernel(x, torch.zeros((3, 4)), -1, "none") is None
    inf = torch.tensor([[np.inf, 0.0]])
    assert kernel(inf, torch.tensor([[1.0, 0.0]]), -1, "mean") is None


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("agg", ["mean", "sum"])
def test_torch_logitcrossentropy_bool_targets(dtype, agg):
    """A bool one-hot target (onehotbatch's) takes F.cross_entropy's integer-label form:
    Flux's strong zero gives -log_softmax(ŷ)[label], also where another class's logit is
    -Inf; value and gradient equal the generic formula's. Rows with no True or several
    take the generic path."""
    torch = pytest.importorskip("torch")
    from fluxtrain._backend import namespace
    kernel = fast.lookup("logitcrossentropy", namespace(torch.zeros(1)))
    rng = np.random.default_rng(2)
    tdt = getattr(torch, dtype)
    labels = rng.integers(0, 6, 19)
    onehot = np.eye(6, dtype=bool)[labels]
    logits = rng.standard_normal((19, 6)) * 3
    logits[3, (labels[3] + 1) % 6] = -np.inf  # strong zero: finite in Flux, and here
    multi = onehot.copy()
    multi[4, (labels[4] + 2) % 6] = True
    empty = onehot.copy()
    empty[5] = False
    cases = [(logits, onehot, True), (logits[:, :1], np.ones((19, 1), bool), True),
             (logits.T.copy().T, np.asfortranarray(onehot), True),  # strided target
             (logits, multi, False), (logits, empty, False)]
    for lg, target, labelled in cases:
        y = torch.from_numpy(np.array(target, order="K"))
        assert (kernel(torch.tensor(lg, dtype=tdt), y, -1, agg, True) is not None) == labelled
        _, ref = _fast_loss_matches_generic(lambda a: ft.logitcrossentropy(a, y, agg=agg),
                                            ft.logitcrossentropy, lg, y, dtype, agg)
        assert np.isfinite(ref.item())


@pytest.mark.parametrize("via_numpy", [True, False])
def test_torch_bool_target_labels(via_numpy):
    """Both ways of reading labels from a bool target (NumPy on the CPU, torch elsewhere,
    e.g. CUDA) agree, and refuse rows with no True or several (torch's way: an unread
    ``ok`` flag, and labels that are still valid class indices)."""
    torch = pytest.importorskip("torch")
    from fluxtrain._backend import fast_torch

    def _labels(y, via_numpy):
        res = fast_torch._labels(y, via_numpy)
        if res is None:
            return None
        idx, ok = res
        assert (ok is None) == via_numpy
        assert idx.dtype == torch.int64 and idx.shape == (y.shape[0],)
        assert ((idx >= 0) & (idx < y.shape[1])).all()
        return idx if ok is None or ok.item() else None
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 7, 11)
    onehot = np.eye(7, dtype=bool)[labels]
    assert _labels(torch.from_numpy(onehot), via_numpy).tolist() == labels.tolist()
    assert _labels(torch.from_numpy(onehot).T.contiguous().T, via_numpy).tolist() == labels.tolist()
    assert _labels(torch.ones((5, 1), dtype=torch.bool), via_numpy).tolist() == [0] * 5
    for r, extra in ((0, True), (4, False)):
        bad = onehot.copy()
        bad[r, (labels[r] + 1) % 7] = extra
        if not extra:
            bad[r] = False
        assert _labels(torch.from_numpy(bad), via_numpy) is None
    swapped = onehot.copy()
    swapped[2], swapped[3] = False, np.eye(7, dtype=bool)[labels[2]] | np.eye(7, dtype=bool)[labels[3]]
    assert _labels(torch.from_numpy(swapped), via_numpy) is None  # n Trues, but not one per row


@pytest.mark.parametrize("agg", ["mean", "sum"])
def test_torch_logitcrossentropy_bool_targets_device_labels(monkeypatch, agg):
    """The kernel with labels read the device's way (as on a GPU; forced here on the CPU):
    the label check is read together with the NaN check, and a target with a row of no True
    or several still gives None (generic path), a one-hot one the generic values."""
    torch = pytest.importorskip("torch")
    from fluxtrain._backend import fast_torch, namespace
    orig = fast_torch._labels
    calls = []
    monkeypatch.setattr(fast_torch, "_labels", lambda y: calls.append(1) or orig(y, via_numpy=False))
    kernel = fast.lookup("logitcrossentropy", namespace(torch.zeros(1)))
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 5, 13)
    onehot = np.eye(5, dtype=bool)[labels]
    logits = rng.standard_normal((13, 5)) * 2
    logits[2, (labels[2] + 1) % 5] = -np.inf  # strong zero
    multi, empty = onehot.copy(), onehot.copy()
    multi[7, (labels[7] + 3) % 5] = True
    empty[9] = False
    for target, labelled in ((onehot, True), (multi, False), (empty, False)):
        y = torch.from_numpy(target)
        out = kernel(torch.tensor(logits, dtype=torch.float32), y, -1, agg, True)
        assert (out is not None) == labelled
        _fast_loss_matches_generic(lambda a: ft.logitcrossentropy(a, y, agg=agg),
                                   ft.logitcrossentropy, logits, y, "float32", agg)
    nan = torch.tensor(logits, dtype=torch.float32)
    nan[0, 0] = float("nan")
    assert kernel(nan, torch.from_numpy(onehot), -1, agg, True) is None
    assert calls


def test_jax_learning_rate_changes_do_not_recompile(monkeypatch):
    """adjust_(state, eta) every step (a schedule) reuses the compiled group step."""
    pytest.importorskip("jax")
    import jax.numpy as jnp
    from fluxtrain._backend import fast_jax
    traces = []
    orig = fast_jax._fill
    monkeypatch.setattr(fast_jax, "_fill", lambda sk, it: traces.append(type(sk).__name__) or orig(sk, it))
    rule = ft.OptimiserChain(ft.ClipNorm(1.0), ft.Adam(0.1))
    model = {"w": jnp.ones((6,), jnp.float32)}
    ref = {"w": jnp.ones((6,), jnp.float32)}
    s1, s2 = ft.setup(rule, model), ft.setup(rule, ref)
    g = {"w": jnp.linspace(-1, 1, 6, dtype=jnp.float32)}
    for i in range(5):
        eta = 0.1 / (i + 1)
        ft.adjust_(s1, eta)
        ft.adjust_(s2, eta)
        s1, model = ft.update_(s1, model, g)
        with fast.disabled():
            s2, ref = ft.update_(s2, ref, g)
    assert traces.count("OptimiserChain") == 1  # traced once, never again
    np.testing.assert_allclose(np.asarray(model["w"]), np.asarray(ref["w"]), rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("agg", ["mean", "sum"])
def test_torch_logitbinarycrossentropy_kernel(dtype, agg):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((13, 4)) * 4
    for target in (rng.random((13, 4)), (rng.random((13, 4)) < 0.5).astype(float)):
        y = torch.tensor(target, dtype=getattr(torch, dtype))
        _fast_loss_matches_generic(lambda a: ft.logitbinarycrossentropy(a, y, agg=agg),  # the loss's hook
                                   ft.logitbinarycrossentropy, logits, y, dtype, agg)


def test_torch_loss_hooks_are_used(monkeypatch):
    torch = pytest.importorskip("torch")
    from fluxtrain._backend import fast_torch
    calls = []
    for name in ("logitcrossentropy", "logitbinarycrossentropy"):
        orig = fast._REGISTRY[(name, "torch")]
        hook = (lambda *a, _o=orig, _n=name, **k: calls.append(_n) or _o(*a, **k))
        monkeypatch.setitem(fast._REGISTRY, (name, "torch"), hook)
        monkeypatch.setitem(fast._DIRECT, (name, torch.Tensor), hook)
    x, y = torch.zeros((2, 3)), torch.full((2, 3), 1 / 3)
    assert abs(float(ft.logitcrossentropy(x, y)) - np.log(3)) < 1e-6
    assert abs(float(ft.logitbinarycrossentropy(x, y)) - np.log(2)) < 1e-6
    assert calls == ["logitcrossentropy", "logitbinarycrossentropy"]
    assert fast_torch is not None


def test_torch_losses_take_raw_arguments_directly(monkeypatch):
    """With torch logits, the loss first offers its raw arguments to the kernel, which
    checks them itself (its argument preparation costs more than the kernel's checks at
    small sizes); anything the kernel does not take (a target to convert, another axis,
    agg or dtype, a NaN result) goes the usual way, with its results and errors."""
    torch = pytest.importorskip("torch")
    from fluxtrain.losses import classification
    ft.logitcrossentropy(torch.zeros((1, 2)), torch.ones((1, 2)))  # (the torch kernels loaded)
    prepared = []
    orig = classification.prepare
    monkeypatch.setattr(classification, "prepare", lambda *a, **k: prepared.append(1) or orig(*a, **k))
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((6, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 6)
    onehot = np.eye(3, dtype=np.float32)[labels]
    x = torch.from_numpy(logits)
    bits = torch.from_numpy((rng.random((6, 3)) < 0.5).astype(np.float32))

    def generic(loss, *args, **kw):
        with fast.disabled():
            return loss(*args, **kw)
    taken = [(ft.logitcrossentropy, (x, torch.from_numpy(onehot)), {}),
             (ft.logitcrossentropy, (x, torch.from_numpy(onehot).bool()), {"agg": "sum"}),
             (ft.logitcrossentropy, (x, torch.from_numpy(onehot)), {"axis": 1}),
             (ft.logitbinarycrossentropy, (x, bits), {"agg": "sum"})]
    for loss, args, kw in taken:
        prepared.clear()
        out = loss(*args, **kw)
        assert prepared == []
        np.testing.assert_allclose(out.item(), generic(loss, *args, **kw).item(), rtol=1e-6)
    usual = [(ft.logitcrossentropy, (x, onehot.tolist()), {}),  # a list target, converted
             (ft.logitcrossentropy, (x, torch.from_numpy(onehot).long()), {}),  # an integer one
             (ft.logitcrossentropy, (x, torch.from_numpy(onehot).double()), {}),  # another dtype
             (ft.logitcrossentropy, (x, torch.from_numpy(onehot)), {"agg": "none"}),
             (ft.logitcrossentropy, (x, torch.from_numpy(onehot)), {"axis": 0}),
             (ft.logitcrossentropy, (x, torch.from_numpy(onehot)), {"agg": lambda v: v.max()}),
             (ft.logitbinarycrossentropy, (x, bits.tolist()), {}),
             (ft.logitbinarycrossentropy, (x, 1.0), {})]
    for loss, args, kw in usual:
        prepared.clear()
        out = loss(*args, **kw)
        assert prepared == [1]
        np.testing.assert_allclose(out.detach().numpy(), generic(loss, *args, **kw).detach().numpy(), rtol=1e-6)
    inf = x.clone()
    inf[0, 0] = float("inf")  # NaN from torch's kernel: the generic formula (NNlib's) decides
    for loss, y in ((ft.logitcrossentropy, torch.from_numpy(onehot)), (ft.logitbinarycrossentropy, bits)):
        np.testing.assert_equal(loss(inf, y).item(), generic(loss, inf, y).item())
    with pytest.raises(ValueError, match="agg must be"):
        ft.logitcrossentropy(x, torch.from_numpy(onehot), agg="avg")
    with pytest.raises(TypeError, match="axis must be"):
        ft.logitcrossentropy(x, torch.from_numpy(onehot), axis=True)
    with pytest.raises(ft.DimensionMismatch):
        ft.logitbinarycrossentropy(x, bits[:, :2])


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed")
def test_numba_groups_from_several_threads_at_once(monkeypatch):
    """The kernels' thread pool is shared: concurrent update_ calls (each big enough to be
    shared out among threads, and cut into many pieces) give the sequential results."""
    import threading
    from fluxtrain._backend import fast_numpy
    monkeypatch.setattr(fast_numpy, "PARALLEL_MIN", 1)
    monkeypatch.setattr(fast_numpy, "CHUNK", 1000)
    rng = np.random.default_rng(0)
    def make():
        return [rng.standard_normal(n, dtype=np.float32) for n in (5000, 1, 12345, 0, 999)]
    models = [make() for _ in range(4)]
    grads = [[rng.standard_normal(x.shape, dtype=np.float32) for x in m] for m in models]
    refs = [[x.copy() for x in m] for m in models]
    states = [ft.setup(ft.Adam(0.01), m) for m in models]
    ref_states = [ft.setup(ft.Adam(0.01), m) for m in refs]

    def work(i):
        for _ in range(5):
            ft.update_(states[i], models[i], grads[i])
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with fast.disabled():
        for i in range(4):
            for _ in range(5):
                ft.update_(ref_states[i], refs[i], grads[i])
    for m, r in zip(models, refs):
        for a, b in zip(m, r):
            np.testing.assert_array_equal(a, b)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_error_in_a_later_group_leaves_earlier_groups_untouched(eager_backend):
    """float32 and float64 arrays are two groups (two kernel calls): a ClipNorm error in the
    second must not leave the first written in place."""
    model = {"a": eager_backend.asarray(np.ones(4), "float32"), "b": eager_backend.asarray(np.ones(3), "float64")}
    rule = ft.OptimiserChain(ft.ClipNorm(1.0), ft.Momentum(0.1))
    state = ft.setup(rule, model)
    g = {"a": eager_backend.asarray(np.ones(4), "float32"), "b": eager_backend.asarray(np.ones(3), "float64")}
    state, model = ft.update_(state, model, g)  # a non-trivial state first
    bad = dict(g, b=eager_backend.asarray([1.0, np.inf, 0.0], "float64"))
    before = _assert_error_changes_nothing(eager_backend, state, model, bad)
    # without a rule that can raise, groups stay in place (same numbers either way)
    state2 = ft.setup(ft.Momentum(0.1), model)
    _, model2 = ft.update_(state2, model, g)
    np.testing.assert_array_equal(eager_backend.to_numpy(model2["a"]), before["a"] - np.float32(0.1))


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_sums_of_squares_are_clipnorms_bit_for_bit(dtype):
    """The kernels' sums of squares (for ClipNorm's norm: one multi-threaded pass, no
    temporary) are NumPy's ``np.sum(g * g)`` bit for bit: sizes around the summation
    blocks (8, 128) and the task size, arrays cut into several tasks, random sizes,
    overflow; several arrays in one call, on one thread and on several."""
    from fluxtrain._backend import fast_numpy
    rng = np.random.default_rng(4)
    leaf = fast_numpy.SUM_LEAF
    sizes = [0, 1, 7, 8, 9, 127, 128, 129, 1000, leaf - 1, leaf, leaf + 1, 2 * leaf + 8, 3 * leaf + 5, 1_000_003]
    sizes += [int(n) for n in rng.integers(1, 8 * leaf, 12)]
    gs = [(rng.standard_normal(n) * rng.uniform(0.01, 100)).astype(dtype) for n in sizes]
    gs.append(np.full(3 * leaf, 1e30 if dtype == "float32" else 1e200, dtype))  # overflows to inf
    P = np.array([g.ctypes.data for g in gs], dtype=np.int64).reshape(-1, 1)
    N = np.array([g.size for g in gs], dtype=np.int64)
    with np.errstate(over="ignore"):
        ref = np.array([np.sum(g * g) for g in gs], dtype=dtype)
    for parallel in (True, False):
        old = fast_numpy.PARALLEL_MIN
        fast_numpy.PARALLEL_MIN = 0 if parallel else 1 << 62
        try:
            got = fast_numpy.sums_of_squares(P, N, np.dtype(dtype).type)
        finally:
            fast_numpy.PARALLEL_MIN = old
        np.testing.assert_array_equal(got, ref, strict=True)
    assert np.isinf(got[-1])
    clip = ft.ClipNorm(1.0)
    assert np.sqrt(got[-2]).tobytes() == np.asarray(clip.norm(gs[-2])).tobytes()


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_strided_gradients_of_a_group_stay_alive(lib):
    """Strided gradients are copied to contiguous memory for the kernels, which get only
    the copies' addresses: every copy must outlive the kernel call (large ones, whose freed
    memory is returned to the system or reused), not just the last one's."""
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((300, 400)).astype(np.float32) for _ in range(3)]
    gs = [rng.standard_normal((300, 800)).astype(np.float32)[:, ::2] for _ in range(3)]
    if lib == "torch":
        torch = pytest.importorskip("torch")
        xs, gs = [torch.from_numpy(x) for x in xs], [torch.from_numpy(g) for g in gs]
    for rule in (ft.Adam(0.1), ft.OptimiserChain(ft.ClipNorm(1.0), ft.Momentum(0.1))):
        m1 = [x.clone() if lib == "torch" else x.copy() for x in xs]
        m2 = [x.clone() if lib == "torch" else x.copy() for x in xs]
        ft.update_(ft.setup(rule, m1), m1, gs)
        with fast.disabled():
            ft.update_(ft.setup(rule, m2), m2, gs)
        for a, b in zip(m1, m2):  # (torch's fused Adam agrees to rounding; the rest bit for bit)
            if lib == "torch" and "Adam" in repr(rule):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
            else:
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

_CACHED = """
import numpy as np, fluxtrain as ft
from fluxtrain._backend import fast_numpy
x = [np.ones(300_000, np.float32)]
state = ft.setup(ft.OptimiserChain(ft.ClipNorm(1.0), ft.Adam()), x)
ft.update_(state, x, [np.ones(300_000, np.float32)])
stats = [fast_numpy.kernels()[k].stats for k in ("adam", "sumsq")]
print(sum(len(s.cache_hits) for s in stats), sum(len(s.cache_misses) for s in stats))
"""


def test_kernels_compiled_once_for_all_processes(tmp_path):
    """numba's on-disk cache keys a function by its closure's contents too, and a closure
    holding a jitted function pickles differently in every process: kernels built inside a
    function were compiled again by every process (~1 s) and added to the cache each
    time. A second process loads them."""
    pytest.importorskip("numba")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", _CACHED], env=env, capture_output=True, text=True, check=True)
            for _ in range(2)]
    (hits1, misses1), (hits2, misses2) = (map(int, r.stdout.split()) for r in runs)
    assert misses1 == 2 and hits1 == 0
    assert hits2 == 2 and misses2 == 0


def _huge_page_advice(addr: int) -> bool | None:
    """Does the mapping holding ``addr`` carry MADV_HUGEPAGE (``hg`` in its VmFlags)? None
    where /proc/self/smaps does not say."""
    try:
        text = open("/proc/self/smaps").read()
    except OSError:
        return None
    start = None
    for line in text.splitlines():
        head = line.split(" ", 1)[0]
        if "-" in head and ":" not in head:
            a, b = (int(v, 16) for v in head.split("-"))
            start = a <= addr < b
        elif line.startswith("VmFlags:") and start:
            return " hg" in line
    return None


def test_torch_large_cpu_state_asks_for_huge_pages():
    """A rule's state for a CPU tensor of 4 MiB or more is allocated with huge-page advice
    (fast_torch's "zeros_like"/"full_like"); its values, dtype, shape, strides and device
    are those of zeros_like/full_like, and small tensors keep torch's own allocation."""
    torch = pytest.importorskip("torch")
    if not os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled"):
        pytest.skip("no transparent huge pages (Linux's) to ask for")
    big = torch.nn.Parameter(torch.randn(1200, 1000).t())  # 4.8 MB, a transposed view
    small = torch.randn(100, 100)
    for rule, fill in ((ft.Adam(), 0.0), (ft.AdaGrad(epsilon=0.25), 0.25)):
        st = ft.setup(rule, {"big": big, "small": small})
        for key, x in (("big", big), ("small", small)):
            s = st[key].state
            arr = s[0] if isinstance(s, tuple) else s
            assert type(arr) is torch.Tensor and not arr.requires_grad
            assert arr.dtype == x.dtype and arr.shape == x.shape and arr.stride() == x.stride()
            assert torch.equal(arr, torch.full_like(x, fill).detach())
            advised = _huge_page_advice(arr.untyped_storage().data_ptr() + 8192)
            if advised is None:
                pytest.skip("/proc/self/smaps is not readable")
            assert advised is (key == "big"), key
    from fluxtrain._backend import fast_torch
    assert fast_torch.zeros_like_torch(torch.zeros(10)) is None
    if torch.device("meta").type == "meta":
        assert fast_torch.zeros_like_torch(torch.zeros(2 << 20, device="meta")) is None
