"""What a 0-d state array costs a step under ``jax.jit``, and how many a rule passes.

    python bench/jax_state_buffers.py [--reps 15] [--splits 100,1000] [--floats 10]

Optimisers.jl keeps a running product βᵗ per array (Adam, AdamW, NAdam, ...): a Leaf's
state is ``(m, v, (β₁ᵗ, β₂ᵗ))``. Under the user's own ``jax.jit(update)`` every one of
them is an input and an output of the compiled call, where optax passes one ``count`` for
the whole tree. This script measures the two parts of that difference:

1. the dispatch cost of 0-d arrays: a jitted call on N of them, with N or one outputs,
   donated or not, in µs per array;
2. Adam and Momentum (no βᵗ: the control) as ``jax.jit(update)`` with donation against
   optax jitted with donation, on many small arrays (where dispatch dominates) and on
   10 M floats, with the kernels (fusions and copies) per array in each compiled program.

The numbers back the decision recorded in docs/performance.md ("`jit(update)` with
donation at 1,000 arrays"): `Leaf.state` stays Flux's, and ``update_`` is the fast path.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fluxtrain as ft  # noqa: E402
from _common import fmt_ms, interleaved, machine, md_table, ratio  # noqa: E402
from jax_step_profile import _kernels, _rules  # noqa: E402


def _dispatch(n: int, reps: int) -> list[list[str]]:
    xs = [jnp.asarray(0.9, jnp.float32) * 1 for _ in range(n)]
    box = {"donated": [x * 1 for x in xs]}
    many = jax.jit(lambda xs: [x * 0.9 for x in xs])
    many_donated = jax.jit(lambda xs: [x * 0.9 for x in xs], donate_argnums=0)
    one = jax.jit(lambda xs: xs[0] * 0.9)
    fan = jax.jit(lambda x: [x * 0.9 for _ in range(n)])

    def donated():
        box["donated"] = many_donated(box["donated"])
        jax.block_until_ready(box["donated"])

    cases = {
        f"{n} in, {n} out": lambda: jax.block_until_ready(many(xs)),
        f"{n} in, {n} out, donated": donated,
        f"{n} in, 1 out": lambda: jax.block_until_ready(one(xs)),
        f"1 in, {n} out": lambda: jax.block_until_ready(fan(xs[0])),
        "1 in, 1 out": lambda: jax.block_until_ready(one(xs[:1])),
    }
    t = interleaved(cases, reps)
    base = t["1 in, 1 out"].median
    return [[k, fmt_ms(v), f"{(v.median - base) / n * 1e6:.2f}"] for k, v in t.items()]


def _per_array(compiled: str, k: int) -> str:
    """Fusions + copies per array in a compiled program's entry computation."""
    copies = compiled[compiled.find("ENTRY"):].count(" copy(")
    return f"{_kernels(compiled) / k:g} + {copies / k:g}"


def _step_cases(name: str, k: int, size: int, reps: int) -> list[str]:
    rule, tx = _rules(name)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(size).astype(np.float32) for _ in range(k)]
    gs = [jnp.asarray(rng.standard_normal(size).astype(np.float32) * 1e-2) for _ in range(k)]

    def optax_step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    of = jax.jit(optax_step, donate_argnums=(0, 1))
    jf = jax.jit(ft.update, donate_argnums=(0, 1))
    ob = [[jnp.asarray(x) for x in xs]]
    ob.append(tx.init(ob[0]))
    jb = [None, [jnp.asarray(x) for x in xs]]
    jb[0] = ft.setup(rule, jb[1])
    # counted before the first donating call, while the buffers are still live
    kernels = (_per_array(jf.lower(jb[0], jb[1], gs).compile().as_text(), k),
               _per_array(of.lower(ob[0], ob[1], gs).compile().as_text(), k))

    def o():
        ob[0], ob[1] = of(ob[0], ob[1], gs)
        jax.block_until_ready(ob[0])

    def j():
        jb[0], jb[1] = jf(jb[0], jb[1], gs)
        jax.block_until_ready(jb[1])

    t = interleaved({"optax": o, "fluxtrain": j}, reps)
    return [name, f"{k} × {size:,}", fmt_ms(t["fluxtrain"]), fmt_ms(t["optax"]),
            f"{ratio(t['fluxtrain'], t['optax']):.2f}×", kernels[0], kernels[1]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--splits", default="100,1000", help="numbers of arrays")
    p.add_argument("--floats", type=int, default=10, help="floats per array in the small-array cases")
    a = p.parse_args(argv)
    splits = [int(s) for s in a.splits.split(",") if s]
    info = machine()
    print(" · ".join(f"{k}: {v}" for k, v in info.items() if k in ("cpu", "jax", "python")))
    print("\n### Dispatch of 0-d arrays (jitted call, N = 2,000)\n")
    print(md_table(["call", "ms", "µs per array over 1 in, 1 out"], _dispatch(2000, a.reps)))
    print("\n### `jax.jit(update)` donated against optax donated\n")
    rows = []
    for k in splits:
        for size in (a.floats, 10_000_000 // k):
            for name in ("Adam", "Momentum"):
                rows.append(_step_cases(name, k, size, a.reps))
    print(md_table(["rule", "arrays × floats", "fluxtrain ms", "optax ms", "ratio (paired)",
                    "fluxtrain kernels per array (fusions + copies)", "optax"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
