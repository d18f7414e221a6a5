"""Optimiser steps: fluxtrain beside torch.optim, optax, plain NumPy and a copy proxy.

Each rule runs on ``n`` float32 parameters split into ``k`` equal arrays. An Adam step is
pure memory traffic: it reads x, g, m, v and writes x, m, v (7 array passes), so the
copy proxy, ``passes / 2 × time(copy n floats)``, is roughly the fastest any
implementation can be on this machine.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from _common import Timing, fmt_ms, fmt_ratio, interleaved, md_table

# hyper-parameters shared by every implementation
ETA, B1, B2, EPS = 1e-3, 0.9, 0.999, 1e-8
AW_LAMBDA = 0.01                   # AdamW weight decay (torch AdamW default)
MOM_ETA, RHO = 0.01, 0.9           # Momentum
LION_ETA = 1e-4
CLIP, WD = 10.0, 5e-4              # OptimiserChain(ClipNorm(10), WeightDecay(5e-4), Adam())


@dataclass(frozen=True)
class RuleSpec:
    name: str
    passes: int   # array-sized memory passes of a fully fused step (reads + writes)
    note: str


RULES = [
    RuleSpec("Adam", 7, "r x,g,m,v; w x,m,v"),
    RuleSpec("AdamW", 7, "as Adam"),
    RuleSpec("Momentum", 5, "r x,g,v; w x,v"),
    RuleSpec("Lion", 5, "r x,g,m; w x,m"),
    RuleSpec("Chain(ClipNorm,WeightDecay,Adam)", 8, "Adam + one read of g for the norm"),
]


def _sizes(n: int, k: int) -> list[int]:
    base = n // k
    return [base + (1 if i < n - base * k else 0) for i in range(k)]


def _data(n: int, k: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal(s, dtype=np.float32) for s in _sizes(n, k)]
    gs = [rng.standard_normal(s, dtype=np.float32) * np.float32(1e-2) for s in _sizes(n, k)]
    return xs, gs


# --------------------------------------------------------------------------- copy proxy

def copy_time(n: int, reps: int) -> Timing:
    """Best of ``np.copyto`` and torch ``copy_`` on n float32 (2 passes: read + write)."""
    a = np.random.default_rng(1).standard_normal(n, dtype=np.float32)
    b = np.empty_like(a)
    cases: dict[str, Callable] = {"np.copyto": lambda: np.copyto(b, a)}
    try:
        import torch
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        cases["torch copy_"] = lambda: tb.copy_(ta)
    except ImportError:
        pass
    res = interleaved(cases, reps=max(reps, 5))
    return min(res.values(), key=lambda t: t.median)


def _scaled(t: Timing, f: float) -> Timing:
    return Timing(t.median * f, t.q1 * f, t.q3 * f, t.n)


# --------------------------------------------------------------------------- fluxtrain

def fluxtrain_rule(name: str, throw: bool = True):
    import fluxtrain.optimise as fo
    if name == "Adam":
        return fo.Adam(ETA, (B1, B2), EPS)
    if name == "AdamW":
        return fo.AdamW(ETA, (B1, B2), AW_LAMBDA, EPS)
    if name == "Momentum":
        return fo.Momentum(MOM_ETA, RHO)
    if name == "Lion":
        return fo.Lion(LION_ETA, (B1, B2))
    return fo.OptimiserChain(fo.ClipNorm(CLIP, throw=throw), fo.WeightDecay(WD), fo.Adam(ETA, (B1, B2), EPS))


def _fluxtrain_cases(rule_name: str, lib: str, xs, gs, to, generic: bool = True) -> dict[str, Callable]:
    """fluxtrain ``update_`` with fast paths on and off, plus jitted ``update`` for JAX."""
    try:
        import fluxtrain.optimise as fo
        from fluxtrain._backend import fast
        rule = fluxtrain_rule(rule_name)
    except (ImportError, AttributeError) as e:
        print(f"  [skip] fluxtrain {lib} {rule_name}: {e}", file=sys.stderr)
        return {}
    cases: dict[str, Callable] = {}

    def inplace(disabled: bool, rule=rule):
        model = [to(x) for x in xs]
        grad = [to(g) for g in gs]
        box = [fo.setup(rule, model), model]

        def step():
            if disabled:
                with fast.disabled():
                    box[0], box[1] = fo.update_(box[0], box[1], grad)
            else:
                box[0], box[1] = fo.update_(box[0], box[1], grad)
            if lib == "jax":
                _block(box[1])
        return step

    cases[f"fluxtrain {lib} update_"] = inplace(False)
    if lib == "jax" and rule_name.startswith("Chain"):
        # Flux's ClipNorm(throw=true) is checked for every array before anything is written
        # (one more read of the gradients, and a wait); optax's clipping never raises
        cases["fluxtrain jax update_ throw=false"] = inplace(False, fluxtrain_rule(rule_name, throw=False))
    if generic:
        cases[f"fluxtrain {lib} update_ generic"] = inplace(True)
    if lib == "jax":
        import jax
        for donate in (True,):  # the pure update jitted by the user, with donation
            model = [to(x) for x in xs]
            grad = [to(g) for g in gs]
            box = [fo.setup(rule, model), model]
            f = jax.jit(fo.update, donate_argnums=(0, 1) if donate else ())

            def step(box=box, f=f, grad=grad):
                box[0], box[1] = f(box[0], box[1], grad)
                _block(box[1])
            cases["fluxtrain jax jit(update) donated"] = step
    return cases


def _block(tree) -> None:
    import jax
    jax.block_until_ready(tree)


# --------------------------------------------------------------------------- torch peers

def _torch_cases(rule: str, xs, gs) -> dict[str, Callable]:
    import torch
    cases: dict[str, Callable] = {}

    def params():
        ps = [torch.nn.Parameter(torch.from_numpy(x.copy())) for x in xs]
        for p, g in zip(ps, gs):
            p.grad = torch.from_numpy(g.copy())
        return ps

    modes = {"for-loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}
    if rule in ("Adam", "AdamW", "Momentum"):
        for mname, kw in modes.items():
            ps = params()
            if rule == "Adam":
                opt = torch.optim.Adam(ps, lr=ETA, betas=(B1, B2), eps=EPS, **kw)
            elif rule == "AdamW":
                opt = torch.optim.AdamW(ps, lr=ETA, betas=(B1, B2), eps=EPS, weight_decay=AW_LAMBDA, **kw)
            else:
                opt = torch.optim.SGD(ps, lr=MOM_ETA, momentum=RHO, **kw)
            cases[f"torch.optim {mname}"] = opt.step
    elif rule == "Lion":
        # torch.optim has no Lion: a hand-written loop and a hand-written foreach version
        for mname in ("for-loop", "foreach"):
            ps = params()
            ms = [torch.zeros_like(p) for p in ps]
            gl = [p.grad for p in ps]

            @torch.no_grad()
            def step(ps=ps, ms=ms, gl=gl, mname=mname):
                if mname == "foreach":
                    c = torch._foreach_lerp(ms, gl, 1 - B1)
                    torch._foreach_sign_(c)
                    torch._foreach_add_(ps, c, alpha=-LION_ETA)
                    torch._foreach_lerp_(ms, gl, 1 - B2)
                else:
                    for p, m, g in zip(ps, ms, gl):
                        c = torch.lerp(m, g, 1 - B1).sign_()
                        p.add_(c, alpha=-LION_ETA)
                        m.lerp_(g, 1 - B2)
            cases[f"hand-written torch {mname}"] = step
    else:
        # per-array ClipNorm (Optimisers.jl clips each array, not the global norm), then
        # Adam with L2 weight decay added to the gradient (= WeightDecay before Adam)
        for mname, kw in modes.items():
            ps = params()
            opt = torch.optim.Adam(ps, lr=ETA, betas=(B1, B2), eps=EPS, weight_decay=WD, **kw)
            gl = [p.grad for p in ps]

            @torch.no_grad()
            def step(opt=opt, gl=gl, mname=mname):
                if mname == "for-loop":
                    for g in gl:
                        g.mul_(torch.clamp(CLIP / torch.linalg.vector_norm(g), max=1.0))
                else:
                    norms = torch._foreach_norm(gl)
                    scale = torch._foreach_div(torch._foreach_reciprocal(norms), 1 / CLIP)
                    torch._foreach_clamp_max_(scale, 1.0)
                    torch._foreach_mul_(gl, scale)
                opt.step()
            cases[f"torch.optim {mname}"] = step
    return cases


# --------------------------------------------------------------------------- optax peers

def _optax_cases(rule: str, xs, gs) -> dict[str, Callable]:
    import jax
    import jax.numpy as jnp
    import optax

    if rule == "Adam":
        tx = optax.adam(ETA, B1, B2, EPS)
    elif rule == "AdamW":
        tx = optax.adamw(ETA, B1, B2, EPS, weight_decay=AW_LAMBDA)
    elif rule == "Momentum":
        tx = optax.sgd(MOM_ETA, momentum=RHO)
    elif rule == "Lion":
        tx = optax.lion(LION_ETA, B1, B2)
    else:
        def clip_each(updates, params):
            def one(g):
                return g * jnp.minimum(CLIP / jnp.linalg.norm(g), 1.0).astype(g.dtype)
            return jax.tree.map(one, updates)
        tx = optax.chain(optax.stateless(clip_each), optax.add_decayed_weights(WD),
                         optax.adam(ETA, B1, B2, EPS))

    def step_fn(params, state, grads):
        upd, state = tx.update(grads, state, params)
        return optax.apply_updates(params, upd), state

    cases: dict[str, Callable] = {}
    for donate in (True, False):
        params = [jnp.asarray(x) for x in xs]
        grads = [jnp.asarray(g) for g in gs]
        box = [params, tx.init(params)]
        f = jax.jit(step_fn, donate_argnums=(0, 1) if donate else ())

        def step(box=box, f=f, grads=grads):
            box[0], box[1] = f(box[0], box[1], grads)
            _block(box[0])
        cases[f"optax jit{' donated' if donate else ''}"] = step
    return cases


# --------------------------------------------------------------------------- NumPy peer

def _numpy_case(rule: str, xs, gs) -> dict[str, Callable]:
    """The best plain in-place NumPy we know: ufuncs with ``out=`` and one scratch array."""
    f32 = np.float32
    xs = [x.copy() for x in xs]
    ms = [np.zeros_like(x) for x in xs]
    vs = [np.zeros_like(x) for x in xs]
    tmp = [np.empty_like(x) for x in xs]
    tmp2 = [np.empty_like(x) for x in xs] if rule.startswith("Chain") else tmp
    bt = [f32(1.0), f32(1.0)]
    b1, b2, eps = f32(B1), f32(B2), f32(EPS)

    def adam(x, g, m, v, t, eta, bc1, bc2):
        m *= b1
        np.multiply(g, f32(1) - b1, out=t)
        m += t
        v *= b2
        np.multiply(g, g, out=t)
        t *= f32(1) - b2
        v += t
        np.multiply(v, f32(1) / bc2, out=t)
        np.sqrt(t, out=t)
        t += eps
        np.divide(m, t, out=t)
        t *= eta / bc1
        x -= t

    def step():
        bt[0] *= b1
        bt[1] *= b2
        bc1, bc2 = f32(1) - bt[0], f32(1) - bt[1]
        for x, g, m, v, t, t2 in zip(xs, gs, ms, vs, tmp, tmp2):
            if rule == "Adam":
                adam(x, g, m, v, t, f32(ETA), bc1, bc2)
            elif rule == "AdamW":
                x *= f32(1 - ETA * AW_LAMBDA)
                adam(x, g, m, v, t, f32(ETA), bc1, bc2)
            elif rule == "Momentum":
                m *= f32(RHO)
                np.multiply(g, f32(MOM_ETA), out=t)
                m += t
                x -= m
            elif rule == "Lion":
                np.multiply(m, b1, out=t)
                np.multiply(g, f32(1) - b1, out=v)  # v is unused by Lion: a second scratch
                t += v
                np.sign(t, out=t)
                t *= f32(LION_ETA)
                x -= t
                m *= b2
                np.multiply(g, f32(1) - b2, out=v)
                m += v
            else:
                nrm = np.sqrt(np.dot(g, g))
                s = f32(min(CLIP / nrm, 1.0))
                np.multiply(g, s, out=t2)
                np.multiply(x, f32(WD), out=t)
                t2 += t
                adam(x, t2, m, v, t, f32(ETA), bc1, bc2)
    return {"plain NumPy in-place": step}


# --------------------------------------------------------------------------- driver

def run(n: int, splits: list[int], reps: int, rules: list[str] | None, libs: list[str],
        generic: str = "Adam") -> str:
    out = [f"## Optimiser steps: {n / 1e6:g} M float32 parameters\n",
           "Median milliseconds per step over interleaved repetitions (spread = IQR/median "
           "across all cases of a table). *copy proxy* = passes/2 × time of one n-float "
           "copy (best of `np.copyto` and torch `copy_`): the memory traffic a fully fused "
           "step cannot avoid. `generic` = fluxtrain with fast paths disabled "
           "(`fluxtrain._backend.fast.disabled()`).\n"]
    tcopy = copy_time(n, reps)
    out.append(f"One copy of {n / 1e6:g} M float32: {tcopy.median * 1e3:.2f} ms "
               f"({2 * 4 * n / tcopy.median / 1e9:.1f} GB/s counting read + write).\n")
    summary: list[list[str]] = []
    for spec in RULES:
        if rules and not any(spec.name.startswith(r) for r in rules):
            continue
        rows = []
        cols: list[str] = []
        allres: dict[int, dict[str, Timing]] = {}
        for k in splits:
            print(f"[optim] {spec.name} k={k}", file=sys.stderr, flush=True)
            xs, gs = _data(n, k)
            gen = generic == "all" or spec.name in generic.split(",")
            cases: dict[str, Callable] = {}
            if "torch" in libs:
                import torch
                cases.update(_torch_cases(spec.name, xs, gs))
                cases.update(_fluxtrain_cases(spec.name, "torch", xs, gs,
                                              lambda a: torch.nn.Parameter(torch.from_numpy(a.copy())), gen))
            if "jax" in libs:
                import jax.numpy as jnp
                cases.update(_optax_cases(spec.name, xs, gs))
                cases.update(_fluxtrain_cases(spec.name, "jax", xs, gs, jnp.asarray, gen))
            if "numpy" in libs:
                cases.update(_numpy_case(spec.name, xs, gs))
                cases.update(_fluxtrain_cases(spec.name, "numpy", xs, gs, lambda a: a.copy(), gen))
            res = interleaved(cases, reps=reps)
            res["copy proxy"] = _scaled(tcopy, spec.passes / 2)
            allres[k] = res
            for c in res:
                if c not in cols:
                    cols.append(c)
            del cases, xs, gs
        spreads = [t.spread for r in allres.values() for c, t in r.items() if c != "copy proxy"]
        med_spread = float(np.median(spreads)) if spreads else float("nan")
        for k in splits:
            rows.append([str(k)] + [fmt_ms(allres[k].get(c)) for c in cols])
        out.append(f"### {spec.name} ({spec.passes} passes: {spec.note})\n")
        out.append(md_table(["arrays"] + cols, rows))
        out.append(f"\nmedian spread (IQR/median) of this table: {med_spread:.0%}\n")
        for k in splits:
            summary.extend(_ratios(spec.name, k, allres[k]))
    out.append("### Ratios against the targets (fluxtrain time / peer time; < 1 is faster)\n")
    out.append(md_table(["rule", "arrays", "comparison", "ratio", "target"], summary))
    return "\n".join(out) + "\n"


def _ratios(rule: str, k: int, r: dict[str, Timing]) -> list[list[str]]:
    rows = []

    def add(a: str, b: str, target: str):
        if a in r and b in r:
            rows.append([rule, str(k), f"{a} / {b}", fmt_ratio(r[a], r[b]), target])

    if rule in ("Adam", "AdamW"):
        add("fluxtrain torch update_", "torch.optim fused",
            "≤ 1.0× (≤ 1.1× at 1000)" if rule == "Adam" else "")
    if rule != "Adam":
        peer = "hand-written torch foreach" if rule == "Lion" else "torch.optim foreach"
        add("fluxtrain torch update_", peer, "≤ 1.0×")
    add("fluxtrain jax jit(update) donated", "optax jit donated", "≤ 1.0×")
    add("fluxtrain jax update_", "optax jit donated", "≤ 1.0×")
    add("fluxtrain jax update_ throw=false", "optax jit donated", "")
    ref = "torch.optim fused" if "torch.optim fused" in r else "torch.optim foreach"
    add("fluxtrain numpy update_", ref, "≤ 2× (Adam)")
    add("fluxtrain numpy update_", "plain NumPy in-place", "")
    for lib in ("torch", "jax", "numpy"):
        add(f"fluxtrain {lib} update_", "copy proxy", "")
    return rows
