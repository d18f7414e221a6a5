"""The rule protocol and the per-array helpers every rule uses (no tree code here).

A rule is a small frozen dataclass holding hyper-parameters, with

* ``init(x) -> state``: the state for one parameter array ``x`` (arrays, tuples, ``None``);
* ``apply(state, x, g) -> (state, delta)``: pure per-array maths; the caller does
  ``x <- x - delta``. ``apply`` never mutates its inputs.

``delta`` is normally an array. Three special values let composite rules express what
Optimisers.jl does with ``nothing`` and in-place writes, while staying jit-able:

* ``None``: no change to ``x`` this step (``AccumGrad`` between accumulations; eager only);
* :class:`Masked` ``(delta, active)``: apply ``delta`` only where the 0-d boolean ``active``
  is true (the traced form of ``None``, used under ``jax.jit``);
* :class:`Replace` ``(value)``: set ``x`` to ``value`` (``MixedPrecision`` copies its master
  weights back).

Hyper-parameters are Python floats. :func:`caster` rounds them to the parameter's dtype and
gives them back as Python floats (exactly representable in that dtype), so they combine with
arrays as weak scalars on every backend and float32 stays float32, as ``T(o.eta)`` does in
Optimisers.jl. Scalar arithmetic such as ``1 - beta`` is done in Python float64 and rounded
once with the same caster: for +, -, *, / and sqrt that equals the float32 (or float16)
operation exactly, because float64 has more than twice the precision.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar, NamedTuple

import numpy as np

from .._backend import device_of, fast, is_array, is_eager, is_jax, namespace
from .._errors import ArgumentError, DomainError

__all__ = ["Rule", "Masked", "Replace", "caster", "eps_cast", "scalar", "zeros", "full", "tree_where"]


class Masked(NamedTuple):
    """A delta applied only where the 0-d boolean array ``active`` is true."""

    delta: Any
    active: Any


class Replace(NamedTuple):
    """A delta meaning "set the parameter to ``value``" (not ``x - delta``)."""

    value: Any


@lru_cache(maxsize=None)
def _np_dtype(name: str) -> np.dtype:
    name = name.rsplit(".", 1)[-1]
    if name == "bfloat16":
        try:
            import ml_dtypes  # shipped with JAX
            return np.dtype(ml_dtypes.bfloat16)
        except ImportError:  # pragma: no cover - rounding then is float32's
            return np.dtype(np.float32)
    return np.dtype(name)


class _Caster:
    """``T(v)``: ``v`` rounded to the dtype ``T``, returned as a Python float."""

    __slots__ = ("type", "is_half", "dtype")

    def __init__(self, dtype) -> None:
        npd = _np_dtype(str(dtype))
        self.type = npd.type
        self.is_half = npd.itemsize <= 2
        self.dtype = dtype

    def __call__(self, v: Any) -> Any:
        if is_array(v):
            # an array hyper-parameter (e.g. a Scheduler's value traced under jax.jit): a
            # 0-d array of the parameter dtype, so the rule's maths stays in that dtype
            dt = _np_dtype(self.dtype) if isinstance(self.dtype, str) else self.dtype
            return namespace(v).astype(v, dt)
        if self.is_half and abs(v) > 6.5e4:  # overflows to inf, as Julia's Float16 does
            with np.errstate(over="ignore"):
                return float(self.type(v))
        return float(self.type(v))


@lru_cache(maxsize=64)
def _caster_for(dtype_name: str) -> _Caster:
    """The caster for a dtype given by name (kept for fast kernels that use it)."""
    return _Caster(dtype_name)


_CASTERS: dict = {}


def caster(x: Any) -> _Caster:
    """The rounding function ``T`` for the dtype of array ``x`` (Julia's ``T(...)``)."""
    dt = x.dtype
    c = _CASTERS.get(dt)  # dtype objects of every backend are hashable
    if c is None:
        c = _CASTERS[dt] = _Caster(dt)
    return c


def eps_cast(T: _Caster, e: float) -> float:
    """Optimisers' ``_eps(T, e)``: ``T(e)``, but at least ``T(1e-7)`` for 16-bit floats so a
    small epsilon is not rounded to zero (an ``e`` of exactly 0 stays 0)."""
    if not T.is_half:
        return T(e)
    if is_array(e):  # traced: no Python branch on its value
        xp = namespace(e)
        return xp.where(e == 0, T(e), xp.maximum(T(e), T(1e-7)))
    return T(e) if e == 0 else max(T(1e-7), T(e))


def scalar(x: Any, v: Any, dtype=None) -> Any:
    """A 0-d array of value ``v`` with ``x``'s dtype (or ``dtype``) and device."""
    xp = namespace(x)
    dt = x.dtype if dtype is None else dtype
    if is_jax(xp):  # no device: a committed array would make the next jit call recompile
        return xp.full((), v, dtype=dt)
    return xp.full((), v, dtype=dt, device=device_of(x))


def zeros(x: Any) -> Any:
    """Zeros like ``x``: a rule's state array (where a backend allocates state its own way,
    as torch's large CPU tensors on huge pages, it does so here)."""
    xp = namespace(x)
    made = fast.lookup("zeros_like", xp)
    out = None if made is None else made(x)
    return xp.zeros_like(x) if out is None else out


def full(x: Any, v: float) -> Any:
    """``v`` everywhere, like ``x``: a rule's state array (see :func:`zeros`)."""
    xp = namespace(x)
    made = fast.lookup("full_like", xp)
    out = None if made is None else made(x, v)
    return xp.full_like(x, v) if out is None else out


def tree_where(cond: Any, new: Any, old: Any) -> Any:
    """Select ``new`` where the 0-d ``cond`` holds, else ``old``, over a rule-state tree."""
    if new is None or old is None:
        return new
    if isinstance(new, tuple):
        return type(new)(*[tree_where(cond, a, b) for a, b in zip(new, old)]) if hasattr(new, "_fields") \
            else tuple(tree_where(cond, a, b) for a, b in zip(new, old))
    xp = namespace(new)
    return xp.where(cond, new, old)


def concrete(*xs: Any) -> bool:
    """True when array values can be read now (not under ``jax.jit`` tracing)."""
    return is_eager(*xs)


@dataclass(frozen=True)
class Rule:
    """Base class of all optimisation rules (Optimisers.jl's ``AbstractRule``).

    Subclasses are frozen dataclasses whose fields are the hyper-parameters, in Flux's
    positional order and with Flux's keyword names. They define ``init`` and ``apply``;
    nothing else is needed for a rule to work with ``setup``/``update``/``adjust``/saving.

    ``_scalar_state_independent``: set True when every 0-d entry of the state depends only
    on the state's own 0-d entries and the hyper-parameters, never on ``x``, ``g`` or the
    other state (e.g. Adam's ``beta^t``, a step counter; trivially so without 0-d state).
    The JAX fast path then lets Leafs with equal such entries share them (computed once).

    ``_static_fields``: the float fields of a built-in rule that select code paths
    (``ClipNorm``'s ``p``). The JAX fast path passes every other float hyper-parameter of
    the built-in rules to its compiled program as a 0-d array, so they compute with those
    as with any array: no Python branch on their values, and scalar arithmetic only as
    described above (each operation on values already rounded by ``caster`` and rounded
    once), which then equals the same operation on arrays. Of a user's rule (traced when
    it sits in a chain) only ``eta`` is passed so; its other fields stay constants.
    """

    _scalar_state_independent: ClassVar[bool] = False
    _static_fields: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, list):  # tuples keep rules hashable (jit static data)
                object.__setattr__(self, f.name, tuple(v))
        eta = getattr(self, "eta", None)
        if eta is not None and _is_number(eta) and eta < 0:
            raise DomainError(f"{type(self).__name__}: the learning rate cannot be negative, got eta={eta}")

    def init(self, x: Any) -> Any:
        """The state for parameter array ``x`` (``None`` when the rule keeps none)."""
        return None

    def subrules(self) -> tuple:
        """The rules this one applies inside itself (a chain's members, a wrapper's rule);
        empty for a plain rule. Code that asks a question of every rule in a composite
        (can it raise? is its 0-d state shareable?) walks these."""
        return ()

    def apply(self, state: Any, x: Any, g: Any) -> tuple[Any, Any]:
        """``(new_state, delta)`` for parameter ``x`` with gradient ``g``; ``x <- x - delta``."""
        raise NotImplementedError

    def adjust(self, eta: float | None = None, **hyper: Any) -> "Rule":
        """A copy with ``eta`` and/or the named hyper-parameters replaced (unknown names are
        ignored, as in Optimisers.jl)."""
        names = {f.name for f in dataclasses.fields(self)}
        if "lambda" in hyper:  # Flux's keyword; `lambda` is reserved in Python
            hyper["lambda_"] = hyper.pop("lambda")
        changes = {k: v for k, v in hyper.items() if k in names}
        if eta is not None and "eta" in names:
            changes["eta"] = eta
        return dataclasses.replace(self, **changes) if changes else self


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.number))


def check_positive_int(name: str, n: Any) -> None:
    if not isinstance(n, (int, np.integer)) or n <= 0:
        raise ArgumentError(f"{name} must be a positive integer, got {n!r}")
