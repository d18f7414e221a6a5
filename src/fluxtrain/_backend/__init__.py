"""The only place that names array libraries.

Generic code asks for ``xp = namespace(*arrays)`` and writes against the array API
standard. Backend-specific speed lives in :mod:`fluxtrain._backend.fast`, a registry of
kernels keyed by (operation, backend name), looked up by dispatch.

Nothing here imports torch or JAX at module import time: a backend is touched only when
the user's arrays come from it.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np
import array_api_compat as aac

from .._errors import DomainError

__all__ = [
    "namespace", "asarrays", "backend_name", "is_numpy", "is_torch", "is_jax",
    "is_array", "is_writeable", "put", "float_dtype", "eps_for",
    "is_eager", "check_domain", "to_numpy", "device_of", "placement", "is_inexact_dtype",
    "minus",
]


# Both tests below are per-type facts for the supported libraries, and every loss call
# asks them several times: array-api-compat's own checks cost microseconds each (a chain
# of isinstance and module tests), which is most of a small loss call's overhead.
_ARRAY_TYPES: set = set()
_SCALAR_TYPES = frozenset({type(None), bool, int, float, complex, str, bytes, list, tuple, dict})
_NAMESPACES: dict[tuple, Any] = {}


def is_array(x: Any) -> bool:
    """True for an array of a supported library (not Python scalars, lists or None)."""
    t = type(x)
    if t in _ARRAY_TYPES:
        return True
    if t in _SCALAR_TYPES:
        return False
    if aac.is_array_api_obj(x) and not isinstance(x, (bool, int, float, complex)):
        if t is np.ndarray or t.__module__.split(".")[0] in ("torch", "jax", "jaxlib"):
            _ARRAY_TYPES.add(t)
        return True
    return False


def namespace(*xs: Any):
    """The array-API namespace shared by the array arguments (non-arrays are ignored).

    NumPy is the default when no argument is an array. Arrays from two libraries raise a
    ``TypeError`` naming both, instead of a silent conversion.
    """
    key = tuple(map(type, xs))
    xp = _NAMESPACES.get(key)
    if xp is not None:
        return xp
    xp = _namespace(xs)
    if all(t in _ARRAY_TYPES or t in _SCALAR_TYPES for t in key) and len(_NAMESPACES) < 512:
        _NAMESPACES[key] = xp
    return xp


def _namespace(xs: tuple):
    arrays = [x for x in xs if is_array(x)]
    if not arrays:
        return aac.array_namespace(np.empty(0))
    try:
        return aac.array_namespace(*arrays)
    except TypeError:
        kinds = sorted({f"{type(a).__module__}.{type(a).__name__}" for a in arrays})
        raise TypeError(
            "fluxtrain: arguments mix array libraries (" + ", ".join(kinds) + "); "
            "convert them to one backend first") from None


def asarrays(*xs: Any):
    """``(xp, arrays)``: lists/tuples become arrays of the namespace the real arrays use.

    Python scalars stay Python scalars (weakly typed, like Julia numbers in Flux's
    broadcasts); ``None`` stays ``None``.
    """
    xp = namespace(*xs)
    types = tuple(map(type, xs))
    if types and types[0] in _ARRAY_TYPES and types.count(types[0]) == len(types):
        return xp, list(xs)  # arrays of one library, the usual call: nothing to convert
    out = []
    for x in xs:
        if isinstance(x, (list, tuple)) or (isinstance(x, np.ndarray) and not is_numpy(xp)):
            x = xp.asarray(np.asarray(x))
        out.append(x)
    return xp, out


def backend_name(xp) -> str:
    """'numpy', 'torch', 'jax' or the namespace's module name."""
    hit = _NAMES.get(id(xp))
    if hit is not None and hit[0] is xp:
        return hit[1]
    if aac.is_numpy_namespace(xp):
        name = "numpy"
    elif aac.is_torch_namespace(xp):
        name = "torch"
    elif aac.is_jax_namespace(xp):
        name = "jax"
    else:
        name = getattr(xp, "__name__", type(xp).__name__)
    if len(_NAMES) < 64:
        _NAMES[id(xp)] = (xp, name)  # namespaces are modules: few, and kept alive here
    return name


_NAMES: dict[int, tuple] = {}


def is_numpy(xp) -> bool:
    return aac.is_numpy_namespace(xp)


def is_torch(xp) -> bool:
    return aac.is_torch_namespace(xp)


def is_jax(xp) -> bool:
    return aac.is_jax_namespace(xp)


def is_writeable(x: Any) -> bool:
    """Can ``x`` be updated in place? False for JAX arrays and read-only NumPy arrays."""
    return aac.is_writeable_array(x)


def put(dst: Any, value: Any) -> Any:
    """Write ``value`` into ``dst`` in place when ``dst`` is writeable, else return ``value``.

    The one helper for the NumPy/torch-mutate vs JAX-rebind difference: callers always
    use the returned array.
    """
    if is_writeable(dst):
        if "torch" in sys.modules and isinstance(dst, sys.modules["torch"].Tensor):
            import torch
            with torch.no_grad():
                dst.copy_(value)
        else:
            dst[...] = value
        return dst
    return value


_INEXACT: dict = {}


def is_inexact_dtype(dtype, xp) -> bool:
    """``xp.isdtype(dtype, ("real floating", "complex floating"))``, remembered per dtype
    (array-api-compat's torch ``isdtype`` costs microseconds, and losses ask per call)."""
    r = _INEXACT.get(dtype)
    if r is None:
        r = _INEXACT[dtype] = bool(xp.isdtype(dtype, ("real floating", "complex floating")))
    return r


def float_dtype(x: Any, xp) -> Any:
    """Julia's ``float(eltype(x))``: float dtypes stay, integers and bools become float64."""
    if is_array(x):
        dt = x.dtype
        if is_inexact_dtype(dt, xp):
            return dt
        return xp.float64
    return xp.float64  # Python numbers: Julia's Float64


def eps_for(dtype, xp) -> float:
    """Machine epsilon of a float dtype, as a Python float (weak in promotion)."""
    return float(xp.finfo(dtype).eps)


def is_eager(*xs: Any) -> bool:
    """True when values can be inspected now (NumPy, eager torch, concrete JAX arrays).

    False under ``jax.jit``/``jax.grad`` tracing or torch.compile tracing, where a value
    check would force a host sync or fail; such code returns NaN instead of raising.
    """
    for x in xs:
        if not is_array(x):
            continue
        mod = type(x).__module__
        if mod.startswith("jax"):
            import jax
            if isinstance(x, jax.core.Tracer):
                return False
        elif mod.startswith("torch"):
            import torch
            if torch.compiler.is_compiling():
                return False
    return True


def minus(x: Any, delta: Any) -> Any:
    """``x - delta``, the step's last operation, written for the compiler where that pays.

    Traced by JAX, a real-float ``x - delta`` is written ``x + delta * -1``: the same bits
    (IEEE subtraction is the addition of the negation, and ``* -1`` is exact, signed zeros
    included), but XLA:CPU emits a fusion holding no broadcast with its older loop emitter,
    and on 10 M float32 that ran 1.3× slower than a fusion with one (``x - g`` 3.0 ms,
    ``x + g * -1`` 2.3 ms, donated). Momentum's ``x - v`` is such a fusion. Eager arrays
    keep the one operation (two would be two passes); complex ones too (``* -1`` is a
    complex product there, not exact for infinite parts).
    """
    if _traced_real(x):
        return x + delta * -1
    return x - delta


def _traced_real(x: Any) -> bool:
    jax = sys.modules.get("jax")
    if jax is None or not isinstance(x, jax.core.Tracer):
        return False
    return bool(jax.numpy.issubdtype(x.dtype, jax.numpy.floating))


def check_domain(bad: Any, message: str, *arrays: Any) -> None:
    """Raise ``DomainError(message)`` when the boolean array ``bad`` has a True entry.

    Only where the backend runs eagerly (see :func:`is_eager`); traced code skips the
    check and lets the NaN through.
    """
    if not is_eager(bad, *arrays):
        return
    xp = namespace(bad)
    if bool(xp.any(bad)):
        raise DomainError(message)


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy copy/view of any supported array (detached, on the host)."""
    if "torch" in sys.modules and isinstance(x, sys.modules["torch"].Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def device_of(x: Any):
    return aac.device(x)


def placement(x: Any) -> Any:
    """A cheap hashable token of where ``x`` lives, for grouping many arrays per step.

    Arrays with equal tokens are on the same device; unequal tokens may still be (compare
    :func:`device_of` then). None where it cannot be read (JAX tracers). Much cheaper than
    ``device_of`` (torch's ``.device`` builds an object, ~0.5 µs; JAX's walks the sharding,
    ~2 µs), which matters at thousands of arrays per step.
    """
    f = _PLACEMENT.get(type(x))
    if f is None:
        f = _placement_for(x)
    return f(x)


_PLACEMENT: dict[type, Any] = {np.ndarray: lambda x: "cpu"}


def _torch_placement(x: Any) -> Any:
    return "cpu" if x.is_cpu else x.device


def _other_placement(x: Any) -> Any:
    try:
        return x.sharding  # JAX
    except AttributeError:
        try:
            return x.device
        except Exception:  # noqa: BLE001  (tracers)
            return None


def _placement_for(x: Any):
    """The placement reader for ``type(x)``, remembered for array types."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        f = _torch_placement
    else:
        f = _other_placement
    if is_array(x):
        _PLACEMENT[type(x)] = f
    return f
