"""Regression losses: mae, mse, msle, huber_loss, poisson_loss (elementwise; ``agg`` sees
an array of the broadcast shape of ŷ and y)."""
from __future__ import annotations

from typing import Any

from .._backend import check_domain
from .._backend.math import _xlogy
from .._backend.math import quiet
from .utils import NEG_LOG as _NEG_LOG, Agg, aggregate, check_agg, default_eps, float_param, prepare

__all__ = ["mae", "mse", "msle", "huber_loss", "poisson_loss"]



@quiet
def mae(yhat: Any, y: Any, /, *, agg: Agg = "mean") -> Any:
    """Mean absolute error (Flux's ``mae``).

    ``agg(abs.(ŷ .- y))``

    ``agg`` defaults to ``"mean"`` over all elements; ``"sum"``, ``"none"`` or a
    callable are accepted.

    >>> import numpy as np
    >>> float(mae(np.array([1.1, 1.9, 3.1]), np.array([1, 2, 3])))
    0.10000000000000009
    """
    check_agg(agg)
    xp, yhat, y, _ = prepare(yhat, y)
    return aggregate(xp.abs(yhat - y), agg, xp)


@quiet
def mse(yhat: Any, y: Any, /, *, agg: Agg = "mean") -> Any:
    """Mean squared error (Flux's ``mse``).

    ``agg(abs2.(ŷ .- y))``: the squared modulus, so complex inputs give a real loss.

    >>> import numpy as np
    >>> float(mse(np.array([1.1, 1.9, 3.1]), np.array([1, 2, 3])))
    0.010000000000000018
    >>> float(mse(0 + 0j, 1 + 1j))
    2.0
    """
    check_agg(agg)
    xp, yhat, y, _ = prepare(yhat, y)
    d = yhat - y
    if xp.isdtype(d.dtype, "complex floating"):
        sq = xp.real(d * xp.conj(d))  # re² + im², exactly like Julia's abs2
    else:
        sq = d * d
    return aggregate(sq, agg, xp)


@quiet
def msle(yhat: Any, y: Any, /, *, agg: Agg = "mean", eps: Any = None) -> Any:
    """Mean squared logarithmic error (Flux's ``msle``); penalises under-estimation more.

    ``agg((log.((ŷ .+ eps) ./ (y .+ eps))) .^ 2)``

    The log of the *ratio* is taken, as Flux does. ``eps`` defaults to the machine
    epsilon of ŷ's float type. A negative ratio raises ``DomainError`` (NaN under
    ``jax.jit``).

    >>> import numpy as np
    >>> print(msle(np.array([1.1, 2.2, 3.3], dtype=np.float32), np.array([1, 2, 3])))
    0.009084041
    """
    check_agg(agg)
    xp, yhat, y, _ = prepare(yhat, y)
    eps = default_eps(eps, yhat, xp)
    r = (yhat + eps) / (y + eps)
    check_domain(r < 0, f"msle: {_NEG_LOG}: (ŷ + eps) / (y + eps) has a negative entry", r)
    lr = xp.log(r)
    return aggregate(lr * lr, agg, xp)


@quiet
def huber_loss(yhat: Any, y: Any, /, *, agg: Agg = "mean", delta: Any = 1) -> Any:
    """Huber loss (Flux's ``huber_loss``), quadratic for small errors, linear beyond.

    ``e = abs.(ŷ .- y); agg(0.5 .* e.^2 .* (e .< δ) .+ δ .* (e .- 0.5δ) .* (1 .- (e .< δ)))``

    ``delta = 1`` by default, converted to ŷ's float type. As in Flux the two branches
    are blended arithmetically, so ``delta=inf`` gives NaN; the branch mask carries no
    gradient. The removed keyword ``δ`` raises ``TypeError``.

    >>> import numpy as np
    >>> float(huber_loss(np.array([1.1, 2.1, 3.1]), np.array([1, 2, 3])))
    0.005000000000000009
    >>> float(huber_loss(np.array([1.1, 2.1, 3.1]), np.array([1, 2, 3]), delta=0.05))
    0.003750000000000005
    """
    check_agg(agg)
    xp, yhat, y, _ = prepare(yhat, y)
    delta = float_param(delta, yhat, xp)
    e = xp.abs(yhat - y)
    quad = e < delta
    # Julia's Bool mask is a strong zero in e² .* mask (an Inf error stays out of the
    # quadratic term); the linear term's (1 - mask) is an Int, so no protection there.
    q = xp.where(quad, e * e, xp.zeros_like(e)) * 0.5
    lin = delta * (e - 0.5 * delta) * (1 - xp.astype(quad, e.dtype))
    return aggregate(q + lin, agg, xp)


@quiet
def poisson_loss(yhat: Any, y: Any, /, *, agg: Agg = "mean") -> Any:
    """Poisson loss (Flux's ``poisson_loss``) for count data; ŷ is the predicted rate.

    ``agg(ŷ .- xlogy.(y, ŷ))``

    The mean is over all elements (the docstring's ``sum(...)/size(y, 2)`` in Flux is
    stale). ``ŷ < 0`` raises ``DomainError`` even where ``y == 0`` (NaN under ``jax.jit``).

    >>> import numpy as np
    >>> float(poisson_loss(np.array([1, 3, 3]), np.array([1, 2, 3])))
    0.5023128522198171
    """
    check_agg(agg)
    xp, yhat, y, _ = prepare(yhat, y)
    return aggregate(yhat - _xlogy(y, yhat, xp, "poisson_loss: ŷ"), agg, xp)
