"""fluxtrain.optimise: Optimisers.jl's rules and state trees for NumPy, PyTorch and JAX.

Rules (``Adam()``, ``Descent(0.1)``, ``OptimiserChain(...)``) are small frozen objects with
``init(x)`` and ``apply(state, x, g) -> (state, delta)``; :func:`setup` builds a state tree
mirroring a model, :func:`update` (pure, jit-able) and :func:`update_` (in place) apply one
step, :func:`adjust`/:func:`adjust_` change hyper-parameters, :func:`freeze_`/:func:`thaw_`
skip sub-trees, and :func:`save_state`/:func:`load_state` checkpoint the state.
See docs/optimise.md.
"""
from .base import Rule
from .rules_basic import (AdaDelta, AdaGrad, ClipGrad, ClipNorm, Descent, Lion, Momentum, Nesterov,
                          RMSProp, Rprop, SignDecay, WeightDecay)
from .rules_adaptive import AdaBelief, AdaMax, Adam, AdamW, AMSGrad, NAdam, OAdam, RAdam
from .composite import AccumGrad, MixedPrecision, OptimiserChain
from .tree import Leaf, module_tree
from .interface import adjust, adjust_, freeze_, setup, thaw_, update, update_
from .io import flatten_state, load_state, save_state, unflatten_state
from .deprecated import (OLD_NAMES, SGD, ADAM, NADAM, ADAMW, RADAM, OADAM, ADAGrad, ADADelta,
                         ClipValue, Optimiser)

RULES: dict[str, type] = {c.__name__: c for c in (
    Descent, Momentum, Nesterov, RMSProp, Adam, RAdam, AdaMax, OAdam, AdaGrad, AdaDelta, AMSGrad,
    NAdam, AdamW, AdaBelief, Lion, Rprop, WeightDecay, SignDecay, ClipGrad, ClipNorm,
    OptimiserChain, AccumGrad, MixedPrecision)}
"""Every rule class by its Flux name (for parsers such as the CLI's ``--opt "Adam(0.001)"``)."""

__all__ = [
    "Rule", "Leaf", "RULES", "setup", "update", "update_", "adjust", "adjust_", "freeze_", "thaw_",
    "module_tree", "flatten_state", "unflatten_state", "save_state", "load_state", "OLD_NAMES",
    *RULES, *OLD_NAMES,
]
