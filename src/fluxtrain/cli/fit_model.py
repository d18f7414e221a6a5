"""The small multilayer perceptron of ``fluxtrain fit``, written once for PyTorch and once
for JAX from the same initial weights (Flux's ``Dense`` default: Glorot-uniform weights of
shape ``(out, in)`` and zero biases, drawn with NumPy from the seed), so both backends start
from identical numbers."""
from __future__ import annotations

import importlib.util
from typing import Any, Callable

import numpy as np

from .commands import UserError

__all__ = ["init_layers", "make_model", "BACKENDS"]

BACKENDS = ("torch", "jax")


def init_layers(sizes: list[int], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(weight, bias), ...]`` float32 for layer sizes ``[in, hidden..., out]``.

    Glorot uniform as Flux's ``glorot_uniform``: U(-a, a) with a = sqrt(6 / (fan_in + fan_out)).
    """
    rng = np.random.default_rng([seed, 2])
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        a = np.sqrt(6.0 / (fan_in + fan_out))
        w = ((rng.random((fan_out, fan_in)) * 2 - 1) * a).astype(np.float32)
        layers.append((w, np.zeros(fan_out, dtype=np.float32)))
    return layers


def require_backend(name: str) -> None:
    if name not in BACKENDS:
        raise UserError(f"--backend must be torch or jax, got {name!r}")
    if importlib.util.find_spec(name) is None:
        extra = "torch" if name == "torch" else "jax"
        raise UserError(f"--backend {name}: {name} is not installed (pip install 'fluxtrain[{extra}]')")


class Model:
    """A backend-specific MLP: ``params`` is what the optimiser trains (a torch module or a
    dict of JAX arrays), ``forward(params, x)`` the prediction (logits / raw output),
    ``asarray`` turns NumPy data into the backend's arrays, ``no_grad()`` a context without
    autograd for evaluation."""

    def __init__(self, backend: str, params: Any, forward: Callable[[Any, Any], Any],
                 asarray: Callable[[np.ndarray], Any], no_grad: Callable[[], Any]):
        self.backend = backend
        self.params = params
        self.forward = forward
        self.asarray = asarray
        self.no_grad = no_grad


def make_model(backend: str, sizes: list[int], seed: int) -> Model:
    require_backend(backend)
    layers = init_layers(sizes, seed)
    if backend == "torch":
        return _torch_model(layers)
    return _jax_model(layers)


def _torch_model(layers) -> Model:
    import torch
    mods: list = []
    for i, (w, b) in enumerate(layers):
        lin = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(b))
        mods.append(lin)
        if i < len(layers) - 1:
            mods.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*mods)
    return Model("torch", net, lambda m, x: m(x), lambda a: torch.from_numpy(np.ascontiguousarray(a)),
                 torch.no_grad)


def _jax_model(layers) -> Model:
    import contextlib

    import jax
    import jax.numpy as jnp
    params = {"layers": [{"weight": jnp.asarray(w), "bias": jnp.asarray(b)} for w, b in layers]}

    @jax.jit
    def forward(p, x):
        n = len(p["layers"])
        for i, layer in enumerate(p["layers"]):
            x = x @ layer["weight"].T + layer["bias"]
            if i < n - 1:
                x = jax.nn.relu(x)
        return x

    return Model("jax", params, forward, jnp.asarray, contextlib.nullcontext)
