"""NumPy fast paths: one fused, multi-threaded pass over a whole group of arrays with numba.

Plain NumPy evaluates ``b1*m + (1-b1)*g`` one operation at a time, each reading and writing
a whole array, so an Adam step makes ~25 passes over memory where 7 suffice (read x, g,
m, v; write x, m, v). These kernels make exactly those 7 passes. One call serves every
array of a group: the kernel gets the arrays' addresses and a table of pieces (at most
``CHUNK`` elements each), which a few threads share out (``_run``), so 1,000 small arrays
cost one call, not 1,000. numexpr was measured too and was no faster than plain NumPy here
(see ``docs/performance.md``), so numba it is.

Exactness: the kernels perform the same IEEE operations as the generic rules, in the same
order and in the parameter's dtype (every scalar is passed already rounded to that dtype;
``fastmath`` is off, so no FMA contraction or reassociation), hence the results equal the
reference path bit for bit; ``tests/test_fast_paths.py`` checks this.

numba is optional (the ``fast`` extra). It is imported the first time a kernel runs; when
it is missing every kernel returns ``NotImplemented`` and the generic path is used. The
kernels also serve CPU torch tensors (by address, no copy), see ``fast_torch``, and JAX
arrays on the CPU through an XLA custom call, see ``fast_jax_ffi``.

Accelerated rules: ``Adam``, ``AdamW``, ``Momentum``, ``Lion`` and ``OptimiserChain`` whose
rules are ``[ClipNorm(p=2)] [WeightDecay] R`` with ``R`` one of those four.
"""
from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple

import numpy as np

from . import fast, fast_scheduler, workers

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


PARALLEL_MIN = 1 << 17
"""A group with at least this many elements in all is shared out among ``threads()``
threads, a smaller one runs on the calling thread (waking threads costs more than it saves)."""

CHUNK = 1 << 16
"""Work unit of the multi-array kernels: each array is cut into pieces of at most this many
elements and the threads share out the pieces, so one call serves one huge array and a
thousand small ones alike (one parallel region per group, not one per array)."""

SUM_LEAF = 1 << 16
"""Subtrees of NumPy's summation tree of at most this many elements are one task each
(a larger array is cut into several, summed on several threads and combined in the tree)."""


def sums_of_squares(P: np.ndarray, N: np.ndarray, f) -> np.ndarray:
    """``np.sum(g * g)`` of each array ``g`` (``P[j, 0]`` its address, ``N[j]`` its elements,
    contiguous, of float type ``f``), bit for bit as NumPy computes it, in one multi-threaded
    pass and without temporaries. The subtrees of NumPy's pairwise tree are summed as tasks
    and combined in the same tree."""
    tasks: list = []
    spans: list = []  # per array: its tasks' range, or its single task

    def leaves(j: int, lo: int, n: int) -> None:
        if n <= SUM_LEAF:
            tasks.append((j, lo, lo + n, len(tasks)))
            return
        n2 = _half(n)
        leaves(j, lo, n2)
        leaves(j, lo + n2, n - n2)

    for j, n in enumerate(N.tolist()):
        first = len(tasks)
        leaves(j, 0, n)
        spans.append((first, len(tasks)))
    out = np.zeros(max(len(tasks), 1), dtype=f)
    CH = np.array(tasks, dtype=np.int64).reshape(-1, 4)
    _run(kernels()["sumsq"], P, CH, out, f(0), parallel=int(N.sum()) >= PARALLEL_MIN)
    res = np.empty(len(N), dtype=f)
    for j, (a, b) in enumerate(spans):
        if b - a == 1:
            res[j] = out[a]
        else:
            it = iter(out[a:b])
            res[j] = _combine(int(N[j]), it)
    return res


def _combine(n: int, it):
    """The sum of a subtree of ``n`` elements from its leaves' sums, in NumPy's order."""
    if n <= SUM_LEAF:
        return next(it)
    n2 = _half(n)
    left = _combine(n2, it)
    return left + _combine(n - n2, it)


def _half(n: int) -> int:
    """Where NumPy's pairwise sum splits a run of ``n`` (> 128) elements: at half, rounded
    down to a multiple of 8 (the kernel's ``pairwise_sq`` splits the same way)."""
    return n // 2 - (n // 2) % 8


def threads() -> int:
    """Threads a large group is shared out among: the CPUs this process may run on, or
    ``FLUXTRAIN_NUM_THREADS``."""
    env = os.environ.get("FLUXTRAIN_NUM_THREADS")
    if env:
        return max(1, int(env))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _run(kernel, P, CH, *rest, parallel: bool) -> None:
    """Run ``kernel(P, CH, *rest)`` over the chunk table ``CH``, split into contiguous runs
    of chunks among ``threads()`` threads when ``parallel`` (see ``workers``)."""
    n = min(threads(), len(CH)) if parallel else 1
    cuts = [len(CH) * i // n for i in range(n + 1)]
    workers.run(kernel, [(P, CH[cuts[i]:cuts[i + 1]], *rest) for i in range(n)])


def _build() -> dict[str, Callable]:
    from . import numba_kernels as K  # (imports numba)
    return {"adam": K.adam, "momentum": K.momentum, "lion": K.lion, "sumsq": K.sumsq,
            "addr3": K.addr3, "addr4": K.addr4}


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
    wd = f(T(_num(decay.lambda_))) if decay is not None else f(0)
    if isinstance(base, (Adam, AdamW)):
        b1, b2 = T(_num(base.beta[0])), T(_num(base.beta[1]))
        mode = adam_mode(base)
        if isinstance(base, Adam):
            eps, lam = eps_cast(T, _num(base.epsilon)), 0.0
        else:
            eps, lam = T(_num(base.epsilon)), T(_num(base.lambda_))
        sc = dict(pre=(f(b1), f(T(1 - b1)), f(b2), f(T(1 - b2))),
                  post=(f(eps), f(T(_num(base.eta))), f(lam), mode), pyb1=b1, pyb2=b2, f=f)
        kind = "adam"
    elif isinstance(base, Momentum):
        kind, sc = "momentum", dict(post=(f(T(_num(base.rho))), f(T(_num(base.eta)))), f=f)
    else:
        b1, b2 = T(_num(base.beta[0])), T(_num(base.beta[1]))
        kind, sc = "lion", dict(post=(f(b1), f(b2), f(T(1 - b2)), f(T(b2 - b1)), f(T(_num(base.eta)))), f=f)
    return kind, sc, clip, wd, decay is not None, base is rule


def adam_mode(base) -> int:
    """The Adam kernel's ``mode`` for an ``Adam`` (0) or ``AdamW`` (1: ``couple``, 2: not)."""
    from ..optimise import AdamW
    return (1 if base.couple else 2) if isinstance(base, AdamW) else 0


def _num(v):
    """A hyper-parameter as a Python number: a 0-d array's value (exactly: the caster then
    rounds it as it rounds the array), so the scalars below are Python floats, as the
    kernels and their caches need."""
    return v.item() if hasattr(v, "item") and not isinstance(v, (int, float)) else v


def base_state(st, is_base: bool):
    """The state of the chain's base rule (its last member), or ``st`` itself for a bare rule;
    None when the state does not have a chain's shape."""
    if is_base:
        return st
    return st[-1] if isinstance(st, tuple) and st else None


def plan(rules: list, states: list, xs: list, dtype) -> list | None:
    """Per array, the fused-kernel recipe ``(kind, scalars, state_part, clip, wd, has_wd)``;
    None if any array's rule/state is not supported (then the whole group falls back).
    Each distinct rule object is analysed once (shared and tied rules repeat)."""
    if str(dtype) not in ("float32", "float64", "torch.float32", "torch.float64"):
        return None
    f = np.float32 if "32" in str(dtype) else np.float64
    analysed: dict[int, Any] = {}
    out = []
    for rule, st in zip(rules, states):
        r = analysed.get(id(rule), False)
        if r is False:
            r = analysed[id(rule)] = _recipe(rule, f)
        if r is None:
            return None
        kind, sc, clip, wd, has_wd, is_base = r
        inner = base_state(st, is_base)
        if kind == "adam" and not (isinstance(inner, tuple) and len(inner) == 3 and isinstance(inner[2], tuple)):
            return None
        out.append((kind, sc, inner, clip, wd, has_wd))
    return out


def _T(f):
    from ..optimise.base import _caster_for
    return _caster_for("float32" if f is np.float32 else "float64")


# ------------------------------------------------------------------------- the kernel

class Memory(NamedTuple):
    """How the kernels reach an array library's memory.

    ``dense(a)``: is ``a`` a C-contiguous CPU array of the library the kernels can read;
    ``addrs(arrs, g)``: the addresses ``[arrs[0], g, *arrs[1:]]`` (parameter, gradient,
    state arrays) when every one of ``arrs`` is dense and writeable (``g`` is dense), else
    None; ``size(a)``: its number of elements; ``copy(a)``: a fresh contiguous copy."""
    dense: Callable[[Any], bool]
    addrs: Callable[[list, Any], "list | tuple | None"]
    size: Callable[[Any], int]
    copy: Callable[[Any], Any]


_NSTATE = {"adam": 2, "momentum": 1, "lion": 1}


def _chunks(sizes: np.ndarray) -> np.ndarray:
    """``(j, lo, hi)`` rows cutting array ``j`` into pieces of at most ``CHUNK`` elements
    (the kernels only read them). Remembered per sizes: a model's are the same every step,
    and at 1,000 arrays making the table costs ~0.1 ms."""
    key = (CHUNK, sizes.tobytes())
    ch = _CHUNK_TABLES.get(key)
    if ch is None:
        per = (sizes + (CHUNK - 1)) // CHUNK
        j = np.repeat(np.arange(len(sizes), dtype=np.int64), per)
        lo = (np.arange(len(j), dtype=np.int64) - np.repeat(np.cumsum(per) - per, per)) * CHUNK
        ch = np.stack([j, lo, np.minimum(lo + CHUNK, sizes[j])], axis=1)
        if len(_CHUNK_TABLES) >= 16:
            _CHUNK_TABLES.clear()
        _CHUNK_TABLES[key] = ch
    return ch


_CHUNK_TABLES: dict[tuple, np.ndarray] = {}


class _Batch:
    """One kernel call's tables, filled array by array: addresses, sizes, clip scales, and
    per array the index of its row of scalars (distinct rows are few: one per rule, or per
    rule and beta^t value)."""

    __slots__ = ("ptrs", "sizes", "scales", "rows", "index", "U", "I")

    def __init__(self) -> None:
        self.ptrs: list = []
        self.sizes: list = []
        self.scales: list = []
        self.rows: list = []
        self.index: dict = {}
        self.U: list = []
        self.I: list = []

    def row(self, key, make) -> int:
        r = self.index.get(key)
        if r is None:
            u, flags = make()
            r = self.index[key] = len(self.U)
            self.U.append(u)
            self.I.append(flags)
        return r


def run_numba(recipes, states, xs, gs, ks, mem: Memory, inplace: bool):
    """Shared by NumPy and CPU torch: validate everything, then one kernel call per kind of
    rule in the group (not one per array: the per-call cost is what limits many small arrays).

    The kernels get the arrays' addresses (``mem.addrs``), and per array its size, clip scale
    and the index of its row in a table of distinct scalar rows. With ``inplace`` the
    parameters and state arrays are written in place; otherwise copies are updated and
    nothing passed in is modified.
    """
    from ..optimise.base import Replace
    f = recipes[0][1]["f"]
    one = f(1)
    dense, addrs, size, copy = mem
    batches: dict[str, _Batch] = {}
    out: list = [None] * len(xs)
    bt_val: dict[int, float] = {}
    new_bt: dict[tuple, Any] = {}
    clips: list = []  # (j, batch, position in it, the gradient's address or None)
    held: list = []  # contiguous copies of strided gradients
    # phase 1: everything that can fail (norm checks, addresses), before any write
    for j, (kind, sc, inner, clip, wd, has_wd) in enumerate(recipes):
        x, g = xs[j], gs[j]
        shape, dtype = x.shape, x.dtype
        try:
            if kind == "adam":
                arrs = [x, inner[0], inner[1]]
                if arrs[1].shape != shape or arrs[2].shape != shape or arrs[1].dtype != dtype or arrs[2].dtype != dtype:
                    return NotImplemented
            else:
                arrs = [x, inner]
                if inner.shape != shape or inner.dtype != dtype:
                    return NotImplemented
        except AttributeError:  # a state entry that is not an array
            return NotImplemented
        has_clip = clip is not None
        numpy_g = type(g) is np.ndarray
        if not inplace:
            arrs = [copy(a) for a in arrs]
        if not dense(g):
            g = copy(g)
            held.append(g)  # alive until the kernels have read it (they get its address only)
        ptrs = addrs(arrs, g)
        if ptrs is None:
            return NotImplemented
        b = batches.get(kind)
        if b is None:
            b = batches[kind] = _Batch()
        if kind == "adam":
            bt = inner[2]
            p1, p2 = bt_val.get(id(bt[0])), bt_val.get(id(bt[1]))
            if p1 is None:
                p1 = bt_val[id(bt[0])] = float(bt[0])
            if p2 is None:
                p2 = bt_val[id(bt[1])] = float(bt[1])
            r = b.row((id(sc), has_clip, p1, p2), lambda: kernel_row(kind, sc, p1, p2, wd, has_clip, has_wd))
            # the running products advance exactly as in the generic rule (bt * T(beta));
            # arrays with equal values share the result (never mutated in place)
            k1, k2 = (p1, sc["pyb1"], type(bt[0])), (p2, sc["pyb2"], type(bt[1]))
            n1 = new_bt.get(k1)
            if n1 is None:
                n1 = new_bt[k1] = bt[0] * sc["pyb1"]
            n2 = new_bt.get(k2)
            if n2 is None:
                n2 = new_bt[k2] = bt[1] * sc["pyb2"]
            new_inner = (arrs[1], arrs[2], (n1, n2))
        else:
            r = b.row((id(sc), has_clip), lambda: kernel_row(kind, sc, 0.0, 0.0, wd, has_clip, has_wd))
            new_inner = arrs[1]
        if has_clip:
            # a NumPy gradient's norm (for its clip scale) comes from the kernels, below
            clips.append((j, b, len(b.sizes), ptrs[1] if numpy_g else None))
        b.ptrs.extend(ptrs)
        b.sizes.append(size(x))
        b.scales.append(one)
        b.rows.append(r)
        st = states[j]
        # delta None: written in place; Replace: the updated copy (pure update)
        out[j] = (new_inner if st is inner else tuple(st[:-1]) + (new_inner,), None if inplace else Replace(arrs[0]))
    if clips:  # the rules' own clip factors and checks, still before any write
        _clip_scales(clips, recipes, xs, gs, f)
    # phase 2: compute (nothing can fail any more)
    for kind, b in batches.items():
        N = np.array(b.sizes, dtype=np.int64)
        P = np.array(b.ptrs, dtype=np.uint64).view(np.int64).reshape(len(N), -1)
        _run(ks[kind], P, _chunks(N), np.array(b.rows, dtype=np.int64), np.array(b.U, dtype=f),
             np.array(b.I, dtype=np.int64), np.array(b.scales, dtype=f), parallel=int(N.sum()) >= PARALLEL_MIN)
    return out


def _clip_scales(clips: list, recipes: list, xs: list, gs: list, f) -> None:
    """Each clipping array's scale, by its ClipNorm's ``scale`` (which raises its
    ``DomainError`` on a non-finite norm), set in its batch. The norms of NumPy gradients
    (at the addresses given) are ``sqrt(sum(g * g))`` bit for bit as NumPy computes them
    for ``ClipNorm.norm``, all in one multi-threaded pass without the temporary ``g * g``
    (for a large array, allocating it costs more than the sum); torch tensors keep the
    rule's own norm (torch's summation order)."""
    known = [c for c in clips if c[3] is not None]
    if known:
        P = np.array([c[3] for c in known], dtype=np.uint64).view(np.int64).reshape(-1, 1)
        N = np.array([c[1].sizes[c[2]] for c in known], dtype=np.int64)
        norms = np.sqrt(sums_of_squares(P, N, f))
        # one call of the rule's scale per ClipNorm, on the vector of its arrays' norms (a
        # call per array costs ~20 us); a non-finite norm: per array, so that the rule raises
        by_rule: dict[int, list] = {}
        for q, c in enumerate(known):
            by_rule.setdefault(id(recipes[c[0]][3]), []).append(q)
        for qs in by_rule.values():
            nrm = norms[qs]
            if not np.isfinite(nrm).all():
                for q in qs:
                    j, b, pos, _ = known[q]
                    b.scales[pos] = f(float(recipes[j][3].scale(xs[j], gs[j], norms[q])))
                continue
            j0 = known[qs[0]][0]
            for q, s in zip(qs, np.asarray(recipes[j0][3].scale(xs[j0], None, nrm), dtype=f).tolist()):
                _, b, pos, _ = known[q]
                b.scales[pos] = f(s)
    for j, b, pos, addr in clips:
        if addr is None:
            b.scales[pos] = f(float(recipes[j][3].scale(xs[j], gs[j])))


def kernel_row(kind: str, sc: dict, p1: float, p2: float, wd, has_clip: bool, has_wd: bool) -> tuple:
    """A kernel's scalar row (``U``) and flags (``I``) for a recipe's scalars ``sc`` (see
    ``_recipe``), and for Adam's kind the running products ``p1``, ``p2`` before the step
    (its corrections ``1 - p`` in the dtype; ignored by the other kinds)."""
    if kind != "adam":
        return sc["post"] + (wd,), (has_clip, has_wd, 0)
    f = sc["f"]
    one = f(1)
    return (sc["pre"] + (one - f(p1), one - f(p2)) + sc["post"][:3] + (wd,),
            (has_clip, has_wd, sc["post"][3]))


def run_at(kind: str, P: np.ndarray, N: np.ndarray, R: np.ndarray, rows: list, C: np.ndarray, f) -> None:
    """A kernel of ``kind`` on raw memory, in place: ``P[j]`` the addresses of array ``j``'s
    parameter, gradient and state buffers, ``N[j]`` its elements, ``R[j]`` its index in
    ``rows`` (``kernel_row``'s results) and ``C[j]`` its clip scale, in the arrays' float
    type ``f``. For buffers that are no library's arrays (JAX's custom call,
    ``fast_jax_ffi``). The caller has checked everything: this cannot fail."""
    U, I = zip(*rows)
    _run(kernels()[kind], P, _chunks(N), R, np.array(U, dtype=f), np.array(I, dtype=np.int64), C,
         parallel=int(N.sum()) >= PARALLEL_MIN)


def _np_dense(a) -> bool:
    return type(a) is np.ndarray and a.flags.c_contiguous


def _np_addrs(arrs: list, g):
    for a in arrs:
        if type(a) is not np.ndarray:
            return None
        fl = a.flags
        if not (fl.c_contiguous and fl.writeable):
            return None
    if len(arrs) == 3:
        return _KERNELS["addr4"](arrs[0], g, arrs[1], arrs[2])
    return _KERNELS["addr3"](arrs[0], g, arrs[1])


def _copy(a):
    return np.array(a, copy=True, order="C")


NUMPY_MEMORY = Memory(_np_dense, _np_addrs, lambda a: a.size, _copy)


def _update_numpy(rules, states, xs, gs, *, inplace):
    ks = kernels()
    if ks is None:
        return NotImplemented
    recipes = plan(rules, states, xs, xs[0].dtype)
    if recipes is None:
        return NotImplemented
    return run_numba(recipes, states, xs, gs, ks, NUMPY_MEMORY, inplace)


def _register() -> None:
    from ..optimise import Adam, AdamW, Lion, Momentum, OptimiserChain
    for cls in (Adam, AdamW, Momentum, Lion, OptimiserChain):
        fast.register(("update_", cls), "numpy")(_update_numpy)
    fast_scheduler.register("numpy", _scheduler_counters)


_MADE = fast_scheduler.MadeCounters()  # entries [views, their base]


def _scheduler_counters(ts: list, inplace: bool):
    """A Scheduler group's counters as ints, and ``advance`` giving ``t + 1`` for each as
    ``Scheduler.apply`` makes it (a distinct 0-d array each).

    New counters are 0-d views of one array, one element each (the array-API ``asarray``
    per array cost 5 us, a copy per array 0.5 us). Counters that are exactly the views made
    here are read in one call from their common array (a change the user made in place is
    in that memory too), and ``update_``, which writes the moments in place, advances them
    there with one addition."""
    made = _MADE.find(ts)
    base = None if made is None else made[1]
    now = [int(t) for t in ts] if base is None else base.tolist()

    def advance() -> list:
        if base is not None and inplace:
            np.add(base, base.dtype.type(1), out=base)
            return list(ts)
        t0 = ts[0]
        if any(t.dtype != t0.dtype for t in ts):
            return [np.asarray(t + 1) for t in ts]
        new = np.asarray(now, dtype=t0.dtype) + t0.dtype.type(1)
        views = [new[i, ...] for i in range(len(ts))]
        _MADE.add(views, new)
        return views
    return now, advance


_register()
