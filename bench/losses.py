"""Losses, forward + backward: fluxtrain beside torch.nn.functional and optax.

fluxtrain's losses take one-hot / probability targets, as Flux does; the peers are also
timed with integer class targets (their fastest form) so the table shows what the
one-hot convention costs. ``bool one-hot`` is ``onehotbatch``'s output, which the torch
kernel reads as class labels.
"""
from __future__ import annotations

import sys
from typing import Callable

import numpy as np

from _common import fmt_ms, fmt_ratio, interleaved, md_table


def _inputs(n: int, c: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, c), dtype=np.float32)
    labels = rng.integers(0, c, size=n)
    onehot = np.zeros((n, c), np.float32)
    onehot[np.arange(n), labels] = 1
    bits = (rng.random((n, c)) < 0.5).astype(np.float32)
    return logits, labels, onehot, bits


def _torch_cases(kind: str, logits, labels, onehot, bits) -> dict[str, Callable]:
    import torch
    import torch.nn.functional as F
    x = torch.from_numpy(logits.copy()).requires_grad_(True)
    yi, yo, yb = torch.from_numpy(labels), torch.from_numpy(onehot), torch.from_numpy(bits)

    def fb(f):
        def step():
            x.grad = None
            f().backward()
        return step

    cases: dict[str, Callable] = {}
    if kind == "logitcrossentropy":
        cases["F.cross_entropy int"] = fb(lambda: F.cross_entropy(x, yi))
        cases["F.cross_entropy one-hot"] = fb(lambda: F.cross_entropy(x, yo))
        try:
            import fluxtrain
            cases["fluxtrain torch one-hot"] = fb(lambda: fluxtrain.logitcrossentropy(x, yo))
            ybool = yo.bool()  # what onehotbatch returns
            cases["fluxtrain torch bool one-hot"] = fb(lambda: fluxtrain.logitcrossentropy(x, ybool))
        except AttributeError as e:
            print(f"  [skip] fluxtrain: {e}", file=sys.stderr)
    else:
        cases["F.bce_with_logits"] = fb(lambda: F.binary_cross_entropy_with_logits(x, yb))
        try:
            import fluxtrain
            cases["fluxtrain torch"] = fb(lambda: fluxtrain.logitbinarycrossentropy(x, yb))
        except AttributeError as e:
            print(f"  [skip] fluxtrain: {e}", file=sys.stderr)
    return cases


def _jax_cases(kind: str, logits, labels, onehot, bits) -> dict[str, Callable]:
    import jax
    import jax.numpy as jnp
    import optax
    x = jnp.asarray(logits)
    yi, yo, yb = jnp.asarray(labels.astype(np.int32)), jnp.asarray(onehot), jnp.asarray(bits)

    def vg(f, y):
        g = jax.jit(jax.value_and_grad(f))

        def step():
            jax.block_until_ready(g(x, y))
        return step

    cases: dict[str, Callable] = {}
    if kind == "logitcrossentropy":
        cases["optax int"] = vg(lambda a, y: optax.softmax_cross_entropy_with_integer_labels(a, y).mean(), yi)
        cases["optax one-hot"] = vg(lambda a, y: optax.softmax_cross_entropy(a, y).mean(), yo)
        try:
            import fluxtrain
            fluxtrain.logitcrossentropy
            cases["fluxtrain jax one-hot"] = vg(lambda a, y: fluxtrain.logitcrossentropy(a, y), yo)
            cases["fluxtrain jax bool one-hot"] = vg(lambda a, y: fluxtrain.logitcrossentropy(a, y), yo.astype(bool))
        except AttributeError as e:
            print(f"  [skip] fluxtrain: {e}", file=sys.stderr)
    else:
        cases["optax sigmoid_bce"] = vg(lambda a, y: optax.sigmoid_binary_cross_entropy(a, y).mean(), yb)
        try:
            import fluxtrain
            fluxtrain.logitbinarycrossentropy
            cases["fluxtrain jax"] = vg(lambda a, y: fluxtrain.logitbinarycrossentropy(a, y), yb)
        except AttributeError as e:
            print(f"  [skip] fluxtrain: {e}", file=sys.stderr)
    return cases


def run(shapes: list[tuple[int, int]], reps: int, libs: list[str]) -> str:
    out = ["## Losses, forward + backward (float32, mean over the batch)\n",
           "Median milliseconds per forward+backward. fluxtrain (like Flux) takes one-hot "
           "targets; `int` columns are the peers' integer-label form. Binary losses use 0/1 "
           "float targets (torch and optax take no integer form). torch: `loss.backward()`; "
           "JAX: `jax.jit(jax.value_and_grad(loss))`.\n"]
    ratio_rows = []
    for kind in ("logitcrossentropy", "logitbinarycrossentropy"):
        cols: list[str] = []
        res_by_shape = {}
        for n, c in shapes:
            print(f"[losses] {kind} {n}x{c}", file=sys.stderr, flush=True)
            data = _inputs(n, c)
            cases: dict[str, Callable] = {}
            if "torch" in libs:
                cases.update(_torch_cases(kind, *data))
            if "jax" in libs:
                cases.update(_jax_cases(kind, *data))
            inner = 1 if n * c >= 10**6 else 10
            # (a few ms a repetition: more of them, as the ratios are within tens of %)
            res = interleaved(cases, reps=max(reps, 21), warmup=3, inner=inner)
            res_by_shape[(n, c)] = res
            for k in res:
                if k not in cols:
                    cols.append(k)
            if kind == "logitcrossentropy":
                pairs = [("fluxtrain torch one-hot", "F.cross_entropy int", "≤ 1.1×"),
                         ("fluxtrain torch one-hot", "F.cross_entropy one-hot", "≤ 1.1×"),
                         ("fluxtrain torch bool one-hot", "F.cross_entropy int", "≤ 1.1×"),
                         ("fluxtrain jax one-hot", "optax one-hot", ""),
                         ("fluxtrain jax one-hot", "optax int", ""),
                         ("fluxtrain jax bool one-hot", "optax int", "")]
            else:
                pairs = [("fluxtrain torch", "F.bce_with_logits", ""),
                         ("fluxtrain jax", "optax sigmoid_bce", "")]
            for a, b, tgt in pairs:
                if a in res and b in res:
                    ratio_rows.append([kind, f"{n}×{c}", f"{a} / {b}", fmt_ratio(res[a], res[b]), tgt])
        out.append(f"### {kind}\n")
        out.append(md_table(["batch × classes"] + cols,
                            [[f"{n}×{c}"] + [fmt_ms(r.get(k)) for k in cols]
                             for (n, c), r in res_by_shape.items()]))
        out.append("")
    out.append("### Loss ratios (fluxtrain / peer)\n")
    out.append(md_table(["loss", "shape", "comparison", "ratio", "target"], ratio_rows))
    return "\n".join(out) + "\n"
