"""A GPU training step with fluxtrain's ``update_`` beside the same step with torch's fused
Adam: MLP forward, ``F.cross_entropy`` with integer labels, backward, optimiser step,
pipelined (one wait at the end of 200 steps), so that anything in ``update_`` that waits for
the device shows as lost overlap.

    python bench/gpu_train_step.py

Needs a CUDA build of torch; prints µs per step and the ratio, 7 interleaved repetitions
per size. Used for docs/performance.md (the fused Adam path's βᵗ host values).
"""
from __future__ import annotations

import copy
import statistics
import sys

import torch
import torch.nn.functional as F

import fluxtrain as ft

from _common import cuda_time, torch_mlp

SIZES = ((256, 128, 10), (1024, 1024, 100), (4096, 1024, 10), (1024, 4096, 1000))  # width, batch, classes


def main(reps: int = 7) -> int:
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 0
    dev = torch.device("cuda")
    torch.manual_seed(0)
    for width, batch, classes in SIZES:
        base = torch_mlp(128, width, classes).to(dev)
        x = torch.randn(batch, 128, device=dev)
        labels = torch.randint(0, classes, (batch,), device=dev)
        m_ft, m_t = copy.deepcopy(base), copy.deepcopy(base)
        state = ft.setup(ft.Adam(1e-3), m_ft)
        opt = torch.optim.Adam(m_t.parameters(), lr=1e-3, fused=True)

        def step_ft():
            m_ft.zero_grad(set_to_none=True)
            F.cross_entropy(m_ft(x), labels).backward()
            ft.update_(state, m_ft)

        def step_torch():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(m_t(x), labels).backward()
            opt.step()

        ratios = []
        for rep in range(reps):
            order = (("fluxtrain", step_ft), ("torch", step_torch))
            res = {name: cuda_time(fn, 200, warmup=3) * 1e6 for name, fn in (order if rep % 2 else order[::-1])}
            ratios.append(res["fluxtrain"] / res["torch"])
            print(f"MLP 128→{width}→{width}→{classes}, batch {batch}: fluxtrain update_ {res['fluxtrain']:.0f} µs, "
                  f"torch fused Adam {res['torch']:.0f} µs", flush=True)
        print(f"  median ratio {statistics.median(ratios):.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
