"""Adam with a learning rate scheduled per step, beside each backend's own way of doing it.

Flux's ways: ``Scheduler(Adam, eta=CosAnneal(...))`` (ParameterSchedulers; the counter is
in each array's state), or a plain ``Adam`` whose rate ``adjust_`` sets before every
step. Peers: torch's fused Adam with ``LambdaLR`` stepped each step; optax's ``adam`` with
a cosine schedule, jitted with donation; for NumPy, which has no peer, fluxtrain's plain
Adam step (what the schedule adds). Same parameters as ``optim.py`` (n float32 in k
arrays, gradients fixed), the schedule a cosine from 1e-3 to 1e-5 over 1,000 steps.
"""
from __future__ import annotations

import statistics
import sys
from typing import Callable

from _common import fmt_ms, fmt_ratio, interleaved, md_table
from optim import _block, _data

L0, L1, PERIOD = 1e-3, 1e-5, 1000


_SCHEDULE: list = []


def _eta(t: int) -> float:
    """The rate of step t (1-based): the schedule every fluxtrain and torch case follows
    (built once: it is called inside timed steps)."""
    if not _SCHEDULE:
        import fluxtrain as ft
        _SCHEDULE.append(ft.CosAnneal(l0=L0, l1=L1, period=PERIOD))
    return float(_SCHEDULE[0](t))


def _fluxtrain_cases(lib: str, xs, gs, to) -> dict[str, Callable]:
    import fluxtrain as ft
    cases: dict[str, Callable] = {}
    sched = ft.Scheduler(ft.Adam, eta=ft.CosAnneal(l0=L0, l1=L1, period=PERIOD))

    def run(rule, adjust: bool):
        model = [to(x) for x in xs]
        grad = [to(g) for g in gs]
        box = [ft.setup(rule, model), model, 0]

        def step():
            box[2] += 1
            if adjust:
                ft.adjust_(box[0], _eta(box[2]))
            box[0], box[1] = ft.update_(box[0], box[1], grad)
            if lib == "jax":
                _block(box[1])
        return step
    cases[f"fluxtrain {lib} Scheduler(Adam)"] = run(sched, False)
    cases[f"fluxtrain {lib} Adam + adjust_"] = run(ft.Adam(L0), True)
    if lib == "numpy":
        cases["fluxtrain numpy Adam (no schedule)"] = run(ft.Adam(L0), False)
    return cases


def _torch_peer(xs, gs) -> dict[str, Callable]:
    import torch
    ps = [torch.nn.Parameter(torch.from_numpy(x.copy())) for x in xs]
    for p, g in zip(ps, gs):
        p.grad = torch.from_numpy(g.copy())
    opt = torch.optim.Adam(ps, lr=L0, fused=True)
    lr = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _eta(s + 1) / L0)

    def step():
        opt.step()
        lr.step()
    return {"torch.optim.Adam(fused) + LambdaLR": step}


def _optax_peer(xs, gs) -> dict[str, Callable]:
    import jax
    import jax.numpy as jnp
    import optax
    tx = optax.adam(optax.cosine_decay_schedule(L0, PERIOD, alpha=L1 / L0))

    def f(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s
    jf = jax.jit(f, donate_argnums=(0, 1))
    p = [jnp.asarray(x) for x in xs]
    grad = [jnp.asarray(g) for g in gs]
    box = [p, tx.init(p)]

    def step():
        box[0], box[1] = jf(box[0], box[1], grad)
        _block(box[0])
    return {"optax.adam(cosine) jit+donate": step}


def run(n: int, splits: list[int], reps: int, libs: list[str]) -> str:
    out = ["## Adam with a per-step learning-rate schedule\n",
           f"{n / 1e6:g} M float32 parameters in k arrays; ms per step (median, "
           "interleaved); ratios against the backend's peer in the same run (NumPy: "
           "against fluxtrain's plain Adam, the cost of the schedule).\n"]
    for lib in libs:
        rows, spreads = [], []
        for k in splits:
            xs, gs = _data(n, k)
            try:
                if lib == "torch":
                    import torch
                    cases, peer = _torch_peer(xs, gs), "torch.optim.Adam(fused) + LambdaLR"
                    to = torch.from_numpy
                elif lib == "jax":
                    import jax.numpy as jnp
                    cases, peer = _optax_peer(xs, gs), "optax.adam(cosine) jit+donate"
                    to = jnp.asarray
                else:
                    cases, peer, to = {}, "fluxtrain numpy Adam (no schedule)", lambda a: a.copy()
                cases.update(_fluxtrain_cases(lib, xs, gs, to))
            except ImportError as e:
                print(f"  [skip] {lib}: {e}", file=sys.stderr)
                break
            print(f"  schedule {lib} k={k}", file=sys.stderr)
            res = interleaved(cases, reps=reps)
            spreads += [t.spread for t in res.values()]
            for name, t in res.items():
                rows.append([str(k), name, fmt_ms(t), "" if name == peer else fmt_ratio(t, res[peer])])
        if rows:
            out.append(f"### {lib}\n")
            out.append(md_table(["arrays", "case", "ms", "vs peer"], rows))
            out.append(f"\nmedian spread (IQR/median) of this table: {statistics.median(spreads):.0%}\n")
    return "\n".join(out)
