"""Numerically careful element-wise and reduction helpers used by the losses.

Written once against the array API (``xp = namespace(...)``). Each function follows
NNlib/Flux's numbers (max-shifted softmax, Flux's ``xlogy`` zero rule) and keeps
gradients finite where a ``where`` hides a non-finite branch ("double where": the
dangerous input is replaced *before* the unsafe operation, so the unused branch never
produces an Inf or NaN that autodiff would multiply by zero).

Native kernels (``torch.nn.functional.log_softmax`` ...) are registered as fast paths in
:mod:`fluxtrain._backend.fast` and used only where they give the same numbers; the
generic version is the reference and is what :func:`fast.disabled` tests against.

Integer and bool inputs compute in float64 (Julia's ``float(Int) = Float64``); float
inputs keep their dtype (float32 in, float32 out).
"""
from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from . import _ARRAY_TYPES, asarrays, check_domain, device_of, is_array, is_eager, is_inexact_dtype
from . import fast

__all__ = [
    "quiet", "to_float", "as_result", "stop_gradient", "softmax", "logsoftmax", "logsumexp", "sigmoid",
    "logsigmoid", "softplus", "xlogy", "xlogx",
]

_NEG_LOG_MSG = ("log was called with a negative real argument "
                "(Julia's DomainError; use complex numbers for a complex result)")


def quiet(fn):
    """Decorator: NumPy computes log(0) = -Inf, Inf - Inf = NaN, ... without
    RuntimeWarnings, as Julia does (these values are documented results, and negative
    logs are reported by DomainError instead). No effect on other backends."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if args and type(args[0]) in _ARRAY_TYPES and type(args[0]) is not np.ndarray:
            return fn(*args, **kwargs)  # a torch/JAX first argument: no NumPy maths follows
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return fn(*args, **kwargs)
    return wrapper


def to_float(x: Any, xp, dtype: Any = None) -> Any:
    """``x`` as an array of a real floating dtype.

    Python numbers become 0-d arrays; float arrays keep their dtype; integer and bool
    arrays become ``dtype`` (default float64, Julia's ``float(Int)``).
    """
    if not is_array(x):
        if isinstance(x, complex):
            return xp.asarray(x)
        x = xp.asarray(float(x), dtype=xp.float64 if dtype is None else dtype)
        return x
    if is_inexact_dtype(x.dtype, xp):
        return x
    return xp.astype(x, xp.float64 if dtype is None else dtype)


def as_result(x: Any) -> Any:
    """A NumPy scalar (what NumPy's reductions of 0-d maths return) as a 0-d array, so
    every backend returns arrays; other values unchanged."""
    if isinstance(x, np.generic):
        return np.asarray(x)
    return x


def stop_gradient(x: Any) -> Any:
    """``x`` with autodiff cut (torch ``detach``, ``jax.lax.stop_gradient``); NumPy as is."""
    mod = type(x).__module__
    if mod.startswith("torch"):
        return x.detach()
    if mod.startswith("jax"):
        import jax
        return jax.lax.stop_gradient(x)
    return x


def _prep(x: Any, fname: str):
    if isinstance(x, (bool, int, float, complex)) and fname in ("softmax", "logsoftmax"):
        from .._errors import ArgumentError
        raise ArgumentError(f"{fname}(x) called with a number, but it expects an array")
    xp, (x,) = asarrays(x)
    return xp, to_float(x, xp)


def _shifted(x: Any, xp, axis) -> Any:
    """``x - max(x, axis)``, with NNlib's rule for a +Inf maximum: the +Inf entries
    give 0 (so k of them share the mass equally) and the others -Inf."""
    m = stop_gradient(xp.max(x, axis=axis, keepdims=True))
    inf_max = m == math.inf
    # Replace m before subtracting so that Inf - Inf never appears (double where).
    d = x - xp.where(inf_max, xp.zeros_like(m), m)
    return xp.where(inf_max, xp.where(x == math.inf, xp.zeros_like(d), xp.full_like(d, -math.inf)), d)


@quiet
def softmax(x: Any, axis: int | tuple[int, ...] | None = -1) -> Any:
    """NNlib's ``softmax(x; dims)``: ``exp.(x .- max) ./ sum(exp.(x .- max); dims)``.

    ``axis=-1`` is Flux's ``dims=1`` (classes last, batch first); ``axis=None`` is
    ``dims=:``. A column whose maximum is +Inf puts 1/k on each of its k +Inf entries.
    Integer input gives float64; a Python number raises ``ArgumentError``.

    >>> import numpy as np
    >>> softmax(np.array([1.0, 2.0, 3.0]))
    array([0.09003057, 0.24472847, 0.66524096])
    """
    xp, x = _prep(x, "softmax")
    native = fast.lookup("softmax", xp)
    if native is not None and isinstance(axis, int):
        out = native(x, axis)
        if out is not None:
            return out
    e = xp.exp(_shifted(x, xp, axis))
    return as_result(e / xp.sum(e, axis=axis, keepdims=True))


@quiet
def logsoftmax(x: Any, axis: int | tuple[int, ...] | None = -1) -> Any:
    """NNlib's ``logsoftmax(x; dims)``: ``(x .- max) .- log.(sum(exp.(x .- max); dims))``.

    Stable for large logits (finite for ±1e4 in float32). Entries not equal to +Inf in a
    slice whose maximum is +Inf give -Inf.

    >>> import numpy as np
    >>> logsoftmax(np.array([0.0, 0.0]))
    array([-0.69314718, -0.69314718])
    """
    xp, x = _prep(x, "logsoftmax")
    return as_result(_logsoftmax(x, xp, axis))


def _logsoftmax(x: Any, xp, axis) -> Any:
    """logsoftmax of a float array already converted (the losses call this directly)."""
    native = fast.lookup("logsoftmax", xp)
    if native is not None and isinstance(axis, int):
        out = native(x, axis)
        if out is not None:
            return out
    d = _shifted(x, xp, axis)
    return d - xp.log(xp.sum(xp.exp(d), axis=axis, keepdims=True))


@quiet
def logsumexp(x: Any, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Any:
    """NNlib's ``logsumexp(x; dims = :)``: ``max + log(sum(exp(x - max)))``, stable.

    A non-finite maximum (±Inf, NaN) is returned as is.

    >>> import numpy as np
    >>> float(logsumexp(np.array([1000.0, 1000.0])))
    1000.6931471805599
    """
    xp, (x,) = asarrays(x)
    x = to_float(x, xp)
    m = stop_gradient(xp.max(x, axis=axis, keepdims=True))
    finite = xp.isfinite(m)
    m_safe = xp.where(finite, m, xp.zeros_like(m))
    s = m_safe + xp.log(xp.sum(xp.exp(x - m_safe), axis=axis, keepdims=True))
    out = xp.where(finite, s, m)
    if not keepdims:
        if axis is None:
            out = xp.reshape(out, ())
        else:
            out = xp.squeeze(out, axis=axis)
    return as_result(out)


def _neg_abs(x: Any, xp) -> Any:
    # -|x| through where (not abs) so the derivative at 0 is -1 from the x >= 0 side and
    # sigmoid/softplus get the right gradient (1/4, 1/2) at exactly 0.
    return xp.where(x >= 0, -x, x)


@quiet
def sigmoid(x: Any) -> Any:
    """NNlib's ``σ``: ``1/(1+exp(-x))``, evaluated stably with ``t = exp(-|x|)`` as
    ``1/(1+t)`` for ``x >= 0`` and ``t/(1+t)`` otherwise (elementwise).

    >>> import numpy as np
    >>> sigmoid(np.array([0.0, 2.0]))
    array([0.5       , 0.88079708])
    """
    xp, x = _prep(x, "sigmoid")
    native = fast.lookup("sigmoid", xp)
    if native is not None:
        return native(x)
    t = xp.exp(_neg_abs(x, xp))
    return as_result(xp.where(x >= 0, 1 / (1 + t), t / (1 + t)))


@quiet
def softplus(x: Any) -> Any:
    """NNlib's ``softplus``: ``log(1+exp(x))`` as ``max(x, 0) + log1p(exp(-|x|))``
    (the same numbers as NNlib's two-branch form, no overflow).

    >>> import numpy as np
    >>> softplus(np.array([0.0, 1000.0])).tolist()
    [0.6931471805599453, 1000.0]
    """
    xp, x = _prep(x, "softplus")
    pos = xp.where(x >= 0, x, xp.zeros_like(x))
    return as_result(pos + xp.log1p(xp.exp(_neg_abs(x, xp))))


@quiet
def logsigmoid(x: Any) -> Any:
    """NNlib's ``logσ``: ``-softplus(-x)``, finite for large negative ``x``.

    >>> import numpy as np
    >>> logsigmoid(np.array([0.0, -1000.0])).tolist()
    [-0.6931471805599453, -1000.0]
    """
    xp, x = _prep(x, "logsigmoid")
    native = fast.lookup("logsigmoid", xp)
    if native is not None:
        return native(x)
    return as_result(-softplus(-x))


def _xlogy(x: Any, y: Any, xp, what: str = "y") -> Any:
    """xlogy on arrays already converted (``x`` float, ``y`` float); see :func:`xlogy`."""
    if not is_array(x):
        x = xp.asarray(x, dtype=y.dtype, device=device_of(y))
    neg = y < 0
    check_domain(neg, f"{_NEG_LOG_MSG}: {what} has a negative entry", x, y)
    # Where x == 0 and log(y) would be -Inf/Inf/NaN, take log(1) = 0 instead: the value is
    # Flux's 0 and both partials stay finite (d/dy = x/y = 0; d/dx = log(y) where finite).
    # A negative y is left alone, so that under jit it gives NaN (never a silent 0).
    fix = (x == 0) & ~((y > 0) & (y < math.inf)) & ~neg
    y_safe = xp.where(fix, xp.ones_like(y), y)
    return x * xp.log(y_safe)


@quiet
def xlogy(x: Any, y: Any) -> Any:
    """Flux's ``xlogy(x, y)``: ``x * log(y)``, but 0 wherever ``x == 0`` (even when
    ``log(y)`` is -Inf or NaN).

    A negative ``y`` raises ``DomainError`` (even where ``x == 0``, like Julia's ``log``)
    when the backend runs eagerly; under ``jax.jit`` it gives NaN.
    NaN in ``x``, or in ``y`` where ``x != 0``, propagates. Gradients: ``∂/∂x = log(y)``,
    ``∂/∂y = x/y``, finite (0) where ``x == 0``.

    >>> float(xlogy(2, 3))
    2.1972245773362196
    >>> float(xlogy(0, 0.0))
    0.0
    """
    xp, (x, y) = asarrays(x, y)
    y = to_float(y, xp)
    x = to_float(x, xp, y.dtype) if not xp.isdtype(y.dtype, "complex floating") else x
    return as_result(_xlogy(x, y, xp))


@quiet
def xlogx(x: Any) -> Any:
    """Flux's ``xlogx(x) = xlogy(x, x)``: ``x * log(x)``, 0 at ``x == 0``.

    >>> float(xlogx(0))
    0.0
    >>> float(xlogx(2))
    1.3862943611198906
    """
    xp, (x,) = asarrays(x)
    x = to_float(x, xp)
    return as_result(_xlogy(x, x, xp, "x"))


# ---------------------------------------------------------------------------------------
# Native fast paths. Each returns None to fall back to the generic version. They are used
# only where they agree with the generic numbers (tests compare under fast.disabled()).

def _torch_fixup(out, x):
    # Native kernels give NaN for a +Inf/-Inf maximum where NNlib does not; redo those
    # inputs generically (eager only: a value check inside torch.compile would break it).
    import torch
    if not is_eager(x):
        return None
    if bool(torch.isnan(out).any()):
        return None
    return out


@fast.register("softmax", "torch")
def _softmax_torch(x, axis):
    import torch
    if not x.dtype.is_floating_point:
        return None
    return _torch_fixup(torch.softmax(x, dim=axis), x)


@fast.register("logsoftmax", "torch")
def _logsoftmax_torch(x, axis):
    import torch
    if not x.dtype.is_floating_point:
        return None
    return _torch_fixup(torch.log_softmax(x, dim=axis), x)


@fast.register("sigmoid", "torch")
def _sigmoid_torch(x):
    import torch
    return torch.sigmoid(x)


@fast.register("logsigmoid", "torch")
def _logsigmoid_torch(x):
    import torch
    return torch.nn.functional.logsigmoid(x)
