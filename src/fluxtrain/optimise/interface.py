"""``setup``, ``update``, ``update_``, ``adjust``/``adjust_``, ``freeze_``/``thaw_``.

The walker works in three phases so that a bad input never leaves a half-updated model:

1. walk state, model and gradient together, validating structure, shapes, dtypes and
   backends, and collecting one entry per trainable array (nothing is changed);
2. sum the gradients of tied arrays (one ``Leaf``), then compute every ``(state, delta)``
   with the rules (pure; a rule may raise, e.g. ``ClipNorm(throw=True)``);
3. commit: new states into the Leafs, ``x - delta`` into the arrays.

Phase 2 groups the arrays by (rule type, array type, dtype, device) and hands each group to
:func:`apply_group`, the single dispatch point where per-backend fast kernels plug in.

For JAX models a whole step may be taken by the route registered under ``"update_tree"``
(:mod:`fluxtrain._backend.fast_jax_tree`): the same phases with the walk done by
``jax.tree.flatten``, the pairing taken from phase 1 once per tree structure. ``update_``
of a ``torch.nn.Module`` may be taken by ``"update_module"``
(:mod:`fluxtrain._backend.fast_torch_tree`): the walk follows a remembered plan of the
module's structure, checked at every module.
"""
from __future__ import annotations

import copy
import itertools
import sys
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._backend import _ARRAY_TYPES, device_of, is_array, is_writeable, minus, namespace, placement, put
from .._backend import fast
from .._errors import ArgumentError, DimensionMismatch
from .base import Masked, Replace, Rule
from . import tree as _tree
from .tree import Leaf, _state_children, children, format_path, is_namedtuple, is_trainable, rebuild

__all__ = ["setup", "update", "update_", "adjust", "adjust_", "freeze_", "thaw_", "apply_group"]


class _DotGrad:
    """Marker: take each parameter's ``.grad`` (torch)."""


_DOT = _DotGrad()
_TIE_IDS = itertools.count(1)


# --------------------------------------------------------------------------------------
# setup
# --------------------------------------------------------------------------------------

def setup(rule: Rule, model: Any) -> Any:
    """Build the optimiser state for ``model``: a tree mirroring it with a :class:`Leaf`
    ``(rule, rule.init(x))`` for every trainable (real floating) array and ``None`` for
    everything else. Arrays appearing twice (same object) share one Leaf.

    ``model`` may be nested dict/list/tuple/NamedTuple/dataclass containers of arrays, a
    JAX pytree (e.g. an equinox module) or a ``torch.nn.Module`` (state keyed like
    :func:`fluxtrain.optimise.tree.module_tree`). Warns when nothing is trainable.

    Example:
        >>> import numpy as np, fluxtrain as ft
        >>> model = {"w": np.zeros((2, 3)), "b": np.zeros(2), "n": 3}
        >>> state = ft.setup(ft.Momentum(0.1), model)
        >>> state["n"] is None, type(state["w"]).__name__
        (True, 'Leaf')
    """
    if isinstance(rule, type) and issubclass(rule, Rule):
        raise ArgumentError(f"setup needs a rule instance such as {rule.__name__}(), got the class {rule.__name__}")
    if not isinstance(rule, Rule):
        raise ArgumentError(f"setup(rule, model): expected an optimisation rule (e.g. Adam()), got {rule!r}")
    cache: dict[int, Leaf] = {}
    keep: list = []
    with _no_grad():
        tree = _setup(rule, model, cache, keep, ())
    if not cache:
        warnings.warn("setup found no trainable parameters in this model", UserWarning, stacklevel=2)
    return tree


def _setup(rule, x, cache, keep, path):
    if is_array(x) and not isinstance(x, np.generic):
        if not is_trainable(x):
            if namespace(x).isdtype(x.dtype, "complex floating"):
                raise ArgumentError(f"complex parameters are not supported (at {format_path(path)})")
            return None
        leaf = cache.get(id(x))
        if leaf is None:
            leaf = cache[id(x)] = Leaf(rule, rule.init(x))
            keep.append(x)
        elif leaf.tie is None:  # a tied array: the id lets jax.jit copies find each other
            leaf.tie = next(_TIE_IDS)
        return leaf
    ch = children(x)
    if ch is None:
        return None
    kind, keys, vals = ch
    sub = [_setup(rule, v, cache, keep, path + (k,)) for k, v in zip(keys, vals)]
    if kind == "dict":
        return {k: s for k, s in zip(keys, sub)}
    if kind == "list":
        return sub
    if kind == "namedtuple":
        return type(x)(*sub)
    if kind == "tuple":
        return tuple(sub)
    return {k: s for k, s in zip(keys, sub)}  # module, pytree node, dataclass


# --------------------------------------------------------------------------------------
# update / update_
# --------------------------------------------------------------------------------------

def update_(state: Any, model: Any, grad: Any = None) -> tuple[Any, Any]:
    """One optimiser step in place: ``x <- x - delta`` for every trainable array with a
    gradient; returns the up-to-date ``(state, model)``.

    Writeable arrays (NumPy, torch) are written in place; immutable ones (JAX) are rebound
    inside mutable containers and the Leafs; with immutable containers (tuples, equinox
    modules) use the returned model. ``None`` in ``grad`` skips that subtree; frozen Leafs are
    skipped; gradients of tied arrays are summed. ``grad=None`` takes each torch
    parameter's ``.grad``. Gradients are converted to the parameter's dtype first.
    On any error nothing is modified.

    Example:
        >>> import numpy as np, fluxtrain as ft
        >>> model = {"w": np.array([1.0, 2.0])}
        >>> state = ft.setup(ft.Descent(0.5), model)
        >>> _ = ft.update_(state, model, {"w": np.array([1.0, 1.0])}); model["w"]
        array([0.5, 1.5])
    """
    return _update(state, model, _DOT if grad is None else grad, pure=False)


def update(state: Any, model: Any, grad: Any) -> tuple[Any, Any]:
    """Like :func:`update_` but never mutates ``state``, ``model`` or their arrays: returns a
    new ``(state, model)`` (new Leafs and containers; unchanged arrays are shared). This is
    the form for JAX and works under ``jax.jit``. A ``torch.nn.Module`` model is deep-copied.
    """
    if grad is None:
        raise ArgumentError("update(state, model, grad) needs a gradient tree (use update_ to read .grad)")
    return _update(state, model, grad, pure=True)


def _update(state, model, grad, pure):
    if isinstance(state, Rule):
        raise ArgumentError(
            f"Invalid input to `update{'' if pure else '_'}`: the first argument must be the optimiser "
            f"state, not the rule {state!r}. You need `state = setup(rule, model)` first, then "
            f"`update{'' if pure else '_'}(state, model, grad)`.")
    if not pure and "torch" in sys.modules and _tree._is_module(model):
        # a torch module's whole step, walked by a plan of its structure (fast_torch_tree)
        route = fast.lookup_backend("update_module", "torch")
        out = None if route is None else route(state, model, grad)
        if out is not None:
            return out
    if "jax" in sys.modules:
        if not _tree._PYTREE_DONE:
            _tree._register_pytree()
        if grad is not _DOT:  # JAX models: the same walk, flattened in C (fast_jax_tree)
            route = fast.lookup_backend("update_tree", "jax")
            out = None if route is None else route(state, model, grad, pure=pure)
            if out is not None:
                return out
    with _no_grad():
        if pure and _has_module(model):
            model = copy.deepcopy(model)
            write_model = True
        else:
            write_model = not pure
        entries: list = []
        _collect(state, model, grad, (), entries)
        # -- phase 2: sum tied gradients, compute (nothing mutated yet). Tied arrays share
        # one Leaf; under jax.jit that Leaf comes back as copies carrying the same `tie` id.
        groups: dict[int, list] = {}
        for leaf, x, g, path, where in entries:
            if leaf.frozen:
                continue
            key = -leaf.tie if leaf.tie is not None else id(leaf)  # tie ids are positive
            e = groups.get(key)
            if e is None:
                groups[key] = [leaf, x, g, where, None]  # [4]: every Leaf and array, once tied
            else:
                e[2] = e[2] + g
                if e[4] is None:
                    e[4] = ({id(e[0]): e[0]}, {id(e[1]): e[1]})
                e[4][0][id(leaf)] = leaf
                e[4][1][id(x)] = x
        work = list(groups.values())
        results = _apply_all([(w[0].rule, w[0].state, w[1], w[2], w[3]) for w in work], inplace=not pure)
        # -- phase 3: commit
        if pure:
            memo: dict[int, Leaf] = {}
            state = _copy_state(state, memo)
        newvals: dict[int, Any] = {}
        writeable: dict[type, bool] = {}  # NumPy arrays can be read-only: asked per array
        for (leaf, x, _, _, tied), (st, delta) in zip(work, results):
            if tied is None:
                targets = (memo[id(leaf)] if pure else leaf,)
                xs = (x,)
            else:
                targets = [memo[i] if pure else l for i, l in tied[0].items()]
                xs = tuple(tied[1].values())
            for t in targets:
                t.state = st
            if delta is None:
                continue  # written in place by a kernel, or nothing to do
            new = _new_value(x, delta)
            if new is None:
                continue
            if write_model and all(_writeable(y, writeable) for y in xs):
                for y in xs:
                    put(y, new)
            else:
                for t in targets:
                    newvals[id(t)] = new
        if newvals:
            model = _rebind(state, model, newvals, inplace=write_model)
    return state, model


def _writeable(y, known):
    """``is_writeable(y)``, remembered per type where that is a per-type fact (torch
    tensors are, JAX arrays are not; NumPy arrays have a per-array flag)."""
    t = type(y)
    w = known.get(t)
    if w is None:
        w = is_writeable(y)
        if t is not np.ndarray:
            known[t] = w
    return w


def _new_value(x, delta):
    if delta is None:
        return None
    if isinstance(delta, Replace):
        if delta.value is x:
            return None
        new = delta.value
    elif isinstance(delta, Masked):
        new = namespace(x).where(delta.active, x - delta.delta, x)
    else:
        new = minus(x, delta)
    return np.asarray(new) if isinstance(new, np.generic) else new  # NumPy 0-d maths gives scalars


def _apply_all(items: list, inplace: bool) -> list:
    """Group ``(rule, state, x, g, placement)`` items and run each group through
    :func:`apply_group`."""
    groups: dict[tuple, list[int]] = {}
    for i, (rule, _, x, _, where) in enumerate(items):
        key = (type(rule), type(x), x.dtype, where)
        groups.setdefault(key, []).append(i)
    if inplace and len(groups) > 1 and _may_raise({id(it[0]): it[0] for it in items}.values()):
        # a later group's DomainError must not leave an earlier group written in place:
        # compute every group without writing; the walker then commits (phase 3)
        inplace = False
    out: list = [None] * len(items)
    for key, idx in groups.items():
        x0 = items[idx[0]][2]
        res = apply_group(key[0], [items[i][0] for i in idx], [items[i][1] for i in idx],
                          [items[i][2] for i in idx], [items[i][3] for i in idx], namespace(x0), inplace)
        for i, r in zip(idx, res):
            out[i] = r
    return out


def _may_raise(rules) -> bool:
    """Can any of ``rules`` raise from the values during ``apply`` (``ClipNorm(throw=True)``,
    also inside chains and wrappers)?"""
    from .rules_basic import ClipNorm
    return any((isinstance(r, ClipNorm) and r.throw) or _may_raise(r.subrules()) for r in rules)


def apply_group(rule_type: type, rules: list, states: list, xs: list, gs: list, xp: Any,
                inplace: bool) -> list:
    """THE dispatch point: ``[(new_state, delta), ...]`` for arrays sharing rule type,
    backend, dtype and device. Uses the kernel registered in :mod:`fluxtrain._backend.fast`
    under ``("update_", rule_type)`` for ``xp``'s backend when there is one (see that
    module's docstring for the signature), else the reference loop over ``rule.apply``.
    """
    kernel = fast.lookup(("update_", rule_type), xp)
    if kernel is not None:
        res = kernel(rules, states, xs, gs, inplace=inplace)
        if res is not NotImplemented:
            return res
    return [r.apply(s, x, g) for r, s, x, g in zip(rules, states, xs, gs)]


# --------------------------------------------------------------------------------------
# walking: validation and collection (phase 1)
# --------------------------------------------------------------------------------------

def _err(path, msg):
    return DimensionMismatch(f"at `{format_path(path)}`: {msg}")


def _collect(s, x, g, path, out):
    if g is None:
        return
    if isinstance(s, Leaf):
        _collect_leaf(s, x, g, path, out)
        return
    if s is None:
        return  # not trainable: any gradient is ignored (as Optimisers does)
    ch = children(x)
    if ch is None:
        raise _err(path, f"the state is a {type(s).__name__} but the model has {type(x).__name__}; "
                         "the model's structure changed since setup")
    kind, keys, vals = ch
    svals = _state_for(s, kind, keys, path)
    gvals = _grad_for(g, x, kind, keys, path, svals)
    for k, sv, xv, gv in zip(keys, svals, vals, gvals):
        if type(sv) is Leaf:  # the common case, one call less per array
            if gv is not None:
                _collect_leaf(sv, xv, gv, path + (k,), out)
        else:
            _collect(sv, xv, gv, path + (k,), out)


def _collect_leaf(s, x, g, path, out):
    if type(x) not in _ARRAY_TYPES and (not is_array(x) or isinstance(x, np.generic)):
        raise _err(path, f"the state has a Leaf but the model has {type(x).__name__}; "
                         "the model's structure changed since setup")
    if g is _DOT:
        g = getattr(x, "grad", _DOT)
        if g is _DOT:
            raise ArgumentError(
                f"update_(state, model) without a gradient reads torch's `.grad`, but `{format_path(path)}` "
                f"is a {type(x).__module__}.{type(x).__name__}; pass the gradient tree: update_(state, model, grad)")
        if g is None:
            return
    g, where = _check_grad(x, g, path)
    out.append((s, x, g, path, where))


def _state_for(s, kind, keys, path):
    if kind in ("list", "tuple", "namedtuple"):
        if not isinstance(s, (list, tuple)) or len(s) != len(keys):
            raise _err(path, f"the state ({type(s).__name__}) does not match the model's {kind} of "
                             f"length {len(keys)}")
        return list(s)
    if not isinstance(s, Mapping):
        raise _err(path, f"the state is a {type(s).__name__}, expected a dict for the model's {kind}")
    missing = [k for k in keys if k not in s]
    if missing or len(s) != len(keys):
        raise _err(path, f"the state's keys {sorted(map(str, s))} do not match the model's {sorted(map(str, keys))}")
    return [s[k] for k in keys]


def _grad_for(g, x, kind, keys, path, svals):
    if g is _DOT:
        return [_DOT] * len(keys)
    if kind in ("list", "tuple", "namedtuple"):
        if isinstance(g, Mapping) and kind == "namedtuple":
            return _from_mapping(g, keys, path, svals)
        if not isinstance(g, (list, tuple)) or is_array(g):
            raise _err(path, f"the gradient is a {type(g).__name__}, expected a {kind} of length {len(keys)}")
        if len(g) != len(keys):
            raise _err(path, f"the gradient has length {len(g)}, the model {len(keys)}")
        return list(g)
    if isinstance(g, Mapping):
        return _from_mapping(g, keys, path, svals)
    if kind in ("pytree", "dataclass") and type(g) is type(x):
        gk, gv = children(g)[1:]
        if list(gk) != list(keys):
            raise _err(path, f"the gradient's fields {gk} do not match the model's {keys}")
        return gv
    raise _err(path, f"the gradient is a {type(g).__name__}, expected a {type(x).__name__} or a dict "
                     f"with keys {keys}")


def _from_mapping(g, keys, path, svals):
    """Children of a dict gradient; keys of non-trainable fields (state None) may be left out."""
    if len(g) == len(keys) and all(map(g.__contains__, keys)):
        return [g[k] for k in keys]  # the usual case: exactly the model's keys
    extra = [k for k in g if k not in keys]
    missing = [k for k, sv in zip(keys, svals) if k not in g and sv is not None]
    if extra or missing:
        raise _err(path, "the gradient's keys do not match the model's"
                         + (f"; extra: {extra}" if extra else "") + (f"; missing: {missing}" if missing else ""))
    return [g.get(k) for k in keys]


# pairs of (parameter type, gradient type) of one library, seen to pass the checks
_SAME_LIB: set = set()


def _check_grad(x, g, path):
    """``(g, placement of x)`` after checking g against x; g converted to x's dtype."""
    tg, tx = type(g), type(x)
    if tg is not tx and (tx, tg) not in _SAME_LIB:  # else: x is known to be an array, so is g
        if not is_array(g):
            raise _err(path, f"expected a gradient array of shape {tuple(x.shape)}, got {tg.__name__}")
        if tg.__module__.split(".")[0] != tx.__module__.split(".")[0] and not _same_lib(x, g):
            raise TypeError(f"at `{format_path(path)}`: the gradient is a {tg.__module__}.{tg.__name__} "
                            f"but the parameter is a {tx.__module__}.{tx.__name__}; use one array library")
        if tx in _ARRAY_TYPES and tg in _ARRAY_TYPES:
            _SAME_LIB.add((tx, tg))  # e.g. (torch.nn.Parameter, torch.Tensor)
    if g.shape != x.shape and tuple(g.shape) != tuple(x.shape):
        raise _err(path, f"the gradient has shape {tuple(g.shape)}, the parameter {tuple(x.shape)}")
    if g.dtype != x.dtype:
        xp = namespace(x)
        if not xp.isdtype(g.dtype, ("real floating", "integral", "bool")):
            raise TypeError(f"at `{format_path(path)}`: the gradient's dtype {g.dtype} cannot be converted to "
                            f"the parameter's {x.dtype}")
        g = xp.astype(g, x.dtype)
    if tx is np.ndarray and type(g) is np.ndarray:
        return g, "cpu"  # NumPy arrays all live on the CPU
    wx, wg = placement(x), placement(g)
    if wx != wg and wx is not None and wg is not None:
        dx, dg = device_of(x), device_of(g)
        if dx != dg:
            raise ValueError(f"at `{format_path(path)}`: the gradient is on {dg}, the parameter on {dx}")
    return g, wx


def _same_lib(x, g):
    try:
        namespace(x, g)
        return True
    except TypeError:
        return False


# --------------------------------------------------------------------------------------
# commit helpers
# --------------------------------------------------------------------------------------

def _rebind(s, x, newvals, inplace):
    """Put the new arrays of non-writeable parameters into the model's containers."""
    if isinstance(s, Leaf):
        return newvals.get(id(s), x)
    if s is None:
        return x
    ch = children(x)
    if ch is None:
        return x
    kind, keys, vals = ch
    if kind in ("list", "tuple", "namedtuple"):
        svals = list(s)
    else:
        svals = [s[k] for k in keys]
    new = [_rebind(sv, xv, newvals, inplace) for sv, xv in zip(svals, vals)]
    return rebuild(x, kind, keys, new, inplace)


def _copy_state(s, memo):
    """A new state tree with new Leafs (shared Leafs stay shared); arrays are shared."""
    if isinstance(s, Leaf):
        n = memo.get(id(s))
        if n is None:
            n = memo[id(s)] = Leaf(s.rule, s.state, s.frozen, s.tie)
        return n
    if isinstance(s, Mapping):
        return {k: _copy_state(v, memo) for k, v in s.items()}
    if isinstance(s, list):
        return [_copy_state(v, memo) for v in s]
    if is_namedtuple(s):
        return type(s)(*[_copy_state(v, memo) for v in s])
    if isinstance(s, tuple):
        return tuple(_copy_state(v, memo) for v in s)
    return s


def _has_module(x) -> bool:
    import sys
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    if isinstance(x, torch.nn.Module):
        return True
    if isinstance(x, Mapping):
        return any(_has_module(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return any(_has_module(v) for v in x)
    return False


class _no_grad:
    """torch.no_grad() when torch is loaded (rules must not record autograd graphs)."""

    def __enter__(self):
        import sys
        torch = sys.modules.get("torch")
        self._ctx = torch.no_grad() if torch is not None else None
        if self._ctx is not None:
            self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        if self._ctx is not None:
            self._ctx.__exit__(*exc)
        return False


# --------------------------------------------------------------------------------------
# adjust / freeze
# --------------------------------------------------------------------------------------

def adjust(tree: Any, eta: float | None = None, **hyper: Any) -> Any:
    """A new state tree (or rule) with ``eta`` and/or other hyper-parameters changed in every
    Leaf, keeping the momenta and other state (shared, not copied). Keywords that match no
    field of a rule are ignored, as in Flux. ``adjust(rule, ...)`` returns a new rule.

    Example:
        >>> import numpy as np, fluxtrain as ft
        >>> s = ft.setup(ft.Nesterov(), {"v": np.zeros(2)})
        >>> ft.adjust(s, 0.123)["v"].rule
        Nesterov(eta=0.123, rho=0.9)
    """
    if isinstance(tree, Rule):
        return tree.adjust(eta, **hyper)
    memo: dict[int, Leaf] = {}
    new = _copy_state(tree, memo)
    _adjust_rules(memo.values(), eta, hyper)
    return new


def adjust_(tree: Any, eta: float | None = None, **hyper: Any) -> Any:
    """In-place :func:`adjust` on a state tree or sub-tree (e.g. ``adjust_(state["enc"], 0.03)``);
    returns ``tree``. Flux: ``adjust!(opt_state, eta)`` / ``adjust!(opt_state; beta=...)``."""
    _adjust_rules(_leaves(tree), eta, hyper)
    return tree


def _adjust_rules(leaves, eta, hyper) -> None:
    """Each Leaf's rule adjusted; Leafs that shared a rule object (as ``setup`` makes
    them) share the adjusted one, so a schedule calling ``adjust_`` every step makes one
    new rule, not one per array (and the JAX fast path sees one rule, not thousands)."""
    leaves = list(leaves)
    done: dict[int, tuple] = {}
    for leaf in leaves:  # all computed first: a rule that refuses leaves every Leaf as it was
        old = leaf.rule
        if id(old) not in done:
            done[id(old)] = (old, old.adjust(eta, **hyper))  # old kept: ids stay unique
    for leaf in leaves:
        leaf.rule = done[id(leaf.rule)][1]


def freeze_(tree: Any) -> Any:
    """Mark every Leaf in ``tree`` (a state tree, sub-tree or Leaf) frozen: ``update``
    skips it until :func:`thaw_`. Returns ``tree``."""
    for leaf in _leaves(tree):
        leaf.frozen = True
    return tree


def thaw_(tree: Any) -> Any:
    """Undo :func:`freeze_` on every Leaf of ``tree``. Returns ``tree``."""
    for leaf in _leaves(tree):
        leaf.frozen = False
    return tree


def _leaves(tree):
    if isinstance(tree, Rule):
        raise ArgumentError("expected an optimiser state tree (from setup), got a rule")
    seen = set()
    stack = [tree]
    while stack:
        s = stack.pop()
        if isinstance(s, Leaf):
            if id(s) not in seen:
                seen.add(id(s))
                yield s
            continue
        ch = _state_children(s)
        if ch is not None:
            stack.extend(ch[1])
