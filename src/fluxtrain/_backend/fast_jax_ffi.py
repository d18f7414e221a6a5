"""JAX on the CPU: an ``Adam``, ``AdamW``, ``Momentum`` or ``Lion`` step (alone, behind a
``ClipNorm``/``WeightDecay`` prefix, or a ``Scheduler``'s) as one custom call into the numba kernels.

XLA:CPU compiles an Adam step (the route's and optax's alike) as three loops per array:
``m``, ``v``, then ``x`` reading both back, since it forms no multi-output fusion there
(Momentum and Lion: two). The numba kernels of :mod:`fluxtrain._backend.fast_numpy` do
the step in one pass over each array, on all cores. Here a compiled group step hands its
arrays to them through XLA's typed FFI (the handler is a ``ctypes`` callback; the call
frame's structures are declared below): the parameters and state arrays are donated by
the step and aliased to the call's results, so the kernels write them in place. What is
not an array's elementwise pass stays in the traced program: the running products
``beta^t`` (the rule's own code advances them, which also keeps the outputs' layout and
the store's sharing as they are without the call), a Scheduler's counter, and
``ClipNorm``'s scale (from the norm the route's pre-check computed, or computed there).

Only where nothing can go wrong inside the call: a group whose rules all take one kernel
(``fast_numpy``'s recipes), float32 or float64 parameters on one CPU device, numba
installed, and not turned off with ``FLUXTRAIN_JAX_CUSTOM_CALL=0``. The handler reads
buffer addresses and sizes in one compiled pass (no Python object per array), checks them,
and builds the kernel's tables with NumPy; an unexpected failure is reported to XLA as an
error, never as success.
"""
from __future__ import annotations

import ctypes
import os
import traceback
from typing import Any

import numpy as np

import jax
import jax.numpy as jnp

from ..optimise import Adam, AdamW, ClipNorm, Lion, Momentum, OptimiserChain, WeightDecay
from . import fast_numpy
from .fast_scheduler import AtStep

_S32, _F32, _F64 = 4, 11, 12  # XLA_FFI_DataType
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
_STATE: dict[str, Any] = {}  # the registered handlers (kept alive)


def _readers():
    """The compiled ``buffers(addrs) -> (dtypes, data, sizes)`` of the ``XLA_FFI_Buffer``
    structs at ``addrs`` (``numba_kernels.buffers``; the first call imports numba)."""
    from .numba_kernels import buffers
    return buffers


_NSTATE = {"adam": 2, "momentum": 1, "lion": 1}  # state arrays per parameter
TARGETS = {kind: "fluxtrain_" + kind for kind in _NSTATE}
# the same kernels with each state kept in one flat array for all parameters (see step)
TARGETS_FLAT = {kind: f"fluxtrain_{kind}_flat" for kind in _NSTATE}
_ITEMSIZE = {_F32: 4, _F64: 8}

# the per-array scalar table S (one row per array, in the arrays' dtype): what the handler
# needs to rebuild each array's rule and kernel row, then its clip scale
_COLS = ("eta", "beta1", "beta2", "epsilon", "lambda", "mode", "decay", "has_decay", "has_clip",
         "beta1^t", "beta2^t", "scale")
_W = len(_COLS)


def arrays_of(n: int, ns: int, flat: bool) -> int:
    """How many parameter arrays a call of ``n`` arguments steps, with ``ns`` states each
    (see ``_step``)."""
    return (n - 2 - ns) // 2 if flat else (n - 1) // (2 + ns)


def _step(frame, kind: str, flat: bool) -> None:
    """Arguments: ``x``, ``g``, then the state arrays (``m``, ``v`` for Adam's kind, ``s`` or
    ``v`` for the others), K of each, then ``S`` (K x ``_W``, see ``_COLS``); results ``x``
    and the state arrays, each aliased to its argument. With ``flat``, one array per state
    holds every array's states one after the other, of which these K arrays' start at the
    element given by a last, int32 argument; the results are ``x`` and the flat arrays."""
    buffers = _readers()
    n, ns = frame.args.size, _NSTATE[kind]
    k = arrays_of(n, ns, flat)
    name = (TARGETS_FLAT if flat else TARGETS)[kind]
    dt, data, sizes = buffers(np.ctypeslib.as_array(frame.args.items, shape=(n,)))
    # what the kernels will write through these addresses must be what they are
    if flat:
        start = ctypes.c_int32.from_address(int(data[n - 1])).value if dt[n - 1] == _S32 and sizes[n - 1] == 1 else -1
        end = start + sizes[:k].sum()
        shaped = n == 2 * k + ns + 2 and start >= 0 and np.array_equal(sizes[:k], sizes[k:2 * k]) and all(
            sizes[2 * k + q] >= end for q in range(ns))
        n -= 1  # (the rest reads as without flat)
    else:
        shaped = n == (2 + ns) * k + 1 and all(
            np.array_equal(sizes[:k], sizes[j * k:(j + 1) * k]) for j in range(1, 2 + ns))
    if not shaped or dt[0] not in (_F32, _F64) or not (dt[:n] == dt[0]).all() or sizes[n - 1] != _W * k:
        raise TypeError(f"{name}: unexpected arguments (dtypes, sizes or count)")
    f = np.float32 if dt[0] == _F32 else np.float64
    _, out, _ = buffers(np.ctypeslib.as_array(frame.rets.items, shape=(frame.rets.size,)))
    # results aliased to their arguments: XLA passes the same buffers (copying an argument
    # first where it must survive the call), so the kernels write the results in place
    if not (np.array_equal(out[:k], data[:k]) and np.array_equal(out[k:], data[2 * k:n - 1])):
        raise RuntimeError(f"{name}: results not aliased to their arguments")
    if flat:  # each array's state starts where the previous arrays' end
        offsets = (start + np.cumsum(sizes[:k]) - sizes[:k]) * _ITEMSIZE[dt[0]]
        P = np.stack([data[:k], data[k:2 * k]] + [data[2 * k + q] + offsets for q in range(ns)], axis=1)
    else:
        P = data[:n - 1].reshape(2 + ns, k).T.copy()
    S = np.ctypeslib.as_array(ctypes.cast(int(data[n - 1]), ctypes.POINTER(np.ctypeslib.as_ctypes_type(f))),
                              shape=(k, _W))
    if k and (S[:, :-1] == S[0, :-1]).all():  # one rule and one beta^t for all (the usual case)
        keys, R = S[:1, :-1], np.zeros(k, np.int64)
    else:
        keys, R = np.unique(S[:, :-1], axis=0, return_inverse=True)
    rows = [_kernel_row(kind, row, f) for row in keys.tolist()]
    fast_numpy.run_at(kind, P, sizes[:k].copy(), R.reshape(-1).astype(np.int64), rows, S[:, -1].copy(), f)


def _kernel_row(kind: str, row: list, f) -> tuple:
    """The kernel's scalar row for one row of ``S`` (less its scale): the rule it describes,
    analysed by ``fast_numpy`` as for NumPy's arrays, so both paths share one recipe. The
    analysis is remembered per rule (the row less Adam's running products, which change
    every step): ~0.2 ms a call."""
    key = (kind, f, *row[:-2])
    hit = _RECIPES.get(key)
    if hit is None:
        hit = _RECIPES[key] = _recipe_of(kind, row, f)
        if len(_RECIPES) > 64:
            _RECIPES.clear()
    sc, wd, has_clip, has_decay = hit
    return fast_numpy.kernel_row(kind, sc, row[-2], row[-1], wd, has_clip, has_decay)


_RECIPES: dict[tuple, tuple] = {}


def _recipe_of(kind: str, row: list, f) -> tuple:
    eta, b1, b2, eps, lam, mode, decay, has_decay, has_clip = row[:-2]
    if kind == "adam":  # (the inverse of fast_numpy.adam_mode)
        base = Adam(eta, (b1, b2), eps) if mode == 0 else AdamW(eta, (b1, b2), lam, eps, couple=mode == 1)
    elif kind == "momentum":
        base = Momentum(eta, b1)
    else:
        base = Lion(eta, (b1, b2))
    pre = [ClipNorm()] * bool(has_clip) + [WeightDecay(decay)] * bool(has_decay)
    _, sc, _, wd, _, _ = fast_numpy._recipe(OptimiserChain(*pre, base) if pre else base, f)
    return sc, wd, bool(has_clip), bool(has_decay)


def _handler(kind: str, flat: bool):
    def handle(fp):
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
            _step(frame, kind, flat)
            return None
        except BaseException:  # noqa: BLE001 - reported to XLA, which raises it in the caller
            msg = traceback.format_exc().encode("utf-8", "replace")
            try:
                args = _ErrorArgs(ctypes.sizeof(_ErrorArgs), None, msg, 13)  # INTERNAL
                return frame.api.contents.error_create(ctypes.byref(args))
            except BaseException:  # noqa: BLE001
                return None
    return _HANDLER_TYPE(handle)


def _register() -> bool:
    if "handler" in _STATE:
        return _STATE["handler"] is not None
    try:
        if os.environ.get("FLUXTRAIN_JAX_CUSTOM_CALL", "1") == "0":
            raise ImportError("turned off by FLUXTRAIN_JAX_CUSTOM_CALL=0")
        if fast_numpy.kernels() is None:
            raise ImportError("numba")
        _readers()
        hs = {name: _handler(kind, flat) for flat, names in ((False, TARGETS), (True, TARGETS_FLAT))
              for kind, name in names.items()}
        for name, h in hs.items():
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(ctypes.cast(h, ctypes.c_void_p).value),
                                        platform="cpu")
        _STATE["handler"] = hs
    except Exception:  # noqa: BLE001 - no numba, or a jax without the typed FFI: XLA's own step
        _STATE["handler"] = None
    return _STATE["handler"] is not None


MIN_ELEMENTS = 1 << 21
"""Groups with fewer elements in all keep XLA's program. Its passes cost little while a
group's arrays stay in the caches, and the call has a fixed cost (~90 us of Python in
the handler). Adam, 6 arrays, blocked steps on 2 cores: 0.1 M elements 500 against 233 us
(XLA), 1 M 1.16 against 1.05 ms, 2 M 1.6 against 5.4 ms, 10 M 8.9 against 14.7 ms."""


def _parts(rule):
    """``(kind, base, clip, decay)`` of a rule the kernels step (a Scheduler's rule of the
    step is its rule), or None."""
    if type(rule) is AtStep:
        rule = rule.rule
    info = fast_numpy._base_and_prefix(rule)
    if info is None:
        return None
    base, clip, decay = info
    kind = _KINDS.get(type(base))
    return None if kind is None else (kind, base, clip, decay)


_KINDS = {Adam: "adam", AdamW: "adam", Momentum: "momentum", Lion: "lion"}


def kind_of(skeletons: tuple) -> str | None:
    """The kernel every one of these rule skeletons steps with, or None."""
    kinds = {p[0] if p is not None else None for p in map(_parts, skeletons)}
    return kinds.pop() if len(kinds) == 1 else None


def usable(skeletons: tuple, xs: list) -> bool:
    """Can a group of these rule skeletons on the arrays ``xs`` take the custom call?"""
    if kind_of(skeletons) is None:
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


def _base_state(rule, st):
    """The state of ``rule``'s kernel rule within ``st`` (a Scheduler's inner state, a
    chain's last member)."""
    if type(rule) is AtStep:
        return _base_state(rule.rule, st.inner)
    return fast_numpy.base_state(st, not isinstance(rule, OptimiserChain))


def _with_base(rule, st, new):
    """``st`` with the state of ``rule``'s kernel rule replaced by ``new``."""
    if type(rule) is AtStep:
        return type(st)(st.t, _with_base(rule.rule, st.inner, new))
    return st[:-1] + (new,) if isinstance(rule, OptimiserChain) else new


def _table(kind: str, parts: list, bases: list, xs: list, gs: list, dtype):
    """Traced: the scalar table ``S`` (see ``_COLS``), built by column, so that the program
    has a few operations for it rather than a few per array (each costs XLA a thunk,
    ~1-2 us): a value all arrays share (one rule's traced hyper-parameter, the shared
    ``beta^t``) is broadcast, and clip scales come from one vector of norms."""
    adam = kind == "adam"
    rows = []
    for (_, base, clip, decay), b in zip(parts, bases):
        mode = fast_numpy.adam_mode(base) if adam else 0
        rows.append((base.eta, base.rho if kind == "momentum" else base.beta[0],
                     0 if kind == "momentum" else base.beta[1], base.epsilon if adam else 0,
                     base.lambda_ if mode else 0, mode, decay.lambda_ if decay is not None else 0,
                     decay is not None, clip is not None, b[2][0] if adam else 0, b[2][1] if adam else 0))
    k = len(rows)
    cols = []
    for c in range(_W - 1):
        first = rows[0][c]
        if all(r[c] is first for r in rows):
            cols.append(jnp.broadcast_to(jnp.asarray(first, dtype), (k,)))
        else:
            cols.append(jnp.stack([jnp.asarray(r[c], dtype) for r in rows]))
    clips = [p[2] for p in parts]
    if all(c is None for c in clips):
        cols.append(jnp.ones((k,), dtype))
    elif all(c is not None and c.omega is clips[0].omega for c in clips):
        # ClipNorm.scale is elementwise in the norm: one vector for all (its checks are eager)
        cols.append(clips[0].scale(xs[0], None, jnp.stack([c.norm(g) for c, g in zip(clips, gs)])))
    else:
        cols.append(jnp.stack([c.scale(x, g) if c is not None else jnp.ones((), dtype)
                               for c, x, g in zip(clips, xs, gs)]))
    return jnp.stack(cols, axis=1)


MAX_ALIASED = 1024
"""Aliased buffers per call (each parameter, and each per-array state or each flat state);
a group with more takes several calls, one after the other. XLA's compile time grows
faster than linearly in them: Adam's per-array step on 1,000 arrays (3,000 aliased
buffers) compiled in ~38 s in one call and in ~7 s in three (~11 s for XLA's own program),
while each more call costs ~0.5 ms a step (1.04x at 1,000 arrays, 10 M floats). A flat
step of up to 1,022 arrays stays one call."""


def _call(target: str, xs: list, gs: list, states: list, *rest):
    """Traced: the call of ``target`` on these arguments, ``xs`` and ``states`` written in
    place (each aliased to its result); returns the new ``xs`` then the new ``states``."""
    k = len(xs)
    shapes = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (*xs, *states)]
    aliases = {**{i: i for i in range(k)}, **{2 * k + i: k + i for i in range(len(states))}}
    return list(jax.ffi.ffi_call(target, shapes, input_output_aliases=aliases)(*xs, *gs, *states, *rest))


def step(rules: list, states: list, new_states: list, xs: list, gs: list, flat: list | None = None):
    """Traced: ``(new_xs, new_states, extra)`` after the step of each array ``xs[i]`` with
    its rule ``rules[i]`` (hyper-parameters traced or not; a pre-checked ClipNorm's norm
    already in it) from ``states[i]``, by one custom call (a few, one after the other, for
    more than ``MAX_ALIASED`` aliased buffers); ``new_states`` are the rules'
    own (traced) new states, whose arrays the call's replace. None when the states are not
    the kernel's (then the rules' own step stands).

    ``extra``: ``(ins, outs)``, the per-array state arrays the call read and returned,
    ``[q][i]`` for state ``q`` of array ``i``. With ``flat`` (one array per state, the
    arrays' states one after the other, as ``states`` view them), the call updates those
    flat arrays instead; ``new_states`` then keep the views read, and ``extra`` is the
    new flat arrays."""
    parts = [_parts(r) for r in rules]
    kind = parts[0][0]
    ns = _NSTATE[kind]
    dtype = xs[0].dtype
    bases = [_base_state(r, s) for r, s in zip(rules, states)]
    arrs = [list(b[:2]) if kind == "adam" else [b] for b in bases]
    for a, b, x in zip(arrs, bases, xs):
        if not all(getattr(y, "shape", None) == x.shape and getattr(y, "dtype", None) == dtype for y in a):
            return None
        if kind == "adam" and not (type(b[2]) is tuple and len(b[2]) == 2 and all(jnp.ndim(p) == 0 for p in b[2])):
            return None
    if flat is not None and not (len(flat) == ns and all(f.dtype == dtype for f in flat)):
        return None

    S = _table(kind, parts, bases, xs, gs, dtype)
    k = len(xs)
    ins = [[a[q] for a in arrs] for q in range(ns)]
    # calls of at most MAX_ALIASED aliased buffers each
    new_xs = []
    if flat is not None:
        total = sum(x.size for x in xs)
        n = max(1, MAX_ALIASED - ns) if total < 2**31 else k  # (the start is an int32)
        start = 0
        for a in range(0, k, n):
            b = min(a + n, k)
            out = _call(TARGETS_FLAT[kind], xs[a:b], gs[a:b], flat, S[a:b], np.int32(start))
            new_xs += out[:b - a]
            flat = out[b - a:]  # the next call writes the same flat arrays, further on
            start += sum(x.size for x in xs[a:b])
        news, extra = ins, flat
    else:
        news = [[] for _ in range(ns)]
        n = max(1, MAX_ALIASED // (1 + ns))
        for a in range(0, k, n):
            b = min(a + n, k)
            out = _call(TARGETS[kind], xs[a:b], gs[a:b], [x for row in ins for x in row[a:b]], S[a:b])
            new_xs += out[:b - a]
            for q in range(ns):
                news[q] += out[(b - a) * (1 + q):(b - a) * (2 + q)]
        extra = (ins, news)
    result = []
    for i, (r, st) in enumerate(zip(rules, new_states)):
        if kind == "adam":
            new = (news[0][i], news[1][i], _base_state(r, st)[2])
        else:
            new = news[0][i]
        result.append(_with_base(r, st, new))
    return new_xs, result, extra
