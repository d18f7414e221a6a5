"""What the torch loss kernels' NaN check (``out.item()``, a device synchronisation) costs
in a GPU training step that otherwise never waits: an MLP step (forward, loss, backward,
torch's fused Adam) with ``F.cross_entropy``, with fluxtrain's ``logitcrossentropy`` (kernel
and check) and with its generic formula (no check), pipelined (one wait at the end).

    python bench/gpu_loss_sync.py

Needs a CUDA build of torch; prints microseconds per step, two runs per size. Used for
docs/performance.md.
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

import fluxtrain as ft
from fluxtrain._backend import fast

from _common import cuda_time, torch_mlp


def _generic(loss):
    def run(out):
        with fast.disabled():
            return loss(out)
    return run


def _us_per_step(model, opt, x, loss, steps: int = 200) -> float:
    def step():
        opt.zero_grad(set_to_none=True)
        loss(model(x)).backward()
        opt.step()
    return cuda_time(step, steps, warmup=5) * 1e6


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 0
    dev = torch.device("cuda")
    torch.manual_seed(0)
    for width, batch, classes in ((256, 128, 10), (4096, 1024, 10), (1024, 4096, 1000)):
        model = torch_mlp(128, width, classes).to(dev)
        opt = torch.optim.Adam(model.parameters(), fused=True)
        x = torch.randn(batch, 128, device=dev)
        labels = torch.randint(0, classes, (batch,), device=dev)
        onehot = F.one_hot(labels, classes).float()
        onehot_bool = onehot.bool()
        losses = {
            "F.cross_entropy int": lambda o: F.cross_entropy(o, labels),
            "F.cross_entropy one-hot": lambda o: F.cross_entropy(o, onehot),
            "fluxtrain one-hot": lambda o: ft.logitcrossentropy(o, onehot),
            "fluxtrain bool": lambda o: ft.logitcrossentropy(o, onehot_bool),
            "fluxtrain one-hot generic": _generic(lambda o: ft.logitcrossentropy(o, onehot)),
            "fluxtrain bool generic": _generic(lambda o: ft.logitcrossentropy(o, onehot_bool)),
        }
        for _ in range(2):
            res = {name: _us_per_step(model, opt, x, loss) for name, loss in losses.items()}
            print(f"MLP 128→{width}→{width}→{classes}, batch {batch}: "
                  + ", ".join(f"{k} {v:.0f} µs" for k, v in res.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
