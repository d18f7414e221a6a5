"""Checkpoints: model + optimiser state + schedule position + RNG, atomic, bit-for-bit resume."""
from __future__ import annotations

import os

import numpy as np
import pytest

from fluxtrain import Adam, ArgumentError, CosAnneal, DataLoader, Scheduler, setup, train
from fluxtrain.train import Checkpoint, load_checkpoint, save_checkpoint
from tests.util import HAVE_JAX, HAVE_TORCH

if HAVE_TORCH:
    import torch
if HAVE_JAX:
    import jax
    import jax.numpy as jnp

LIBS = [pytest.param("torch", marks=pytest.mark.skipif(not HAVE_TORCH, reason="no torch")),
        pytest.param("jax", marks=pytest.mark.skipif(not HAVE_JAX, reason="no jax"))]


def _problem(lib):
    """A two-layer regression net with a shuffled DataLoader: model, loss, data arrays."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 3)).astype(np.float32)
    Y = (X @ np.array([[1.0], [-2.0], [0.5]], dtype=np.float32) + 0.1).astype(np.float32)
    w1 = (rng.standard_normal((5, 3)) * 0.5).astype(np.float32)
    w2 = (rng.standard_normal((1, 5)) * 0.5).astype(np.float32)
    if lib == "torch":
        net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
        with torch.no_grad():
            net[0].weight.copy_(torch.from_numpy(w1))
            net[0].bias.zero_()
            net[2].weight.copy_(torch.from_numpy(w2))
            net[2].bias.zero_()

        def loss(m, x, y):
            return ((m(x) - y) ** 2).mean()
        return net, loss, torch.from_numpy(X), torch.from_numpy(Y)
    model = {"l1": {"w": jnp.asarray(w1), "b": jnp.zeros(5, jnp.float32)},
             "l2": {"w": jnp.asarray(w2), "b": jnp.zeros(1, jnp.float32)}}

    @jax.jit
    def loss(m, x, y):
        h = jnp.tanh(x @ m["l1"]["w"].T + m["l1"]["b"])
        return jnp.mean((h @ m["l2"]["w"].T + m["l2"]["b"] - y) ** 2)
    return model, loss, jnp.asarray(X), jnp.asarray(Y)


def _arrays(model):
    from fluxtrain.train.gradient import tree_leaves_with_path
    from fluxtrain._backend import to_numpy
    return {k: to_numpy(v).copy() for k, v in tree_leaves_with_path(model) if hasattr(v, "shape")}


RULES = {"Adam": lambda: Adam(0.01),
         # the step counters travel in the state (on torch, views of one tensor advanced in
         # place; on JAX, host ints kept by update_'s store)
         "Scheduler": lambda: Scheduler(Adam, eta=CosAnneal(l0=0.01, l1=0.001, period=7))}


def _run(lib, epochs, model=None, state=None, rng=None, start=0, rule="Adam"):
    m0, loss, X, Y = _problem(lib)
    model = m0 if model is None else model
    state = setup(RULES[rule](), model) if state is None else state
    rng = np.random.default_rng(7) if rng is None else rng
    loader = DataLoader((X, Y), batchsize=8, shuffle=True, rng=rng)
    for epoch in range(start + 1, start + epochs + 1):
        state, model = train(loss, model, loader, state, progress=False)
    return model, state, rng


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("lib", LIBS)
def test_resume_is_bit_for_bit(lib, rule, tmp_path):
    full_model, full_state, _ = _run(lib, 4, rule=rule)
    model, state, rng = _run(lib, 2, rule=rule)
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, model, state, epoch=2, step=10, schedule_position=2, rng=rng, extra={"note": "x"})
    # a fresh process would build new objects: do the same
    fresh, _, _, _ = _problem(lib)
    ck = load_checkpoint(path, fresh, setup(RULES[rule](), fresh))
    assert isinstance(ck, Checkpoint)
    assert (ck.epoch, ck.step, ck.schedule_position, ck.extra) == (2, 10, 2, {"note": "x"})
    model2, state2, _ = _run(lib, 2, model=ck.model, state=ck.state, rng=ck.rng, start=2, rule=rule)
    a, b = _arrays(full_model), _arrays(model2)
    assert a.keys() == b.keys() and a
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])  # exact
    from fluxtrain.optimise import flatten_state
    fa, fb = flatten_state(full_state), flatten_state(state2)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]))


@pytest.mark.skipif(not HAVE_TORCH, reason="no torch")
def test_torch_module_loaded_in_place_with_buffers(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    net.train()
    net(torch.randn(8, 2))  # moves the BatchNorm running statistics
    path = tmp_path / "c.npz"
    saved_rng = torch.get_rng_state()
    save_checkpoint(path, net, None, rng=torch.default_generator)
    other = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    weight = other[0].weight
    ck = load_checkpoint(path, other)
    assert ck.model is other and other[0].weight is weight  # same Parameter objects
    for (k, a), (_, b) in zip(net.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k
    # the global RNG's state as it was at saving time (building `other` has moved it since)
    assert torch.equal(ck.rng.get_state(), saved_rng)
    torch.set_rng_state(saved_rng)
    assert torch.equal(torch.rand(3, generator=ck.rng), torch.rand(3))


def test_rng_kinds_roundtrip(tmp_path):
    gen = np.random.default_rng(3)
    gen.random(5)
    rs = np.random.RandomState(4)
    rs.rand(3)
    rngs = {"gen": gen, "rs": rs}
    if HAVE_TORCH:
        tg = torch.Generator().manual_seed(5)
        torch.rand(2, generator=tg)
        rngs["torch"] = tg
    if HAVE_JAX:
        rngs["key"] = jax.random.key(6)
        rngs["raw"] = jax.random.PRNGKey(7)
    path = tmp_path / "r.npz"
    save_checkpoint(path, {"w": np.ones(2)}, rng=rngs)
    ck = load_checkpoint(path, {"w": np.zeros(2)})
    assert ck.rng["gen"].random() == gen.random()
    assert ck.rng["rs"].rand() == rs.rand()
    if HAVE_TORCH:
        assert torch.equal(torch.rand(3, generator=ck.rng["torch"]), torch.rand(3, generator=tg))
    if HAVE_JAX:
        assert float(jax.random.uniform(ck.rng["key"])) == float(jax.random.uniform(rngs["key"]))
        np.testing.assert_array_equal(np.asarray(ck.rng["raw"]), np.asarray(rngs["raw"]))
    # restored into the generator given as rng_like
    like = np.random.default_rng(99)
    ck = load_checkpoint(path, {"w": np.zeros(2)}, rng_like={"gen": like})
    assert ck.rng["gen"] is like


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"w": np.ones(3)}, epoch=1)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"w": np.zeros(3)}, epoch=2)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]  # no temporary file left behind


def test_load_errors(tmp_path):
    path = tmp_path / "c.npz"
    with pytest.raises(FileNotFoundError):
        load_checkpoint(path, {"w": np.zeros(2)})
    save_checkpoint(path, {"w": np.ones(2)})
    with pytest.raises(ArgumentError, match="shape"):
        load_checkpoint(path, {"w": np.zeros(3)})
    with pytest.raises(ArgumentError, match="no value for model entry 'v'"):
        load_checkpoint(path, {"w": np.zeros(2), "v": np.zeros(1)})
    with pytest.raises(ArgumentError, match="float32"):
        load_checkpoint(path, {"w": np.zeros(2, np.float32)})
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ArgumentError, match="not a readable checkpoint"):
        load_checkpoint(bad, {"w": np.zeros(2)})
    np.savez(tmp_path / "plain.npz", w=np.ones(2))
    with pytest.raises(ArgumentError, match="not a fluxtrain checkpoint"):
        load_checkpoint(tmp_path / "plain.npz", {"w": np.zeros(2)})
    with pytest.raises(ArgumentError, match="JSON"):
        save_checkpoint(path, {"w": np.ones(2)}, extra={"f": object()})
    with pytest.raises(ArgumentError, match="rng must be"):
        save_checkpoint(path, {"w": np.ones(2)}, rng="seed")
    s = setup(Adam(), {"w": np.ones(2)})
    save_checkpoint(path, {"w": np.ones(2)}, s)
    with pytest.raises(ArgumentError, match="state_like"):
        load_checkpoint(path, {"w": np.zeros(2)})
