"""gradient / train / checkpoints with CUDA tensors (skipped without a CUDA device)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.util import HAVE_TORCH

if HAVE_TORCH:
    import torch

pytestmark = pytest.mark.skipif(not (HAVE_TORCH and torch.cuda.is_available()), reason="needs a CUDA device")


def _net(device, dtype=torch.float32 if HAVE_TORCH else None):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    return net.to(device=device, dtype=dtype)


def test_gradient_on_cuda_matches_cpu():
    from fluxtrain import gradient
    x = torch.randn(5, 8, dtype=torch.float64)
    cpu, gpu = _net("cpu", torch.float64), _net("cuda", torch.float64)
    g_cpu, gx_cpu = gradient(lambda m, x: (m(x) ** 2).sum(), cpu, x)
    g_gpu, gx_gpu = gradient(lambda m, x: (m(x) ** 2).sum(), gpu, x.cuda())
    assert g_gpu["0"]["weight"].device.type == "cuda" and gx_gpu.device.type == "cuda"
    for k in ("0", "2"):
        for p in ("weight", "bias"):
            torch.testing.assert_close(g_gpu[k][p].cpu(), g_cpu[k][p], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx_gpu.cpu(), gx_cpu, rtol=1e-12, atol=1e-12)
    assert all(p.grad is None for p in gpu.parameters())


@pytest.mark.parametrize("dtype,rtol", [("float32", 1e-6), ("float64", 1e-12)])
def test_train_doctest_on_cuda(dtype, rtol):
    from fluxtrain import Momentum, setup, train
    dt = getattr(torch, dtype)
    lin = torch.nn.Linear(2, 1).to(device="cuda", dtype=dt)
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.bias.zero_()
    x1 = torch.tensor([0.2, -0.3], dtype=dt, device="cuda")
    y1 = torch.tensor([0.4], dtype=dt, device="cuda")
    state = setup(Momentum(0.1), lin)
    state, lin = train(lambda m, x, y: (torch.nn.functional.leaky_relu(m(x)) - y).abs().sum() * 100,
                       lin, [(x1, y1), (x1, y1)], state, progress=False)
    assert lin.bias.device.type == "cuda"
    np.testing.assert_allclose(lin.bias.detach().cpu().numpy(), [10.19], rtol=rtol)
    np.testing.assert_allclose(lin.weight.detach().cpu().numpy(), [[3.038, -2.057]], rtol=rtol)
    np.testing.assert_allclose(state["weight"].state.cpu().numpy(), [[-2.018, 3.027]], rtol=rtol)


def _epochs(net, state, loader, n):
    from fluxtrain import train
    for _ in range(n):
        state, net = train(lambda m, x, y: ((m(x) - y) ** 2).mean(), net, loader, state, progress=False)
    return net, state


def test_checkpoint_resume_on_cuda_is_bit_for_bit(tmp_path):
    from fluxtrain import Adam, DataLoader, setup
    from fluxtrain.optimise import flatten_state
    from fluxtrain.train import load_checkpoint, save_checkpoint
    g = torch.Generator(device="cpu").manual_seed(1)
    X = torch.randn(64, 8, generator=g).cuda()
    Y = torch.randn(64, 2, generator=g).cuda()

    full = _net("cuda")
    full, s_full = _epochs(full, setup(Adam(0.01), full), DataLoader((X, Y), batchsize=16, shuffle=True, rng=3), 4)

    half = _net("cuda")
    rng = np.random.default_rng(3)
    half, s_half = _epochs(half, setup(Adam(0.01), half), DataLoader((X, Y), batchsize=16, shuffle=True, rng=rng), 2)
    cuda_gen = torch.Generator(device="cuda").manual_seed(5)
    save_checkpoint(tmp_path / "c.npz", half, s_half, epoch=2, rng={"shuffle": rng, "cuda": cuda_gen})

    fresh = _net("cuda")
    ck = load_checkpoint(tmp_path / "c.npz", fresh, setup(Adam(0.01), fresh))
    assert next(ck.model.parameters()).device.type == "cuda"
    leaf_state = ck.state["0"]["weight"].state
    arrays = [a for a in (leaf_state if isinstance(leaf_state, tuple) else (leaf_state,)) if hasattr(a, "device")]
    assert all(a.device.type == "cuda" for a in arrays), [a.device for a in arrays]
    assert ck.rng["cuda"].device.type == "cuda"
    resumed, s_res = _epochs(ck.model, ck.state, DataLoader((X, Y), batchsize=16, shuffle=True, rng=ck.rng["shuffle"]), 2)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    fa, fb = flatten_state(s_full), flatten_state(s_res)
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]))


@pytest.mark.parametrize("rule", ["Adam", "AdamW", "Momentum", "Chain"])
def test_module_route_on_cuda_equals_walker(rule):
    """update_ of a CUDA module through the torch route (fast_torch_tree) gives the walker's
    results bit for bit; a module with one parameter left on the CPU goes to the walker."""
    import contextlib
    import fluxtrain as ft
    from fluxtrain._backend import fast_torch_tree as FT
    from tests.util import without_fast
    make = {"Adam": lambda: ft.Adam(0.01), "AdamW": lambda: ft.AdamW(0.01), "Momentum": lambda: ft.Momentum(0.01),
            "Chain": lambda: ft.OptimiserChain(ft.ClipNorm(0.5), ft.WeightDecay(0.01), ft.Adam(0.01))}[rule]
    key = ("update_module", "torch")

    def run(walker, split=False):
        net = _net("cuda")
        if split:
            net[2].bias.data = net[2].bias.data.cpu()
        state = ft.setup(make(), net)
        calls = []
        real = FT.apply_group
        FT.apply_group = lambda *a: calls.append(1) or real(*a)
        try:
            with without_fast(key) if walker else contextlib.nullcontext():
                for i in range(4):
                    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(i)).cuda()
                    g = ft.gradient(lambda m: (m(x) ** 2).sum() if not split else (m[0](x) ** 2).sum(), net)[0]
                    if split:
                        g["2"] = None
                    state, net = ft.update_(state, net, g)
        finally:
            FT.apply_group = real
        return net, len(calls)

    (a, na), (b, nb) = run(False), run(True)
    assert na == 4 and nb == 0
    for p, q in zip(a.parameters(), b.parameters()):
        assert p.device.type == "cuda" and torch.equal(p, q)
    c, nc = run(False, split=True)  # None for the CPU part: every active array on the GPU
    assert nc == 4
    net = _net("cuda")
    net[2].bias.data = net[2].bias.data.cpu()
    state = ft.setup(make(), net)
    x = torch.randn(5, 8).cuda()
    g = ft.gradient(lambda m: (m[0](x) ** 2).sum(), net)[0]
    g["2"]["bias"] = torch.zeros(2)
    g["2"]["weight"] = torch.zeros(2, 16, device="cuda")
    calls = []
    real = FT.apply_group
    FT.apply_group = lambda *a: calls.append(1) or real(*a)
    try:
        ft.update_(state, net, g)  # two devices: the walker's groups
    finally:
        FT.apply_group = real
    assert not calls


def test_scheduler_on_cuda_equals_the_generic_path():
    """A scheduled Adam on CUDA tensors: the Scheduler kernel (counters remembered, made
    as views of one tensor, advanced in place by update_) gives the generic path's numbers
    and counters, on the GPU; a counter changed in place is read again."""
    import fluxtrain as ft
    from fluxtrain._backend import fast

    def run():
        model = [torch.randn(s, generator=torch.Generator().manual_seed(i)).cuda() for i, s in enumerate((300, 7, 50))]
        state = ft.setup(ft.Scheduler(ft.Adam, eta=ft.CosAnneal(l0=1e-2, l1=1e-4, period=4)), model)
        for i in range(6):
            g = [torch.randn(x.shape, generator=torch.Generator().manual_seed(10 + i)).cuda() for x in model]
            if i == 4:
                state[1].state.t.fill_(2)
            state, model = ft.update_(state, model, g)
        return state, model
    state, model = run()
    with fast.disabled():
        ref_s, ref_m = run()
    for leaf, ref, x, y in zip(state, ref_s, model, ref_m):
        assert leaf.state.t.device.type == "cuda" and x.device.type == "cuda"
        assert int(leaf.state.t) == int(ref.state.t)
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)
    assert [int(leaf.state.t) for leaf in state] == [7, 4, 7]
