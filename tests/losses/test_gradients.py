"""Gradients: every loss against central differences in float64 (torch and JAX, jitted
JAX included; torch also through ``torch.autograd.gradcheck``), finite gradients where a
``where`` hides an Inf/NaN branch, and stability of the logit losses for ±1e4 in float32."""
from __future__ import annotations

import numpy as np
import pytest

import fluxtrain as F
from tests.losses.cases import CASES, IDS
from tests.util import HAVE_TORCH, assert_close


def _central_diff(f, args, h=1e-6):
    """Numerical gradients of scalar ``f`` (on NumPy float64 arrays) for every argument."""
    grads = []
    for i, a in enumerate(args):
        g = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            plus = [x.copy() for x in args]
            minus = [x.copy() for x in args]
            plus[i][idx] += h
            minus[i][idx] -= h
            g[idx] = (float(f(*plus)) - float(f(*minus))) / (2 * h)
        grads.append(g)
    return grads


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradient_matches_finite_differences(case, ad_backend):
    rng = np.random.default_rng(sum(map(ord, case.name)))
    yhat, y = case.make(rng)

    def f(a, b):
        return case.fn(a, b, **case.kwargs)

    got = ad_backend.grad(f, ad_backend.asarray(yhat), ad_backend.asarray(y))
    want = _central_diff(f, [yhat, y])
    for g, w in zip(got, want):
        assert g.dtype == np.float64
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-8)


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch is not installed")
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_torch_gradcheck(case):
    import torch
    rng = np.random.default_rng(1 + sum(map(ord, case.name)))
    yhat, y = case.make(rng)
    a = torch.tensor(yhat, requires_grad=True)
    b = torch.tensor(y, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, q: case.fn(p, q, **case.kwargs), (a, b))


@pytest.mark.parametrize("case", [c for c in CASES if c.per_sample], ids=lambda c: c.name)
def test_gradient_other_axis_and_sum(case, ad_backend):
    # The class axis first (Flux's dims=2) and agg="sum" differentiate as well.
    rng = np.random.default_rng(7)
    yhat, y = (np.ascontiguousarray(a.T) for a in case.make(rng))

    def f(a, b):
        return case.fn(a, b, axis=-2, agg="sum")

    got = ad_backend.grad(f, ad_backend.asarray(yhat), ad_backend.asarray(y))
    for g, w in zip(got, _central_diff(f, [yhat, y])):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-8)


def test_crossentropy_gradient_finite_at_zero_probability(ad_backend):
    # xlogy(0, ŷ + eps) hides log(0): the gradient is -y/(ŷ + eps), exactly 0 off target.
    yhat = ad_backend.asarray([[0.0, 1.0], [0.3, 0.7]])
    y = ad_backend.asarray([[False, True], [True, False]])
    (g,) = ad_backend.grad(lambda a: F.crossentropy(a, y, eps=0), yhat)
    assert np.isfinite(g).all()
    assert_close(g, [[0.0, -0.5], [-0.5 / 0.3, 0.0]], rtol=1e-12)


def test_xlogy_gradients_where_x_is_zero(ad_backend):
    x = ad_backend.asarray([0.0, 0.0, 0.0, 2.0])
    y = ad_backend.asarray([0.0, 2.0, np.inf, 3.0])
    gx, gy = ad_backend.grad(lambda a, b: F.losses.xlogy(a, b).sum(), x, y)
    # ∂/∂x = log(y) where it is finite (0 stands in at y = 0, Inf); ∂/∂y = x/y = 0 at x = 0.
    assert_close(gx, [0.0, np.log(2.0), 0.0, np.log(3.0)], rtol=1e-12)
    assert_close(gy, [0.0, 0.0, 0.0, 2.0 / 3.0], rtol=1e-12)


def test_logitcrossentropy_bool_target_strong_zero_gradient(ad_backend):
    # A -Inf logit in a class whose target is False contributes 0 (Flux's strong zero);
    # the gradient stays finite.
    yhat = ad_backend.asarray([[-np.inf, 1.0, 2.0]])
    y = ad_backend.asarray([[False, True, False]])
    out = ad_backend.call(F.logitcrossentropy, yhat, y)
    assert_close(out, -(1.0 - np.logaddexp(1.0, 2.0)), rtol=1e-12)
    (g,) = ad_backend.grad(lambda a: F.logitcrossentropy(a, y), yhat)
    sm = np.exp([1.0, 2.0] - np.logaddexp(1.0, 2.0))
    assert_close(g, [[0.0, sm[0] - 1, sm[1]]], rtol=1e-12)


@pytest.mark.parametrize("fn, x, want", [
    ("sigmoid", 0.0, 0.25), ("logsigmoid", 0.0, 0.5), ("sigmoid", 3.0, None), ("logsigmoid", -2.0, None),
])
def test_activation_gradients(fn, x, want, ad_backend):
    f = getattr(F, fn)
    (g,) = ad_backend.grad(lambda a: f(a).sum(), ad_backend.asarray([x]))
    s = 1 / (1 + np.exp(-x))
    expected = {"sigmoid": s * (1 - s), "logsigmoid": 1 - s}[fn]
    assert_close(g, [expected if want is None else want], rtol=1e-12)


# --- stability beyond Flux: logits up to ±1e4 in float32 ------------------------------

LOGITS = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5e3], [3.0, -2.0, 1e4], [-1e4, -1e4, -1e4]], dtype=np.float32)
ONEHOT = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=bool)


def _lse(x):
    return np.logaddexp.reduce(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("soft", [False, True])
def test_logitcrossentropy_large_logits_float32(soft, backend):
    y = np.where(ONEHOT, 0.8, 0.1) if soft else ONEHOT
    y = y.astype(np.float32) if soft else y
    x64 = LOGITS.astype(np.float64)
    per = -(y * (x64 - _lse(x64))).sum(axis=-1)
    out = backend.call(F.logitcrossentropy, backend.asarray(LOGITS), backend.asarray(y))
    assert backend.to_numpy(out).dtype == np.float32
    assert np.isfinite(backend.to_numpy(out))
    assert_close(out, per.mean(), rtol=1e-6)
    if backend.differentiable:
        ya = backend.asarray(y)
        (g,) = backend.grad(lambda a: F.logitcrossentropy(a, ya), backend.asarray(LOGITS))
        want = (np.exp(x64 - _lse(x64)) - y) / len(x64)
        assert g.dtype == np.float32 and np.isfinite(g).all()
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-7)


def test_logitbinarycrossentropy_large_logits_float32(backend):
    x = np.array([1e4, -1e4, 0.0, 3e3, -3e3, 1e4, -1e4], dtype=np.float32)
    y = np.array([0, 1, 1, 1, 0, 1, 0], dtype=np.float32)
    x64 = x.astype(np.float64)
    per = (1 - y) * x64 + np.logaddexp(0.0, -x64)
    out = backend.call(F.logitbinarycrossentropy, backend.asarray(x), backend.asarray(y))
    assert backend.to_numpy(out).dtype == np.float32
    assert_close(out, per.mean(), rtol=1e-6)
    if backend.differentiable:
        ya = backend.asarray(y)
        (g,) = backend.grad(lambda a: F.logitbinarycrossentropy(a, ya), backend.asarray(x))
        want = (np.exp(-np.logaddexp(0.0, -x64)) - y) / len(x)  # sigmoid without overflow
        assert g.dtype == np.float32 and np.isfinite(g).all()
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-8)
