"""The math helpers (fluxtrain._backend.math): NNlib's numbers, non-finite rules, and
native fast paths agreeing with the generic reference."""
from __future__ import annotations

import numpy as np
import pytest

import fluxtrain as F
from fluxtrain._backend import fast
from fluxtrain._backend.math import logsumexp, softplus
from tests.util import HAVE_TORCH, assert_close

INF = np.inf


def test_softmax_values(backend):
    a = backend.asarray
    assert_close(backend.call(F.softmax, a([1.0, 2.0, 3.0])),
                 [0.09003057317038046, 0.24472847105479764, 0.6652409557748218], rtol=1e-15)
    # Flux's [1 2 3; 2 2 2] (2×3) with dims=1 is our (3, 2) with axis=-1.
    m = a([[1.0, 2.0], [2.0, 2.0], [3.0, 2.0]])
    assert_close(backend.call(F.softmax, m), [[0.2689414213699951, 0.7310585786300049], [0.5, 0.5],
                                              [0.7310585786300049, 0.2689414213699951]], rtol=1e-15)
    whole = backend.to_numpy(backend.call(F.softmax, m, axis=None))
    assert_close(whole.sum(), 1.0, rtol=1e-15)


def test_softmax_nonfinite_rules(backend):
    a = backend.asarray
    x = a([[INF, 1.0, INF, 2.0], [INF, -INF, 0.0, 0.0], [-INF, -INF, -INF, -INF], [1.0, 2.0, 3.0, 4.0]])
    s = backend.to_numpy(backend.call(F.softmax, x))
    assert_close(s[0], [0.5, 0, 0.5, 0], rtol=0)
    assert_close(s[1], [1, 0, 0, 0], rtol=0)
    assert np.isnan(s[2]).all()  # max = -Inf: exp(-Inf - -Inf) is NaN in NNlib too
    assert_close(s[3], np.exp([1, 2, 3, 4] - np.logaddexp.reduce([1, 2, 3, 4])), rtol=1e-15)
    ls = backend.to_numpy(backend.call(F.logsoftmax, x))
    assert_close(ls[0], [-np.log(2), -INF, -np.log(2), -INF], rtol=1e-15)
    assert_close(ls[1], [0, -INF, -INF, -INF], rtol=0)
    nan = backend.to_numpy(backend.call(F.softmax, a([np.nan, 1.0])))
    assert np.isnan(nan).all()


def test_softmax_integer_input_and_number(eager_backend):
    out = F.softmax(eager_backend.asarray([1, 2, 3]))
    assert eager_backend.to_numpy(out).dtype == np.float64
    with pytest.raises(F.ArgumentError, match="called with a number"):
        F.softmax(3.0)
    with pytest.raises(F.ArgumentError, match="called with a number"):
        F.logsoftmax(1)


def test_logsoftmax_large_logits_float32(backend):
    x = backend.asarray(np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], np.float32))
    out = backend.to_numpy(backend.call(F.logsoftmax, x))
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert_close(out, [[0.0, -2e4, -1e4], [-np.log(3)] * 3], rtol=1e-6)


def test_logsumexp(backend):
    a = backend.asarray
    assert_close(backend.call(logsumexp, a([1000.0, 1000.0])), 1000 + np.log(2), rtol=1e-15)
    m = a([[1.0, 2.0], [3.0, -INF], [-INF, -INF], [INF, 1.0]])
    assert_close(backend.call(logsumexp, m, axis=1), [np.logaddexp(1, 2), 3.0, -INF, INF], rtol=1e-15)
    k = backend.to_numpy(backend.call(logsumexp, m, axis=-1, keepdims=True))
    assert k.shape == (4, 1)


def test_sigmoid_family_stable(backend):
    a = backend.asarray
    x = np.array([-1e4, -50.0, -1.0, 0.0, 2.0, 50.0, 1e4], np.float32)
    x64 = x.astype(np.float64)
    s = backend.to_numpy(backend.call(F.sigmoid, a(x)))
    assert s.dtype == np.float32 and np.isfinite(s).all()
    assert_close(s, np.exp(-np.logaddexp(0, -x64)), rtol=1e-6, atol=1e-30)
    ls = backend.to_numpy(backend.call(F.logsigmoid, a(x)))
    assert np.isfinite(ls).all()
    assert_close(ls, -np.logaddexp(0, -x64), rtol=1e-6)
    sp = backend.to_numpy(backend.call(softplus, a(x)))
    assert_close(sp, np.logaddexp(0, x64), rtol=1e-6, atol=1e-30)


def test_sigmoid_matches_nnlib_formula():
    x = np.array([-3.0, -0.5, 0.0, 0.5, 3.0])
    t = np.exp(-np.abs(x))
    want = np.where(x >= 0, 1 / (1 + t), t / (1 + t))
    np.testing.assert_array_equal(F.sigmoid(x), want)
    # softplus: log1p(exp(x)) for x < 0 and x + log1p(exp(-x)) otherwise, bit for bit.
    np.testing.assert_array_equal(softplus(x), np.where(x < 0, np.log1p(np.exp(x)), x + np.log1p(np.exp(-x))))


def test_xlogy_rules(backend):
    a = backend.asarray
    out = backend.to_numpy(backend.call(F.xlogy, a([0.0, np.nan, 1.0, 2.0, 0.0, 0.0, 3.0]),
                                        a([1.0, 1.0, np.nan, 3.0, 0.0, np.nan, 0.0])))
    assert_close(out, [0.0, np.nan, np.nan, 2 * np.log(3), 0.0, 0.0, -INF], rtol=1e-15)
    assert_close(backend.call(F.xlogx, a([0.0, 2.0, np.nan])), [0.0, 2 * np.log(2), np.nan], rtol=1e-15)
    assert float(F.xlogy(0, 1)) == 0.0 and np.isnan(F.xlogx(np.nan))


def test_xlogy_dtypes():
    assert F.xlogy(np.array([1, 0]), np.array([2.0, 3.0], np.float32)).dtype == np.float32
    assert F.xlogy(np.array([True, False]), np.array([2.0, 3.0], np.float32)).dtype == np.float32
    assert F.xlogy(np.array([1.0], np.float32), np.array([2])).dtype == np.float64
    assert F.xlogx(np.array([1, 2])).dtype == np.float64


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch is not installed")
@pytest.mark.parametrize("name", ["softmax", "logsoftmax", "sigmoid", "logsigmoid"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_fast_paths_match_generic(name, dtype):
    import torch
    f = getattr(F, name)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(dtype) * 10
    x[0, 1] = 80.0
    rtol = 1e-6 if dtype == "float32" else 1e-13

    def run():
        t = torch.tensor(x, requires_grad=True)
        out = f(t)
        (out * torch.arange(out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()
        return out.detach().numpy(), t.grad.numpy()

    fast_out, fast_grad = run()
    with fast.disabled():
        ref_out, ref_grad = run()
    assert fast_out.dtype == ref_out.dtype == np.dtype(dtype)
    np.testing.assert_allclose(fast_out, ref_out, rtol=rtol, atol=1e-30)
    np.testing.assert_allclose(fast_grad, ref_grad, rtol=rtol * 10, atol=1e-5 if dtype == "float32" else 1e-12)


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch is not installed")
def test_torch_fast_path_falls_back_on_infinite_max():
    import torch
    x = torch.tensor([[INF, 1.0, INF]])
    assert_close(F.softmax(x), [[0.5, 0.0, 0.5]], rtol=0)
    assert_close(F.logsoftmax(x), [[-np.log(2), -INF, -np.log(2)]], rtol=1e-7)


@pytest.mark.parametrize("lib", ["torch", "jax"])
def test_logsoftmax_gradient(lib):
    """The autodiff backends' logsoftmax backward: NNlib's rrule, dy - sum(dy) * exp(y), and
    zero for a row whose maximum is +Inf (a documented difference: NNlib's rule is finite
    there); the fast path (torch's log_softmax) equals the generic one."""
    x = np.array([[np.inf, 1.0, np.inf, 0.0], [0.5, 1.0, -2.0, 0.0], [1.0, -np.inf, 3.0, 2.0]], np.float32)
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    y = np.asarray(F.logsoftmax(x))
    dy = np.where(np.isfinite(y), w, 0).astype(np.float32)  # the -Inf entries masked out
    expect = dy - dy.sum(-1, keepdims=True) * np.exp(y)
    expect[0] = 0.0
    if lib == "torch":
        torch = pytest.importorskip("torch")

        def grad():
            t = torch.tensor(x, requires_grad=True)
            out = F.logsoftmax(t)
            (torch.where(torch.isfinite(out), out, 0) * torch.tensor(w)).sum().backward()
            return t.grad.numpy()
    else:
        jax = pytest.importorskip("jax")
        jnp = jax.numpy

        def f(a):
            out = F.logsoftmax(a)
            return jnp.sum(jnp.where(jnp.isfinite(out), out, 0) * w)

        def grad():
            return np.asarray(jax.jit(jax.grad(f))(jnp.asarray(x)))
    got = grad()
    with fast.disabled():
        ref = grad()
    for g in (got, ref):
        np.testing.assert_allclose(g, expect, rtol=1e-6, atol=1e-6)
