"""Checkpoints: model arrays, optimiser state, schedule position and RNG state in one file.

The file is a NumPy ``.npz`` archive (no pickle) written atomically: it goes to a temporary
file in the same folder, is flushed to disk, then renamed over the target with
``os.replace``, so an interrupted save never leaves a half-written checkpoint behind.
Arrays are stored exactly (same dtype, same bits), so a run resumed from a checkpoint
continues bit-for-bit like one that was never interrupted.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, NamedTuple

import numpy as np

from .._backend import is_array, is_writeable, put, to_numpy
from .._errors import ArgumentError
from .._io import atomic_write
from .gradient import _is_jax_array, _is_torch_module, _is_torch_tensor, _node, tree_leaves_with_path

__all__ = ["save_checkpoint", "load_checkpoint", "Checkpoint"]

_FORMAT = "fluxtrain-checkpoint"
_VERSION = 1


class Checkpoint(NamedTuple):
    """What :func:`load_checkpoint` returns."""

    model: Any
    state: Any
    step: int | None
    epoch: int | None
    schedule_position: Any
    rng: Any
    extra: Any


# ----------------------------------------------------------------------------- model

def _model_arrays(model: Any) -> dict[str, np.ndarray]:
    if _is_torch_module(model):
        # state_dict also holds buffers (BatchNorm statistics), needed to resume exactly
        return {k: to_numpy(v) for k, v in model.state_dict().items()}
    return {path: to_numpy(x) for path, x in tree_leaves_with_path(model) if is_array(x)}


def _like(value: np.ndarray, like: Any, key: str) -> Any:
    """``value`` as an array of ``like``'s library, dtype and device."""
    if tuple(value.shape) != tuple(like.shape):
        raise ArgumentError(f"load_checkpoint: {key} has shape {tuple(value.shape)} in the file "
                            f"but {tuple(like.shape)} in the model given")
    if _is_torch_tensor(like):
        import torch
        t = torch.from_numpy(np.array(value, copy=True, order="C"))
        if t.dtype != like.dtype:
            raise ArgumentError(f"load_checkpoint: {key} is {value.dtype} in the file but {like.dtype} in the model")
        return t.to(like.device)
    if str(value.dtype) != str(like.dtype):
        raise ArgumentError(f"load_checkpoint: {key} is {value.dtype} in the file but {like.dtype} in the model")
    if _is_jax_array(like):
        import jax
        return jax.device_put(value, list(like.devices())[0])
    return value.copy()


def _load_model(model_like: Any, arrays: dict[str, np.ndarray]) -> Any:
    if _is_torch_module(model_like):
        import torch
        sd = model_like.state_dict()
        missing = sorted(set(sd) - set(arrays))
        if missing:
            raise ArgumentError(f"load_checkpoint: the file has no value for model entries {missing}")
        with torch.no_grad():
            for k, t in sd.items():
                t.copy_(_like(arrays[k], t, f"model entry {k!r}"))
        return model_like
    return _rebuild(model_like, arrays, "")


def _rebuild(x: Any, arrays: dict[str, np.ndarray], path: str) -> Any:
    if _is_torch_module(x):
        raise ArgumentError("load_checkpoint: a torch.nn.Module inside another container is not "
                            "supported; pass the module itself as model_like")
    node = _node(x)
    if node is None:
        if not is_array(x):
            return x
        if path not in arrays:
            raise ArgumentError(f"load_checkpoint: the file has no value for model entry {path!r}")
        value = _like(arrays[path], x, f"model entry {path!r}")
        # writeable arrays are overwritten in place, so other references see the loaded values
        return put(x, value) if is_writeable(x) else value
    keys, children, rebuild = node
    new = [_rebuild(c, arrays, f"{path}/{k}" if path else str(k)) for k, c in zip(keys, children)]
    if all(a is b for a, b in zip(new, children)):
        return x
    if isinstance(x, (dict, list)):  # mutable: rebind in place
        for k, v in zip(keys, new):
            x[k] = v
        return x
    return rebuild(new)


# ----------------------------------------------------------------------------- RNG

def _rng_save(rng: Any, name: str, arrays: dict[str, np.ndarray]) -> Any:
    """A JSON description of ``rng``; array parts go into ``arrays`` under ``rng/<name>``."""
    if rng is None:
        return None
    if isinstance(rng, np.random.Generator):
        return {"kind": "numpy.Generator", "state": rng.bit_generator.state}
    if isinstance(rng, np.random.RandomState):
        alg, keys, pos, has_gauss, gauss = rng.get_state()
        arrays[f"rng/{name}"] = np.asarray(keys)
        return {"kind": "numpy.RandomState", "alg": alg, "pos": int(pos),
                "has_gauss": int(has_gauss), "gauss": float(gauss)}
    if "torch" in sys.modules and isinstance(rng, sys.modules["torch"].Generator):
        arrays[f"rng/{name}"] = rng.get_state().numpy()
        return {"kind": "torch.Generator", "device": str(rng.device)}
    if _is_jax_array(rng):
        import jax
        if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
            arrays[f"rng/{name}"] = np.asarray(jax.random.key_data(rng))
            return {"kind": "jax.key", "impl": str(jax.random.key_impl(rng))}
        arrays[f"rng/{name}"] = np.asarray(rng)
        return {"kind": "jax.raw_key"}
    if isinstance(rng, dict):
        return {"kind": "dict", "items": {str(k): _rng_save(v, f"{name}/{k}", arrays) for k, v in rng.items()}}
    if isinstance(rng, (list, tuple)):
        return {"kind": type(rng).__name__, "items": [_rng_save(v, f"{name}/{i}", arrays) for i, v in enumerate(rng)]}
    raise ArgumentError(
        "save_checkpoint: rng must be a numpy Generator or RandomState, a torch.Generator "
        f"(e.g. torch.default_generator), a JAX key, or a dict/list of these; got {type(rng).__name__}")


def _rng_load(desc: Any, name: str, arrays: dict[str, np.ndarray], like: Any) -> Any:
    """Rebuild an RNG; when ``like`` is the same kind of mutable generator, restore into it."""
    if desc is None:
        return None
    kind = desc["kind"]
    if kind == "numpy.Generator":
        st = desc["state"]
        if isinstance(like, np.random.Generator) and type(like.bit_generator).__name__ == st["bit_generator"]:
            gen = like
        else:
            gen = np.random.Generator(getattr(np.random, st["bit_generator"])())
        gen.bit_generator.state = st
        return gen
    if kind == "numpy.RandomState":
        rs = like if isinstance(like, np.random.RandomState) else np.random.RandomState()
        rs.set_state((desc["alg"], arrays[f"rng/{name}"], desc["pos"], desc["has_gauss"], desc["gauss"]))
        return rs
    if kind == "torch.Generator":
        import torch
        gen = like if isinstance(like, torch.Generator) else torch.Generator(device=desc["device"])
        gen.set_state(torch.from_numpy(arrays[f"rng/{name}"].copy()))
        return gen
    if kind == "jax.key":
        import jax
        return jax.random.wrap_key_data(arrays[f"rng/{name}"], impl=desc["impl"])
    if kind == "jax.raw_key":
        import jax.numpy as jnp
        return jnp.asarray(arrays[f"rng/{name}"])
    if kind == "dict":
        like_d = like if isinstance(like, dict) else {}
        return {k: _rng_load(v, f"{name}/{k}", arrays, like_d.get(k)) for k, v in desc["items"].items()}
    if kind in ("list", "tuple"):
        like_s = like if isinstance(like, (list, tuple)) else []
        out = [_rng_load(v, f"{name}/{i}", arrays, like_s[i] if i < len(like_s) else None)
               for i, v in enumerate(desc["items"])]
        return out if kind == "list" else tuple(out)
    raise ArgumentError(f"load_checkpoint: unknown RNG kind {kind!r} in the file")


# ----------------------------------------------------------------------------- files

def save_checkpoint(path: str | os.PathLike, model: Any, state: Any = None, *,
                    step: int | None = None, epoch: int | None = None,
                    schedule_position: Any = None, rng: Any = None, extra: Any = None) -> None:
    """Save ``model``'s arrays, the optimiser ``state`` (from ``setup``), the position in a
    schedule, RNG state and JSON-able ``extra`` data to ``path``, atomically.

    - ``model``: a ``torch.nn.Module`` (its ``state_dict``: parameters and buffers) or a tree
      of arrays (dict, list, tuple, dataclass, JAX pytree) of any backend.
    - ``state``: the optimiser state tree, stored with ``fluxtrain.optimise.flatten_state``.
    - ``rng``: a ``numpy.random.Generator`` / ``RandomState``, a ``torch.Generator`` (use
      ``torch.default_generator`` for torch's global RNG), a JAX key, or a dict/list of them.
    - ``step``, ``epoch``, ``schedule_position``, ``extra``: JSON values stored as given.

    >>> import numpy as np, tempfile, os
    >>> from fluxtrain.train import save_checkpoint, load_checkpoint
    >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.npz")
    >>> save_checkpoint(path, {"w": np.ones(2)}, epoch=3, rng=np.random.default_rng(0))
    >>> ck = load_checkpoint(path, {"w": np.zeros(2)})
    >>> ck.model["w"].tolist(), ck.epoch, float(ck.rng.random()) == float(np.random.default_rng(0).random())
    ([1.0, 1.0], 3, True)
    """
    arrays: dict[str, np.ndarray] = {}
    for k, v in _model_arrays(model).items():
        arrays[f"model/{k}"] = v
    has_state = state is not None
    if has_state:
        from ..optimise import flatten_state
        for k, v in flatten_state(state).items():
            arrays[f"state/{k}"] = np.asarray(v)
    meta = {
        "format": _FORMAT, "version": _VERSION, "has_state": has_state,
        "torch_module": _is_torch_module(model),
        "step": step, "epoch": epoch, "schedule_position": schedule_position,
        "rng": _rng_save(rng, "rng", arrays), "extra": extra,
    }
    try:
        text = json.dumps(meta)
    except TypeError as e:
        raise ArgumentError(f"save_checkpoint: step/epoch/schedule_position/extra must be JSON values ({e})") from None
    arrays["__meta__"] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_checkpoint(path: str | os.PathLike, model_like: Any, state_like: Any = None, *,
                    rng_like: Any = None) -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint`.

    ``model_like`` gives the structure, backend and dtypes: a torch module is loaded in place
    (and returned); writeable arrays (NumPy, torch) in a tree are overwritten in place; JAX
    arrays are replaced by new arrays (use the returned ``model``). ``state_like`` is an
    optimiser state of the same structure (e.g. a fresh ``setup(rule, model)``); the loaded
    state is returned. With ``rng_like``, NumPy/torch generators of the same kind are
    restored in place; otherwise new generators are made.

    Returns ``Checkpoint(model, state, step, epoch, schedule_position, rng, extra)``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load_checkpoint: no checkpoint at {path!r}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError) as e:
        raise ArgumentError(f"load_checkpoint: {path!r} is not a readable checkpoint ({e})") from None
    if "__meta__" not in arrays:
        raise ArgumentError(f"load_checkpoint: {path!r} is not a fluxtrain checkpoint")
    meta = json.loads(arrays.pop("__meta__").tobytes().decode("utf-8"))
    if meta.get("format") != _FORMAT:
        raise ArgumentError(f"load_checkpoint: {path!r} is not a fluxtrain checkpoint")
    model_arrays = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    model = _load_model(model_like, model_arrays)
    state = None
    if meta["has_state"]:
        if state_like is None:
            raise ArgumentError("load_checkpoint: the file holds an optimiser state; pass state_like "
                                "(e.g. setup(rule, model)) to load it")
        from ..optimise import unflatten_state
        flat = {k[len("state/"):]: v for k, v in arrays.items() if k.startswith("state/")}
        state = unflatten_state(state_like, flat)
    rng = _rng_load(meta["rng"], "rng", arrays, rng_like)
    return Checkpoint(model, state, meta["step"], meta["epoch"], meta["schedule_position"], rng, meta["extra"])
