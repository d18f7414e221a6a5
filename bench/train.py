"""One epoch of ``fluxtrain.train`` on an MLP vs the same work written by hand.

The hand-written loop does exactly what ``train`` promises (gradient of the loss, the loss
checked to be finite before the update, as Flux's ``train!`` does, then ``update_``; on
JAX with the loss and gradient compiled by ``jax.jit``, as ``train`` compiles them), so
the ratio is ``train``'s own overhead. For context: a plain torch loop with
``torch.optim.Adam(fused=True)`` and ``F.cross_entropy``; on JAX the loop without reading
the loss (what the check costs) and without ``jax.jit``.
"""
from __future__ import annotations

import math
import sys
from typing import Callable

import numpy as np

from _common import fmt_ms, fmt_ratio, interleaved, md_table, torch_mlp


def _data(n, d, c, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d), dtype=np.float32)
    labels = rng.integers(0, c, n)
    y = np.zeros((n, c), np.float32)
    y[np.arange(n), labels] = 1
    return x, y, labels


def _torch_cases(x, y, labels, batch, hidden) -> dict[str, Callable]:
    import torch
    import torch.nn.functional as F
    import fluxtrain as ft
    X, Y, L = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(labels)
    batches = [(X[i:i + batch], Y[i:i + batch]) for i in range(0, len(X), batch)]
    batches_int = [(X[i:i + batch], L[i:i + batch]) for i in range(0, len(X), batch)]

    def mlp():
        torch.manual_seed(0)
        return torch_mlp(x.shape[1], hidden, y.shape[1])

    def loss(m, xb, yb):
        return ft.logitcrossentropy(m(xb), yb)

    cases: dict[str, Callable] = {}
    m1 = mlp()
    s1 = ft.setup(ft.Adam(1e-3), m1)
    cases["fluxtrain.train"] = lambda: ft.train(loss, m1, batches, s1, progress=False)

    m2 = mlp()
    s2 = ft.setup(ft.Adam(1e-3), m2)

    def by_hand():
        for xb, yb in batches:
            m2.zero_grad(set_to_none=True)
            val = loss(m2, xb, yb)
            val.backward()
            if not math.isfinite(val.item()):  # train's check, as Flux's train! makes it
                raise FloatingPointError("loss is not finite")
            ft.update_(s2, m2)
    cases["hand-written loop (fluxtrain loss + update_)"] = by_hand

    m3 = mlp()
    opt = torch.optim.Adam(m3.parameters(), lr=1e-3, fused=True)

    def plain():
        for xb, lb in batches_int:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(m3(xb), lb).backward()
            opt.step()
    cases["plain torch loop (F.cross_entropy, fused Adam)"] = plain
    return cases


def _jax_cases(x, y, batch, hidden) -> dict[str, Callable]:
    import jax
    import jax.numpy as jnp
    import fluxtrain as ft
    rng = np.random.default_rng(0)
    d, c = x.shape[1], y.shape[1]

    def init():
        return {"w1": jnp.asarray(rng.standard_normal((d, hidden), dtype=np.float32) * 0.05),
                "b1": jnp.zeros(hidden, jnp.float32),
                "w2": jnp.asarray(rng.standard_normal((hidden, hidden), dtype=np.float32) * 0.05),
                "b2": jnp.zeros(hidden, jnp.float32),
                "w3": jnp.asarray(rng.standard_normal((hidden, c), dtype=np.float32) * 0.05),
                "b3": jnp.zeros(c, jnp.float32)}

    def loss(p, xb, yb):
        h = jax.nn.relu(xb @ p["w1"] + p["b1"])
        h = jax.nn.relu(h @ p["w2"] + p["b2"])
        return ft.logitcrossentropy(h @ p["w3"] + p["b3"], yb)

    batches = [(jnp.asarray(x[i:i + batch]), jnp.asarray(y[i:i + batch])) for i in range(0, len(x), batch)]
    cases: dict[str, Callable] = {}
    b1 = [init()]
    s1 = ft.setup(ft.Adam(1e-3), b1[0])

    def via_train():
        nonlocal s1
        s1, b1[0] = ft.train(loss, b1[0], batches, s1, progress=False)
        jax.block_until_ready(b1[0])
    cases["fluxtrain.train"] = via_train

    # what train does, by hand: the loss and its gradient compiled once, the loss checked
    # (Flux's train! stops on a non-finite one, before the update), then update_
    b2 = [init()]
    s2 = ft.setup(ft.Adam(1e-3), b2[0])
    vg = jax.jit(jax.value_and_grad(loss))

    def by_hand():
        nonlocal s2
        for xb, yb in batches:
            val, g = vg(b2[0], xb, yb)
            if not math.isfinite(float(val)):
                raise FloatingPointError("loss is not finite")
            s2, b2[0] = ft.update_(s2, b2[0], g)
        jax.block_until_ready(b2[0])
    cases["hand-written loop (jit(value_and_grad) + update_)"] = by_hand

    # for context: the same loop without reading the loss. Nothing then waits for the
    # gradient before update_ is called, so the Python of one step overlaps the compiled
    # work of the last: that wait is the price of train's per-step check
    b4 = [init()]
    s4 = ft.setup(ft.Adam(1e-3), b4[0])

    def unchecked():
        nonlocal s4
        for xb, yb in batches:
            _, g = vg(b4[0], xb, yb)
            s4, b4[0] = ft.update_(s4, b4[0], g)
        jax.block_until_ready(b4[0])
    cases["the same, loss not read"] = unchecked

    # for context: the loop as first written, without jit (JAX runs each operation alone)
    b3 = [init()]
    s3 = ft.setup(ft.Adam(1e-3), b3[0])
    grad = jax.grad(loss)

    def eager():
        nonlocal s3
        for xb, yb in batches:
            g = grad(b3[0], xb, yb)
            s3, b3[0] = ft.update_(s3, b3[0], g)
        jax.block_until_ready(b3[0])
    cases["eager loop (jax.grad + update_)"] = eager
    return cases


def run(quick: bool, reps: int, libs: list[str]) -> str:
    n, d, c, hidden, batch = (4096, 64, 10, 128, 128) if quick else (16384, 128, 10, 256, 128)
    x, y, labels = _data(n, d, c)
    out = ["## One epoch of `train` (MLP, Adam)\n",
           f"{n} samples of {d} features, MLP {d}→{hidden}→{hidden}→{c} (ReLU), batch {batch} "
           f"({n // batch} steps), `logitcrossentropy` on one-hot targets, float32. Median "
           "milliseconds per epoch.\n"]
    rows = []
    for lib in libs:
        if lib == "numpy":
            continue
        print(f"[train] {lib}", file=sys.stderr, flush=True)
        cases = _torch_cases(x, y, labels, batch, hidden) if lib == "torch" else _jax_cases(x, y, batch, hidden)
        # an epoch is short (~0.3 s) and the overhead measured is a few percent: many
        # interleaved repetitions, or the machine's drift decides the ratio
        res = interleaved(cases, reps=max(15, reps), warmup=1)
        ref = next((res[k] for k in res if k.startswith("hand-written")), None)
        for name, t in res.items():
            rows.append([lib, name, fmt_ms(t), fmt_ratio(t, ref)])
    out.append(md_table(["backend", "loop", "ms / epoch", "vs hand-written"], rows))
    out.append("\nTarget: `fluxtrain.train` ≤ 1.05× the hand-written loop.\n")
    return "\n".join(out) + "\n"
