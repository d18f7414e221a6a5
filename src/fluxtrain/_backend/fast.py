"""Registry of per-backend fast paths.

A fast path is registered for an operation key (any hashable: a rule class, a loss
name) and a backend name ('numpy', 'torch', 'jax'). Generic code calls
``lookup(key, xp)`` and falls back to its array-API reference implementation when
``None`` is returned. Every registered kernel must be tested against that reference.

Kernel modules live next to this file (``fast_numpy.py``, ``fast_torch.py``,
``fast_jax.py``) and are imported lazily, the first time a backend is looked up, so that
``import fluxtrain`` never imports torch or JAX.

Optimiser kernels (key ``("update_", RuleClass)``)
---------------------------------------------------
The optimiser walker (:func:`fluxtrain.optimise.interface.apply_group`, its only dispatch
point) groups the trainable arrays of one step by (rule type, array type, dtype, device)
and, per group, calls::

    kernel(rules, states, xs, gs, *, inplace) -> list[(new_state, delta)] | NotImplemented

* ``rules``: the ``Leaf.rule`` of each array (same class, hyper-parameters may differ);
* ``states``: each ``Leaf.state`` (the structure ``rule.init`` returns);
* ``xs``: the parameter arrays; ``gs``: gradients, already summed over tied arrays,
  checked for shape and converted to ``x.dtype``;
* ``inplace``: True from ``update_`` — the kernel MAY then write the new state into the
  state arrays and the new parameter into ``x`` (and return ``delta = None``: nothing left
  to do; ``Replace(x)`` also works, see :mod:`fluxtrain.optimise.base`), but must validate
  everything before mutating anything.
  False from ``update`` (and always for JAX): inputs must not be mutated.
* returns one ``(new_state, delta)`` per array, exactly what ``rule.apply`` would return
  (``delta`` an array to subtract, ``None``, ``Masked`` or ``Replace``), or
  ``NotImplemented`` to fall back to the reference loop ``[r.apply(s, x, g) ...]``.

``Scheduler`` has one kernel for every backend (:mod:`fluxtrain._backend.fast_scheduler`),
which hands its arrays to the wrapped rule's kernel; a backend registers it together with
its ``"scheduler_counters"``: ``(ts, inplace) -> (list of ints, advance)``, where
``advance()``, called once the wrapped rule's step has succeeded, returns the counters
``t + 1`` (made anew, or for ``update_`` advanced in place where the backend can).

Whole-step routes (keys ``"update_tree"`` for JAX, ``"update_module"`` for torch)
------------------------------------------------------------------------------
``update_``/``update`` first offer the whole step to ``route(state, model, grad, *,
pure)`` (JAX trees: :mod:`fluxtrain._backend.fast_jax_tree`), and ``update_`` of a
``torch.nn.Module`` to ``route(state, model, grad)`` (:mod:`fluxtrain._backend.fast_torch_tree`).
A route returns ``(state, model)`` or None (then the walker runs); it calls the same
group dispatch and commits as the walker does.

Results must equal the reference loop (bit for bit where the backend allows; tests compare
against ``with fast.disabled():``).

State memory (keys ``"zeros_like"``, ``"full_like"``)
----------------------------------------------------
A rule's ``init`` makes its state arrays through :func:`fluxtrain.optimise.base.zeros` /
``full``, which first ask ``kernel(x)`` / ``kernel(x, v)`` for an array of the same shape,
dtype, strides and device, and use ``xp.zeros_like`` / ``full_like`` when it returns None.
torch allocates large CPU state on huge pages there (:mod:`fluxtrain._backend.fast_torch`).

Direct kernels (losses)
-----------------------
A loss kernel may also be registered by the exact type of the prediction array
(``register_direct``): the loss then offers it its raw arguments (``direct``) before its
own argument preparation, which costs more than a small kernel's own checks (~15 us of a
~170 us torch forward and backward at 4096x1). Such a kernel checks everything it relies
on (argument types, shapes, dtypes, options) and returns None for anything else, and the
loss then takes its usual path, with its own errors.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Hashable

from . import backend_name

_REGISTRY: dict[tuple[Hashable, str], Callable[..., Any]] = {}
_DIRECT: dict[tuple[Hashable, type], Callable[..., Any]] = {}
_LOADED: set[str] = set()
_ENABLED = True


def register(key: Hashable, backend: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as the fast path of ``key`` on ``backend``."""
    def deco(fn: Callable) -> Callable:
        _REGISTRY[(key, backend)] = fn
        return fn
    return deco


def register_direct(key: Hashable, array_type: type) -> Callable[[Callable], Callable]:
    """Decorator: also register ``fn`` for ``key`` on arrays of exactly ``array_type``, to
    be called on a loss's raw arguments (see "Direct kernels" above)."""
    def deco(fn: Callable) -> Callable:
        _DIRECT[(key, array_type)] = fn
        return fn
    return deco


def direct(key: Hashable, yhat: Any, *args: Any) -> Any:
    """The direct kernel of ``key`` for arrays of ``yhat``'s exact type, called on
    ``(yhat, *args)``: its result, or None where there is no such kernel or it declines.
    Registered when its backend's kernels are loaded, i.e. after the first ``lookup`` for
    that backend."""
    kernel = _DIRECT.get((key, type(yhat))) if _ENABLED else None
    return None if kernel is None else kernel(yhat, *args)


def _load(backend: str) -> None:
    if backend in _LOADED:
        return
    _LOADED.add(backend)
    try:
        importlib.import_module(f"{__package__}.fast_{backend}")
    except ModuleNotFoundError as e:  # no kernels for this backend (or its extra missing)
        if e.name not in (f"{__package__}.fast_{backend}",) and not str(e.name).startswith(("numba", "numexpr")):
            raise


def lookup(key: Hashable, xp) -> Callable[..., Any] | None:
    """The fast path for ``key`` on ``xp``'s backend, or None (use the generic path)."""
    if not _ENABLED:
        return None
    name = backend_name(xp)
    _load(name)
    return _REGISTRY.get((key, name))


def lookup_backend(key: Hashable, backend: str) -> Callable[..., Any] | None:
    """The fast path for ``key`` on the backend named ``backend`` ('jax', ...), or None."""
    if not _ENABLED:
        return None
    _load(backend)
    return _REGISTRY.get((key, backend))


class disabled:
    """Context manager that turns every fast path off (tests compare against this)."""

    def __enter__(self):
        global _ENABLED
        self._prev, _ENABLED = _ENABLED, False
        return self

    def __exit__(self, *exc):
        global _ENABLED
        _ENABLED = self._prev
        return False
