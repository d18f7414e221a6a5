"""``fluxtrain losses``: list every loss, or show one loss's docstring and a worked example.

    fluxtrain losses                     # name, Flux name and one-line summary of each loss
    fluxtrain losses logitcrossentropy   # its docstring, then a worked example and its value
"""
from __future__ import annotations

import argparse
import difflib
import inspect

from .commands import UserError, command

#: Every loss of the API contract, in Flux's documentation order, with its Flux name.
LOSSES: dict[str, str] = {
    "mae": "Flux.Losses.mae",
    "mse": "Flux.Losses.mse",
    "msle": "Flux.Losses.msle",
    "huber_loss": "Flux.Losses.huber_loss",
    "crossentropy": "Flux.Losses.crossentropy",
    "logitcrossentropy": "Flux.Losses.logitcrossentropy",
    "binarycrossentropy": "Flux.Losses.binarycrossentropy",
    "logitbinarycrossentropy": "Flux.Losses.logitbinarycrossentropy",
    "kldivergence": "Flux.Losses.kldivergence",
    "poisson_loss": "Flux.Losses.poisson_loss",
    "hinge_loss": "Flux.Losses.hinge_loss",
    "squared_hinge_loss": "Flux.Losses.squared_hinge_loss",
    "dice_coeff_loss": "Flux.Losses.dice_coeff_loss",
    "tversky_loss": "Flux.Losses.tversky_loss",
    "binary_focal_loss": "Flux.Losses.binary_focal_loss",
    "focal_loss": "Flux.Losses.focal_loss",
    "siamese_contrastive_loss": "Flux.Losses.siamese_contrastive_loss",
    "ctc_loss": "Flux.ctc_loss (NNlib.ctc_loss)",
}

# The seed tutorial's 3-class, 2-sample batch (Flux's Float32[0.1 0.8; 0.5 0.1; 0.4 0.1],
# batch-first here) and its targets onehotbatch([2, 1], 1:3).
_LOGITS = "np.array([[0.1, 0.5, 0.4], [0.8, 0.1, 0.1]], dtype=np.float32)"
_ONEHOT = "onehotbatch([2, 1], range(1, 4))"

#: One worked example per loss: a Python expression over ``np`` and fluxtrain's names.
EXAMPLES: dict[str, str] = {
    "mae": "mae(np.array([0.5, 1.8, 3.3]), np.array([0.6, 2.0, 3.0]))",
    "mse": "mse(np.array([0.5, 1.8, 3.3]), np.array([0.6, 2.0, 3.0]))",
    "msle": "msle(np.array([0.9, 2.1, 3.2]), np.array([1.0, 2.0, 3.0]))",
    "huber_loss": "huber_loss(np.array([0.5, 1.8, 3.3]), np.array([0.6, 2.0, 1.0]))",
    "crossentropy": f"crossentropy(softmax({_LOGITS}), {_ONEHOT})",
    "logitcrossentropy": f"logitcrossentropy({_LOGITS}, {_ONEHOT})",
    "binarycrossentropy": "binarycrossentropy(sigmoid(np.array([0.5, -1.0, 2.0])), np.array([1, 0, 1]))",
    "logitbinarycrossentropy": "logitbinarycrossentropy(np.array([0.5, -1.0, 2.0]), np.array([1, 0, 1]))",
    "kldivergence": f"kldivergence(softmax({_LOGITS}), np.array([[0.2, 0.5, 0.3], [0.6, 0.2, 0.2]]))",
    "poisson_loss": "poisson_loss(np.array([0.5, 1.5, 2.5]), np.array([0.0, 2.0, 3.0]))",
    "hinge_loss": "hinge_loss(np.array([0.8, -0.3, 1.5]), np.array([1, -1, -1]))",
    "squared_hinge_loss": "squared_hinge_loss(np.array([0.8, -0.3, 1.5]), np.array([1, -1, -1]))",
    "dice_coeff_loss": "dice_coeff_loss(np.array([0.9, 0.1, 0.8]), np.array([1.0, 0.0, 1.0]))",
    "tversky_loss": "tversky_loss(np.array([0.9, 0.1, 0.8]), np.array([1.0, 0.0, 1.0]))",
    "binary_focal_loss": "binary_focal_loss(sigmoid(np.array([0.5, -1.0, 2.0])), np.array([1, 0, 1]))",
    "focal_loss": f"focal_loss(softmax({_LOGITS}), {_ONEHOT})",
    "siamese_contrastive_loss": "siamese_contrastive_loss(np.array([0.3, 1.2, 0.6]), np.array([1, 0, 1]))",
    # Flux's test/ctc.jl input: 3 time steps × 3 classes, labels [1, 2] 1-based → [0, 1].
    "ctc_loss": "ctc_loss(np.array([[1.0, 2.0, 3.0], [2.0, 1.0, 3.0], [3.0, 1.0, 2.0]]), [0, 1])",
}


def summary(fn) -> str:
    """The first paragraph of ``fn``'s docstring, on one line."""
    doc = inspect.getdoc(fn) or ""
    return " ".join(doc.split("\n\n", 1)[0].split())


def available() -> dict[str, object]:
    from .. import losses
    return {name: getattr(losses, name) for name in LOSSES if hasattr(losses, name)}


def resolve(name: str) -> str:
    """A loss name from what the user typed: ``mse``, ``Flux.mse``, ``Flux.Losses.mse``."""
    key = name.strip()
    for prefix in ("Flux.Losses.", "Flux.", "Losses.", "fluxtrain.losses.", "fluxtrain."):
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    if key in LOSSES:
        return key
    lowered = {n.lower(): n for n in LOSSES}
    if key.lower() in lowered:
        return lowered[key.lower()]
    close = difflib.get_close_matches(key.lower(), list(LOSSES), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UserError(f"unknown loss {name!r}{hint} (run 'fluxtrain losses' for the list)")


def run_example(name: str):
    """``(expression, value)`` of the worked example of loss ``name``."""
    import numpy as np

    import fluxtrain
    scope = {n: getattr(fluxtrain, n) for n in fluxtrain.__all__ if hasattr(fluxtrain, n)}
    scope["np"] = np
    expr = EXAMPLES[name]
    return expr, eval(expr, scope)  # noqa: S307 - fixed expressions from this module only


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", default=None,
                   help="a loss name (e.g. logitcrossentropy); omit to list every loss")


@command("losses", help="list the losses, or show one loss's documentation and a worked example",
         add_arguments=_add_arguments)
def run(args: argparse.Namespace) -> int:
    have = available()
    if args.name is None:
        width = max(len(n) for n in LOSSES)
        fwidth = max(len(f) for f in LOSSES.values())
        print(f"{len(have)} losses; call as fluxtrain.NAME(ŷ, y, ...), prediction first. "
              "'fluxtrain losses NAME' shows one.")
        for name, flux_name in LOSSES.items():
            text = summary(have[name]) if name in have else "(not available in this build)"
            print(f"  {name:<{width}}  {flux_name:<{fwidth}}  {text}")
        return 0
    name = resolve(args.name)
    if name not in have:
        raise UserError(f"loss {name!r} is not available in this build")
    print(f"fluxtrain.{name}  (Flux: {LOSSES[name]})\n")
    print(inspect.getdoc(have[name]))
    expr, value = run_example(name)
    print("\nWorked example:")
    print(f"  >>> {expr}")
    dtype = getattr(value, "dtype", None)
    # str(), not an f-string: a 0-d array's __format__ goes through a Python float and
    # would print a float32 loss with float64 digits.
    print("  " + str(value) + (f"    ({dtype})" if dtype is not None else ""))
    return 0
