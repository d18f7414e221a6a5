"""Flux's calling conventions: what ``agg`` sees, ``axis`` (Flux's dims), size checks,
lists and numbers as inputs, and the keywords Flux accepts, ignores or removed."""
from __future__ import annotations

import numpy as np
import pytest

import fluxtrain as F
from fluxtrain.losses.utils import check_sizes
from tests.losses.cases import CASES, IDS
from tests.util import assert_close

AGG_CASES = [c for c in CASES if c.has_agg]
AGG_IDS = [i for c, i in zip(CASES, IDS) if c.has_agg]


@pytest.mark.parametrize("case", AGG_CASES, ids=AGG_IDS)
def test_agg_sees_flux_shape(case, backend):
    yhat, y = case.make(np.random.default_rng(0))
    a, b = backend.asarray(yhat), backend.asarray(y)
    none = backend.to_numpy(backend.call(case.fn, a, b, agg="none", **case.kwargs))
    n = yhat.shape[0]
    if case.name == "kldivergence":
        pass  # two terms, each of shape (N, 1); checked below
    else:
        assert none.shape == ((n, 1) if case.per_sample else yhat.shape)
    mean = backend.call(case.fn, a, b, **case.kwargs)
    total = backend.call(case.fn, a, b, agg="sum", **case.kwargs)
    assert_close(mean, none.mean(), rtol=1e-12)
    assert_close(total, none.sum(), rtol=1e-12)
    # A callable receives the unreduced array (weights shaped like it, Flux's closure idiom).
    w = np.arange(1.0, none.size + 1).reshape(none.shape)
    weighted = backend.call(case.fn, a, b, agg=lambda x: (x * backend.asarray(w)).sum(), **case.kwargs)
    if case.name != "kldivergence":
        assert_close(weighted, (none * w).sum(), rtol=1e-12)


def test_kldivergence_applies_agg_to_each_term():
    p = np.array([[0.2, 0.8], [0.6, 0.4]])
    q = np.array([[0.5, 0.5], [0.3, 0.7]])
    seen = []
    out = F.kldivergence(q, p, agg=lambda x: seen.append(x.shape) or x.max())
    assert seen == [(2, 1), (2, 1)]
    ent = (p * np.log(p)).sum(-1).max()
    ce = (-(p * np.log(q + np.finfo(float).eps)).sum(-1)).max()
    assert_close(out, ent + ce, rtol=1e-12)


def test_per_sample_vector_input_gives_length_one():
    out = F.crossentropy(np.array([0.2, 0.8]), np.array([0.0, 1.0]), agg="none")
    assert out.shape == (1,)


def test_axis_is_flux_dims(backend):
    rng = np.random.default_rng(1)
    yhat = rng.uniform(0.1, 1, (3, 5))  # Flux dims=2 on a 5×3 array: sum over our axis -2
    y = rng.uniform(0, 1, (3, 5))
    for name in ["crossentropy", "logitcrossentropy", "kldivergence", "focal_loss"]:
        f = getattr(F, name)
        ref = f(np.ascontiguousarray(yhat.T), np.ascontiguousarray(y.T), agg="none")
        got = backend.call(f, backend.asarray(yhat), backend.asarray(y), axis=-2, agg="none")
        assert backend.to_numpy(got).shape == (1, 5)
        assert_close(got, backend.to_numpy(ref).T, rtol=1e-12)
        # A tuple of axes (Flux's dims=(1, 2)) reduces both.
        both = backend.call(f, backend.asarray(yhat), backend.asarray(y), axis=(-1, -2), agg="none")
        assert backend.to_numpy(both).shape == (1, 1)


def test_axis_must_be_int_or_tuple():
    with pytest.raises(TypeError, match="axis"):
        F.crossentropy(np.ones((2, 2)) / 2, np.eye(2), axis="rows")


@pytest.mark.parametrize("a, b, ok", [
    ((3,), (1, 3), True), ((1, 3), (3,), True), ((3,), (3, 1), False), ((2, 3), (3, 2), False),
    ((4, 3), (4, 3), True), ((1, 1, 3), (3,), True), ((4, 3), (1, 3), False), ((), (1,), True),
])
def test_check_sizes_pads_leading_dimensions(a, b, ok):
    # Julia's trailing singleton dims are Python's leading ones.
    if ok:
        check_sizes(np.zeros(a), np.zeros(b))
    else:
        with pytest.raises(F.DimensionMismatch, match=r"expects size\(ŷ\) = .* to match size\(y\) = "):
            check_sizes(np.zeros(a), np.zeros(b))


def test_lists_and_numbers_are_accepted():
    assert float(F.mse([1.1, 1.9, 3.1], [1, 2, 3])) == 0.010000000000000018
    assert float(F.hinge_loss(0.1, 1)) == pytest.approx(0.9)
    # A constant (Number) target skips the size check (Flux test line 92).
    assert_close(F.binarycrossentropy([0.1, 0.2, 0.9], 1), 1.3391278403619895, rtol=1e-14)
    out = F.mse(np.array([1.0, 2.0], np.float32), 1)
    assert out.dtype == np.float32 and isinstance(out, np.ndarray) and out.shape == ()


def test_results_are_arrays_of_the_input_backend(backend):
    out = backend.call(F.mse, backend.asarray([1.0, 2.0]), backend.asarray([1.0, 0.0]))
    if backend.lib == "jax":
        import jax
        assert isinstance(out, jax.Array)
    else:
        assert type(out) is type(backend.asarray([0.0]))
    assert backend.to_numpy(out).shape == ()


def test_removed_greek_keywords_raise_typeerror():
    p = np.array([0.3, 0.7])
    with pytest.raises(TypeError):
        F.crossentropy(p, p, **{"ϵ": 1e-7})
    with pytest.raises(TypeError):
        F.binarycrossentropy(p, p, **{"ε": 1e-7})
    with pytest.raises(TypeError):
        F.huber_loss(p, p, **{"δ": 1.0})
    with pytest.raises(TypeError):
        F.binary_focal_loss(p, p, **{"γ": 2})
    with pytest.raises(TypeError):
        F.msle(p, p, **{"ε": 1e-7})
    with pytest.raises(TypeError):
        F.kldivergence(p, p, **{"ε": 1e-7})


def test_ignored_keywords_like_flux():
    yhat, y = np.array([[0.0, 1.4, 0.5, 1.2]]), np.array([[1.0, 0.5, 0.3, 2.4]])
    # tversky_loss accepts β and ignores it (uses beta=0.7).
    assert float(F.tversky_loss(yhat, y, β=0.8)) == float(F.tversky_loss(yhat, y))
    assert float(F.tversky_loss(yhat, y, beta=0.8)) == pytest.approx(-0.09490740740740744, rel=1e-14)
    # focal_loss accepts ϵ and γ and ignores them (written ϵ; Python folds it to ε).
    p, t = np.array([[0.4, 0.5, 0.1]]), np.array([[1, 0, 0]])
    assert float(F.focal_loss(p, t, ϵ=0.5, γ=0)) == float(F.focal_loss(p, t))


def test_tversky_follows_flux_code_not_docstring():
    # beta weights the false positives (1 - y)·ŷ; beta = 0.5 is the dice-like symmetric case.
    yhat, y = np.array([0.9, 0.8, 0.0]), np.array([1.0, 0.0, 1.0])
    tp, fp, fn = 0.9, 0.8, 0.1 + 1.0
    for beta in (0.7, 0.2):
        want = 1 - (tp + 1) / (tp + beta * fp + (1 - beta) * fn + 1)
        assert float(F.tversky_loss(yhat, y, beta=beta)) == pytest.approx(want, rel=1e-14)


def test_huber_blend_matches_flux():
    yhat, y = np.array([0.0, 3.0, np.inf]), np.array([0.5, 0.0, 0.0])
    out = F.huber_loss(yhat, y, agg="none")
    assert_close(out, [0.125, 2.5, np.inf], rtol=1e-15)
    # Flux blends the branches arithmetically: delta = Inf gives NaN (0 * Inf).
    assert np.isnan(F.huber_loss(np.array([1.0]), np.array([0.0]), delta=np.inf))


def test_label_smoothing_rules(eager_backend):
    y = eager_backend.asarray(np.array([[0, 1, 0], [1, 0, 0]], dtype=bool))
    out = F.label_smoothing(y, np.float32(0.15))
    assert eager_backend.to_numpy(out).dtype == np.float32
    np.testing.assert_array_equal(eager_backend.to_numpy(out)[0], np.array([0.050000004, 0.90000004, 0.050000004], np.float32))
    out64 = F.label_smoothing(y, 0.2)
    assert_close(out64, [[0.2 * (1 / 3), 0.8 + 0.2 * (1 / 3), 0.2 * (1 / 3)], [0.8 + 0.2 * (1 / 3), 0.2 * (1 / 3), 0.2 * (1 / 3)]], rtol=0)
    assert_close(F.label_smoothing(y, 0.2, axis=None), [[0.1, 0.9, 0.1], [0.9, 0.1, 0.1]], rtol=0)
    # Float y keeps its dtype; a number counts as one class.
    y32 = eager_backend.asarray(np.array([0.0, 1.0], np.float32))
    assert eager_backend.to_numpy(F.label_smoothing(y32, 0.2)).dtype == np.float32
    assert float(F.label_smoothing(1, 0.2)) == pytest.approx(1.0)
    for bad in (0, 1, 1.2, -0.1):
        with pytest.raises(F.ArgumentError, match="α must be between 0 and 1"):
            F.label_smoothing(y, bad)
    with pytest.raises(F.ArgumentError, match="axis"):
        F.label_smoothing(y, 0.1, axis=0)
