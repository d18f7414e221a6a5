"""Registry of per-backend fast paths.

A fast path is registered for an operation key (any hashable: a rule class, a loss
name) and a backend name ('numpy', 'torch', 'jax'). Generic code calls
``lookup(key, xp)`` and falls back to its array-API reference implementation when
``None`` is returned. Every registered kernel must be tested against that reference.

Kernel modules live next to this file (``fast_numpy.py``, ``fast_torch.py``,
``fast_jax.py``) and are imported lazily, the first time a backend is looked up, so that
``import fluxtrain`` never imports torch or JAX.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Hashable

from . import backend_name

_REGISTRY: dict[tuple[Hashable, str], Callable[..., Any]] = {}
_LOADED: set[str] = set()
_ENABLED = True


def register(key: Hashable, backend: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as the fast path of ``key`` on ``backend``."""
    def deco(fn: Callable) -> Callable:
        _REGISTRY[(key, backend)] = fn
        return fn
    return deco


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
