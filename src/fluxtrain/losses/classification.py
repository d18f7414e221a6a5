"""Probabilistic classification losses and ``label_smoothing``.

Class axis: ``axis=-1`` (Flux's ``dims=1``; ``dims=d`` is ``axis=-d``). The class-summing
losses (crossentropy, logitcrossentropy, kldivergence, focal_loss) keep the summed axis,
so ``agg`` sees per-sample losses of shape ``(N, 1)`` for an ``(N, C)`` input (Flux's
1×N), and ``(1,)`` for a single ``(C,)`` distribution.
"""
from __future__ import annotations

import numbers
from typing import Any, Union

import numpy as np

from .._backend import asarrays, check_domain, device_of, fast, is_array, is_eager
from .._backend.math import _logsoftmax, _xlogy, as_result, logsigmoid, to_float
from .._errors import ArgumentError
from .._backend.math import quiet
from .utils import NEG_LOG as _NEG_LOG, Agg, aggregate, check_agg, default_eps, float_param, prepare

__all__ = [
    "crossentropy", "logitcrossentropy", "binarycrossentropy", "logitbinarycrossentropy",
    "kldivergence", "binary_focal_loss", "focal_loss", "label_smoothing",
]

Axis = Union[int, tuple[int, ...]]


def _axis(axis: Any) -> Any:
    if isinstance(axis, list):
        return tuple(axis)
    if not isinstance(axis, (int, tuple)) or isinstance(axis, bool):
        raise TypeError(f"axis must be an int or a tuple of ints (Flux's dims=d is axis=-d), got {axis!r}")
    return axis


def _gamma(gamma: Any, yhat: Any, xp) -> Any:
    # An Integer gamma stays an integer power (Flux); anything else takes ŷ's float type.
    if isinstance(gamma, numbers.Integral) and not isinstance(gamma, bool):
        return int(gamma)
    return float_param(gamma, yhat, xp)


def _pow(x: Any, gamma: Any) -> Any:
    # x^0 is 1 even for NaN (Julia and NumPy agree); skipping it keeps the gradient 0.
    if isinstance(gamma, (int, float)) and gamma == 0:
        return None
    return x ** gamma


@quiet
def crossentropy(yhat: Any, y: Any, /, *, axis: Axis = -1, agg: Agg = "mean", eps: Any = None) -> Any:
    """Cross entropy of probabilities ŷ against targets y (Flux's ``crossentropy``).

    ``agg(-sum(xlogy.(y, ŷ .+ eps); dims))``

    Defaults: ``axis=-1`` (classes last; Flux's ``dims=1``), ``agg="mean"`` over samples,
    ``eps`` = machine epsilon of ŷ's float type. ŷ should sum to 1 along ``axis`` (not
    checked, as in Flux); use :func:`logitcrossentropy` on raw scores. Zero targets
    contribute exactly 0. ``ŷ + eps < 0`` raises ``DomainError`` (NaN under ``jax.jit``).

    >>> import numpy as np
    >>> yhat = np.array([[0.1, 0.9], [0.9, 0.1], [0.9, 0.1], [0.1, 0.9]])  # 4 samples, 2 classes
    >>> y = np.array([[0, 1], [0, 1], [1, 0], [1, 0]], dtype=bool)
    >>> float(crossentropy(yhat, y))
    1.2039728043259346
    >>> crossentropy(yhat, y, agg="none").shape
    (4, 1)
    """
    check_agg(agg)
    axis = _axis(axis)
    xp, yhat, y, _ = prepare(yhat, y)
    return _crossentropy(yhat, y, axis, agg, eps, xp)


def _crossentropy(yhat: Any, y: Any, axis: Any, agg: Agg, eps: Any, xp) -> Any:
    """crossentropy on arguments already checked and prepared (kldivergence reuses it)."""
    eps = default_eps(eps, yhat, xp)
    terms = _xlogy(y, yhat + eps, xp, "crossentropy: ŷ + eps")
    return aggregate(-xp.sum(terms, axis=axis, keepdims=True), agg, xp)


@quiet
def logitcrossentropy(yhat: Any, y: Any, /, *, axis: Axis = -1, agg: Agg = "mean") -> Any:
    """Cross entropy on logits (Flux's ``logitcrossentropy``): ``crossentropy(softmax(ŷ), y)``
    computed stably.

    ``agg(-sum(y .* logsoftmax(ŷ; dims); dims))``

    Defaults: ``axis=-1``, ``agg="mean"`` over samples. A bool target is a strong zero
    (Julia's ``false * -Inf == 0``): classes with ``y == False`` contribute 0 even where
    the log-softmax is -Inf; a float 0.0 target gives NaN there, as in Flux. Finite, with
    finite gradients, for logits up to ±1e4 in float32.

    >>> import numpy as np
    >>> yhat = np.array([[0.1, 0.5, 0.4], [0.8, 0.1, 0.1]], dtype=np.float32)
    >>> y = np.array([[0, 1, 0], [1, 0, 0]], dtype=bool)
    >>> print(logitcrossentropy(yhat, y))
    0.81781864
    """
    out = fast.direct("logitcrossentropy", yhat, y, axis, agg)  # checks its raw arguments itself
    if out is not None:
        return out
    check_agg(agg)
    axis = _axis(axis)
    xp, yhat, y, ybool = prepare(yhat, y, keep_bool=True)
    kernel = fast.lookup("logitcrossentropy", xp)  # one fused call where a backend has it
    out = kernel(yhat, y, axis, agg, ybool) if kernel is not None else None
    if out is not None:
        return as_result(out)
    lsm = _logsoftmax(yhat, xp, axis)
    # a bool y selects (Julia's strong zero: false * -Inf == 0), without a float copy of y
    prod = xp.where(y, lsm, xp.zeros_like(lsm)) if ybool else y * lsm
    return aggregate(-xp.sum(prod, axis=axis, keepdims=True), agg, xp)


@quiet
def binarycrossentropy(yhat: Any, y: Any, /, *, agg: Agg = "mean", eps: Any = None) -> Any:
    """Binary cross entropy of probabilities (Flux's ``binarycrossentropy``), elementwise.

    ``agg(@. -xlogy(y, ŷ + eps) - xlogy(1 - y, 1 - ŷ + eps))``

    Defaults: ``agg="mean"`` over all elements, ``eps`` = machine epsilon of ŷ's float
    type. ``y`` may be a constant number. ŷ > 1 + eps (or < -eps) raises ``DomainError``
    (NaN under ``jax.jit``). Prefer :func:`logitbinarycrossentropy` on logits.

    >>> import numpy as np
    >>> float(binarycrossentropy(np.array([0.1, 0.2, 0.9]), 1))
    1.3391278403619895
    """
    check_agg(agg)
    xp, yhat, y, _ = prepare(yhat, y)
    eps = default_eps(eps, yhat, xp)
    a = _xlogy(y, yhat + eps, xp, "binarycrossentropy: ŷ + eps")
    b = _xlogy(1 - y, 1 - yhat + eps, xp, "binarycrossentropy: 1 - ŷ + eps (ŷ > 1 + eps)")
    return aggregate(-a - b, agg, xp)


@quiet
def logitbinarycrossentropy(yhat: Any, y: Any, /, *, agg: Agg = "mean") -> Any:
    """Binary cross entropy on logits (Flux's ``logitbinarycrossentropy``), elementwise.

    ``agg(@. (1 - y) * ŷ - logσ(ŷ))``, i.e. ``binarycrossentropy(sigmoid(ŷ), y; eps=0)``
    computed stably (finite values and gradients for ±1e4 in float32).

    >>> import numpy as np
    >>> float(logitbinarycrossentropy(np.array([0.5, -1.0, 2.0]), np.array([1, 0, 1])))
    0.3047555609137673
    """
    out = fast.direct("logitbinarycrossentropy", yhat, y, agg)  # checks its raw arguments itself
    if out is not None:
        return out
    check_agg(agg)
    xp, yhat, y, _ = prepare(yhat, y)
    kernel = fast.lookup("logitbinarycrossentropy", xp)  # one fused call where a backend has it
    out = kernel(yhat, y, agg) if kernel is not None else None
    if out is not None:
        return as_result(out)
    return aggregate((1 - y) * yhat - logsigmoid(yhat), agg, xp)


@quiet
def kldivergence(yhat: Any, y: Any, /, *, axis: Axis = -1, agg: Agg = "mean", eps: Any = None) -> Any:
    """Kullback-Leibler divergence KL(y ‖ ŷ) (Flux's ``kldivergence``).

    ``agg(sum(xlogx.(y); dims)) + crossentropy(ŷ, y; dims, agg, eps)``

    ``agg`` is applied to the two terms separately and the results are added (so a
    callable ``agg`` is called twice). Defaults: ``axis=-1``, ``agg="mean"``, ``eps`` =
    machine epsilon of ŷ's float type; with it, KL(p, p) is about -4e-16, not 0.

    >>> import numpy as np
    >>> p1, p2 = np.array([[1.0, 0.0], [0.0, 1.0]]), np.full((2, 2), 0.5)
    >>> round(float(kldivergence(p2, p1)), 12)
    0.69314718056
    >>> float(kldivergence(p2, p2, eps=0))
    0.0
    """
    check_agg(agg)
    axis = _axis(axis)
    xp, yhat_, y_, _ = prepare(yhat, y)
    yf = to_float(y_, xp)
    entropy = aggregate(xp.sum(_xlogy(yf, yf, xp, "kldivergence: y"), axis=axis, keepdims=True), agg, xp)
    return as_result(entropy + _crossentropy(yhat_, y_, axis, agg, eps, xp))


@quiet
def binary_focal_loss(yhat: Any, y: Any, /, *, agg: Agg = "mean", gamma: Any = 2, eps: Any = None) -> Any:
    """Binary focal loss (Flux's ``binary_focal_loss``, Lin et al. 2017), elementwise.

    ``ŷε = ŷ .+ eps; p_t = y .* ŷε + (1 .- y) .* (1 .- ŷε); agg(@. -(1 - p_t)^gamma * log(p_t))``

    Defaults: ``gamma=2`` (an integer stays an integer power; other values take ŷ's
    float type), ``agg="mean"`` over all elements, ``eps`` = machine epsilon of ŷ's
    float type. Note that eps is subtracted on the negative class (``1 - ŷ - eps``),
    unlike binarycrossentropy. ``p_t < 0`` raises ``DomainError`` (NaN under jit). The
    removed keywords ``ϵ``/``γ`` raise ``TypeError``.

    >>> import numpy as np
    >>> yhat = np.array([[0.6, 0.4], [0.3, 0.7]])
    >>> y = np.array([[1, 0], [0, 1]])
    >>> float(binary_focal_loss(yhat, y))
    0.05691642237852222
    """
    check_agg(agg)
    xp, yhat, y, _ = prepare(yhat, y)
    eps = default_eps(eps, yhat, xp)
    gamma = _gamma(gamma, yhat, xp)
    ye = yhat + eps
    p_t = y * ye + (1 - y) * (1 - ye)
    check_domain(p_t < 0, f"binary_focal_loss: {_NEG_LOG}: p_t has a negative entry", p_t)
    ce = -xp.log(p_t)
    w = _pow(1 - p_t, gamma)
    return aggregate(ce if w is None else w * ce, agg, xp)


@quiet
def focal_loss(yhat: Any, y: Any, /, *, axis: Axis = -1, agg: Agg = "mean", gamma: Any = 2,
               eps: Any = None, ϵ: Any = None, γ: Any = None) -> Any:
    """Multi-class focal loss (Flux's ``focal_loss``, Lin et al. 2017).

    ``ŷε = ŷ .+ eps; agg(sum(@. -y * (1 - ŷε)^gamma * log(ŷε); dims))``

    Defaults: ``axis=-1``, ``agg="mean"`` over samples, ``gamma=2`` (integer power),
    ``eps`` = machine epsilon of ŷ's float type. ``gamma=0`` gives crossentropy. As in
    Flux, the keywords ``ϵ`` and ``γ`` are accepted and **ignored**. A plain product
    (not xlogy): with ``eps=0`` a zero prediction in a non-target class gives NaN.

    >>> import numpy as np
    >>> yhat = np.array([[0.4, 0.5, 0.1], [0.2, 0.5, 0.3]])
    >>> y = np.array([[1, 0, 0], [0, 0, 1]])
    >>> round(float(focal_loss(yhat, y)), 14)
    0.4599056687972
    """
    check_agg(agg)
    axis = _axis(axis)
    xp, yhat, y, _ = prepare(yhat, y)
    eps = default_eps(eps, yhat, xp)
    gamma = _gamma(gamma, yhat, xp)
    ye = yhat + eps
    check_domain(ye < 0, f"focal_loss: {_NEG_LOG}: ŷ + eps has a negative entry", ye)
    w = _pow(1 - ye, gamma)
    t = -y if w is None else -y * w
    return aggregate(xp.sum(t * xp.log(ye), axis=axis, keepdims=True), agg, xp)


@quiet
def label_smoothing(y: Any, alpha: Any, /, *, axis: int | None = -1) -> Any:
    """Label smoothing of one-hot (``axis=-1``) or binary (``axis=None``) targets
    (Flux's ``label_smoothing``, with ``dims=1`` ↔ ``axis=-1`` and ``dims=0`` ↔ ``axis=None``).

    ``axis=-1``: ``y .* (1 - α) .+ α * dtype(1/n)`` with ``n = y.shape[-1]`` (the number of
    classes; a whole vector counts as one distribution, a number as n = 1).
    ``axis=None``: ``y .* (1 - α) .+ α / 2``.

    ``0 < alpha < 1`` strictly, else ``ArgumentError``; any other axis raises
    ``ArgumentError``. The result dtype follows Julia's promotion: a float ``y`` keeps its
    dtype (a Python-float α is weak); a bool/int ``y`` takes α's dtype when α is a NumPy or
    array scalar (``np.float32(0.15)`` gives float32) and float64 for a Python float.

    >>> import numpy as np
    >>> y = np.array([[0, 1], [1, 0]], dtype=bool)
    >>> label_smoothing(y, 0.2)
    array([[0.1, 0.9],
           [0.9, 0.1]])
    >>> label_smoothing(y, np.float32(0.2)).dtype
    dtype('float32')
    """
    if isinstance(alpha, (list, tuple)) or alpha is None:
        raise TypeError(f"alpha must be a number, got {type(alpha).__name__}")
    xp, (y,) = asarrays(y)
    if is_eager(alpha) and not (0 < alpha < 1):
        raise ArgumentError(f"α must be between 0 and 1 (got alpha = {alpha})")
    if axis not in (-1, None):
        raise ArgumentError("`axis` should be either -1 (Flux's dims=1) or None (dims=0); "
                            f"got {axis!r}")
    if is_array(y) and xp.isdtype(y.dtype, "real floating"):
        dt = y.dtype
    elif str(getattr(alpha, "dtype", "")).rsplit(".", 1)[-1] in ("float16", "float32", "float64"):
        # A typed α (np.float32(0.2), a 0-d tensor) decides, like Julia's 0.2f0.
        dt = getattr(xp, str(alpha.dtype).rsplit(".", 1)[-1])
    else:
        dt = xp.float64
    y = to_float(y, xp, dt) if is_array(y) else xp.asarray(float(y), dtype=dt)
    dev = device_of(y)
    a = xp.asarray(float(alpha), dtype=dt, device=dev) if not is_array(alpha) or isinstance(alpha, np.generic) else xp.astype(alpha, dt)
    if axis is None:
        return as_result(y * (1 - a) + a * 0.5)
    n = y.shape[-1] if y.ndim >= 1 else 1
    return as_result(y * (1 - a) + a * xp.asarray(1 / n, dtype=dt, device=dev))
