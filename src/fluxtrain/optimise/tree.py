"""All tree logic: how models, gradients and optimiser states are walked and rebuilt.

Rules never see a tree; this module never does maths. A *node* is anything with children:

* ``dict`` (any ``Mapping``), ``list``, ``tuple`` and ``NamedTuple``;
* a ``torch.nn.Module``, seen as a dict of its own parameters
  (``named_parameters(recurse=False)``) followed by its children (``named_children()``);
* a registered JAX pytree node (equinox modules, flax structs, ...), one level of
  ``jax.tree_util`` flattening;
* a dataclass (its fields).

Everything else is a leaf. A leaf is *trainable* when it is a real floating array of a
supported library; integer/bool arrays, Python numbers, functions, strings are left alone.

The optimiser state mirrors the model: the same ``dict``/``list``/``tuple``/``NamedTuple``
containers, a ``dict`` keyed by field/child names for modules, pytree nodes and
dataclasses, a :class:`Leaf` for each trainable array and ``None`` elsewhere. Arrays that
appear twice (tied weights, found by object identity) share one ``Leaf``.
"""
from __future__ import annotations

import copy
import dataclasses
import sys
from collections.abc import Mapping
from typing import Any, Callable, Iterator

import numpy as np

from .._backend import is_array, is_writeable, namespace

__all__ = ["Leaf", "module_tree", "children", "rebuild", "format_path", "is_trainable", "leaves"]


class Leaf:
    """The optimiser state of one trainable array: ``rule``, ``state`` and ``frozen``.

    Mutable (``update_``/``adjust_``/``freeze_`` change it in place) and a JAX pytree
    (children: ``state``; static: ``rule``, ``frozen``) so state trees pass through
    ``jax.jit``. A Leaf shared by tied arrays carries a ``tie`` id: under ``jax.jit`` it is
    flattened twice and comes back as two Leafs with the same id, which the walker treats
    as one (gradients summed, one update, the same new state and array in both places).
    """

    __slots__ = ("rule", "_state", "frozen", "tie", "_store", "_at", "__weakref__")

    def __init__(self, rule: Any, state: Any, frozen: bool = False, tie: int | None = None) -> None:
        self.rule = rule
        self._state = state
        self._store = None
        self._at = 0
        self.frozen = frozen
        self.tie = tie  # set by setup on a Leaf shared by tied arrays (survives jax.jit)
        if not _PYTREE_DONE and "jax" in sys.modules:
            _register_pytree()

    # After a JAX update_ step the states of a whole group of Leafs stay where the
    # compiled program returned them (a fast_jax.Store); each Leaf reads its own state
    # from there when asked, so a step does not touch the Leafs at all.
    @property
    def state(self) -> Any:
        s = self._store
        return self._state if s is None else s.state_of(self._at)

    @state.setter
    def state(self, value: Any) -> None:
        self._store = None  # detached: the next step cannot pass the store's arrays back
        self._state = value

    def __reduce__(self):
        return Leaf, (self.rule, self.state, self.frozen, self.tie)

    def __repr__(self) -> str:
        return f"Leaf({self.rule!r}, {_short(self.state)}{', frozen=True' if self.frozen else ''})"


def _short(state: Any) -> str:
    if state is None:
        return "None"
    if isinstance(state, tuple):
        inner = ", ".join(_short(s) for s in state)
        return f"({inner}{',' if len(state) == 1 else ''})"
    if is_array(state):
        return f"<{type(state).__name__} {tuple(state.shape)} {state.dtype}>"
    return repr(state)


_PYTREE_DONE = False


def _register_pytree() -> None:
    """Make :class:`Leaf` a JAX pytree (called lazily, only once JAX is imported)."""
    global _PYTREE_DONE
    _PYTREE_DONE = True
    import jax
    jax.tree_util.register_pytree_node(
        Leaf,
        lambda l: ((l.state,), (l.rule, l.frozen, l.tie)),
        lambda aux, ch: Leaf(aux[0], ch[0], aux[1], aux[2]),
    )


# --------------------------------------------------------------------------------------
# node adapters: (kind, keys, values) and rebuilding
# --------------------------------------------------------------------------------------

def _is_module(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.nn.Module)


def _jax_node(x: Any):
    """``(keys, values, treedef)`` for a registered JAX pytree node, else None."""
    jax = sys.modules.get("jax")
    if jax is None or x is None or is_array(x):
        return None
    try:
        flat, treedef = jax.tree_util.tree_flatten_with_path(x, is_leaf=lambda y: y is not x)
    except Exception:  # noqa: BLE001 - not a pytree node
        return None
    if treedef.num_nodes == 1 and treedef.num_leaves == 1:  # x itself is a leaf
        return None
    keys = [_key_of(p[0]) if p else i for i, (p, _) in enumerate(flat)]
    return keys, [v for _, v in flat], treedef


def _key_of(k: Any) -> Any:
    for attr in ("name", "key", "idx"):
        if hasattr(k, attr):
            return getattr(k, attr)
    return str(k)


def is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def children(x: Any):
    """``(kind, keys, values)`` of a node, or ``None`` for a leaf.

    kind is one of 'dict', 'list', 'tuple', 'namedtuple', 'module', 'pytree', 'dataclass'.
    """
    if is_array(x) or x is None or isinstance(x, (str, bytes, int, float, complex)):
        return None
    if isinstance(x, Mapping):
        return "dict", list(x.keys()), list(x.values())
    if isinstance(x, list):
        return "list", list(range(len(x))), list(x)
    if is_namedtuple(x):
        return "namedtuple", list(x._fields), list(x)
    if isinstance(x, tuple):
        return "tuple", list(range(len(x))), list(x)
    if _is_module(x):
        keys, vals = module_items(x)
        return "module", keys, vals
    node = _jax_node(x)
    if node is not None:
        return "pytree", node[0], node[1]
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        names = [f.name for f in dataclasses.fields(x)]
        return "dataclass", names, [getattr(x, n) for n in names]
    return None


def rebuild(x: Any, kind: str, keys: list, values: list, inplace: bool) -> Any:
    """``x`` with children ``values`` (same keys). Mutable containers are changed in place
    when ``inplace``; immutable ones (tuples, pytree nodes, frozen dataclasses) are rebuilt."""
    old = children(x)[2]
    if all(a is b for a, b in zip(old, values)):
        return x
    if kind == "dict":
        if inplace:
            for k, v, o in zip(keys, values, old):
                if v is not o:
                    x[k] = v
            return x
        y = copy.copy(x)
        for k, v in zip(keys, values):
            y[k] = v
        return y
    if kind == "list":
        if inplace:
            x[:] = values
            return x
        return type(x)(values) if type(x) is not list else list(values)
    if kind == "namedtuple":
        return type(x)(*values)
    if kind == "tuple":
        return tuple(values) if type(x) is tuple else type(x)(values)
    if kind == "module":
        for k, v, o in zip(keys, values, old):
            if v is not o:
                setattr(x, k, v)
        return x
    if kind == "pytree":
        return _jax_node(x)[2].unflatten(values)
    if kind == "dataclass":
        frozen = type(x).__dataclass_params__.frozen
        y = x if (inplace and not frozen) else copy.copy(x)
        for k, v, o in zip(keys, values, old):
            if v is not o:
                object.__setattr__(y, k, v)
        return y
    raise TypeError(kind)  # pragma: no cover


def is_trainable(x: Any) -> bool:
    """A real floating array of a supported library (NumPy scalars such as ``np.float32(1)``
    are numbers, not arrays: like Python floats they are not trained)."""
    if not is_array(x) or isinstance(x, np.generic):
        return False
    try:
        return namespace(x).isdtype(x.dtype, "real floating")
    except Exception:  # noqa: BLE001
        return False


def module_tree(module: Any, leaf: Callable[[Any], Any] = lambda p: p) -> dict:
    """A ``torch.nn.Module`` as the nested dict fluxtrain uses for it: its own parameters
    (``named_parameters(recurse=False)``) then ``{child_name: module_tree(child)}``.

    ``leaf`` maps each parameter; ``module_tree(m, lambda p: p.grad)`` is the gradient tree
    that ``update_`` expects for ``m`` (it is what ``update_(state, m)`` builds itself).
    """
    keys, vals = module_items(module)
    n_own = len(keys) - sum(1 for v in vals if _is_module(v))
    return {k: (leaf(v) if i < n_own else module_tree(v, leaf)) for i, (k, v) in enumerate(zip(keys, vals))}


def module_items(module: Any) -> tuple[list, list]:
    """``(names, values)``: the module's own parameters, then its child modules, each once
    and without ``None`` entries, i.e. what ``named_parameters(recurse=False)`` then
    ``named_children()`` yield. Read from ``_parameters`` / ``_modules`` directly: this runs
    for every module at every optimiser and training step, and the generators cost more."""
    keys: list = []
    vals: list = []
    seen: set[int] = set()
    for table in (module._parameters, module._modules):
        for n, v in table.items():
            if v is not None and id(v) not in seen:
                seen.add(id(v))
                keys.append(n)
                vals.append(v)
    return keys, vals


def format_path(path: tuple) -> str:
    """``('layers', 1, 'weight')`` -> ``layers[1].weight`` (root: ``<root>``)."""
    s = ""
    for k in path:
        if isinstance(k, int) or (isinstance(k, str) and k.isdigit()):
            s += f"[{k}]"
        elif isinstance(k, str) and k.isidentifier():
            s += f".{k}" if s else k
        else:
            s += f"[{k!r}]"
    return s or "<root>"


def leaves(state: Any, path: tuple = ()) -> Iterator[tuple[tuple, Leaf]]:
    """``(path, Leaf)`` for every Leaf of a state tree, each shared Leaf once."""
    seen: set[int] = set()

    def walk(s, p):
        if isinstance(s, Leaf):
            if id(s) not in seen:
                seen.add(id(s))
                yield p, s
            return
        ch = _state_children(s)
        if ch is None:
            return
        for k, v in zip(*ch):
            yield from walk(v, p + (k,))

    yield from walk(state, path)


def _state_children(s: Any):
    """Keys and values of a state-tree node (dict/list/tuple/NamedTuple), else None."""
    if isinstance(s, Mapping):
        return list(s.keys()), list(s.values())
    if isinstance(s, (list, tuple)):
        return list(range(len(s))) if not is_namedtuple(s) else list(s._fields), list(s)
    return None


def writeable(x: Any) -> bool:
    return is_writeable(x)
