"""NumPy fast paths: one fused, multi-threaded pass per array with numba.

Plain NumPy evaluates ``b1*m + (1-b1)*g`` one operation at a time, each reading and writing
a whole array, so an Adam step makes ~25 passes over memory where 7 suffice (read x, g,
m, v; write x, m, v). These kernels make exactly those 7 passes, in parallel
(``numba.njit(parallel=True)``). numexpr was measured too and was no faster than plain
NumPy here (see ``docs/performance.md``), so numba it is.

Exactness: the kernels perform the same IEEE operations as the generic rules, in the same
order and in the parameter's dtype (every scalar is passed already rounded to that dtype;
``fastmath`` is off, so no FMA contraction or reassociation), hence the results equal the
reference path bit for bit; ``tests/test_fast_paths.py`` checks this.

numba is optional (the ``fast`` extra). It is imported the first time a kernel runs; when
it is missing every kernel returns ``NotImplemented`` and the generic path is used. The
kernels also serve CPU torch tensors (through zero-copy NumPy views), see ``fast_torch``.

Accelerated rules: ``Adam``, ``AdamW``, ``Momentum``, ``Lion`` and ``OptimiserChain`` whose
rules are ``[ClipNorm(p=2)] [WeightDecay] R`` with ``R`` one of those four.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from . import fast

_KERNELS: dict[str, Callable] | None | bool = None  # None: not tried; False: numba missing


def kernels() -> dict[str, Callable] | None:
    """The compiled numba kernels, or None when numba is not installed."""
    global _KERNELS
    if _KERNELS is None:
        try:
            _KERNELS = _build()
        except ImportError:
            _KERNELS = False
    return _KERNELS or None


PARALLEL_MIN = 1 << 12
"""Arrays with at least this many elements use the multi-threaded kernel, smaller ones a
single-threaded one (for tiny arrays a parallel region costs more than it saves). Measured
on 2 cores: the parallel kernel wins from a few thousand elements up (the serial loop is
not vectorised by LLVM here)."""


def _build() -> dict[str, Callable]:
    import numba

    inline = numba.njit(inline="always")

    @inline
    def pre(gi, xi, clip, has_clip, wd, has_wd):
        # ClipNorm's scale, then WeightDecay's g + lambda*x (as the chain applies them)
        if has_clip:
            gi = gi * clip
        if has_wd:
            gi = gi + wd * xi
        return gi

    @inline
    def adam_el(i, x, g, m, v, clip, has_clip, wd, has_wd, b1, omb1, b2, omb2, bc1, bc2, eps, eta, lam, mode):
        xi = x[i]
        gi = pre(g[i], xi, clip, has_clip, wd, has_wd)
        mi = b1 * m[i] + omb1 * gi
        vi = b2 * v[i] + omb2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        a = mi / bc1 / (math.sqrt(vi / bc2) + eps)
        if mode == 0:    # Adam: a * eta
            d = a * eta
        elif mode == 1:  # AdamW(couple=true): eta * (a + lambda*x)
            d = eta * (a + lam * xi)
        else:            # AdamW(couple=false): eta*a + lambda*x
            d = eta * a + lam * xi
        x[i] = xi - d

    @inline
    def momentum_el(i, x, g, v, clip, has_clip, wd, has_wd, rho, eta):
        xi = x[i]
        gi = pre(g[i], xi, clip, has_clip, wd, has_wd)
        vi = rho * v[i] + eta * gi
        v[i] = vi
        x[i] = xi - vi

    @inline
    def lion_el(i, x, g, s, clip, has_clip, wd, has_wd, b1, b2, omb2, b2mb1, eta):
        xi = x[i]
        gi = pre(g[i], xi, clip, has_clip, wd, has_wd)
        si = b2 * gi + omb2 * s[i]
        s[i] = si
        c = b2mb1 * gi + b1 * si
        # eta*sign(c); 0, -0 and NaN are their own sign (np.sign, torch.sign, jnp.sign)
        if c > 0:
            d = eta
        elif c < 0:
            d = -eta
        else:
            d = eta * c
        x[i] = xi - d

    par = numba.njit(parallel=True, fastmath=False, cache=True, nogil=True)
    ser = numba.njit(fastmath=False, cache=True, nogil=True)

    @par
    def adam_p(x, g, m, v, clip, has_clip, wd, has_wd, b1, omb1, b2, omb2, bc1, bc2, eps, eta, lam, mode):
        for i in numba.prange(x.size):
            adam_el(i, x, g, m, v, clip, has_clip, wd, has_wd, b1, omb1, b2, omb2, bc1, bc2, eps, eta, lam, mode)

    @ser
    def adam_s(x, g, m, v, clip, has_clip, wd, has_wd, b1, omb1, b2, omb2, bc1, bc2, eps, eta, lam, mode):
        n, i = numba.uint64(x.size), numba.uint64(0)
        while i < n:
            adam_el(i, x, g, m, v, clip, has_clip, wd, has_wd, b1, omb1, b2, omb2, bc1, bc2, eps, eta, lam, mode)
            i += numba.uint64(1)

    @par
    def momentum_p(x, g, v, clip, has_clip, wd, has_wd, rho, eta):
        for i in numba.prange(x.size):
            momentum_el(i, x, g, v, clip, has_clip, wd, has_wd, rho, eta)

    @ser
    def momentum_s(x, g, v, clip, has_clip, wd, has_wd, rho, eta):
        n, i = numba.uint64(x.size), numba.uint64(0)
        while i < n:
            momentum_el(i, x, g, v, clip, has_clip, wd, has_wd, rho, eta)
            i += numba.uint64(1)

    @par
    def lion_p(x, g, s, clip, has_clip, wd, has_wd, b1, b2, omb2, b2mb1, eta):
        for i in numba.prange(x.size):
            lion_el(i, x, g, s, clip, has_clip, wd, has_wd, b1, b2, omb2, b2mb1, eta)

    @ser
    def lion_s(x, g, s, clip, has_clip, wd, has_wd, b1, b2, omb2, b2mb1, eta):
        n, i = numba.uint64(x.size), numba.uint64(0)
        while i < n:
            lion_el(i, x, g, s, clip, has_clip, wd, has_wd, b1, b2, omb2, b2mb1, eta)
            i += numba.uint64(1)

    return {"adam": (adam_s, adam_p), "momentum": (momentum_s, momentum_p), "lion": (lion_s, lion_p)}


# ------------------------------------------------------------------------- rule analysis

def _base_and_prefix(rule):
    """``(base_rule, clip_rule | None, decay_rule | None)`` for the supported shapes, else None."""
    from ..optimise import Adam, AdamW, ClipNorm, Lion, Momentum, OptimiserChain, WeightDecay
    bases = (Adam, AdamW, Momentum, Lion)
    if isinstance(rule, bases):
        return rule, None, None
    if not isinstance(rule, OptimiserChain) or not rule.opts:
        return None
    *pre, base = rule.opts
    if not isinstance(base, bases) or len(pre) > 2:
        return None
    clip = decay = None
    for r in pre:
        if type(r) is ClipNorm and clip is None and decay is None and float(r.p) == 2.0:
            clip = r
        elif type(r) is WeightDecay and decay is None:
            decay = r
        else:
            return None
    return base, clip, decay


def _recipe(rule, f):
    """``(kind, scalars, clip, wd, has_wd, is_base)`` for one rule, or None if unsupported."""
    from ..optimise import Adam, AdamW, Momentum
    from ..optimise.base import eps_cast
    info = _base_and_prefix(rule)
    if info is None:
        return None
    base, clip, decay = info
    T = _T(f)
    wd = f(T(decay.lambda_)) if decay is not None else f(0)
    if isinstance(base, (Adam, AdamW)):
        b1, b2 = T(base.beta[0]), T(base.beta[1])
        if isinstance(base, Adam):
            eps, mode, lam = eps_cast(T, base.epsilon), 0, 0.0
        else:
            eps, lam = T(base.epsilon), T(base.lambda_)
            mode = 1 if base.couple else 2
        sc = dict(pre=(f(b1), f(T(1 - b1)), f(b2), f(T(1 - b2))),
                  post=(f(eps), f(T(base.eta)), f(lam), mode), pyb1=b1, pyb2=b2, f=f)
        kind = "adam"
    elif isinstance(base, Momentum):
        kind, sc = "momentum", dict(post=(f(T(base.rho)), f(T(base.eta))), f=f)
    else:
        b1, b2 = T(base.beta[0]), T(base.beta[1])
        kind, sc = "lion", dict(post=(f(b1), f(b2), f(T(1 - b2)), f(T(b2 - b1)), f(T(base.eta))), f=f)
    return kind, sc, clip, wd, decay is not None, base is rule


def per_rule(rules: list, states: list, analyse: Callable, is_base: Callable) -> list | None:
    """Per array, ``(analyse(rule), state of the chain's base rule)``; ``analyse`` runs once per
    distinct rule object (tied/shared rules repeat). None as soon as a rule is unsupported."""
    out = []
    cache: dict[int, Any] = {}
    for rule, st in zip(rules, states):
        r = cache.get(id(rule), False)
        if r is False:
            r = cache[id(rule)] = analyse(rule)
        if r is None:
            return None
        out.append((r, st if is_base(r) else (st[-1] if isinstance(st, tuple) and st else None)))
    return out


def plan(rules: list, states: list, xs: list, dtype) -> list | None:
    """Per array, the fused-kernel recipe ``(kind, scalars, state_part, clip, wd, has_wd)``;
    None if any array's rule/state is not supported (then the whole group falls back)."""
    if str(dtype) not in ("float32", "float64", "torch.float32", "torch.float64"):
        return None
    f = np.float32 if "32" in str(dtype) else np.float64
    pairs = per_rule(rules, states, lambda rule: _recipe(rule, f), lambda r: r[5])
    if pairs is None:
        return None
    out = []
    for r, inner in pairs:
        kind, sc, clip, wd, has_wd, _ = r
        if kind == "adam" and not (isinstance(inner, tuple) and len(inner) == 3 and isinstance(inner[2], tuple)):
            return None
        out.append((kind, sc, inner, clip, wd, has_wd))
    return out


def _T(f):
    from ..optimise.base import _caster_for
    return _caster_for("float32" if f is np.float32 else "float64")


def clip_scale(clip, x, g, xp):
    """ClipNorm's ``min(omega/norm, 1)`` computed exactly as the generic rule does (same
    reduction, same dtype), raising its DomainError on a non-finite norm when ``throw``."""
    from .._errors import DomainError
    from ..optimise.base import caster, scalar
    from . import to_numpy
    nrm = xp.sqrt(xp.sum(g * g))
    if clip.throw and not bool(xp.isfinite(nrm)):
        raise DomainError(f"gradient has {float(clip.p)}-norm {float(to_numpy(nrm))}, for array of shape "
                          f"{tuple(x.shape)} and dtype {x.dtype}")
    lam = xp.minimum(caster(x)(clip.omega) / nrm, scalar(nrm, 1.0))
    return xp.astype(lam, x.dtype)


# ------------------------------------------------------------------------- the kernel

def run_numba(recipes, states, xs, gs, ks, xp, view: Callable, copy: Callable, inplace: bool):
    """Shared by NumPy and CPU torch: validate everything, then run the kernels.

    ``view(a, write)`` gives a 1-D NumPy view of array ``a`` sharing its memory (None when
    that is impossible, e.g. not contiguous or, with ``write``, read-only); ``copy(a)`` a
    fresh contiguous copy. With ``inplace`` the parameters and state arrays are written in
    place; otherwise copies are updated and nothing passed in is modified.
    """
    from ..optimise.base import Replace
    # phase 1: everything that can fail (norm checks, views), before any write
    work = []
    for (kind, sc, inner, clip, wd, has_wd), st, x, g in zip(recipes, states, xs, gs):
        arrs = [x, inner[0], inner[1]] if kind == "adam" else [x, inner]
        shape, dtype = x.shape, x.dtype
        for a in arrs[1:]:
            if getattr(a, "shape", None) != shape or a.dtype != dtype:
                return NotImplemented
        scale = clip_scale(clip, x, g, xp) if clip is not None else None
        if not inplace:
            arrs = [copy(a) for a in arrs]
        vs = [view(a, True) for a in arrs]
        gv = view(g, False)
        if gv is None:
            gv = view(copy(g), False)
        if gv is None or any(v is None for v in vs):
            return NotImplemented
        work.append((kind, sc, inner, wd, has_wd, st, arrs, vs, gv, scale))
    # phase 2: compute (nothing can fail any more)
    out = []
    memo: dict[tuple, Any] = {}
    for kind, sc, inner, wd, has_wd, st, arrs, vs, gv, scale in work:
        k = ks[kind][gv.size >= PARALLEL_MIN]
        f = sc["f"]
        has_clip = scale is not None
        cl = f(float(scale)) if has_clip else f(1)
        if kind == "adam":
            bt = inner[2]
            p1, p2 = float(bt[0]), float(bt[1])
            k(vs[0], gv, vs[1], vs[2], cl, has_clip, wd, has_wd, *sc["pre"], f(1) - f(p1), f(1) - f(p2),
              *sc["post"])
            # the running products advance exactly as in the generic rule (bt * T(beta));
            # arrays with equal values share the result (scalars, never mutated)
            k1, k2 = (p1, sc["pyb1"], type(bt[0])), (p2, sc["pyb2"], type(bt[1]))
            n1 = memo.get(k1)
            if n1 is None:
                n1 = memo[k1] = bt[0] * sc["pyb1"]
            n2 = memo.get(k2)
            if n2 is None:
                n2 = memo[k2] = bt[1] * sc["pyb2"]
            new_inner = (arrs[1], arrs[2], (n1, n2))
        else:
            k(vs[0], gv, vs[1], cl, has_clip, wd, has_wd, *sc["post"])
            new_inner = arrs[1]
        new_state = new_inner if st is inner else tuple(st[:-1]) + (new_inner,)
        out.append((new_state, Replace(arrs[0])))
    return out


def _view(a, write: bool):
    if not isinstance(a, np.ndarray) or not a.flags.c_contiguous or (write and not a.flags.writeable):
        return None
    return a.reshape(-1)


def _copy(a):
    return np.array(a, copy=True, order="C")


def _update_numpy(rules, states, xs, gs, *, inplace):
    ks = kernels()
    if ks is None:
        return NotImplemented
    recipes = plan(rules, states, xs, xs[0].dtype)
    if recipes is None:
        return NotImplemented
    return run_numba(recipes, states, xs, gs, ks, np, _view, _copy, inplace)


def _register() -> None:
    from ..optimise import Adam, AdamW, Lion, Momentum, OptimiserChain
    for cls in (Adam, AdamW, Momentum, Lion, OptimiserChain):
        fast.register(("update_", cls), "numpy")(_update_numpy)


_register()
