"""Shared test helpers: one ``Backend`` object per array library, used by the fixtures in
``conftest.py``. Tests never name a backend; they ask the fixture for arrays."""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

HAVE_TORCH = importlib.util.find_spec("torch") is not None
HAVE_JAX = importlib.util.find_spec("jax") is not None

if HAVE_JAX:
    import jax

    # float64 parity needs x64; fluxtrain itself never changes this flag.
    jax.config.update("jax_enable_x64", True)


@dataclass
class Backend:
    """How a test builds arrays of one library and reads them back."""

    name: str  # 'numpy', 'torch', 'jax' or 'jax-jit'
    jit: bool = False
    _xp: Any = field(default=None, repr=False)

    @property
    def lib(self) -> str:
        return "jax" if self.name.startswith("jax") else self.name

    @property
    def xp(self):
        """The array-API namespace fluxtrain will see for this backend's arrays."""
        from fluxtrain._backend import namespace
        return namespace(self.asarray([0.0]))

    @property
    def eager(self) -> bool:
        """Values can be inspected (and DomainError raised) inside the call."""
        return not self.jit

    @property
    def mutable(self) -> bool:
        """Arrays can be written in place (NumPy, torch; JAX arrays are immutable)."""
        return self.lib != "jax"

    def fill_(self, a: Any, value: Any) -> None:
        """Write ``value`` into every entry of ``a`` in place (mutable backends only)."""
        if self.lib == "torch":
            a.fill_(value)
        elif self.lib == "numpy":
            a[...] = value
        else:
            raise TypeError(f"{self.name} arrays are immutable")

    @property
    def differentiable(self) -> bool:
        return self.lib in ("torch", "jax")

    def asarray(self, a: Any, dtype: str | None = None) -> Any:
        """``a`` (nested lists / NumPy) as this backend's array; ``dtype`` like 'float32'."""
        arr = np.asarray(a, dtype=dtype)
        if self.lib == "numpy":
            return arr
        if self.lib == "torch":
            import torch
            return torch.from_numpy(arr.copy())
        import jax.numpy as jnp
        return jnp.asarray(arr)

    def to_numpy(self, x: Any) -> np.ndarray:
        from fluxtrain._backend import to_numpy
        return to_numpy(x)

    def call(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, under ``jax.jit`` (array args traced) for 'jax-jit'."""
        if not self.jit:
            return fn(*args, **kwargs)
        arrays = [i for i, a in enumerate(args) if hasattr(a, "shape") and hasattr(a, "dtype")]

        def f(*arr):
            full = list(args)
            for i, a in zip(arrays, arr):
                full[i] = a
            return fn(*full, **kwargs)

        return jax.jit(f)(*[args[i] for i in arrays])

    def grad(self, f: Callable, *args: Any) -> tuple[np.ndarray, ...]:
        """Gradients of scalar ``f`` w.r.t. every array argument, via the backend's autodiff."""
        if self.lib == "torch":
            import torch
            leaves = [a.detach().clone().requires_grad_(True) for a in args]
            out = f(*leaves)
            gs = torch.autograd.grad(out, leaves, allow_unused=True)
            return tuple(np.zeros(a.shape) if g is None else g.detach().numpy() for a, g in zip(leaves, gs))
        if self.lib == "jax":
            g = jax.grad(f, argnums=tuple(range(len(args))))
            if self.jit:
                g = jax.jit(g)
            return tuple(np.asarray(x) for x in g(*args))
        raise TypeError(f"{self.name} has no autodiff")


def available_backends(jit: bool = True) -> list[str]:
    names = ["numpy"]
    if HAVE_TORCH:
        names.append("torch")
    if HAVE_JAX:
        names.append("jax")
        if jit:
            names.append("jax-jit")
    return names


def assert_close(actual: Any, expected: Any, *, rtol: float = 1e-12, atol: float = 0.0,
                 dtype: str | None = None) -> None:
    """Compare any backend's array with NumPy/Python values; optionally check the dtype."""
    from fluxtrain._backend import to_numpy
    a = to_numpy(actual)
    if dtype is not None:
        assert str(a.dtype) == dtype, f"dtype {a.dtype} != {dtype}"
    np.testing.assert_allclose(a, np.asarray(expected, dtype=a.dtype if a.dtype.kind in "fc" else None),
                               rtol=rtol, atol=atol, equal_nan=True)


def reference_path() -> Path:
    """``shared/reference/flux-vectors.json`` beside the checkout, or $FLUXTRAIN_REFERENCE
    (a file or its folder)."""
    env = os.environ.get("FLUXTRAIN_REFERENCE")
    if env:
        p = Path(env)
        return p / "flux-vectors.json" if p.is_dir() else p
    return Path(__file__).resolve().parents[2] / "shared" / "reference" / "flux-vectors.json"


REFERENCE = reference_path()


def reference_entries(*fns: str) -> list[dict]:
    """The entries of :data:`REFERENCE` whose ``fn`` is one of ``fns``, in file order;
    ``[]`` when the file is not there."""
    if not REFERENCE.exists():
        return []
    return [e for e in json.loads(REFERENCE.read_text()) if e["fn"] in fns]


class without_fast:
    """Context manager: the fast path registered under ``key`` (e.g. a whole-step route,
    ``("update_module", "torch")``) is switched off, so that the code it stands in for runs."""

    def __init__(self, key: Any) -> None:
        self.key = key

    def __enter__(self) -> "without_fast":
        from fluxtrain._backend import fast
        self.saved = fast._REGISTRY.pop(self.key)
        return self

    def __exit__(self, *exc: Any) -> bool:
        from fluxtrain._backend import fast
        fast._REGISTRY[self.key] = self.saved
        return False
