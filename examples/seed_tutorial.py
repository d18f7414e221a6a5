"""The seed tutorial, runnable: Flux's loss functions, an optimiser and a training loop with
a learning-rate schedule, written with fluxtrain.

    python examples/seed_tutorial.py            # PyTorch if installed, else JAX
    python examples/seed_tutorial.py --backend jax

Part 1 evaluates the tutorial's loss examples (the values of flux-semantics.md §9). Part 2
trains a small classifier: ``setup(ADAM(0.001), model)`` as the tutorial writes it (the old
name still works and says it is deprecated), ``train`` once per epoch over a ``DataLoader``,
and a ``CosAnneal`` schedule applied with ``adjust_`` at the start of each epoch (Flux's
guide: ``for (eta, epoch) in zip(schedule, 1:epochs); adjust!(opt_state, eta); ...``).
Part 3 does the same steps by hand with ``withgradient`` and ``update_``.
"""
from __future__ import annotations

import argparse
import importlib.util
import warnings

import numpy as np

import fluxtrain as ft


def part1_losses() -> None:
    print("== Part 1: loss functions ==")
    # regression: mean squared error (Float64 inputs, as the Julia literals are)
    print("mse                      ", ft.mse(np.array([0.5, 1.8, 3.3]), np.array([0.6, 2.0, 3.0])))
    # binary classification on logits, and on probabilities
    logits = np.array([0.5, -1.0, 2.0])
    labels = np.array([1, 0, 1])
    print("logitbinarycrossentropy  ", ft.logitbinarycrossentropy(logits, labels))
    print("binarycrossentropy       ", ft.binarycrossentropy(ft.sigmoid(logits), labels))
    # multi-class: Julia's 3x2 Float32 matrix (classes x samples) is a (2, 3) batch-first array
    yhat = np.array([[0.1, 0.8], [0.5, 0.1], [0.4, 0.1]], dtype=np.float32).T
    y = ft.onehotbatch([2, 1], range(1, 4))  # (2 samples, 3 classes)
    print("logitcrossentropy        ", ft.logitcrossentropy(yhat, y))
    print("crossentropy(softmax)    ", ft.crossentropy(ft.softmax(yhat), y))


def make_data(n: int = 300, seed: int = 0):
    """Three Gaussian blobs in 2-d: features (n, 2) float32 and class labels 1..3."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 2.0], [2.0, -1.0], [-2.0, -1.0]])
    labels = rng.integers(1, 4, size=n)
    X = (centres[labels - 1] + 1.0 * rng.standard_normal((n, 2))).astype(np.float32)
    return X, labels


def build_model(backend: str, seed: int = 0):
    """A 2 -> 16 -> 3 MLP, ``(params, forward, to_backend)``."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((16, 2)) * 0.5).astype(np.float32)
    w2 = (rng.standard_normal((3, 16)) * 0.5).astype(np.float32)
    if backend == "torch":
        import torch
        net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        with torch.no_grad():
            net[0].weight.copy_(torch.from_numpy(w1))
            net[0].bias.zero_()
            net[2].weight.copy_(torch.from_numpy(w2))
            net[2].bias.zero_()
        return net, (lambda m, x: m(x)), torch.from_numpy
    import jax
    import jax.numpy as jnp
    params = {"w1": jnp.asarray(w1), "b1": jnp.zeros(16, jnp.float32),
              "w2": jnp.asarray(w2), "b2": jnp.zeros(3, jnp.float32)}

    @jax.jit
    def forward(p, x):
        return jax.nn.relu(x @ p["w1"].T + p["b1"]) @ p["w2"].T + p["b2"]
    return params, forward, jnp.asarray


def problem(backend: str):
    """The model and the blobs as backend arrays: ``(model, forward, X, Y onehot, labels)``."""
    X, labels = make_data()
    model, forward, to_backend = build_model(backend)
    Y = np.asarray(ft.onehotbatch(labels, range(1, 4)), dtype=np.float32)
    return model, forward, to_backend(X), to_backend(Y), labels


def plain(x):
    """A backend array as NumPy, outside any autograd graph."""
    return np.asarray(x.detach() if hasattr(x, "detach") else x)


def accuracy(forward, model, X, labels) -> float:
    pred = ft.onecold(plain(forward(model, X)), range(1, 4))  # argmax per sample -> labels 1..3
    return float(np.mean(np.asarray(pred) == labels))


def part2_train(backend: str, epochs: int = 10) -> float:
    print(f"== Part 2: train with a schedule ({backend}) ==")
    model, forward, Xb, Y, labels = problem(backend)

    def loss(m, x, y):
        return ft.logitcrossentropy(forward(m, x), y)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # ADAM is the old name of Adam
        state = ft.setup(ft.ADAM(0.001), model)
    loader = ft.DataLoader((Xb, Y), batchsize=50, shuffle=True, rng=0)
    schedule = ft.CosAnneal(l0=0.05, l1=0.001, period=epochs)
    for eta, epoch in zip(schedule, range(1, epochs + 1)):
        ft.adjust_(state, eta)  # new learning rate, momenta kept
        state, model = ft.train(loss, model, loader, state, progress=False)
        if epoch % 2 == 0:
            print(f"epoch {epoch:2d}  eta {eta:.4f}  loss {float(plain(loss(model, Xb, Y))):.4f}  "
                  f"accuracy {accuracy(forward, model, Xb, labels):.3f}")
    acc = accuracy(forward, model, Xb, labels)
    print(f"final accuracy {acc:.3f}")
    return acc


def part3_by_hand(backend: str, steps: int = 50) -> float:
    print(f"== Part 3: the same loop by hand ({backend}) ==")
    model, forward, Xb, Y, labels = problem(backend)
    state = ft.setup(ft.Adam(0.03), model)
    for step in range(1, steps + 1):
        val, (grad,) = ft.withgradient(lambda m: ft.logitcrossentropy(forward(m, Xb), Y), model)
        state, model = ft.update_(state, model, grad)
    print(f"loss {float(plain(val)):.4f}  accuracy {accuracy(forward, model, Xb, labels):.3f}")
    return float(val)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = "torch" if importlib.util.find_spec("torch") else "jax"
    parser.add_argument("--backend", choices=["torch", "jax"], default=default)
    args = parser.parse_args()
    part1_losses()
    part2_train(args.backend)
    part3_by_hand(args.backend)


if __name__ == "__main__":
    main()
