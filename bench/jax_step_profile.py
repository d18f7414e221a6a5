"""Where a JAX ``update_`` step spends its time, beside optax (run on any JAX device).

    python bench/jax_step_profile.py [total floats, default 10_000_000]

For Momentum on 1 array and Adam on 100 and 1,000 arrays, prints per-step medians of
fluxtrain ``update_``, ``jax.jit(update)`` with donation and optax jitted with donation,
three ways: blocked (wait for every step), pipelined (one wait after 40 steps) and
dispatch (time until the call returns). Then the number of kernels (fusions) in each
compiled program, and a cProfile of ``update_`` in which the compiled call appears as
``compiled_call``, so Python around it and the call itself show apart. Used for the GPU
findings in docs/performance.md.
"""
from __future__ import annotations

import cProfile
import io
import pstats
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fluxtrain as ft
from fluxtrain._backend import fast_jax


def _median_ms(f, n: int = 40, warm: int = 3) -> float:
    for _ in range(warm):
        f()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def _kernels(compiled_text: str) -> int:
    entry = compiled_text[compiled_text.find("ENTRY"):]
    return entry.count(" fusion(")


def _rules(name: str):
    if name == "Momentum":
        return ft.Momentum(0.01, 0.9), optax.sgd(0.01, momentum=0.9)
    return ft.Adam(1e-3), optax.adam(1e-3)


def _spy_on_plans() -> None:
    """Wrap each compiled step so that cProfile shows it as ``compiled_call`` and its
    kernels are counted once."""
    for plan in list(fast_jax._PLANS.values()):
        if getattr(plan.fn, "_spied", False):
            continue

        def compiled_call(*a, f=plan.fn, plan=plan):
            if not getattr(plan, "_counted", False):
                plan._counted = True
                print("fluxtrain: kernels in the compiled step", _kernels(f.lower(*a).compile().as_text()))
            return f(*a)
        compiled_call._spied = True
        plan.fn = compiled_call


def main(n: int) -> None:
    print("jax", jax.__version__, jax.devices())
    for name, k in (("Momentum", 1), ("Adam", 100), ("Adam", 1000)):
        rng = np.random.default_rng(0)
        xs = [rng.standard_normal(n // k).astype(np.float32) for _ in range(k)]
        gs = [jnp.asarray(rng.standard_normal(n // k).astype(np.float32) * 1e-2) for _ in range(k)]
        rule, tx = _rules(name)

        def optax_step(p, s, g, tx=tx):
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s
        of = jax.jit(optax_step, donate_argnums=(0, 1))
        ob = [[jnp.asarray(x) for x in xs]]
        ob.append(tx.init(ob[0]))
        fb = [None, [jnp.asarray(x) for x in xs]]
        fb[0] = ft.setup(rule, fb[1])
        jb = [None, [jnp.asarray(x) for x in xs]]
        jb[0] = ft.setup(rule, jb[1])
        jf = jax.jit(ft.update, donate_argnums=(0, 1))

        def o():
            ob[0], ob[1] = of(ob[0], ob[1], gs)

        def f():
            fb[0], fb[1] = ft.update_(fb[0], fb[1], gs)

        def j():
            jb[0], jb[1] = jf(jb[0], jb[1], gs)
        cases = {"optax donated": (o, lambda: ob[0]), "fluxtrain update_": (f, lambda: fb[1]),
                 "fluxtrain jit(update) donated": (j, lambda: jb[1])}
        for _ in range(2):
            res = {}
            for label, (step, last) in cases.items():
                blocked = _median_ms(lambda: (step(), jax.block_until_ready(last())))
                dispatch = _median_ms(step, n=20)
                jax.block_until_ready(last())
                t = time.perf_counter()
                for _ in range(40):
                    step()
                jax.block_until_ready(last())
                res[label] = (blocked, (time.perf_counter() - t) / 40 * 1e3, dispatch)
            print(f"{name}, {k} arrays: " + "; ".join(
                f"{lab} blocked {a:.3f} pipelined {b:.3f} dispatch {c:.3f} ms" for lab, (a, b, c) in res.items()))
        print("optax: kernels in the compiled step", _kernels(of.lower(ob[0], ob[1], gs).compile().as_text()))
        _spy_on_plans()
        f()
        jax.block_until_ready(fb[1])
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(50):
            f()
            jax.block_until_ready(fb[1])
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(15)
        print("\n".join(out.getvalue().splitlines()[:30]), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000)
