"""JAX fast path: one jitted, buffer-donating XLA program per group of arrays.

Called eagerly, the generic rules dispatch one small XLA computation per operation and per
array (an Adam step on 1,000 arrays is ~20,000 dispatches, each allocating a new buffer).
Here the whole group's step (every array's ``rule.apply`` and ``x - delta``) is traced once
and compiled by ``jax.jit``; later steps with the same rules and structure reuse it.

``update_``'s in-place contract means the old parameter and state buffers are not needed
after the step, so they are *donated* to XLA, which then writes the results in place (no
allocation, half the memory traffic). Consequence: after ``update_`` the previous JAX
arrays of the parameters and of the optimiser state are deleted; use the returned
``(state, model)`` (or the containers ``update_`` rebinds), as the contract says. ``update``
(pure) uses the same compiled program without donation and never invalidates its inputs.
On the CPU, in ``update_``, a group of ``Adam``, ``AdamW``, ``Momentum`` or ``Lion`` rules
(also behind a ``ClipNorm``/``WeightDecay`` prefix, or scheduled) does its parameters and
state arrays inside that program by one custom call into the numba kernels
(:mod:`fluxtrain._backend.fast_jax_ffi`): XLA's own code for Adam takes three passes per
array where the kernels take one.

Once compiled, a step costs little more than JAX's dispatch, which is paid per input and
per output buffer (a few microseconds each). So the program's inputs are the *distinct*
arrays of ``(states, xs, gs)`` (by identity; a repeated array is passed once), and 0-d
state entries such as Adam's ``beta^t`` are shared: Leafs with equal rules and equal 0-d
state get the same 0-d arrays, which the program reads once and returns once. That is
exact only for rules whose 0-d state depends on nothing but itself and the
hyper-parameters; rules declare it with ``Rule._scalar_state_independent`` (checked for
every rule by the tests). Shared 0-d arrays are donated only by the plans of a
:class:`Store` (``update_``'s route), which owns them: elsewhere a Leaf outside this step
may hold them.

Not used (generic path instead) when the arrays are tracers (a ``jax.jit`` of the user's
own, which compiles the generic path anyway), when a rule is not hashable (e.g. a traced
hyper-parameter), or when a ``ClipNorm(throw=True)`` in the group sees a non-finite norm
(so the generic path raises its ``DomainError`` before anything is modified).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import math
import operator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import fast, fast_jax_ffi, fast_scheduler, minus
from ..optimise.base import Masked, Replace
from ..schedules.scheduler import Scheduler, SchedulerState

_Tracer = jax.core.Tracer


def _new_x(x, delta):
    if delta is None:
        return x
    if isinstance(delta, Replace):
        return delta.value
    if isinstance(delta, Masked):
        return jnp.where(delta.active, x - delta.delta, x)
    return minus(x, delta)


# Float hyper-parameters (learning rates, betas, epsilons, decays, ...) are arguments of the
# compiled program, not constants in it, so that adjust_(state, ...) or a Scheduler changing
# them every step does not compile a new program. That is exact because the rules compute
# with them as base.py describes: each scalar operation on the host works on values already
# rounded to the parameter dtype and is rounded once, which is what the same operation on a
# 0-d array of that dtype gives. What may select code paths stays static: ints, bools,
# strings, and the float fields a rule names in ``_static_fields`` (ClipNorm's p).
_ARG = "<arg>"
_FIELDS: dict[type, tuple] = {}


def _arg_fields(cls: type) -> tuple:
    """The fields of rule class ``cls`` that may hold argument hyper-parameters: for the
    built-in rules (written, and tested, to compute with arrays there) every field but
    the static ones; for a user's rule traced inside a chain, only ``eta``, whose other
    fields may select code with a Python ``if``."""
    f = _FIELDS.get(cls)
    if f is None:
        from ..optimise import RULES
        names = [x.name for x in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
        if cls in RULES.values():
            static = set(cls._static_fields) | {"opts", "rule"}
            f = tuple(n for n in names if n not in static)
        else:
            f = ("eta",) if "eta" in names else ()
        _FIELDS[cls] = f
    return f


def _split(rule, hyper: list):
    """A hashable skeleton of ``rule`` with each float hyper-parameter (alone or in a tuple
    of floats, such as ``beta``) replaced by a marker, the values appended to ``hyper``."""
    opts = getattr(rule, "opts", None)
    inner = getattr(rule, "rule", None)
    found = []
    for name in _arg_fields(type(rule)):
        v = getattr(rule, name)
        if type(v) is float:
            found.append((name, _ARG))
            hyper.append(v)
        elif type(v) is tuple and v and all(type(e) is float for e in v):
            found.append((name, (_ARG,) * len(v)))
            hyper.extend(v)
    if not (found or isinstance(opts, tuple) or hasattr(inner, "apply")):
        return rule
    sk = copy.copy(rule)
    for name, marker in found:
        object.__setattr__(sk, name, marker)
    if isinstance(opts, tuple):
        object.__setattr__(sk, "opts", tuple(_split(o, hyper) for o in opts))
    if hasattr(inner, "apply"):
        object.__setattr__(sk, "rule", _split(inner, hyper))
    return sk


def _fill(sk, it):
    """``_split`` undone: the markers of skeleton ``sk`` replaced, in the same order, by the
    program's (traced) arguments from ``it``."""
    opts = getattr(sk, "opts", None)
    inner = getattr(sk, "rule", None)
    found = []
    for name in _arg_fields(type(sk)):
        v = getattr(sk, name)
        if v is _ARG or (type(v) is tuple and v and v[0] is _ARG):
            found.append((name, v))
    if not (found or isinstance(opts, tuple) or hasattr(inner, "apply")):
        return sk
    r = copy.copy(sk)
    for name, v in found:
        object.__setattr__(r, name, next(it) if v is _ARG else tuple(next(it) for _ in v))
    if isinstance(opts, tuple):
        object.__setattr__(r, "opts", tuple(_fill(o, it) for o in opts))
    if hasattr(inner, "apply"):
        object.__setattr__(r, "rule", _fill(inner, it))
    return r


def _throw_check(rule):
    """How the pre-check can see a ``ClipNorm(throw=True)`` in ``rule`` before anything is
    donated: None (no such rule), the ClipNorm itself when it is ``rule`` or, recursively, the
    first rule of a chain (it then sees the raw gradient, whose norm the pre-check computes
    exactly as the rule does), or False (it sees an intermediate value: not checkable
    beforehand, so the generic path runs)."""
    from ..optimise import ClipNorm, OptimiserChain
    if isinstance(rule, ClipNorm):
        return rule if rule.throw else None
    subs = rule.subrules()
    if not subs:
        return None
    # a chain's first rule sees the raw gradient, as does a Scheduler's rule (AtStep); a
    # wrapper such as MixedPrecision hands its rule a converted one, and later chain
    # members see intermediate values
    first = _throw_check(subs[0]) if isinstance(rule, (OptimiserChain, fast_scheduler.AtStep)) else False
    if first is False and all(_throw_check(r) is None for r in subs):
        return None
    if first is False or any(_throw_check(r) is not None for r in subs[1:]):
        return False
    return first


@functools.partial(jax.jit, static_argnums=0)
def _checked_norms(clips, gs):
    """Whether the norm each array's first ClipNorm(throw=True) will compute is finite (a
    non-finite one, from inf/NaN entries or an overflowing sum, must raise), and those
    norms, computed as the rule computes them. The step then uses them instead of
    computing them again: at one large array that saves a read of the gradient from
    memory. Stacked into one buffer: a group's gradients share their parameters' dtype."""
    norms = jnp.stack([c.norm(g) for c, g in zip(clips, gs) if c is not None])
    return jnp.all(jnp.isfinite(norms)), norms


def _with_norm(rule, nrm):
    """``rule`` whose ClipNorm found by ``_throw_check`` takes the norm ``nrm`` (from
    ``_checked_norms``) instead of computing it."""
    from ..optimise import ClipNorm
    r = copy.copy(rule)
    if isinstance(rule, ClipNorm):
        object.__setattr__(r, "norm", lambda g: nrm)
    elif isinstance(rule, fast_scheduler.AtStep):
        object.__setattr__(r, "rule", _with_norm(rule.rule, nrm))
    else:  # a chain whose first rule sees the raw gradient
        object.__setattr__(r, "opts", (_with_norm(rule.opts[0], nrm),) + tuple(rule.opts[1:]))
    return r


# ------------------------------------------------------------------------------ rules

class _Spec:
    """The distinct rules of a group (by identity, then equality) as skeletons without
    their float hyper-parameters, which array uses which, and per skeleton the facts the plan
    needs. Hashable (the compiled programs are cached under it)."""

    __slots__ = ("skeletons", "which", "throws", "independent", "_hash")

    def __init__(self, skeletons: tuple, which: tuple) -> None:
        self.skeletons, self.which = skeletons, which
        self._hash = hash((skeletons, which))  # TypeError: unhashable hyper-parameters
        checks = [_throw_check(r) for r in skeletons]
        # None: nothing to check; False: a check the pre-check cannot do (generic path);
        # else the ClipNorm of each array, for the pre-check
        self.throws = (False if any(c is False for c in checks) else
                       tuple(checks[j] for j in which) if any(c is not None for c in checks) else None)
        self.independent = tuple(bool(getattr(r, "_scalar_state_independent", False)) for r in skeletons)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: Any) -> bool:
        return self is other or (isinstance(other, _Spec) and self._hash == other._hash
                                 and self.which == other.which and self.skeletons == other.skeletons)


_SPECS: dict[tuple, tuple] = {}  # tuple of rule ids -> (rules, spec, hyper); rules kept alive so ids stay unique
_SPECS_MAX = 16


def _spec(rules: list) -> tuple[_Spec, tuple]:
    key = tuple(map(id, rules))
    hit = _SPECS.get(key)
    if hit is not None:
        return hit[1], hit[2]
    uniq: list = []
    ids: dict[int, int] = {}
    which = []
    for r in rules:
        j = ids.get(id(r))
        if j is None:
            for k, u in enumerate(uniq):
                if u == r:
                    j = k
                    break
            else:
                j = len(uniq)
                uniq.append(r)
            ids[id(r)] = j
        which.append(j)
    spec, hyper = _spec_of(uniq, tuple(which))
    if len(_SPECS) >= _SPECS_MAX:
        del _SPECS[next(iter(_SPECS))]
    _SPECS[key] = (list(rules), spec, hyper)
    return spec, hyper


def _spec_of(uniq: list, which: tuple) -> tuple[_Spec, tuple]:
    """The spec of distinct rules ``uniq`` used by the arrays as ``which`` says, and the
    float hyper-parameters, the program's arguments."""
    hyper: list = []
    skeletons = tuple(_split(r, hyper) for r in uniq)
    return _Spec(skeletons, which), tuple(hyper)


# ------------------------------------------------------------------------------ plans

class _Mismatch(Exception):
    """A trace found shapes that contradict the plan (e.g. a 0-d array where the plan
    has a larger one): fall back to the generic path."""


class _Plan:
    """Everything about one group step that depends only on the rules, the tree structure
    and which leaves are the same object; built once, reused every step.

    Leaves are those of ``jax.tree.flatten((states, xs, gs))``; ``slot`` numbers the
    distinct ones (each repeated leaf is passed to the program once).
    """

    def __init__(self, spec: _Spec, treedef, idx: tuple, leaves: list, inplace: bool, share: bool,
                 ffi: bool, zero: tuple) -> None:
        self.spec, self.treedef, self.inplace = spec, treedef, inplace
        self.key: tuple | None = None  # set by _plan
        states_td = treedef.children()[0]
        self.state_tds = tuple(states_td.children())
        k = len(self.state_tds)
        bounds = [0]
        for td in self.state_tds:
            bounds.append(bounds[-1] + td.num_leaves)
        self.bounds = bounds
        n_state = bounds[-1]
        self.x_pos = tuple(range(n_state, n_state + k))
        # distinct leaves, in order of first appearance (idx: position of each leaf's last twin)
        slot_of_rep: dict[int, int] = {}
        for p in idx:
            if p not in slot_of_rep:
                slot_of_rep[p] = len(slot_of_rep)
        self.slot = tuple(slot_of_rep[p] for p in idx)
        self.rep_of = idx
        # the repeated positions and their twins: with the count of distinct leaves, all
        # that a later step must match to reuse this plan
        twins = [(i, p) for i, p in enumerate(idx) if i != p]
        self.twin_a = tuple(i for i, _ in twins)
        self.twin_b = tuple(p for _, p in twins)
        nslots = len(slot_of_rep)
        count = [0] * nslots
        for s in self.slot:
            count[s] += 1
        rep_pos = list(slot_of_rep)
        self.zero_leaves = zero  # which leaves are 0-d (part of the plan's key)
        self.zero_d = tuple(self.zero_leaves[p] for p in rep_pos)
        # donate a buffer only if it is read exactly once, as a state or parameter (never
        # as a gradient), and is not 0-d (shared 0-d state may be held by other Leafs);
        # a store's plan donates its 0-d state too (read only as state: ``rep_pos`` is a
        # slot's last position), since the store owns what it passes back (Store.state_of
        # hands out copies) and a step not chained from it passes copies (``zd``). Else
        # those outputs would get new buffers every step, which on a GPU makes XLA update
        # the recorded command buffer of every kernel reading them (~10 us per array).
        don = [inplace and isinstance(leaves[rep_pos[s]], jax.Array)
               and ((count[s] == 1 and rep_pos[s] < n_state + k and not self.zero_d[s])
                    or (share and self.zero_d[s] and rep_pos[s] < n_state)) for s in range(nslots)]
        self.don_slots = tuple(s for s in range(nslots) if don[s])
        self.zd = tuple(j for j, s in enumerate(self.don_slots) if self.zero_d[s])
        self.keep_slots = tuple(s for s in range(nslots) if not don[s])
        self.don_pos = tuple(rep_pos[s] for s in self.don_slots)
        self.keep_pos = tuple(rep_pos[s] for s in self.keep_slots)
        self.nslots = nslots
        if share:  # outputs held by a Store (which hands out distinct copies when read)
            self.zpos, self.cluster_of = self._clusters(n_state)
        else:  # outputs that become Leaf states: never shared (a donating jit refuses repeats)
            self.zpos, self.cluster_of = None, (None,) * k
        nclusters = len(set(c for c in self.cluster_of if c is not None))
        nkinds = len(set(c[:3] for c in self.cluster_of if c is not None))
        # Fresh Leafs (setup) have equal but distinct 0-d arrays: worth one look at values
        self.try_merge = nclusters > nkinds
        self.out_map: tuple | None = None
        self.out_treedef = None
        # on the CPU, rules the numba kernels step (Adam, AdamW, Momentum, Lion, with a
        # ClipNorm/WeightDecay prefix): the parameters and state arrays by one custom call,
        # one pass per array (fast_jax_ffi); else XLA's own program
        self.ffi = ffi
        step = functools.partial(_traced, self)
        self.fn = jax.jit(step, donate_argnums=(2,)) if self.don_slots else jax.jit(step)
        self.reads_keep = False  # does out_map point at undonated inputs (set by the trace)?
        self.n_sx = n_state + k  # leaves of (states, xs); the gradients follow
        self._chains: bool | None = None
        # set by the trace when the custom call steps the group: the input slots ``kin``
        # and output positions ``kout`` of its per-array states ([q][i])
        self.n_outs: int | None = None
        self.kin: tuple | None = None
        self.kout: tuple | None = None
        self.flat_ok: bool | None = None  # not looked at yet
        self._flats: dict[tuple, _FlatPlan] = {}  # per the arrays' shapes (one program serves several)

    def chains(self, npool: int) -> bool:
        """Can this step's outputs ``(new_states, new_xs)``, with fresh gradients, be the
        next step's inputs under this same plan? True when the outputs have the inputs'
        structure and the same repeated leaves, and no gradient repeats anything. Then
        also sets where, in ``pool + gradients`` (``pool``: the program's outputs, with
        its kept inputs when it returns some of them, ``npool`` in all), the next step
        finds its donated and kept inputs, and each state's and parameter's outputs."""
        if self._chains is None:
            n = self.n_sx
            last = {r: i for i, r in enumerate(self.out_map)}
            self._chains = (self.out_treedef.children() == self.treedef.children()[:2]
                            and tuple(last[r] for r in self.out_map) == self.rep_of[:n]
                            and all(self.rep_of[i] == i for i in range(n, len(self.rep_of))))
            if self._chains:
                src = self.out_map + tuple(range(npool, npool + len(self.rep_of) - n))
                self.chain_don = tuple(src[p] for p in self.don_pos)
                self.chain_keep = tuple(src[p] for p in self.keep_pos)
                b = self.bounds
                self.state_idx = tuple(self.out_map[b[i]:b[i + 1]] for i in range(len(self.state_tds)))
                self.x_idx = self.out_map[b[-1]:n]
                # the outputs a Leaf's state shares with an earlier Leaf (or a parameter),
                # and the 0-d ones the next step donates: per Leaf, (position in its
                # state, index in Store.copies)
                seen, dups, self.copy_of = set(self.x_idx), [], []
                zd = {self.chain_don[j] for j in self.zd}
                for idx in self.state_idx:
                    mine = []
                    for q, r in enumerate(idx):
                        if r in seen or r in zd:
                            mine.append((q, len(dups)))
                            dups.append(r)
                        seen.add(r)
                    self.copy_of.append(tuple(mine))
                self.dups = tuple(dups)
        return self._chains

    def flat_plan(self, xs: list) -> "_FlatPlan | None":
        """The program that steps this plan's store, whose parameters are ``xs``, with the
        custom call's state arrays kept flat (see ``_FlatPlan``), or None where that layout
        does not apply (known without the arrays' shapes, ~0.4 us each to collect). Per
        shapes: a plan is kept per tree structure, and serves models of other shapes too
        (``jax.jit`` traces again), whose flat layout differs."""
        if self.flat_ok is None:
            self.flat_ok = self._flat_possible()
        if not self.flat_ok:
            return None
        shapes = tuple(x.shape for x in xs)
        fp = self._flats.get(shapes)
        if fp is None:
            if len(self._flats) >= _PLANS_MAX:
                del self._flats[next(iter(self._flats))]
            fp = self._flats[shapes] = _FlatPlan(self, shapes)
        return fp

    def _flat_possible(self) -> bool:
        kin, kout = self.kin, self.kout
        if not (self.inplace and self._chains and kin and kout and len(kin[0]) > 1):
            return False  # (one array: its state is already one buffer)
        ins = [s for row in kin for s in row]
        outs = [r for row in kout for r in row]
        don = set(self.don_slots)
        return (None not in ins and None not in outs and len(set(ins)) == len(ins) and len(set(outs)) == len(outs)
                and all(s in don and not self.zero_d[s] for s in ins)
                and all(self.out_map.count(r) == 1 for r in outs))

    def _clusters(self, n_state: int):
        """Per array: the positions of its 0-d state leaves, and its sharing cluster
        ``(rule, state structure, 0-d positions, their slots)`` or None."""
        spec, slot, zero = self.spec, self.slot, self.zero_d
        zpos, cluster = [], []
        for i, td in enumerate(self.state_tds):
            a, b = self.bounds[i], self.bounds[i + 1]
            zp = tuple(p - a for p in range(a, b) if zero[slot[p]])
            zpos.append(zp)
            j = spec.which[i]
            if zp and spec.independent[j] and not zero[slot[self.x_pos[i]]]:
                cluster.append((j, td, zp, tuple(slot[a + q] for q in zp)))
            else:
                cluster.append(None)
        return tuple(zpos), tuple(cluster)


def _traced(plan: _Plan, hyper, norms, don, keep, flat: "_Flat | None" = None):
    ops: list = [None] * plan.nslots
    for s, a in zip(plan.don_slots, don):
        ops[s] = a
    for s, a in zip(plan.keep_slots, keep):
        ops[s] = a
    if tuple(jnp.ndim(a) == 0 for a in ops) != plan.zero_d:
        raise _Mismatch
    states, xs, gs = plan.treedef.unflatten([ops[s] for s in plan.slot])
    spec = plan.spec
    it = iter(hyper)
    rules = [_fill(sk, it) for sk in spec.skeletons]
    firsts: dict = {}  # cluster -> the new 0-d state of its first array
    new_states, new_xs, used = [], [], []
    n = 0  # the next of the pre-checked ClipNorm norms
    for i, (j, s, x, g) in enumerate(zip(spec.which, states, xs, gs)):
        rule = rules[j]
        if norms is not None and spec.throws[i] is not None:
            rule, n = _with_norm(rule, norms[n]), n + 1
        used.append(rule)
        st, delta = rule.apply(s, x, g)
        c = plan.cluster_of[i]
        if c is not None:
            leaves, td = jax.tree.flatten(st)
            if td != plan.state_tds[i]:
                raise _Mismatch  # a rule that changes its state's structure: no sharing
            zp = plan.zpos[i]
            first = firsts.get(c)
            if first is None:
                firsts[c] = [leaves[q] for q in zp]
            else:
                for q, v in zip(zp, first):
                    leaves[q] = v
                st = td.unflatten(leaves)
        new_states.append(st)
        new_xs.append(_new_x(x, delta))
    extra = None
    if plan.ffi:
        # the rules' 0-d state (beta^t, a Scheduler's counter) stays theirs, shared as
        # above; the parameters and state arrays are replaced by the custom call's, and XLA
        # drops the rules' own computation of them
        res = fast_jax_ffi.step(used, states, new_states, xs, gs, flat=None if flat is None else flat.arrays)
        if res is not None:
            new_xs, new_states, extra = res
    if flat is not None and extra is None:
        raise _Mismatch  # (a flat layout exists only for steps the call does)
    # each distinct output once; an untouched, undonated input comes back as itself
    leaves, out_td = jax.tree.flatten((new_states, new_xs))
    kept = {id(a): k for k, a in enumerate(keep)}
    skip = flat.view_ids if flat is not None else ()
    outs: list = []
    where: dict[int, int] = {}
    ref: list = []
    for a in leaves:
        r = where.get(id(a))
        if r is None:
            k = kept.get(id(a))
            if k is not None:
                r = ~k
            elif id(a) in skip:  # a view of a flat state: the flat array is returned instead
                r = None
            else:
                r = where[id(a)] = len(outs)
                outs.append(a)
        ref.append(r)
    if flat is not None:
        flat.plan.record(ref, len(outs), len(keep))
        return outs + list(extra)
    out_map = tuple(r if r >= 0 else len(outs) + ~r for r in ref)
    if plan.out_map is None:
        plan.out_map, plan.out_treedef = out_map, out_td
        plan.reads_keep = any(r < 0 for r in ref)
        plan.n_outs = len(outs)
        if extra is not None:  # where the call's per-array states come in and go out
            slot_of = {id(a): s for s, a in enumerate(ops)}
            plan.kin = tuple(tuple(slot_of.get(id(a)) for a in row) for row in extra[0])
            plan.kout = tuple(tuple(where.get(id(a)) for a in row) for row in extra[1])
    elif plan.out_map != out_map or plan.out_treedef != out_td:
        raise _Mismatch  # a retrace (new shapes) that would return a different layout
    return outs


class _FlatPlan:
    """A :class:`Store`'s step with each state array of the custom call (Adam's ``m`` and
    ``v``, Momentum's velocity, Lion's momentum) kept as one flat array for all the group's
    arrays, the arrays' states one after the other. JAX's dispatch costs a few
    microseconds per input and output buffer: at 1,000 arrays Adam passes 2,000 state
    buffers in and out each step where two suffice. The layout is the store's own, between
    ``update_`` steps: a Leaf's ``state`` read from the store is a copy of its part
    (``Store.state_of``), so Optimisers.jl's per-array state stays the API.

    The program is the per-array plan's own trace (``_traced``): the rules read views of
    the flat arrays as their states (their own computation of those, unused, is dropped by
    XLA), and the custom call updates the flat arrays in place. Its outputs are the
    per-array plan's, less those states, plus the flat arrays; ``poolmap`` puts them back
    in the per-array plan's places (None where a flat state's part would be)."""

    def __init__(self, plan: _Plan, shapes: tuple) -> None:
        self.plan = plan
        pos = {s: j for j, s in enumerate(plan.don_slots)}
        self.kdon = tuple(tuple(pos[s] for s in row) for row in plan.kin)  # where in ``don`` each view goes
        ks = {j for row in self.kdon for j in row}
        self.rest = tuple(j for j in range(len(plan.don_slots)) if j not in ks)
        self.chain_rest = tuple(plan.chain_don[j] for j in self.rest)  # where the rest are in pool + gradients
        sizes = tuple(math.prod(sh) for sh in shapes)
        # per array: where its part of each flat state starts, its size and its shape
        self.spans = tuple(zip(itertools.accumulate((0,) + sizes[:-1]), sizes, shapes))
        at = {r: q for q, row in enumerate(plan.kout) for r in row}
        # per Leaf: (position among its state's leaves, q) of each part of a flat state
        self.kpos = tuple(tuple((p, at[r]) for p, r in enumerate(idx) if r in at) for idx in plan.state_idx)
        self.poolmap: tuple | None = None  # set by the trace
        self.fn = jax.jit(functools.partial(_traced_flat, self), donate_argnums=(2, 4))

    def parts(self, flat: list) -> list:
        """``[q][i]``: a copy of array ``i``'s part of flat state ``q``, in its shape, on the
        flat array's device. By way of NumPy, compiling nothing: a compiled split returning
        every part (2,000 outputs for Adam at 1,000 arrays) took 11 s to compile. The flat
        arrays are the CPU custom call's, so their NumPy views are their memory; each part
        is copied from the view, which is let go before a step can donate the arrays."""
        out = []
        for f in flat:
            dev = next(iter(f.devices()))
            v = np.asarray(f)
            # (a copy first: device_put may alias NumPy memory that is suitably aligned)
            out.append([jax.device_put(v[o:o + n].reshape(sh).copy(), dev) for o, n, sh in self.spans])
            del v
        return out

    def record(self, ref: list, n_outs: int, n_keep: int) -> None:
        """From the trace: ``ref`` per output leaf, as ``_traced`` numbers them (an output,
        ``~k`` for kept input ``k``, None for a view), mapped onto the per-array plan's pool."""
        P = self.plan
        m: list = [None] * (P.n_outs + (n_keep if P.reads_keep else 0))
        for r, pr in zip(ref, P.out_map):
            v = None if r is None else (r if r >= 0 else n_outs + ~r)
            if m[pr] is not None and m[pr] != v:
                raise _Mismatch
            m[pr] = v
        if P.reads_keep:
            for j in range(n_keep):
                m[P.n_outs + j] = n_outs + j
        none = n_outs + n_keep  # the index of a None appended after the kept inputs
        self.poolmap = tuple(none if v is None else v for v in m)


class _Flat(NamedTuple):
    plan: _FlatPlan
    arrays: list
    view_ids: set


def _traced_flat(fp: _FlatPlan, hyper, norms, don_rest, keep, flat):
    don: list = [None] * len(fp.plan.don_slots)
    for j, a in zip(fp.rest, don_rest):
        don[j] = a
    ids = set()
    for row, f in zip(fp.kdon, flat):  # each array's part of each flat state, as its state
        for j, (o, n, sh) in zip(row, fp.spans):
            don[j] = v = jax.lax.slice_in_dim(f, o, o + n).reshape(sh)
            ids.add(id(v))
    return _traced(fp.plan, hyper, norms, don, keep, _Flat(fp, list(flat), ids))


@jax.jit
def _join(row: list):
    """One flat array of the arrays ``row``, one after the other."""
    return jnp.concatenate([a.reshape(-1) for a in row])


_PLANS: dict[tuple, _Plan] = {}
_PLANS_MAX = 32
_LAST: dict[tuple, _Plan] = {}  # (spec, inplace) -> the plan used last: usually the next one too


def _plan(spec, treedef, leaves, inplace, share, ffi=False):
    ids = list(map(id, leaves))
    # which leaves are 0-d: part of what a plan's program is for (its sharing and donation),
    # and not fixed by the tree structure (another model of the same structure may have
    # a 0-d parameter where this one has none)
    zero = tuple(np.ndim(a) == 0 for a in leaves)
    plan = _LAST.get((spec, inplace, share, ffi))
    # the same structure, each repeated leaf the same object as its twin, no others alike
    if (plan is not None and treedef == plan.treedef and len(set(ids)) == plan.nslots and zero == plan.zero_leaves
            and list(map(ids.__getitem__, plan.twin_a)) == list(map(ids.__getitem__, plan.twin_b))):
        return plan.key, plan
    last = dict(zip(ids, range(len(ids))))
    idx = tuple(map(last.__getitem__, ids))
    key = (spec, treedef, idx, inplace, share, ffi, zero)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _Plan(spec, treedef, idx, leaves, inplace, share, ffi, zero)
        plan.key = key
        if len(_PLANS) >= _PLANS_MAX:
            del _PLANS[next(iter(_PLANS))]
        _PLANS[key] = plan
    if len(_LAST) >= _PLANS_MAX:
        del _LAST[next(iter(_LAST))]
    _LAST[(spec, inplace, share, ffi)] = plan
    return key, plan


def _merge(plan: _Plan, leaves: list) -> bool:
    """Make arrays of one rule whose 0-d states are equal (bit for bit, same dtype) read
    the same 0-d arrays, so that the program computes and returns them once. Exact: equal
    inputs give equal outputs for rules declaring ``_scalar_state_independent``."""
    values: dict[int, tuple] = {}
    first: dict[tuple, int] = {}
    changed = False
    for i, c in enumerate(plan.cluster_of):
        if c is None:
            continue
        a = plan.bounds[i]
        ps = [a + q for q in plan.zpos[i]]
        if any(np.ndim(leaves[p]) != 0 for p in ps):
            continue  # a plan made for other shapes: only 0-d arrays are ever substituted
        val = []
        for p in ps:
            v = values.get(plan.slot[p])
            if v is None:
                arr = leaves[p]
                v = values[plan.slot[p]] = (str(arr.dtype), bool(getattr(arr, "weak_type", False)),
                                            np.asarray(arr).tobytes())
            val.append(v)
        key = c[:3] + tuple(val)
        r = first.setdefault(key, i)
        if r != i:
            b = plan.bounds[r]
            for q, p in zip(plan.zpos[i], ps):
                if leaves[p] is not leaves[b + q]:
                    leaves[p] = leaves[b + q]
                    changed = True
    return changed


# ------------------------------------------------------------------------------ kernel

_ARGS: dict[tuple, Any] = {}  # (a value's bits, x64) -> its 0-d array
_ARGS_MAX = 256
_LAST_ARGS: list = [None, None, None]  # the last call's hyper (kept: identity), x64, arrays


def _arg_arrays(hyper: tuple) -> list:
    """The float hyper-parameters as (weakly typed) JAX arrays, made once per value: a
    Python float argument is copied to the device at every call, which on a GPU waits for
    the queue (the step then no longer overlaps the previous one), and ``jnp.asarray``
    costs ~50-80 us on a CPU. Per value, not per tuple: a schedule changes one value per
    step (Adam's learning rate), and only that one is made anew."""
    x64 = jax.config.jax_enable_x64
    if _LAST_ARGS[0] is hyper and _LAST_ARGS[1] == x64:  # a steady step passes the same tuple
        return _LAST_ARGS[2]
    out = []
    for v in hyper:
        k = (v.hex(), x64)  # the bits: 0.0 and -0.0 are two values
        a = _ARGS.get(k)
        if a is None:
            if len(_ARGS) >= _ARGS_MAX:
                del _ARGS[next(iter(_ARGS))]
            a = _ARGS[k] = jnp.asarray(v)
        out.append(a)
    _LAST_ARGS[:] = hyper, x64, out
    return out


class Store:
    """The optimiser states of one group's Leafs after an ``update_`` step, where the
    compiled program returned them. The route attaches each Leaf to it (``Leaf._store``,
    ``Leaf._at``); a Leaf's ``state`` is built from the outputs when it is read, once per
    step. When the next step finds the same Leafs still attached and the model holding
    this store's parameters, it passes the outputs straight back to the program, updates
    the store in place and touches no Leaf: Optimisers.jl's per-array state is kept as
    an API, while a step costs what a flat layout costs (no tuple per array to build,
    store and free). ``Leaf.state = ...`` detaches that Leaf. A store is updated in place
    only while every Leaf it was given is still attached, in order; Leafs are attached
    only to a new store, so one that lost a Leaf is never updated again (only read)."""

    __slots__ = ("plan", "pool", "xs", "rules", "hyper", "steps", "cache", "copies", "n", "order", "g_avals",
                 "g_sh", "flat", "fplan", "parts", "__weakref__")

    def __init__(self, plan: _Plan) -> None:
        self.plan, self.n = plan, len(plan.state_tds)
        self.order = list(range(self.n))
        self.pool: list = []
        self.xs: list = []
        self.rules: list = []
        self.hyper: tuple = ()
        self.steps: list | None = None  # a Scheduler group's counters, as Python ints
        self.cache: list | None = None
        self.copies: list | None = None
        self.g_avals: list | None = None  # the gradients' avals and placements last accepted
        self.g_sh: tuple = (None, None)  # (their sharding ids, the shardings kept alive)
        self.flat: list | None = None  # the flat states (``_FlatPlan``), when the store keeps them so
        self.fplan: _FlatPlan | None = None
        self.parts: list | None = None  # ``[q][i]``: copies of the flat states' parts, made when read

    def _leaves(self, i: int) -> list:
        leaves = list(map(self.pool.__getitem__, self.plan.state_idx[i]))
        if self.flat is not None:
            if self.parts is None:  # every Leaf's parts copied at once, once per step
                self.parts = self.fplan.parts(self.flat)
            for p, q in self.fplan.kpos[i]:
                leaves[p] = self.parts[q][i]
        return leaves

    def raw_state_of(self, i: int) -> Any:
        """Leaf ``i``'s state as the program returned it: 0-d arrays shared with other
        Leafs stay shared (the route passes them back once)."""
        return self.plan.state_tds[i].unflatten(self._leaves(i))

    def state_of(self, i: int) -> Any:
        """Leaf ``i``'s state as ``Leaf.state`` hands it out, built once per step: arrays
        it would share with another Leaf are copies (made for all Leafs in one compiled
        call), so that no state tree holds one buffer twice (``jax.jit`` with donation
        refuses that); so are the 0-d arrays the next step donates, which the store
        owns."""
        c = self.cache
        if c is None:
            c = self.cache = [None] * self.n
        st = c[i]
        if st is None:
            plan = self.plan
            leaves = self._leaves(i)
            if plan.copy_of[i]:
                if self.copies is None:
                    self.copies = _copies(list(map(self.pool.__getitem__, plan.dups)))
                for q, k in plan.copy_of[i]:
                    leaves[q] = self.copies[k]
            st = c[i] = plan.state_tds[i].unflatten(leaves)
        return st


def _chained(s: Store, spec, inplace, xs, gs):
    """``pool + gradients``, where the next step finds its inputs, when the model holds
    exactly the last step's parameters and the gradients are distinct new arrays (the
    caller has checked that the Leafs are the store's)."""
    plan = s.plan
    if (plan.inplace is inplace and (plan.spec is spec or plan.spec == spec)
            and len(xs) == len(s.xs) and all(map(operator.is_, xs, s.xs))):
        return _fresh(s, gs)
    return None


def _fresh(s: Store, gs):
    """``pool + gradients`` when the gradients are distinct arrays, none of them one of the
    store's (about to be donated), else None. Asked of the outputs' ids one by one: a set
    of them, kept between steps, costs more (fresh allocations, cold after the call)."""
    gids = set(map(id, gs))
    if len(gids) == len(gs) and not any(map(gids.__contains__, map(id, s.pool))):
        return s.pool + list(gs)
    return None


def _flat_for(s: Store, gs) -> tuple:
    """``(flat plan, pool + gradients)`` when the store ``s``, chained, keeps or can keep its
    custom call's states flat (they are joined now, once); ``(None, None)`` otherwise."""
    if s.flat is not None:
        return s.fplan, None
    fp = s.plan.flat_plan(s.xs)
    if fp is None:
        return None, None
    kout = s.plan.kout
    # (all states joined before the store changes: an error leaves it as it was)
    flat = [_join([s.pool[r] for r in row]) for row in kout]
    pool = list(s.pool)
    for row in kout:
        for r in row:
            pool[r] = None
    s.pool, s.flat, s.fplan, s.parts, s.cache, s.copies = pool, flat, fp, None, None, None
    return fp, _fresh(s, gs)


def _flat_start(plan: _Plan, hyper, norms, don: list, keep: list, xs: list) -> tuple:
    """``(flat plan, flat states, don less the states)`` to take a new store's first step
    with the custom call's states already flat, or ``(None, None, don)``. The per-array
    program is then traced but not compiled: a call with aliased state buffers per array
    is slow to compile (Adam at 1,000 arrays: the per-array program 7.7 s, then the flat
    one at the next step 4.3 s; flat from the start, 6.4 s in all)."""
    try:
        if plan.out_map is None:  # what the plan's outputs are, from a trace alone
            jax.eval_shape(plan.fn, _arg_arrays(hyper), norms, don, keep)
        if not plan.chains(plan.n_outs + (len(keep) if plan.reads_keep else 0)):
            return None, None, don
    except Exception:  # noqa: BLE001 - the per-array program's own call decides, and reports
        return None, None, don
    fp = plan.flat_plan(xs)
    if fp is None:
        return None, None, don
    flat = [_join([don[j] for j in row]) for row in fp.kdon]
    return fp, flat, [don[j] for j in fp.rest]


def step(rules, states, xs, gs, *, inplace, store: bool = False, held: Store | None = None,
         steady: bool = False):
    """``(new_states, new_xs)`` for one group, or ``NotImplemented`` (see ``_update_jax``).

    With ``store`` (``update_`` of the route), when the plan chains, ``new_states`` is the
    :class:`Store` holding them (``held``, updated in place, when the caller found its
    Leafs attached to it: then ``states`` may be None). ``steady``: the caller has also
    found the rule objects and parameters to be the store's and the gradients to be
    concrete arrays of the kinds seen before."""
    if not steady and (not xs or isinstance(xs[0], _Tracer)
                       or any(issubclass(t, _Tracer) for t in set(map(type, gs)))):
        return NotImplemented  # inside the user's own jit: the generic path is compiled anyway
    p = held
    given, steps = rules, None
    if isinstance(rules[0], Scheduler):  # (the route's groups are of one rule type)
        # each Scheduler becomes its rule of this step, built on the host from the counters
        # the store keeps (else read in one transfer); its float hyper-parameters are arguments
        steps = p.steps if p is not None and p.steps is not None else _steps_of(
            states if states is not None else list(map(p.raw_state_of, range(p.n))))
        if steps is None:
            return NotImplemented
        try:
            uniq, which = fast_scheduler.at_steps(rules, steps)
        except Exception:  # noqa: BLE001 - a refused value: the walker raises it, unchanged
            return NotImplemented
        if any(fast.lookup_backend(("update_", type(r.rule)), "jax") is not _update_jax for r in uniq):
            return NotImplemented  # a rule the kernel does not trace (a user's rule)
        try:
            spec, hyper = _spec_of(uniq, which)
        except TypeError:
            return NotImplemented
        if steady and spec is not p.plan.spec and spec != p.plan.spec:
            steady = False  # a static field changed with t: the fuller path
    elif steady or (p is not None and len(rules) == len(p.rules) and all(map(operator.is_, rules, p.rules))):
        spec, hyper = p.plan.spec, p.hyper  # the same rule objects as last step
    else:
        try:
            spec, hyper = _spec(rules)
        except TypeError:  # traced or unhashable hyper-parameters
            return NotImplemented
    norms = None
    if spec.throws is not None:
        if spec.throws is False:
            return NotImplemented
        ok, norms = _checked_norms(spec.throws, list(gs))
        if not bool(ok):
            return NotImplemented  # the generic path raises ClipNorm's DomainError
    src = (_fresh(held, gs) if steady else _chained(held, spec, inplace, xs, gs)) if held is not None else None
    fp = None
    if src is not None:
        plan = held.plan
        key = plan.key
        fp, src2 = _flat_for(held, gs)
        if src2 is not None:
            src = src2
        don = list(map(src.__getitem__, plan.chain_don if fp is None else fp.chain_rest))
        keep = list(map(src.__getitem__, plan.chain_keep))
        flat_in = None if fp is None else held.flat
    else:
        held = None
        if states is None:
            states = list(map(p.raw_state_of, range(p.n)))
        leaves, treedef = jax.tree.flatten((states, xs, gs))
        # (decided for the arrays at hand: a plan's program is reused for other dtypes and
        # devices of the same structure, where the custom call may not apply). Only where
        # the step donates: without donation XLA copies every buffer the call writes first,
        # and the call lost to XLA's own program (``update``, Adam, 10 M floats: 57 / 36 /
        # 77 ms against 51 / 24 / 66 at 1 / 100 / 1,000 arrays)
        ffi = inplace and fast_jax_ffi.usable(spec.skeletons, xs)
        key, plan = _plan(spec, treedef, leaves, inplace, store, ffi)
        if plan.try_merge:
            if _merge(plan, leaves):
                key, plan = _plan(spec, treedef, leaves, inplace, store, ffi)
            plan.try_merge = False  # values looked at once; the shared arrays now persist
        don = list(map(leaves.__getitem__, plan.don_pos))
        keep = list(map(leaves.__getitem__, plan.keep_pos))
        if plan.zd:  # 0-d state a store's plan donates, perhaps held by Leafs outside this step
            don = _copy_at(don, plan.zd)
        # a new store steps flat from the start; one replacing a store whose step could not
        # chain (new model arrays, say) stays per array: were that every step, joining the
        # states each time would copy them all
        if store and inplace and plan.ffi and p is None:
            fp, flat_in, don = _flat_start(plan, hyper, norms, don, keep, xs)
    try:
        if fp is not None:
            outs = fp.fn(_arg_arrays(hyper), norms, don, keep, flat_in)
        else:
            outs = plan.fn(_arg_arrays(hyper), norms, don, keep)
    except _Mismatch:
        if fp is not None:
            plan.flat_ok = False  # never again: the store's next steps take the per-array program
            return NotImplemented
        _PLANS.pop(key, None)
        _LAST.pop((spec, inplace, store, plan.ffi), None)
        return NotImplemented
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerBoolConversionError, TypeError):
        return NotImplemented  # a rule that cannot be traced: the generic path decides
    if fp is not None:
        nf = len(outs) - len(flat_in)
        flat, srcs = outs[nf:], outs[:nf] + keep
        srcs.append(None)
        pool = list(map(srcs.__getitem__, fp.poolmap))
    else:
        flat, pool = None, outs + keep if plan.reads_keep else outs
    if store and (fp is not None or plan.chains(len(pool))):
        st = held if held is not None else Store(plan)
        new_xs = list(map(pool.__getitem__, plan.x_idx))
        st.pool, st.xs, st.rules, st.hyper, st.cache, st.copies = pool, new_xs, given, hyper, None, None
        st.flat, st.fplan, st.parts = flat, fp, None
        st.steps = None if steps is None else list(map((1).__add__, steps))
        return st, new_xs
    out = list(map(pool.__getitem__, plan.out_map))
    if store:  # a sharing plan that did not chain: its outputs become plain states
        out = _distinct(out)
    return plan.out_treedef.unflatten(out)


@jax.jit
def _stack(arrays: list):
    return jnp.stack(arrays)


def _steps_of(states: list) -> list[int] | None:
    """The counters of Scheduler states as Python ints (one transfer), or None when they
    are not all concrete 0-d JAX arrays (the walker then steps them as they are)."""
    if not all(type(s) is SchedulerState for s in states):
        return None
    ts = [s.t for s in states]
    if not all(isinstance(t, jax.Array) and not isinstance(t, _Tracer) and t.ndim == 0 for t in ts):
        return None
    return np.asarray(_stack(ts)).tolist()


@jax.jit
def _copies(arrays: list) -> list:
    return [jnp.copy(a) for a in arrays]


def _copy_at(items: list, idx) -> list:
    """``items`` with the entries at positions ``idx`` replaced by copies (one compiled call)."""
    items = list(items)
    for j, c in zip(idx, _copies([items[j] for j in idx])):
        items[j] = c
    return items


def _distinct(out: list) -> list:
    """``out`` with every repeat of an array replaced by a copy (one compiled call)."""
    seen: set = set()
    rep = []
    for j, a in enumerate(out):
        if id(a) in seen:
            rep.append(j)
        seen.add(id(a))
    return _copy_at(out, rep) if rep else out


def _update_jax(rules, states, xs, gs, *, inplace):
    res = step(rules, states, xs, gs, inplace=inplace)
    if res is NotImplemented:
        return res
    new_states, new_xs = res
    return list(zip(new_states, map(Replace, new_xs)))


def _register() -> None:
    from ..optimise import RULES
    for cls in RULES.values():
        fast.register(("update_", cls), "jax")(_update_jax)
    fast_scheduler.register("jax", _scheduler_counters)


@jax.jit
def _counters_and_next(ts: list):
    return jnp.stack(ts), [t + 1 for t in ts]


def _scheduler_counters(ts: list, inplace: bool):
    """A Scheduler group's counters, read in one transfer, and ``t + 1`` for each: one
    compiled call for both (JAX arrays are never advanced in place)."""
    now, nxt = _counters_and_next(ts)
    return np.asarray(now).tolist(), lambda: nxt


_register()

from . import fast_jax_tree  # noqa: E402,F401  (registers the whole-step route)
