"""JAX on the CPU: Flux's ``Adam`` step as one custom call into the numba kernels.

XLA:CPU compiles an Adam step (the route's and optax's alike) as three loops per array:
``m``, ``v``, then ``x`` reading both back, since it forms no multi-output fusion there. The
numba kernels of :mod:`fluxtrain._backend.fast_numpy` do the step in one pass over each
array, on all cores. Here a compiled group step hands its arrays to them through XLA's
typed FFI (the handler is a ``ctypes`` callback; the call frame's structures are declared
below): ``x``, ``m`` and ``v`` are donated by the step and aliased to the call's results,
so the kernels write them in place. The running products ``beta^t`` stay in the traced
program (the rule's own code advances them), which also keeps the outputs' layout and
the store's sharing as they are without the call.

Only where nothing can go wrong inside the call: a group of plain ``Adam`` rules (or a
``Scheduler``'s ``Adam`` of the step), float32 or float64 parameters on the CPU, numba
installed, and not turned off with ``FLUXTRAIN_JAX_CUSTOM_CALL=0``. The handler reads buffer addresses and
sizes in one compiled pass (no Python object per array) and builds the kernel's tables
with NumPy; an unexpected failure is reported to XLA as an error, never as success.
"""
from __future__ import annotations

import ctypes
import os
import traceback
from typing import Any

import numpy as np

import jax
import jax.numpy as jnp

from . import fast_numpy

TARGET = "fluxtrain_adam"
_F32, _F64 = 11, 12  # XLA_FFI_DataType
_EXECUTE = 3  # XLA_FFI_ExecutionStage
_METADATA = 1  # XLA_FFI_Extension_Type


class _ExtBase(ctypes.Structure):
    pass


_ExtBase._fields_ = [("struct_size", ctypes.c_size_t), ("type", ctypes.c_int), ("next", ctypes.POINTER(_ExtBase))]


class _Span(ctypes.Structure):  # XLA_FFI_Args / XLA_FFI_Rets
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p), ("size", ctypes.c_int64),
                ("types", ctypes.c_void_p), ("items", ctypes.POINTER(ctypes.c_uint64))]


class _Attrs(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p), ("size", ctypes.c_int64),
                ("types", ctypes.c_void_p), ("names", ctypes.c_void_p), ("attrs", ctypes.c_void_p)]


class _ApiVersion(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p),
                ("major", ctypes.c_int), ("minor", ctypes.c_int)]


class _ErrorArgs(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p),
                ("message", ctypes.c_char_p), ("errc", ctypes.c_int)]


_ErrorCreate = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(_ErrorArgs))


class _Api(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p),
                ("api_version", _ApiVersion), ("internal_api", ctypes.c_void_p), ("error_create", _ErrorCreate)]


class _Metadata(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("api_version", _ApiVersion), ("traits", ctypes.c_uint32)]


class _MetadataExt(ctypes.Structure):
    _fields_ = [("base", _ExtBase), ("metadata", ctypes.POINTER(_Metadata))]


class _CallFrame(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.POINTER(_ExtBase)),
                ("api", ctypes.POINTER(_Api)), ("ctx", ctypes.c_void_p), ("stage", ctypes.c_int),
                ("args", _Span), ("rets", _Span), ("attrs", _Attrs), ("future", ctypes.c_void_p)]


_HANDLER_TYPE = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(_CallFrame))
_STATE: dict[str, Any] = {}  # the registered handler (kept alive) and the compiled readers


def _readers():
    """The compiled ``buffers(addrs) -> (dtypes, data, sizes)`` of the ``XLA_FFI_Buffer`` structs at
    ``addrs`` (``{size_t, ext*, int dtype, void* data, int64 rank, int64* dims}``)."""
    r = _STATE.get("readers")
    if r is not None:
        return r
    import numba
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def at(typingctx, addr, like):
        # a pointer to `like`'s type at integer address `addr` (for numba.carray)
        if not isinstance(addr, types.Integer):
            return None
        sig = types.CPointer(like)(addr, like)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(signature.return_type))
        return sig, codegen

    @numba.njit(cache=True, nogil=True)
    def buffers(addrs):
        n = addrs.size
        dt = np.empty(n, np.int64)
        data = np.empty(n, np.int64)
        sizes = np.empty(n, np.int64)
        for i in range(n):
            a = np.int64(addrs[i])
            dt[i] = numba.carray(at(a + 16, np.int32(0)), 1)[0]
            data[i] = numba.carray(at(a + 24, np.int64(0)), 1)[0]
            rank = numba.carray(at(a + 32, np.int64(0)), 1)[0]
            s = 1
            if rank > 0:  # (a 0-d buffer's dims may be a null pointer)
                dims = numba.carray(at(numba.carray(at(a + 40, np.int64(0)), 1)[0], np.int64(0)), rank)
                for k in range(rank):
                    s *= dims[k]
            sizes[i] = s
        return dt, data, sizes

    r = _STATE["readers"] = buffers
    return r


def _step(frame) -> None:
    """Arguments ``x``, ``g``, ``m``, ``v`` (K each), then ``S`` (K x 6: ``eta``, ``beta1``,
    ``beta2``, ``epsilon``, ``beta1^t``, ``beta2^t`` per array); results ``x``, ``m``, ``v``
    (K each), each aliased to its argument."""
    buffers = _readers()
    n = frame.args.size
    k = (n - 1) // 4
    dt, data, sizes = buffers(np.ctypeslib.as_array(frame.args.items, shape=(n,)))
    # what the kernels will write through these addresses must be what they are
    if (n != 4 * k + 1 or dt[0] not in (_F32, _F64) or not (dt == dt[0]).all() or sizes[4 * k] != 6 * k
            or not all(np.array_equal(sizes[:k], sizes[j * k:(j + 1) * k]) for j in (1, 2, 3))):
        raise TypeError("fluxtrain_adam: unexpected arguments (dtypes, sizes or count)")
    f = np.float32 if dt[0] == _F32 else np.float64
    _, out, _ = buffers(np.ctypeslib.as_array(frame.rets.items, shape=(frame.rets.size,)))
    # results aliased to their arguments: XLA passes the same buffers (copying an argument
    # first where it must survive the call), so the kernels write the results in place
    if not (np.array_equal(out[:k], data[:k]) and np.array_equal(out[k:], data[2 * k:4 * k])):
        raise RuntimeError("fluxtrain_adam: results not aliased to their arguments")
    P = np.stack([data[:k], data[k:2 * k], data[2 * k:3 * k], data[3 * k:4 * k]], axis=1)
    S = np.ctypeslib.as_array(ctypes.cast(int(data[4 * k]), ctypes.POINTER(np.ctypeslib.as_ctypes_type(f))),
                              shape=(k, 6)).copy()
    fast_numpy.adam_at(P, sizes[:k].copy(), S, f)


def _handler(fp):
    try:
        frame = fp.contents
        ext = frame.extension_start
        if ext and ext.contents.type == _METADATA:  # XLA asks the handler's API version once
            md = ctypes.cast(ext, ctypes.POINTER(_MetadataExt)).contents.metadata.contents
            md.api_version.major = frame.api.contents.api_version.major
            md.api_version.minor = frame.api.contents.api_version.minor
            md.traits = 0
            return None
        if frame.stage != _EXECUTE:
            return None
        _step(frame)
        return None
    except BaseException:  # noqa: BLE001 - reported to XLA, which raises it in the caller
        msg = traceback.format_exc().encode("utf-8", "replace")
        try:
            args = _ErrorArgs(ctypes.sizeof(_ErrorArgs), None, msg, 13)  # INTERNAL
            return frame.api.contents.error_create(ctypes.byref(args))
        except BaseException:  # noqa: BLE001
            return None


def _register() -> bool:
    if "handler" in _STATE:
        return _STATE["handler"] is not None
    try:
        if os.environ.get("FLUXTRAIN_JAX_CUSTOM_CALL", "1") == "0":
            raise ImportError("turned off by FLUXTRAIN_JAX_CUSTOM_CALL=0")
        if fast_numpy.kernels() is None:
            raise ImportError("numba")
        _readers()
        h = _HANDLER_TYPE(_handler)
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(ctypes.cast(h, ctypes.c_void_p).value), platform="cpu")
        _STATE["handler"] = h
    except Exception:  # noqa: BLE001 - no numba, or a jax without the typed FFI: XLA's own step
        _STATE["handler"] = None
    return _STATE["handler"] is not None


MIN_ELEMENTS = 1 << 21
"""Groups with fewer elements in all keep XLA's program. Its three passes cost little while
a group's arrays stay in the caches, and the call has a fixed cost (~90 us of Python in
the handler). Adam, 6 arrays, blocked steps on 2 cores: 0.1 M elements 500 against 233 us
(XLA), 1 M 1.16 against 1.05 ms, 2 M 1.6 against 5.4 ms, 10 M 8.9 against 14.7 ms."""


def usable(skeletons: tuple, xs: list) -> bool:
    """Can a group of these rule skeletons on the arrays ``xs`` take the custom call?"""
    if not all(adam_of(sk) is not None for sk in skeletons):
        return False
    x0 = xs[0]
    if sum(x.size for x in xs) < MIN_ELEMENTS:
        return False
    if x0.dtype not in (jnp.float32, jnp.float64):
        return False
    try:
        devices = x0.devices()
        # one CPU device: the call has no rule for arrays split over several devices
        if len(devices) != 1 or next(iter(devices)).platform != "cpu":
            return False
    except Exception:  # noqa: BLE001
        return False
    return _register()


def adam_of(rule):
    """The plain ``Adam`` a rule skeleton steps with (itself, or a Scheduler's rule of the
    step), or None."""
    from ..optimise import Adam
    from .fast_scheduler import AtStep
    if type(rule) is AtStep:
        rule = rule.rule
    return rule if type(rule) is Adam else None


def adam(rules: list, xs: list, gs: list, ms: list, vs: list, bt1: list, bt2: list):
    """Traced: ``(xs, ms, vs)`` after Flux's Adam step of each array with its rule (plain
    ``Adam``s, hyper-parameters traced or not), by one custom call."""
    k = len(xs)
    dtype = xs[0].dtype
    S = jnp.stack([jnp.stack([jnp.asarray(v, dtype) for v in (r.eta, r.beta[0], r.beta[1], r.epsilon, p1, p2)])
                   for r, p1, p2 in zip(rules, bt1, bt2)])
    shapes = [jax.ShapeDtypeStruct(a.shape, dtype) for a in (*xs, *ms, *vs)]
    aliases = {**{i: i for i in range(k)}, **{2 * k + i: k + i for i in range(2 * k)}}
    out = jax.ffi.ffi_call(TARGET, shapes, input_output_aliases=aliases)(*xs, *gs, *ms, *vs, S)
    return list(out[:k]), list(out[k:2 * k]), list(out[2 * k:])
