"""``gradient`` and ``withgradient``: Flux's explicit-gradient API on PyTorch and JAX.

fluxtrain writes no automatic differentiation of its own: PyTorch arguments are
differentiated with ``torch.autograd.grad`` and JAX arguments with ``jax.value_and_grad``.
What fluxtrain adds is Flux's calling convention: one gradient per argument, ``None``
where an argument has none, model gradients as trees that ``update_`` understands, and
auxiliary outputs.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, NamedTuple

from .._backend import is_eager
from .._errors import ArgumentError
from ..optimise.tree import module_items

__all__ = ["gradient", "withgradient", "WithGradient"]

_BACKENDS = ("torch", "jax")


class WithGradient(NamedTuple):
    """What :func:`withgradient` returns: Flux's NamedTuple ``(val, grad)``."""

    val: Any
    grad: tuple


# --------------------------------------------------------------------------------------
# Tree helpers over the optimise package's walker (modules handled here); shared with
# ``train.loop`` and ``train.checkpoint``.
# --------------------------------------------------------------------------------------

def _is_torch_tensor(x: Any) -> bool:
    return "torch" in sys.modules and isinstance(x, sys.modules["torch"].Tensor)


def _is_torch_module(x: Any) -> bool:
    return "torch" in sys.modules and isinstance(x, sys.modules["torch"].nn.Module)


def _is_jax_array(x: Any) -> bool:
    return "jax" in sys.modules and isinstance(x, sys.modules["jax"].Array)


def _node(x: Any):
    """``(keys, children, rebuild)`` when ``x`` is a container, else ``None`` (a leaf).

    The optimise package's walker decides what a container is (dict, list, tuple,
    NamedTuple, registered JAX pytree, dataclass), so gradient trees have the shapes that
    ``update_`` expects. ``rebuild(children)`` makes a new container of the same kind
    (dataclasses are copied with their fields set directly, so ``__post_init__`` checks
    and ``frozen=True`` do not get in the way of leaves that are gradients or ``None``).
    A ``torch.nn.Module`` is a leaf here; callers use :func:`module_tree` for it.
    """
    if x is None or _is_torch_module(x):
        return None
    from ..optimise.tree import children, rebuild
    ch = children(x)
    if ch is None:
        return None
    kind, keys, values = ch
    return keys, values, (lambda cs: rebuild(x, kind, keys, list(cs), False))


def module_tree(module: Any, leaf: Callable[[Any], Any]) -> dict:
    """The gradient-tree shape of a ``torch.nn.Module``: ``fluxtrain.optimise.tree.module_tree``."""
    from ..optimise.tree import module_tree as mt
    return mt(module, leaf=leaf)


def tree_leaves_with_path(x: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Every leaf of ``x`` with a ``/``-joined path (modules walked like ``module_tree``)."""
    if _is_torch_module(x):
        x = module_tree(x, leaf=lambda p: p)
    node = _node(x)
    if node is None:
        return [(prefix, x)]
    keys, children, _ = node
    out = []
    for k, c in zip(keys, children):
        out.extend(tree_leaves_with_path(c, f"{prefix}/{k}" if prefix else str(k)))
    return out


def tree_map(fn: Callable[[Any], Any], x: Any) -> Any:
    """Apply ``fn`` to every leaf of ``x``, keeping the containers (modules are leaves)."""
    node = _node(x)
    if node is None:
        return fn(x)
    _, children, rebuild = node
    return rebuild([tree_map(fn, c) for c in children])


# --------------------------------------------------------------------------------------
# Backend detection
# --------------------------------------------------------------------------------------

def _find_backends(args: tuple) -> tuple[set[str], bool]:
    """The array libraries among the leaves of ``args``, and whether NumPy arrays occur."""
    found: set[str] = set()
    numpy_seen = False
    stack = list(args)
    while stack:
        x = stack.pop()
        if _is_torch_module(x) or _is_torch_tensor(x):
            found.add("torch")
            continue
        if _is_jax_array(x):
            found.add("jax")
            continue
        if type(x).__module__ == "numpy" and hasattr(x, "shape"):
            numpy_seen = True
            continue
        node = _node(x)
        if node is not None:
            stack.extend(node[1])
    return found, numpy_seen


def _choose_backend(args: tuple, backend: str | None) -> tuple[str, bool]:
    """``(backend, scalars_only)``; raises a clear error when nothing can differentiate."""
    if backend is not None and backend not in _BACKENDS:
        raise ArgumentError(f"gradient: backend must be 'torch' or 'jax', got {backend!r}")
    found, numpy_seen = _find_backends(args)
    if len(found) > 1:
        raise TypeError("gradient: the arguments mix PyTorch and JAX arrays; "
                        "convert them to one backend first")
    if found:
        (lib,) = found
        if backend is not None and backend != lib:
            raise ArgumentError(f"gradient: backend={backend!r} but the arguments hold {lib} arrays")
        return lib, False
    if numpy_seen:
        raise TypeError(
            "gradient: NumPy arrays cannot be differentiated (NumPy has no automatic "
            "differentiation); only PyTorch tensors and JAX arrays can. Convert the "
            "arguments, e.g. torch.from_numpy(x) or jax.numpy.asarray(x)")
    if backend is None:
        raise TypeError(
            "gradient: no PyTorch or JAX array among the arguments, so there is no backend to "
            "differentiate with; pass backend='torch' or backend='jax' to differentiate "
            "Python numbers")
    return backend, True


# --------------------------------------------------------------------------------------
# Preparing the arguments: which leaves are differentiated, and how to put them back.
# --------------------------------------------------------------------------------------

class _Prep:
    """Collects the differentiable leaves of the arguments.

    ``walk(x)`` returns ``(subst, build)``: ``subst(values)`` rebuilds ``x`` with the
    differentiable leaves replaced by ``values[i]``; ``build(grads)`` makes the gradient
    tree of ``x`` (``None`` at leaves without a gradient).
    """

    def __init__(self, lib: str):
        self.lib = lib
        self.originals: list[Any] = []  # the differentiable leaves, as given
        self.is_param: list[bool] = []   # torch: a module parameter, differentiated as itself
        self.is_scalar: list[bool] = []  # a Python float: its gradient is a Python float
        self._seen_params: set[int] = set()

    def _add(self, x: Any, *, param: bool = False, scalar: bool = False) -> int:
        self.originals.append(x)
        self.is_param.append(param)
        self.is_scalar.append(scalar)
        return len(self.originals) - 1

    def _differentiable(self, x: Any) -> bool:
        if self.lib == "torch":
            return _is_torch_tensor(x) and x.is_floating_point()
        if _is_jax_array(x):
            import jax.numpy as jnp
            return bool(jnp.issubdtype(x.dtype, jnp.floating))
        return False

    def walk(self, x: Any):
        """``(subst, build, differentiable_inside)`` for ``x``."""
        if isinstance(x, float):  # Python float (and NumPy float scalars): a real number
            i = self._add(x, scalar=True)
            return (lambda vals, i=i: vals[i]), (lambda grads, i=i: _scalar_grad(grads[i])), True
        if _is_torch_module(x):
            template = self._module_template(x)
            return (lambda vals, x=x: x), (lambda grads: _fill(template, grads)), False
        if self._differentiable(x):
            i = self._add(x)
            return (lambda vals, i=i: vals[i]), (lambda grads, i=i: grads[i]), True
        node = _node(x)
        if node is None:
            return (lambda vals, x=x: x), (lambda grads: None), False
        _, children, rebuild = node
        parts = [self.walk(c) for c in children]
        if any(p[2] for p in parts):
            subst = lambda vals: rebuild([p[0](vals) for p in parts])  # noqa: E731
        else:
            subst = lambda vals, x=x: x  # noqa: E731 - nothing to substitute inside
        return subst, (lambda grads: rebuild([p[1](grads) for p in parts])), any(p[2] for p in parts)

    def _module_template(self, m: Any) -> dict:
        """The module's gradient tree (``module_tree``'s shape, walked with
        ``module_items``) with, at each parameter, its index among the differentiated
        leaves, or ``None``. A parameter with ``requires_grad=False`` gets ``None`` (torch's
        way of freezing); a tied parameter gets its whole gradient at its first position and
        ``None`` at the others, so that summing per tie is still correct."""
        module = sys.modules["torch"].nn.Module
        seen = self._seen_params
        t: dict = {}
        for n, v in zip(*module_items(m)):
            if isinstance(v, module):
                t[n] = self._module_template(v)
            elif not v.requires_grad or id(v) in seen or not v.is_floating_point():
                t[n] = None
            else:
                seen.add(id(v))
                t[n] = self._add(v, param=True)
        return t


def _fill(template: dict, grads: list) -> dict:
    """A module's gradient tree from its template (see ``_Prep._module_template``)."""
    return {k: (_fill(v, grads) if isinstance(v, dict) else None if v is None else grads[v])
            for k, v in template.items()}


def _scalar_grad(g: Any) -> Any:
    """A Python float's gradient is a Python float (a traced value stays traced under jit)."""
    if g is None or not is_eager(g):
        return g
    return float(g)


def _first(out: Any) -> Any:
    """Flux's auxiliary-output rule: the first element of a tuple / NamedTuple / dict."""
    if isinstance(out, tuple):
        if len(out) == 0:
            raise ArgumentError("gradient: f returned an empty tuple; expected a real scalar first")
        return out[0]
    if isinstance(out, dict):
        if not out:
            raise ArgumentError("gradient: f returned an empty dict; expected a real scalar first")
        return next(iter(out.values()))
    return out


def _scalar_error(y: Any) -> ArgumentError:
    shape = tuple(getattr(y, "shape", ()))
    what = f"an array of shape {shape}" if hasattr(y, "shape") else f"{type(y).__name__}"
    return ArgumentError(
        f"gradient: f must return a real scalar (or a tuple/dict whose first element is one); "
        f"got {what}")


# --------------------------------------------------------------------------------------
# The two backends
# --------------------------------------------------------------------------------------

def _torch_withgradient(f: Callable, args: tuple, scalars_only: bool) -> WithGradient:
    import torch

    prep = _Prep("torch")
    walked = [prep.walk(a) for a in args]
    vals = []
    for x, param, scalar in zip(prep.originals, prep.is_param, prep.is_scalar):
        if param:
            vals.append(x)  # module parameters are differentiated where they are
        elif scalar:
            vals.append(torch.tensor(float(x), dtype=torch.float64, requires_grad=True))
        else:
            # a new leaf sharing the user's storage: the user's tensor and its requires_grad
            # flag are left as they were
            vals.append(x.detach().requires_grad_(True))
    new_args = [w[0](vals) for w in walked]
    out, grads = _torch_value_grads_recorded(f, new_args, vals)
    val = _detached(out)
    if scalars_only:
        val = tree_map(lambda v: v.item() if _is_torch_tensor(v) and v.ndim == 0 else v, val)
    return WithGradient(val, tuple(w[1](grads) for w in walked))


def _detached(out: Any) -> Any:
    """``f``'s result with its torch tensors detached from the autograd graph."""
    # a bare loss tensor (the usual case) without the generic tree walk
    return out.detach() if _is_torch_tensor(out) else tree_map(
        lambda v: v.detach() if _is_torch_tensor(v) else v, out)


def _torch_value_grads_recorded(f: Callable, args: list, vals: list) -> tuple[Any, list]:
    """``_torch_value_grads`` with autograd recording, also inside ``torch.no_grad()``."""
    import torch
    if torch.is_grad_enabled():  # the usual case: entering enable_grad costs ~25 µs a step
        return _torch_value_grads(f, args, vals)
    with torch.enable_grad():
        return _torch_value_grads(f, args, vals)


def _torch_value_grads(f: Callable, args: list, vals: list) -> tuple[Any, list]:
    """``(f(*args), gradients of its scalar w.r.t. vals)``, under the caller's grad mode."""
    import torch
    out = f(*args)
    y = _first(out)
    if _is_torch_tensor(y):
        if y.ndim != 0 or y.is_complex():
            raise _scalar_error(y)
    elif not isinstance(y, (int, float)) or isinstance(y, bool):
        raise _scalar_error(y)
    if _is_torch_tensor(y) and y.requires_grad and vals:
        # autograd.grad (not backward) so no ``.grad`` attribute is touched
        return out, list(torch.autograd.grad(y, vals, allow_unused=True))
    return out, [None] * len(vals)


def _jax_withgradient(f: Callable, args: tuple, scalars_only: bool) -> WithGradient:
    import jax
    import jax.numpy as jnp

    prep = _Prep("jax")
    walked = [prep.walk(a) for a in args]
    if not prep.originals:  # nothing differentiable: just the value
        out = f(*args)
        _check_jax_scalar(_first(out))
        return WithGradient(out, tuple(None for _ in args))
    vals0 = [jnp.asarray(x) if s else x for x, s in zip(prep.originals, prep.is_scalar)]

    def wrapped(vals):
        out = f(*[w[0](vals) for w in walked])
        y = _check_jax_scalar(_first(out))
        return y, out

    (_, out), grads = jax.value_and_grad(wrapped, has_aux=True)(vals0)
    if scalars_only:
        out = tree_map(lambda v: float(v) if _is_jax_array(v) and v.ndim == 0 and is_eager(v) else v, out)
    return WithGradient(out, tuple(w[1](list(grads)) for w in walked))


def _check_jax_scalar(y: Any) -> Any:
    if _is_jax_array(y):
        import jax.numpy as jnp
        if y.ndim != 0 or not jnp.issubdtype(y.dtype, jnp.floating):
            raise _scalar_error(y)
        return y
    if isinstance(y, (int, float)) and not isinstance(y, bool):
        import jax.numpy as jnp
        return jnp.asarray(float(y))
    raise _scalar_error(y)


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------

def withgradient(f: Callable[..., Any], *args: Any, backend: str | None = None) -> WithGradient:
    """Value and gradient of ``f(*args)``: Flux's ``withgradient(f, args...)``.

    Returns ``WithGradient(val, grad)``, where ``val`` is everything ``f`` returned and
    ``grad`` is a tuple with one entry per argument (see :func:`gradient`).

    **Auxiliary outputs.** When ``f`` returns a tuple (or NamedTuple, or dict), the gradient
    is taken of its first element (a dict's first value) and ``val`` is the whole thing:

    >>> import torch
    >>> from fluxtrain import withgradient
    >>> def f(x):
    ...     z = 1 / x
    ...     return z.sum(), z
    >>> r = withgradient(f, torch.tensor([1.0, 2.0, 4.0]))
    >>> float(r.val[0]), r.grad[0].tolist()
    (1.75, [-1.0, -0.25, -0.0625])

    PyTorch results in ``val`` are detached from the autograd graph.
    """
    lib, scalars_only = _choose_backend(args, backend)
    if lib == "torch":
        return _torch_withgradient(f, args, scalars_only)
    return _jax_withgradient(f, args, scalars_only)


def gradient(f: Callable[..., Any], *args: Any, backend: str | None = None) -> tuple:
    """Gradient of the scalar ``f(*args)`` with respect to each argument: Flux's
    ``gradient(f, args...)``, computed by the arguments' own autodiff (``torch.autograd``
    or ``jax.grad``; fluxtrain differentiates nothing itself).

    Returns a tuple with one entry per argument:

    - a floating PyTorch tensor or JAX array gets an array of the same shape and dtype;
    - a Python ``float`` gets a Python ``float``;
    - a tree (dict, list, tuple, NamedTuple, dataclass, registered JAX pytree such as an
      equinox module) gets a tree of the same shape with ``None`` at leaves that have no
      gradient; a ``torch.nn.Module`` gets the dict tree ``setup`` uses
      (``fluxtrain.optimise.tree.module_tree``): its own parameters, then its children;
    - anything else (ints, bools, integer arrays, strings, functions) gets ``None``.

    The argument that decides the backend is any PyTorch tensor / module or JAX array among
    ``args``. With only Python numbers, say which autodiff to use with
    ``backend="torch"`` or ``backend="jax"``. NumPy arrays raise ``TypeError``: NumPy cannot
    differentiate.

    If ``f`` returns a tuple or dict, the gradient is of its first element (see
    :func:`withgradient`). The result ``f`` returns must be a real scalar (a 0-d array).

    Differences from Flux (Zygote), deliberate:

    - Python ``int`` arguments and integer arrays are constants (``None``); Zygote treats
      integers as real numbers. Pass floats to differentiate them.
    - JAX returns zeros, not ``None``, for a float argument ``f`` does not use (PyTorch gives
      ``None`` as Zygote does).
    - PyTorch: parameters with ``requires_grad=False`` get ``None`` (torch's freezing);
      a parameter shared by two modules gets its whole gradient at its first position.
      No ``.grad`` attribute is read or written and ``requires_grad`` flags are unchanged.

    >>> import torch
    >>> from fluxtrain import gradient
    >>> gradient(lambda x: (x ** 2).sum(), torch.tensor([7.0, 11.0, 13.0]))[0].tolist()
    [14.0, 22.0, 26.0]
    >>> gradient(lambda a, b, c: a * b * c, 2.0, 3.0, 5.0, backend="torch")
    (15.0, 10.0, 6.0)
    """
    return withgradient(f, *args, backend=backend).grad

