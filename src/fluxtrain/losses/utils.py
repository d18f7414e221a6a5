"""What every loss shares: the size check, argument preparation and ``agg``."""
from __future__ import annotations

import math
import numbers

import numpy as np
from typing import Any, Callable, Union

from .._backend import asarrays, device_of, eps_for, is_array, is_inexact_dtype
from .._backend.math import as_result, to_float
from .._errors import DimensionMismatch

__all__ = ["check_sizes", "aggregate", "Agg"]

Agg = Union[str, Callable[[Any], Any]]

_AGGS = ("mean", "sum", "none")

# The substance of Julia's DomainError for log of a negative real (shared by the losses).
NEG_LOG = "log was called with a negative real argument"


def check_sizes(yhat: Any, y: Any) -> None:
    """Flux's ``_check_sizes`` in batch-first layout.

    Flux requires ``size(ŷ, d) == size(y, d)`` for every ``d`` up to the larger ndims,
    where a missing Julia dimension counts as 1. Julia's trailing dimensions are Python's
    *leading* ones, so the shorter shape is padded with 1s on the left: ``(3,)`` matches
    ``(1, 3)`` but not ``(3, 1)``. Skipped when either argument is not an array (a
    constant target). Shapes in the message are printed in Python order.
    """
    if not (is_array(yhat) and is_array(y)):
        return
    a, b = yhat.shape, y.shape
    if a == b:
        return
    a, b = tuple(a), tuple(b)
    n = max(len(a), len(b))
    if (1,) * (n - len(a)) + a != (1,) * (n - len(b)) + b:
        raise DimensionMismatch(
            f"loss function expects size(ŷ) = {a} to match size(y) = {b} "
            "(shapes in Python order; leading size-1 dimensions may differ)")


def check_agg(agg: Any) -> None:
    """Raise early for an ``agg`` that is neither callable nor a known string."""
    if isinstance(agg, str):
        if agg not in _AGGS:
            raise ValueError(f"agg must be a callable or one of 'mean', 'sum', 'none'; got {agg!r}")
    elif not callable(agg):
        raise TypeError(f"agg must be a callable or one of 'mean', 'sum', 'none'; got {type(agg).__name__}")


def aggregate(x: Any, agg: Agg, xp) -> Any:
    """``agg(x)``: "mean" (Statistics.mean; NaN for an empty array, like Julia), "sum",
    "none" (Flux's ``identity``) or any callable, which receives the unreduced array.

    ``agg`` must already have passed :func:`check_agg` (every loss checks it first)."""
    if agg == "mean":
        if math.prod(x.shape) == 0:
            # Julia's mean of an empty array is 0/0 = NaN; avoid NumPy's warning.
            return as_result(xp.sum(x) * math.nan)
        return as_result(xp.mean(x))
    if agg == "sum":
        return as_result(xp.sum(x))
    if agg == "none":
        return as_result(x)
    return as_result(agg(x))


def _check_arg(x: Any, name: str) -> None:
    if x is None or isinstance(x, (str, bytes, dict, set)):
        raise TypeError(f"{name} must be an array or a number, got {type(x).__name__}")


def prepare(yhat: Any, y: Any, keep_bool: bool = False):
    """``(xp, ŷ, y, y_was_bool)`` ready for a loss formula.

    Lists become arrays, the sizes are checked (Flux's order: before anything else), ŷ
    becomes floating (integers and bools compute in float64, Julia's ``float(Int)``), and a
    non-float array ``y`` takes ŷ's float dtype, as Julia's promotion does for Int/Bool
    with a float (a bool ``y`` stays bool with ``keep_bool``, for a kernel that reads it as
    labels). A Python-number ``y`` stays a Python number (weak in promotion).
    """
    _check_arg(yhat, "ŷ (the prediction)")
    _check_arg(y, "y (the target)")
    xp, (yhat, y) = asarrays(yhat, y)
    check_sizes(yhat, y)
    yhat = to_float(yhat, xp)
    ybool = False
    if is_array(y):
        ybool = y.dtype == xp.bool
        if not (is_inexact_dtype(y.dtype, xp) or keep_bool and ybool):
            y = xp.astype(y, yhat.dtype)
    return xp, yhat, y, ybool


def default_eps(eps: Any, yhat: Any, xp) -> Any:
    """Flux's ``eps(float(eltype(ŷ)))`` when ``eps`` is None (a Python float: weak)."""
    return eps_for(yhat.dtype, xp) if eps is None else eps


def float_param(v: Any, yhat: Any, xp) -> Any:
    """Flux's ``ofeltype(ŷ, v)``: a hyper-parameter in ŷ's float type.

    Python numbers stay Python floats (weak, so a float32 ŷ keeps float32 arithmetic and
    the value is rounded to float32 at use, as ``Float32(v)`` would be)."""
    if isinstance(v, numbers.Real):
        # Round to ŷ's precision now (an exact Python float afterwards), so that later
        # Python arithmetic such as 0.5 * delta or 1 - beta matches Julia's Float32 maths.
        # (bfloat16 and other types NumPy lacks: left to the backend's own rounding.)
        name = str(yhat.dtype).rsplit(".", 1)[-1]
        with np.errstate(over="ignore"):  # 1e40 -> Float32 is Inf in Julia too, silently
            return float(np.asarray(v, dtype={"float16": np.float16, "float32": np.float32}.get(name, np.float64)))
    return xp.astype(xp.asarray(v, device=device_of(yhat)), yhat.dtype) if not is_array(v) else xp.astype(v, yhat.dtype)
