"""Flux's old rule names. Each builds the new rule and warns (``FutureWarning``, shown by
default) with the new spelling, like Optimisers.jl's ``@deprecate`` aliases.

* ``SGD`` -> ``Descent`` (Flux never had ``SGD``; the seed tutorial's spelling);
* ``ADAM``, ``NADAM``, ``ADAMW``, ``RADAM``, ``OADAM``, ``ADAGrad``, ``ADADelta`` -> ``Adam``,
  ``NAdam``, ``AdamW``, ``RAdam``, ``OAdam``, ``AdaGrad``, ``AdaDelta``;
* old ``Flux.Optimise`` helpers ``ClipValue`` -> ``ClipGrad``, ``Optimiser`` -> ``OptimiserChain``.

Note ``ADAMW`` builds the *new*, coupled ``AdamW`` (as Optimisers.jl's alias does). Old
implicit-style Flux's ``ADAMW(eta, beta, decay)`` meant ``x -= eta*adam + decay*x``, i.e.
``OptimiserChain(Adam(eta, beta), WeightDecay(decay))``; spell it that way to reproduce it.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

from . import composite, rules_adaptive, rules_basic
from .base import Rule

OLD_NAMES: dict[str, str] = {
    "SGD": "Descent", "ADAM": "Adam", "NADAM": "NAdam", "ADAMW": "AdamW", "RADAM": "RAdam",
    "OADAM": "OAdam", "ADAGrad": "AdaGrad", "ADADelta": "AdaDelta", "ClipValue": "ClipGrad",
    "Optimiser": "OptimiserChain",
}
"""Old name -> new name."""

__all__ = list(OLD_NAMES) + ["OLD_NAMES"]


def _alias(old: str, new: str) -> Callable[..., Rule]:
    cls = None
    for mod in (rules_basic, rules_adaptive, composite):
        cls = getattr(mod, new, cls)

    def make(*args: Any, **kwargs: Any) -> Rule:
        warnings.warn(f"`{old}` is deprecated, use `{new}` instead (it builds {new}).",
                      FutureWarning, stacklevel=2)
        return cls(*args, **kwargs)

    make.__name__ = make.__qualname__ = old
    make.__doc__ = f"Deprecated old name of :class:`{new}`: warns and returns ``{new}(*args, **kwargs)``."
    return make


for _old, _new in OLD_NAMES.items():
    globals()[_old] = _alias(_old, _new)
del _old, _new
