"""torch fast route for a whole ``update_`` step on a ``torch.nn.Module``.

The walker in :mod:`fluxtrain.optimise.interface` pairs state, model and gradient node by
node and checks every array through the generic, library-neutral helpers: about 15 µs per
parameter, more than torch's own fused Adam kernel takes for a small model (the usual
case on a GPU, where a step is only a few kernel launches). Here a module's structure is
remembered as a plan: for each module, in breadth-first order, the names in its
``_parameters`` and ``_modules`` tables and which entries are None. Each step follows the
plan through the module, the state and the gradient (``.grad`` or the dict tree that
``withgradient`` returns), checking at every module that the tables hold exactly those
names (C-level list comparisons), and checks the arrays a whole list at a time: torch
tensors, gradient shapes equal to the parameters', one dtype, one device, distinct
parameters and Leafs (a tied parameter repeats), one rule type.

Anything else (a module whose tables changed since the plan was made, a state or gradient
that is not the plain dict tree, several dtypes, devices or rule types, a gradient to
convert) returns None and the walker does the step, with its checks and error messages.
The route then runs the walker's own dispatch (:func:`~fluxtrain.optimise.interface.apply_group`)
and commit, so the results are the walker's bit for bit (tests compare them).
"""
from __future__ import annotations

import itertools
import operator
from typing import Any

import torch

from . import fast, namespace, put
from ..optimise.interface import _DOT, _new_value, apply_group
from ..optimise.tree import Leaf

_is = operator.is_
_NONE = itertools.repeat(None)
_RULE = operator.attrgetter("rule")
_STATE = operator.attrgetter("state")
_FROZEN = operator.attrgetter("frozen")
_GRAD = operator.attrgetter("grad")
_SHAPE = operator.attrgetter("shape")
_DTYPE = operator.attrgetter("dtype")
_IS_CPU = operator.attrgetter("is_cpu")
_TENSORS = frozenset({torch.Tensor, torch.nn.Parameter})


class _Changed(Exception):
    """The module has no plan (it shares a parameter or child within one module)."""


def _node(m: torch.nn.Module) -> tuple:
    """One module's entry in a plan: its ``_parameters`` names and which are None, its
    ``_modules`` names and which are None, the state/gradient dict keys (own parameters,
    then children: ``module_items``' order) and the number of own parameters."""
    pt, mt = m._parameters, m._modules
    pv, mv = list(pt.values()), list(mt.values())
    own = [k for k, v in zip(pt, pv) if v is not None]
    kids = [k for k, v in zip(mt, mv) if v is not None]
    if len({id(v) for v in pv if v is not None}) != len(own) or len({id(v) for v in mv if v is not None}) != len(kids):
        raise _Changed  # module_items would drop the repeats: the walker handles that
    return (list(pt), list(map(_is, pv, _NONE)), [v is not None for v in pv],
            list(mt), list(map(_is, mv, _NONE)), [v is not None for v in mv],
            own + kids, len(own))


def _plan(model: torch.nn.Module) -> tuple:
    """The plan: one ``_node`` per module, breadth first."""
    nodes, queue = [], [model]
    for m in queue:  # the queue grows as the loop runs
        nodes.append(_node(m))
        queue.extend(v for v in m._modules.values() if v is not None)
    return tuple(nodes)


def _params(nodes: tuple, model: torch.nn.Module) -> list | None:
    """The module's parameters in plan order, or None when a table no longer has the plan's
    names and None entries."""
    mods, xs = [model], []
    for i, (praw, pnone, pkeep, mraw, mnone, mkeep, _, _) in enumerate(nodes):
        m = mods[i]
        pt, mt = m._parameters, m._modules
        if list(pt) != praw or list(mt) != mraw:
            return None
        pv, mv = list(pt.values()), list(mt.values())
        if list(map(_is, pv, _NONE)) != pnone or list(map(_is, mv, _NONE)) != mnone:
            return None
        xs += itertools.compress(pv, pkeep)
        mods += itertools.compress(mv, mkeep)
    return xs


def _dict_leaves(nodes: tuple, tree: Any) -> list | None:
    """The leaves of a dict tree keyed as ``module_tree`` (state or gradient) in plan order;
    a None subtree gives None leaves. None when a node is not such a dict."""
    ds, out = [tree], []
    for i, node in enumerate(nodes):
        keys, nown = node[6], node[7]
        d = ds[i]
        if d is None:
            out += [None] * nown
            ds += [None] * (len(keys) - nown)
        elif type(d) is dict and list(d) == keys:
            v = list(d.values())
            out += v[:nown]
            ds += v[nown:]
        else:
            return None
    return out


_PLANS: dict[int, tuple] = {}  # id(model) -> plan; a plan is checked against the module each step
_PLANS_MAX = 32


def module_params(model: torch.nn.Module) -> tuple[tuple, list] | None:
    """``(plan, parameters in plan order)``, the plan checked against ``model`` (made again
    when its tables changed), or None for a module that repeats a parameter or child
    within one module."""
    nodes = _PLANS.get(id(model))
    xs = None if nodes is None else _params(nodes, model)
    if xs is None:
        try:
            nodes = _plan(model)
        except _Changed:
            return None
        if len(_PLANS) >= _PLANS_MAX:
            del _PLANS[next(iter(_PLANS))]
        _PLANS[id(model)] = nodes
        xs = _params(nodes, model)
    return nodes, xs


def module_state(model: torch.nn.Module, state: Any) -> tuple[list, list] | None:
    """The parameters of ``model`` and their state entries, in plan order; None when the
    module or the state does not follow a plan (the walker's case)."""
    got = module_params(model)
    if got is None:
        return None
    ls = _dict_leaves(got[0], state)
    return None if ls is None else (got[1], ls)


def update_module(state: Any, model: torch.nn.Module, grad: Any):
    """``(state, model)`` after an ``update_`` step of ``model``, or None when the walker
    must do this step."""
    got = module_params(model)
    if got is None:
        return None
    nodes, xs = got
    ls = _dict_leaves(nodes, state)
    gs = list(map(_GRAD, xs)) if grad is _DOT else _dict_leaves(nodes, grad)
    if ls is None or gs is None or not update_flat(xs, ls, gs):
        return None
    return state, model


def update_flat(xs: list, ls: list, gs: list) -> bool:
    """One ``update_`` step of parameters ``xs`` with state entries ``ls`` and gradients
    ``gs`` (None: no update), all in plan order. False, with nothing changed, when the
    walker must do it."""
    n = len(xs)
    if (not n or set(map(type, ls)) != {Leaf} or not set(map(type, xs)) <= _TENSORS
            or len(set(map(id, xs))) != n or len(set(map(id, ls))) != n):
        return False
    if any(map(_is, gs, _NONE)) or any(map(_FROZEN, ls)):  # skipped arrays, as the walker skips them
        keep = [g is not None and not l.frozen for g, l in zip(gs, ls)]
        xs, ls, gs = (list(itertools.compress(a, keep)) for a in (xs, ls, gs))
        if not xs:
            return False
    if not set(map(type, gs)) <= _TENSORS or list(map(_SHAPE, gs)) != list(map(_SHAPE, xs)):
        return False
    x0 = xs[0]
    dtype = x0.dtype
    if set(map(_DTYPE, xs)) != {dtype} or set(map(_DTYPE, gs)) != {dtype}:
        return False
    if x0.is_cpu:
        if not (all(map(_IS_CPU, xs)) and all(map(_IS_CPU, gs))):
            return False
    else:
        dev = x0.device
        if any(a.device != dev for a in itertools.chain(xs, gs)):
            return False
    rules = list(map(_RULE, ls))
    rule_type = type(rules[0])
    if set(map(type, rules)) != {rule_type}:
        return False
    with torch.no_grad():
        results = apply_group(rule_type, rules, list(map(_STATE, ls)), xs, gs, namespace(x0), True)
        # commit, as the walker's phase 3 does for writeable arrays
        for leaf, x, (st, delta) in zip(ls, xs, results):
            leaf.state = st
            if delta is not None:
                new = _new_value(x, delta)
                if new is not None:
                    put(x, new)
    return True


fast.register("update_module", "torch")(update_module)
fast.register("module_state", "torch")(module_state)
fast.register("update_flat", "torch")(update_flat)
