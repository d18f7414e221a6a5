"""Check the torch fast paths on a CUDA device against the generic path (and time them).

    python bench/gpu_check.py

Prints one line per check (the Adam family also: every beta^t equal to the generic path's and
to the host value the fused path keeps for it); exits non-zero on a mismatch. Needs a CUDA
build of torch.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

import fluxtrain as ft
from fluxtrain._backend import fast, fast_torch

from _common import cuda_time


def main() -> int:
    print("torch", torch.__version__, "cuda", torch.cuda.is_available())
    if not torch.cuda.is_available():
        return 0
    dev = torch.device("cuda")
    print(torch.cuda.get_device_name(0))
    rules = {
        "Adam": ft.Adam(0.01), "AdamW": ft.AdamW(0.01, (0.9, 0.999), 0.1),
        "Chain(ClipNorm,WeightDecay,Adam)": ft.OptimiserChain(ft.ClipNorm(1.0), ft.WeightDecay(0.01), ft.Adam(0.01)),
        "Chain(ClipNorm(10),...) some clipped": ft.OptimiserChain(ft.ClipNorm(10.0), ft.WeightDecay(0.01), ft.Adam(0.01)),
        "Momentum": ft.Momentum(0.05), "Lion": ft.Lion(0.01),
    }
    bad = 0
    rng = np.random.default_rng(0)
    for dtype in (torch.float32, torch.float64):
        for name, rule in rules.items():
            shapes = [(64, 33), (1000,), (7,)]
            m0 = [torch.tensor(rng.standard_normal(s), dtype=dtype, device=dev) for s in shapes]
            grads = [[torch.tensor(rng.standard_normal(s), dtype=dtype, device=dev) for s in shapes] for _ in range(8)]
            a = [t.clone() for t in m0]
            b = [t.clone() for t in m0]
            sa, sb = ft.setup(rule, a), ft.setup(rule, b)
            for g in grads:
                ft.update_(sa, a, g)
                with fast.disabled():
                    ft.update_(sb, b, g)
            if "Adam" in name:  # beta^t: the generic path's bit for bit, and the host values kept for it
                for la, lb in zip(sa, sb):
                    bta = la.state[-1][2] if isinstance(la.rule, ft.OptimiserChain) else la.state[2]
                    btb = lb.state[-1][2] if isinstance(lb.rule, ft.OptimiserChain) else lb.state[2]
                    for ta, tb in zip(bta, btb):
                        kept = fast_torch._BT_HOST.get(id(ta))
                        if ta.item() != tb.item() or kept is None or kept[3] != ta.item():
                            bad += 1
                            print(f"BAD {name} {dtype} beta^t {ta.item()!r} generic {tb.item()!r} kept {kept and kept[3]!r}")
            rel = max(float(((x - y).abs() / y.abs().clamp_min(1e-30)).max()) for x, y in zip(a, b))
            tol = 2e-5 if dtype == torch.float32 else 1e-12
            ok = rel <= tol or all(torch.allclose(x, y, rtol=tol, atol=tol * float(y.abs().max())) for x, y in zip(a, b))
            bad += not ok
            print(f"{'ok ' if ok else 'BAD'} {name:34s} {str(dtype):14s} max rel diff {rel:.2e}")
    # losses through the hooks
    x = torch.randn(4096, 1000, device=dev, requires_grad=True)
    y = torch.nn.functional.one_hot(torch.randint(0, 1000, (4096,), device=dev), 1000).float()
    v = ft.logitcrossentropy(x, y)
    with fast.disabled():
        r = ft.logitcrossentropy(x.detach(), y)
    ok = abs(float(v) - float(r)) <= 1e-5 * abs(float(r))
    bad += not ok
    print(f"{'ok ' if ok else 'BAD'} logitcrossentropy 4096x1000 {float(v):.6f} vs {float(r):.6f}")
    # a bool one-hot target (onehotbatch's) reads labels with torch ops on CUDA; rows with
    # no True or two go to the generic formula: value and gradient against the generic path
    yb = y.bool()
    yb[1] = False
    yb[2, :2] = True
    for name, target in (("bool one-hot", yb), ("float one-hot", y)):
        xa = x.detach().clone().requires_grad_(True)
        xb = x.detach().clone().requires_grad_(True)
        va = ft.logitcrossentropy(xa, target)
        va.backward()
        with fast.disabled():
            vb = ft.logitcrossentropy(xb, target)
        vb.backward()
        err = float((xa.grad - xb.grad).abs().max() / xb.grad.abs().max())
        ok = abs(float(va) - float(vb)) <= 1e-5 * abs(float(vb)) and err <= 1e-5
        bad += not ok
        print(f"{'ok ' if ok else 'BAD'} logitcrossentropy {name} value {float(va):.6f} vs {float(vb):.6f}, grad rel {err:.1e}")
    # timing: 10 M parameters in 100 arrays, Adam
    ps = [torch.nn.Parameter(torch.randn(100_000, device=dev)) for _ in range(100)]
    gs = [torch.randn_like(p) for p in ps]
    for p, g in zip(ps, gs):
        p.grad = g
    opt = torch.optim.Adam(ps, fused=True)
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    st = ft.setup(ft.Adam(), qs)

    def tm(f):
        return cuda_time(f, 20) * 1e3
    for _ in range(2):
        print(f"Adam 10M/100 arrays: torch fused {tm(opt.step):.3f} ms, fluxtrain update_ {tm(lambda: ft.update_(st, qs, gs)):.3f} ms")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
