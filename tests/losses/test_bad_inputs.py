"""Bad input: wrong shapes, logs of negative numbers, NaN/Inf, empty arrays, mixed
backends, unknown ``agg``; each gives a clear error or the documented value."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import fluxtrain as F
from tests.losses.cases import CASES, IDS
from tests.util import HAVE_TORCH, assert_close


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_wrong_shapes_raise_dimension_mismatch(case, backend):
    yhat, y = case.make(np.random.default_rng(0))
    with pytest.raises(F.DimensionMismatch, match=r"size\(ŷ\) = \(4, 3\) to match size\(y\) = \(3, 4\)"):
        backend.call(case.fn, backend.asarray(yhat), backend.asarray(np.ascontiguousarray(y.T)), **case.kwargs)
    # Julia pads trailing (Python: leading) dims: a (3,) vector fails against (3, 1) ...
    with pytest.raises(F.DimensionMismatch):
        backend.call(case.fn, backend.asarray(yhat[0]), backend.asarray(y[0][:, None]), **case.kwargs)
    # ... and passes against (1, 3).
    backend.call(case.fn, backend.asarray(yhat[0]), backend.asarray(y[:1]), **case.kwargs)


@pytest.mark.parametrize("call", [
    lambda a: F.crossentropy(a([-0.5, 1.5]), a([0.0, 1.0])),
    lambda a: F.crossentropy(a([-0.5, 1.5]), a([1.0, 0.0])),  # also where y == 0: log runs first
    lambda a: F.binarycrossentropy(a([1.5]), a([1.0])),
    lambda a: F.binarycrossentropy(a([-0.5]), a([0.0])),
    lambda a: F.msle(a([-2.0]), a([1.0])),
    lambda a: F.poisson_loss(a([-1.0, 1.0]), a([0.0, 1.0])),
    lambda a: F.kldivergence(a([0.5, 0.5]), a([-0.5, 1.5])),
    lambda a: F.focal_loss(a([-0.5, 1.5]), a([0.0, 1.0])),
    lambda a: F.binary_focal_loss(a([1.5]), a([0.0])),
    lambda a: F.xlogy(a([0.0]), a([-1.0])),
    lambda a: F.xlogx(a([-1.0])),
], ids=["ce", "ce-y0", "bce-gt1", "bce-neg", "msle", "poisson", "kl", "focal", "bfocal", "xlogy", "xlogx"])
def test_log_of_negative_is_domain_error_eagerly_nan_under_jit(call, backend):
    a = backend.asarray
    if backend.eager:
        with pytest.raises(F.DomainError, match="negative"):
            call(a)
    else:
        import jax
        out = np.asarray(jax.jit(lambda: call(a))())
        assert np.isnan(out).any()  # documented: NaN under jit, never a silent number


def test_jit_nan_values_documented():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    assert np.isnan(jax.jit(lambda p: F.crossentropy(p, jnp.array([0.0, 1.0])))(jnp.array([0.5, -0.5])))
    assert np.isnan(jax.jit(lambda p: F.binarycrossentropy(p, jnp.array([1.0])))(jnp.array([1.5])))
    assert np.isnan(jax.jit(lambda p: F.poisson_loss(p, jnp.array([0.0])))(jnp.array([-1.0])))


def test_siamese_negative_margin():
    for m in (-0.5, -1):
        with pytest.raises(F.DomainError, match="Margin must be non-negative"):
            F.siamese_contrastive_loss(np.array([0.5]), np.array([1.0]), margin=m)
    # The size check comes first, as in Flux.
    with pytest.raises(F.DimensionMismatch):
        F.siamese_contrastive_loss(np.zeros(2), np.zeros(3), margin=-1)


def test_nan_and_inf_inputs(backend):
    a = backend.asarray
    # NaN propagates through plain formulas.
    assert np.isnan(backend.to_numpy(backend.call(F.mse, a([np.nan, 1.0]), a([0.0, 1.0]))))
    assert np.isnan(backend.to_numpy(backend.call(F.logitbinarycrossentropy, a([np.nan]), a([1.0]))))
    # xlogy's zero rule: a NaN prediction where y == 0 contributes 0 to crossentropy.
    out = backend.call(F.crossentropy, a([np.nan, 1.0]), a([0.0, 1.0]), eps=0)
    assert backend.to_numpy(out) == 0.0
    # A zero probability for the target class: -log(eps) with the default eps, Inf with eps=0.
    assert backend.to_numpy(backend.call(F.crossentropy, a([0.0, 1.0]), a([1.0, 0.0]), eps=0)) == np.inf
    # Strong-zero bool targets (Flux): -Inf logits / Inf distances in False classes give 0.
    assert np.isfinite(backend.to_numpy(backend.call(F.logitcrossentropy, a([-np.inf, 0.0]), a([False, True]))))
    assert np.isnan(backend.to_numpy(backend.call(F.logitcrossentropy, a([-np.inf, 0.0]), a([0.0, 1.0]))))
    d = a([-np.inf])
    assert backend.to_numpy(backend.call(F.siamese_contrastive_loss, d, a([False]))) == np.inf
    assert np.isnan(backend.to_numpy(backend.call(F.siamese_contrastive_loss, d, a([0.0]))))
    # softmax with +Inf entries: each of k Inf entries gets 1/k (NNlib).
    assert_close(backend.call(F.softmax, a([[np.inf, 1.0, np.inf]])), [[0.5, 0.0, 0.5]], rtol=0)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_empty_arrays(case, eager_backend):
    a = eager_backend.asarray
    e = np.zeros((0, 3))
    if not case.has_agg:
        # Sums over nothing: 1 - (0 + 1)/(0 + 1) = 0.
        assert eager_backend.to_numpy(case.fn(a(e), a(e), **case.kwargs)) == 0.0
        return
    # Julia's mean of an empty array is NaN (0/0); the sum is 0; "none" is empty.
    assert np.isnan(eager_backend.to_numpy(case.fn(a(e), a(e), **case.kwargs)))
    assert eager_backend.to_numpy(case.fn(a(e), a(e), agg="sum", **case.kwargs)) == 0.0
    none = eager_backend.to_numpy(case.fn(a(e), a(e), agg="none", **case.kwargs))
    assert none.size == 0


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch is not installed")
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_mixed_backends_raise_typeerror(case):
    import torch
    yhat, y = case.make(np.random.default_rng(0))
    with pytest.raises(TypeError, match="mix array libraries"):
        case.fn(yhat, torch.from_numpy(y), **case.kwargs)


@pytest.mark.parametrize("case", [c for c in CASES if c.has_agg], ids=lambda c: c.name)
def test_unknown_agg(case):
    yhat, y = case.make(np.random.default_rng(0))
    with pytest.raises(ValueError, match="'mean', 'sum', 'none'.*'avg'"):
        case.fn(yhat, y, agg="avg", **case.kwargs)
    with pytest.raises(TypeError, match="agg must be a callable"):
        case.fn(yhat, y, agg=None, **case.kwargs)


def test_no_agg_for_dice_and_tversky():
    p = np.array([0.5, 0.5])
    with pytest.raises(TypeError):
        F.dice_coeff_loss(p, p, agg="sum")
    with pytest.raises(TypeError):
        F.tversky_loss(p, p, agg="sum")


def test_none_and_strings_are_rejected():
    with pytest.raises(TypeError, match="ŷ"):
        F.mse(None, np.zeros(2))
    with pytest.raises(TypeError, match="y"):
        F.mse(np.zeros(2), "labels")


# --- properties ---------------------------------------------------------------------

_shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=3)


@settings(max_examples=40, deadline=None)
@given(_shapes, _shapes)
def test_size_check_is_julia_rule(a, b):
    n = max(len(a), len(b))
    same = (1,) * (n - len(a)) + a == (1,) * (n - len(b)) + b
    try:
        F.mae(np.zeros(a), np.zeros(b))
        assert same
    except F.DimensionMismatch:
        assert not same


_logits = hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=4),
                     elements=st.floats(-30, 30))


@settings(max_examples=25, deadline=None)
@given(_logits, st.integers(0, 2**32 - 1))
def test_logit_losses_match_probability_losses(x, seed):
    rng = np.random.default_rng(seed)
    y = rng.uniform(0, 1, x.shape)
    y = y / y.sum(axis=-1, keepdims=True)
    # Flux's identities: logitcrossentropy = crossentropy∘softmax, and the binary pair.
    assert_close(F.logitcrossentropy(x, y), F.crossentropy(F.softmax(x), y, eps=0), rtol=1e-9, atol=1e-12)
    xb = np.clip(x, -15, 15)  # σ(x) must stay away from 0 and 1 for the eps=0 comparison
    assert_close(F.logitbinarycrossentropy(xb, y), F.binarycrossentropy(F.sigmoid(xb), y, eps=0), rtol=1e-8, atol=1e-12)
    # KL(p, p) is 0 without the regulariser; every loss is finite on valid input.
    p = F.softmax(x)
    assert abs(float(F.kldivergence(p, p, eps=0))) < 1e-12
    assert np.isfinite(F.logitcrossentropy(x * 1e3, y))


@settings(max_examples=25, deadline=None)
@given(hnp.arrays(np.float64, st.integers(1, 6), elements=st.floats(-1e6, 1e6)))
def test_elementwise_losses_are_nonnegative_and_zero_on_targets(x):
    assert float(F.mse(x, x)) == 0.0 and float(F.mae(x, x)) == 0.0 and float(F.huber_loss(x, x)) == 0.0
    y = x + 1.0
    for f in (F.mse, F.mae, F.huber_loss):
        assert float(f(x, y)) > 0


def test_domain_check_skipped_while_jax_traces_grad():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    # jax.grad traces even without jit: no DomainError, the value is NaN.
    v, _ = jax.value_and_grad(lambda p: F.crossentropy(p, jnp.array([1.0, 0.0])))(jnp.array([-0.5, 1.5]))
    assert np.isnan(np.asarray(v))
    with pytest.raises(F.DomainError):
        F.crossentropy(jnp.array([-0.5, 1.5]), jnp.array([1.0, 0.0]))
