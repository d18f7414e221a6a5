"""Margin-based losses: hinge_loss, squared_hinge_loss, siamese_contrastive_loss
(elementwise; ``agg`` sees an array of the broadcast shape of ŷ and y)."""
from __future__ import annotations

import numbers
from typing import Any

from .._backend import is_eager
from .._errors import DomainError
from .._backend.math import quiet
from .utils import Agg, aggregate, check_agg, prepare

__all__ = ["hinge_loss", "squared_hinge_loss", "siamese_contrastive_loss"]


def _relu(x: Any, xp) -> Any:
    # max(0, x) that propagates NaN like Julia's max (a where(x > 0, ...) would not).
    return xp.maximum(x, xp.zeros_like(x))


@quiet
def hinge_loss(yhat: Any, y: Any, /, *, agg: Agg = "mean") -> Any:
    """Hinge loss for labels y in {-1, +1} (Flux's ``hinge_loss``), elementwise.

    ``agg(max.(0, 1 .- ŷ .* y))``

    ``agg="mean"`` over all elements (Flux's docstring formula ``sum(...)/size(y, 2)`` is
    stale). Numbers are accepted for both arguments.

    >>> import numpy as np
    >>> float(hinge_loss(np.array([0.1, 0.3, 1.0, 1.5]), np.array([1, -1, 1, 1])))
    0.55
    >>> float(hinge_loss(0.3, -1))
    1.3
    """
    check_agg(agg)
    xp, yhat, y, _ = prepare(yhat, y)
    return aggregate(_relu(1 - yhat * y, xp), agg, xp)


@quiet
def squared_hinge_loss(yhat: Any, y: Any, /, *, agg: Agg = "mean") -> Any:
    """Squared hinge loss for labels y in {-1, +1} (Flux's ``squared_hinge_loss``).

    ``agg((max.(0, 1 .- ŷ .* y)) .^ 2)``

    >>> import numpy as np
    >>> float(squared_hinge_loss(np.array([0.1, 0.3, 1.0, 1.5]), np.array([1, -1, 1, 1])))
    0.625
    """
    check_agg(agg)
    xp, yhat, y, _ = prepare(yhat, y)
    m = _relu(1 - yhat * y, xp)
    return aggregate(m * m, agg, xp)


@quiet
def siamese_contrastive_loss(yhat: Any, y: Any, /, *, agg: Agg = "mean", margin: Any = 1) -> Any:
    """Contrastive loss for siamese networks (Flux's ``siamese_contrastive_loss``).

    ``agg(@. (1 - y) * ŷ^2 + y * max(0, margin - ŷ)^2)``

    ŷ is a distance; ``y = 1`` marks a dissimilar pair (the margin term applies). Defaults:
    ``margin=1`` (used as given: a Python number does not change ŷ's dtype), ``agg="mean"``
    over all elements. ``margin < 0`` raises ``DomainError`` (after the size check). y
    outside {0, 1} is not rejected. A bool y is a strong zero in ``y * max(...)^2``.

    >>> import numpy as np
    >>> float(siamese_contrastive_loss(np.array([0.6, 0.4, 0.1, 0.2, 0.7]), np.array([1, 0, 0, 1, 1])))
    0.21200000000000005
    """
    check_agg(agg)
    xp, yhat, y, ybool = prepare(yhat, y)
    if isinstance(margin, numbers.Real) or is_eager(margin):
        if bool(margin < 0):
            raise DomainError(f"Margin must be non-negative (got margin = {margin})")
    m = _relu(margin - yhat, xp)
    far = y * (m * m)
    if ybool:
        far = xp.where(y != 0, far, xp.zeros_like(far))
    return aggregate((1 - y) * (yhat * yhat) + far, agg, xp)
