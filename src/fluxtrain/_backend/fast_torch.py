"""PyTorch fast paths for the optimiser walker.

Per group of same-dtype, same-device tensors (see :mod:`fluxtrain._backend.fast` for the
kernel signature):

* ``Adam``, ``AdamW`` and ``OptimiserChain([ClipNorm(p=2)], [WeightDecay], Adam|AdamW)``:
  torch's own fused multi-tensor kernels ``torch._fused_adam_`` / ``torch._fused_adamw_``
  (CPU and CUDA), one pass per array. Flux's bias correction uses running products
  ``beta^t`` kept in the state, torch's uses a step count; the kernel is therefore called
  with a step so large that torch's own correction is 1, and Flux's correction is folded
  into the learning rate and epsilon:
  ``eta*(m/c1)/(sqrt(v/c2)+eps) == (eta*sqrt(c2)/c1) * m / (sqrt(v) + eps*sqrt(c2))``
  with ``c = 1 - beta^t`` computed exactly as the generic rule does. Equal to the generic
  path up to rounding order (a few ulps per step; tests use rtol 1e-5 on float32
  trajectories, 1e-12 on float64).
* ``Momentum``, ``Lion`` (and their ``ClipNorm``/``WeightDecay`` chains): on CPU, the
  numba kernels of :mod:`fluxtrain._backend.fast_numpy`, given the tensors' memory
  addresses (bit-for-bit equal to the generic path); without numba, or on other devices,
  an exact ``torch._foreach_*`` sequence (the same operations as the generic rule, so also
  bit-for-bit) for the plain rules, and the generic path for the chains.

Parameters written by the numba kernels get their autograd version counter bumped, as an
in-place torch op would.
"""
from __future__ import annotations

import itertools
import math
import operator
import sys
import weakref
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import fast, fast_numpy, fast_scheduler
from ..optimise.base import Replace, caster

_STEP_CACHE: dict[Any, torch.Tensor] = {}


def _huge_step(device) -> torch.Tensor:
    """A step count for which torch's ``1 - beta**step`` is exactly 1."""
    t = _STEP_CACHE.get(device)
    if t is None:
        t = _STEP_CACHE[device] = torch.tensor(1e30, dtype=torch.float32, device=device)
    return t


def _np_type(dtype):
    return np.float32 if dtype == torch.float32 else np.float64


def _supported(xs) -> bool:
    x0 = xs[0]
    return x0.dtype in (torch.float32, torch.float64)


_IS_CPU, _DTYPE, _SHAPE = operator.attrgetter("is_cpu"), operator.attrgetter("dtype"), operator.attrgetter("shape")


_CONTIGUOUS, _NEG = operator.methodcaller("is_contiguous"), operator.methodcaller("is_neg")


def _all_dense(ts: list) -> bool:
    """Are all these tensors contiguous, without a lazy negation bit (on any device)?"""
    return all(map(_CONTIGUOUS, ts)) and not any(map(_NEG, ts))


def _all_like(arrs, shapes: list, dtype, cpu: bool, dev) -> bool:
    """Is every ``arrs[i]`` a tensor of shape ``shapes[i]`` (the parameters'), of ``dtype``,
    on the group's device? Each test runs over the whole list at once (``is_cpu`` first: it
    is ~7x cheaper than reading ``.device``); each attribute read costs ~0.1-0.2 µs a
    tensor, which at 1,000s of arrays is most of the step's Python, so the parameters'
    shapes are read once by the caller."""
    return (all(map(isinstance, arrs, itertools.repeat(torch.Tensor)))
            and (all(map(_IS_CPU, arrs)) if cpu else all(a.device == dev for a in arrs))
            and all(map(dtype.__eq__, map(_DTYPE, arrs)))
            and list(map(_SHAPE, arrs)) == shapes)


def _same_tensors(xs, arrs) -> bool:
    """``_all_like`` for a group's states. (Gradients need no such check: the walker has
    checked them against ``x``.)"""
    x0 = xs[0]
    cpu = x0.is_cpu
    return _all_like(arrs, list(map(_SHAPE, xs)), x0.dtype, cpu, None if cpu else x0.device)


# ------------------------------------------------------------------------- numba route

def _dense(t) -> bool:
    # the kernels read and write raw memory: a dense CPU tensor without a lazy negation bit
    # (the conjugation bit needs a complex dtype, which never gets here; `is_cpu` and not
    # `device.type`, which costs five times as much)
    return t.is_cpu and t.is_contiguous() and not t.is_neg()


def _addrs(arrs: list, g):
    # run_numba has checked shapes and dtypes: equal torch dtypes mean torch tensors
    if not all(map(_dense, arrs)):
        return None
    if len(arrs) == 3:
        return [arrs[0].data_ptr(), g.data_ptr(), arrs[1].data_ptr(), arrs[2].data_ptr()]
    return [arrs[0].data_ptr(), g.data_ptr(), arrs[1].data_ptr()]


def _copy(t):
    return t.detach().clone(memory_format=torch.contiguous_format)


_MEMORY = fast_numpy.Memory(_dense, _addrs, lambda t: t.numel(), _copy)


def _numba(rules, states, xs, gs, inplace):
    ks = fast_numpy.kernels()
    if ks is None or not xs[0].is_cpu:
        return NotImplemented
    recipes = fast_numpy.plan(rules, states, xs, str(xs[0].dtype))
    if recipes is None:
        return NotImplemented
    out = fast_numpy.run_numba(recipes, states, xs, gs, ks, _MEMORY, inplace)
    if out is not NotImplemented and inplace:
        _bump(xs)
    return out


def _bump(xs) -> None:
    """Tell autograd the tensors changed (writes by address, through numba, do not)."""
    bump = getattr(torch.autograd.graph, "increment_version", None)
    if bump is not None:
        bump(list(xs))  # one call for the list


# ------------------------------------------------------------------------- fused Adam

def _adam_info(rule, T):
    """The fused call's scalars for one rule (None when it is not an Adam-family shape)."""
    from ..optimise import Adam, AdamW
    from ..optimise.base import eps_cast
    info = fast_numpy._base_and_prefix(rule)
    if info is None or not isinstance(info[0], (Adam, AdamW)):
        return None
    base, clip, decay = info
    wd = T(decay.lambda_) if decay is not None else 0.0
    if isinstance(base, Adam):
        kind, eps, dec = "adam", eps_cast(T, base.epsilon), 0.0
    else:
        if wd:
            return None  # WeightDecay before AdamW: two decays, keep the generic path
        kind, eps = "adamw", T(base.epsilon)
        dec = (T(base.eta) * T(base.lambda_)) if base.couple else T(base.lambda_)
    return (base is rule, clip, kind, T(base.eta), T(base.beta[0]), T(base.beta[1]), eps, wd, dec)


# The host value of each beta^t tensor the fused path made or read: reading a tensor on a
# GPU (.item()) waits for everything queued before it, which every step would otherwise do.
# Keyed by id; an entry counts only for the same tensor (weak reference) at the same version
# (an in-place write, e.g. a checkpoint loaded into the state, bumps it) and on the same
# memory (``.data = ...`` swaps it without a version bump).
_BT_HOST: dict[int, tuple] = {}


def _version(t) -> int | None:
    try:
        return t._version
    except RuntimeError:  # an inference-mode tensor keeps no version counter
        return None


def _remember(t: torch.Tensor, value: float) -> None:
    ver = _version(t)
    if ver is not None:
        k = id(t)
        # the dict itself in the callback: a tensor freed while the interpreter shuts down
        # may call back after the module's globals are cleared
        _BT_HOST[k] = (weakref.ref(t, lambda _, k=k, d=_BT_HOST: d.pop(k, None)), ver, t.data_ptr(), value)


def _bt_values(uniq: dict) -> dict:
    """``{id: value}`` of the beta^t tensors in ``uniq`` (``{id: tensor}``), read from the
    device only when not known (a Leaf's first step, or a tensor changed in place)."""
    val: dict = {}
    read: dict = {}
    for k, b in uniq.items():
        e = _BT_HOST.get(k)
        if e is not None and e[0]() is b and e[1] == _version(b) and e[2] == b.data_ptr():
            val[k] = e[3]
        else:
            read[k] = b
    if read:
        if len(read) <= 8:
            got = [b.item() for b in read.values()]
        else:
            got = torch.stack([b.reshape(()) for b in read.values()]).tolist()
        for (k, b), v in zip(read.items(), got):
            val[k] = v
            _remember(b, v)
    return val


def _next_bt(bt: torch.Tensor, value: float, beta: float, f) -> torch.Tensor:
    """``bt * beta`` as the generic rule computes it, with its host value remembered (the
    product of two floats of the dtype, correctly rounded on the host as on the device)."""
    return _next_bts(((bt, value, beta),), f)[0]


def _next_bts(items, f) -> list:
    """``_next_bt`` of each ``(bt, value, beta)``. On the CPU a new 0-d tensor holding the
    (exact) value costs half the multiplication; on a device the multiplications are
    queued, where a copy from the host would wait, as one launch for all of them (Adam's
    two: one multi-tensor kernel, scalars in the dtype as in ``bt * beta``)."""
    vs = [float(f(value) * f(beta)) for _, value, beta in items]
    bt0 = items[0][0]
    if bt0.is_cpu:
        new = [torch.scalar_tensor(v, dtype=bt.dtype) for (bt, _, _), v in zip(items, vs)]
    else:
        new = torch._foreach_mul([bt for bt, _, _ in items], [beta for _, _, beta in items])
    for t, v in zip(new, vs):
        _remember(t, v)
    return new


_INFOS: dict[tuple, tuple] = {}  # (id(rule), dtype) -> (rule, _adam_info): rules are frozen


def _info(rule, dtype, T):
    """``_adam_info`` remembered per rule object and dtype (the rule is kept, so that its id
    stays its own): a step asks it for the same rule every time."""
    hit = _INFOS.get((id(rule), dtype))
    if hit is not None and hit[0] is rule:
        return hit[1]
    info = _adam_info(rule, T)
    if len(_INFOS) >= 64:
        del _INFOS[next(iter(_INFOS))]
    _INFOS[(id(rule), dtype)] = (rule, info)
    return info


def _adam_fused(rules, states, xs, gs, inplace):
    if not _supported(xs):
        return NotImplemented
    x0 = xs[0]
    dtype, cpu = x0.dtype, x0.is_cpu
    dev = x0.device
    T = caster(x0)
    f = _np_type(dtype)
    n = len(xs)
    # -- pass 1: analyse each distinct rule once, check every state (nothing written yet);
    # each check runs over whole lists (in C), which at 1,000s of arrays a step matters
    uniform = all(map(operator.is_, rules, itertools.repeat(rules[0], n)))
    if uniform:  # the usual case: setup shares one rule
        infos = [_info(rules[0], dtype, T)] * n
    else:
        analysed: dict[int, Any] = {}
        for r in rules:
            if id(r) not in analysed:
                analysed[id(r)] = _info(r, dtype, T)
        infos = [analysed[id(r)] for r in rules]
    if None in infos:
        return NotImplemented
    inners = (list(states) if uniform and infos[0][0] else
              [fast_numpy.base_state(st, info[0]) for st, info in zip(states, infos)])
    # (m, v, (b1^t, b2^t)) each, asked of whole lists: exact tuples (a subclass, say a
    # NamedTuple, goes to the generic path)
    if set(map(type, inners)) != {tuple} or set(map(len, inners)) != {3}:
        return NotImplemented
    ms, vs, bts = (list(c) for c in zip(*inners))
    if set(map(type, bts)) != {tuple} or set(map(len, bts)) != {2}:
        return NotImplemented
    bt1, bt2 = (list(c) for c in zip(*bts))
    shapes = list(map(_SHAPE, xs))
    if not (_all_like(ms, shapes, dtype, cpu, dev) and _all_like(vs, shapes, dtype, cpu, dev)):
        return NotImplemented
    # the fused kernels walk raw memory as if dense: a strided or lazily negated parameter
    # or moment goes to the numba route (which has its own rules) or the generic path
    if not (_all_dense(xs) and _all_dense(ms) and _all_dense(vs)):
        return NotImplemented
    b10, b20 = bt1[0], bt2[0]
    shared = all(map(operator.is_, bt1, itertools.repeat(b10, n))) and all(map(operator.is_, bt2, itertools.repeat(b20, n)))
    uniq = {id(b10): b10, id(b20): b20} if shared else {id(b): b for b in bt1 + bt2}
    if not all(isinstance(b, torch.Tensor) and b.dtype == dtype and b.numel() == 1 for b in uniq.values()):
        return NotImplemented
    # the beta^t values (after the first step, Leafs with equal values share one tensor)
    val = _bt_values(uniq)

    # -- everything else that can fail, before any write: ClipNorm's norms (one multi-tensor
    # call; this path agrees to rounding anyway). A non-finite norm with throw=True goes to
    # the generic path, which raises its DomainError before anything is modified.
    grads = gs
    clip_idx = [i for i, info in enumerate(infos) if info[1] is not None]
    if clip_idx:
        # the norms, read once (on a GPU a read waits for the device); the factors are
        # worked out on the host in the dtype, min(omega/norm, 1) as the rule does
        norms = np.asarray(torch.stack(torch._foreach_norm([gs[i] for i in clip_idx])).tolist(), f)
        # torch's norm does not overflow where the rule's sqrt(sum(g*g)) does (|g| ≳ 1.8e19
        # in float32): near that, or at inf/NaN, the generic path decides (and raises)
        if not (norms <= math.sqrt(torch.finfo(dtype).max) / 2).all():
            return NotImplemented
        with np.errstate(divide="ignore"):  # a zero norm: omega/0 = inf, factor 1, as the rule
            lam = np.minimum(np.asarray([infos[i][1].omega for i in clip_idx], f) / norms, f(1))
        # only the arrays actually clipped get a scaled copy (g * 1 is g: no copy, no pass);
        # a float32 factor is exact as a Python float, and the kernel multiplies in the dtype
        cut = [(i, float(l)) for i, l in zip(clip_idx, lam.tolist()) if l != 1.0]
        grads = list(gs)
        if cut:
            for (i, _), g in zip(cut, torch._foreach_mul([gs[i] for i, _ in cut], [l for _, l in cut])):
                grads[i] = g
    if not _all_dense(grads):  # (read only: a dense copy will do)
        grads = [g if g.is_contiguous() and not g.is_neg() else _copy(g.resolve_neg()) for g in grads]
    if not inplace:
        xs = [_copy(x) for x in xs]
        ms = [_copy(m) for m in ms]
        vs = [_copy(v) for v in vs]

    # -- pass 2: group by everything the fused call takes as a scalar; the new states
    groups: dict[tuple, list[int]] = {}
    new_bt: dict[tuple, Any] = {}
    out: list = [None] * n
    if uniform and shared:
        # one group; every array gets the same new beta^t tensors, as the loop below gives
        info = infos[0]
        groups[info[2:] + (val[id(bt1[0])], val[id(bt2[0])])] = list(range(n))
        nbt = tuple(_next_bts(((bt1[0], val[id(bt1[0])], info[4]), (bt2[0], val[id(bt2[0])], info[5])), f))
        news = [(m, v, nbt) for m, v in zip(ms, vs)]
        if not info[0]:
            news = [tuple(st[:-1]) + (new,) for st, new in zip(states, news)]
        out = list(zip(news, itertools.repeat(None, n) if inplace else map(Replace, xs)))
    else:
        for i in range(n):
            info = infos[i]
            p1, p2 = val[id(bt1[i])], val[id(bt2[i])]
            groups.setdefault(info[2:] + (p1, p2), []).append(i)
            # beta^t advances exactly as in the generic rule (bt * T(beta)); arrays with equal
            # values share the new 0-d tensor (never mutated in place, so sharing is safe)
            k1, k2 = (p1, info[4]), (p2, info[5])
            n1 = new_bt.get(k1)
            if n1 is None:
                n1 = new_bt[k1] = _next_bt(bt1[i], p1, info[4], f)
            n2 = new_bt.get(k2)
            if n2 is None:
                n2 = new_bt[k2] = _next_bt(bt2[i], p2, info[5], f)
            new = (ms[i], vs[i], (n1, n2))
            out[i] = (new if info[0] else tuple(states[i][:-1]) + (new,),
                      None if inplace else Replace(xs[i]))  # None: written in place
    step = _huge_step(dev)
    for (kind, eta, b1, b2, eps, wd, dec, p1, p2), idx in groups.items():
        c1 = float(f(1) - f(p1))
        c2 = float(f(1) - f(p2))
        s2 = math.sqrt(c2)
        lr = eta * s2 / c1
        if len(idx) == n:
            args = (list(xs), list(grads), ms, vs, [], [step] * n)
        else:
            args = ([xs[i] for i in idx], [grads[i] for i in idx], [ms[i] for i in idx], [vs[i] for i in idx],
                    [], [step] * len(idx))
        if kind == "adam":
            torch._fused_adam_(*args, lr=lr, beta1=b1, beta2=b2, weight_decay=wd, eps=eps * s2,
                               amsgrad=False, maximize=False)
        else:  # torch's AdamW multiplies x by 1 - lr*weight_decay first
            torch._fused_adamw_(*args, lr=lr, beta1=b1, beta2=b2, weight_decay=dec / lr if lr else 0.0,
                                eps=eps * s2, amsgrad=False, maximize=False)
    if inplace:
        _bump(xs)
    return out


# ------------------------------------------------------------------------- exact foreach

def _uniform(cls, rules, states, xs, gs):
    """``(rule, caster)`` when every array has one bare ``cls`` rule with equal hyper-parameters
    and a single-tensor state laid out like ``x`` (what the foreach paths need), else None."""
    if not all(type(r) is cls for r in rules) or not _supported(xs):
        return None
    if not _same_tensors(xs, states):
        return None
    if any(a.is_neg() for a in states) or any(x.is_neg() for x in xs):
        return None  # in-place foreach ops refuse tensors with torch's lazy negation bit
    r0 = rules[0]
    if not all(r == r0 for r in rules):
        return None
    return r0, caster(xs[0])


def _momentum_foreach(rules, states, xs, gs, inplace):
    from ..optimise import Momentum
    u = _uniform(Momentum, rules, states, xs, gs)
    if u is None:
        return NotImplemented
    r0, T = u
    rho, eta = T(r0.rho), T(r0.eta)
    vs = list(states) if inplace else [_copy(v) for v in states]
    # v <- rho*v + eta*g exactly as the generic rule (no alpha=: that would be an FMA)
    torch._foreach_mul_(vs, rho)
    torch._foreach_add_(vs, torch._foreach_mul(gs, eta))
    if inplace:
        torch._foreach_sub_(xs, vs)
        return [(v, None) for v in vs]  # written in place
    return [(v, Replace(x)) for v, x in zip(vs, torch._foreach_sub(xs, vs))]


def _lion_foreach(rules, states, xs, gs, inplace):
    from ..optimise import Lion
    u = _uniform(Lion, rules, states, xs, gs)
    if u is None:
        return NotImplemented
    r0, T = u
    b1, b2 = T(r0.beta[0]), T(r0.beta[1])
    ss = list(states) if inplace else [_copy(s) for s in states]
    # s <- b2*g + (1-b2)*s; d = eta*sign((b2-b1)*g + b1*s), operation by operation
    t = torch._foreach_mul(gs, b2)
    torch._foreach_mul_(ss, T(1 - b2))
    torch._foreach_add_(ss, t)
    c = torch._foreach_mul(gs, T(b2 - b1))
    torch._foreach_add_(c, torch._foreach_mul(ss, b1))
    torch._foreach_sign_(c)
    torch._foreach_mul_(c, T(r0.eta))
    if inplace:
        torch._foreach_sub_(xs, c)
        return [(s, None) for s in ss]  # written in place
    return [(s, Replace(x)) for s, x in zip(ss, torch._foreach_sub(xs, c))]


# ------------------------------------------------------------------------- dispatch

def _update_torch(rules, states, xs, gs, *, inplace):
    if not xs:
        return NotImplemented
    res = _adam_fused(rules, states, xs, gs, inplace)  # declines rules outside the Adam family
    if res is not NotImplemented:
        return res
    res = _numba(rules, states, xs, gs, inplace)
    if res is not NotImplemented:
        return res
    res = _momentum_foreach(rules, states, xs, gs, inplace)
    if res is not NotImplemented:
        return res
    return _lion_foreach(rules, states, xs, gs, inplace)


def _register() -> None:
    from ..optimise import Adam, AdamW, Lion, Momentum, OptimiserChain
    for cls in (Adam, AdamW, Momentum, Lion, OptimiserChain):
        fast.register(("update_", cls), "torch")(_update_torch)
    fast_scheduler.register("torch", _scheduler_counters)


_MADE = fast_scheduler.MadeCounters()  # entries [views, their base, values, version, addresses]
_ADDRESS_OF = torch.Tensor.data_ptr


def _scheduler_counters(ts: list, inplace: bool):
    """A Scheduler group's counters as ints, and ``advance`` giving ``t + 1`` for each as
    ``Scheduler.apply`` makes it (a distinct 0-d tensor each).

    Counters this function made, unchanged since (the same objects at the same version
    counter and memory address: ``.data = ...`` swaps the memory without a version bump),
    are known without a read, as the fused Adam path knows its beta^t values: a steady
    schedule reads nothing back from the device. Others are read in one transfer. New
    counters are views of one tensor made in one call (``_foreach_add`` made a tensor per
    array, 2.5 us each): each is its own element, so an in-place change of one changes no
    other, and bumps the version they all share (one test covers them all). For
    ``update_``, which writes the moments in place, known counters are advanced in place:
    one launch, nothing allocated."""
    entry = _MADE.find(ts)
    if entry is not None and (_version(ts[0]) != entry[3] or list(map(_ADDRESS_OF, ts)) != entry[4]):
        entry = None  # changed since
    now = torch.stack(ts).tolist() if entry is None else list(entry[2])

    def advance() -> list:
        vals = list(map((1).__add__, now))
        if entry is not None and inplace:
            base = entry[1]
            base.add_(1)
            entry[2], entry[3] = vals, base._version
            return list(ts)
        t0 = ts[0]
        if any(t.dtype != t0.dtype or t.device != t0.device for t in {id(t): t for t in ts}.values()):
            return list(torch._foreach_add(ts, 1))
        if vals.count(vals[0]) == len(vals):
            base = torch.full((len(vals),), vals[0], dtype=t0.dtype, device=t0.device)
        else:
            base = torch.tensor(vals, dtype=t0.dtype, device=t0.device)
        nxt = list(base.unbind(0))
        version = _version(base)
        if version is not None:  # (an inference-mode tensor keeps none: nothing remembered)
            _MADE.add(nxt, base, vals, version, list(map(_ADDRESS_OF, nxt)))
        return nxt
    return now, advance


_register()


# ------------------------------------------------------------------------- losses

@fast.register_direct("logitcrossentropy", torch.Tensor)
@fast.register("logitcrossentropy", "torch")
def logitcrossentropy_torch(yhat, y, axis, agg, ybool=None):
    """Flux's ``logitcrossentropy`` as one ``F.cross_entropy`` call (probability targets:
    ``-sum(y * log_softmax(ŷ), class axis)``, then mean or sum over samples), forward and
    backward in torch's fused kernels. For ``ŷ`` and ``y`` already prepared by the loss.

    A bool ``y`` (``onehotbatch``'s) with exactly one True per row is read as class labels:
    Flux's strong zero makes the loss ``-log_softmax(ŷ)[label]``, which is what
    ``F.cross_entropy`` computes from integer labels, the fastest form (no pass over a float
    target, forward or backward).

    Returns None (use the generic formula) unless: 2-D, class axis last, a target of ŷ's
    float dtype or a one-hot bool one, ``agg`` "mean" or "sum", and a result that is not NaN
    (NaN cases, e.g. infinite logits, or a float 0 target times a -Inf log-probability, are
    redone by the generic path, which follows NNlib exactly). Also the loss's direct kernel
    (``ybool`` None: its raw arguments, see ``fast.register_direct``).
    """
    if (not isinstance(y, torch.Tensor) or yhat.ndim != 2 or y.shape != yhat.shape
            or type(axis) is not int or axis not in (-1, 1) or not yhat.dtype.is_floating_point
            or type(agg) is not str or agg not in ("mean", "sum") or yhat.shape[0] == 0):
        return None
    if ybool is None:
        ybool = y.dtype == torch.bool
    ok = None
    if ybool:
        lab = _labels(y)
        if lab is None:
            return None
        y, ok = lab
    elif y.dtype != yhat.dtype:
        return None
    out = F.cross_entropy(yhat, y, reduction=agg)
    # item(): a tenth of bool(torch.isnan(out))'s cost. Labels not yet checked (a GPU's)
    # are checked in the same read, so that the device is waited for once per call
    v = out if ok is None else torch.where(ok, out.detach(), math.nan)
    if math.isnan(v.item()):
        return None
    return out


def _labels(y: torch.Tensor, via_numpy: bool | None = None) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """``(labels, ok)``: the column of the one True in each row of a 2-D bool ``y``, and
    whether every row has exactly one. On the CPU through NumPy's vectorised bool scans
    (torch's reductions over bool rows are ~10x slower): checked here, ``ok`` is None, and
    None is returned for a row with none or several. Elsewhere in torch: ``ok`` is a 0-d
    bool tensor on ``y``'s device, left unread (reading it waits for the device; the caller
    reads it with its own result). The labels are always valid class indices."""
    n, c = y.shape
    if via_numpy is None:
        via_numpy = y.is_cpu
    if via_numpy:
        a = y.numpy()
        if np.count_nonzero(a) != n:
            return None
        if c == 1:  # every row True
            return torch.zeros(n, dtype=torch.int64), None
        idx = a.argmax(-1)
        # n Trues in all, and each row's first True found: one per row
        if np.count_nonzero(a.reshape(-1)[idx + np.arange(0, n * c, c)]) != n:
            return None
        return torch.from_numpy(idx), None
    idx = y.view(torch.uint8).argmax(-1)
    return idx, (y.sum() == n) & y.gather(1, idx[:, None]).all()


@fast.register_direct("logitbinarycrossentropy", torch.Tensor)
@fast.register("logitbinarycrossentropy", "torch")
def logitbinarycrossentropy_torch(yhat, y, agg):
    """Flux's ``logitbinarycrossentropy`` (``(1 - y)*ŷ - logσ(ŷ)``, then mean or sum) as one
    ``F.binary_cross_entropy_with_logits`` call, which computes the same stable formula.
    None (generic path) unless ``y`` is a tensor of ŷ's shape and float dtype, ``agg`` is
    "mean" or "sum", and the result is not NaN. Also the loss's direct kernel."""
    if (not isinstance(y, torch.Tensor) or y.shape != yhat.shape or y.dtype != yhat.dtype
            or not yhat.dtype.is_floating_point or type(agg) is not str or agg not in ("mean", "sum")
            or yhat.numel() == 0):
        return None
    out = F.binary_cross_entropy_with_logits(yhat, y, reduction=agg)
    if math.isnan(out.item()):
        return None
    return out


# ------------------------------------------------------------------------- state memory

# Optimiser state (moments, accumulators) of a large CPU tensor is backed by huge pages
# where the kernel offers them on request (Linux, transparent huge pages in "madvise"
# mode, the usual default), as NumPy does for its own arrays of 4 MiB and more. A step
# streams every state array: with 2 MiB pages instead of 4 KiB ones its TLB misses go,
# and torch's fused Adam kernel on 10 M float32 took 0.85-0.88x the time with all four
# streams huge-paged, 0.91-0.97x with only the two moments (docs/performance.md).
_HUGE_MIN = 4 << 20  # NumPy's threshold
_MADV_HUGEPAGE = 14
_PAGE = 4096
_madvise: list = []


def _advise_huge(t: torch.Tensor) -> None:
    """Ask for huge pages behind ``t``'s (not yet touched) memory; silently nothing where
    the platform has no such advice."""
    if not _madvise:
        fn = None
        if sys.platform.startswith("linux"):
            try:
                import ctypes
                fn = ctypes.CDLL(None, use_errno=True).madvise
                fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                fn.restype = ctypes.c_int
            except (OSError, AttributeError):
                fn = None
        _madvise.append(fn)
    fn = _madvise[0]
    if fn is None:
        return
    start = t.untyped_storage().data_ptr()
    end = start + t.untyped_storage().nbytes()
    first = -(-start // _PAGE) * _PAGE  # whole pages of this storage only: the advice
    size = (end - first) // _PAGE * _PAGE  # would round a partial last page up
    if size > 0:
        fn(first, size, _MADV_HUGEPAGE)  # a refusal (EINVAL: no THP) changes nothing


def _state_like(x) -> torch.Tensor | None:
    """An uninitialised tensor like ``x`` with huge-page advice, or None (small, not on the
    CPU, traced, or not a plain strided tensor: the caller's ``zeros_like``/``full_like``)."""
    if (x.device.type != "cpu" or x.layout != torch.strided or x.numel() * x.element_size() < _HUGE_MIN
            or (type(x) is not torch.Tensor and type(x) is not torch.nn.Parameter)
            or torch.compiler.is_compiling()):
        return None
    out = torch.empty_like(x)
    _advise_huge(out)
    return out


@fast.register("zeros_like", "torch")
def zeros_like_torch(x):
    out = _state_like(x)
    return None if out is None else out.zero_()


@fast.register("full_like", "torch")
def full_like_torch(x, v):
    out = _state_like(x)
    return None if out is None else out.fill_(v)


from . import fast_torch_tree  # noqa: E402,F401  (registers the whole-step route for modules)
