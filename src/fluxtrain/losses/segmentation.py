"""Segmentation losses: dice_coeff_loss, tversky_loss. No ``agg``: they sum over every
element and return one number (a 0-d array)."""
from __future__ import annotations

from typing import Any

from .._backend.math import as_result
from .._backend.math import quiet
from .utils import float_param, prepare

__all__ = ["dice_coeff_loss", "tversky_loss"]


@quiet
def dice_coeff_loss(yhat: Any, y: Any, /, *, smooth: Any = 1) -> Any:
    """Dice coefficient loss (Flux's ``dice_coeff_loss``, Milletari et al. 2016).

    ``1 - (2 * sum(y .* ŷ) + smooth) / (sum(y .^ 2) + sum(ŷ .^ 2) + smooth)``

    Sums run over all elements. ``smooth = 1`` by default, converted to ŷ's float type.
    There is no absolute value, although Flux's docstring writes ``|ŷ ⊙ y|``.

    >>> import numpy as np
    >>> float(dice_coeff_loss(np.array([1.1, 2.1, 3.1]), np.array([1, 2, 3])))
    0.000992391663909964
    """
    xp, yhat, y, _ = prepare(yhat, y)
    s = float_param(smooth, yhat, xp)
    return as_result(1 - (2 * xp.sum(y * yhat) + s) / (xp.sum(y * y) + xp.sum(yhat * yhat) + s))


@quiet
def tversky_loss(yhat: Any, y: Any, /, *, beta: Any = 0.7, β: Any = None) -> Any:
    """Tversky loss (Flux's ``tversky_loss``, Salehi et al. 2017); ``beta=0.5`` is dice.

    ``num = sum(y .* ŷ) + 1; den = sum(y .* ŷ + β * (1 .- y) .* ŷ + (1 - β) * y .* (1 .- ŷ)) + 1; 1 - num / den``

    This is Flux's *code* formula: ``beta`` (default 0.7, converted to ŷ's float type)
    weights the false positives ``(1 - y) ⊙ ŷ`` and ``1 - beta`` the false negatives,
    the opposite of Flux's docstring. The smoothing constant is a fixed 1. As in Flux, a
    keyword ``β`` is accepted and **ignored**.

    >>> import numpy as np
    >>> yhat, y = np.array([[0.0, 1.4, 0.5, 1.2]]), np.array([[1.0, 0.5, 0.3, 2.4]])
    >>> float(tversky_loss(yhat, y))
    -0.06772009029345383
    """
    xp, yhat, y, _ = prepare(yhat, y)
    b = float_param(beta, yhat, xp)
    tp = y * yhat
    num = xp.sum(tp) + 1
    den = xp.sum(tp + (b * (1 - y)) * yhat + ((1 - b) * y) * (1 - yhat)) + 1
    return as_result(1 - num / den)
