"""Type stability (Flux test/losses.jl lines 153-163): float32 in gives a float32 loss and
a float32 gradient, float64 likewise; integer/bool predictions compute in float64."""
from __future__ import annotations

import numpy as np
import pytest

import fluxtrain as F
from tests.losses.cases import CASES, IDS


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_loss_and_gradient_keep_dtype(case, dtype, backend):
    yhat, y = case.make(np.random.default_rng(3))
    a, b = backend.asarray(yhat, dtype), backend.asarray(y, dtype)
    out = backend.call(case.fn, a, b, **case.kwargs)
    assert backend.to_numpy(out).dtype == np.dtype(dtype)
    assert backend.to_numpy(out).shape == ()
    if backend.differentiable:
        ga, gb = backend.grad(lambda p, q: case.fn(p, q, **case.kwargs), a, b)
        assert ga.dtype == np.dtype(dtype) and gb.dtype == np.dtype(dtype)
        assert np.isfinite(ga).all() and np.isfinite(gb).all()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_integer_and_bool_targets_keep_float32(case, eager_backend):
    # Julia: Int/Bool with Float32 promotes to Float32; NumPy alone would give float64.
    yhat, y = case.make(np.random.default_rng(4))
    target = (y > np.median(y)).astype(np.int64)
    for t in (target, target.astype(bool)):
        out = case.fn(eager_backend.asarray(yhat, "float32"), eager_backend.asarray(t), **case.kwargs)
        assert eager_backend.to_numpy(out).dtype == np.float32


@pytest.mark.parametrize("name", ["mae", "mse", "hinge_loss", "squared_hinge_loss", "dice_coeff_loss",
                                  "siamese_contrastive_loss", "poisson_loss", "crossentropy"])
def test_integer_predictions_compute_in_float64(name, eager_backend):
    out = getattr(F, name)(eager_backend.asarray([[1, 2, 3]]), eager_backend.asarray([[1, 0, 2]]))
    assert eager_backend.to_numpy(out).dtype == np.float64


def test_eps_defaults_to_machine_eps_of_prediction_type():
    # crossentropy(ŷ=0, y=1) = -log(eps): float32 ŷ uses eps(float32) even with float64 y.
    out32 = F.crossentropy(np.array([0.0, 1.0], np.float32), np.array([1.0, 0.0]))
    assert np.isclose(float(out32), -np.log(np.finfo(np.float32).eps), rtol=1e-12)
    out64 = F.crossentropy(np.array([0.0, 1.0]), np.array([1, 0], np.float32))
    assert np.isclose(float(out64), -np.log(np.finfo(np.float64).eps), rtol=1e-12)
    outint = F.crossentropy(np.array([0, 1]), np.array([1, 0]))
    assert float(outint) == -np.log(np.finfo(np.float64).eps)


def test_hyperparameters_take_prediction_type():
    # delta is rounded to float32 like Flux's ofeltype: e = 0.1f0, delta = Float32(0.05).
    yhat = np.array([1.1], np.float32)
    out = F.huber_loss(yhat, np.array([1.0], np.float32), delta=0.05)
    e = np.abs(yhat - np.float32(1.0))[0]
    d = np.float32(0.05)
    assert out.dtype == np.float32 and out == d * (e - np.float32(0.5) * d)


def test_integer_gamma_is_integer_power():
    yhat = np.array([[0.3, 0.7]], np.float32)
    y = np.array([[0, 1]])
    a = F.binary_focal_loss(yhat, y, gamma=2)
    b = F.binary_focal_loss(yhat, y, gamma=2.0)
    assert a.dtype == b.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-6)
