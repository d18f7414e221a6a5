"""Save and load optimiser state trees.

The state is plain data: :func:`flatten_state` turns it into ``{key: numpy array}`` (keys
like ``"layers[1].weight:0"``, where the part after ``:`` indexes inside the rule's state
tuple), so a checkpoint can hold model, optimiser state and anything else in one ``.npz``
or ``.safetensors`` file. :func:`unflatten_state` rebuilds a state like a given one (rules,
frozen flags and structure come from ``like``; arrays are converted to the backend, dtype
and device of ``like``'s arrays). Values are stored exactly, so a resumed run continues bit
for bit. A Leaf shared by tied arrays is stored once.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from .._backend import device_of, is_array, is_jax, namespace, to_numpy
from .._errors import ArgumentError
from .._io import atomic_write
from array_api_compat import to_device
from .tree import Leaf, format_path, leaves

__all__ = ["flatten_state", "unflatten_state", "save_state", "load_state"]


def _state_arrays(s: Any, sub: tuple):
    """(sub-path, array) for every array inside a rule state (tuples / None / arrays)."""
    if s is None:
        return
    if isinstance(s, tuple):
        for i, v in enumerate(s):
            yield from _state_arrays(v, sub + (i,))
        return
    if is_array(s) or isinstance(s, np.generic):
        yield sub, s
        return
    raise TypeError(f"cannot save a rule state entry of type {type(s).__name__}")


def _key(path: tuple, sub: tuple, prefix: str) -> str:
    return f"{prefix}{format_path(path)}:{'.'.join(map(str, sub))}"


def flatten_state(state: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """``{key: numpy array}`` for every array of the state tree (each shared Leaf once)."""
    out: dict[str, np.ndarray] = {}
    for path, leaf in leaves(state):
        for sub, a in _state_arrays(leaf.state, ()):
            a = to_numpy(a)
            # ascontiguousarray makes 0-d arrays 1-d; keep the shape (0-d step counters)
            out[_key(path, sub, prefix)] = np.ascontiguousarray(a).reshape(np.shape(a))
    return out


def unflatten_state(like: Any, flat: dict[str, Any], prefix: str = "") -> Any:
    """A new state tree shaped like ``like`` with the arrays of ``flat`` (from
    :func:`flatten_state`). Extra keys in ``flat`` are ignored; a missing key or a shape
    mismatch raises ``ArgumentError``. Rules and frozen flags are taken from ``like``."""
    from .interface import _copy_state
    memo: dict[int, Leaf] = {}
    new = _copy_state(like, memo)
    for path, leaf in leaves(like):
        memo[id(leaf)].state = _fill(leaf.state, flat, path, (), prefix)
    return new


def _fill(s, flat, path, sub, prefix):
    if s is None:
        return None
    if isinstance(s, tuple):
        vals = [_fill(v, flat, path, sub + (i,), prefix) for i, v in enumerate(s)]
        return type(s)(*vals) if hasattr(s, "_fields") else tuple(vals)
    key = _key(path, sub, prefix)
    if key not in flat:
        raise ArgumentError(f"the saved state has no entry {key!r} (was it saved from this model and rule?)")
    a = np.asarray(flat[key])
    if isinstance(s, np.generic):
        return np.asarray(a, dtype=s.dtype)[()]
    if tuple(a.shape) != tuple(s.shape):
        raise ArgumentError(f"saved entry {key!r} has shape {a.shape}, the state expects {tuple(s.shape)}")
    xp = namespace(s)
    if is_jax(xp):
        return xp.asarray(a, dtype=s.dtype)
    if isinstance(s, np.ndarray):
        return np.array(a, dtype=s.dtype)
    # made on the host, then moved: torch cannot build a CUDA tensor straight from a NumPy
    # buffer with copy=True ("can't alias tensor from device 'cpu' to 'cuda:0'")
    host = xp.asarray(a, dtype=s.dtype, copy=True)
    return host if device_of(host) == device_of(s) else to_device(host, device_of(s))


def save_state(path: str | os.PathLike, state: Any) -> None:
    """Write the state's arrays to ``path``: safetensors when it ends in ``.safetensors``,
    else NumPy ``.npz`` (``numpy.savez``; like it, adds ``.npz`` to a name without it).

    The file is written atomically (a temporary file in the same folder, renamed over
    ``path``), so an interrupted save leaves the previous file intact."""
    flat = flatten_state(state)
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors.numpy import save
        atomic_write(path, lambda f: f.write(save(flat)))
    else:
        atomic_write(path if path.endswith(".npz") else path + ".npz", lambda f: np.savez(f, **flat))


def load_state(path: str | os.PathLike, like: Any) -> Any:
    """Read a state written by :func:`save_state` into a new tree shaped like ``like``
    (e.g. ``setup(rule, model)`` for the same model and rule)."""
    if str(path).endswith(".safetensors"):
        from safetensors.numpy import load_file
        flat = load_file(str(path))
    else:
        with np.load(path) as f:
            flat = {k: f[k] for k in f.files}
    return unflatten_state(like, flat)
