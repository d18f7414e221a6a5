"""One list of every loss (ctc_loss excepted) with inputs in its domain, away from kinks;
it drives the gradient, dtype and bad-input tests."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

import fluxtrain as F


def _probs(rng, shape):
    p = rng.uniform(0.1, 1.0, size=shape)
    return p / p.sum(axis=-1, keepdims=True)


@dataclass
class Case:
    name: str
    make: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]
    kwargs: dict = field(default_factory=dict)
    has_agg: bool = True
    per_sample: bool = False  # agg sees (N, 1) per-sample losses

    @property
    def fn(self):
        return getattr(F, self.name)

    def __repr__(self):
        return self.name


SHAPE = (4, 3)  # 4 samples, 3 classes/features

CASES = [
    Case("mae", lambda r: (r.normal(size=SHAPE), r.normal(size=SHAPE))),
    Case("mse", lambda r: (r.normal(size=SHAPE), r.normal(size=SHAPE))),
    Case("msle", lambda r: (r.uniform(0.5, 2, SHAPE), r.uniform(0.5, 2, SHAPE))),
    Case("huber_loss", lambda r: (r.normal(size=SHAPE), r.normal(size=SHAPE)), {"delta": 0.7}),
    Case("crossentropy", lambda r: (_probs(r, SHAPE), _probs(r, SHAPE)), per_sample=True),
    Case("logitcrossentropy", lambda r: (r.normal(size=SHAPE), _probs(r, SHAPE)), per_sample=True),
    Case("binarycrossentropy", lambda r: (r.uniform(0.1, 0.9, SHAPE), r.uniform(0, 1, SHAPE))),
    Case("logitbinarycrossentropy", lambda r: (r.normal(size=SHAPE), r.uniform(0, 1, SHAPE))),
    Case("kldivergence", lambda r: (_probs(r, SHAPE), _probs(r, SHAPE)), per_sample=True),
    Case("poisson_loss", lambda r: (r.uniform(0.5, 3, SHAPE), r.uniform(0, 3, SHAPE))),
    Case("hinge_loss", lambda r: (r.normal(size=SHAPE), np.sign(r.normal(size=SHAPE)))),
    Case("squared_hinge_loss", lambda r: (r.normal(size=SHAPE), np.sign(r.normal(size=SHAPE)))),
    Case("dice_coeff_loss", lambda r: (r.uniform(0, 1, SHAPE), r.uniform(0, 1, SHAPE)), has_agg=False),
    Case("tversky_loss", lambda r: (r.uniform(0, 1, SHAPE), r.uniform(0, 1, SHAPE)), has_agg=False),
    Case("binary_focal_loss", lambda r: (r.uniform(0.1, 0.9, SHAPE), r.uniform(0, 1, SHAPE))),
    Case("binary_focal_loss", lambda r: (r.uniform(0.1, 0.9, SHAPE), r.uniform(0, 1, SHAPE)), {"gamma": 1.5}),
    Case("focal_loss", lambda r: (_probs(r, SHAPE), _probs(r, SHAPE)), per_sample=True),
    Case("siamese_contrastive_loss", lambda r: (r.uniform(0, 2, SHAPE), r.uniform(0, 1, SHAPE)), {"margin": 1.3}),
]

IDS = [c.name + ("-" + "-".join(f"{k}={v}" for k, v in c.kwargs.items()) if c.kwargs else "") for c in CASES]
